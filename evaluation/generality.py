"""Generality: train without some manipulation methods and families, then test on what training never saw.

The protocol (issue 13): the dataset's splits already hold disjoint identities and voices, so every test video
shows an unseen person with an unseen voice. Training additionally leaves out the held-out methods (one
implementation of a family whose other implementations are trained on) and families (all of their methods).
The test set is then scored in three categories, each with bootstrap confidence intervals and per method and
family: ``seen`` methods, ``unseen_method`` (a different tool of a trained family) and ``unseen_family``.

The real commands on a subset of the dataset (a folder of symlinks packed with ``python -m shards.pack``, trained
with ``python -m train``, predicted with ``python -m infer``) for each config; steps whose output exists are
skipped, so an interrupted run resumes.
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
from shards.assets import sha256
from train.config import load_config
from train.data import pack_arguments

# a whole family (audio offset: the sync check of issue 14 needs a model that never saw one) and one implementation
# of every other family
DEFAULT_HOLDOUT = "av_offset,face_swap_poisson_hull,lip_sync_dub,vc_lpc,tts_flite_diphone,both_swap_vc"
DEFAULT_CONFIGS = "tiny,baseline"
CATEGORIES = ("seen", "unseen_method", "unseen_family")
log = logging.getLogger("evaluation.generality")

@dataclass
class GeneralityOptions:
    held_out: list[str]  # methods or whole families
    config: Path = ROOT / "configs" / "tiny.yaml"
    overrides: list[str] = field(default_factory=list)  # passed to python -m train after its flags
    workers: int = os.cpu_count() or 1
    pack_args: list[str] = field(default_factory=list)  # extra shards.pack flags (e.g. --shard-max-count 8)


def methods_of(meta: list[dict]) -> list[str]:
    return sorted({r["method"] for r in meta if int(r["target"]) == 1})


def family_methods(meta: list[dict]) -> dict[str, list[str]]:
    """family -> its fake methods, from meta.csv."""
    out: dict[str, set[str]] = {}
    for r in meta:
        if int(r["target"]) == 1:
            out.setdefault(r["family"], set()).add(r["method"])
    return {family: sorted(methods) for family, methods in sorted(out.items())}


def resolve_holdout(meta: list[dict], names: list[str]) -> list[str]:
    """Held-out methods: each name is a method or a family (all of its methods)."""
    families = family_methods(meta)
    known = methods_of(meta)
    unknown = sorted(set(names) - set(known) - set(families))
    if unknown or not names:
        raise ValueError(f"held-out names {unknown or '(none)'} are neither fake methods nor families of the "
                         f"dataset's meta.csv; methods: {known}; families: {list(families)}")
    held = sorted({m for n in names for m in families.get(n, [n])})
    if set(held) == set(known):
        raise ValueError(f"holding out every method ({known}) leaves no fakes to train on")
    return held


def method_status(meta: list[dict], held_out: list[str]) -> dict[str, str]:
    """method -> ``seen``, ``unseen_method`` (its family has trained methods) or ``unseen_family``."""
    status = {}
    for methods in family_methods(meta).values():
        family_unseen = set(methods) <= set(held_out)
        for m in methods:
            status[m] = "seen" if m not in held_out else "unseen_family" if family_unseen else "unseen_method"
    return status


def protocol_metrics(meta: list[dict], scores: dict, held_out: list[str]) -> dict:
    """Test metrics (with bootstrap intervals) per method, per family and per category of ``method_status``."""
    status = method_status(meta, held_out)
    families = family_methods(meta)
    family_of = {m: f for f, methods in families.items() for m in methods}
    per_method = group_metrics(meta, scores, "score", "method")
    per_family = group_metrics(meta, scores, "score", "family")
    categories = {c: _pooled(meta, scores, {m for m, s in status.items() if s == c}) for c in CATEGORIES}
    return {
        "per_method": {m: {**v, "status": status[m], "family": family_of[m]}
                       for m, v in per_method.items() if m != "all"},
        "per_family": {f: {**v, "status": _family_status(methods, status)}
                       for f, methods in families.items() if (v := per_family.get(f))},
        "categories": categories,
        "all": per_method.get("all"),
    }


def _family_status(methods: list[str], status: dict[str, str]) -> str:
    kinds = {status[m] for m in methods}
    return kinds.pop() if len(kinds) == 1 else "partly_seen"


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
    """Train ``options.config`` without the held-out methods and families, predict the full test split, and
    score it with ``protocol_metrics``.

    ``reference``: a submission of a model trained on every method (the demo's), scored the same way.
    Steps whose output exists are skipped, so an interrupted run resumes.
    """
    meta = read_meta(data_dir)
    held_out = resolve_holdout(meta, options.held_out)
    py = sys.executable
    _reset_if_changed(out_dir, experiment_spec(options, held_out))
    subset = out_dir / "data"
    counts = {}
    for split in ("train", "val"):
        _, _, counts[split] = make_subset(data_dir, meta, split, set(held_out), subset)
    cfg = load_config(options.config, options.overrides)  # a data override changes the clips too
    for split in ("train", "val"):
        target = out_dir / "shards" / split
        _step(out_dir / f"pack_{split}", [py, "-m", "shards.pack", "--videos", subset / split, "--labels",
                                         subset / LABEL_FILES[split], "--out", target, "--workers", options.workers,
                                         *pack_arguments(cfg, split), *options.pack_args], clear=target)
    run_dir = out_dir / "run"
    _step(out_dir / "train", [py, "-m", "train", "--config", options.config, "--train-shards",
                              out_dir / "shards" / "train", "--val-shards", out_dir / "shards" / "val", "--out", run_dir,
                              *options.overrides], clear=run_dir)
    submission = out_dir / "test.csv"
    _step(out_dir / "infer", [py, "-m", "infer", "--videos", Path(data_dir) / "test", "--checkpoint",
                              run_dir / "best", "--out", submission, "--workers", options.workers])
    result = {
        "held_out": held_out,
        "held_out_names": sorted(options.held_out),
        "config": str(options.config),
        "overrides": options.overrides,
        "train_videos": counts["train"],
        "val_videos": counts["val"],
        "run_dir": str(run_dir),
        "val": _read_best(run_dir),
        **protocol_metrics(meta, read_scores(details_path(submission)), held_out),
    }
    if reference is not None and details_path(reference).is_file():
        result["reference"] = {"submission": str(reference),
                               **protocol_metrics(meta, read_scores(details_path(reference)), held_out)}
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


def experiment_spec(options: GeneralityOptions, held_out: list[str]) -> dict:
    """What a work folder's results depend on besides the code: held-out methods, the config file and its content,
    overrides, and the packing arguments of each split (the config's and the extra ones)."""
    cfg = load_config(options.config, options.overrides)
    return {"held_out": held_out, "config": str(options.config),
            "config_sha256": sha256(Path(options.config)),
            "overrides": options.overrides, "pack_args": options.pack_args,
            "packing": {split: pack_arguments(cfg, split) for split in ("train", "val")}}


def _reset_if_changed(out_dir: Path, spec: dict) -> None:
    """A work folder made with another ``experiment_spec`` is started afresh."""
    path = out_dir / "spec.json"
    if out_dir.exists() and (not path.is_file() or json.loads(path.read_text()) != spec):
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=2) + "\n")


