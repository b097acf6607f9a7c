"""The prepared GPU check: train a config (default ``base``) in bf16 three ways through the real launch path
(``accelerate launch -m train`` with the project's accelerate configs): one GPU (``single_gpu.yaml``), DDP
(``multi_gpu.yaml``, one process) and DeepSpeed ZeRO-2 (``deepspeed_zero2.yaml``, one process); then time
model-only inference in bf16 and fp32. Writes one JSON file and prints it.

    # on a CPU machine with the project installed (packing needs the face detector and PyAV):
    python -m scripts.gpu_check --prepare              # synthetic videos -> runs/gpu_check/shards/{train,val}
    scripts/gpu_wheels.sh                              # the packages the GPU machine lacks -> .whl/
    # on the GPU machine (no network), with the repository, .whl/ and runs/gpu_check/shards copied over:
    make gpu-check                                     # -> runs/gpu_check/gpu_check.json
    # the CI dry run of the same script, on the CPU:
    python -m scripts.gpu_check --device cpu --steps 3 --config configs/tiny.yaml --shards DIR

Per training run: clips/s and frames/s (each epoch's first log window — loader start-up, warm-up — left out),
the main process's data-wait fraction (time blocked on the loader / step time), peak memory, MFU = 6 x thop MACs
per clip x clips/s / peak FLOP/s (forward + backward taken as 3 forwards), and whether the loss fell (mean of
the last quarter of the steps below the first quarter). The peak is the GPU's dense bf16 tensor-core rate from
``PEAK_TFLOPS`` (``--peak-tflops`` overrides it); on a CPU it is a measured bf16 matmul rate. Targets
(benchmarks, not tests): data wait < 10% of the step time, MFU >= 40%.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARDS = ROOT / "runs" / "gpu_check" / "shards"
DEFAULT_OUT = ROOT / "runs" / "gpu_check" / "gpu_check.json"
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s; the first matching name wins.
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "GH200": 989.0, "B200": 2250.0,
               "A100": 312.0, "L40S": 362.0, "L4": 121.0}
LAUNCH_CONFIGS = {"single": "single_gpu.yaml", "ddp": "multi_gpu.yaml", "deepspeed": "deepspeed_zero2.yaml"}
TARGETS = {"data_wait_frac_below": 0.10, "mfu_at_least": 0.40}
NEEDED_MODULES = ("torch", "accelerate", "transformers", "timm", "deepspeed", "webdataset", "thop", "av", "cv2",
                  "sklearn", "safetensors", "yaml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "base.yaml")
    parser.add_argument("--shards", type=Path, default=DEFAULT_SHARDS, help="folder holding train/ and val/ shards")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON file (run folders go beside it)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per training run")
    parser.add_argument("--modes", default="single,ddp,deepspeed", help="comma-separated: " + ",".join(LAUNCH_CONFIGS))
    parser.add_argument("--workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)),
                        help="DataLoader workers per process")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device (default: table / measured)")
    parser.add_argument("--run-timeout", type=int, default=150,
                        help="seconds one training run may take (3 runs + inference stay within 8 minutes)")
    parser.add_argument("--infer-iters", type=int, default=20, help="timed forward passes per precision")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override, repeatable (e.g. --set train.batch_size=32; data.* clip options also reach --prepare)")
    parser.add_argument("--prepare", action="store_true",
                        help="CPU machine: make synthetic videos and pack them into --shards with the config's options")
    parser.add_argument("--videos", type=int, default=20,
                        help="--prepare: synthetic videos (60%% train, 20%% val; throughput needs no more)")
    return parser.parse_args(argv)


# --- preparation (CPU machine) ----------------------------------------------------------------------------------
def prepare(args: argparse.Namespace) -> dict:
    """Synthetic videos packed with the config's extraction options into <shards>/{train,val}."""
    from competition import TRAIN, VAL, label_file, split_dir
    from train.config import load_config
    from train.data import pack_arguments

    data = args.shards.parent / "videos"
    workers = str(os.cpu_count() or 1)
    subprocess.run([sys.executable, "-m", "scripts.make_synthetic_dataset", "--out", str(data), "--videos",
                    str(args.videos), "--seed", "0", "--workers", workers], cwd=ROOT, check=True)
    for split in (TRAIN, VAL):
        subprocess.run([sys.executable, "-m", "shards.pack", "--videos", str(split_dir(data, split)), "--labels",
                        str(label_file(data, split)), "--out", str(args.shards / split), "--workers", workers,
                        *pack_arguments(load_config(args.config, args.overrides), split)], cwd=ROOT, check=True)
    shutil.rmtree(data)
    size = sum(p.stat().st_size for p in args.shards.rglob("*") if p.is_file())
    summary = {"shards": str(args.shards), "mib": round(size / 2**20, 1)}
    print(json.dumps(summary))
    return summary


