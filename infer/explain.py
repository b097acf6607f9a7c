"""`python -m infer ... --explain OUTDIR`: why the model scored a video as it did.

For each chosen video it writes PNGs and one HTML page that shows them together:
- ``<stem>_frames.png``: the face and mouth crops the model saw (up to 16 evenly spaced frames), and the same
  crops with a gradient-saliency heat map (|d logit / d pixel|, smoothed, one colour scale per video) on top;
- ``<stem>_audio.png``: the log-Mel spectrogram of the clip's audio with the per-time audio saliency;
- ``<stem>_timeline.png``: per-frame fake scores of the visual and audio tokens and the lip/audio synchrony
  curve (low synchrony = lip-sync evidence), when the model has them;
- ``<stem>_modalities.png``: fused, audio-only and visual-only head scores and the CLS attention mass on the face,
  lip and audio tokens.
Numbers behind the figures go to ``explain.json``: per video its submission ``score`` (under the checkpoint's
``score.rule``, with the ``strongest_evidence`` of a late-fusion rule), the fused, audio-only and visual-only
head scores, the per-frame token scores and the sync curve.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from models.batch import collate, prepare, to_device
from shards.extract import AUDIO_SAMPLE_RATE
from shards.pool import extracted

log = logging.getLogger("infer")
DEFAULT_COUNT = 4  # highest- and lowest-scoring videos explained when none are named
MAX_FRAMES_SHOWN = 16  # crops per row of the frames figure (evenly spaced over the clip's T frames)


def saliency(predictor, sample: dict) -> dict:
    """Model outputs and input-gradient saliency for one reader-format sample.

    Returns numpy arrays: ``frames`` uint8 [T,S,S,3] and ``mouths`` uint8 [T,M,M,3], ``frame_saliency`` float
    [T,S,S] and ``mouth_saliency`` float [T,M,M] in [0,1] (aligned pixel for pixel with the crops), ``audio``
    float [N], ``audio_saliency`` float [N] in [0,1], and the model's outputs for the sample (scalars and
    per-time arrays: the per-frame ``sync`` curve among them)."""
    model = predictor.model
    batch = to_device(collate([prepare(sample, predictor.spec.data)]), predictor.device)
    # clones: never mark the batch's own tensors; +0 makes non-leaf tensors the model may normalise
    inputs = {name: batch[name].float().clone().requires_grad_(True) for name in ("frames", "mouths", "audio")}
    outputs = model(dict(batch, **{name: x + 0 for name, x in inputs.items()}))
    outputs["logit"][0].backward()
    grads = {name: (x.grad if x.grad is not None else torch.zeros_like(x))[0].abs() for name, x in inputs.items()}
    length = int(batch["audio_length"][0])
    result = {
        "frames": batch["frames"][0].permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8),
        "frame_saliency": _normalise(_smooth(grads["frames"].sum(1).cpu().numpy())),
        "mouths": batch["mouths"][0].permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8),
        "mouth_saliency": _normalise(_smooth(grads["mouths"].sum(1).cpu().numpy())),
        "audio": batch["audio"][0, :length].cpu().numpy(),
        "audio_saliency": _normalise(grads["audio"][:length].cpu().numpy()),
    }
    for key, value in outputs.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().float().cpu()[0]
            result[key] = torch.sigmoid(value).numpy() if key.endswith("logit") or key.endswith("logits") else value.numpy()
    return result


def _smooth(maps: np.ndarray) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(m.astype(np.float32), (0, 0), sigmaX=max(1.0, m.shape[-1] / 32)) for m in maps])


def _normalise(x: np.ndarray) -> np.ndarray:
    top = float(np.percentile(x, 99.5)) if x.size else 0.0
    return np.clip(x / top, 0.0, 1.0).astype(np.float32) if top > 0 else np.zeros_like(x, dtype=np.float32)


def overlay(frame: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A heat map in [0,1] of the crop's size blended onto the crop (uint8 RGB, same shape as the crop)."""
    if heat.shape != frame.shape[:2]:
        raise ValueError(f"heat map {heat.shape} does not match the face crop {frame.shape[:2]}")
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (frame * (1 - alpha) + colour * alpha).clip(0, 255).astype(np.uint8)


