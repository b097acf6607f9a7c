"""MLflow logging for the main process: params, code version, metrics, plots and the best checkpoint.

Default store: ``sqlite:///<out>/mlflow.db`` with artifacts in ``<out>/mlartifacts`` (the experiment is created with
that artifact location); ``MLFLOW_TRACKING_URI`` points the run at a server instead. ``NullTracker`` stands in on
other ranks and when ``log.mlflow`` is false, so the loop never branches on it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class NullTracker:
    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float | None], step: int) -> None: ...

    def log_artifacts(self, directory: Path, artifact_path: str) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...


class MlflowTracker(NullTracker):
    def __init__(self, out: Path, experiment: str, run_name: str, run_id: str | None = None):
        import mlflow

        self.mlflow = mlflow
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'mlflow.db').resolve()}"
        mlflow.set_tracking_uri(uri)
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            local = not uri.startswith(("http://", "https://", "databricks"))
            location = (out / "mlartifacts").resolve().as_uri() if local else None
            experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
        else:
            experiment_id = found.experiment_id
        if mlflow.active_run() is not None:
            mlflow.end_run()
        run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                               run_name=None if run_id else run_name)
        self.run_id = run.info.run_id
        self.uri = uri
        log.info("MLflow run %s in %s (experiment %r)", self.run_id, uri, experiment)

    def log_params(self, params: dict[str, Any]) -> None:
        existing = self.mlflow.get_run(self.run_id).data.params
        fresh = {k: _param(v) for k, v in params.items() if k not in existing}  # a resumed run keeps its params
        for i in range(0, len(fresh), 90):
            self.mlflow.log_params(dict(list(fresh.items())[i:i + 90]))

    def log_metrics(self, metrics: dict[str, float | None], step: int) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
        if clean:
            self.mlflow.log_metrics(clean, step=step)

    def log_artifacts(self, directory: Path, artifact_path: str) -> None:
        self.mlflow.log_artifacts(str(directory), artifact_path=artifact_path)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.mlflow.set_tags(tags)

    def close(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)


def _param(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 500 else text[:497] + "..."


def make_tracker(enabled: bool, out: Path, experiment: str, run_name: str, run_id: str | None = None):
    if not enabled:
        return NullTracker()
    return MlflowTracker(out, experiment, run_name, run_id)


def save_plots(labels: np.ndarray, scores: np.ndarray, directory: Path, title: str) -> list[Path]:
    """ROC curve (log-scale FPR, so the 1e-3 operating point is visible) and score histograms per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    if len(set(labels.tolist())) == 2:
        fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(np.maximum(fpr, 1e-4), tpr)
        ax.axvline(1e-3, color="grey", linestyle="--", linewidth=1, label="FPR = 1e-3")
        ax.set(xscale="log", xlim=(1e-4, 1), ylim=(0, 1.01), xlabel="false positive rate (log)",
               ylabel="true positive rate", title=title)
        ax.legend(loc="lower right")
        fig.tight_layout()
        paths.append(directory / "roc.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.linspace(0, 1, 41)
    for value, name in ((0, "real"), (1, "fake")):
        ax.hist(scores[labels == value], bins=bins, alpha=0.6, label=f"{name} ({int((labels == value).sum())})")
    ax.set(xlabel="score (probability of deepfake)", ylabel="videos", title=title)
    ax.legend()
    fig.tight_layout()
    paths.append(directory / "score_histogram.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