# --- the machine ------------------------------------------------------------------------------------------------
def missing_modules() -> list[str]:
    import importlib.util

    return [name for name in NEEDED_MODULES if importlib.util.find_spec(name) is None]


def machine_info(device: str) -> dict:
    import importlib.metadata

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpu_count": os.cpu_count(), "device": device}
    for package in ("accelerate", "deepspeed", "timm", "transformers"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[package] = importlib.metadata.version(package)
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        info["gpu"], info["gpu_count"] = None, 0
    return info


def peak_tflops(args: argparse.Namespace, info: dict) -> tuple[float | None, str]:
    """The dense bf16 peak and where it came from."""
    if args.peak_tflops:
        return args.peak_tflops, "--peak-tflops"
    if args.device == "cuda":
        for name, tflops in PEAK_TFLOPS.items():
            if name in info["gpu"]:
                return tflops, f"table ({name}, dense bf16)"
        return None, f"unknown GPU {info['gpu']!r}: pass --peak-tflops"
    return measured_matmul_tflops(), "measured bf16 matmul on this CPU"


def measured_matmul_tflops(n: int = 2048, repeats: int = 5) -> float:
    """The best of a few bf16 matmuls: the CPU's achievable rate stands in for a data-sheet peak."""
    import torch

    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    best = math.inf
    for _ in range(repeats):
        tick = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - tick)
    return 2 * n**3 / best / 1e12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- training runs ----------------------------------------------------------------------------------------------
