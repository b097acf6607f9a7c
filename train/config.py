"""Typed run configuration: dataclasses loaded from YAML, with command-line overrides, checked at start-up.

    cfg = load_config("configs/tiny.yaml", ["train.lr=3e-4", "--model.depth", "4"])

A YAML file holds the sections ``model``, ``data``, ``loss``, ``train``, ``log`` (all optional; missing keys keep
their defaults). ``model: seed_baseline`` is short for ``model: {name: seed_baseline}``. Unknown keys and values
of the wrong type raise :class:`ConfigError` naming the file (or ``command line``) and the valid keys.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

MAX_PARAMS = 200_000_000  # competition rule: one model of at most 200M parameters (as measured with thop)
AUDIO_SAMPLE_RATE = 16_000  # the shards' audio rate (contract)


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the fix."""


@dataclass
class ModelConfig:
    # Registry name (train.registry): av_transformer | seed_baseline.
    name: str = "av_transformer"
    # Visual encoder: any timm model, applied per frame with num_classes=0.
    visual_backbone: str = "vit_small_patch16_224"
    # Local file with ImageNet-1K weights for the visual backbone (random init when null; never downloads).
    visual_pretrained: str | None = None
    # Audio encoder: any timm model built with in_chans=1, applied to a log-Mel window per frame.
    audio_backbone: str = "resnet18"
    audio_pretrained: str | None = None
    n_mels: int = 64
    n_fft: int = 400  # 25 ms at 16 kHz
    hop_length: int = 160  # 10 ms
    # Audio token i: a window of this length centred on frame i's time (see the contract's timing).
    audio_window_seconds: float = 0.64
    dim: int = 384  # fusion transformer width
    depth: int = 4
    heads: int = 6
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    drop_path: float = 0.0  # stochastic depth inside the timm backbones (when they support it)
    sync_dim: int = 128
    sync_temperature: float = 0.07
    grad_checkpointing: bool = False
    # seed_baseline only: length of the audio crop/pad the spectrogram image is made from.
    baseline_audio_seconds: float = 10.0


@dataclass
class AugmentConfig:
    enabled: bool = True
    flip: float = 0.5
    jpeg: float = 0.5
    jpeg_quality: list[int] = field(default_factory=lambda: [40, 95])
    blur: float = 0.2
    noise: float = 0.2
    resize: float = 0.3  # down- then up-scaling (resolution loss)
    color: float = 0.5
    cutout: float = 0.3  # blank out one face part (eyes, nose or mouth band)
    audio_gain: float = 0.5
    audio_noise: float = 0.3
    band_limit: float = 0.3  # codec-like low-pass (telephone / low-bitrate bandwidths)
    temporal_crop: float = 0.5  # mask a random prefix/suffix of the clip (no leading-silence shortcut)
    min_keep: float = 0.5  # fraction of time steps a temporal crop keeps at least
    audio_jitter_ms: float = 10.0  # shift of the whole audio track against the frames


@dataclass
class DataConfig:
    # Extraction options the shards were packed with; inference extracts with the same values.
    frames: int = 16
    size: int = 224
    margin: float = 0.3
    max_clip_seconds: float = 10.0
    train_shards: str | None = None  # a folder of .tar shards (or --train-shards)
    val_shards: str | None = None
    workers: int = 4  # DataLoader workers per process
    shuffle_buffer: int = 256
    balance: bool = True  # sample both classes equally often in training
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class LossConfig:
    aux: float = 0.5  # audio-only and visual-only heads
    sync: float = 0.2  # InfoNCE of time-aligned audio/visual tokens on genuine clips
    token: float = 0.1  # per-time token logits (multiple-instance loss)


@dataclass
class TrainConfig:
    epochs: int = 10
    steps_per_epoch: int = 0  # optimizer steps per epoch; 0: one pass worth of clips (from the shard counts)
    batch_size: int = 16  # clips per process per micro-batch
    eval_batch_size: int = 32
    grad_accum: int = 1
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 3.0e-4
    backbone_lr_scale: float = 1.0  # lr multiplier of the pretrained encoders
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01  # cosine floor
    step_epochs: int = 5  # step schedule: multiply by step_gamma every step_epochs epochs
    step_gamma: float = 0.1
    grad_clip: float = 1.0  # 0 disables; under DeepSpeed it is written into the DeepSpeed config
    ema: bool = False
    ema_decay: float = 0.999
    seed: int = 0
    save_every_steps: int = 200  # full training state (for --resume); also saved at every epoch end
    stop_after_steps: int = 0  # stop (after saving the state) at this global step; 0: run all epochs
    log_every_steps: int = 10
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: the launcher's, else bf16 on GPU
    tf32: bool = True  # CUDA: TF32 tensor cores for the matmuls and convolutions that stay in float32
    compile: bool = False  # torch.compile the model in place (nn.Module.compile: checkpoints keep their keys)
    compile_backend: str = "inductor"  # torch.compile backend ("aot_eager": tracing without code generation)


