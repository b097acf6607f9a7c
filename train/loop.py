"""Train a deepfake detector: one recipe for CPU, one GPU, multi-GPU DDP and DeepSpeed ZeRO-2.

    accelerate launch [--config_file configs/accelerate/<setup>.yaml] -m train --config configs/tiny.yaml \\
        --train-shards DIR --val-shards DIR --out DIR [--resume] [section.key=value | --section.key value ...]
    python -m train ...   (one process; `train/main.py` is the same command as a file path)

Writes into --out: config.yaml, train_log.jsonl (per-step loss), metrics.json (best/final validation metrics),
best/ (the epoch chosen by ``train.select``: model.safetensors + config.yaml + info.json; see models.checkpoint),
state/ (full state for --resume), plots/, and the MLflow store mlflow.db + mlartifacts/ (or MLFLOW_TRACKING_URI).

``setup`` builds a ``Job`` (accelerator, wrapped model, optimizer, schedule, EMA, tracker, shard lists) and the
``TrainerState`` (where the run is; restored by --resume); ``train_epochs`` is the loop.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from models import create_model
from models.batch import to_device
from models.checkpoint import save_best
from models.counting import check_size, thop_counts
from train import checkpoint
from train.checkpoint import TrainerState
from train.config import Config, ConfigError, TrainConfig, check_pretrained, dump_config, flatten, load_config
from train.data import (
    PACK_SPLITS,
    check_shards_match,
    count_samples,
    pack_arguments,
    shard_urls,
    steps_per_epoch,
    train_loader,
    validation_views,
)
from train.face_pretrain import freeze_if_fixed, pretrain_face
from train.parts import (
    EMA,
    build_optimizer,
    ema_decay_for,
    lr_factor,
    make_accelerator,
    parameter_fingerprints,
    setup_logging,
    sync_buffers,
    total_steps,
)
from train.tracking import make_tracker, save_plots
from train.validate import evaluate

log = logging.getLogger("train")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="YAML under configs/ (tiny, base, baseline)")
    parser.add_argument("--train-shards", type=Path, help="folder of training .tar shards (else data.train_shards)")
    parser.add_argument("--val-shards", type=Path, help="folder of validation .tar shards (else data.val_shards)")
    parser.add_argument("--out", type=Path, help="run folder (required to train)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/state/latest if it exists")
    parser.add_argument("--pack-args", nargs="?", const="train", choices=PACK_SPLITS, metavar="SPLIT",
                        help="print the `python -m shards.pack` options that make this config's clips for SPLIT "
                             "(train, the default, or val: score.time_views times the windows), and exit")
    args, overrides = parser.parse_known_args(argv)
    if args.out is None and args.pack_args is None:
        parser.error("--out is required")
    return args, overrides


@dataclass
class Job:
    """Everything a run trains with, built once by ``setup``. ``model`` is what the accelerator wrapped (DDP,
    DeepSpeed); ``unwrapped`` the plain module (loss, EMA, evaluation, checkpoints)."""

    cfg: Config
    out: Path
    accelerator: Any
    model: torch.nn.Module
    unwrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMA | None
    tracker: Any
    train_urls: list[str]
    val_urls: list[str]
    val_views: int  # time views per validation clip (train.data.validation_views)
    summary: dict  # sizes, code version, class counts, launch: grows into metrics.json

    @property
    def main_process(self) -> bool:
        return self.accelerator.is_main_process


def selection_score(metrics: dict) -> float:
    """Best checkpoint by AUC; by lowest log-loss when AUC is undefined (single-class validation)."""
    return metrics["auc"] if metrics.get("auc") is not None else -metrics["log_loss"]


def is_selected(metrics: dict, best: dict | None, rule: str) -> bool:
    """Whether this validation epoch's weights replace best/ under ``train.select``: every epoch with "last",
    a higher ``selection_score`` with "auc"."""
    return best is None or rule == "last" or selection_score(metrics) > selection_score(best)


def ema_decay(cfg: Config, spe: int, config_file: str) -> float:
    """train.ema_decay, capped for a run too short for it (train.parts.ema_decay_for), with a warning that says so."""
    total = total_steps(cfg, spe)
    decay = ema_decay_for(cfg.train.ema_decay, total)
    if decay < cfg.train.ema_decay:
        log.warning("%s: train.ema_decay=%s would leave %.0f%% of the EMA on the untrained start weights after %d "
                    "optimizer steps; using %.5f (set train.ema_decay to at most that, or train longer)",
                    config_file, cfg.train.ema_decay, 100 * cfg.train.ema_decay ** total, total, decay)
    return decay


def setup(argv: list[str] | None = None) -> tuple[Job, TrainerState]:
    """Config, accelerator, data, model, optimizer, tracker and (with --resume) the saved state."""
    args, overrides = parse_args(argv)
    cfg = load_config(args.config, overrides)
    check_pretrained(cfg, str(args.config))
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
    val_views = validation_views(val_urls, cfg)
    counts = count_samples(cfg.data.train_shards)
    if cfg.score.rule != "fused" and count_samples(cfg.data.val_shards).get(0, 0) < 2:
        raise ConfigError(f"{args.config}: score.rule={cfg.score.rule} standardises the outputs on the genuine "
                          f"validation clips, and {cfg.data.val_shards} holds fewer than 2; add genuine clips to "
                          "the validation set or set score.rule=fused")
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
    if cfg.train.channels_last and accelerator.state.deepspeed_plugin is not None:
        log.warning("train.channels_last is ignored under DeepSpeed: its engine reads parameters as contiguous "
                    "memory")
    elif cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)  # 4-D weights only; the rest stay as they are
    state = checkpoint.latest_state(out) if args.resume else None
    face_pretrain = None
    if cfg.train.face_pretrain.steps and state is None:
        face_pretrain = pretrain_face(model, train_urls, cfg, accelerator)
    freeze_if_fixed(model, cfg)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, spe))
    ema = EMA(model, ema_decay(cfg, spe, str(args.config))) if cfg.train.ema else None
    if cfg.train.compile:
        model.compile(backend=cfg.train.compile_backend)  # in place: state_dict keys and checkpoints unchanged
    # The scheduler is stepped by hand once per optimizer step (accelerate's wrapper steps it once per process).
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    unwrapped = accelerator.unwrap_model(model)

    trainer = TrainerState(steps_per_epoch=spe, face_pretrain=face_pretrain)
    if args.resume and state is None:
        log.warning("--resume: no saved state in %s; starting from scratch", checkpoint.state_root(out))
    if state is not None:
        trainer = checkpoint.load_state(accelerator, state)
        log.info("resumed from %s: epoch %d, step %d of the epoch, global step %d", state, trainer.epoch,
                 trainer.step_in_epoch, trainer.global_step)
        if trainer.steps_per_epoch != spe:
            raise ConfigError(f"{out}: the saved run had {trainer.steps_per_epoch} steps per epoch, this one "
                              f"{spe}; resume with the same config, shards and number of processes")

    version = checkpoint.code_version()
    tracker = make_tracker(cfg.log.mlflow and main_process, out, cfg.log.experiment, cfg.log.run_name or out.name,
                           run_id=trainer.mlflow_run_id)
    trainer.mlflow_run_id = tracker.run_id
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / "config.yaml")
        tracker.log_params({**flatten(cfg), "world_size": world, "steps_per_epoch": spe, "n_train": n_train,
                            **sizes})
        tracker.set_tags({"code_version": checkpoint.version_tag(version), "git_commit": str(version["git_commit"]),
                          "git_dirty": str(version["git_dirty"]), "source_sha256": version["source_sha256"],
                          "model": cfg.model.name, "config_file": str(args.config)})
        for row in (face_pretrain or {}).get("history", []):
            tracker.log_metrics({"face_pretrain/loss": row["loss"], "face_pretrain/accuracy": row["accuracy"]},
                                step=row["step"])

    summary = {"params": sizes, "code_version": version, "class_counts": counts, "val_views": val_views,
               "world_size": world, "ema_decay": ema.decay if ema is not None else None,
               "distributed_type": str(accelerator.distributed_type.value), "device": str(accelerator.device),
               "mixed_precision": accelerator.mixed_precision, "param_dtype": str(next(unwrapped.parameters()).dtype),
               "model_wrapper": type(model).__name__}
    if trainer.face_pretrain is not None:
        summary["face_pretrain"] = trainer.face_pretrain
    job = Job(cfg, out, accelerator, model, unwrapped, optimizer, scheduler, ema, tracker, train_urls, val_urls,
              val_views, summary)
    return job, trainer


def run(argv: list[str] | None = None) -> dict:
    """One training run (see the module doc); returns the summary written to metrics.json."""
    job, trainer = setup(argv)
    status = "FAILED"
    try:
        summary = train_epochs(job, trainer)
        status = "FINISHED" if not summary.get("stopped_early") else "KILLED"
    finally:
        if job.main_process:
            job.tracker.close(status)
    job.accelerator.wait_for_everyone()
    job.accelerator.end_training()
    return summary


def train_epochs(job: Job, trainer: TrainerState) -> dict:
    """Epochs from where ``trainer`` is: steps, periodic saves, validation, best checkpoint; returns the summary."""
    cfg, out, accelerator, model, unwrapped = job.cfg, job.out, job.accelerator, job.model, job.unwrapped
    optimizer, scheduler, ema, tracker, summary = job.optimizer, job.scheduler, job.ema, job.tracker, job.summary
    rank, world, main_process = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    t, spe = cfg.train, trainer.steps_per_epoch
    clips_per_step = t.batch_size * t.grad_accum * world
    step_log = open(out / "train_log.jsonl", "a") if main_process else None
    speed = {"warmup": {"steps": 0, "seconds": 0.0, "data_seconds": 0.0},
             "steady": {"steps": 0, "seconds": 0.0, "data_seconds": 0.0}}
    first_epoch = trainer.epoch + (1 if trainer.evaluated else 0)
    try:
        for epoch in range(first_epoch, t.epochs):
            start = trainer.step_in_epoch if epoch == trainer.epoch and not trainer.evaluated else 0
            trainer.epoch, trainer.step_in_epoch, trainer.evaluated = epoch, start, False
            model.train()
            batches = iter(train_loader(job.train_urls, cfg, epoch, rank, world, skip_batches=start * t.grad_accum,
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
                trainer.global_step += 1
                trainer.step_in_epoch += 1
                step = trainer.global_step
                window.add(step, epoch, lr, loss, parts, grad_norm, data_time)
                progress.update(1)
                if step % t.log_every_steps == 0 or trainer.step_in_epoch == spe:
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

            if validates_after(epoch, t):
                validate_epoch(job, trainer, epoch)
            trainer.evaluated = True
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


def validates_after(epoch: int, t: TrainConfig) -> bool:
    """Whether epoch ``epoch`` (0-based) ends with a validation: every ``train.eval_every_epochs``-th and the last."""
    return (epoch + 1) % t.eval_every_epochs == 0 or epoch + 1 == t.epochs


def validate_epoch(job: Job, trainer: TrainerState, epoch: int) -> None:
    """Validation at the end of ``epoch``: metrics logged, and ``best/`` written when ``train.select`` picks it."""
    cfg, out, accelerator, model, unwrapped = job.cfg, job.out, job.accelerator, job.model, job.unwrapped
    ema, tracker, summary, main_process = job.ema, job.tracker, job.summary, accelerator.is_main_process
    eval_model = ema.model if ema is not None else unwrapped
    sync_buffers(accelerator, eval_model)
    validation = evaluate(eval_model, cfg, job.val_urls, accelerator, job.val_views)
    metrics = validation.metrics
    record = {"epoch": epoch + 1, "global_step": trainer.global_step, **metrics}
    trainer.history.append(record)
    log.info("epoch %d validation: %s", epoch + 1, {k: round(v, 4) if isinstance(v, float) else v
                                                     for k, v in metrics.items() if k != "note"})
    if main_process:
        validation.write_predictions(out / "val_predictions.csv")
    tracker.log_metrics({f"val/{k}": v for k, v in metrics.items() if isinstance(v, int | float)}
                        | {"epoch": epoch + 1}, step=trainer.global_step)
    if is_selected(metrics, trainer.best, cfg.train.select):
        trainer.best = record
        state_dict = eval_model.state_dict() if ema is not None else accelerator.get_state_dict(model)
        if main_process:
            save_best(out / "best", state_dict, cfg, {
                "code_version": summary["code_version"], "metrics": metrics, "epoch": epoch + 1,
                "global_step": trainer.global_step, "params": summary["params"], "ema": ema is not None,
                "score": validation.rule.to_dict()})
            if cfg.log.plots:
                known = validation.labels >= 0
                for path in save_plots(validation.labels[known], validation.scores[known], out / "plots",
                                       f"validation, epoch {epoch + 1}"):
                    tracker.log_artifact(path, "plots")
            log.info("epoch %d (auc %s) saved to %s (train.select: %s)", epoch + 1, metrics.get("auc"),
                     out / "best", cfg.train.select)
        accelerator.wait_for_everyone()


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


def write_metrics_json(out: Path, trainer: TrainerState, summary: dict) -> dict:
    """<out>/metrics.json for scripts: best and final validation metrics, history, sizes, code version."""
    history = trainer.history
    summary = {**summary, "best": trainer.best, "final": history[-1] if history else None, "history": history,
               "global_step": trainer.global_step}
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, out / "metrics.json")
    return summary


def main(argv: list[str] | None = None) -> int:
    try:
        args, overrides = parse_args(argv)
        if args.pack_args is not None:
            print(" ".join(pack_arguments(load_config(args.config, overrides), args.pack_args)))
            return 0
        run(argv)
    except (ConfigError, FileNotFoundError) as error:
        logging.getLogger("train").error("%s", error)
        print(f"python -m train: error: {error}", file=sys.stderr)
        return 2
    return 0
