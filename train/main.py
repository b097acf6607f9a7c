#!/usr/bin/env python
"""Train a deepfake detector: one recipe for CPU, one GPU, multi-GPU DDP and DeepSpeed ZeRO-2.

    accelerate launch [--config_file configs/accelerate/<setup>.yaml] train/main.py --config configs/tiny.yaml \\
        --train-shards DIR --val-shards DIR --out DIR [--resume] [section.key=value | --section.key value ...]
    python train/main.py ...   (one process)

Writes into --out: config.yaml, train_log.jsonl (per-step loss), metrics.json (best/final validation metrics),
best/ (model.safetensors + config.yaml + info.json; see train.checkpoint), state/ (full state for --resume),
plots/, and the MLflow store mlflow.db + mlartifacts/ (or MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python train/main.py` puts train/ first on sys.path; the repo root is needed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tqdm import tqdm

from train import checkpoint
from train.config import Config, ConfigError, dump_config, flatten, load_config
from train.data import (
    check_shards_match,
    count_samples,
    eval_loader,
    shard_urls,
    steps_per_epoch,
    to_device,
    train_loader,
)
from train.metrics import compute_metrics, sigmoid
from train.registry import check_size, create_model
from train.tracking import make_tracker, save_plots

log = logging.getLogger("train")


# --- command line ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="train/main.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="YAML under configs/ (tiny, base, baseline)")
    parser.add_argument("--train-shards", type=Path, help="folder of training .tar shards (else data.train_shards)")
    parser.add_argument("--val-shards", type=Path, help="folder of validation .tar shards (else data.val_shards)")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/state/latest if it exists")
    return parser.parse_known_args(argv)


# --- pieces ---------------------------------------------------------------------------------------------------
def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    precision = cfg.train.mixed_precision
    if precision == "auto":
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
        precision = None if launched else ("bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
                                           else "no")
    # Without cpu=True, torchrun/accelerate start independent single-process runs on a CPU-only machine (DDP
    # needs it); DeepSpeed must not get it, or accelerate silently falls back to plain CPU data parallelism.
    # DeepSpeed on the CPU needs the gloo backend named, else accelerate sees one process while DeepSpeed sees two.
    cuda = torch.cuda.is_available()
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    handlers = [InitProcessGroupKwargs(backend="gloo")] if deepspeed and not cuda else []
    accelerator = Accelerator(cpu=not cuda and not deepspeed, mixed_precision=precision,
                              gradient_accumulation_steps=cfg.train.grad_accum, kwargs_handlers=handlers)
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:  # our loader is not a prepared DataLoader: DeepSpeed cannot infer these
        ds = plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.train.batch_size
        ds["gradient_accumulation_steps"] = cfg.train.grad_accum
        ds["train_batch_size"] = cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes
        if ds.get("gradient_clipping", "auto") == "auto":
            ds["gradient_clipping"] = cfg.train.grad_clip
        if accelerator.mixed_precision == "bf16":
            # DeepSpeed casts parameters only; BatchNorm's running statistics must follow its bf16 weights. The
            # buffers a model lists in _keep_in_fp32_modules_strict (the STFT, pixel statistics) stay float32.
            ds.setdefault("data_types", {}).setdefault("buffer_dtype", "bf16")
    return accelerator


def setup_logging(rank: int) -> None:
    logging.basicConfig(level=logging.INFO, force=True,
                        format=f"[rank {rank}] %(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "PIL", "timm", "accelerate", "deepspeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def optimizer_kernel(device: torch.device) -> dict:
    """Adam(W) implementation options: on CUDA the fused kernel (one launch per step, and its step counter stays
    on the GPU, so the step never waits for the host); elsewhere torch's default."""
    return {"fused": True} if device.type == "cuda" else {}


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """Weight decay on matrices only; pretrained encoders at lr * backbone_lr_scale; fused on CUDA."""
    t = cfg.train
    backbone = {id(p) for p in getattr(model, "backbone_parameters", list)()}
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in backbone, p.ndim >= 2), []).append(p)
    param_groups = [{"params": ps, "lr": t.lr * (t.backbone_lr_scale if is_backbone else 1.0),
                     "weight_decay": t.weight_decay if decay else 0.0}
                    for (is_backbone, decay), ps in sorted(groups.items())]
    kernel = optimizer_kernel(next(model.parameters()).device)
    if t.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=t.lr, betas=tuple(t.betas), **kernel)
    return torch.optim.AdamW(param_groups, lr=t.lr, betas=tuple(t.betas), **kernel)


