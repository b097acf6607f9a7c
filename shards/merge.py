"""Output layout of ``shards.pack`` and the merge of several parts into one dataset.

    python -m shards.merge OUTDIR

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

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

FORMAT_VERSION = 1
OPTIONS_FILE = "options.json"
MANIFEST_FILE = "manifest.json"
STATUSES = ("packed", "packed_with_fallback", "failed")


class MergeError(Exception):
    """The parts do not form a complete dataset yet; the message names what is missing and how to fix it."""


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


def merge(out: str | Path, write: bool = True) -> dict:
    """Check every part of OUTDIR is complete and (if ``write``) write OUTDIR/manifest.json; returns it."""
    out = Path(out)
    options_file = out / OPTIONS_FILE
    if not options_file.exists():
        raise MergeError(f"{out} has no {OPTIONS_FILE}: it is not a `python -m shards.pack` output folder")
    options = read_json(options_file)
    num_parts = int(options["num_parts"])
    problems, parts = [], []
    for part in range(num_parts):
        path = part_manifest_path(out, part, num_parts)
        if not path.exists():
            problems.append(f"part {part} of {num_parts}: no {path.name} (not run, still running or interrupted: run "
                            f"`python -m shards.pack ... --num-parts {num_parts} --part {part}` again)")
            continue
        manifest = read_json(path)
        if manifest.get("options") != options:
            problems.append(f"part {part}: {path.name} was packed with other options than {OPTIONS_FILE}; repack it")
            continue
        for shard in manifest["shards"]:
            tar = out / shard["name"]
            if not tar.exists() or tar.stat().st_size != shard["bytes"]:
                problems.append(f"part {part}: shard {shard['name']} is missing or has changed since the part "
                                f"finished; rerun part {part} to repack it")
        parts.append(manifest)
    if problems:
        raise MergeError(f"{out} is not complete:\n  " + "\n  ".join(problems))
    videos = [v for m in parts for v in m["videos"]]
    names = Counter(v["video_name"] for v in videos)
    repeated = sorted(n for n, c in names.items() if c > 1)
    if repeated:
        raise MergeError(f"{out}: videos in more than one part: {repeated[:5]}; were the parts run on different "
                         "input folders? Repack into a new folder")
    manifest = {
        "format_version": FORMAT_VERSION,
        "options": options,
        "num_parts": num_parts,
        "shards": [s for m in parts for s in m["shards"] if s["count"] > 0],
        "empty_shards": [s["name"] for m in parts for s in m["shards"] if s["count"] == 0],
        "videos": videos,
        "ignored_files": [f for m in parts for f in m.get("ignored_files", [])],
        "summary": summarize(videos),
    }
    if write:
        write_json(out / MANIFEST_FILE, manifest, tmp_suffix=f"merge{os.getpid()}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the --out folder all parts were packed into")
    args = parser.parse_args(argv)
    try:
        manifest = merge(args.out)
    except MergeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"manifest": str(args.out / MANIFEST_FILE), "shards": len(manifest["shards"]),
                      **manifest["summary"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
