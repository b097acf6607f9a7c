"""What the report reads: where a `make demo` folder keeps its runs and evaluations, each run's files (config,
metrics, MLflow, submission) and the Markdown helpers the sections are written with."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from competition import compute_metrics
from evaluation.common import DemoLayout, bootstrap_auc_ci, details_path, mlflow_run, read_csv_rows

EVALUATIONS = ("shortcuts", "modality", "robustness", "generality", "speed")  # speed reads robustness' timing
OURS = "tiny"  # the run compared with the baseline when several exist (the demo trains baseline and tiny)
EXPLAIN_VIDEOS = 4  # explained videos shown per model: the 2 highest- and the 2 lowest-scoring
log = logging.getLogger("report")


# --- where things are -------------------------------------------------------------------------------------------
@dataclass
class Sources:
    demo: DemoLayout
    runs: dict[str, Path] = field(default_factory=dict)  # name -> run folder, baseline first
    protocol: Path | None = None  # a `python -m scripts.protocol` folder: its generality and sync results are shown
    gpu_check: Path | None = None  # `make gpu-check`'s JSON: the speed section adds its GPU training table

    @property
    def eval_dir(self) -> Path:
        return self.demo.eval

    @property
    def generality_dir(self) -> Path:
        """Where generality.json and sync.json are read: the protocol run's eval/ when given, else the demo's."""
        return self.protocol / "eval" if self.protocol else self.demo.eval

    def submission(self, name: str) -> Path | None:
        path = self.demo.submission(name)
        return path if path.is_file() else None

    @property
    def ours(self) -> str | None:
        others = [n for n in self.runs if n != "baseline"]
        return OURS if OURS in self.runs else (others[0] if others else None)


def resolve_sources(paths: list[Path], protocol: Path | None = None, gpu_check: Path | None = None) -> Sources:
    """A demo folder (has runs/) or run folders (the demo folder is then the runs' grandparent), and optionally a
    protocol folder whose generality evaluation must be there already and the GPU check's JSON."""
    if gpu_check is not None and not Path(gpu_check).is_file():
        raise SystemExit(f"python -m evaluation.report: {gpu_check} does not exist; run `make gpu-check` on a GPU "
                         "machine (README, GPU check) and pass its runs/gpu_check/gpu_check.json")
    if protocol is not None and not (protocol / "eval" / "generality.json").is_file():
        raise SystemExit(f"python -m evaluation.report: {protocol} holds no eval/generality.json; run "
                         f"`python -m scripts.protocol --out {protocol}` first")
    roots, runs = set(), {}
    for path in paths:
        path = Path(os.path.abspath(path))  # not resolve(): a run folder may be a symlink inside runs/
        if (path / "runs").is_dir():
            roots.add(path)
            layout = DemoLayout(path)
            runs.update({name: layout.run(name) for name in layout.models()})
        elif (path / "best").is_dir() or (path / "metrics.json").is_file():
            roots.add(path.parent.parent if path.parent.name == "runs" else path.parent)
            runs[path.name] = path
        else:
            raise SystemExit(f"python -m evaluation.report: {path} is neither a `make demo` folder (with runs/) nor a run "
                             "folder (with best/ or metrics.json); run `make demo` first")
    if len(roots) != 1:
        raise SystemExit(f"python -m evaluation.report: the runs come from {len(roots)} folders ({sorted(map(str, roots))}); "
                         "give runs of one demo folder")
    ordered = dict(sorted(runs.items(), key=lambda kv: (kv[0] != "baseline", kv[0])))
    if not ordered:
        raise SystemExit(f"python -m evaluation.report: no trained run under {paths}; run `make demo` first")
    return Sources(DemoLayout(roots.pop()), ordered, Path(os.path.abspath(protocol)) if protocol else None,
                   Path(os.path.abspath(gpu_check)) if gpu_check else None)


# --- reading runs ---------------------------------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    folder: Path
    metrics: dict
    config: dict
    info: dict
    mlflow: dict
    test: dict | None  # test metrics of its submission
    test_scores: tuple[list[int], list[float]] | None
    details: list[dict]
    params: dict  # python -m scripts.count_params --json


def read_run(name: str, folder: Path, src: Sources, test_labels: dict[str, int], params: dict) -> Run:
    import yaml

    metrics = _json(folder / "metrics.json")
    config_path = next((p for p in (folder / "config.yaml", folder / "best" / "config.yaml") if p.is_file()), None)
    config = yaml.safe_load(config_path.read_text()) if config_path else {}
    info = _json(folder / "best" / "info.json")
    mlflow = mlflow_run(folder, history=(r"train/loss", r"val/auc", r"train/lr"))
    submission = src.submission(name)
    test = scores = None
    details: list[dict] = []
    if submission is not None:
        predicted = {r["video_name"]: float(r["score"]) for r in read_csv_rows(submission)}
        names = sorted(set(predicted) & set(test_labels))
        y, s = [test_labels[n] for n in names], [predicted[n] for n in names]
        test, scores = _metrics(y, s), (y, s)
        if details_path(submission).is_file():
            details = read_csv_rows(details_path(submission))
    return Run(name, folder, metrics, config, info, mlflow, test, scores, details, params)


def _metrics(y: list[int], s: list[float]) -> dict:
    metrics = compute_metrics(y, s)
    if len(set(y)) == 2:
        metrics["auc_ci"] = bootstrap_auc_ci(np.asarray(y), np.asarray(s, dtype=float))
    return metrics


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def best_val(run: Run) -> dict:
    return run.metrics.get("best") or run.info.get("metrics") or {}


def sizes(run: Run) -> dict:
    """Parameter/MAC counts: python -m scripts.count_params, else what training logged (metrics.json, MLflow)."""
    found = {k: v for k, v in run.params.items() if k in ("params_true", "params_thop", "macs_per_clip")}
    logged = run.metrics.get("params") or run.info.get("params") or {}
    for key in ("params_true", "params_thop", "macs_per_clip"):
        if key not in found and key in logged:
            found[key] = logged[key]
        if key not in found and key in run.mlflow.get("params", {}):
            found[key] = float(run.mlflow["params"][key])
    return found


def history_from_files(run: Run) -> dict[str, list[tuple[int, float]]]:
    """Fallback without MLflow: per-step loss from train_log.jsonl, val AUC from metrics.json's history."""
    history: dict[str, list[tuple[int, float]]] = {}
    log_path = run.folder / "train_log.jsonl"
    if log_path.is_file():
        steps = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
        history["train/loss"] = [(s["step"], s["loss"]) for s in steps]
    val = [(h["global_step"], h["auc"]) for h in run.metrics.get("history", []) if h.get("auc") is not None]
    if val:
        history["val/auc"] = val
    return history


def explained_videos(folder: Path) -> list[dict]:
    """The videos of an --explain folder to show (explain.json order: highest scores first, then lowest), each
    with its PNGs; without explain.json, the PNGs grouped by video stem."""
    listing = folder / "explain.json"
    entries = json.loads(listing.read_text()) if listing.is_file() else [
        {"video_name": stem + ".mp4", "figures": {}} for stem in sorted({p.name.split("_")[0]
                                                                          for p in folder.glob("*.png")})]
    out = []
    for entry in entries:
        stem = Path(entry["video_name"]).stem
        named = [folder / f for f in (entry.get("figures") or {}).values() if isinstance(f, str)]
        pngs = [p for p in named if p.suffix == ".png" and p.is_file()] or sorted(folder.glob(f"{stem}_*.png"))
        if pngs:
            out.append({**entry, "pngs": pngs})
    half = EXPLAIN_VIDEOS // 2
    chosen = out if len(out) <= EXPLAIN_VIDEOS else out[:half] + out[-(EXPLAIN_VIDEOS - half):]
    return list({e["video_name"]: e for e in chosen}.values())


def model_doc(name: str) -> str | None:
    """The module docstring of the registered model ``name`` (its description lives with its code)."""
    import inspect

    from models import registry

    registry.list_models()
    builder = getattr(registry, "_MODELS", {}).get(name)
    module = inspect.getmodule(builder) if builder is not None else None
    return module.__doc__ if module is not None else None


def code_version(runs: dict[str, Run]) -> str:
    for run in runs.values():
        version = run.info.get("code_version") or run.metrics.get("code_version")
        if isinstance(version, dict):
            commit = str(version.get("git_commit", "?"))[:12]
            return f"git {commit}{' (dirty)' if version.get('git_dirty') else ''}, sources sha256 " \
                   f"{str(version.get('source_sha256', '?'))[:12]}"
    return "unknown"


# --- markdown helpers -------------------------------------------------------------------------------------------------
def num(value, digits: int = 3) -> str:
    if value is None or value == "":
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def auc_ci(metrics: dict | None) -> str:
    """``0.812 [0.750, 0.860]``: an AUC with its bootstrap interval (``binary_metrics(..., ci=True)``)."""
    metrics = metrics or {}
    interval = metrics.get("auc_ci")
    text = num(metrics.get("auc"))
    return f"{text} [{num(interval[0])}, {num(interval[1])}]" if interval else text


def millions(value) -> str:
    return "n/a" if value is None else f"{float(value) / 1e6:.3f}M"


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(num(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def figure(path: Path | None, out: Path, caption: str) -> str:
    if path is None or not path.is_file():
        return f"_(figure not available: {caption})_"
    return f"![{caption}]({path.relative_to(out).as_posix()})\n\n_{caption}_"


def missing(what: str, how: str) -> str:
    return f"_Not available: {what}. Produce it with `{how}`._"
