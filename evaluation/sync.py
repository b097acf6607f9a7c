"""Synchrony: does the model's lip/audio synchrony score notice audio moved against the frames?

The genuine test videos are extracted once as they are and once per shift with their audio taken ``shift`` ms
earlier and later (``ExtractOptions.audio_shift``: the frames stay, the audio comes from elsewhere in the same
recording). For each shift magnitude the AUC of ``-sync_score`` separates the shifted clips (positives, both
directions pooled) from the unshifted ones: a self-supervised check that needs no fake and no label, meant for a
model trained without any offset fakes (``python -m evaluation generality --holdout ...`` leaves them out).

    python -m evaluation sync --demo-dir DEMO [--model small] [--shifts 40,80,120,200,400]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from competition import find_videos, read_labels
from evaluation.common import (
    DemoLayout,
    add_common_arguments,
    add_model_arguments,
    binary_metrics,
    fmt,
    int_list,
    model_inputs,
    write_json,
    write_table,
)
from evaluation.plots import plot_sync
from infer.predict import Predictor, make_deterministic
from shards.pool import extracted

DEFAULT_SHIFTS_MS = [40, 80, 120, 200, 400]
log = logging.getLogger("evaluation.sync")


def sync_scores(predictor: Predictor, videos: list[Path], shift_ms: float, workers: int,
                batch_size: int = 16) -> dict[str, float]:
    """video_name -> sync_score of its clip with the audio shifted by ``shift_ms`` (failed extractions left out)."""
    options = dataclasses.replace(predictor.extraction_options(), audio_shift=shift_ms / 1000.0)
    scores: dict[str, float] = {}
    pending: list[tuple[str, dict]] = []

    def flush() -> None:
        rows = predictor.score([s for _, s in pending])
        if "sync_score" not in rows[0]:
            raise ValueError(f"model {predictor.spec.model.name!r} has no synchrony score")
        scores.update({name: row["sync_score"] for (name, _), row in zip(pending, rows, strict=True)})
        pending.clear()

    for name, sample, _ in extracted(videos, options, workers):
        if sample is not None:
            pending.append((name, sample))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return scores


def run_sync(predictor: Predictor, videos: list[Path], shifts_ms: list[int], workers: int) -> dict:
    """Per shift: AUC of -sync_score, shifted (both directions) against unshifted clips, and the mean scores."""
    aligned = sync_scores(predictor, videos, 0.0, workers)
    result = {"videos": len(videos), "scored": len(aligned), "aligned_mean": float(np.mean(list(aligned.values()))),
              "shifts": []}
    for shift in shifts_ms:
        moved = {sign: sync_scores(predictor, videos, sign * shift, workers) for sign in (-1, 1)}
        names = sorted(aligned)
        labels = [0] * len(names) + [1] * sum(len(m) for m in moved.values())
        scores = [-aligned[n] for n in names] + [-v for sign in (-1, 1) for v in moved[sign].values()]
        metrics = binary_metrics(labels, scores, ci=True)
        result["shifts"].append({"shift_ms": shift, "auc": metrics["auc"], "auc_ci": metrics["auc_ci"], "n_aligned": len(names),
                                 "n_shifted": len(labels) - len(names),
                                 "mean_sync_earlier": float(np.mean(list(moved[-1].values()))),
                                 "mean_sync_later": float(np.mean(list(moved[1].values())))})
        log.info("shift %d ms: AUC %s (sync score %.3f aligned, %.3f / %.3f shifted)", shift, fmt(metrics["auc"]),
                 result["aligned_mean"], result["shifts"][-1]["mean_sync_earlier"],
                 result["shifts"][-1]["mean_sync_later"])
    return result


# --- python -m evaluation sync -----------------------------------------------------------------------------------
def command(args: argparse.Namespace) -> int:
    checkpoint, videos_dir, labels_file = model_inputs(args)
    labels = read_labels(labels_file)
    out = args.out or DemoLayout(args.demo_dir).eval / "sync.json"
    make_deterministic(0)
    torch.set_num_threads(args.threads)
    predictor = Predictor(checkpoint, device=args.device)
    videos = [v for v in find_videos(videos_dir) if labels.get(v.name) == 0][: args.max_videos or None]
    if not videos:
        raise ValueError(f"no genuine video in {videos_dir} (labels {labels_file})")
    result = run_sync(predictor, videos, args.shifts, args.workers)
    result.update({"checkpoint": str(checkpoint), "model": args.model, "videos_dir": str(videos_dir)})
    write_json(out, result)
    write_table(out.with_suffix(".csv"), result["shifts"])
    plot_sync(result, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("sync", help="AUC of the synchrony score against audio shifted by N ms (genuine videos)")
    add_common_arguments(p)
    add_model_arguments(p, videos="genuine test videos")
    p.add_argument("--shifts", type=int_list, default=DEFAULT_SHIFTS_MS, help="shift magnitudes in ms")
    p.set_defaults(func=command)
