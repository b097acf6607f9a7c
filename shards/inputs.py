"""The inputs of a packing run: the video files of a folder, their labels and extra per-video columns.

Every file in the folder with a video extension (``VIDEO_EXTENSIONS``, any case) plus every name the labels list,
sorted by name; other files are reported as ignored. Labels are read with the competition's one strict reader
(``competition.read_labels``). A labelled video missing from the folder, a video without a label (unless allowed),
a duplicate name or a bad value raises ``InputError`` before any work, naming the file and the fix.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from competition import LabelsError, read_labels
from shards.format import RESERVED_JSON_KEYS, sample_key

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".3gp", ".flv",
                    ".wmv")


class InputError(Exception):
    """A problem with --videos / --labels / --out found before any work; the message names the fix."""


@dataclass(frozen=True)
class Video:
    name: str
    path: Path
    label: int | None
    key: str
    extra: tuple[tuple[str, str], ...] = ()  # --meta columns copied into the sample json


def labels_of(path: Path) -> dict[str, int]:
    """``competition.read_labels`` with the packing hint: a missing file may mean an unlabeled set."""
    if not path.is_file():
        raise InputError(f"labels file {path} does not exist; pass the CSV with `video_name,target` rows, or omit "
                         "--labels for an unlabeled test set")
    try:
        return read_labels(path)
    except LabelsError as error:
        raise InputError(str(error)) from error


def read_meta(path: Path, columns: tuple[str, ...]) -> dict[str, tuple[tuple[str, str], ...]]:
    """{video_name: ((column, value), ...)} from a CSV with a ``video_name`` column (e.g. the dataset's meta.csv)."""
    if not path.is_file():
        raise InputError(f"--meta {path} does not exist; pass the dataset's meta.csv or omit --meta")
    taken = sorted(set(columns) & RESERVED_JSON_KEYS)
    if taken:
        raise InputError(f"--meta-columns {taken} would overwrite fields of the sample json; choose other columns")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("video_name", *columns) if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: no column {missing} (header: {reader.fieldnames}); pass a CSV with "
                             f"video_name and {', '.join(columns)}, or choose others with --meta-columns")
        return {row["video_name"].strip(): tuple((c, row[c].strip()) for c in columns) for row in reader}


def collect_inputs(videos: Path, labels_path: Path | None, allow_unlabeled: bool = False,
                   allow_missing: bool = False,
                   meta: dict[str, tuple[tuple[str, str], ...]] | None = None) -> tuple[list[Video], list[str]]:
    """(sorted inputs with unique keys, names of ignored files)."""
    if not videos.is_dir():
        raise InputError(f"--videos {videos} is not a folder; pass the folder that holds the video files")
    files = {p.name: p for p in videos.iterdir() if p.is_file()}
    media = {n for n in files if n.lower().endswith(VIDEO_EXTENSIONS) and not n.startswith(".")}
    labels = labels_of(labels_path) if labels_path is not None else None
    if labels is None:
        names = sorted(media)
    else:
        missing = sorted(n for n in labels if n not in files)
        if missing and not allow_missing:
            raise InputError(f"{labels_path}: {len(missing)} labelled videos are not in {videos}: "
                             f"{_first(missing)}; fix the labels file or --videos, or pass --allow-missing-videos "
                             "to record them as failed (missing_file)")
        unlabeled = sorted(media - set(labels))
        if unlabeled and not allow_unlabeled:
            raise InputError(f"{len(unlabeled)} videos in {videos} have no label in {labels_path}: "
                             f"{_first(unlabeled)}; add them to the labels file, move them out, or pass "
                             "--allow-unlabeled to pack them with label null")
        names = sorted(media | set(labels))
    ignored = sorted(set(files) - set(names))
    keys = assign_keys(names)
    meta = meta or {}
    inputs = [Video(n, videos / n, None if labels is None else labels.get(n), keys[n], meta.get(n, ()))
              for n in names]
    return inputs, ignored


def assign_keys(names: list[str]) -> dict[str, str]:
    """Sample keys; names whose keys collide (``a.b.mp4`` / ``a_b.mp4`` / ``a_b.mov``) get a hash suffix."""
    keys = {n: sample_key(n) for n in names}
    counts = Counter(keys.values())
    for n, k in keys.items():
        if counts[k] > 1:
            keys[n] = f"{k}_{hashlib.sha1(n.encode()).hexdigest()[:8]}"
    return keys


def _first(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" ... (+{len(names) - n})" if len(names) > n else "")
