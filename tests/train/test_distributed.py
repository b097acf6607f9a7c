"""The launch paths of GPU runs, exercised on the CPU: ``accelerate launch`` with the project's own accelerate
configs (the files docker/train.sh picks), overriding only the process count, machine rank and address.

DeepSpeed ZeRO-2 on 2 processes in fp32 and in bf16 (weights cast to bf16, as on a GPU), kill -9 and --resume,
its best checkpoint through ``python -m infer`` next to a DDP-trained one; DDP with bf16 autocast; the
multi-node config as two one-process "machines" on 127.0.0.1; train.sh's choice of launch config for 0, 1 and N
GPUs and USE_DEEPSPEED=1; a training step that never waits for the device; the torch.compile switch; and the
CPU dry run of ``python -m scripts.gpu_check`` and its ``--prepare``."""

from __future__ import annotations

import copy
import csv
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.batch import collate, prepare
from models.checkpoint import load_for_inference
from tests.train.conftest import ROOT, TINY_TEST_OVERRIDES, read_samples, run_cli, train_cmd
from train.parts import optimizer_kernel

# MLflow and plots are covered in test_training.py; every process runs the face pretraining stage
COMMON = ["log.mlflow=false", "log.plots=false", "train.face_pretrain.steps=2", "train.face_pretrain.batch_size=4"]
# fp32, two micro-batches per step and EMA: what the DeepSpeed config must get right to match DDP
FP32 = [*COMMON, "train.mixed_precision=no", "train.batch_size=2", "train.grad_accum=2", "train.ema=true",
        "train.ema_decay=0.5"]
