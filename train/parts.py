"""The pieces a training run is built from: the accelerator (CPU, one GPU, DDP, DeepSpeed ZeRO-2), the optimizer
and learning-rate schedule, the EMA of the weights, and the few collectives the loop needs across ranks."""

from __future__ import annotations

import copy
import logging
import math
import os

import torch

from train.config import Config


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
    on the GPU, so the step never waits for the host); elsewhere the multi-tensor (foreach) one, whose updates are
    bit for bit those of torch's per-parameter default on a CPU at about two thirds of its time (small: 19 against
    30 ms a step here; the fused CPU kernel, 9 ms, rounds differently)."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """Weight decay on matrices only; pretrained encoders at lr * backbone_lr_scale, a face encoder trained by the
    face stage at that times face_pretrain.lr_scale (frozen parameters are left out); fused on CUDA."""
    t = cfg.train
    scales = dict.fromkeys(map(id, getattr(model, "backbone_parameters", list)()), t.backbone_lr_scale)
    if t.face_pretrain.steps:
        for p in model.face.net.parameters():
            scales[id(p)] = scales.get(id(p), 1.0) * t.face_pretrain.lr_scale
    groups: dict[tuple[float, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((scales.get(id(p), 1.0), p.ndim >= 2), []).append(p)
    param_groups = [{"params": ps, "lr": t.lr * scale, "weight_decay": t.weight_decay if decay else 0.0}
                    for (scale, decay), ps in sorted(groups.items())]
    kernel = optimizer_kernel(next(model.parameters()).device)
    if t.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=t.lr, betas=tuple(t.betas), **kernel)
    return torch.optim.AdamW(param_groups, lr=t.lr, betas=tuple(t.betas), **kernel)


def total_steps(cfg: Config, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: the length the lr schedule and the EMA's decay cap are measured against."""
    return max(1, cfg.train.epochs * steps_per_epoch)


def lr_factor(cfg: Config, steps_per_epoch: int):
    """Multiplier of the base lr at optimizer step ``step``: linear warmup, then cosine / step / constant."""
    t = cfg.train
    total = total_steps(cfg, steps_per_epoch)

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


EMA_START_SHARE = 0.01  # the most the initial weights may keep of the EMA at the end of a run


def ema_decay_for(decay: float, steps: int) -> float:
    """The EMA decay a run of ``steps`` optimizer steps (``total_steps``) uses: ``decay``, capped so that the weights
    the run started from keep at most 1% of the average at its end (``decay ** steps <= 0.01``). An average whose
    horizon outlasts the run keeps much of its untrained start: 0.999 over small's 1368 steps keeps 25% of it and
    scored the protocol's seen methods 0.70 instead of 0.88 (report/experiments.md)."""
    return min(decay, EMA_START_SHARE ** (1.0 / max(steps, 1)))


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