def lr_factor(cfg: Config, steps_per_epoch: int):
    """Multiplier of the base lr at optimizer step ``step``: linear warmup, then cosine / step / constant."""
    t = cfg.train
    total = max(1, t.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.schedule == "step":  # StepLR(step_size=step_epochs epochs, gamma)
            return t.step_gamma ** (step // max(1, t.step_epochs * steps_per_epoch))
        if t.schedule == "cosine":
            progress = min(1.0, (step - t.warmup_steps) / max(1, total - t.warmup_steps))
            return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


class EMA:
    """Exponential moving average of the weights (float32 copy); evaluated and saved instead of the raw ones."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        floats, lives = [], []
        for ema, live in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if ema.is_floating_point():
                floats.append(ema)
                lives.append(live.detach().float())
            else:
                ema.copy_(live)
        torch._foreach_lerp_(floats, lives, 1.0 - self.decay)  # one multi-tensor kernel, as timm's ModelEmaV3

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


def thop_counts(model: torch.nn.Module, cfg: Config) -> dict:
    """thop's parameter and MAC counts for one clip (on a CPU copy: thop leaves buffers on modules)."""
    import contextlib
    import io
    import warnings

    import thop

    from train.registry import example_batch

    clone = copy.deepcopy(model).float().cpu().eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        macs, params = thop.profile(clone, inputs=(example_batch(cfg, 1),), verbose=False)
    return {"params_thop": int(params), "macs_per_clip": int(macs)}


def gather_predictions(accelerator, local: list[tuple]) -> tuple[list[tuple], int]:
    """Every rank's (key, label, score, ...) rows on every rank, duplicates (same key) removed, sorted by key;
    and the number of rows before removing duplicates (equal to the unique count when each clip ran once)."""
    rows = local
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        parts: list = [None] * accelerator.num_processes
        dist.all_gather_object(parts, local)
        rows = [row for part in parts for row in part]
    unique = {}
    for row in rows:
        unique.setdefault(row[0], row)
    return [unique[k] for k in sorted(unique)], len(rows)


def sync_buffers(accelerator, model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank: each rank updates its own in training, and the
    evaluated and saved model must be one model."""
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def parameter_fingerprints(accelerator, model: torch.nn.Module) -> list[str]:
    """sha256 of every rank's parameters (all equal in a healthy data-parallel run)."""
    import hashlib

    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().numpy().tobytes())
    local = digest.hexdigest()[:16]
    if accelerator.num_processes == 1:
        return [local]
    import torch.distributed as dist

    everyone: list = [None] * accelerator.num_processes
    dist.all_gather_object(everyone, local)
    return everyone


@torch.no_grad()
def evaluate(model: torch.nn.Module, cfg: Config, urls: list[str], accelerator) -> tuple[dict, list[tuple]]:
    """Validation on the unwrapped model (no DDP collective inside the loop), then one gather of all ranks."""
    was_training = model.training
    model.eval()
    local = []
    for batch in tqdm(eval_loader(urls, cfg, accelerator.process_index, accelerator.num_processes),
                      desc="validate", unit="batch", leave=False, disable=not accelerator.is_main_process):
        batch = to_device(batch, accelerator.device)
        with accelerator.autocast():
            out = model(batch)
        heads = [out[k].float().cpu().numpy() if k in out else None for k in ("logit", "audio_logit", "visual_logit")]
        for i, key in enumerate(batch["key"]):
            local.append((key, int(batch["label"][i]), *(None if h is None else float(h[i]) for h in heads)))
    model.train(was_training)
    rows, n_evaluated = gather_predictions(accelerator, local)
    labelled = [r for r in rows if r[1] >= 0]
    if not labelled:
        raise ValueError("the validation shards have no labelled samples")
    labels = np.array([r[1] for r in labelled])
    metrics = compute_metrics(labels, sigmoid([r[2] for r in labelled]))
    metrics["n_evaluated"] = n_evaluated  # > n would mean some clips were scored on several ranks
    for index, head in ((3, "audio"), (4, "visual")):
        if labelled[0][index] is not None:
            head_metrics = compute_metrics(labels, sigmoid([r[index] for r in labelled]))
            metrics[f"{head}_auc"] = head_metrics["auc"]
    return metrics, rows


def selection_score(metrics: dict) -> float:
    """Best checkpoint by AUC; by lowest log-loss when AUC is undefined (single-class validation)."""
    return metrics["auc"] if metrics.get("auc") is not None else -metrics["log_loss"]


# --- the run --------------------------------------------------------------------------------------------------
def run(argv: list[str] | None = None) -> dict:
    args, overrides = parse_args(argv)
    cfg = load_config(args.config, overrides)
    if args.train_shards is not None:
        cfg.data.train_shards = str(args.train_shards)
    if args.val_shards is not None:
        cfg.data.val_shards = str(args.val_shards)
    out: Path = args.out

    accelerator = make_accelerator(cfg)
    rank, world, main_process = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    setup_logging(rank)
    log.info("%s, %d process(es), device %s, mixed precision %s", accelerator.distributed_type, world,
             accelerator.device, accelerator.mixed_precision)
    from accelerate.utils import set_seed

    set_seed(cfg.train.seed)

    train_urls, val_urls = shard_urls(cfg.data.train_shards, "train"), shard_urls(cfg.data.val_shards, "val")
    check_shards_match(train_urls, cfg, "train")
    check_shards_match(val_urls, cfg, "val")
    counts = count_samples(cfg.data.train_shards)
    n_train = sum(counts.values())
    spe = steps_per_epoch(cfg, n_train, world)
    log.info("train: %d clips %s in %d shards; val: %d shards; %d optimizer steps per epoch",
             n_train, counts, len(train_urls), len(val_urls), spe)

    model = create_model(cfg)
    n_params = check_size(model, str(args.config))
    sizes = {"params_true": n_params}
    if main_process and cfg.log.thop:
        sizes.update(thop_counts(model, cfg))
    log.info("model %s: %s", cfg.model.name, {k: f"{v / 1e6:.2f}M" if "params" in k else f"{v / 1e9:.2f}G"
                                                for k, v in sizes.items()})
    if accelerator.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed training shapes: pick the fastest convolution kernels once
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.train.tf32
    model.to(accelerator.device)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, spe))
    ema = EMA(model, cfg.train.ema_decay) if cfg.train.ema else None
    if cfg.train.compile:
        model.compile(backend=cfg.train.compile_backend)  # in place: state_dict keys and checkpoints unchanged
    # The scheduler is stepped by hand once per optimizer step (accelerate's wrapper steps it once per process).
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    unwrapped = accelerator.unwrap_model(model)

    trainer = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "evaluated": False, "best": None,
               "history": [], "mlflow_run_id": None, "steps_per_epoch": spe}
    state = checkpoint.latest_state(out) if args.resume else None
    if args.resume and state is None:
        log.warning("--resume: no saved state in %s; starting from scratch", checkpoint.state_root(out))
    if state is not None:
        trainer.update(checkpoint.load_state(accelerator, state))
        log.info("resumed from %s: epoch %d, step %d of the epoch, global step %d", state, trainer["epoch"],
                 trainer["step_in_epoch"], trainer["global_step"])
        if trainer["steps_per_epoch"] != spe:
            raise ConfigError(f"{out}: the saved run had {trainer['steps_per_epoch']} steps per epoch, this one "
                              f"{spe}; resume with the same config, shards and number of processes")

    version = checkpoint.code_version()
    tracker = make_tracker(cfg.log.mlflow and main_process, out, cfg.log.experiment, cfg.log.run_name or out.name,
                           run_id=trainer["mlflow_run_id"])
    trainer["mlflow_run_id"] = tracker.run_id
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / "config.yaml")
        tracker.log_params({**flatten(cfg), "world_size": world, "steps_per_epoch": spe, "n_train": n_train,
                            **sizes})
        tracker.set_tags({"code_version": checkpoint.version_tag(version), "git_commit": str(version["git_commit"]),
                          "git_dirty": str(version["git_dirty"]), "source_sha256": version["source_sha256"],
                          "model": cfg.model.name, "config_file": str(args.config)})

    summary = {"params": sizes, "code_version": version, "class_counts": counts, "world_size": world,
               "distributed_type": str(accelerator.distributed_type.value), "device": str(accelerator.device),
               "mixed_precision": accelerator.mixed_precision, "param_dtype": str(next(unwrapped.parameters()).dtype),
               "model_wrapper": type(model).__name__}
    status = "FAILED"
    try:
        summary = train_epochs(cfg, out, accelerator, model, unwrapped, optimizer, scheduler, ema, trainer, tracker,
                               train_urls, val_urls, spe, summary)
        status = "FINISHED" if not summary.get("stopped_early") else "KILLED"
    finally:
        if main_process:
            tracker.close(status)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def train_epochs(cfg, out, accelerator, model, unwrapped, optimizer, scheduler, ema, trainer, tracker, train_urls,
                 val_urls, spe, summary) -> dict:
    rank, world, main_process = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    t = cfg.train
    clips_per_step = t.batch_size * t.grad_accum * world
    step_log = open(out / "train_log.jsonl", "a") if main_process else None
    speed = {"warmup": {"steps": 0, "seconds": 0.0, "data_seconds": 0.0},
             "steady": {"steps": 0, "seconds": 0.0, "data_seconds": 0.0}}
    first_epoch = trainer["epoch"] + (1 if trainer["evaluated"] else 0)
    try:
        for epoch in range(first_epoch, t.epochs):
            start = trainer["step_in_epoch"] if epoch == trainer["epoch"] and not trainer["evaluated"] else 0
            trainer.update(epoch=epoch, step_in_epoch=start, evaluated=False)
            model.train()
            batches = iter(train_loader(train_urls, cfg, epoch, rank, world, skip_batches=start * t.grad_accum,
                                        counts=summary["class_counts"]))
            progress = tqdm(total=spe, initial=start, desc=f"epoch {epoch + 1}/{t.epochs}", unit="step",
                            disable=not main_process)
            window, warmup = Window(), True  # an epoch's first window starts the loader workers (and compiles)
            for _ in range(start, spe):
                lr = scheduler.get_last_lr()[0]  # the lr this step uses
                loss, parts, grad_norm, data_time = train_step(model, unwrapped, optimizer, batches, accelerator, t)
                scheduler.step()
                if ema is not None:
                    ema.update(unwrapped)
                trainer["global_step"] += 1
                trainer["step_in_epoch"] += 1
                step = trainer["global_step"]
                window.add(step, epoch, lr, loss, parts, grad_norm, data_time)
                progress.update(1)
                if step % t.log_every_steps == 0 or trainer["step_in_epoch"] == spe:
                    mean_loss = log_window(window, accelerator, tracker, step_log, clips_per_step,
                                           speed["warmup" if warmup else "steady"])
                    progress.set_postfix(loss=f"{mean_loss:.4f}")
                    window, warmup = Window(), False
                stop = t.stop_after_steps > 0 and step >= t.stop_after_steps
                if (t.save_every_steps > 0 and step % t.save_every_steps == 0) or stop:
                    paused = time.perf_counter()
                    window.write_rows(step_log)  # the step log covers the saved state (kill -9 after it)
                    checkpoint.save_state(accelerator, out, trainer)
                    window.start += time.perf_counter() - paused
                if stop:
                    log.info("stopping after global step %d (train.stop_after_steps); --resume continues", step)
                    progress.close()
                    return {**summary, "stopped_early": True, "global_step": step,
                            "throughput": throughput(speed, clips_per_step, cfg.data.frames, accelerator.device)}
            progress.close()
            del batches

            eval_model = ema.model if ema is not None else unwrapped
            sync_buffers(accelerator, eval_model)
            metrics, rows = evaluate(eval_model, cfg, val_urls, accelerator)
            record = {"epoch": epoch + 1, "global_step": trainer["global_step"], **metrics}
            trainer["history"].append(record)
            log.info("epoch %d validation: %s", epoch + 1, {k: round(v, 4) if isinstance(v, float) else v
                                                             for k, v in metrics.items() if k != "note"})
            if main_process:
                write_predictions(out / "val_predictions.csv", rows)
            tracker.log_metrics({f"val/{k}": v for k, v in metrics.items() if isinstance(v, int | float)}
                                | {"epoch": epoch + 1}, step=trainer["global_step"])
            best = trainer["best"]
            if best is None or selection_score(metrics) > selection_score(best):
                trainer["best"] = record
                state_dict = eval_model.state_dict() if ema is not None else accelerator.get_state_dict(model)
                if main_process:
                    checkpoint.save_best(out / "best", state_dict, cfg, {
                        "code_version": summary["code_version"], "metrics": metrics, "epoch": epoch + 1,
                        "global_step": trainer["global_step"], "params": summary["params"], "ema": ema is not None})
                    if cfg.log.plots:
                        scores = sigmoid([r[2] for r in rows if r[1] >= 0])
                        labels = np.array([r[1] for r in rows if r[1] >= 0])
                        for path in save_plots(labels, scores, out / "plots", f"validation, epoch {epoch + 1}"):
                            tracker.log_artifact(path, "plots")
                    log.info("new best (auc %s) saved to %s", metrics.get("auc"), out / "best")
                accelerator.wait_for_everyone()
            trainer["evaluated"] = True
            checkpoint.save_state(accelerator, out, trainer)
            summary["throughput"] = throughput(speed, clips_per_step, cfg.data.frames, accelerator.device)
            if main_process:
                write_metrics_json(out, trainer, summary)
    finally:
        if step_log is not None:
            step_log.close()

    sync_buffers(accelerator, unwrapped)
    fingerprints = parameter_fingerprints(accelerator, unwrapped)
    if len(set(fingerprints)) > 1:
        log.error("parameters differ between ranks: %s", fingerprints)
    summary["param_fingerprints"] = fingerprints
    if main_process:
        summary = write_metrics_json(out, trainer, summary)
        if (out / "best").is_dir():
            tracker.log_artifacts(out / "best", "best")
        tracker.log_artifact(out / "metrics.json")
        tracker.log_artifact(out / "config.yaml")
    return summary


