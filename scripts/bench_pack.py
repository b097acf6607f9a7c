"""Packing throughput against decoding the same frames alone (not a test; prints JSON).

    python -m scripts.bench_pack --videos DIR [--workers N] [--limit 40] [--config configs/base.yaml]

Three runs over the same videos, each in N spawned worker processes (one thread each):
  decode : ``shards.extract.load_frames`` only: open, index, decode and convert the clip's W x K frames (the exact
           code path packing uses, without detection, cropping, audio or encoding);
  decode+audio : the same plus the clip's audio span (what packing cannot avoid decoding);
  pack   : the real ``shards.pack`` run (extract + encode + tar writing + manifest) into a temporary folder.
Per-core throughput is reported three ways: ``cpu`` = videos per CPU-second (worker CPU time per video, all
threads, plus the parent's CPU; robust when other work shares the machine), ``steady_wall`` = per-video wall
time inside the workers after start-up, and ``wall`` = videos / (run wall time x workers) including worker
start-up (imports, detector load), which only matters for small runs. ``ratio_pack_vs_decode`` = pack /
decode throughput on CPU time; the target is >= 0.7. Also reported: the time split of packing into its stages
on a few videos (in this process) and the mean JPEG bytes per crop pixel, which calibrates
``shards.pack.JPEG_BYTES_PER_PIXEL``. ``paired`` measures decode-only and full extraction+encoding of each
video back to back in the same worker (best of 2 each): the most load-robust ratio on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from shards.extract import ExtractOptions
from shards.inputs import VIDEO_EXTENSIONS
from train.config import load_config


def _init() -> None:
    import cv2

    cv2.setNumThreads(1)


def decode_one(path: str, options: ExtractOptions, audio: bool) -> tuple[float, float]:
    """(wall, CPU) seconds to decode one video's clip frames (and audio) in this worker."""
    from shards import media
    from shards.extract import load_frames

    started, cpu = time.perf_counter(), time.process_time()
    with media.open_media(path) as container:
        info = media.probe(container)
        frames = load_frames(container, info, options, [])
        if audio and info.has_audio:
            media.decode_audio(container, frames.clip_start, frames.clip_end, options.audio_sample_rate)
    return time.perf_counter() - started, time.process_time() - cpu


def _parent_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_decode(videos: list[Path], options: ExtractOptions, workers: int, audio: bool) -> dict:
    started = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init) as pool:
        list(pool.map(decode_one, [str(videos[0])] * workers, [options] * workers, [audio] * workers))  # warm up
        warm, parent = time.perf_counter(), _parent_cpu()
        times = list(pool.map(decode_one, map(str, videos), [options] * len(videos), [audio] * len(videos)))
        parent = _parent_cpu() - parent
    end = time.perf_counter()
    return {"videos": len(videos), "wall_s": round(end - started, 2), "wall_after_startup_s": round(end - warm, 2),
            "per_video_s": round(sum(w for w, _ in times) / len(times), 4),
            "cpu_per_video_s": round((sum(c for _, c in times) + parent) / len(times), 4)}