def launch_command(args: argparse.Namespace, mode: str, run_dir: Path) -> list[str]:
    log_every = max(1, min(20, args.steps // 10))
    overrides = ["train.epochs=1", f"train.steps_per_epoch={args.steps}", f"train.warmup_steps={args.steps // 10}",
                 "train.save_every_steps=0", f"train.log_every_steps={log_every}", f"data.workers={args.workers}",
                 "log.mlflow=false", "log.plots=false", "log.thop=true", *args.overrides]
    processes = [] if mode == "single" else ["--num_processes", "1"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            f"configs/accelerate/{LAUNCH_CONFIGS[mode]}", *processes, "--main_process_port", str(free_port()),
            "-m", "train", "--config", str(args.config), "--train-shards", str(args.shards / "train"),
            "--val-shards", str(args.shards / "val"), "--out", str(run_dir), *overrides]


def train_run(args: argparse.Namespace, mode: str, peak: float | None) -> dict:
    run_dir = args.out.parent / f"run_{mode}"
    shutil.rmtree(run_dir, ignore_errors=True)
    command = launch_command(args, mode, run_dir)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    tick = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.run_timeout)
        failure = None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr[-3000:]}"
    except subprocess.TimeoutExpired as error:
        failure = f"timed out after {args.run_timeout} s: {(error.stderr or b'')[-3000:]!r}"
    result = {"ok": failure is None, "wall_seconds": round(time.perf_counter() - tick, 1),
              "launch": " ".join(command[1:command.index("train")])}
    if failure is not None:
        return {**result, "error": failure}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    losses = [json.loads(line)["loss"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    speed, macs = metrics["throughput"], metrics["params"].get("macs_per_clip")
    quarter = max(1, len(losses) // 4)
    first, last = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    mfu = 6 * macs * speed["clips_per_s"] / (peak * 1e12) if macs and peak else None
    return {**result,
            "distributed_type": metrics["distributed_type"], "model_wrapper": metrics["model_wrapper"],
            "mixed_precision": metrics["mixed_precision"], "param_dtype": metrics["param_dtype"],
            "world_size": metrics["world_size"], "macs_per_clip": macs, "steps": len(losses), "timed_steps": speed["steps"],
            "step_seconds": speed["step_seconds"], "clips_per_s": speed["clips_per_s"],
            "frames_per_s": speed["frames_per_s"], "data_wait_frac": speed["data_wait_frac"],
            "peak_memory_gib": speed["peak_memory_gib"], "memory": speed["memory"], "mfu": mfu,
            "loss_first_quarter": first, "loss_last_quarter": last, "loss_falling": last < first,
            "val_auc": (metrics.get("final") or {}).get("auc"),
            "val_n_evaluated": (metrics.get("final") or {}).get("n_evaluated"),
            "meets_data_wait_target": speed["data_wait_frac"] < TARGETS["data_wait_frac_below"],
            "meets_mfu_target": None if mfu is None else mfu >= TARGETS["mfu_at_least"]}


# --- inference ------------------------------------------------------------------------------------------------
def inference_speed(args: argparse.Namespace) -> dict:
    """Model-only forward passes (no decoding, no data loading) on one batch of eval_batch_size clips."""
    import torch

    from models import create_model
    from models.batch import example_batch, to_device
    from train.config import load_config

    cfg = load_config(args.config, args.overrides)
    device = torch.device(args.device)
    if device.type == "cuda" and cfg.train.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = create_model(cfg, pretrained=False).to(device).eval()
    batch_size = cfg.train.eval_batch_size
    batch = to_device(example_batch(cfg.data, batch_size), device)
    results = {}
    for precision in ("bf16", "fp32"):
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        with torch.inference_mode(), autocast:
            for _ in range(3):
                model(batch)
            synchronize(device)
            tick = time.perf_counter()
            for _ in range(args.infer_iters):
                model(batch)
            synchronize(device)
            seconds = time.perf_counter() - tick
        clips_per_s = batch_size * args.infer_iters / seconds
        results[precision] = {"clips_per_s": clips_per_s, "frames_per_s": clips_per_s * cfg.data.frames,
                              "batch_size": batch_size, "iterations": args.infer_iters,
                              "tf32": bool(precision == "fp32" and device.type == "cuda" and cfg.train.tf32)}
    return results


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the check ------------------------------------------------------------------------------------------------
def check(args: argparse.Namespace) -> dict:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible; use --device cpu for a dry run")
    from train.config import ConfigError, check_pretrained, load_config

    try:  # one clear message now rather than the same failure in every training run
        check_pretrained(load_config(args.config, args.overrides), str(args.config))
    except ConfigError as error:
        raise SystemExit(f"gpu_check: {error} (throughput does not depend on the weights: "
                         "--set model.visual_pretrained=none --set model.mouth_pretrained=none)") from None
    for split in ("train", "val"):
        if not (args.shards / split).is_dir():
            raise SystemExit(f"gpu_check: {args.shards / split} is missing; pack shards on a CPU machine with "
                             "`python -m scripts.gpu_check --prepare` and copy them here")
    tick = time.perf_counter()
    info = machine_info(args.device)
    peak, peak_source = peak_tflops(args, info)
    report = {"machine": info, "config": str(args.config), "overrides": args.overrides, "steps": args.steps,
              "workers": args.workers, "peak_tflops": peak, "peak_source": peak_source, "targets": TARGETS,
              "runs": {}}
    for mode in args.modes.split(","):
        report["runs"][mode] = train_run(args, mode, peak)
        print(f"gpu_check: {mode}: {json.dumps(report['runs'][mode])}", file=sys.stderr, flush=True)
    report["macs_per_clip"] = next((r["macs_per_clip"] for r in report["runs"].values() if r["ok"]), None)
    report["inference"] = inference_speed(args)
    report["all_runs_ok"] = all(r["ok"] for r in report["runs"].values())
    report["wall_seconds"] = round(time.perf_counter() - tick, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.config, args.shards, args.out = args.config.resolve(), args.shards.resolve(), args.out.resolve()
    if args.prepare:
        prepare(args)
        return 0
    missing = missing_modules()
    if missing:
        print(f"gpu_check: missing Python packages {missing}; on a machine without network install the wheels made "
              "by scripts/gpu_wheels.sh (see README, GPU check)", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = check(args)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if report["all_runs_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
