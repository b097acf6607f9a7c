#!/usr/bin/env python
"""Score a submission: `python scripts/score.py --pred submission.csv --labels labels.csv`.

Prints AUC, TPR@FPR=1e-3, EER, AP, log-loss and counts as one JSON object. Refuses (exit 1, a message naming
the file) missing or extra videos, duplicates, NaN or out-of-range scores, and malformed headers.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train.metrics import compute_metrics  # noqa: E402


class SubmissionError(ValueError):
    pass


def read_column(path: Path, column: str, parse) -> dict[str, float]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or reader.fieldnames[:2] != ["video_name", column]:
            raise SubmissionError(f"{path}: header must be `video_name,{column}`, got {reader.fieldnames}")
        values: dict[str, float] = {}
        for line, row in enumerate(reader, start=2):
            name = row["video_name"]
            if name in values:
                raise SubmissionError(f"{path}:{line}: duplicate video {name!r}")
            try:
                values[name] = parse(row[column])
            except (TypeError, ValueError) as error:
                raise SubmissionError(f"{path}:{line}: bad {column} {row[column]!r} for {name!r}") from error
    return values


def parse_score(text: str) -> float:
    value = float(text)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"score {text} is NaN or outside [0, 1]")
    return value


def parse_target(text: str) -> int:
    if text not in ("0", "1"):
        raise ValueError("target must be 0 or 1")
    return int(text)


def score(pred_path: Path, labels_path: Path) -> dict:
    predictions = read_column(pred_path, "score", parse_score)
    labels = read_column(labels_path, "target", parse_target)
    missing = sorted(set(labels) - set(predictions))
    extra = sorted(set(predictions) - set(labels))
    if missing or extra:
        raise SubmissionError(f"{pred_path}: {len(missing)} video(s) missing (e.g. {missing[:3]}), "
                              f"{len(extra)} not in {labels_path.name} (e.g. {extra[:3]})")
    names = sorted(labels)
    return compute_metrics([labels[n] for n in names], [predictions[n] for n in names])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        result = score(args.pred, args.labels)
    except (SubmissionError, FileNotFoundError) as error:
        print(f"score.py: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
