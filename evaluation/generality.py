"""Generality: train without some manipulation methods, then AUC and TPR@FPR=1e-3 on the test set per method.

The real commands on a subset of the dataset (a folder of symlinks packed with ``python -m shards.pack``, trained
with ``python -m train``, predicted with ``python -m infer``); steps whose output exists are skipped, so an
interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from competition import LABEL_FILES, TPR_KEY, write_labels
from evaluation.common import (
    ROOT,
    DemoLayout,
    add_common_arguments,
    binary_metrics,
    csv_list,
    details_path,
    fmt,
    group_metrics,
    read_meta,
    read_scores,
    run_command,
    write_json,
    write_table,
)
from evaluation.plots import plot_generality
from train.data import pack_arguments

DEFAULT_HOLDOUT = "lip_sync_dub,both_swap_vc"  # one mouth-motion fake and one combined audio+video fake
log = logging.getLogger("evaluation.generality")

@dataclass
class GeneralityOptions:
    held_out: list[str]
    config: Path = ROOT / "configs" / "tiny.yaml"
    overrides: list[str] = field(default_factory=list)  # passed to python -m train after its flags
    workers: int = os.cpu_count() or 1
    pack_args: list[str] = field(default_factory=list)  # extra shards.pack flags (e.g. --shard-max-count 8)


def methods_of(meta: list[dict]) -> list[str]:
    return sorted({r["method"] for r in meta if int(r["target"]) == 1})


def experiment_name(held_out: list[str]) -> str:
    return "holdout-" + "+".join(sorted(held_out))


def make_subset(data_dir: Path, meta: list[dict], split: str, exclude: set[str], out: Path) -> tuple[Path, Path, int]:
    """out/<split>/ with symlinks to the split's videos whose method is not excluded, and its labels CSV."""
    videos = out / split
    if videos.exists():
        for link in videos.iterdir():
            link.unlink()
    videos.mkdir(parents=True, exist_ok=True)
    kept = sorted((r for r in meta if r["split"] == split and r["method"] not in exclude),
                  key=lambda r: r["video_name"])
    for row in kept:
        source = (Path(data_dir) / split / row["video_name"]).resolve()
        if not source.is_file():
            raise FileNotFoundError(f"{source} is listed in meta.csv but missing: regenerate the dataset")
        (videos / row["video_name"]).symlink_to(source)
    labels = write_labels(out / LABEL_FILES[split], ((r["video_name"], int(r["target"])) for r in kept))
    return videos, labels, len(kept)


def run_generality(data_dir: Path, out_dir: Path, options: GeneralityOptions,
                   reference: Path | None = None) -> dict:
    """Train without ``options.held_out`` methods, predict the full test split, metrics per method.

    ``reference``: a submission of a model trained on every method (the demo's), for the same per-method table.
    Steps whose output exists are skipped, so an interrupted run resumes.
    """
    meta = read_meta(data_dir)
    known = methods_of(meta)
    unknown = sorted(set(options.held_out) - set(known))
    if unknown or not options.held_out:
        raise ValueError(f"held-out methods {unknown or '(none)'} are not fake methods of {data_dir}/meta.csv; "
                         f"choose from {known}")
    if set(options.held_out) == set(known):
        raise ValueError(f"holding out every method ({known}) leaves no fakes to train on")
    py = sys.executable
    _reset_if_changed(out_dir, {"held_out": sorted(options.held_out), "config": str(options.config),
                                "overrides": options.overrides, "pack_args": options.pack_args})
    subset = out_dir / "data"
    counts = {}
    for split in ("train", "val"):
        _, _, counts[split] = make_subset(data_dir, meta, split, set(options.held_out), subset)
    pack = pack_arguments(options.config)
    for split in ("train", "val"):
        target = out_dir / "shards" / split
        _step(out_dir / f"pack_{split}", [py, "-m", "shards.pack", "--videos", subset / split, "--labels",
                                         subset / LABEL_FILES[split], "--out", target, "--workers", options.workers,
                                         *pack, *options.pack_args], clear=target)
    run_dir = out_dir / "run"
    _step(out_dir / "train", [py, "-m", "train", "--config", options.config, "--train-shards",
                              out_dir / "shards" / "train", "--val-shards", out_dir / "shards" / "val", "--out", run_dir,
                              *options.overrides], clear=run_dir)
    submission = out_dir / "test.csv"
    _step(out_dir / "infer", [py, "-m", "infer", "--videos", Path(data_dir) / "test", "--checkpoint",
                              run_dir / "best", "--out", submission, "--workers", options.workers])
    scores = read_scores(details_path(submission))
    per_method = group_metrics(meta, scores, "score", "method")
    unseen_pooled = _pooled(meta, scores, set(options.held_out))
    result = {
        "held_out": sorted(options.held_out),
        "seen": sorted(set(known) - set(options.held_out)),
        "config": str(options.config),
        "overrides": options.overrides,
        "train_videos": counts["train"],
        "val_videos": counts["val"],
        "run_dir": str(run_dir),
        "val": _read_best(run_dir),
        "per_method": {m: {**v, "seen": m not in options.held_out} for m, v in per_method.items() if m != "all"},
        "unseen_pooled": unseen_pooled,
        "all": per_method.get("all"),
    }
    if reference is not None and details_path(reference).is_file():
        ref = group_metrics(meta, read_scores(details_path(reference)), "score", "method")
        result["reference"] = {"submission": str(reference), "per_method": ref}
    return result


