"""Videos -> WebDataset shards, one sample per video (format: ``shards.format``; extraction: ``shards.extract``).

    python -m shards.pack --videos DIR [--labels LABELS.csv] --out OUTDIR [--workers N]
    python -m shards.pack --data DATA --split train --out OUTDIR ...   (a competition data folder's split)
        [--windows 4 --window-frames 16 --fps 25 --size 224 --mouth-size 64 --margin 0.3 --mouth-scale 0.5]
        [--native-rate] [--max-clip-seconds 10 --jpeg-quality 95]
        [--shard-max-mb 256 | --shard-max-count N] [--num-parts N --part I] [--allow-unlabeled]
        [--allow-missing-videos] [--meta META.csv [--meta-columns category,method]] [--video-timeout 300]

Inputs (``shards.inputs``): every file in DIR with a video extension plus every name the labels list, sorted by
name. Other files are listed in the manifest as ``ignored_files``. The labels CSV is the competition's
``video_name,target`` (target 0/1, 1 = fake; ``competition.read_labels``); a labelled video missing from DIR, a
video without a label (unless ``--allow-unlabeled``: packed with label null), a duplicate name or a bad value
stops the run before any work with a message that names the file and the fix. Without ``--labels`` every sample has label null.
``--meta meta.csv`` copies per-video columns (default ``category,method``: the FakeAVCeleb category gives the
per-modality labels) into each sample's json; videos it does not list get none.

Outcomes (manifest ``videos[].status``): ``packed``; ``packed_with_fallback`` (``fallbacks`` says which, e.g.
``no_face`` -> centre crop, ``no_audio`` -> silent audio; see ``shards.extract``); ``failed`` with ``reason``
from ``shards.extract.FAILURE_REASONS`` and a ``detail``. No input is dropped silently. Audio-only files fail
with ``no_video_stream``: the model needs frames, and inference scores them neutrally.

Shards: the part's sorted inputs are cut into consecutive groups of ``--shard-max-count`` videos, one shard
each (a failed video leaves its shard one sample short), so shard contents depend only on the inputs and the
options. The default count comes from ``--shard-max-mb`` and ``estimate_sample_bytes`` (JPEG at about
``JPEG_BYTES_PER_PIXEL`` bytes per pixel at quality 95, measured on face crops, plus the longest audio).

Robustness (``shards.pool``): every video is extracted in a worker process under a per-video try/except and time
limit; a worker killed by the OS is replaced and only a video that kills a worker twice fails (``worker_died``).
Before any video is read, the face detector must find the face in a known portrait (``shards.faces.self_check``), so a broken install stops the run with one message naming the missing piece
(exit 5) instead of failing every video. A run exits 0 when at most ``--max-failed-fraction`` of the inputs
failed (the shards and manifest are written either way), 1 when more failed or nothing was packed (stderr
names the most common reasons with counts), 2 on usage or label errors, 5 when the detector is unusable.

Resume: tars and stats are written under temporary names and renamed when complete; a shard is done when its
tar and ``_stats.json`` exist. Rerunning the same command skips done shards and redoes the others (stale
``*.tmp`` of this part are removed). ``options.json`` records everything that changes sample content; a rerun or
another part with different options refuses. The folder layout is ``shards.layout``'s. Same inputs and options -> byte-identical tars.

Parts: ``--num-parts N --part I`` packs the I-th of N contiguous slices of the sorted inputs; all parts may
write into one OUTDIR (shard names carry the part). ``python -m shards.merge OUTDIR`` joins them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from competition import LABEL_FILES, LabelsError, split_files
from shards.extract import ExtractOptions
from shards.inputs import InputError, Video, collect_inputs, read_meta
from shards.layout import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    OPTIONS_FILE,
    part_manifest_path,
    part_tag,
    read_json,
    shard_name,
    stats_path,
    summarize,
    write_json,
)
from shards.merge import MergeError, merge
from shards.pool import OrderedPool

DEFAULT_SHARD_MB = 256.0
# 224x224 face crops at quality 95: 0.29 B/pixel on the synthetic dataset, 0.39 on 720p test videos
# (python -m scripts.bench_pack prints it) -> about 17 KB per frame
JPEG_BYTES_PER_PIXEL = 0.35
TAR_MEMBER_OVERHEAD = 1024  # header + padding per member
TAR_MTIME = 1_700_000_000  # fixed member time: identical inputs give byte-identical tars
EXIT_TOO_MANY_FAILED = 1  # also when nothing at all could be packed
EXIT_USAGE = 2
EXIT_NO_DETECTOR = 5
DEFAULT_MAX_FAILED_FRACTION = 0.1


@dataclass(frozen=True)
class ShardPlan:
    index: int
    name: str
    videos: tuple[Video, ...]


@dataclass
class PackConfig:
    videos: Path
    out: Path
    labels: Path | None = None
    extract: ExtractOptions = field(default_factory=ExtractOptions)
    shard_max_count: int | None = None
    shard_max_mb: float = DEFAULT_SHARD_MB
    num_parts: int = 1
    part: int = 0
    workers: int = os.cpu_count() or 1
    allow_unlabeled: bool = False
    allow_missing_videos: bool = False
    meta: Path | None = None
    meta_columns: tuple[str, ...] = ("category", "method")
    video_timeout: float = 300.0
    max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION
    prefix: str = "shard"
    progress: bool = True

    def samples_per_shard(self) -> int:
        if self.shard_max_count:
            return self.shard_max_count
        return max(1, int(self.shard_max_mb * 1e6 // estimate_sample_bytes(self.extract)))


def estimate_sample_bytes(options: ExtractOptions) -> int:
    """A generous size of one sample: T face and T mouth JPEGs + the longest audio + json + tar headers."""
    pixels = options.frames * (options.size ** 2 + options.mouth_size ** 2)
    audio = options.max_clip_seconds * options.audio_sample_rate * 2
    json_bytes = 1500 + 250 * options.frames
    return int(pixels * JPEG_BYTES_PER_PIXEL + audio + json_bytes + TAR_MEMBER_OVERHEAD * (2 * options.frames + 3))


def part_slice(items: list, part: int, num_parts: int) -> list:
    """The ``part``-th of ``num_parts`` contiguous, near-equal slices."""
    n = len(items)
    return items[part * n // num_parts:(part + 1) * n // num_parts]


def plan_shards(inputs: list[Video], config: PackConfig) -> list[ShardPlan]:
    mine = part_slice(inputs, config.part, config.num_parts)
    per = config.samples_per_shard()
    return [ShardPlan(j, shard_name(config.prefix, config.part, config.num_parts, j), tuple(mine[s:s + per]))
            for j, s in enumerate(range(0, len(mine), per))]


def recorded_options(config: PackConfig) -> dict:
    labels_sha = None
    if config.labels is not None:
        labels_sha = hashlib.sha256(config.labels.read_bytes()).hexdigest()
    return {
        "format_version": FORMAT_VERSION,
        "extract": config.extract.content(),
        "samples_per_shard": config.samples_per_shard(),
        "num_parts": config.num_parts,
        "prefix": config.prefix,
        "labels_sha256": labels_sha,
        "allow_unlabeled": config.allow_unlabeled,
        "allow_missing_videos": config.allow_missing_videos,
        "meta_sha256": hashlib.sha256(config.meta.read_bytes()).hexdigest() if config.meta else None,
        "meta_columns": list(config.meta_columns) if config.meta else [],
    }


def check_options(out: Path, options: dict, tag: str) -> None:
    """Write OUTDIR/options.json, or refuse when it records different options."""
    path = out / OPTIONS_FILE
    if path.exists():
        old = read_json(path)
        if old != options:
            diff = [f"{k}: {old.get(k)!r} -> {options.get(k)!r}" for k in sorted(set(old) | set(options))
                    if old.get(k) != options.get(k)]
            raise InputError(f"{out} was packed with other options ({path}): {'; '.join(diff)}. Pack into a new "
                             "--out, or delete that folder to repack with the new options")
        return
    write_json(path, options, tmp_suffix=tag)


# --- shards ---------------------------------------------------------------------------------------------------
class ShardWriter:
    """Writes one shard to ``<name>.<part>.tmp`` and renames it; then its stats."""

    def __init__(self, out: Path, plan: ShardPlan, tag: str):
        self.plan, self.path, self.tag = plan, out / plan.name, tag
        self.tmp = out / f"{plan.name}.{tag}.tmp"
        self.file = open(self.tmp, "wb")
        # plain tarfile rather than webdataset.TarWriter: the same layout (members "<key>.<ext>", sorted by ext)
        # without importing torch in the parent. PAX keeps long and non-ASCII names intact.
        self.tar = tarfile.open(fileobj=self.file, mode="w|", format=tarfile.PAX_FORMAT)
        self.records: list[dict] = []
        self.started = time.time()

    def add(self, result: dict) -> None:
        record = dict(result["record"])
        sample = result["sample"]
        if sample is not None:
            key = sample["__key__"]
            for ext in sorted(k for k in sample if not k.startswith("_")):
                data = sample[ext]
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o444
                self.tar.addfile(info, io.BytesIO(data))
            record["shard"] = self.plan.name
        else:
            record["shard"] = None
        self.records.append(record)

    def close(self) -> dict:
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        packed = [r for r in self.records if r["status"] != "failed"]
        stats = {
            "shard": self.plan.name,
            "index": self.plan.index,
            "count": len(packed),
            "failures": len(self.records) - len(packed),
            "bytes": self.path.stat().st_size,
            "seconds": round(time.time() - self.started, 3),
            "keys": [r["key"] for r in packed],
            "inputs": [v.name for v in self.plan.videos],
            "labels": summarize(self.records)["class_counts"],
            "videos": self.records,
        }
        write_json(stats_path(self.path), stats, tmp_suffix=self.tag)
        return stats


def shard_done(out: Path, plan: ShardPlan) -> dict | None:
    """The stats of a finished shard, None when it must be (re)packed; InputError when the inputs changed."""
    tar, stats_file = out / plan.name, stats_path(out / plan.name)
    if not (tar.exists() and stats_file.exists()):
        return None
    stats = read_json(stats_file)
    if stats.get("inputs") != [v.name for v in plan.videos]:
        raise InputError(f"{tar} was packed from other videos than --videos now holds (added or removed files "
                         "shift the shards); pack into a new --out, or delete it to repack")
    if stats.get("bytes") != tar.stat().st_size:
        return None
    return stats


def remove_stale(out: Path, tag: str) -> None:
    for tmp in out.glob(f"*.{tag}.tmp"):
        tmp.unlink(missing_ok=True)


# --- the run --------------------------------------------------------------------------------------------------
def pack(config: PackConfig) -> dict:
    """Pack this part; returns its manifest. Raises InputError for bad inputs/options (nothing written)."""

    if not 0 <= config.part < config.num_parts:
        raise InputError(f"--part {config.part} is not in 0..{config.num_parts - 1} (--num-parts {config.num_parts})")
    meta = read_meta(config.meta, config.meta_columns) if config.meta is not None else None
    inputs, ignored = collect_inputs(config.videos, config.labels, config.allow_unlabeled,
                                     config.allow_missing_videos, meta)
    plans = plan_shards(inputs, config)
    options = recorded_options(config)
    config.out.mkdir(parents=True, exist_ok=True)
    tag = part_tag(config.part, config.num_parts)
    check_options(config.out, options, tag)
    remove_stale(config.out, tag)

    finished = {p.index: s for p in plans if (s := shard_done(config.out, p)) is not None}
    todo = [p for p in plans if p.index not in finished]
    if todo:
        from shards.faces import self_check

        self_check()
    total = sum(len(p.videos) for p in plans)
    already = sum(len(p.videos) for p in plans if p.index in finished)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the spawned workers
    progress = _progress(total, already, tag, config.progress)
    failures = sum(s["failures"] for s in finished.values())
    pool = OrderedPool(config.extract, config.workers, config.video_timeout)
    writers: dict[int, ShardWriter] = {}
    remaining = {p.index: len(p.videos) for p in todo}
    owner = {id(v): p for p in todo for v in p.videos}
    for video, result in pool.run(v for p in todo for v in p.videos) if todo else ():
        plan = owner[id(video)]
        if plan.index not in writers:
            writers[plan.index] = ShardWriter(config.out, plan, tag)
        writers[plan.index].add(result)
        failures += result["record"]["status"] == "failed"
        remaining[plan.index] -= 1
        if remaining[plan.index] == 0:
            finished[plan.index] = writers.pop(plan.index).close()
        progress.update(1)
        progress.set_postfix(failed=failures, refresh=False)
    progress.close()

    stats = [finished[p.index] for p in plans]
    manifest = {
        "format_version": FORMAT_VERSION,
        "part": config.part,
        "num_parts": config.num_parts,
        "complete": True,
        "options": options,
        "videos_dir": str(config.videos),
        "labels": str(config.labels) if config.labels else None,
        "shards": [{"name": s["shard"], "count": s["count"], "bytes": s["bytes"]} for s in stats],
        "videos": [r for s in stats for r in s["videos"]],
        "ignored_files": ignored if config.part == 0 else [],
        "worker_restarts": pool.restarts,
    }
    manifest["summary"] = summarize(manifest["videos"])
    write_json(part_manifest_path(config.out, config.part, config.num_parts), manifest, tmp_suffix=f"{tag}")
    try:
        merge(config.out)
    except MergeError:
        if config.num_parts == 1:
            raise
    return manifest


def _progress(total: int, initial: int, tag: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"pack {tag}", unit="video", file=sys.stderr,
                disable=not enabled, dynamic_ncols=True, smoothing=0.1)


def parse_args(argv: list[str] | None = None) -> PackConfig:
    defaults = ExtractOptions()
    p = argparse.ArgumentParser(prog="python -m shards.pack", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    inputs = p.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--videos", type=Path, help="folder of video files")
    inputs.add_argument("--data", type=Path, help="a competition data folder; with --split: its videos and labels")
    p.add_argument("--split", choices=sorted(LABEL_FILES), help="with --data: train, val or test")
    p.add_argument("--labels", type=Path, default=None, help="CSV video_name,target (omit for unlabeled sets)")
    p.add_argument("--out", type=Path, required=True, help="output folder (shared by all parts)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="extraction processes (default: all cores; 0 = in this process)")
    p.add_argument("--windows", type=int, default=defaults.windows, help="W windows of consecutive frames per clip")
    p.add_argument("--window-frames", type=int, default=defaults.window_frames, help="K consecutive frames a window")
    p.add_argument("--fps", type=float, default=defaults.fps, help="frame rate the windows are taken at")
    p.add_argument("--native-rate", action="store_true",
                   help="take each video's windows at its own frame rate (--fps where it states none or one below "
                        "--fps / 2)")
    p.add_argument("--size", type=int, default=defaults.size, help="face crop side in pixels")
    p.add_argument("--mouth-size", type=int, default=defaults.mouth_size, help="mouth crop side in pixels")
    p.add_argument("--margin", type=float, default=defaults.margin, help="face box margin per side (fraction)")
    p.add_argument("--mouth-scale", type=float, default=defaults.mouth_scale,
                   help="mouth crop side as a fraction of the face box's width")
    p.add_argument("--max-clip-seconds", type=float, default=defaults.max_clip_seconds)
    p.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality)
    p.add_argument("--no-follow", dest="follow", action="store_false",
                   help="detect faces on every --detect-stride-th frame instead of once per window with the face "
                        "followed to the window's ends")
    p.add_argument("--detect-stride", type=int, default=defaults.detect_stride,
                   help="without following (or where it fails), run the face detector on every k-th frame (others "
                        "where boxes disagree)")
    p.add_argument("--max-frame-side", type=int, default=defaults.max_frame_side,
                   help="downscale larger frames while decoding (bounds memory)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--shard-max-mb", type=float, default=DEFAULT_SHARD_MB,
                      help="target shard size; sets the videos per shard through estimate_sample_bytes")
    size.add_argument("--shard-max-count", type=int, default=None, help="videos per shard (overrides --shard-max-mb)")
    p.add_argument("--num-parts", type=int, default=1, help="split the inputs into N parts (N machines)")
    p.add_argument("--part", type=int, default=0, help="which part this run packs (0-based)")
    p.add_argument("--allow-unlabeled", action="store_true", help="pack videos missing from --labels (label null)")
    p.add_argument("--allow-missing-videos", action="store_true",
                   help="record labelled videos missing from --videos as failed (missing_file) instead of "
                        "stopping; they do not count against --max-failed-fraction")
    p.add_argument("--meta", type=Path, default=None,
                   help="CSV with video_name + --meta-columns (e.g. the dataset's meta.csv): copied into each json")
    p.add_argument("--meta-columns", default="category,method",
                   help="comma-separated --meta columns to copy (default: category,method)")
    p.add_argument("--video-timeout", type=float, default=300.0, help="seconds per video before it fails (0: none)")
    p.add_argument("--max-failed-fraction", type=float, default=DEFAULT_MAX_FAILED_FRACTION,
                   help="exit 1 (after writing everything) when more than this share of the inputs fail "
                        f"(default {DEFAULT_MAX_FAILED_FRACTION}; 1 only when nothing is packed)")
    p.add_argument("--prefix", default="shard", help="shard name prefix")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.data is not None:
        if a.split is None or a.labels is not None:
            p.error("--data needs --split (and takes the labels from the data folder: no --labels)")
        try:
            a.videos, a.labels = split_files(a.data, a.split)
        except LabelsError as error:
            p.exit(EXIT_USAGE, f"error: {error}\n")
    if a.shard_max_count is not None and a.shard_max_count < 1:
        p.error("--shard-max-count must be >= 1")
    if a.num_parts < 1:
        p.error("--num-parts must be >= 1")
    if not 0.0 <= a.max_failed_fraction <= 1.0:
        p.error("--max-failed-fraction must be between 0 and 1")
    if not a.prefix or "/" in a.prefix or "." in a.prefix:
        p.error("--prefix must be a plain name without '/' or '.'")
    try:
        extract = ExtractOptions(windows=a.windows, window_frames=a.window_frames, fps=a.fps,
                                 native_rate=a.native_rate, size=a.size, mouth_size=a.mouth_size, margin=a.margin,
                                 mouth_scale=a.mouth_scale, max_clip_seconds=a.max_clip_seconds,
                                 jpeg_quality=a.jpeg_quality, follow=a.follow, detect_stride=a.detect_stride,
                                 max_frame_side=a.max_frame_side)
    except ValueError as error:
        p.error(str(error))
    return PackConfig(videos=a.videos, out=a.out, labels=a.labels, extract=extract, shard_max_count=a.shard_max_count,
                      shard_max_mb=a.shard_max_mb, num_parts=a.num_parts, part=a.part, workers=max(0, a.workers),
                      allow_unlabeled=a.allow_unlabeled, allow_missing_videos=a.allow_missing_videos,
                      meta=a.meta, meta_columns=tuple(c.strip() for c in a.meta_columns.split(",") if c.strip()),
                      video_timeout=a.video_timeout, max_failed_fraction=a.max_failed_fraction, prefix=a.prefix,
                      progress=not a.no_progress)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    started = time.time()
    from shards.faces import DetectorUnavailable

    try:
        manifest = pack(config)
    except (InputError, LabelsError, MergeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except DetectorUnavailable as error:
        print(f"error: face detector unusable, no video can be packed: {error}", file=sys.stderr)
        return EXIT_NO_DETECTOR
    summary = manifest["summary"]
    report = {"out": str(config.out), "part": config.part, "num_parts": config.num_parts,
              "shards": sum(1 for s in manifest["shards"] if s["count"]), **summary,
              "seconds": round(time.time() - started, 1)}
    if (config.out / MANIFEST_FILE).exists():
        report["manifest"] = str(config.out / MANIFEST_FILE)
    print(json.dumps(report, indent=1, ensure_ascii=False))
    failed = [v for v in manifest["videos"] if v["status"] == "failed"]
    for v in failed[:20]:
        print(f"failed: {v['video_name']}: {v['reason']}: {v['detail']}", file=sys.stderr)
    if len(failed) > 20:
        print(f"... and {len(failed) - 20} more failures: see {part_manifest_path(config.out, config.part, config.num_parts)}",
              file=sys.stderr)
    reasons = ", ".join(f"{reason} x{count}" for reason, count in
                        sorted(summary["failures_by_reason"].items(), key=lambda kv: -kv[1])[:5])
    if summary["inputs"] and not summary["packed"]:
        print(f"error: none of the {summary['inputs']} videos could be packed; reasons: {reasons}", file=sys.stderr)
        return EXIT_TOO_MANY_FAILED
    # videos missing under --allow-missing-videos were accepted up front: they do not count against the fraction
    counted = [v for v in failed if not (config.allow_missing_videos and v["reason"] == "missing_file")]
    if len(counted) > config.max_failed_fraction * summary["inputs"]:
        print(f"error: {len(counted)} of {summary['inputs']} videos failed (more than --max-failed-fraction "
              f"{config.max_failed_fraction:g}); most common reasons: {reasons}", file=sys.stderr)
        return EXIT_TOO_MANY_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
