"""The folder layout ``shards.pack`` writes and ``shards.reader`` / ``shards.merge`` read.

OUTDIR holds, for a run split into N parts (N = 1 unless ``--num-parts`` was given)::

    options.json                              what every sample was made with (checked by every run and part)
    shard-p0003of0008-000012.tar              WebDataset shards; names never collide across parts
    shard-p0003of0008-000012_stats.json       per shard: count, failures, bytes, seconds, keys, video outcomes
    manifest-p0003of0008.json                 per part, written when the part is complete
    manifest.json                             the whole dataset: every shard and every input video's outcome

A single-part run writes ``manifest.json`` itself; with several parts the last part to finish writes it when it
sees all the others complete, and ``python -m shards.merge OUTDIR`` (re)writes it on demand, failing with the
list of missing or incomplete parts. Readers (``shards.reader.list_shards``) read the shard list from it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

FORMAT_VERSION = 3  # the sample format (shards.format; extraction writes it into each sample's json): a folder
# packed by another version is refused
OPTIONS_FILE = "options.json"
MANIFEST_FILE = "manifest.json"
STATUSES = ("packed", "packed_with_fallback", "failed")


def part_tag(part: int, num_parts: int) -> str:
    return f"p{part:04d}of{num_parts:04d}"


def shard_name(prefix: str, part: int, num_parts: int, index: int) -> str:
    return f"{prefix}-{part_tag(part, num_parts)}-{index:06d}.tar"


def stats_path(tar: Path) -> Path:
    return tar.with_name(tar.name[: -len(".tar")] + "_stats.json")


def part_manifest_path(out: Path, part: int, num_parts: int) -> Path:
    return out / f"manifest-{part_tag(part, num_parts)}.json"


def write_json(path: Path, data: dict, tmp_suffix: str = "") -> None:
    """Atomically (temp file + os.replace): a reader never sees half a file, even after kill -9."""
    tmp = path.with_name(f"{path.name}.{tmp_suffix or os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def summarize(videos: list[dict]) -> dict:
    """Counts by status, failure reason, fallback and label of a list of video outcome records."""
    status = Counter(v["status"] for v in videos)
    packed = [v for v in videos if v["status"] != "failed"]
    return {
        "inputs": len(videos),
        "packed": status["packed"] + status["packed_with_fallback"],
        "packed_with_fallback": status["packed_with_fallback"],
        "failed": status["failed"],
        "failures_by_reason": dict(sorted(Counter(v["reason"] for v in videos if v["status"] == "failed").items())),
        "fallbacks": dict(sorted(Counter(f for v in packed for f in v["fallbacks"]).items())),
        "class_counts": {str(k): n for k, n in sorted(Counter(v["label"] for v in packed
                                                               if v["label"] is not None).items())},
        "unlabeled": sum(1 for v in packed if v["label"] is None),
    }