def run_pack(videos: list[Path], options: ExtractOptions, workers: int) -> dict:
    from shards.pack import PackConfig, pack

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        for v in videos:
            (folder / v.name).symlink_to(v.resolve())
        config = PackConfig(videos=folder, out=Path(tmp) / "out", extract=options, workers=workers, progress=False)
        started, parent = time.perf_counter(), _parent_cpu()
        manifest = pack(config)
        wall, parent = time.perf_counter() - started, _parent_cpu() - parent
        shard_bytes = sum(s["bytes"] for s in manifest["shards"])
    done = [v for v in manifest["videos"] if v["seconds"] is not None]
    # the parent's CPU (receiving samples, writing tars) is packing work too; its start-up share is small
    return {"videos": len(videos), "wall_s": round(wall, 2),
            "per_video_s": round(sum(v["seconds"] for v in done) / len(done), 4),
            "cpu_per_video_s": round((sum(v["cpu_seconds"] for v in done) + parent) / len(done), 4),
            "parent_cpu_per_video_s": round(parent / len(done), 4),
            "packed": manifest["summary"]["packed"], "failed": manifest["summary"]["failed"],
            "fallbacks": manifest["summary"]["fallbacks"], "bytes_per_sample": shard_bytes // max(1, len(videos))}


def paired_one(path: str, options: ExtractOptions, repeats: int) -> tuple[float, float]:
    """(decode-only, pack) CPU seconds of one video measured back to back in one worker (best of ``repeats``),
    so load from other processes hits both alike."""
    from shards.format import sample_key
    from shards.inputs import Video
    from shards.pool import process_video

    video = Video(Path(path).name, Path(path), None, sample_key(Path(path).name))
    decode, packed = [], []
    for _ in range(repeats):
        decode.append(decode_one(path, options, audio=False)[1])
        cpu = time.process_time()
        process_video(video, 0)
        packed.append(time.process_time() - cpu)
    return min(decode), min(packed)


def run_paired(videos: list[Path], options: ExtractOptions, workers: int, repeats: int = 2) -> dict:
    from shards.pool import _init_worker

    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(options,)) as pool:
        list(pool.map(paired_one, [str(videos[0])] * workers, [options] * workers, [1] * workers))  # warm up
        pairs = list(pool.map(paired_one, map(str, videos), [options] * len(videos), [repeats] * len(videos)))
    ratios = sorted(d / p for d, p in pairs)
    return {"decode_cpu_per_video_s": round(sum(d for d, _ in pairs) / len(pairs), 4),
            "pack_cpu_per_video_s": round(sum(p for _, p in pairs) / len(pairs), 4),
            "ratio": round(sum(d for d, _ in pairs) / sum(p for _, p in pairs), 3),
            "ratio_median_per_video": round(ratios[len(ratios) // 2], 3)}


def stage_profile(videos: list[Path], options: ExtractOptions) -> dict:
    """CPU seconds per video of each packing stage, measured in this process on up to 8 videos after one untimed
    pass over the first (imports and first calls, e.g. scipy's resampler, are not a stage's cost)."""
    from shards import media
    from shards.extract import _detect, detect_faces, load_frames
    from shards.faces import FaceDetector, crop_square, mouth_box, square_box
    from shards.format import encode_jpeg

    detector = FaceDetector()
    totals = dict.fromkeys(("decode", "detect", "detect_every_frame", "crop", "audio", "jpeg"), 0.0)
    jpeg_bytes = pixels = 0
    sample = videos[:8]
    for i, path in enumerate([sample[0], *sample]):
        t0 = time.process_time()
        with media.open_media(path) as container:
            info = media.probe(container)
            frames = load_frames(container, info, options, [])
            t1 = time.process_time()
            faces = detect_faces(frames.rgb, detector, options)
            t2 = time.process_time()
            for rgb in frames.rgb:
                _detect(rgb, detector, options.detect_side)
            t3 = time.process_time()
            crops = []
            for rgb, found in zip(frames.rgb, faces, strict=True):
                h, w = rgb.shape[:2]
                box = square_box(found[0], w, h, options.margin) if found else (0, 0, min(w, h), min(w, h))
                crops.append(crop_square(rgb, box, options.size))
                if found:
                    crops.append(crop_square(rgb, mouth_box(found[0], options.mouth_scale), options.mouth_size))
            t4 = time.process_time()
            if info.has_audio:
                media.decode_audio(container, frames.clip_start, frames.clip_end, options.audio_sample_rate)
            t5 = time.process_time()
            for crop in crops:
                data = encode_jpeg(crop, options.jpeg_quality)
                jpeg_bytes += len(data)
                pixels += crop.shape[0] * crop.shape[1]
            t6 = time.process_time()
        for name, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
            totals[name] += dt if i > 0 else 0.0
    detector.close()
    result = {k: round(v / len(sample), 4) for k, v in totals.items()}
    result["jpeg_bytes_per_pixel"] = round(jpeg_bytes / max(1, pixels), 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_pack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--limit", type=int, default=40, help="use the first N videos (sorted)")
    parser.add_argument("--config", type=Path, default=Path("configs/base.yaml"),
                        help="the training config whose clips are extracted (its data section)")
    parser.add_argument("--detect-stride", type=int, default=ExtractOptions().detect_stride)
    parser.add_argument("--no-follow", dest="follow", action="store_false",
                        help="detect every --detect-stride-th frame instead of once per window (shards.pack)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    videos = sorted(p for p in args.videos.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)[: args.limit]
    if not videos:
        parser.error(f"no videos in {args.videos}")
    options = dataclasses.replace(load_config(args.config).data.extract_options(), detect_stride=args.detect_stride,
                                  follow=args.follow)
    workers = max(1, args.workers)
    decode = run_decode(videos, options, workers, audio=False)
    decode_audio = run_decode(videos, options, workers, audio=True)
    packed = run_pack(videos, options, workers)

    def per_core(run: dict) -> dict:
        return {"cpu": round(1 / run["cpu_per_video_s"], 2), "steady_wall": round(1 / run["per_video_s"], 2),
                "wall": round(run["videos"] / run["wall_s"] / workers, 2)}

    report = {
        "videos": len(videos), "workers": workers, "cpu_count": os.cpu_count(), "options": options.content(),
        "videos_per_s_per_core": {"decode": per_core(decode), "decode_audio": per_core(decode_audio),
                                  "pack": per_core(packed)},
        "ratio_pack_vs_decode": round(decode["cpu_per_video_s"] / packed["cpu_per_video_s"], 3),
        "ratio_pack_vs_decode_audio": round(decode_audio["cpu_per_video_s"] / packed["cpu_per_video_s"], 3),
        "ratio_steady_wall": round(decode["per_video_s"] / packed["per_video_s"], 3),
        "ratio_wall": round(decode["wall_s"] / packed["wall_s"], 3),
        "paired": run_paired(videos, options, workers),
        "runs": {"decode": decode, "decode_audio": decode_audio, "pack": packed},
        "stage_seconds_per_video": stage_profile(videos, options),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
