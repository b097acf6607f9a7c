"""Extraction in worker processes, shared by ``shards.pack`` and ``python -m infer``.

``extracted(videos, options, workers)`` is what inference runs: each video's reader-format sample or its failure.
Every video is extracted (``shards.extract``) and encoded (``shards.format``) in a worker process (one
FaceDetector each, 1 thread each) under a per-video try/except and time limit, so one bad file fails alone with
its reason. ``OrderedPool`` yields the results in task order: a worker killed by the OS breaks the pool, which is
restarted and the videos it was running are retried one at a time, so only the video that kills a worker twice
fails (``worker_died``).

Fault injection for tests: ``AVDF_PACK_FAULT=<action>:<text>`` makes a worker ``kill`` itself, ``raise`` or
``sleep`` (60 s) when the video name contains <text>.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from shards.extract import ExtractOptions
from shards.format import decode, sample_key
from shards.inputs import Video

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
                        "(killed by the OS, e.g. out of memory, or a crash inside FFmpeg or the detector)"}
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


def extracted(videos: list[Path], options: ExtractOptions, workers: int,
              timeout: float = 300.0) -> Iterator[tuple[str, dict | None, str]]:
    """(video_name, reader-format sample or None, failure reason) of unlabelled video files, in input order.

    ``OrderedPool`` and the packed encoding round trip (``shards.format``), so inference sees exactly what
    training saw."""
    tasks = (Video(name=p.name, path=p, label=None, key=sample_key(p.name)) for p in videos)
    for video, result in OrderedPool(options, workers, timeout).run(tasks):
        if result["sample"] is None:
            record = result["record"]
            yield video.name, None, f"{record['reason']}: {record['detail']}"
        else:
            yield video.name, decode(result["sample"]), ""
