"""Speed: packing, training and inference throughput in one table, with the machine named."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from competition import find_videos
from evaluation.common import ROOT, DemoLayout, add_common_arguments, mlflow_run, write_json

log = logging.getLogger("evaluation.speed")

def machine_info() -> dict:
    """CPU model (from /proc/cpuinfo), core counts, GPUs (torch), for the speed table's caption."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else os.cpu_count(), "gpus": [], "python": platform.python_version(),
            "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def find_numbers(data, pattern: str, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a nested dict whose dotted key matches ``pattern`` (case-insensitive)."""
    out: dict[str, float] = {}
    regex = re.compile(pattern, re.IGNORECASE)
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(find_numbers(value, pattern, f"{prefix}{key}."))
    elif isinstance(data, int | float) and not isinstance(data, bool) and regex.search(prefix.rstrip(".")):
        out[prefix.rstrip(".")] = float(data)
    return out


THROUGHPUT = r"(per_s|per_sec|/s|_s$|throughput|per_core)"


def training_speed(run_dir: Path) -> dict[str, float]:
    """Throughput numbers a run recorded: its metrics.json, then its MLflow metrics (clips/s, samples/s...)."""
    numbers: dict[str, float] = {}
    path = run_dir / "metrics.json"
    if path.is_file():
        numbers.update(find_numbers(json.loads(path.read_text()), r"(clips|samples|videos|steps).*(per_s|/s|_s$)"))
    if not numbers:  # the median over the run's logging windows (the last window alone is noisy)
        history = mlflow_run(run_dir, history=(r".*(clips|samples|videos|steps)_?per_s(ec)?",)).get("history", {})
        numbers.update({f"{k} (median of {len(v)} windows)": float(np.median([x for _, x in v]))
                        for k, v in history.items() if v})
    return numbers


# --- python -m evaluation speed ---------------------------------------------------------------------------------
def command(args: argparse.Namespace) -> int:
    layout = DemoLayout(args.demo_dir)
    out = args.out or layout.eval / "speed.json"
    result = {"machine": machine_info(), "packing": packing_speed(args, layout),
              "training": {m: training_speed(layout.run(m)) for m in layout.models()},
              "inference": inference_speed(args, layout)}
    write_json(out, result)
    print(f"wrote {out}")
    return 0


def _bench_file(given: Path | None, default: Path) -> dict | None:
    path = given or default
    if path.is_file():
        return {"source": str(path), **summarise_bench(json.loads(path.read_text()))}
    return None


def summarise_bench(data: dict) -> dict:
    """The throughput numbers of a benchmark's JSON: scripts.bench_pack's per-core table flattened, else every
    numeric leaf whose name says it is a rate."""
    per_core = data.get("videos_per_s_per_core")
    if isinstance(per_core, dict):
        out = {f"{stage}_{how}_videos_per_s_per_core": v for stage, hows in per_core.items() if isinstance(hows, dict)
               for how, v in hows.items()}
        out.update({k: data[k] for k in ("ratio_pack_vs_decode", "videos", "workers") if k in data})
        return out
    return find_numbers(data, THROUGHPUT)


def packing_speed(args: argparse.Namespace, layout: DemoLayout) -> dict:
    """python -m scripts.bench_pack's JSON (given, cached in eval/, or run now on the first test videos)."""
    cached = layout.eval / "bench_pack.json"
    found = _bench_file(args.bench_pack, cached)
    if found:
        return found
    videos = _speed_videos(layout, args.speed_videos, layout.eval / "speed" / "videos")
    return _run_bench("bench_pack", ["--videos", videos, "--workers", args.workers, "--limit", args.speed_videos,
                                        "--config", args.config], cached)


def inference_speed(args: argparse.Namespace, layout: DemoLayout) -> dict:
    """python -m scripts.bench_infer's JSON (given, cached in eval/, or run now on the first test videos): end to end
    against decoding the same videos alone."""
    cached = layout.eval / "bench_infer.json"
    found = _bench_file(args.bench_infer, cached)
    if found:
        return found
    videos = _speed_videos(layout, args.speed_videos, layout.eval / "speed" / "videos")
    return _run_bench("bench_infer", ["--videos", videos, "--checkpoint", layout.run(args.model) / "best",
                                         "--workers", args.workers, "--limit", args.speed_videos], cached)


def _run_bench(script: str, arguments: list, cached: Path) -> dict:
    """Run a benchmark script, keep its JSON in ``cached`` and return its throughput numbers."""
    cmd = [sys.executable, "-m", f"scripts.{script}", *map(str, arguments)]
    log.info("$ %s", " ".join(cmd))
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-2000:]}")
    cached.write_text(result.stdout)
    return {"source": f"python -m scripts.{script} ({cached})", **summarise_bench(json.loads(result.stdout))}


def _speed_videos(layout: DemoLayout, count: int, folder: Path) -> Path:
    """A folder of symlinks to the first ``count`` test videos (the same ones for every timing)."""
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for video in find_videos(layout.data / "test")[:count]:
            (folder / video.name).symlink_to(video.resolve())
    return folder


def add_parser(sub) -> None:
    p = sub.add_parser("speed", help="packing, training and inference throughput with the machine")
    add_common_arguments(p)
    p.add_argument("--bench-pack", type=Path, help="python -m scripts.bench_pack output (default eval/bench_pack.json)")
    p.add_argument("--bench-infer", type=Path, help="python -m scripts.bench_infer output (default eval/bench_infer.json)")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.yaml", help="extraction options to pack with")
    p.add_argument("--model", default="tiny")
    p.add_argument("--speed-videos", type=int, default=16, help="test videos benchmarked when no benchmark file exists")
    p.set_defaults(func=command)
