"""Robustness: the test videos extracted once, perturbed deterministically (``evaluation.perturb``: the
DeeperForensics video protocol, 7 types x 5 levels, plus audio noise, band-limiting, AAC and resampling), each
condition scored with the model (``infer.predict.Predictor.score``)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from competition import TPR_KEY, find_videos, read_labels
from evaluation.common import (
    HEADS,
    DemoLayout,
    add_common_arguments,
    add_model_arguments,
    binary_metrics,
    csv_list,
    fmt,
    int_list,
    model_inputs,
    write_json,
    write_table,
)
from evaluation.perturb import AUDIO_PERTURBATIONS, conditions, perturb_sample
from evaluation.plots import plot_robustness
from infer.predict import NEUTRAL_SCORE, Predictor, make_deterministic
from shards.pool import extracted

log = logging.getLogger("evaluation.robustness")

@dataclass
class ExtractedSet:
    """Test videos extracted once: names in sorted order, reader-format samples (None: extraction failed)."""

    names: list[str]
    samples: list[dict | None]
    labels: list[int]
    seconds: float
    workers: int
    reasons: dict[str, str] = field(default_factory=dict)


def extract_set(videos: list[Path], labels: dict[str, int], options, workers: int) -> ExtractedSet:
    from tqdm import tqdm

    names, samples, reasons = [], [], {}
    started = time.perf_counter()
    for name, sample, reason in tqdm(extracted(videos, options, workers), total=len(videos), desc="extract",
                                     unit="video", file=sys.stderr):
        names.append(name)
        samples.append(sample)
        if sample is None:
            reasons[name] = reason
    seconds = time.perf_counter() - started
    missing = [n for n in names if n not in labels]
    if missing:
        raise ValueError(f"{len(missing)} test video(s) have no label (e.g. {missing[:3]}): check the labels CSV")
    return ExtractedSet(names, samples, [labels[n] for n in names], seconds, workers, reasons)


def score_set(predictor, samples: list[dict | None], batch_size: int = 16) -> list[dict[str, float | None]]:
    """Predictor.score in batches; a failed extraction gets the submission's neutral score on every head."""
    out: list[dict[str, float | None]] = [
        {"score": NEUTRAL_SCORE, "audio_score": None, "visual_score": None} for _ in samples]
    ok = [i for i, s in enumerate(samples) if s is not None]
    for start in range(0, len(ok), batch_size):
        chunk = ok[start:start + batch_size]
        for i, scores in zip(chunk, predictor.score([samples[i] for i in chunk]), strict=True):
            out[i] = scores
    return out


def head_metrics(labels: list[int], scores: list[dict]) -> dict[str, dict]:
    """binary_metrics of each head that produced scores for every video."""
    out = {}
    for head, column in HEADS.items():
        values = [s.get(column) for s in scores]
        if all(v is not None for v in values):
            out[head] = binary_metrics(labels, values, ci=True)
    return out


def condition_rng(seed: int, perturbation: str, level: int, index: int) -> np.random.Generator:
    """One random stream per (perturbation, level, video): independent of batching and of the condition list."""
    return np.random.default_rng([seed, zlib.crc32(perturbation.encode()), level, index])


def run_robustness(predictor, data: ExtractedSet, conditions: list[tuple[str, int, float]], seed: int = 0,
                   batch_size: int = 16, progress: bool = True) -> dict:
    """Clean metrics and metrics under each (perturbation, level, value) condition."""
    from tqdm import tqdm

    started = time.perf_counter()
    clean_scores = score_set(predictor, data.samples, batch_size)
    score_seconds = time.perf_counter() - started
    clean = head_metrics(data.labels, clean_scores)
    rows = []
    for name, level, value in tqdm(conditions, desc="robustness", unit="condition", file=sys.stderr,
                                   disable=not progress):
        perturbed = [None if s is None else perturb_sample(s, name, value, condition_rng(seed, name, level, i))
                     for i, s in enumerate(data.samples)]
        metrics = head_metrics(data.labels, score_set(predictor, perturbed, batch_size))
        fused = metrics["fused"]
        rows.append({
            "perturbation": name, "kind": "audio" if name in AUDIO_PERTURBATIONS else "video", "level": level,
            "value": value, "auc": fused["auc"], "auc_ci": fused["auc_ci"], TPR_KEY: fused[TPR_KEY],
            "auc_drop": _difference(clean["fused"]["auc"], fused["auc"]),
            "heads": {h: m["auc"] for h, m in metrics.items()},
        })
    n_ok = sum(s is not None for s in data.samples)
    return {
        "videos": len(data.names), "extracted": n_ok, "failed": data.reasons, "seed": seed,
        "clean": clean, "conditions": rows,
        "timing": {"extract_seconds": data.seconds, "extract_workers": data.workers,
                   "score_seconds": score_seconds, "videos": len(data.names)},
    }


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def robustness_rows(result: dict) -> list[dict]:
    """The conditions as flat table rows (the CSV and the report's table)."""
    return [{k: row[k] for k in ("perturbation", "kind", "level", "value", "auc", TPR_KEY, "auc_drop")}
            for row in result["conditions"]]


# --- python -m evaluation robustness ----------------------------------------------------------------------------
def command(args: argparse.Namespace) -> int:
    import torch

    checkpoint, videos_dir, labels_file = model_inputs(args)
    labels = read_labels(labels_file)
    out = args.out or DemoLayout(args.demo_dir).eval / "robustness.json"
    chosen = [c for c in conditions() if (not args.perturbations or c[0] in args.perturbations)
              and (not args.levels or c[1] in args.levels)]
    unknown = sorted(set(args.perturbations or []) - {c[0] for c in conditions()})
    if unknown:
        raise SystemExit(f"python -m evaluation: unknown perturbation(s) {unknown}; known: "
                         f"{sorted(dict.fromkeys(c[0] for c in conditions()))}")
    make_deterministic(args.seed)
    torch.set_num_threads(args.threads)
    predictor = Predictor(checkpoint, device=args.device)
    videos = find_videos(videos_dir)[: args.max_videos or None]
    data = extract_set(videos, labels, predictor.extraction_options(), args.workers)
    result = run_robustness(predictor, data, chosen, seed=args.seed, batch_size=args.batch_size)
    result.update({"checkpoint": str(checkpoint), "model": args.model, "videos_dir": str(videos_dir),
                   "device": args.device, "threads": args.threads})
    write_json(out, result)
    clean = result["clean"]["fused"]
    rows = [{"perturbation": "clean", "kind": "", "level": 0, "value": "", "auc": clean["auc"],
             TPR_KEY: clean[TPR_KEY], "auc_drop": 0.0}, *robustness_rows(result)]
    write_table(out.with_suffix(".csv"), rows)
    plot_robustness(result, out.with_suffix(".png"))
    log.info("clean AUC %s; %d conditions; worst %s", fmt(clean["auc"]), len(result["conditions"]),
             min(((r["auc"], r["perturbation"], r["level"]) for r in result["conditions"] if r["auc"] is not None),
                 default=None))
    print(f"wrote {out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("robustness", help="AUC under video and audio perturbations")
    add_common_arguments(p)
    add_model_arguments(p)
    p.add_argument("--perturbations", type=csv_list, help="subset of perturbation names (default all)")
    p.add_argument("--levels", type=int_list, help="subset of levels 1..5 (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=command)
