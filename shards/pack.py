"""Videos -> WebDataset shards, one sample per video (format: ``shards.format``; extraction: ``shards.extract``).

    python -m shards.pack --videos DIR [--labels LABELS.csv] --out OUTDIR [--workers N]
        [--frames 16 --size 224 --margin 0.3 --max-clip-seconds 10 --jpeg-quality 95]
        [--shard-max-mb 256 | --shard-max-count N] [--num-parts N --part I] [--allow-unlabeled]
        [--allow-missing-videos] [--meta META.csv [--meta-columns category,method]] [--video-timeout 300]

Inputs: every file in DIR with a video extension (``VIDEO_EXTENSIONS``, any case) plus every name the labels
list, sorted by name. Other files are listed in the manifest as ``ignored_files``. The labels CSV needs a
``video_name,target`` header (target 0/1, 1 = fake); a labelled video missing from DIR, a video without a label
(unless ``--allow-unlabeled``: packed with label null), a duplicate name or a bad value stops the run before any
work with a message that names the file and the fix. Without ``--labels`` every sample has label null.
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

Robustness: every video is extracted in a worker process (one FaceDetector each, 1 thread each) under a
per-video try/except and time limit; a worker killed by the OS breaks the pool, which is restarted and the
videos it was running are retried one at a time, so only the video that kills a worker twice fails
(``worker_died``). Before any video is read, the face detector must find the face in a known portrait
(``shards.faces.self_check``), so a broken install stops the run with one message naming the missing piece
(exit 5) instead of failing every video. A run exits 0 when at most ``--max-failed-fraction`` of the inputs
failed (the shards and manifest are written either way), 1 when more failed or nothing was packed (stderr
names the most common reasons with counts), 2 on usage or label errors, 5 when the detector is unusable.

Resume: tars and stats are written under temporary names and renamed when complete; a shard is done when its
tar and ``_stats.json`` exist. Rerunning the same command skips done shards and redoes the others (stale
``*.tmp`` of this part are removed). ``options.json`` records everything that changes sample content; a rerun or
another part with different options refuses. Same inputs and options -> byte-identical tars.

Parts: ``--num-parts N --part I`` packs the I-th of N contiguous slices of the sorted inputs; all parts may
write into one OUTDIR (shard names carry the part). ``python -m shards.merge OUTDIR`` joins them.

Fault injection for tests: ``AVDF_PACK_FAULT=<action>:<text>`` makes a worker ``kill`` itself, ``raise`` or
``sleep`` (60 s) when the video name contains <text>.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import signal
import sys
import tarfile
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from shards.extract import ExtractOptions
from shards.format import RESERVED_JSON_KEYS, sample_key
from shards.merge import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    OPTIONS_FILE,
    MergeError,
    merge,
    part_manifest_path,
    part_tag,
    read_json,
    shard_name,
    stats_path,
    summarize,
    write_json,
)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".3gp", ".flv",
                    ".wmv")
DEFAULT_SHARD_MB = 256.0
# 224x224 face crops at quality 95: 0.29 B/pixel on the synthetic dataset, 0.39 on 720p test videos
# (scripts/bench_pack.py prints it) -> about 17 KB per frame
JPEG_BYTES_PER_PIXEL = 0.35
TAR_MEMBER_OVERHEAD = 1024  # header + padding per member
TAR_MTIME = 1_700_000_000  # fixed member time: identical inputs give byte-identical tars
EXIT_TOO_MANY_FAILED = 1  # also when nothing at all could be packed
EXIT_USAGE = 2
EXIT_NO_DETECTOR = 5
DEFAULT_MAX_FAILED_FRACTION = 0.1


class InputError(Exception):
    """A problem with --videos / --labels / --out found before any work; the message names the fix."""


@dataclass(frozen=True)
class Video:
    name: str
    path: Path
    label: int | None
    key: str
    extra: tuple[tuple[str, str], ...] = ()  # --meta columns copied into the sample json


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
    """A generous size of one sample: T JPEG crops + the longest audio + json + tar headers."""
    jpeg = options.frames * options.size * options.size * JPEG_BYTES_PER_PIXEL
    audio = options.max_clip_seconds * options.audio_sample_rate * 2
    json_bytes = 1500 + 150 * options.frames
    return int(jpeg + audio + json_bytes + TAR_MEMBER_OVERHEAD * (options.frames + 3))


# --- inputs ---------------------------------------------------------------------------------------------------
def read_labels(path: Path) -> dict[str, int]:
    """{video_name: 0|1} from a ``video_name,target`` CSV, or InputError naming the file, the line and the fix."""
    if not path.is_file():
        raise InputError(f"labels file {path} does not exist; pass the CSV with `video_name,target` rows, or omit "
                         "--labels for an unlabeled test set")
    labels: dict[str, int] = {}
    lines: dict[str, int] = {}
    duplicates: list[str] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        if "video_name" not in header or "target" not in header:
            raise InputError(f"{path}: header is {header or 'empty'}, expected `video_name,target` (target 1 = "
                             "fake, 0 = real); fix the first line of the file")
        name_col, target_col = header.index("video_name"), header.index("target")
        for line, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) <= max(name_col, target_col):
                raise InputError(f"{path}:{line}: expected {len(header)} columns, got {row}; fix that line")
            name, target = row[name_col].strip(), row[target_col].strip()
            if not name:
                raise InputError(f"{path}:{line}: empty video_name; fix or delete that line")
            try:
                value = float(target)
            except ValueError:
                value = math.nan
            if value not in (0.0, 1.0):
                raise InputError(f"{path}:{line}: target {target!r} for {name} is not 0 or 1; fix that line")
            if name in labels:
                duplicates.append(f"{name} (lines {lines[name]} and {line})")
                continue
            labels[name], lines[name] = int(value), line
    if duplicates:
        raise InputError(f"{path}: {len(duplicates)} duplicate video names: {', '.join(duplicates[:5])}"
                         f"{' ...' if len(duplicates) > 5 else ''}; keep one row per video")
    return labels


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
    labels = read_labels(labels_path) if labels_path is not None else None
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


# --- workers --------------------------------------------------------------------------------------------------
_worker: dict = {}


class _Timeout(Exception):
    pass


def _init_worker(options: ExtractOptions, watch_parent: bool = False) -> None:
    import cv2

    cv2.setNumThreads(1)
    if watch_parent:  # a worker whose parent was killed (kill -9, OOM) would otherwise wait forever for work
        parent = os.getppid()
        threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    _worker["options"] = options
    _worker["detector"] = None
    import scipy.signal  # noqa: F401  (the audio resampler: start-up, not the first video's time limit)

    try:
        _detector()
    except Exception:  # noqa: S110 - a broken model install must fail each video with its message, not the pool
        pass


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(2)
    os._exit(1)


def _detector():
    if _worker.get("detector") is None:
        from shards.faces import FaceDetector

        _worker["detector"] = FaceDetector()
    return _worker["detector"]


def _on_alarm(signum, frame):
    raise _Timeout()


def _inject_fault(name: str) -> None:
    spec = os.environ.get("AVDF_PACK_FAULT", "")
    action, _, text = spec.partition(":")
    if not text or text not in name:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise RuntimeError(f"injected fault for {name}")
    elif action == "sleep":
        time.sleep(60)


def process_video(video: Video, timeout: float) -> dict:
    """Extract + encode one video in a worker. Never raises: failures come back as outcome records."""
    from shards.extract import ExtractionError, extract
    from shards.format import encode

    started, cpu_started = time.perf_counter(), time.process_time()
    record = {"video_name": video.name, "key": video.key, "label": video.label, "fallbacks": [],
              "reason": None, "detail": None}
    use_alarm = timeout > 0 and hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    sample = None
    try:
        _inject_fault(video.name)
        clip = extract(video.path, _worker["options"], _detector())
        clip.meta.update(video.extra)
        sample = encode(clip, video.key, video.label)
        record["fallbacks"] = list(clip.meta["fallbacks"])
        record["status"] = "packed_with_fallback" if record["fallbacks"] else "packed"
    except ExtractionError as error:
        record.update(status="failed", reason=error.reason, detail=error.detail or str(error))
    except _Timeout:
        record.update(status="failed", reason="timeout", detail=f"extraction took longer than {timeout:g} s")
    except Exception as error:  # a bug or an FFmpeg surprise on one video must not stop the run
        tail = traceback.format_exc(limit=-3).strip().splitlines()[-6:]
        record.update(status="failed", reason="crash", detail=f"{type(error).__name__}: {error} | " + " | ".join(tail))
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    record["seconds"] = round(time.perf_counter() - started, 3)
    record["cpu_seconds"] = round(time.process_time() - cpu_started, 3)  # all threads of the worker
    return {"record": record, "sample": sample}


def _worker_died(video: Video) -> dict:
    record = {"video_name": video.name, "key": video.key, "label": video.label, "fallbacks": [],
              "status": "failed", "reason": "worker_died", "seconds": None, "cpu_seconds": None,
              "detail": "the worker process died while extracting this video, also when retried alone "
                        "(killed by the OS, e.g. out of memory, or a crash inside FFmpeg/MediaPipe)"}
    return {"record": record, "sample": None}


class OrderedPool:
    """Runs ``process_video`` over tasks in worker processes and yields results in task order.

    At most ``window`` tasks are submitted or waiting to be yielded (bounded memory). When a worker dies the pool
    is rebuilt and the tasks it was running are rerun one at a time; a task that breaks the pool alone fails.
    ``workers=0`` runs everything in this process (no isolation; for debugging and small tests).
    """

    def __init__(self, options: ExtractOptions, workers: int, timeout: float):
        self.options, self.workers, self.timeout = options, workers, timeout
        self.window = max(2, 2 * workers)
        self.pool: ProcessPoolExecutor | None = None
        self.restarts = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        import multiprocessing as mp

        return ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                   initargs=(self.options, True))

    def run(self, tasks: Iterable[Video]) -> Iterator[tuple[Video, dict]]:
        if self.workers <= 0:
            _init_worker(self.options)
            try:
                for video in tasks:
                    yield video, process_video(video, self.timeout)
            finally:
                if _worker.get("detector") is not None:
                    _worker.pop("detector").close()
            return
        queue = deque(enumerate(tasks))
        inflight: dict[Future, tuple[int, Video]] = {}
        done: dict[int, tuple[Video, dict]] = {}
        suspects: deque[tuple[int, Video]] = deque()
        alone: tuple[int, Video] | None = None  # the suspect running by itself
        next_out = 0
        self.pool = self._new_pool()

        def submit(task: tuple[int, Video]) -> bool:
            try:
                inflight[self.pool.submit(process_video, task[1], self.timeout)] = task
                return True
            except BrokenProcessPool:  # broke since the last wait: the culprit is among the running tasks
                return False

        try:
            while queue or inflight or suspects:
                lost: list[tuple[int, Video]] = []
                if suspects or alone is not None:
                    if not inflight:
                        alone = suspects.popleft()
                        if not submit(alone):
                            lost.append(alone)
                else:
                    while queue and queue[0][0] - next_out < self.window:
                        task = queue.popleft()
                        if not submit(task):
                            lost.append(task)
                            break
                if not lost:
                    finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                    for future in finished:
                        task = inflight.pop(future)
                        try:
                            done[task[0]] = (task[1], future.result())
                        except BrokenProcessPool:
                            lost.append(task)
                if lost:
                    lost += list(inflight.values())
                    inflight.clear()
                    self._restart()
                    if alone is not None and lost == [alone]:
                        done[alone[0]] = (alone[1], _worker_died(alone[1]))
                    else:
                        suspects.extend(sorted(lost, key=lambda t: t[0]))
                if not inflight:
                    alone = None
                while next_out in done:
                    yield done.pop(next_out)
                    next_out += 1
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
                self.pool = None

    def _restart(self) -> None:
        assert self.pool is not None
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.restarts += 1
        self.pool = self._new_pool()


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
    p.add_argument("--videos", type=Path, required=True, help="folder of video files")
    p.add_argument("--labels", type=Path, default=None, help="CSV video_name,target (omit for unlabeled sets)")
    p.add_argument("--out", type=Path, required=True, help="output folder (shared by all parts)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="extraction processes (default: all cores; 0 = in this process)")
    p.add_argument("--frames", type=int, default=defaults.frames, help="T frames per clip")
    p.add_argument("--size", type=int, default=defaults.size, help="face crop side in pixels")
    p.add_argument("--margin", type=float, default=defaults.margin, help="face box margin per side (fraction)")
    p.add_argument("--max-clip-seconds", type=float, default=defaults.max_clip_seconds)
    p.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality)
    p.add_argument("--detect-stride", type=int, default=defaults.detect_stride,
                   help="run the face detector on every k-th frame (others where boxes disagree)")
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
    if a.shard_max_count is not None and a.shard_max_count < 1:
        p.error("--shard-max-count must be >= 1")
    if a.num_parts < 1:
        p.error("--num-parts must be >= 1")
    if not 0.0 <= a.max_failed_fraction <= 1.0:
        p.error("--max-failed-fraction must be between 0 and 1")
    if not a.prefix or "/" in a.prefix or "." in a.prefix:
        p.error("--prefix must be a plain name without '/' or '.'")
    try:
        extract = ExtractOptions(frames=a.frames, size=a.size, margin=a.margin, max_clip_seconds=a.max_clip_seconds,
                                 jpeg_quality=a.jpeg_quality, detect_stride=a.detect_stride,
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
    except (InputError, MergeError) as error:
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
