#!/usr/bin/env python
"""Evaluations of a `make demo` output folder; each writes JSON (and a table/figure) under DEMO_DIR/eval/.

    python scripts/evaluate.py generality --demo-dir runs/demo [--holdout lip_sync,swap_voice] [--override k=v]
    python scripts/evaluate.py robustness --demo-dir runs/demo [--model tiny] [--perturbations a,b] [--levels 1,5]
    python scripts/evaluate.py modality   --demo-dir runs/demo [--models baseline,tiny]
    python scripts/evaluate.py shortcuts  --demo-dir runs/demo [--splits train,val,test] [--threshold 0.7]
    python scripts/evaluate.py speed      --demo-dir runs/demo

generality: train the tiny config without the held-out manipulation methods (a subset folder of symlinks, packed
  with `python -m shards.pack`, trained with `train/main.py`, predicted with `python -m infer`), then AUC and
  TPR@FPR=1e-3 on the test set per method: genuine test videos vs that method's fakes. Repeat --holdout for
  several experiments.
robustness: extract the test videos once, apply each perturbation of infer/perturb.py (DeeperForensics video
  protocol, 7 types x 5 levels, plus audio noise/low-pass/AAC/resampling) deterministically, score each condition.
modality: AUC of the fused, audio-only and visual-only heads per FakeAVCeleb category and per method, from the
  submissions' .details.csv and meta.csv.
shortcuts: AUC of each file-metadata feature alone (leading silence, duration, size, bitrate, resolution, fps,
  audio rate/channels); max(AUC, 1-AUC) >= threshold is flagged (--fail-on-flag: exit 1 then).
speed: packing videos/s per core, training clips/s, inference videos/s and the machine, in one table.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infer import evaluation as ev  # noqa: E402

DEFAULT_HOLDOUT = "lip_sync,swap_voice"  # one mouth-motion fake and one combined audio+video fake
log = logging.getLogger("evaluate")


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def int_list(text: str) -> list[int]:
    return [int(t) for t in csv_list(text)]


def write_table(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["empty"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def labels_of(path: Path) -> dict[str, int]:
    return {r["video_name"]: int(r["target"]) for r in ev.read_csv_rows(path)}


# --- subcommands ------------------------------------------------------------------------------------------------
def cmd_generality(args: argparse.Namespace) -> int:
    layout = ev.DemoLayout(args.demo_dir)
    data = args.data or layout.data
    out = args.out or layout.eval / "generality.json"
    reference = layout.submission(args.reference) if args.reference else None
    experiments = []
    for held_out in args.holdout or [csv_list(DEFAULT_HOLDOUT)]:
        name = ev.experiment_name(held_out)
        options = ev.GeneralityOptions(held_out=held_out, config=args.config, overrides=args.override,
                                       workers=args.workers, pack_args=args.pack_arg)
        started = time.time()
        result = ev.run_generality(data, out.parent / "generality" / name, options, reference=reference)
        result["name"] = name
        result["minutes"] = round((time.time() - started) / 60, 2)
        experiments.append(result)
        for method, m in result["per_method"].items():
            log.info("%s: %-12s %-6s AUC %s TPR@1e-3 %s", name, method, "seen" if m["seen"] else "UNSEEN",
                     _fmt(m["auc"]), _fmt(m[ev.TPR_KEY]))
    ev.write_json(out, {"data": str(data), "experiments": experiments})
    rows = [{"experiment": e["name"], "method": m, "seen": v["seen"], "auc": v["auc"], ev.TPR_KEY: v[ev.TPR_KEY],
             "n_real": v["n"] - v["n_fake"], "n_fake": v["n_fake"]}
            for e in experiments for m, v in e["per_method"].items()]
    write_table(out.with_suffix(".csv"), rows)
    ev.plot_generality({"experiments": experiments}, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    import torch

    from infer.perturb import conditions
    from infer.predict import Predictor, find_videos, make_deterministic

    layout = ev.DemoLayout(args.demo_dir)
    checkpoint = args.checkpoint or layout.run(args.model) / "best"
    videos_dir = args.videos or layout.data / "test"
    labels = labels_of(args.labels or layout.data / "test_labels.csv")
    out = args.out or layout.eval / "robustness.json"
    chosen = [c for c in conditions() if (not args.perturbations or c[0] in args.perturbations)
              and (not args.levels or c[1] in args.levels)]
    unknown = sorted(set(args.perturbations or []) - {c[0] for c in conditions()})
    if unknown:
        raise SystemExit(f"evaluate.py: unknown perturbation(s) {unknown}; known: "
                         f"{sorted(dict.fromkeys(c[0] for c in conditions()))}")
    make_deterministic(args.seed)
    torch.set_num_threads(args.threads)
    predictor = Predictor(checkpoint, device=args.device)
    videos = find_videos(videos_dir)[: args.max_videos or None]
    data = ev.extract_set(videos, labels, predictor.extraction_options(), args.workers)
    result = ev.run_robustness(predictor, data, chosen, seed=args.seed, batch_size=args.batch_size)
    result.update({"checkpoint": str(checkpoint), "model": args.model, "videos_dir": str(videos_dir),
                   "device": args.device, "threads": args.threads})
    ev.write_json(out, result)
    clean = result["clean"]["fused"]
    rows = [{"perturbation": "clean", "kind": "", "level": 0, "value": "", "auc": clean["auc"],
             ev.TPR_KEY: clean[ev.TPR_KEY], "auc_drop": 0.0}, *ev.robustness_rows(result)]
    write_table(out.with_suffix(".csv"), rows)
    ev.plot_robustness(result, out.with_suffix(".png"))
    log.info("clean AUC %s; %d conditions; worst %s", _fmt(clean["auc"]), len(result["conditions"]),
             min(((r["auc"], r["perturbation"], r["level"]) for r in result["conditions"] if r["auc"] is not None),
                 default=None))
    print(f"wrote {out}")
    return 0


def cmd_modality(args: argparse.Namespace) -> int:
    layout = ev.DemoLayout(args.demo_dir)
    meta = ev.read_meta(args.data or layout.data)
    out = args.out or layout.eval / "modality.json"
    models = args.models or [m for m in layout.models() if layout.details(m).is_file()]
    result = {"split": args.split, "models": {}}
    for model in models:
        details = layout.details(model)
        if not details.is_file():
            raise SystemExit(f"evaluate.py: {details} is missing: run `python -m infer --videos DATA/test "
                             f"--checkpoint {layout.run(model)}/best --out {layout.submission(model)}` first")
        result["models"][model] = ev.modality_analysis(meta, details, args.split)
    if not result["models"]:
        raise SystemExit(f"evaluate.py: no submissions with .details.csv under {layout.root}/submissions")
    ev.write_json(out, result)
    rows = [{"model": model, "head": head, "group_by": by, "group": group, "auc": m["auc"],
             ev.TPR_KEY: m[ev.TPR_KEY], "n_real": m["n"] - m["n_fake"], "n_fake": m["n_fake"]}
            for model, analysis in result["models"].items() for head, tables in analysis["heads"].items()
            for by, table in (("category", tables["by_category"]), ("method", tables["by_method"]))
            for group, m in table.items()]
    write_table(out.with_suffix(".csv"), rows)
    ev.plot_modality(result, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


def cmd_shortcuts(args: argparse.Namespace) -> int:
    layout = ev.DemoLayout(args.demo_dir) if args.demo_dir else None
    data = args.data or (layout.data if layout else None)
    if data is None:
        raise SystemExit("evaluate.py shortcuts: give --demo-dir or --data")
    out = args.out or (layout.eval if layout else Path(data) / "eval") / "shortcuts.json"
    result = ev.audit_dataset(data, args.splits, args.threshold, args.workers)
    ev.write_json(out, result)
    rows = [{"split": split, "feature": f, **v} for split, audit in result["splits"].items()
            for f, v in audit["features"].items()]
    write_table(out.with_suffix(".csv"), rows)
    ev.plot_shortcuts(result, out.with_suffix(".png"))
    flagged = {split: audit["flagged"] for split, audit in result["splits"].items() if audit["flagged"]}
    print(f"wrote {out}; flagged: {flagged or 'none'}")
    return 1 if flagged and args.fail_on_flag else 0


def cmd_speed(args: argparse.Namespace) -> int:
    layout = ev.DemoLayout(args.demo_dir)
    out = args.out or layout.eval / "speed.json"
    result = {"machine": ev.machine_info(), "packing": packing_speed(args, layout),
              "training": {m: ev.training_speed(layout.run(m)) for m in layout.models()},
              "inference": inference_speed(args, layout)}
    ev.write_json(out, result)
    print(f"wrote {out}")
    return 0


def _bench_file(given: Path | None, default: Path) -> dict | None:
    path = given or default
    if path.is_file():
        return {"source": str(path), **summarise_bench(json.loads(path.read_text()))}
    return None


def summarise_bench(data: dict) -> dict:
    """The throughput numbers of a benchmark's JSON: bench_pack.py's per-core table flattened, else every
    numeric leaf whose name says it is a rate."""
    per_core = data.get("videos_per_s_per_core")
    if isinstance(per_core, dict):
        out = {f"{stage}_{how}_videos_per_s_per_core": v for stage, hows in per_core.items() if isinstance(hows, dict)
               for how, v in hows.items()}
        out.update({k: data[k] for k in ("ratio_pack_vs_decode", "videos", "workers") if k in data})
        return out
    return ev.find_numbers(data, ev.THROUGHPUT)


def packing_speed(args: argparse.Namespace, layout: ev.DemoLayout) -> dict:
    """scripts/bench_pack.py's JSON (given, cached in eval/, or run now on the first test videos)."""
    cached = layout.eval / "bench_pack.json"
    found = _bench_file(args.bench_pack, cached)
    if found:
        return found
    videos = _speed_videos(layout, args.speed_videos, layout.eval / "speed" / "videos")
    return _run_bench("bench_pack.py", ["--videos", videos, "--workers", args.workers, "--limit", args.speed_videos,
                                        *ev.extraction_args(args.config)], cached)


