"""What a model is made of, and the typed-section machinery every config of the project is built with.

A model is described by a ``ModelSpec``: ``model`` (the architecture, ``ModelConfig``), ``data`` (the clip it reads,
``InputConfig``: the extraction options the shards were packed with, which inference extracts with too),
``loss`` (``LossConfig``) and ``score`` (how its outputs become a clip's score, ``ScoreConfig``). A training
run's config (``train.config.Config``) is a ModelSpec plus its ``train`` and ``log`` sections; a checkpoint's
``config.yaml`` is read back as a ModelSpec (``models.checkpoint``).

Sections are dataclasses built from YAML mappings by ``build_section``: unknown keys and values of the wrong type
raise ``ConfigError`` naming the file (or ``command line``) and the valid keys.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from shards.extract import AUDIO_SAMPLE_RATE, ExtractOptions


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the fix."""


@dataclass
class ModelConfig:
    # Registry name (models.registry): av_transformer | seed_baseline.
    name: str = "av_transformer"
    # Face encoder: any timm model, applied per frame with num_classes=0.
    visual_backbone: str = "vit_small_patch16_224"
    # Local file with ImageNet-1K weights for it (see scripts/fetch_pretrained.py); null: random init (never a
    # download). The same for the mouth encoder.
    visual_pretrained: str | None = None
    # The face encoder also reads each frame's difference from the previous frame of its window: a pasted face
    # that jitters or flickers against the head moves between frames that are otherwise nearly the same.
    face_motion: bool = False
    # The same for the mouth encoder: a mouth held still for a few frames and then jumping (a lip-sync generator
    # that moves it in steps) shows in the differences between consecutive mouth crops. One protocol run of small:
    # that lip-sync method unchanged, not adopted (report/experiments.md).
    mouth_motion: bool = False
    # A per-frame head on the face tokens that tells genuine faces from self-blended ones (train.augment.self_blend),
    # trained on those alone (loss.blend); the clip's mean of it, detached, is one more input of the fused head.
    blend_head: bool = False
    # Per-stream heads: a linear head on each frame's face token and one on each frame's lip token, their clip means
    # (face_logit, lip_logit) trained together on the visual label as a noisy OR (loss.stream): a visual fake needs
    # only one of the two streams to call it fake, so mouth-only fakes (lip sync), whose faces look genuine, can be
    # explained by the lips and need not teach the face stream to call genuine-looking faces fake. Their logits
    # are evidence for score.rule mean / max; the fused head does not read them.
    stream_heads: bool = False
    # A third explanation in that noisy OR: the clip's sync evidence (detached) through a learned logistic, so a
    # lip-sync fake whose lips do not follow its audio is explained by the synchrony and need not teach the face or
    # lip stream to call it fake (neither stream sees those fakes at test: AUC 0.50-0.56 on lip sync).
    stream_sync: bool = False
    # Mouth encoder: any timm model, applied per mouth crop, then a temporal convolution within each window.
    mouth_backbone: str = "resnet18"
    mouth_pretrained: str | None = None
    # Audio: log-Mel at hop_length samples (10 ms), a convolutional front end of these widths, one token per frame.
    audio_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    n_mels: int = 64
    n_fft: int = 400  # 25 ms at 16 kHz
    hop_length: int = 160  # 10 ms: 4 hops per video frame at 25 fps
    # The whole clip's audio (up to data.max_clip_seconds) as this many more voice tokens for the fusion
    # transformer (utterance-level vocoder and conversion artefacts); 0: off. Widths of its strided convolutions.
    clip_audio_tokens: int = 0
    clip_audio_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    # Or a timm CNN (in_chans=1, random init) for those tokens in place of the strided convolutions: its feature
    # map, frequency bands kept apart, pooled over time (the seed baseline reads the spectrogram with a ResNet).
    clip_audio_backbone: str | None = None
    # Read only the token spans that start inside the clip's audio instead of the whole padded length (most clips
    # are a few seconds of the 10 s): training crops each batch to its longest clip, evaluation reads each clip up
    # to its own spans (scores stay independent of the batch). Off: what checkpoints from before this option read.
    clip_audio_crop: bool = False
    # Subtract each Mel band's mean over the clip's real audio before the clip voice encoder reads it (cepstral mean
    # normalisation, as speaker verification does): a recording channel's fixed colour (microphone, room, EQ) is
    # gone, what changes within the utterance stays. Off: the clip's level and overall spectral shape are kept.
    clip_audio_band_norm: bool = False
    # A linear head on the mean of those clip voice tokens, trained on the audio label (loss.voice): the voice
    # encoder gets its own signal, as the seed baseline's ResNet does, instead of only what reaches it through the
    # fusion transformer; its logit, detached, is one more input of the fused head.
    voice_head: bool = False
    temporal_kernel: int = 5  # frames a temporal convolution sees (lips and audio)
    temporal_layers: int = 2
    # Padding of those convolutions: circular keeps position within a window out of the tokens (see
    # layers.TemporalConv); zeros is what checkpoints from before this option were trained with.
    temporal_padding: Literal["zeros", "circular"] = "zeros"
    dim: int = 384  # fusion transformer width
    depth: int = 4
    heads: int = 6
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    drop_path: float = 0.0  # stochastic depth inside the timm backbones (when they support it)
    sync_dim: int = 128
    sync_temperature: float = 0.07
    sync_max_shift: int = 6  # the shift classification compares shifts of -D..D frames
    grad_checkpointing: bool = False
    # seed_baseline only: a timm CNN (in_chans=1) on the log-Mel of the audio cropped/padded to this length.
    audio_backbone: str = "resnet18"
    audio_pretrained: str | None = None
    baseline_audio_seconds: float = 10.0


