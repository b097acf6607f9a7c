"""Inference throughput end to end against decoding the same videos alone (not a test; prints JSON).

    python -m scripts.bench_infer --videos DIR --checkpoint RUN/best [--workers N] [--limit 40] [--device cpu]

decode : ``scripts.bench_pack``'s decode-only run (the clip's frames and audio, the code path extraction
         uses) in N spawned worker processes, start-up included;
end_to_end : ``infer.predict.predict`` on the same videos: N extraction workers (decode, face detection,
         crops, audio) feeding the model in batches, start-up included.
``ratio`` = end-to-end / decode videos per second; the target is >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from competition import find_videos
from evaluation.speed import machine_info
from infer.predict import Predictor, predict
from scripts.bench_pack import run_decode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    videos = find_videos(args.videos)[: args.limit]
    if not videos:
        parser.error(f"no .mp4 in {args.videos}")
    predictor = Predictor(args.checkpoint, device=args.device)
    options = predictor.extraction_options()

    decode = run_decode(videos, options, args.workers, audio=True)
    started = time.perf_counter()
    predictions = predict(videos, predictor, args.batch_size, args.workers)
    e2e_seconds = time.perf_counter() - started
    decode_rate = len(videos) / decode["wall_s"]
    e2e_rate = len(videos) / e2e_seconds
    print(json.dumps({
        "machine": machine_info(), "videos": len(videos), "workers": args.workers, "device": args.device,
        "model": predictor.spec.model.name, "frames": options.frames, "size": options.size,
        "decode_videos_per_s": round(decode_rate, 3), "end_to_end_videos_per_s": round(e2e_rate, 3),
        "end_to_end_videos_per_s_per_core": round(e2e_rate / args.workers, 3),
        "ratio": round(e2e_rate / decode_rate, 3), "target_ratio": 0.8,
        "failed": sum(p.status == "failed" for p in predictions), "decode": decode,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