def inference_speed(args: argparse.Namespace, layout: ev.DemoLayout) -> dict:
    """scripts/bench_infer.py's JSON (given, cached in eval/, or run now on the first test videos): end to end
    against decoding the same videos alone."""
    cached = layout.eval / "bench_infer.json"
    found = _bench_file(args.bench_infer, cached)
    if found:
        return found
    videos = _speed_videos(layout, args.speed_videos, layout.eval / "speed" / "videos")
    return _run_bench("bench_infer.py", ["--videos", videos, "--checkpoint", layout.run(args.model) / "best",
                                         "--workers", args.workers, "--limit", args.speed_videos], cached)


def _run_bench(script: str, arguments: list, cached: Path) -> dict:
    """Run a benchmark script, keep its JSON in ``cached`` and return its throughput numbers."""
    cmd = [sys.executable, str(ROOT / "scripts" / script), *map(str, arguments)]
    log.info("$ %s", " ".join(cmd))
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-2000:]}")
    cached.write_text(result.stdout)
    return {"source": f"scripts/{script} ({cached})", **summarise_bench(json.loads(result.stdout))}


def _speed_videos(layout: ev.DemoLayout, count: int, folder: Path) -> Path:
    """A folder of symlinks to the first ``count`` test videos (the same ones for every timing)."""
    from infer.predict import find_videos

    if not folder.is_dir():
        folder.mkdir(parents=True)
        for video in find_videos(layout.data / "test")[:count]:
            (folder / video.name).symlink_to(video.resolve())
    return folder


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# --- command line -------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    workers = os.cpu_count() or 1

    def common(p: argparse.ArgumentParser, demo_required: bool = True) -> None:
        p.add_argument("--demo-dir", type=Path, required=demo_required, help="the `make demo` output folder")
        p.add_argument("--out", type=Path, help="output JSON (default: DEMO_DIR/eval/<command>.json)")
        p.add_argument("--workers", type=int, default=workers, help="extraction/packing processes")

    p = sub.add_parser("generality", help="train with methods held out, per-method test metrics")
    common(p)
    p.add_argument("--data", type=Path, help="dataset folder (default DEMO_DIR/data)")
    p.add_argument("--holdout", type=csv_list, action="append",
                   help=f"comma-separated methods to hold out; repeat for several experiments (default {DEFAULT_HOLDOUT})")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.yaml")
    p.add_argument("--override", action="append", default=[], help="train/main.py config override, e.g. train.epochs=1")
    p.add_argument("--pack-arg", action="append", default=[], help="extra shards.pack argument (repeat per token)")
    p.add_argument("--reference", default="tiny", help="submission of the all-methods model to compare ('' none)")
    p.set_defaults(func=cmd_generality)

    p = sub.add_parser("robustness", help="AUC under video and audio perturbations")
    common(p)
    p.add_argument("--model", default="tiny", help="run name under DEMO_DIR/runs")
    p.add_argument("--checkpoint", type=Path, help="default DEMO_DIR/runs/MODEL/best")
    p.add_argument("--videos", type=Path, help="default DEMO_DIR/data/test")
    p.add_argument("--labels", type=Path, help="default DEMO_DIR/data/test_labels.csv")
    p.add_argument("--perturbations", type=csv_list, help="subset of perturbation names (default all)")
    p.add_argument("--levels", type=int_list, help="subset of levels 1..5 (default all)")
    p.add_argument("--max-videos", type=int, default=0, help="first N test videos only (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=max(1, workers), help="torch threads for scoring")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_robustness)

    p = sub.add_parser("modality", help="audio/visual/fused AUC per fake category and method")
    common(p)
    p.add_argument("--data", type=Path, help="dataset folder with meta.csv (default DEMO_DIR/data)")
    p.add_argument("--models", type=csv_list, help="run names (default: every run with a submission)")
    p.add_argument("--split", default="test")
    p.set_defaults(func=cmd_modality)

    p = sub.add_parser("shortcuts", help="AUC of each metadata feature alone (shortcut audit)")
    common(p, demo_required=False)
    p.add_argument("--data", type=Path, help="dataset folder (default DEMO_DIR/data)")
    p.add_argument("--splits", type=csv_list, default=["train", "val", "test"])
    p.add_argument("--threshold", type=float, default=ev.SHORTCUT_THRESHOLD)
    p.add_argument("--fail-on-flag", action="store_true", help="exit 1 when a feature is flagged")
    p.set_defaults(func=cmd_shortcuts)

    p = sub.add_parser("speed", help="packing, training and inference throughput with the machine")
    common(p)
    p.add_argument("--bench-pack", type=Path, help="scripts/bench_pack.py output (default eval/bench_pack.json)")
    p.add_argument("--bench-infer", type=Path, help="scripts/bench_infer.py output (default eval/bench_infer.json)")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.yaml", help="extraction options to pack with")
    p.add_argument("--model", default="tiny")
    p.add_argument("--speed-videos", type=int, default=16, help="test videos benchmarked when no benchmark file exists")
    p.set_defaults(func=cmd_speed)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[evaluate] %(message)s")
    args = parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"evaluate.py {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
