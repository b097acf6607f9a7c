"""The competition's files and metric, in one place: every reader, writer and score of the project uses these.

Data: ``train/``, ``val/`` (and ``test/``) folders of ``.mp4`` videos, with ``train_labels.csv`` and
``validation_labels.csv`` (``video_name,target``; 1 = deepfake; the synthetic dataset adds ``test_labels.csv``).
Output: ``submission.csv`` (``video_name,score``, one row per video, score with 6 decimals). Metric: ROC AUC, the
tie-break TPR at FPR = 1e-3 (read off the full ROC curve by linear interpolation).

    labels = read_labels(path)                   # {video_name: 0 | 1}, strict (LabelsError names file:line)
    write_submission(path, [(name, score), ...])
    metrics = compute_metrics(labels, scores)    # auc, tpr_at_fpr_1e-3, eer, ap, log_loss, n, n_pos, n_neg
    python -m competition --pred submission.csv --labels labels.csv   # prints the metrics as JSON
    python -m competition --check-data DATA [--splits train,val]      # the folders and label files are usable

Fakes are reported in the FakeAVCeleb taxonomy (``CATEGORIES``): which of video and audio is manipulated.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

# --- files ------------------------------------------------------------------------------------------------------
TRAIN, VAL, TEST = "train", "val", "test"
LABEL_FILES = {TRAIN: "train_labels.csv", VAL: "validation_labels.csv", TEST: "test_labels.csv"}
LABELS_HEADER = ("video_name", "target")
SUBMISSION_FILE = "submission.csv"
SUBMISSION_HEADER = ("video_name", "score")
VIDEO_SUFFIX = ".mp4"
SCORE_DECIMALS = 6

# --- the fake taxonomy ------------------------------------------------------------------------------------------
REAL_CATEGORY = "RealVideo-RealAudio"
CATEGORIES = {  # category -> (video is fake, audio is fake)
    REAL_CATEGORY: (0, 0),
    "FakeVideo-RealAudio": (1, 0),
    "RealVideo-FakeAudio": (0, 1),
    "FakeVideo-FakeAudio": (1, 1),
}
FAKE_CATEGORIES = tuple(c for c in CATEGORIES if c != REAL_CATEGORY)

# --- the metric -------------------------------------------------------------------------------------------------
TARGET_FPR = 1e-3
TPR_KEY = "tpr_at_fpr_1e-3"
PROB_EPS = 1e-7  # log-loss clips probabilities to [eps, 1 - eps]
log = logging.getLogger(__name__)


class LabelsError(ValueError):
    """A labels, template or submission file that breaks the format; the message names the file, line and fix."""


def label_file(data_dir: str | Path, split: str) -> Path:
    """``DATA/train_labels.csv`` etc. for split ``train`` | ``val`` | ``test``."""
    return Path(data_dir) / LABEL_FILES[split]


def split_dir(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / split


def split_files(data_dir: str | Path, split: str) -> tuple[Path, Path]:
    """(videos folder, labels file) of a split of a competition data folder; LabelsError naming what is missing."""
    if split not in LABEL_FILES:
        raise LabelsError(f"unknown split {split!r}; the splits are {', '.join(LABEL_FILES)}")
    videos, labels = split_dir(data_dir, split), label_file(data_dir, split)
    for needed in (videos, labels):
        if not needed.exists():
            raise LabelsError(f"{needed} is missing; a competition data folder holds {TRAIN}/, {VAL}/, "
                              f"{LABEL_FILES[TRAIN]} and {LABEL_FILES[VAL]}")
    return videos, labels


def check_data(data_dir: str | Path, splits: Sequence[str] = (TRAIN, VAL)) -> dict[str, dict[str, int]]:
    """Every split's folder and labels exist, the labels parse, and each labelled video is in the folder:
    {split: {"videos": n, "fake": n}}; LabelsError naming the first problem."""
    summary = {}
    for split in splits:
        videos, labels_path = split_files(data_dir, split)
        labels = read_labels(labels_path)
        present = {p.name for p in videos.iterdir() if p.is_file()}
        missing = sorted(set(labels) - present)
        if missing:
            raise LabelsError(f"{labels_path}: {len(missing)} labelled videos are not in {videos}: "
                              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        summary[split] = {"videos": len(labels), "fake": sum(labels.values())}
    return summary


def find_videos(directory: str | Path) -> list[Path]:
    """Every ``.mp4`` (any case) directly in ``directory``, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory of videos")
    return sorted((p for p in directory.iterdir() if p.is_file() and p.suffix.lower() == VIDEO_SUFFIX),
                  key=lambda p: p.name)


