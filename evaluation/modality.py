"""Modality: the AUC of the fused, audio-only and visual-only heads per FakeAVCeleb category and per method, from
the ``.details.csv`` that ``python -m infer`` writes and the dataset's meta.csv."""

from __future__ import annotations

import argparse
from pathlib import Path

from competition import TPR_KEY
from evaluation.common import (
    HEADS,
    DemoLayout,
    add_common_arguments,
    csv_list,
    group_metrics,
    read_meta,
    read_scores,
    write_json,
    write_table,
)
from evaluation.plots import plot_modality


def modality_analysis(meta: list[dict], details: Path, split: str = "test") -> dict:
    """AUC of each head per FakeAVCeleb category and per method (genuine vs that group) on ``split``."""
    scores = read_scores(details)
    heads: dict[str, dict] = {}
    for head, column in HEADS.items():
        if not any(s.get(column) is not None for s in scores.values()):
            continue  # a model without that head (e.g. the seed baseline)
        heads[head] = {"by_category": group_metrics(meta, scores, column, "category", split),
                       "by_method": group_metrics(meta, scores, column, "method", split)}
    return {"details": str(details), "split": split, "heads": heads}


# --- python -m evaluation modality ------------------------------------------------------------------------------
def command(args: argparse.Namespace) -> int:
    layout = DemoLayout(args.demo_dir)
    meta = read_meta(args.data or layout.data)
    out = args.out or layout.eval / "modality.json"
    models = args.models or [m for m in layout.models() if layout.details(m).is_file()]
    result = {"split": args.split, "models": {}}
    for model in models:
        details = layout.details(model)
        if not details.is_file():
            raise SystemExit(f"python -m evaluation: {details} is missing: run `python -m infer --videos DATA/test "
                             f"--checkpoint {layout.run(model)}/best --out {layout.submission(model)}` first")
        result["models"][model] = modality_analysis(meta, details, args.split)
    if not result["models"]:
        raise SystemExit(f"python -m evaluation: no submissions with .details.csv under {layout.root}/submissions")
    write_json(out, result)
    rows = [{"model": model, "head": head, "group_by": by, "group": group, "auc": m["auc"],
             TPR_KEY: m[TPR_KEY], "n_real": m["n"] - m["n_fake"], "n_fake": m["n_fake"]}
            for model, analysis in result["models"].items() for head, tables in analysis["heads"].items()
            for by, table in (("category", tables["by_category"]), ("method", tables["by_method"]))
            for group, m in table.items()]
    write_table(out.with_suffix(".csv"), rows)
    plot_modality(result, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("modality", help="audio/visual/fused AUC per fake category and method")
    add_common_arguments(p)
    p.add_argument("--data", type=Path, help="dataset folder with meta.csv (default DEMO_DIR/data)")
    p.add_argument("--models", type=csv_list, help="run names (default: every run with a submission)")
    p.add_argument("--split", default="test")
    p.set_defaults(func=command)
