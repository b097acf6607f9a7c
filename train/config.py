"""Typed run configuration: dataclasses loaded from YAML, with command-line overrides, checked at start-up.

    cfg = load_config("configs/tiny.yaml", ["train.lr=3e-4", "--model.depth", "4"])

A YAML file holds the sections ``model``, ``data``, ``loss``, ``train``, ``log`` (all optional; missing keys keep
their defaults). ``model: seed_baseline`` is short for ``model: {name: seed_baseline}``. A run's ``Config`` is the
model library's ``ModelSpec`` (model, data, loss: ``models.config``) plus the ``train`` and ``log`` sections; its
``data`` section adds the loader and augmentation options to the clip options. Unknown keys and values of the
wrong type raise :class:`ConfigError` naming the file (or ``command line``) and the valid keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from models.config import (
    ConfigError,
    InputConfig,
    ModelSpec,
    build_section,
    coerce,
    dump_yaml,
    field_names,
    field_types,
    parse_text,
)


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
    channel_eq: float = 0.0  # a recording channel's colour: a random low-frequency shelf and spectral tilt
    channel_noise: float = 0.0  # a stationary noise floor shaped like the clip's own long-term spectrum
    temporal_crop: float = 0.5  # mask a random prefix/suffix of the clip (no leading-silence shortcut)
    min_keep: float = 0.5  # fraction of time steps a temporal crop keeps at least
    audio_jitter_ms: float = 10.0  # shift of the whole audio track against the frames
    self_blend: float = 0.0  # chance a genuine clip becomes a self-blended face (a visual fake; train.augment)
    self_vocode: float = 0.0  # chance a genuine clip's audio is re-synthesised by a vocoder (an audio fake)
    mouth_hold: float = 0.0  # chance a genuine clip's mouth is held for 2-3 frames at a time (a visual fake)


@dataclass
class DataConfig(InputConfig):
    # The clip options (frames, size, margin, max_clip_seconds: models.config.InputConfig) come first; these are
    # the training data's.
    train_shards: str | None = None  # a folder of .tar shards (or --train-shards)
    val_shards: str | None = None
    workers: int = 4  # DataLoader workers per process
    shuffle_buffer: int = 256
    balance: bool = True  # sample both classes equally often in training
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class FacePretrainConfig:
    # A first stage of a run (train.face_pretrain): the face encoder alone, with a temporary linear head, learns
    # genuine against self-blended faces on frame pairs of the genuine training clips, each pair blended with its
    # own draw. 0 steps: off. Skipped when --resume finds a saved state.
    steps: int = 0
    batch_size: int = 32  # frame pairs per step
    blend: float = 0.5  # share of the pairs that are self-blended
    pairs_per_clip: int = 4  # pairs taken from one clip (consecutive frames of a window)
    # AdamW, constant. At 1e-3 small's stage stayed at chance for 500-1000 steps, with seed 2 for all 3000 (accuracy
    # 0.49); at 3e-4 it left chance within 300-500 steps with seeds 0, 1 and 2 (report/experiments.md).
    lr: float = 3.0e-4
    weight_decay: float = 0.05
    log_every_steps: int = 100
    # Also the training fakes whose category (the shards' meta) says the video is manipulated, as positives that
    # are never blended, and the faces of the audio-only fakes as genuine ones. Not self-supervised any more: the
    # mouth-only fakes, whose frames look genuine, are positives too. One protocol run of small: not adopted
    # (report/experiments.md).
    visual_fakes: bool = False
    # The face encoder's lr multiplier (times backbone_lr_scale) in the main training after the stage; 0 freezes
    # it there, so that the visual label, most of whose fakes are mouth-only, does not overwrite what the stage
    # learned (on small's protocol run that scored lower and left the step at about 1.0 s: README).
    lr_scale: float = 1.0


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
    ema_decay: float = 0.999  # capped for short runs: the start weights keep <= 1% (train.parts.ema_decay_for)
    seed: int = 0
    # which validation epoch's weights become best/: "auc" the highest validation AUC, "last" the final epoch's
    # (with a few dozen validation fakes the highest AUC is a noisy pick; see report/experiments.md)
    select: Literal["auc", "last"] = "auc"
    # validate after every N-th epoch and the last (the others only save the training state); best/ is picked among
    # the validated epochs. Each validation of small's 150 protocol clips costs about 12 s on 2 CPU cores.
    eval_every_epochs: int = 1
    save_every_steps: int = 200  # full training state (for --resume); also saved at every epoch end
    stop_after_steps: int = 0  # stop (after saving the state) at this global step; 0: run all epochs
    log_every_steps: int = 10
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: the launcher's, else bf16 on GPU
    tf32: bool = True  # CUDA: TF32 tensor cores for the matmuls and convolutions that stay in float32
    # convolution weights (and so their activations) stored channels-last, NHWC: oneDNN's faster layout on CPU
    # (small's training step 10-15% shorter, tiny's 8%; same losses to 4 digits); not yet measured on a GPU.
    # Ignored, with a warning, under DeepSpeed (it views parameters as flat contiguous memory).
    channels_last: bool = False
    compile: bool = False  # torch.compile the model in place (nn.Module.compile: checkpoints keep their keys)
    compile_backend: str = "inductor"  # torch.compile backend ("aot_eager": tracing without code generation)
    face_pretrain: FacePretrainConfig = field(default_factory=FacePretrainConfig)


@dataclass
class LogConfig:
    experiment: str = "avdeepfake"
    run_name: str | None = None  # default: the output folder's name
    mlflow: bool = True
    thop: bool = True  # log thop's parameter and MAC counts at start-up (rank 0)
    plots: bool = True


@dataclass
class Config(ModelSpec):
    data: DataConfig = field(default_factory=DataConfig)
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
            raise ConfigError(f"{path}: the top level must be a mapping of sections {field_names(Config)}")
    if isinstance(raw.get("model"), str):
        raw["model"] = {"name": raw["model"]}
    cfg = build_section(Config, raw, source)
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
        names = field_names(type(node))
        if part not in names:
            where = ".".join(parts[:depth]) or "the top level"
            raise ConfigError(f"{source}: unknown key {dotted!r}; valid keys in {where}: {', '.join(names)}")
        if depth == len(parts) - 1:
            hint = field_types(type(node))[part]
            if dataclasses.is_dataclass(hint):
                raise ConfigError(f"{source}: {dotted!r} is a section; set one of its keys "
                                  f"({', '.join(field_names(hint))})")
            where = f"{source}: {dotted}"
            try:
                value = coerce(parse_text(text), hint, where)
            except ConfigError:
                value = coerce(text, hint, where)  # e.g. a name that YAML reads as a number
            setattr(node, part, value)
        else:
            node = getattr(node, part)


def dump_config(cfg: Config, path: str | Path) -> None:
    dump_yaml(cfg, path)


def flatten(cfg: Config) -> dict[str, Any]:
    """{"train.lr": 3e-4, ...} for experiment trackers."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value

    walk("", dataclasses.asdict(cfg))
    return out