STEPS = 6  # 2 epochs x 3 steps (TINY_TEST_OVERRIDES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, shards: dict, out: Path, extra: list[str], processes: int = 2, port: int | None = None,
           machine_rank: int | None = None) -> list:
    """``accelerate launch -m train`` with a project accelerate config; only counts and addresses change."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"configs/accelerate/{config}",
           "--num_processes", str(processes), "--main_process_port", str(port or free_port())]
    if machine_rank is not None:
        cmd += ["--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1"]
    return cmd + train_cmd(shards, out, *extra)[1:]


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def step_losses(out: Path) -> dict[int, float]:
    """step -> loss; after a kill -9 the re-run steps appear twice and the last entry counts."""
    return {row["step"]: row["loss"] for row in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())}


def val_scores(out: Path) -> dict[str, float]:
    with open(out / "val_predictions.csv") as f:
        return {row["video_name"]: float(row["score"]) for row in csv.DictReader(f)}


def trained(tiny_shards, tmp_path_factory, name: str, config: str, extra: list[str]) -> Path:
    out = tmp_path_factory.mktemp(name)
    run_cli(launch(config, tiny_shards, out, extra))
    return out


@pytest.fixture(scope="module")
def ds_fp32(tiny_shards, tmp_path_factory) -> Path:
    return trained(tiny_shards, tmp_path_factory, "ds_fp32", "deepspeed_zero2.yaml", FP32)


@pytest.fixture(scope="module")
def ds_bf16(tiny_shards, tmp_path_factory) -> Path:
    return trained(tiny_shards, tmp_path_factory, "ds_bf16", "deepspeed_zero2.yaml", COMMON)


@pytest.fixture(scope="module")
def ddp_fp32(tiny_shards, tmp_path_factory) -> Path:
    return trained(tiny_shards, tmp_path_factory, "ddp_fp32", "cpu_ddp.yaml", FP32)


@pytest.fixture(scope="module")
def ddp_bf16(tiny_shards, tmp_path_factory) -> Path:
    return trained(tiny_shards, tmp_path_factory, "ddp_bf16", "multi_gpu.yaml", COMMON)


def assert_healthy_two_process_run(out: Path, tiny_shards: dict) -> dict:
    m = metrics(out)
    assert m["world_size"] == 2
    assert len(m["param_fingerprints"]) == 2 and m["param_fingerprints"][0] == m["param_fingerprints"][1]
    assert len(m["history"]) == 2
    for epoch in m["history"]:  # every validation clip exactly once over both ranks
        assert epoch["n"] == epoch["n_evaluated"] == len(tiny_shards["val_keys"])
    assert sorted(val_scores(out)) == sorted(tiny_shards["val_keys"])
    losses = step_losses(out)
    assert sorted(losses) == list(range(1, STEPS + 1)) and np.isfinite(list(losses.values())).all()
    return m


@pytest.mark.slow
@pytest.mark.parametrize("run, precision, dtype", [("ds_fp32", "no", "torch.float32"),
                                                   ("ds_bf16", "bf16", "torch.bfloat16")])
def test_deepspeed_zero2_trains_on_two_processes(run, precision, dtype, request, tiny_shards):
    out = request.getfixturevalue(run)
    m = assert_healthy_two_process_run(out, tiny_shards)
    assert (m["distributed_type"], m["model_wrapper"]) == ("DEEPSPEED", "DeepSpeedEngine")
    assert (m["mixed_precision"], m["param_dtype"]) == (precision, dtype)
    state = out / "state" / (out / "state" / "latest").read_text().strip()
    partitions = sorted(p.name for p in state.rglob("*zero_pp_rank_*optim_states.pt"))
    assert len(partitions) == 2 and "rank_0" in partitions[0] and "rank_1" in partitions[1]  # save_state on both


@pytest.mark.slow
def test_deepspeed_fp32_trains_the_same_model_as_ddp(ds_fp32, ddp_fp32, tiny_shards):
    """Same batches, clipping, accumulation and lr schedule: ZeRO-2 is DDP with sharded optimizer state."""
    assert_healthy_two_process_run(ddp_fp32, tiny_shards)
    assert metrics(ddp_fp32)["model_wrapper"] == "DistributedDataParallel"
    ds, ddp = step_losses(ds_fp32), step_losses(ddp_fp32)
    for step in ds:
        assert ds[step] == pytest.approx(ddp[step], abs=1e-5), step
    ds_scores, ddp_scores = val_scores(ds_fp32), val_scores(ddp_fp32)
    for key in ds_scores:
        assert ds_scores[key] == pytest.approx(ddp_scores[key], abs=1e-5), key


@pytest.mark.slow
def test_deepspeed_resume_after_kill_9(ds_fp32, tiny_shards, tmp_path):
    out = tmp_path / "killed"
    extra = [*FP32, "train.save_every_steps=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    # its own session: kill -9 reaches the launcher and both ranks, as when a machine dies
    process = subprocess.Popen([str(c) for c in launch("deepspeed_zero2.yaml", tiny_shards, out, extra)], cwd=ROOT,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log, deadline = out / "train_log.jsonl", time.time() + 180
    while time.time() < deadline and process.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    killed = process.returncode == -signal.SIGKILL
    run_cli(launch("deepspeed_zero2.yaml", tiny_shards, out, [*extra, "--resume"]))
    expected, got = step_losses(ds_fp32), step_losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(expected[step], abs=1e-6), (step, killed)
    assert metrics(out)["final"]["log_loss"] == pytest.approx(metrics(ds_fp32)["final"]["log_loss"], abs=1e-6)
    assert killed, "the run finished before it could be killed; the comparison above still held"


@pytest.mark.slow
def test_deepspeed_checkpoint_scores_videos_like_a_ddp_one(ds_fp32, ddp_fp32, synthetic_dataset, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for video in sorted((synthetic_dataset / "test").glob("*.mp4"))[:3]:
        shutil.copy(video, videos)
    scores = {}
    for name, run in (("deepspeed", ds_fp32), ("ddp", ddp_fp32)):
        csv_path = tmp_path / f"{name}.csv"
        run_cli([sys.executable, "-m", "infer", "--videos", videos, "--checkpoint", run / "best", "--out", csv_path,
                 "--workers", "0"])
        with open(csv_path) as f:
            scores[name] = {row["video_name"]: float(row["score"]) for row in csv.DictReader(f)}
    assert sorted(scores["deepspeed"]) == sorted(p.name for p in videos.glob("*.mp4"))
    for video, score in scores["deepspeed"].items():
        assert 0.0 < score < 1.0 and score == pytest.approx(scores["ddp"][video], abs=1e-4), video


def test_ddp_bf16_autocast_learns_and_saves_a_loadable_checkpoint(ddp_bf16, tiny_shards):
    m = assert_healthy_two_process_run(ddp_bf16, tiny_shards)
    assert (m["model_wrapper"], m["mixed_precision"], m["param_dtype"]) == (
        "DistributedDataParallel", "bf16", "torch.float32")  # autocast: bf16 compute, float32 weights
    losses = [step_losses(ddp_bf16)[s] for s in range(1, STEPS + 1)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
    model, cfg = load_for_inference(ddp_bf16 / "best")
    samples = read_samples(tiny_shards["val"])
    with torch.no_grad():
        logits = model(collate([prepare(s, cfg.data) for s in samples]))["logit"]
    assert torch.isfinite(logits).all() and logits.std() > 0


def test_multi_node_config_matches_the_single_node_run(ddp_bf16, tiny_shards, tmp_path):
    """multi_node_example.yaml as two machines of one process each (machine_rank 0 and 1) on 127.0.0.1."""
    out, port = tmp_path / "multi_node", free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    machines = [subprocess.Popen([str(c) for c in launch("multi_node_example.yaml", tiny_shards, out, COMMON, port=port,
                                                         machine_rank=rank)],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for rank in (0, 1)]
    logs = [machine.communicate(timeout=240)[0] for machine in machines]
    assert [machine.returncode for machine in machines] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "[rank 1]" in logs[1] and "[rank 0]" in logs[0]
    assert metrics(out)["param_fingerprints"] == metrics(ddp_bf16)["param_fingerprints"]
    assert step_losses(out) == step_losses(ddp_bf16)


@pytest.mark.parametrize("gpus, deepspeed, config, processes", [
    ("0", "0", "cpu.yaml", 1),
    ("1", "0", "single_gpu.yaml", 1),
    ("4", "0", "multi_gpu.yaml", 4),
    ("4", "1", "deepspeed_zero2.yaml", 4),
    ("0", "1", "deepspeed_zero2.yaml", 1),  # DeepSpeed without a GPU: one CPU process, never 0
])
def test_train_sh_launch_choice(gpus, deepspeed, config, processes, tmp_path):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    from train.config import load_config
    from train.loop import parse_args

    data = tmp_path / "data"
    for folder in ("train", "val"):
        (data / folder).mkdir(parents=True)
    for labels in ("train_labels.csv", "validation_labels.csv"):
        (data / labels).write_text("video_name,target\n")
    env = {**os.environ, "PYTHON": sys.executable, "DRY_RUN": "1", "NUM_GPUS": gpus, "USE_DEEPSPEED": deepspeed}
    env.pop("ACCELERATE_CONFIG", None)
    result = subprocess.run(["docker/train.sh", str(data), str(tmp_path / "work")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("[train.sh] dry run: "))
    command = shlex.split(line.removeprefix("[train.sh] dry run: "))
    start, script = command.index("accelerate.commands.launch") + 1, command.index("train")
    assert command[script - 1] == "-m"  # accelerate launch -m train
    launch_args = command[start:script - 1]
    assert launch_args[:2] == ["--config_file", f"configs/accelerate/{config}"]
    launch_args[1] = str(ROOT / launch_args[1])
    # accelerate reads the file and the flags exactly as `accelerate launch` does (a wrong name or flag fails)
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args([*launch_args, "-m", "train"]))
    assert args.num_processes == processes
    assert bool(args.use_deepspeed) == (deepspeed == "1")
    assert bool(args.multi_gpu) == (config == "multi_gpu.yaml")
    assert defaults.use_cpu == (config == "cpu.yaml")
    assert args.mixed_precision == ("no" if config == "cpu.yaml" else "bf16")
    if deepspeed == "1":
        assert int(args.zero_stage) == 2
    train_args, overrides = parse_args(command[script + 1:])  # and python -m train takes the rest
    load_config(ROOT / train_args.config, overrides)


SYNC_PROBE = """
import collections, itertools, json, torch
from accelerate import Accelerator
from torch.utils._python_dispatch import TorchDispatchMode
from train.config import load_config
from models import create_model
from models.batch import example_batch
from train.loop import Window, train_step
from train.parts import EMA, optimizer_kernel