def _figures(name: str, info: dict, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torchaudio

    stem = Path(name).stem.replace(" ", "_")
    files = {}
    t = len(info["frames"])
    shown = np.unique(np.linspace(0, t - 1, min(t, MAX_FRAMES_SHOWN)).round().astype(int))
    rows = [("face", info["frames"], info["frame_saliency"]), ("mouth", info["mouths"], info["mouth_saliency"])]
    fig, axes = plt.subplots(4, len(shown), figsize=(1.3 * len(shown), 5.6), squeeze=False)
    for j, i in enumerate(shown):
        for r, (_, crops, heat) in enumerate(rows):
            axes[2 * r, j].imshow(crops[i])
            axes[2 * r + 1, j].imshow(overlay(crops[i], heat[i]))
        axes[0, j].set_title(f"t{i}", fontsize=7)
        for row in range(4):
            axes[row, j].axis("off")
    fig.suptitle(f"{name}: face and mouth crops with saliency (fused head {info['logit']:.3f})", fontsize=9)
    files["frames"] = _save(fig, out / f"{stem}_frames.png")

    fig, ax = plt.subplots(figsize=(8, 3))
    if len(info["audio"]) > 400:
        mel = torchaudio.transforms.MelSpectrogram(AUDIO_SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=64)(
            torch.from_numpy(info["audio"]).float())
        ax.imshow(torch.log(mel + 1e-6).numpy(), origin="lower", aspect="auto", cmap="magma",
                  extent=(0, len(info["audio"]) / AUDIO_SAMPLE_RATE, 0, 64))
        ax2 = ax.twinx()
        seconds = np.arange(len(info["audio"])) / AUDIO_SAMPLE_RATE
        ax2.plot(seconds, _smooth_1d(info["audio_saliency"]), color="cyan", lw=1)
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("audio saliency")
    else:
        ax.text(0.5, 0.5, "no audio", ha="center", va="center")
    ax.set_xlabel("seconds")
    ax.set_ylabel("Mel bin")
    ax.set_title(f"{name}: log-Mel spectrogram and audio saliency", fontsize=9)
    files["audio"] = _save(fig, out / f"{stem}_audio.png")

    if "visual_token_logits" in info:
        fig, ax = plt.subplots(figsize=(8, 2.8))
        steps = np.arange(t)
        ax.plot(steps, info["visual_token_logits"], "o-", label="visual token fake score")
        ax.plot(steps, info["audio_token_logits"], "s-", label="audio token fake score")
        if "sync" in info:
            ax.plot(steps, (info["sync"] + 1) / 2, "^--", label="lip/audio synchrony per frame (0..1)")
        ax.set_ylim(0, 1)
        ax.set_xlabel("frame index (time)")
        ax.legend(fontsize=7)
        ax.set_title(f"{name}: per-time scores", fontsize=9)
        files["timeline"] = _save(fig, out / f"{stem}_timeline.png")

    fig, ax = plt.subplots(figsize=(5, 2.6))
    heads = {k: float(info[k]) for k in ("logit", "audio_logit", "visual_logit") if k in info}
    bars = {"fused": heads.get("logit"), "audio only": heads.get("audio_logit"),
            "visual only": heads.get("visual_logit")}
    if "cls_attention" in info:
        attention = info["cls_attention"]
        bars["attention on face"] = float(attention[:t].sum())
        bars["attention on lips"] = float(attention[t:2 * t].sum())
        bars["attention on audio"] = float(attention[2 * t:].sum())
    bars = {k: v for k, v in bars.items() if v is not None}
    ax.barh(list(bars), list(bars.values()), color=["C3", "C0", "C2", "C1", "C5", "C4"][: len(bars)])
    ax.set_xlim(0, 1)
    ax.set_title(f"{name}: modality contributions", fontsize=9)
    files["modalities"] = _save(fig, out / f"{stem}_modalities.png")
    return files


def _smooth_1d(x: np.ndarray, width: int = 1600) -> np.ndarray:
    kernel = np.ones(width) / width
    return _normalise(np.convolve(x, kernel, mode="same"))


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def choose(predictions: list, names: list[str] | None, count: int = DEFAULT_COUNT) -> list[str]:
    """The named videos, or the ``count`` highest- and lowest-scoring successfully extracted ones."""
    if names:
        return names
    ok = sorted((p for p in predictions if p.status == "ok"), key=lambda p: (p.score, p.video_name))
    picked = ok[-count:][::-1] + ok[: count]
    return list(dict.fromkeys(p.video_name for p in picked))


def explain_videos(predictor, videos: list[Path], predictions: list, out: Path,
                   names: list[str] | None = None) -> Path:
    """Write figures, explain.json and index.html for the chosen videos; returns the HTML page."""

    out.mkdir(parents=True, exist_ok=True)
    by_name = {v.name: v for v in videos}
    chosen = choose(predictions, names)
    unknown = [n for n in chosen if n not in by_name]
    if unknown:
        raise ValueError(f"--explain-videos names videos not in the folder: {unknown}")
    scored = {p.video_name: p for p in predictions}
    entries = []
    for name, sample, reason in extracted([by_name[n] for n in chosen], predictor.extraction_options(), workers=0):
        if sample is None:
            entries.append({"video_name": name, "error": reason})
            continue
        info = saliency(predictor, predictor.views(sample)[0])  # the first time view (--time-views)
        entry = {"video_name": name, "fallbacks": sample["meta"].get("fallbacks", []),
                 "figures": _figures(name, info, out)}
        prediction = scored.get(name)  # None: a named video the --template leaves out
        if prediction is not None:
            entry["score"] = round(prediction.score, 6)
            if prediction.strongest:
                entry["strongest_evidence"] = prediction.strongest
        for key, label in (("logit", "fused_score"), ("audio_logit", "audio_score"), ("visual_logit", "visual_score")):
            if key in info:
                entry[label] = round(float(info[key]), 6)
        for key in ("visual_token_logits", "audio_token_logits", "sync"):
            if key in info:
                entry[key.replace("logits", "scores")] = [round(float(v), 6) for v in info[key]]
        entries.append(entry)
    (out / "explain.json").write_text(json.dumps(entries, indent=2))
    page = out / "index.html"
    page.write_text(_html(entries))
    log.info("explanations for %d video(s) in %s", len(entries), page)
    return page


def _html(entries: list[dict]) -> str:
    parts = ["<!doctype html><meta charset='utf-8'><title>Explanations</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
             "section{border-bottom:1px solid #ccc;padding:1em 0}</style><h1>Why each video got its score</h1>"]
    for e in entries:
        parts.append(f"<section><h2>{html.escape(e['video_name'])}</h2>")
        if "error" in e:
            parts.append(f"<p>not explained: {html.escape(e['error'])}</p></section>")
            continue
        scores = ", ".join(f"{k} {e[k]:.3f}" for k in ("score", "fused_score", "audio_score", "visual_score")
                           if k in e)
        strongest = f"; strongest evidence: {e['strongest_evidence']}" if "strongest_evidence" in e else ""
        fallbacks = f" (fallbacks: {', '.join(e['fallbacks'])})" if e["fallbacks"] else ""
        parts.append(f"<p>{scores}{html.escape(strongest + fallbacks)}</p>")
        parts += [f"<img src='{html.escape(f)}' alt='{k}'>" for k, f in e["figures"].items()]
        parts.append("</section>")
    return "\n".join(parts)
