"""The evaluations' figures (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from competition import FAKE_CATEGORIES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_robustness(result: dict, path: Path) -> Path:
    """AUC per level for each perturbation, video and audio side by side; the clean AUC dashed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    clean = result["clean"]["fused"]["auc"]
    for ax, kind in zip(axes, ("video", "audio"), strict=True):
        rows = [r for r in result["conditions"] if r["kind"] == kind]
        for name in dict.fromkeys(r["perturbation"] for r in rows):
            points = sorted((r["level"], r["auc"]) for r in rows if r["perturbation"] == name and r["auc"] is not None)
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=name)
        if clean is not None:
            ax.axhline(clean, color="black", linestyle="--", linewidth=1, label="clean")
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{kind} perturbations")
        ax.set_xlabel("level (1 mild .. 5 severe)")
        ax.set_xticks(range(1, 6))
        ax.legend(fontsize=7, loc="best")
    axes[0].set_ylabel("test AUC")
    axes[0].set_ylim(0.0, 1.02)
    return _save(fig, path)


def plot_grouped_bars(groups: list[str], series: dict[str, list[float | None]], path: Path, title: str,
                      ylabel: str = "AUC", threshold: float | None = None) -> Path:
    """One bar group per entry of ``groups``, one bar per series (None -> no bar)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) + 2), 4))
    width = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i, v in enumerate(values) if v is not None]
        ax.bar(xs, [v for v in values if v is not None], width, label=label)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20, ha="right", fontsize=8)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    if threshold is not None:
        ax.axhline(threshold, color="red", linestyle="--", linewidth=1, label=f"flag >= {threshold}")
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_roc(curves: dict[str, tuple[list[int], list[float]]], path: Path) -> Path:
    """ROC curves (log-scaled FPR axis, where TPR@FPR=1e-3 lives) of several scored test sets."""
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, (y, s) in curves.items():
        if len(set(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        axes[0].plot(fpr, tpr, label=label)
        axes[1].plot(np.maximum(fpr, 1e-4), tpr, label=label)  # FPR 0 drawn at 1e-4 on the log axis
    axes[0].plot([0, 1], [0, 1], color="grey", linestyle=":")
    axes[0].set_title("ROC (test)")
    axes[1].set_xscale("log")
    axes[1].set_xlim(1e-4, 1)
    axes[1].axvline(1e-3, color="grey", linestyle="--", linewidth=1)
    axes[1].set_title("ROC, log FPR (dashed: FPR = 1e-3)")
    for ax in axes:
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_curves(histories: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> Path | None:
    """Training curves from MLflow metric histories: one panel per metric, one line per run."""
    keys = sorted({k for h in histories.values() for k in h})
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for run, history in histories.items():
            if history.get(key):
                ax.plot(*zip(*history[key], strict=True), label=run)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_generality(result: dict, path: Path) -> Path:
    """Per-method test AUC of each held-out experiment and of the same config trained on every method; methods
    the experiments did not train on are starred."""
    experiments = result["experiments"]
    methods = sorted({m for e in experiments for m in e["per_method"]})
    unseen = {m for e in experiments for m, v in e["per_method"].items() if v["status"] != "seen"}
    series = {}
    for e in experiments:
        series[f"{e['model']}, methods held out"] = [e["per_method"].get(m, {}).get("auc") for m in methods]
        ref = e.get("reference")
        if ref:
            series[f"{e['model']}, all methods"] = [ref["per_method"].get(m, {}).get("auc") for m in methods]
    labels = [f"{m}*" if m in unseen else m for m in methods]
    return plot_grouped_bars(labels, series, path, "Test AUC per method (genuine vs method; * not in training)")


def plot_modality(result: dict, path: Path) -> Path:
    groups = [*FAKE_CATEGORIES, "all"]
    series = {f"{model} {head}": [tables["by_category"].get(g, {}).get("auc") for g in groups]
              for model, analysis in result["models"].items() for head, tables in analysis["heads"].items()}
    return plot_grouped_bars(groups, series, path, "Test AUC per fake category (genuine vs category), per head")


def plot_shortcuts(result: dict, path: Path) -> Path:
    features = list(dict.fromkeys(f for audit in result["splits"].values() for f in audit["features"]))
    series = {split: [audit["features"].get(f, {}).get("separability") for f in features]
              for split, audit in result["splits"].items()}
    return plot_grouped_bars(features, series, path, "Shortcut audit: one metadata feature as the score",
                             ylabel="max(AUC, 1-AUC)", threshold=result["threshold"])


def plot_sync(result: dict, path: Path) -> Path:
    """AUC of the synchrony score against each audio shift."""
    plt = _pyplot()
    shifts = [r["shift_ms"] for r in result["shifts"]]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(shifts, [r["auc"] if r["auc"] is not None else np.nan for r in result["shifts"]], "o-")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("audio shift (ms, both directions)")
    ax.set_ylabel("AUC, shifted vs in sync")
    ax.set_ylim(0.4, 1.0)
    ax.set_title(f"Synchrony score on {result['scored']} genuine test videos", fontsize=9)
    return _save(fig, path)
