"""What the evaluations share: where ``make demo`` puts things, the dataset's meta.csv, JSON output, metrics of
groups of videos (a manipulation method, a FakeAVCeleb category) and the MLflow reads.

The evaluations (``evaluation.generality``, ``robustness``, ``modality``, ``shortcuts``, ``speed``) each write
one JSON file under ``DEMO_DIR/eval/`` (``python -m evaluation <name>``); the report (``evaluation.report``) reads
only these files, the runs and the submissions: it never types a number in. Metrics are the competition's
(``competition.compute_metrics``), the function ``python -m competition`` scores submissions with.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from competition import TEST, TPR_KEY, compute_metrics, label_file

ROOT = Path(__file__).resolve().parents[1]
REAL_METHOD = "real"
HEADS = {"fused": "score", "audio": "audio_score", "visual": "visual_score"}
log = logging.getLogger("evaluation")


# --- files and layout ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoLayout:
    """Where ``make demo`` puts things (see scripts.demo)."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def run(self, name: str) -> Path:
        return self.root / "runs" / name

    def submission(self, name: str) -> Path:
        return self.root / "submissions" / f"{name}.csv"

    def details(self, name: str) -> Path:
        return self.root / "submissions" / f"{name}.details.csv"

    def models(self) -> list[str]:
        """Run names with a best checkpoint, baseline first."""
        runs = self.root / "runs"
        names = sorted(p.name for p in runs.iterdir() if (p / "best").exists()) if runs.is_dir() else []
        return sorted(names, key=lambda n: (n != "baseline", n))


def read_meta(data_dir: Path) -> list[dict[str, str]]:
    """The rows of ``data_dir/meta.csv`` (one per video: video_name, split, target, category, method, ...)."""
    path = Path(data_dir) / "meta.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the dataset folder needs the meta.csv that "
                                "python -m scripts.make_synthetic_dataset writes (video_name,split,target,category,method)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"video_name", "split", "target", "category", "method"}
    missing = need - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: columns {sorted(missing)} are missing (need {sorted(need)})")
    return rows


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def run_command(cmd: list, log_path: Path | None = None) -> None:
    """Run a project command from the repo root; on failure raise with the tail of its output."""
    cmd = [str(c) for c in cmd]
    log.info("$ %s", " ".join(cmd))
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}\n--- stderr (tail)\n{result.stderr[-3000:]}")


# --- metrics ------------------------------------------------------------------------------------------------
def binary_metrics(labels: Iterable[int], scores: Iterable[float], ci: bool = False) -> dict:
    """AUC and TPR@FPR=1e-3 (``competition.compute_metrics``) with the counts; None for both when one class is absent.

    ``ci``: also ``auc_ci``, the 95% stratified bootstrap interval of the AUC (``bootstrap_auc_ci``)."""
    y = np.asarray(list(labels), dtype=int)
    s = np.asarray(list(scores), dtype=float)
    out = {"n": int(y.size), "n_fake": int(y.sum()), "auc": None, TPR_KEY: None}
    if ci:
        out["auc_ci"] = None
    if y.size == 0 or y.min() == y.max():
        return out
    metrics = compute_metrics(y.tolist(), s.tolist())
    out["auc"] = float(metrics["auc"])
    out[TPR_KEY] = float(metrics[TPR_KEY])
    if ci:
        out["auc_ci"] = bootstrap_auc_ci(y, s)
    return out


def bootstrap_auc_ci(labels: np.ndarray, scores: np.ndarray, resamples: int = 1000, level: float = 0.95,
                     seed: int = 0) -> list[float]:
    """Percentile interval of the AUC over ``resamples`` stratified bootstrap resamples (genuine and fake videos
    drawn with replacement within their class, so every resample has both). The AUC of a resample is the
    Mann-Whitney statistic on tie-averaged ranks (scipy), the same number ``sklearn.metrics.roc_auc_score`` gives,
    computed for all resamples at once."""
    rng = np.random.default_rng(seed)
    real, fake = scores[labels == 0], scores[labels == 1]
    aucs = rank_auc(rng.choice(fake, (resamples, fake.size)), rng.choice(real, (resamples, real.size)))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(aucs, [tail, 100 - tail])
    return [float(low), float(high)]


def rank_auc(fake: np.ndarray, real: np.ndarray) -> np.ndarray:
    """AUC of each row pair (fake scores ``[..., n_fake]``, genuine ``[..., n_real]``): the Mann-Whitney statistic
    on tie-averaged ranks."""
    ranks = rankdata(np.concatenate([fake, real], axis=-1), axis=-1)
    n_fake, n_real = fake.shape[-1], real.shape[-1]
    return (ranks[..., :n_fake].sum(-1) - n_fake * (n_fake + 1) / 2) / (n_fake * n_real)


def auc_null_sd(n_real: int, n_fake: int) -> float:
    """Standard deviation of the AUC of a score unrelated to the label (Mann-Whitney null): the noise level."""
    return math.sqrt((n_real + n_fake + 1) / (12.0 * n_real * n_fake)) if n_real and n_fake else float("nan")


def auc_p_value(auc: float, n_real: int, n_fake: int) -> float:
    """Two-sided p-value of an AUC this far from 0.5 under no relation (normal approximation, no tie term)."""
    sd = auc_null_sd(n_real, n_fake)
    return math.erfc(abs(auc - 0.5) / sd / math.sqrt(2)) if sd > 0 else 1.0