# --- reading ----------------------------------------------------------------------------------------------------
def _rows(path: Path, header: tuple[str, str], what: str) -> Iterable[tuple[int, list[str]]]:
    """(line number, cells) of a CSV whose first two columns are ``header``; blank lines skipped."""
    if not Path(path).is_file():
        raise LabelsError(f"{what} {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        first = [h.strip() for h in next(reader, [])]
        if tuple(first[:2]) != header:
            raise LabelsError(f"{path}: the header is {first or 'empty'}, expected `{','.join(header)}`; fix the "
                              "first line of the file")
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < 2:
                raise LabelsError(f"{path}:{line}: expected at least 2 columns, got {row}; fix that line")
            yield line, [cell.strip() for cell in row]


def _unique(path: Path, pairs: Iterable[tuple[int, str, object]]) -> dict[str, object]:
    values: dict[str, object] = {}
    lines: dict[str, int] = {}
    duplicates: list[str] = []
    for line, name, value in pairs:
        if not name:
            raise LabelsError(f"{path}:{line}: empty video_name; fix or delete that line")
        if name in values:
            duplicates.append(f"{name} (lines {lines[name]} and {line})")
            continue
        values[name], lines[name] = value, line
    if duplicates:
        raise LabelsError(f"{path}: {len(duplicates)} duplicate video names: {', '.join(duplicates[:5])}"
                          f"{' ...' if len(duplicates) > 5 else ''}; keep one row per video")
    return values


def read_labels(path: str | Path) -> dict[str, int]:
    """{video_name: 0 | 1} from a ``video_name,target`` CSV. Targets must be 0 or 1 (1 = deepfake)."""
    path = Path(path)

    def target(line: int, name: str, text: str) -> int:
        if text not in ("0", "1"):
            raise LabelsError(f"{path}:{line}: target {text!r} for {name} is not 0 or 1; fix that line")
        return int(text)

    return _unique(path, ((line, row[0], target(line, row[0], row[1]))
                          for line, row in _rows(path, LABELS_HEADER, "labels file")))


def read_submission(path: str | Path) -> dict[str, float]:
    """{video_name: score} from a ``video_name,score`` CSV; scores must be finite and within [0, 1]."""
    path = Path(path)

    def score(line: int, name: str, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise LabelsError(f"{path}:{line}: score {text!r} for {name} is not a number in [0, 1]")
        return value

    return _unique(path, ((line, row[0], score(line, row[0], row[1]))
                          for line, row in _rows(path, SUBMISSION_HEADER, "submission")))


def read_template(path: str | Path) -> list[str]:
    """The video names of a submission template (a ``video_name,...`` CSV), in its order, each once."""
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"template {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header[:1] != ["video_name"]:
            raise LabelsError(f"{path}: the template needs a header starting with `video_name`, got {header}")
        rows = ((line, row[0].strip(), None) for line, row in enumerate(reader, start=2) if row and row[0].strip())
        return list(_unique(path, rows))


# --- writing ----------------------------------------------------------------------------------------------------
def _write_rows(path: str | Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def format_score(score: float) -> str:
    return f"{score:.{SCORE_DECIMALS}f}"


def write_submission(path: str | Path, scores: Iterable[tuple[str, float]]) -> Path:
    """``video_name,score`` rows in the given order, scores with 6 decimals; written atomically."""
    return _write_rows(path, SUBMISSION_HEADER, ((name, format_score(score)) for name, score in scores))


def write_labels(path: str | Path, labels: Iterable[tuple[str, int]]) -> Path:
    """``video_name,target`` rows in the given order; written atomically."""
    return _write_rows(path, LABELS_HEADER, ((name, int(target)) for name, target in labels))


# --- metrics ----------------------------------------------------------------------------------------------------
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
    from sklearn.metrics import roc_curve

    y, s = _arrays(labels, scores)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(np.interp(target_fpr, fpr, tpr))


def equal_error_rate(labels: Sequence, scores: Sequence) -> float:
    """The rate where FPR equals FNR = 1 - TPR, linearly interpolated between ROC points."""
    from sklearn.metrics import roc_curve

    y, s = _arrays(labels, scores)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    gap = fpr - (1.0 - tpr)  # non-decreasing along the curve: -1 at the start, +1 at the end
    i = int(np.searchsorted(gap, 0.0))
    if i == 0:
        return float(fpr[0])
    g0, g1 = gap[i - 1], gap[i]
    w = 0.0 if g1 == g0 else -g0 / (g1 - g0)
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def compute_metrics(labels: Sequence, scores: Sequence) -> dict:
    """All metrics of probability ``scores`` in [0, 1] against 0/1 ``labels``: ``auc``, ``tpr_at_fpr_1e-3``,
    ``eer``, ``ap``, ``log_loss`` and the counts. With one class only the ranking metrics are None and ``note``
    says why; with fewer than 1000 genuine videos ``note`` says that TPR@FPR=1e-3 is interpolated."""
    from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

    y, s = _arrays(labels, scores)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    p = np.clip(s, PROB_EPS, 1 - PROB_EPS)
    result: dict = {"n": int(y.size), "n_pos": n_pos, "n_neg": n_neg,
                    "log_loss": float(log_loss(y, p, labels=[0, 1]))}
    if n_pos == 0 or n_neg == 0:
        note = f"only one class present ({n_pos} fake, {n_neg} real): AUC, TPR@FPR, EER and AP are undefined"
        log.warning(note)
        result.update({"auc": None, TPR_KEY: None, "eer": None, "ap": None, "note": note})
        return result
    result.update({
        "auc": float(roc_auc_score(y, s)),
        TPR_KEY: tpr_at_fpr(y, s),
        "eer": equal_error_rate(y, s),
        "ap": float(average_precision_score(y, s)),
    })
    if n_neg < 1 / TARGET_FPR:
        result["note"] = (f"{n_neg} real videos: FPR moves in steps of {1 / n_neg:.2g}, so TPR@FPR=1e-3 is "
                          "interpolated within the first step")
    return result


def score_submission(submission: str | Path, labels: str | Path) -> dict:
    """The metrics of a submission file against a labels file; LabelsError when the videos differ."""
    predictions, truth = read_submission(submission), read_labels(labels)
    missing = sorted(set(truth) - set(predictions))
    extra = sorted(set(predictions) - set(truth))
    if missing or extra:
        raise LabelsError(f"{submission}: {len(missing)} video(s) missing (e.g. {missing[:3]}), "
                          f"{len(extra)} not in {Path(labels).name} (e.g. {extra[:3]})")
    names = sorted(truth)
    return compute_metrics([truth[n] for n in names], [predictions[n] for n in names])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m competition", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", type=Path, help="submission.csv (video_name,score) to score against --labels")
    parser.add_argument("--labels", type=Path, help="labels CSV (video_name,target)")
    parser.add_argument("--check-data", type=Path, metavar="DATA", help="check a competition data folder instead")
    parser.add_argument("--splits", default=f"{TRAIN},{VAL}", help="the splits --check-data needs (default: train,val)")
    args = parser.parse_args(argv)
    if args.check_data is None and (args.pred is None or args.labels is None):
        parser.error("give --pred and --labels, or --check-data DATA")
    try:
        if args.check_data is not None:
            result = check_data(args.check_data, [s.strip() for s in args.splits.split(",") if s.strip()])
        else:
            result = score_submission(args.pred, args.labels)
    except LabelsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if args.check_data is not None else 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