def validate(cfg: Config, source: str) -> None:
    """Checks across fields (types were checked while building)."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"{source}: {message}")

    need(cfg.data.windows >= 1 and cfg.data.window_frames >= 1, "data.windows and data.window_frames must be >= 1")
    need(cfg.score.time_views >= 1, "score.time_views must be >= 1")
    need(cfg.data.size >= 16 and cfg.data.mouth_size >= 8, "data.size must be >= 16 and data.mouth_size >= 8")
    need(cfg.data.max_clip_seconds > 0, "data.max_clip_seconds must be > 0")
    need(cfg.model.dim % cfg.model.heads == 0, f"model.dim ({cfg.model.dim}) must be divisible by model.heads "
                                                 f"({cfg.model.heads})")
    need(cfg.train.batch_size >= 1 and cfg.train.eval_batch_size >= 1, "batch sizes must be >= 1")
    need(cfg.train.grad_accum >= 1, "train.grad_accum must be >= 1")
    need(cfg.train.epochs >= 1, "train.epochs must be >= 1")
    need(cfg.train.eval_every_epochs >= 1, "train.eval_every_epochs must be >= 1 (the last epoch is always validated)")
    need(0.0 <= cfg.train.ema_decay < 1.0, "train.ema_decay must be in [0, 1)")
    need(len(cfg.train.betas) == 2, "train.betas needs two values")
    need(len(cfg.data.augment.jpeg_quality) == 2, "data.augment.jpeg_quality needs [low, high]")
    blend, vocode, hold = cfg.data.augment.self_blend, cfg.data.augment.self_vocode, cfg.data.augment.mouth_hold
    need(min(blend, vocode, hold) >= 0 and blend + vocode + hold <= 1.0, "data.augment.self_blend, self_vocode and "
         "mouth_hold are chances of one genuine clip: each >= 0, together <= 1")
    pre = cfg.train.face_pretrain
    need(pre.steps >= 0, "train.face_pretrain.steps must be >= 0 (0: no face pretraining)")
    if pre.steps:
        need(cfg.model.name == "av_transformer", f"train.face_pretrain trains the face encoder of av_transformer; "
             f"model {cfg.model.name!r} has none: set train.face_pretrain.steps=0")
        need(pre.batch_size >= 2 and pre.pairs_per_clip >= 1, "train.face_pretrain.batch_size must be >= 2 and "
             "pairs_per_clip >= 1")
        need(0.0 < pre.blend < 1.0, "train.face_pretrain.blend is the share of blended pairs: in (0, 1)")
        need(pre.lr_scale >= 0, "train.face_pretrain.lr_scale must be >= 0 (0: the face encoder stays frozen after "
             "the stage)")
    if cfg.model.blend_head:
        need(cfg.loss.blend > 0 and blend > 0, "model.blend_head learns from self-blended clips: it needs "
             "loss.blend > 0 and data.augment.self_blend > 0")
    if cfg.model.stream_heads:
        need(cfg.loss.stream > 0, "model.stream_heads learn from loss.stream: set loss.stream > 0")
    if cfg.model.stream_sync:
        need(cfg.model.stream_heads, "model.stream_sync adds the sync evidence to the stream heads' noisy OR: it needs "
             "model.stream_heads: true")
    if cfg.model.clip_audio_crop:
        need(cfg.model.clip_audio_tokens > 0, "model.clip_audio_crop crops the audio of the clip voice tokens: it "
             "needs model.clip_audio_tokens > 0")
    if cfg.model.voice_head:
        need(cfg.loss.voice > 0 and cfg.model.clip_audio_tokens > 0, "model.voice_head reads the clip voice tokens "
             "and learns from loss.voice: it needs model.clip_audio_tokens > 0 and loss.voice > 0")
    for name in PRETRAINED_FIELDS:
        if str(getattr(cfg.model, name)).lower() == "none":  # `pretrained: none`: train from scratch, explicitly
            setattr(cfg.model, name, None)


PRETRAINED_FIELDS = ("visual_pretrained", "mouth_pretrained", "audio_pretrained")


def check_pretrained(cfg: Config, source: str) -> None:
    """The ImageNet-1K weight files the config names exist (checked when training starts, not when a config is
    merely read); the message gives the command that fetches them."""
    for name in PRETRAINED_FIELDS:
        file = getattr(cfg.model, name)
        if file is not None and not Path(file).is_file():
            raise ConfigError(f"{source}: model.{name} = {file} does not exist; fetch the ImageNet-1K weights with "
                              f"`python -m scripts.fetch_pretrained --out {Path(file).parent}` (see README), point "
                              f"model.{name} at the file, or set model.{name}=none to train from scratch")
