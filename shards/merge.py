"""Join the parts of a partitioned ``shards.pack`` run into one dataset (its ``manifest.json``).

    python -m shards.merge OUTDIR

Fails, naming them, when parts are missing, incomplete, packed with other options or overlapping. The layout of
OUTDIR is ``shards.layout``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

from shards.layout import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    OPTIONS_FILE,
    part_manifest_path,
    read_json,
    summarize,
    write_json,
)


class MergeError(Exception):
    """The parts do not form a complete dataset yet; the message names what is missing and how to fix it."""


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