# --- per-method and per-category metrics of a scored test set -----------------------------------------------
def read_scores(details_or_submission: Path) -> dict[str, dict[str, float | None]]:
    """video_name -> {"score", "audio_score", "visual_score"} (None where the column is empty or absent)."""
    rows = read_csv_rows(details_or_submission)
    out: dict[str, dict[str, float | None]] = {}
    for row in rows:
        out[row["video_name"]] = {col: float(row[col]) if row.get(col) not in (None, "") else None
                                  for col in HEADS.values()}
    return out


def details_path(submission: Path) -> Path:
    return submission.with_name(submission.stem + ".details.csv")


def group_metrics(meta: list[dict], scores: dict[str, dict], column: str, group_key: str,
                  split: str = "test", ci: bool = True) -> dict[str, dict]:
    """For each fake group (a method or a category): genuine videos of ``split`` vs the fakes of that group,
    scored by ``column``; plus ``all`` (every fake). Videos without a score in ``column`` are left out.
    ``ci``: with the bootstrap interval of each AUC."""
    rows = [r for r in meta if r["split"] == split and r["video_name"] in scores
            and scores[r["video_name"]].get(column) is not None]
    real = [r for r in rows if int(r["target"]) == 0]
    fakes = [r for r in rows if int(r["target"]) == 1]
    groups = sorted({r[group_key] for r in fakes})
    out = {}
    for group in [*groups, "all"]:
        chosen = fakes if group == "all" else [r for r in fakes if r[group_key] == group]
        subset = real + chosen
        out[group] = binary_metrics([int(r["target"]) for r in subset],
                                    [scores[r["video_name"]][column] for r in subset], ci=ci)
    return out


# --- MLflow ---------------------------------------------------------------------------------------------------
def mlflow_databases(run_dir: Path) -> list[Path]:
    candidates = [run_dir / "mlflow.db", run_dir.parent / "mlflow.db", run_dir.parent.parent / "mlflow.db"]
    return [p for p in candidates if p.is_file()]


def mlflow_run(run_dir: Path, history: tuple[str, ...] = ()) -> dict:
    """The latest MLflow run logged for ``run_dir`` (matched by run name = folder name, else the only run):
    {"run_id", "params", "metrics" (last values), "history": {key: [(step, value), ...]}}; {} when none."""
    for db in mlflow_databases(run_dir):
        try:
            found = _mlflow_read(db, run_dir.name, history)
        except Exception as error:  # a corrupt or foreign database must not break the report
            log.warning("cannot read MLflow database %s: %s", db, error)
            continue
        if found:
            return found
    return {}


def _mlflow_read(db: Path, run_name: str, history: tuple[str, ...]) -> dict:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return {}
    runs = client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=200)
    named = [r for r in runs if r.info.run_name == run_name]
    if not named and len(runs) == 1:
        named = runs
    if not named:
        return {}
    run = named[0]
    keys = [k for k in run.data.metrics if any(re.fullmatch(h, k) for h in history)]
    return {
        "db": str(db), "run_id": run.info.run_id, "params": dict(run.data.params), "metrics": dict(run.data.metrics),
        "history": {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in keys},
    }


# --- command-line helpers (python -m evaluation) ---------------------------------------------------------------
def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def int_list(text: str) -> list[int]:
    return [int(t) for t in csv_list(text)]


def write_table(path: Path, rows: list[dict]) -> Path:
    """A CSV of the rows (the header from the first row's keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["empty"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def add_common_arguments(parser, demo_required: bool = True) -> None:
    """--demo-dir, --out and --workers: every evaluation has them."""
    parser.add_argument("--demo-dir", type=Path, required=demo_required, help="the `make demo` output folder")
    parser.add_argument("--out", type=Path, help="output JSON (default: DEMO_DIR/eval/<command>.json)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="extraction/packing processes")


def add_model_arguments(parser, videos: str = "test videos") -> None:
    """The options of an evaluation that scores one trained model on test videos (robustness, sync)."""
    parser.add_argument("--model", default="tiny", help="run name under DEMO_DIR/runs")
    parser.add_argument("--checkpoint", type=Path, help="default DEMO_DIR/runs/MODEL/best")
    parser.add_argument("--videos", type=Path, help="default DEMO_DIR/data/test")
    parser.add_argument("--labels", type=Path, help="default DEMO_DIR/data/test_labels.csv")
    parser.add_argument("--max-videos", type=int, default=0, help=f"first N {videos} only (0: all)")
    parser.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1), help="torch threads for scoring")
    parser.add_argument("--device", default="cpu")


def model_inputs(args) -> tuple[Path, Path, Path]:
    """(checkpoint, videos folder, labels file) of ``add_model_arguments``' options, defaults from the demo layout."""
    layout = DemoLayout(args.demo_dir)
    return (args.checkpoint or layout.run(args.model) / "best", args.videos or layout.data / TEST,
            args.labels or label_file(layout.data, TEST))


def fmt(value) -> str:
    """A number with 3 decimals, an interval as [low, high], or n/a."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(fmt, value)) + "]"
    return "n/a" if value is None else f"{value:.3f}"