def train_step(model, unwrapped, optimizer, batches, accelerator, t) -> tuple[torch.Tensor, dict, object, float]:
    """One optimizer step over grad_accum micro-batches. Returns the mean loss and mean loss parts as tensors on
    the device (reading them would wait for the GPU), the grad norm (None, a float or a tensor) and the time spent
    waiting for batches."""
    total, parts_sum, grad_norm, data_time = None, {}, None, 0.0
    for _ in range(t.grad_accum):
        tick = time.perf_counter()
        batch = to_device(next(batches), accelerator.device)
        data_time += time.perf_counter() - tick
        with accelerator.accumulate(model):
            with accelerator.autocast():
                out = model(batch)
            loss, parts = unwrapped.loss(out, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and t.grad_clip > 0:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        share = loss.detach().float() / t.grad_accum
        total = share if total is None else total + share
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v.detach().float() / t.grad_accum
    return total, parts_sum, grad_norm, data_time


class Window:
    """The steps since the last log line. Their losses stay on the device until ``log_window`` (or a save) reads
    them: one host-device synchronisation per window instead of one per step."""

    def __init__(self):
        self.start = time.perf_counter()
        self.rows: list[tuple[int, int, float]] = []  # (step, epoch, lr)
        self.losses: list[torch.Tensor] = []
        self.parts: dict[str, torch.Tensor] = {}
        self.grad_norm = None
        self.data_seconds = 0.0
        self.written = 0  # rows already in the step log

    def add(self, step: int, epoch: int, lr: float, loss: torch.Tensor, parts: dict, grad_norm,
            data_time: float) -> None:
        self.rows.append((step, epoch, lr))
        self.losses.append(loss)
        for k, v in parts.items():
            self.parts[k] = self.parts[k] + v if k in self.parts else v
        self.grad_norm = grad_norm if grad_norm is not None else self.grad_norm
        self.data_seconds += data_time

    def write_rows(self, step_log) -> None:
        """Append the not yet written steps to train_log.jsonl (main process; others pass None)."""
        if step_log is None or self.written == len(self.rows):
            return
        values = torch.stack(self.losses[self.written:]).tolist()
        for (step, epoch, lr), loss in zip(self.rows[self.written:], values, strict=True):
            step_log.write(json.dumps({"step": step, "epoch": epoch, "loss": loss, "lr": lr}) + "\n")
        step_log.flush()
        self.written = len(self.rows)


def log_window(window: Window, accelerator, tracker, step_log, clips_per_step: int, speed: dict) -> float:
    """The window's step log lines, its losses averaged over the window and all ranks (a collective every rank
    reaches at the same step) and its speed; adds its steps and times to ``speed``. Returns the mean loss."""
    n = len(window.losses)
    local = torch.stack([torch.stack(window.losses).sum(), *window.parts.values()]) / n
    values = accelerator.reduce(local, reduction="mean").tolist()
    window.write_rows(step_log)
    elapsed = max(time.perf_counter() - window.start, 1e-9)
    speed["steps"] += n
    speed["seconds"] += elapsed
    speed["data_seconds"] += window.data_seconds
    step, _, lr = window.rows[-1]
    metrics = {"train/loss": values[0], "train/lr": lr, "train/clips_per_s": clips_per_step * n / elapsed,
               "train/data_time_frac": window.data_seconds / elapsed}
    metrics |= {f"train/loss_{k}": v for k, v in zip(window.parts, values[1:], strict=True)}
    if window.grad_norm is not None:
        metrics["train/grad_norm"] = float(window.grad_norm)
    tracker.log_metrics(metrics, step=step)
    return values[0]


def throughput(speed: dict, clips_per_step: int, frames: int, device: torch.device) -> dict:
    """Training speed of this run (all ranks' clips), measured on the host between the window synchronisations.

    Each epoch's first log window (loader start-up, compilation, allocator warm-up) is left out when later
    windows exist. The data wait is the main process's time blocked on the loader; the peak memory is this
    process's (CUDA: max allocated by tensors; CPU: max resident set size)."""
    bucket = speed["steady"] if speed["steady"]["steps"] else speed["warmup"]
    seconds = max(bucket["seconds"], 1e-9)
    clips_per_s = clips_per_step * bucket["steps"] / seconds
    if device.type == "cuda":
        peak, memory = torch.cuda.max_memory_allocated(device) / 2**30, "cuda_max_allocated"
    else:
        import resource

        peak, memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "cpu_max_rss"
    return {"steps": bucket["steps"], "warmup_excluded": bool(speed["steady"]["steps"]),
            "step_seconds": seconds / max(1, bucket["steps"]), "clips_per_s": clips_per_s,
            "frames_per_s": clips_per_s * frames, "data_wait_frac": bucket["data_seconds"] / seconds,
            "peak_memory_gib": peak, "memory": memory}


def write_predictions(path: Path, rows: list[tuple]) -> None:
    """The latest validation scores: key, label, score and the audio-only / visual-only scores."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["video_name", "label", "score", "audio_score", "visual_score"])
        for key, label, *logits in rows:
            writer.writerow([key, label, *("" if x is None else f"{float(sigmoid(x)):.6f}" for x in logits)])


def write_metrics_json(out: Path, trainer: dict, summary: dict) -> dict:
    """<out>/metrics.json for scripts: best and final validation metrics, history, sizes, code version."""
    history = trainer["history"]
    summary = {**summary, "best": trainer["best"], "final": history[-1] if history else None, "history": history,
               "global_step": trainer["global_step"]}
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, out / "metrics.json")
    return summary


def main(argv: list[str] | None = None) -> int:
    try:
        run(argv)
    except (ConfigError, FileNotFoundError) as error:
        logging.getLogger("train").error("%s", error)
        print(f"train/main.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
