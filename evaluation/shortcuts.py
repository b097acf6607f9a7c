"""Shortcut audit: each metadata feature of the files alone (leading silence, duration, size, bitrate, resolution,
fps, audio rate and channels) used as a score; max(AUC, 1 - AUC) >= a threshold flags a shortcut a detector could
learn instead of the manipulation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from competition import LABEL_FILES, read_labels
from evaluation.common import (
    DemoLayout,
    add_common_arguments,
    auc_null_sd,
    auc_p_value,
    binary_metrics,
    csv_list,
    write_json,
    write_table,
)
from evaluation.plots import plot_shortcuts
from shards.extract import AUDIO_SAMPLE_RATE

SHORTCUT_THRESHOLD = 0.7
SIGNIFICANCE = 0.01  # a flagged shortcut this unlikely under "no relation" is reported as significant
FEATURES = ("leading_silence", "duration", "file_size", "bitrate", "width", "height", "pixels", "fps",
            "sample_rate", "audio_channels")


def probe_media(path: Path) -> dict[str, float]:
    """Container metadata of one video, read by ``shards.media`` (the extraction's PyAV code); 0 where absent."""
    from shards.media import open_media, probe

    with open_media(path) as container:
        info = probe(container)
    duration = float(info.duration or 0.0)
    size = float(Path(path).stat().st_size)
    width, height = float(info.width or 0), float(info.height or 0)
    return {"file_size": size, "duration": duration, "start": float(info.start or 0.0), "width": width,
            "height": height, "pixels": width * height, "fps": float(info.fps or 0.0),
            "sample_rate": float(info.audio_sample_rate or 0) if info.has_audio else 0.0,
            "audio_channels": float(info.audio_channels or 0) if info.has_audio else 0.0,
            "bitrate": size * 8 / duration if duration > 0 else 0.0}


def decode_audio(path: Path, start: float, end: float, rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray:
    """[start, end] s of the first audio stream as mono float32 at ``rate`` (``shards.media.decode_audio``)."""
    from shards.media import decode_audio as media_decode_audio
    from shards.media import open_media

    with open_media(path) as container:
        pcm, _ = media_decode_audio(container, start, end, rate)
    return pcm.astype(np.float32) / 32768.0


def leading_silence(audio: np.ndarray, rate: int = AUDIO_SAMPLE_RATE, window: float = 0.01, relative_db: float = -30.0,
                    floor: float = 1e-4) -> float:
    """Seconds before the first ``window`` whose RMS reaches ``relative_db`` below the loud (95th pct) level."""
    hop = max(1, int(round(window * rate)))
    n = len(audio) // hop
    if n == 0:
        return 0.0
    rms = np.sqrt(np.mean(audio[:n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1))
    threshold = max(floor, float(np.percentile(rms, 95)) * 10 ** (relative_db / 20))
    loud = np.flatnonzero(rms >= threshold)
    return float(loud[0] * hop / rate) if loud.size else float(n * hop / rate)


def media_features(path: Path) -> dict[str, float]:
    info = probe_media(path)
    info["leading_silence"] = 0.0
    if info["sample_rate"] and info["duration"] > 0:  # measured from the first video frame, as extraction sees it
        info["leading_silence"] = leading_silence(decode_audio(path, info["start"], info["start"] + info["duration"]))
    return {name: float(info[name]) for name in FEATURES}


def shortcut_audit(features: dict[str, dict[str, float]], labels: dict[str, int],
                   threshold: float = SHORTCUT_THRESHOLD) -> dict:
    """Each feature alone as a score: AUC, separability max(AUC, 1-AUC), direction, flag (>= threshold)."""
    names = sorted(set(features) & set(labels))
    y = [labels[n] for n in names]
    n_fake = sum(y)
    out = {"videos": len(names), "n_fake": n_fake, "threshold": threshold,
           "null_sd": auc_null_sd(len(names) - n_fake, n_fake), "features": {}}
    for feature in FEATURES:
        values = [features[n][feature] for n in names]
        auc = binary_metrics(y, values)["auc"]
        if auc is None:
            continue
        separability = max(auc, 1 - auc)
        out["features"][feature] = {
            "auc": auc, "separability": separability, "flag": separability >= threshold,
            "p_value": auc_p_value(auc, len(names) - n_fake, n_fake),
            "direction": "higher in fakes" if auc > 0.5 else "lower in fakes" if auc < 0.5 else "none",
            "real_mean": float(np.mean([v for v, t in zip(values, y, strict=True) if t == 0])),
            "fake_mean": float(np.mean([v for v, t in zip(values, y, strict=True) if t == 1])),
        }
    out["flagged"] = [f for f, v in out["features"].items() if v["flag"]]
    out["significant"] = [f for f, v in out["features"].items() if v["flag"] and v["p_value"] < SIGNIFICANCE]
    return out


def audit_dataset(data_dir: Path, splits: list[str], threshold: float = SHORTCUT_THRESHOLD,
                  workers: int = 1) -> dict:
    """The shortcut audit of every split in ``splits`` and of all of them together."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    labels_by_split: dict[str, dict[str, int]] = {}
    paths: dict[str, Path] = {}
    for split in splits:
        labels_path = Path(data_dir) / LABEL_FILES[split]
        if not labels_path.is_file():
            raise FileNotFoundError(f"{labels_path} is missing: --data must be a dataset in the competition format")
        labels_by_split[split] = read_labels(labels_path)
        for name in labels_by_split[split]:
            paths[f"{split}/{name}"] = Path(data_dir) / split / name
    keys = sorted(paths)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            values = list(tqdm(pool.map(media_features, [paths[k] for k in keys], chunksize=4), total=len(keys),
                               desc="probe", unit="video", file=sys.stderr))
    else:
        values = [media_features(paths[k]) for k in tqdm(keys, desc="probe", unit="video", file=sys.stderr)]
    features = dict(zip(keys, values, strict=True))
    result = {"data": str(data_dir), "threshold": threshold, "splits": {}}
    all_labels = {}
    for split in splits:
        labels = {f"{split}/{n}": t for n, t in labels_by_split[split].items()}
        all_labels.update(labels)
        result["splits"][split] = shortcut_audit(features, labels, threshold)
    if len(splits) > 1:
        result["splits"]["all"] = shortcut_audit(features, all_labels, threshold)
    return result


# --- python -m evaluation shortcuts -----------------------------------------------------------------------------
def command(args: argparse.Namespace) -> int:
    layout = DemoLayout(args.demo_dir) if args.demo_dir else None
    data = args.data or (layout.data if layout else None)
    if data is None:
        raise SystemExit("python -m evaluation shortcuts: give --demo-dir or --data")
    out = args.out or (layout.eval if layout else Path(data) / "eval") / "shortcuts.json"
    result = audit_dataset(data, args.splits, args.threshold, args.workers)
    write_json(out, result)
    rows = [{"split": split, "feature": f, **v} for split, audit in result["splits"].items()
            for f, v in audit["features"].items()]
    write_table(out.with_suffix(".csv"), rows)
    plot_shortcuts(result, out.with_suffix(".png"))
    flagged = {split: audit["flagged"] for split, audit in result["splits"].items() if audit["flagged"]}
    print(f"wrote {out}; flagged: {flagged or 'none'}")
    return 1 if flagged and args.fail_on_flag else 0


def add_parser(sub) -> None:
    p = sub.add_parser("shortcuts", help="AUC of each metadata feature alone (shortcut audit)")
    add_common_arguments(p, demo_required=False)
    p.add_argument("--data", type=Path, help="dataset folder (default DEMO_DIR/data)")
    p.add_argument("--splits", type=csv_list, default=["train", "val", "test"])
    p.add_argument("--threshold", type=float, default=SHORTCUT_THRESHOLD)
    p.add_argument("--fail-on-flag", action="store_true", help="exit 1 when a feature is flagged")
    p.set_defaults(func=command)
