"""competition.py: the metrics against scikit-learn and hand-built ROC curves, the strict readers, the writers and
the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from competition import (
    LabelsError,
    check_data,
    compute_metrics,
    equal_error_rate,
    read_labels,
    read_submission,
    read_template,
    score_submission,
    tpr_at_fpr,
    write_labels,
    write_submission,
)

ROOT = Path(__file__).resolve().parents[1]


def test_matches_sklearn_on_random_scores():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    m = compute_metrics(labels, scores)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert m["ap"] == pytest.approx(average_precision_score(labels, scores))
    assert m["log_loss"] == pytest.approx(log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7)))
    assert (m["n"], m["n_pos"], m["n_neg"]) == (500, int(labels.sum()), int(500 - labels.sum()))
    assert 0 < m["eer"] < 0.5 and 0 <= m["tpr_at_fpr_1e-3"] <= 1


def test_tpr_at_fpr_interpolates_linearly_on_a_hand_built_roc():
    # 2000 negatives -> FPR steps of 5e-4. One negative above every positive but 2; then 2 more positives,
    # then 2 negatives above the rest: ROC points (0, 0.2) -> (5e-4, 0.2) -> (5e-4, 0.4) -> (1.5e-3, 0.4) ...
    # Hand-built: positives scored 0.99 (2 of 10), negative 0.98, positives 0.97 (2), negatives 0.96 (2),
    # positives 0.5 (6), remaining negatives 0.1.
    pos = [0.99] * 2 + [0.97] * 2 + [0.5] * 6
    neg = [0.98] + [0.96] * 2 + [0.1] * 1997
    labels = np.array([1] * len(pos) + [0] * len(neg))
    scores = np.array(pos + neg)
    # At FPR 1e-3 we are between (5e-4, 0.4) and (1.5e-3, 0.4) (a flat stretch) -> 0.4.
    assert tpr_at_fpr(labels, scores) == pytest.approx(0.4)
    # Between ROC points (0, 0.2) and (5e-4, 0.2) flat, then vertical to 0.4; at 2.5e-4 -> 0.2.
    assert tpr_at_fpr(labels, scores, 2.5e-4) == pytest.approx(0.2)
    # Past the 3 high negatives: (1.5e-3, 0.4) -> (1.5e-3, 1.0) vertical, then flat 1.0.
    assert tpr_at_fpr(labels, scores, 2e-3) == pytest.approx(1.0)


def test_tpr_at_fpr_interpolates_inside_a_sloped_segment():
    # 4 negatives, 4 positives with tied scores between groups produce diagonal ROC segments:
    # one positive and one negative tied at 0.9 -> segment (0, 0) -> (0.25, 0.25).
    labels = np.array([1, 0, 1, 1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.9, 0.8, 0.8, 0.8, 0.1, 0.1, 0.1])
    assert tpr_at_fpr(labels, scores, 0.1) == pytest.approx(0.1)
    assert tpr_at_fpr(labels, scores, 1e-3) == pytest.approx(1e-3)


def test_perfect_and_inverted_rankings():
    labels = [0, 0, 0, 1, 1, 1]
    perfect = compute_metrics(labels, [0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert perfect["auc"] == 1.0 and perfect["tpr_at_fpr_1e-3"] == 1.0 and perfect["eer"] == 0.0
    inverted = compute_metrics(labels, [0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    assert inverted["auc"] == 0.0 and inverted["tpr_at_fpr_1e-3"] == 0.0 and inverted["eer"] == 1.0


def test_eer_on_a_hand_built_case():
    # Scores: negatives 0.1, 0.2, 0.6, 0.7; positives 0.4, 0.8, 0.9, 0.95. At threshold 0.65: FPR 1/4, FNR 1/4.
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.6, 0.7, 0.4, 0.8, 0.9, 0.95]
    assert equal_error_rate(labels, scores) == pytest.approx(0.25)


def test_single_class_is_reported_not_crashed():
    m = compute_metrics([1, 1, 1], [0.2, 0.9, 0.5])
    assert m["auc"] is None and m["tpr_at_fpr_1e-3"] is None and m["eer"] is None and m["ap"] is None
    assert "one class" in m["note"] and m["log_loss"] > 0


@pytest.mark.parametrize("labels, scores, message", [
    ([0, 1], [0.5], "2 labels but 1 scores"),
    ([0, 2], [0.1, 0.2], "labels must be 0 or 1"),
    ([0, 1], [0.1, float("nan")], "NaN"),
    ([], [], "no predictions"),
])
def test_bad_inputs_raise_clearly(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(labels, scores)


def test_tpr_at_fpr_1e3_inside_a_tied_segment():
    # 1000 negatives, 10 positives; 2 negatives tied with 4 positives at the top score: the ROC goes straight
    # from (0, 0) to (2e-3, 0.4), so at FPR 1e-3 the interpolated TPR is 0.2.
    labels = np.array([1] * 10 + [0] * 1000)
    scores = np.array([0.9] * 4 + [0.5] * 6 + [0.9] * 2 + [0.1] * 998)
    assert tpr_at_fpr(labels, scores) == pytest.approx(0.2)
    assert compute_metrics(labels, scores)["tpr_at_fpr_1e-3"] == pytest.approx(0.2)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_labels_round_trip_and_blank_lines(tmp_path):
    path = write_labels(tmp_path / "train_labels.csv", [("b.mp4", 1), ("a.mp4", 0)])
    assert path.read_text() == "video_name,target\nb.mp4,1\na.mp4,0\n"
    write(path, path.read_text() + "\n")
    assert read_labels(path) == {"b.mp4": 1, "a.mp4": 0}


@pytest.mark.parametrize("text, message", [
    ("name,target\na.mp4,1\n", "expected `video_name,target`"),
    ("video_name,target\na.mp4,2\n", ":2: target '2' for a.mp4 is not 0 or 1"),
    ("video_name,target\na.mp4,1.0\n", "not 0 or 1"),
    ("video_name,target\na.mp4,1\na.mp4,0\n", "duplicate video names: a.mp4 (lines 2 and 3)"),
    ("video_name,target\n,1\n", ":2: empty video_name"),
    ("video_name,target\na.mp4\n", ":2: expected at least 2 columns"),
])
def test_labels_reader_is_strict_and_names_file_and_line(tmp_path, text, message):
    path = write(tmp_path / "labels.csv", text)
    with pytest.raises(LabelsError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        read_labels(path)
    assert str(path) in str(error.value)


def test_submission_writer_reader_and_score(tmp_path):
    sub = write_submission(tmp_path / "submission.csv", [("a.mp4", 0.1234567), ("b.mp4", 0.9)])
    assert sub.read_text() == "video_name,score\na.mp4,0.123457\nb.mp4,0.900000\n"
    assert read_submission(sub) == {"a.mp4": 0.123457, "b.mp4": 0.9}
    labels = write_labels(tmp_path / "labels.csv", [("a.mp4", 0), ("b.mp4", 1)])
    assert score_submission(sub, labels)["auc"] == 1.0
    write_labels(labels, [("a.mp4", 0), ("c.mp4", 1)])
    with pytest.raises(LabelsError, match="1 video\\(s\\) missing"):
        score_submission(sub, labels)
    with pytest.raises(LabelsError, match="not a number in \\[0, 1\\]"):
        read_submission(write(tmp_path / "bad.csv", "video_name,score\na.mp4,nan\n"))


def test_template_keeps_order_and_refuses_duplicates(tmp_path):
    assert read_template(write(tmp_path / "t.csv", "video_name,score\nb.mp4,0\na.mp4,0\n")) == ["b.mp4", "a.mp4"]
    with pytest.raises(LabelsError, match="duplicate"):
        read_template(write(tmp_path / "d.csv", "video_name\na.mp4\na.mp4\n"))


def test_check_data_names_what_is_missing(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.mp4").write_bytes(b"")
    write_labels(tmp_path / "train_labels.csv", [("a.mp4", 1)])
    assert check_data(tmp_path, ["train"]) == {"train": {"videos": 1, "fake": 1}}
    with pytest.raises(LabelsError, match="val is missing"):
        check_data(tmp_path)
    write_labels(tmp_path / "train_labels.csv", [("a.mp4", 1), ("gone.mp4", 0)])
    with pytest.raises(LabelsError, match="1 labelled videos are not in"):
        check_data(tmp_path, ["train"])


def test_command_line_scores_and_checks(tmp_path):
    sub = write_submission(tmp_path / "s.csv", [("a.mp4", 0.2), ("b.mp4", 0.7)])
    labels = write_labels(tmp_path / "l.csv", [("a.mp4", 0), ("b.mp4", 1)])
    done = subprocess.run([sys.executable, "-m", "competition", "--pred", sub, "--labels", labels], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0 and json.loads(done.stdout)["auc"] == 1.0
    done = subprocess.run([sys.executable, "-m", "competition", "--check-data", tmp_path], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "train is missing" in done.stderr