def _pooled(meta: list[dict], scores: dict, methods: set[str]) -> dict:
    """Genuine test videos against the fakes of ``methods`` (empty fakes: no AUC)."""
    rows = [r for r in meta if r["split"] == "test" and r["video_name"] in scores
            and (int(r["target"]) == 0 or r["method"] in methods)]
    return binary_metrics([int(r["target"]) for r in rows], [scores[r["video_name"]]["score"] for r in rows], ci=True)


def _read_best(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data.get("best", data) if isinstance(data, dict) else {}


# --- python -m evaluation generality ----------------------------------------------------------------------------
def config_path(name: str) -> Path:
    """A config name (``tiny`` -> configs/tiny.yaml) or a path."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else ROOT / "configs" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"config {name}: {path} does not exist (give a name under configs/ or a YAML path)")
    return path


def command(args: argparse.Namespace) -> int:
    layout = DemoLayout(args.demo_dir)
    data = args.data or layout.data
    out = args.out or layout.eval / "generality.json"
    experiments = []
    for held_out in args.holdout or [csv_list(DEFAULT_HOLDOUT)]:
        for config in map(config_path, args.configs):
            name = f"{config.stem}-{experiment_name(held_out)}"
            reference = layout.submission(config.stem) if args.reference else None
            options = GeneralityOptions(held_out=held_out, config=config, overrides=args.override,
                                        workers=args.workers, pack_args=args.pack_arg)
            started = time.time()
            result = run_generality(data, out.parent / "generality" / name, options, reference=reference)
            result.update(name=name, model=config.stem, minutes=round((time.time() - started) / 60, 2))
            experiments.append(result)
            for category, m in result["categories"].items():
                log.info("%s: %-13s AUC %s %s TPR@1e-3 %s (%s fakes)", name, category, fmt(m["auc"]),
                         fmt(m["auc_ci"]), fmt(m[TPR_KEY]), m["n_fake"])
    write_json(out, {"data": str(data), "experiments": experiments})
    rows = [{"experiment": e["name"], "model": e["model"], "method": m, "family": v["family"], "status": v["status"],
             "auc": v["auc"], "auc_low": (v["auc_ci"] or [None])[0], "auc_high": (v["auc_ci"] or [None, None])[1],
             TPR_KEY: v[TPR_KEY], "n_real": v["n"] - v["n_fake"], "n_fake": v["n_fake"]}
            for e in experiments for m, v in e["per_method"].items()]
    write_table(out.with_suffix(".csv"), rows)
    plot_generality({"experiments": experiments}, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("generality", help="train with methods and families held out; test metrics per method, "
                                          "family and category (seen, unseen method, unseen family)")
    add_common_arguments(p)
    p.add_argument("--data", type=Path, help="dataset folder (default DEMO_DIR/data)")
    p.add_argument("--holdout", type=csv_list, action="append",
                   help="comma-separated methods or families to hold out; repeat for several experiments "
                        f"(default {DEFAULT_HOLDOUT})")
    p.add_argument("--configs", type=csv_list, default=csv_list(DEFAULT_CONFIGS),
                   help=f"comma-separated config names under configs/ or YAML paths, one experiment each "
                        f"(default {DEFAULT_CONFIGS})")
    p.add_argument("--override", action="append", default=[], help="config override, e.g. train.epochs=1 (data.* clip options also reach packing)")
    p.add_argument("--pack-arg", action="append", default=[], help="extra shards.pack argument (repeat per token)")
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="do not score the demo's all-methods model of the same config (DEMO_DIR/<config>.csv)")
    p.set_defaults(func=command)
