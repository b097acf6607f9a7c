"""Competition metrics on video-level scores (1 = deepfake), with scikit-learn.

``compute_metrics(labels, scores)`` -> {"auc", "tpr_at_fpr_1e-3", "eer", "ap", "log_loss", "n", "n_pos", "n_neg"}.
AUC is the metric; TPR at FPR = 1e-3 the tie-break, read off the ROC curve by linear interpolation
(``np.interp`` of fpr -> tpr at 1e-3 over every threshold). With a single class the ranking metrics are undefined:
they are None and ``"note"`` says why (log-loss is still computed).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score, roc_curve

TARGET_FPR = 1e-3
PROB_EPS = 1e-7  # log-loss clips probabilities to [eps, 1 - eps]
log = logging.getLogger(__name__)


def _arrays(labels: Sequence, scores: Sequence) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if y.size == 0:
        raise ValueError("no predictions to score")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got {sorted(set(y.tolist()) - {0, 1})[:5]}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    return y, s


def tpr_at_fpr(labels: Sequence, scores: Sequence, target_fpr: float = TARGET_FPR) -> float:
    """TPR at ``target_fpr``, linearly interpolated on the full ROC curve (no dropped thresholds)."""
    y, s = _arrays(labels, scores)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(np.interp(target_fpr, fpr, tpr))


def equal_error_rate(labels: Sequence, scores: Sequence) -> float:
    """The rate where FPR equals FNR = 1 - TPR, linearly interpolated between ROC points."""
    y, s = _arrays(labels, scores)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    fnr = 1.0 - tpr
    gap = fpr - fnr  # non-decreasing along the curve: -1 at the start, +1 at the end
    i = int(np.searchsorted(gap, 0.0))
    if i == 0:
        return float(fpr[0])
    g0, g1 = gap[i - 1], gap[i]
    w = 0.0 if g1 == g0 else -g0 / (g1 - g0)
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def compute_metrics(labels: Sequence, scores: Sequence) -> dict:
    """All metrics of probability ``scores`` in [0, 1] against 0/1 ``labels`` (see the module doc)."""
    y, s = _arrays(labels, scores)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    p = np.clip(s, PROB_EPS, 1 - PROB_EPS)
    result: dict = {"n": int(y.size), "n_pos": n_pos, "n_neg": n_neg,
                    "log_loss": float(log_loss(y, p, labels=[0, 1]))}
    if n_pos == 0 or n_neg == 0:
        note = f"only one class present ({n_pos} fake, {n_neg} real): AUC, TPR@FPR, EER and AP are undefined"
        log.warning(note)
        result.update({"auc": None, "tpr_at_fpr_1e-3": None, "eer": None, "ap": None, "note": note})
        return result
    result.update({
        "auc": float(roc_auc_score(y, s)),
        "tpr_at_fpr_1e-3": tpr_at_fpr(y, s),
        "eer": equal_error_rate(y, s),
        "ap": float(average_precision_score(y, s)),
    })
    if n_neg < 1 / TARGET_FPR:
        result["note"] = (f"{n_neg} real videos: FPR moves in steps of {1 / n_neg:.2g}, so TPR@FPR=1e-3 is "
                          "interpolated within the first step")
    return result


def sigmoid(x: Sequence) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