@dataclass
class LossConfig:
    aux: float = 0.5  # audio-only and visual-only heads
    sync: float = 0.2  # InfoNCE of time-aligned audio/visual tokens on genuine clips
    token: float = 0.1  # per-time token logits (multiple-instance loss)
    blend: float = 0.0  # model.blend_head: genuine vs self-blended faces, per frame
    voice: float = 0.0  # model.voice_head: the clip voice tokens' own audio-fake head
    stream: float = 0.0  # model.stream_heads: face or lips (noisy OR) on the visual label


@dataclass
class ScoreConfig:
    # How a clip's outputs become its score (models.scoring). fused: the fused head's probability. mean /
    # logmeanexp / max: every output (fused, audio-only and visual-only heads, sync evidence negated, blend, voice,
    # face and lip heads) standardised on the genuine validation clips, then averaged / combined as
    # log(mean(exp(z))) / the largest taken, and mapped to a probability by a Cauchy CDF fitted on the validation
    # labels (its slow tail keeps the ranking at 6 decimals); the statistics are stored in best/info.json.
    rule: Literal["fused", "mean", "logmeanexp", "max"] = "fused"
    # Inference only (``infer.Predictor``): N > 1 extracts N x data.windows windows and scores N clips of
    # interleaved windows (``models.batch.time_views``), each output averaged over them before the rule combines
    # them. Training reads one clip of data.windows; validation reads the same N views when its shards were packed
    # with N x data.windows windows (``--pack-args val``), so that the rule's statistics are those inference uses.
    time_views: int = 1


@dataclass
class InputConfig:
    """The clip a model reads: the extraction options of its shards (``shards.extract``), also at inference.

    T = windows x window_frames frames: W windows of K consecutive frames at ``fps`` (with ``native_rate``: at each
    video's own rate, its audio features resampled to ``fps``'s steps per frame in the model), each frame with a face
    crop (``size``) and a mouth crop (``mouth_size``), and the clip's audio (up to ``max_clip_seconds``)."""

    windows: int = 4
    window_frames: int = 16
    fps: float = 25.0
    native_rate: bool = False
    size: int = 224
    mouth_size: int = 64
    margin: float = 0.3
    mouth_scale: float = 0.5
    max_clip_seconds: float = 10.0
    # The face crops' mouth grey (``models.batch.grey_mouths``): each frame's mouth box, the region its mouth crop
    # was cut from, is set to mid grey in its face crop, in training, validation, inference and the face stage
    # alike. The face stream then sees everything but what the lip stream reads, so mouth-only fakes (lip sync) look
    # genuine to it and the stream heads' noisy OR leaves them to the lips. Not an extraction option: the shards are
    # unchanged. Three seeds of small with and without it: not adopted (report/experiments.md).
    mouth_mask: bool = False

    @property
    def frames(self) -> int:
        return self.windows * self.window_frames

    def extract_options(self) -> ExtractOptions:
        """The ``shards.extract.ExtractOptions`` that make this clip (what inference extracts with)."""
        return ExtractOptions(windows=self.windows, window_frames=self.window_frames, fps=self.fps,
                              native_rate=self.native_rate, size=self.size, mouth_size=self.mouth_size,
                              margin=self.margin, mouth_scale=self.mouth_scale, max_clip_seconds=self.max_clip_seconds)

    def audio_samples(self) -> int:
        """Length of the zero-padded audio of a batch (``max_clip_seconds`` at the shards' 16 kHz)."""
        return int(round(self.max_clip_seconds * AUDIO_SAMPLE_RATE))

    def samples_per_frame(self) -> int:
        """Audio samples a frame owns (16 kHz / fps: 640 at 25 fps)."""
        return int(round(AUDIO_SAMPLE_RATE / self.fps))


@dataclass
class ModelSpec:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: InputConfig = field(default_factory=InputConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)


def spec_from_yaml(path: str | Path) -> ModelSpec:
    """The ModelSpec of a run's or checkpoint's config.yaml: its model and loss sections, and of its data section
    the clip options (the training-only keys there, such as loader workers or augmentation, are left out)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    if isinstance(raw.get("model"), str):
        raw["model"] = {"name": raw["model"]}
    data = {k: v for k, v in (raw.get("data") or {}).items() if k in field_names(InputConfig)}
    return ModelSpec(model=build_section(ModelConfig, raw.get("model") or {}, str(path), "model."),
                     data=build_section(InputConfig, data, str(path), "data."),
                     loss=build_section(LossConfig, raw.get("loss") or {}, str(path), "loss."),
                     score=build_section(ScoreConfig, raw.get("score") or {}, str(path), "score."))


def dump_yaml(config: Any, path: str | Path) -> None:
    """A config dataclass as YAML (sections in field order)."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


# --- building and type checking -------------------------------------------------------------------------------
def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build_section(cls: type, raw: Any, source: str, prefix: str = "") -> Any:
    """Dataclass ``cls`` from a mapping (nested dataclass fields from nested mappings), type-checked."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a mapping with keys {', '.join(field_names(cls))}")
    names, hints = field_names(cls), field_types(cls)
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise ConfigError(f"{source}: unknown key {prefix + unknown[0]!r} in {where}; valid keys: {', '.join(names)}")
    values = {}
    for key, value in raw.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = build_section(hint, value or {}, source, f"{prefix}{key}.")
        else:
            values[key] = coerce(value, hint, f"{source}: {prefix}{key}")
    return cls(**values)


def parse_text(text: str) -> Any:
    """A command-line value as YAML reads it (``3e-4``, ``true``, ``[40, 95]``), else the text itself."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, Literal, list[T], X | None) or ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, where)
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
        return [coerce(v, args[0], where) for v in value]
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