class Reads(TorchDispatchMode):  # the ops that make the host wait for the device
    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in ("_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal"):
            self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

cfg = load_config("configs/tiny.yaml", %r + ["train.grad_accum=2", "train.batch_size=2"])
accelerator = Accelerator(cpu=True, mixed_precision="bf16", gradient_accumulation_steps=2)
model = create_model(cfg)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, **optimizer_kernel(torch.device("cuda")))
model, optimizer = accelerator.prepare(model, optimizer)
ema, window = EMA(model, 0.9), Window()
batches = itertools.repeat(example_batch(cfg.data, 2))
with Reads() as reads:
    for step in range(3):
        loss, parts, grad_norm, data_time = train_step(model, model, optimizer, batches, accelerator, cfg.train)
        ema.update(model)
        window.add(step, 0, 1e-3, loss, parts, grad_norm, data_time)
print(json.dumps({"reads": dict(reads.calls), "loss": float(loss), "fused": optimizer.optimizer.defaults["fused"]}))
"""


def test_a_training_step_never_waits_for_the_device():
    """train_step + EMA + the log window, as on CUDA (fused AdamW), read nothing from the device: losses stay
    tensors until the log interval."""
    assert optimizer_kernel(torch.device("cuda")) == {"fused": True}
    result = run_cli([sys.executable, "-c", SYNC_PROBE % [o for o in TINY_TEST_OVERRIDES]])
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["fused"] is True and np.isfinite(probe["loss"])
    assert probe["reads"] == {}


def test_cpu_optimizer_kernel_updates_bit_for_bit_like_torch_default():
    """On a CPU the multi-tensor AdamW is only faster: a run's weights stay those of torch's per-parameter loop."""
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 1))
    models = [reference, copy.deepcopy(reference)]
    optimizers = [torch.optim.AdamW(models[0].parameters(), lr=1e-3, weight_decay=0.05),
                  torch.optim.AdamW(models[1].parameters(), lr=1e-3, weight_decay=0.05,
                                    **optimizer_kernel(torch.device("cpu")))]
    assert optimizers[1].defaults["foreach"] is True
    for _ in range(5):
        x = torch.randn(4, 3, 8, 8)
        for model, optimizer in zip(models, optimizers, strict=True):
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True))


@pytest.mark.slow
def test_compile_switch_trains_like_eager(tiny_shards, tmp_path):
    """train.compile traces the model with TorchDynamo + AOTAutograd (the aot_eager backend: inductor's code
    generation takes minutes on 2 cores) and must train the same model."""
    extra = [*COMMON, "train.epochs=1", "train.steps_per_epoch=2", "train.log_every_steps=1"]
    run_cli(train_cmd(tiny_shards, tmp_path / "eager", *extra))
    run_cli(train_cmd(tiny_shards, tmp_path / "compiled", *extra, "train.compile=true",
                      "train.compile_backend=aot_eager"))
    eager, compiled = step_losses(tmp_path / "eager"), step_losses(tmp_path / "compiled")
    assert sorted(compiled) == [1, 2]
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], abs=1e-5)
    assert val_scores(tmp_path / "compiled") == pytest.approx(val_scores(tmp_path / "eager"), abs=1e-5)
    load_for_inference(tmp_path / "compiled" / "best")  # same state_dict keys as an eager checkpoint


@pytest.mark.slow
def test_gpu_check_prepare_packs_with_the_overridden_clip_options(tmp_path):
    """--prepare (the CPU half of `make gpu-check`) packs what the overridden config trains on."""
    shards = tmp_path / "shards"
    run_cli([sys.executable, "-m", "scripts.gpu_check", "--prepare", "--config", "configs/tiny.yaml", "--shards", shards,
             "--videos", "6", "--set", "data.margin=0.35", "--set", "data.window_frames=4"], timeout=300)
    for split in ("train", "val"):
        with tarfile.open(sorted((shards / split).glob("*.tar"))[0]) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(".json"))
            meta = json.loads(tar.extractfile(member).read())
        assert (meta["margin"], meta["window_frames"]) == (0.35, 4)


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu(tiny_shards, tmp_path):
    """`make gpu-check`'s script end to end on the CPU: three launch paths, inference, one JSON with every field."""
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "train").symlink_to(tiny_shards["train"])
    (shards / "val").symlink_to(tiny_shards["val"])
    shapes = [o for o in TINY_TEST_OVERRIDES if o.split("=")[0].split(".")[0] in ("data", "model")
              and not o.startswith("data.workers")]
    out = tmp_path / "check" / "gpu_check.json"
    sets = [arg for o in [*shapes, "train.batch_size=4"] for arg in ("--set", o)]
    result = run_cli([sys.executable, "-m", "scripts.gpu_check", "--device", "cpu", "--steps", "3", "--config",
                      "configs/tiny.yaml", "--shards", shards, "--out", out, "--workers", "1", "--infer-iters", "2",
                      "--run-timeout", "300", *sets], timeout=400)
    report = json.loads(out.read_text())
    assert json.loads(result.stdout) == report
    assert report["all_runs_ok"] and report["machine"]["device"] == "cpu" and report["peak_tflops"] > 0
    expected = {"single": ("NO", "AVTransformer", "torch.float32"),
                "ddp": ("MULTI_CPU", "DistributedDataParallel", "torch.float32"),
                "deepspeed": ("DEEPSPEED", "DeepSpeedEngine", "torch.bfloat16")}
    for mode, (kind, wrapper, dtype) in expected.items():
        run = report["runs"][mode]
        assert (run["distributed_type"], run["model_wrapper"], run["param_dtype"]) == (kind, wrapper, dtype)
        assert run["mixed_precision"] == "bf16" and run["steps"] == 3 and run["timed_steps"] >= 1
        for field in ("clips_per_s", "frames_per_s", "peak_memory_gib", "mfu", "step_seconds"):
            assert run[field] > 0, (mode, field)
        assert 0 <= run["data_wait_frac"] < 1 and isinstance(run["loss_falling"], bool)
        assert run["frames_per_s"] == pytest.approx(run["clips_per_s"] * 4)
        assert run["val_n_evaluated"] == len(tiny_shards["val_keys"])
    assert report["macs_per_clip"] > 0
    for precision in ("bf16", "fp32"):
        assert report["inference"][precision]["clips_per_s"] > 0


def test_gpu_check_refuses_missing_weights_before_any_run(tmp_path):
    """A weight file the config names but nobody fetched stops the check at once, with the fetch command."""
    missing = tmp_path / "weights" / "vit.safetensors"
    command = [sys.executable, "-m", "scripts.gpu_check", "--device", "cpu", "--config", "configs/tiny.yaml",
               "--shards", tmp_path / "no_shards", "--out", tmp_path / "check.json",
               "--set", f"model.visual_pretrained={missing}"]
    result = subprocess.run([str(a) for a in command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and not (tmp_path / "check.json").exists()
    assert str(missing) in result.stderr and "scripts.fetch_pretrained" in result.stderr
    assert "model.visual_pretrained=none" in result.stderr
