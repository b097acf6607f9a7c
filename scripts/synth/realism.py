"""Low-level statistics of each video, and whether any of them alone separates genuine from fake videos.

    python -m scripts.synth.realism DATA_DIR [--by category|family|method] [--json OUT]

Per video, read back from the mp4 (PyAV): frame noise level (MAD of the Laplacian, as sigma), sharpness
(variance of the Laplacian), brightness, contrast and frame-to-frame change over the whole frame; sharpness and
noise inside the face box (BlazeFace on the first frame); and of the audio (16 kHz mono) the spectral roll-off
(85 %), centroid and flatness of the frames that hold sound, the speech level and the noise floor (10th
percentile of the frame levels). ``separability`` gives, per statistic, the two-sided AUC (max(AUC, 1 - AUC)) of
genuine videos against every fake and against each fake category (family, method), and the chance threshold
for that comparison. DATA_DIR is a dataset written by ``python -m scripts.make_synthetic_dataset``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import av
import cv2
import numpy as np

from competition import REAL_CATEGORY

VISUAL = ("frame_noise", "frame_sharpness", "brightness", "contrast", "frame_change")
FACE = ("face_sharpness", "face_noise")
AUDIO = ("rolloff", "centroid", "flatness", "speech_level", "noise_floor")
STATISTICS = VISUAL + FACE + AUDIO
FRAMES = 8
SR = 16000


def noise_sigma(gray: np.ndarray) -> float:
    """Immerkaer-style noise estimate: the median absolute Laplacian response, scaled to a Gaussian sigma."""
    lap = cv2.Laplacian(gray.astype(np.float32), cv2.CV_32F)
    return float(1.4826 * np.median(np.abs(lap)) / np.sqrt(20))


def sharpness(gray: np.ndarray) -> float:
    return float(cv2.Laplacian(gray.astype(np.float32), cv2.CV_32F).var())


def read_video(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """``FRAMES`` grayscale frames spread over the video (plus the first RGB frame first), and mono audio at SR."""
    with av.open(str(path)) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        total = video.frames or 1
        keep = set(np.linspace(0, total - 1, FRAMES).astype(int).tolist())
        frames, chunks = [], []
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SR)
        k = 0
        for frame in container.decode(video, sound):
            if isinstance(frame, av.VideoFrame):
                if k in keep or k == 0:
                    frames.append(frame.to_ndarray(format="rgb24"))
                k += 1
            else:
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
    return frames, np.concatenate(chunks) if chunks else np.zeros(SR, np.float32)


def audio_statistics(x: np.ndarray) -> dict[str, float]:
    n_fft, hop = 512, 256
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(x, (0, n_fft)), n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2 + 1e-12
    level = 10 * np.log10(power.sum(1) / n_fft)
    sounding = level > np.percentile(level, 90) - 25
    freqs = np.fft.rfftfreq(n_fft, 1 / SR)
    p = power[sounding]
    cumulative = np.cumsum(p, axis=1)
    rolloff = freqs[np.argmax(cumulative >= 0.85 * cumulative[:, -1:], axis=1)]
    centroid = (p * freqs).sum(1) / p.sum(1)
    flatness = np.exp(np.log(p).mean(1)) / p.mean(1)
    return {"rolloff": float(np.median(rolloff)), "centroid": float(np.median(centroid)),
            "flatness": float(np.median(flatness)), "speech_level": float(np.percentile(level, 90)),
            "noise_floor": float(np.percentile(level, 10))}


def video_statistics(path: Path, detector) -> dict[str, float]:
    frames, sound = read_video(path)
    grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    stats = {"frame_noise": float(np.mean([noise_sigma(g) for g in grays])),
             "frame_sharpness": float(np.mean([sharpness(g) for g in grays])),
             "brightness": float(np.mean([g.mean() for g in grays])),
             "contrast": float(np.mean([g.std() for g in grays])),
             "frame_change": float(np.mean([np.abs(a.astype(np.float32) - b).mean()
                                            for a, b in zip(grays[1:], grays[2:], strict=False)] or [0.0]))}
    faces = detector.detect(frames[0])
    if faces:
        f = faces[0]
        h, w = grays[0].shape
        crop = grays[0][max(0, int(f.y0)):min(h, int(f.y1)), max(0, int(f.x0)):min(w, int(f.x1))]
        crop = cv2.resize(crop, (128, 128), interpolation=cv2.INTER_AREA)  # same scale for every face
        stats.update(face_sharpness=sharpness(crop), face_noise=noise_sigma(crop))
    else:
        stats.update(face_sharpness=math.nan, face_noise=math.nan)
    stats.update(audio_statistics(sound))
    return stats


def chance_threshold(n0: int, n1: int, sds: float = 4.0) -> float:
    """0.5 + ``sds`` standard deviations of the AUC of a statistic unrelated to the label (Mann-Whitney)."""
    return 0.5 + sds * math.sqrt((n0 + n1 + 1) / (12 * n0 * n1))


def two_sided_auc(genuine: np.ndarray, fake: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(genuine)), np.ones(len(fake))]
    auc = roc_auc_score(y, np.r_[genuine, fake])
    return float(max(auc, 1 - auc))


def separability(meta: list[dict[str, str]], stats: dict[str, dict[str, float]],
                 by: str = "category") -> dict[str, dict[str, dict]]:
    """{statistic: {group: {auc, threshold, n_fake}}}: genuine vs all fakes ("all") and vs the fakes of each
    value of the meta.csv column ``by`` (category, family or method)."""
    genuine = [r["video_name"] for r in meta if r["category"] == REAL_CATEGORY]
    fakes = [r for r in meta if r["category"] != REAL_CATEGORY]
    groups = {"all": [r["video_name"] for r in fakes]}
    for value in sorted({r[by] for r in fakes}):
        groups[value] = [r["video_name"] for r in fakes if r[by] == value]
    table: dict[str, dict[str, dict]] = {}
    for stat in STATISTICS:
        table[stat] = {}
        g = np.array([stats[n][stat] for n in genuine])
        for group, names in groups.items():
            f = np.array([stats[n][stat] for n in names])
            g_ok, f_ok = g[np.isfinite(g)], f[np.isfinite(f)]
            if len(g_ok) < 2 or len(f_ok) < 2:
                continue
            table[stat][group] = {"auc": round(two_sided_auc(g_ok, f_ok), 3),
                                  "threshold": round(chance_threshold(len(g_ok), len(f_ok)), 3),
                                  "n_fake": len(f_ok)}
    return table


def dataset_statistics(data_dir: Path) -> tuple[list[dict[str, str]], dict[str, dict[str, float]]]:
    from shards.faces import FaceDetector

    with open(data_dir / "meta.csv", newline="") as f:
        meta = list(csv.DictReader(f))
    detector = FaceDetector()
    try:
        stats = {r["video_name"]: video_statistics(data_dir / r["split"] / r["video_name"], detector) for r in meta}
    finally:
        detector.close()
    return meta, stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a dataset written by python -m scripts.make_synthetic_dataset")
    parser.add_argument("--by", choices=("category", "family", "method"), default="category",
                        help="compare genuine videos with the fakes of each category, family or method")
    parser.add_argument("--json", type=Path, help="also write the table as JSON")
    args = parser.parse_args(argv)
    meta, stats = dataset_statistics(args.data)
    table = separability(meta, stats, args.by)
    groups = list(next(iter(table.values())))
    print(f"{'statistic':<16}" + "".join(f"{g[:19]:>21}" for g in groups))  # AUC / chance threshold
    for stat, row in table.items():
        print(f"{stat:<16}" + "".join(f"{row[g]['auc']:>14.3f} / {row[g]['threshold']:.2f}" if g in row else
                                      f"{'-':>21}" for g in groups))
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
