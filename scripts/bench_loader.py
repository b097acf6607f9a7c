"""Training-loader throughput: how many augmented clips per second the real loader delivers (not a test; prints
JSON). A GPU step needs its batch from the loader in the time the step takes, so this number per worker says how
many loader workers (CPU cores) a GPU needs.

    python -m scripts.bench_loader --config configs/base.yaml --shards runs/gpu_check/shards/train [--workers 1]
        [--batches 20] [--set KEY=VALUE ...]

It iterates ``train.data.train_loader`` (read, JPEG decode, pseudo-fakes, augmentation, collate) with the config's
batch size. The first batch (worker start-up, shuffle buffer) is timed apart. ``clips_per_s_per_worker`` =
clips_per_s / workers (with 0 workers the main process does the work, counted as one). To compare with the GPU
check: a GPU that trains C clips/s needs about C / clips_per_s_per_worker workers, on cores of this speed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from evaluation.speed import machine_info
from train.config import load_config
from train.data import count_samples, shard_urls, train_loader


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--shards", type=Path, required=True, help="a folder of training shards")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batches", type=int, default=20, help="timed batches after the first")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, [*args.overrides, f"data.workers={args.workers}"])
    urls = shard_urls(args.shards, "train")
    batches = iter(train_loader(urls, cfg, epoch=0, rank=0, world_size=1, counts=count_samples(args.shards)))
    tick = time.perf_counter()
    next(batches)
    first = time.perf_counter() - tick
    tick = time.perf_counter()
    clips = sum(len(next(batches)["key"]) for _ in range(args.batches))
    seconds = time.perf_counter() - tick
    clips_per_s = clips / seconds
    frames = cfg.data.windows * cfg.data.window_frames
    print(json.dumps({
        "config": str(args.config), "overrides": args.overrides, "workers": args.workers,
        "batch_size": cfg.train.batch_size, "frames_per_clip": frames, "size": cfg.data.size,
        "mouth_size": cfg.data.mouth_size, "first_batch_s": round(first, 2), "timed_clips": clips,
        "clips_per_s": round(clips_per_s, 2), "frames_per_s": round(clips_per_s * frames, 1),
        "clips_per_s_per_worker": round(clips_per_s / max(1, args.workers), 2),
        "ms_per_clip_per_worker": round(1000 * max(1, args.workers) / clips_per_s, 1),
        "machine": machine_info()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