@dataclass
class LogConfig:
    experiment: str = "avdeepfake"
    run_name: str | None = None  # default: the output folder's name
    mlflow: bool = True
    thop: bool = True  # log thop's parameter and MAC counts at start-up (rank 0)
    plots: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


# --- loading --------------------------------------------------------------------------------------------------
def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """The config in ``path`` (defaults when None) with ``overrides`` applied, type-checked."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (shipped: configs/tiny.yaml, base.yaml, "
                              "baseline.yaml)")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections {_field_names(Config)}")
    if isinstance(raw.get("model"), str):
        raw["model"] = {"name": raw["model"]}
    cfg = _build(Config, raw, source, prefix="")
    for key, value in parse_overrides(overrides or []):
        set_value(cfg, key, value, source="command line")
    validate(cfg, source)
    return cfg


def parse_overrides(args: list[str]) -> list[tuple[str, str]]:
    """``["train.lr=3e-4", "--model.depth", "4", "--log.mlflow=false"]`` -> [(key, text value), ...]."""
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            arg = arg[2:]
            if "=" not in arg:
                if i + 1 >= len(args):
                    raise ConfigError(f"command line: override --{arg} needs a value")
                pairs.append((arg, args[i + 1]))
                i += 2
                continue
        if "=" not in arg:
            raise ConfigError(f"command line: cannot read override {args[i]!r}; write section.key=value "
                              "or --section.key value")
        key, value = arg.split("=", 1)
        pairs.append((key, value))
        i += 1
    return pairs


def set_value(cfg: Config, dotted: str, text: str, source: str = "command line") -> None:
    """Set ``cfg.<dotted>`` from a command-line string, converted to the field's type."""
    node: Any = cfg
    parts = dotted.replace("-", "_").split(".")
    for depth, part in enumerate(parts):
        names = _field_names(type(node))
        if part not in names:
            where = ".".join(parts[:depth]) or "the top level"
            raise ConfigError(f"{source}: unknown key {dotted!r}; valid keys in {where}: {', '.join(names)}")
        if depth == len(parts) - 1:
            hint = _hints(type(node))[part]
            if dataclasses.is_dataclass(hint):
                raise ConfigError(f"{source}: {dotted!r} is a section; set one of its keys "
                                  f"({', '.join(_field_names(hint))})")
            where = f"{source}: {dotted}"
            try:
                value = _coerce(_parse_text(text), hint, where)
            except ConfigError:
                value = _coerce(text, hint, where)  # e.g. a name that YAML reads as a number
            setattr(node, part, value)
        else:
            node = getattr(node, part)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def flatten(cfg: Config) -> dict[str, Any]:
    """{"train.lr": 3e-4, ...} for experiment trackers."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value

    walk("", to_dict(cfg))
    return out


def validate(cfg: Config, source: str) -> None:
    """Checks across fields (types were checked while building)."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"{source}: {message}")

    need(cfg.data.frames >= 1 and cfg.data.size >= 16, "data.frames must be >= 1 and data.size >= 16")
    need(cfg.data.max_clip_seconds > 0, "data.max_clip_seconds must be > 0")
    need(cfg.model.dim % cfg.model.heads == 0, f"model.dim ({cfg.model.dim}) must be divisible by model.heads "
                                                 f"({cfg.model.heads})")
    need(cfg.train.batch_size >= 1 and cfg.train.eval_batch_size >= 1, "batch sizes must be >= 1")
    need(cfg.train.grad_accum >= 1, "train.grad_accum must be >= 1")
    need(cfg.train.epochs >= 1, "train.epochs must be >= 1")
    need(0.0 <= cfg.train.ema_decay < 1.0, "train.ema_decay must be in [0, 1)")
    need(len(cfg.train.betas) == 2, "train.betas needs two values")
    need(len(cfg.data.augment.jpeg_quality) == 2, "data.augment.jpeg_quality needs [low, high]")
    for name in ("visual_pretrained", "audio_pretrained"):
        file = getattr(cfg.model, name)
        need(file is None or Path(file).is_file(),
             f"model.{name} = {file!r} is not a file; give a local ImageNet-1K weight file or null")


# --- building and type checking -------------------------------------------------------------------------------
def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a mapping with keys {', '.join(_field_names(cls))}")
    names, hints = _field_names(cls), _hints(cls)
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise ConfigError(f"{source}: unknown key {prefix + unknown[0]!r} in {where}; valid keys: {', '.join(names)}")
    values = {}
    for key, value in raw.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value or {}, source, f"{prefix}{key}.")
        else:
            values[key] = _coerce(value, hint, f"{source}: {prefix}{key}")
    return cls(**values)


def _parse_text(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, Literal, list[T], X | None) or ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be null")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], where) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {hint}")