def _step(marker: Path, cmd: list, clear: Path | None = None) -> None:
    """Run ``cmd`` unless ``marker.done`` says it finished before; an unfinished earlier try is cleared first."""
    done = marker.with_name(marker.name + ".done")
    if done.is_file():
        return
    if clear is not None and clear.exists():
        shutil.rmtree(clear)
    run_command(cmd, marker.parent / "logs" / f"{marker.name}.log")
    done.write_text(" ".join(map(str, cmd)) + "\n")


def _reset_if_changed(out_dir: Path, spec: dict) -> None:
    """A work folder made with other options (held-out methods, config, overrides) is started afresh."""
    path = out_dir / "spec.json"
    if out_dir.exists() and (not path.is_file() or json.loads(path.read_text()) != spec):
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=2) + "\n")


def _pooled(meta: list[dict], scores: dict, methods: set[str]) -> dict:
    rows = [r for r in meta if r["split"] == "test" and r["video_name"] in scores
            and (int(r["target"]) == 0 or r["method"] in methods)]
    return binary_metrics([int(r["target"]) for r in rows], [scores[r["video_name"]]["score"] for r in rows])


def _read_best(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data.get("best", data) if isinstance(data, dict) else {}


# --- python -m evaluation generality ----------------------------------------------------------------------------
def command(args: argparse.Namespace) -> int:
    layout = DemoLayout(args.demo_dir)
    data = args.data or layout.data
    out = args.out or layout.eval / "generality.json"
    reference = layout.submission(args.reference) if args.reference else None
    experiments = []
    for held_out in args.holdout or [csv_list(DEFAULT_HOLDOUT)]:
        name = experiment_name(held_out)
        options = GeneralityOptions(held_out=held_out, config=args.config, overrides=args.override,
                                       workers=args.workers, pack_args=args.pack_arg)
        started = time.time()
        result = run_generality(data, out.parent / "generality" / name, options, reference=reference)
        result["name"] = name
        result["minutes"] = round((time.time() - started) / 60, 2)
        experiments.append(result)
        for method, m in result["per_method"].items():
            log.info("%s: %-12s %-6s AUC %s TPR@1e-3 %s", name, method, "seen" if m["seen"] else "UNSEEN",
                     fmt(m["auc"]), fmt(m[TPR_KEY]))
    write_json(out, {"data": str(data), "experiments": experiments})
    rows = [{"experiment": e["name"], "method": m, "seen": v["seen"], "auc": v["auc"], TPR_KEY: v[TPR_KEY],
             "n_real": v["n"] - v["n_fake"], "n_fake": v["n_fake"]}
            for e in experiments for m, v in e["per_method"].items()]
    write_table(out.with_suffix(".csv"), rows)
    plot_generality({"experiments": experiments}, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("generality", help="train with methods held out, per-method test metrics")
    add_common_arguments(p)
    p.add_argument("--data", type=Path, help="dataset folder (default DEMO_DIR/data)")
    p.add_argument("--holdout", type=csv_list, action="append",
                   help=f"comma-separated methods to hold out; repeat for several experiments (default {DEFAULT_HOLDOUT})")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.yaml")
    p.add_argument("--override", action="append", default=[], help="python -m train config override, e.g. train.epochs=1")
    p.add_argument("--pack-arg", action="append", default=[], help="extra shards.pack argument (repeat per token)")
    p.add_argument("--reference", default="tiny", help="submission of the all-methods model to compare ('' none)")
    p.set_defaults(func=command)
