"""One factory for every model: ``create_model(cfg)``; models register themselves by name.

Models are plain ``nn.Module``s taking the batch dict of :func:`train.data.collate` and returning a dict with at
least ``"logit"`` (B,) (score = sigmoid(logit)); each has ``loss(outputs, batch) -> (loss, parts)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torch import nn

from train.config import MAX_PARAMS, Config, ConfigError

_MODELS: dict[str, Callable[[Config], nn.Module]] = {}


def register_model(name: str) -> Callable:
    def decorator(builder: Callable[[Config], nn.Module]) -> Callable[[Config], nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    _import_models()
    return sorted(_MODELS)


def create_model(cfg: Config, pretrained: bool = True) -> nn.Module:
    """The model named by ``cfg.model.name``. ``pretrained=False`` ignores the configured weight files
    (inference loads a whole checkpoint instead)."""
    _import_models()
    if cfg.model.name not in _MODELS:
        raise ConfigError(f"model.name {cfg.model.name!r} is not a registered model; choose one of {sorted(_MODELS)}")
    model = _MODELS[cfg.model.name](cfg if pretrained else _without_pretrained(cfg))
    return model


def _without_pretrained(cfg: Config) -> Config:
    import copy

    cfg = copy.deepcopy(cfg)
    cfg.model.visual_pretrained = None
    cfg.model.audio_pretrained = None
    return cfg


def _import_models() -> None:
    # Registration happens at import; imported here so that `import train.registry` stays light.
    import train.av_model  # noqa: F401
    import train.baseline  # noqa: F401


def timm_backbone(name: str, pretrained_file: str | None, **kwargs) -> nn.Module:
    """A timm model without classifier (``num_classes=0``); ImageNet weights only from a local file."""
    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        raise ConfigError(f"{name!r} is not a timm model (see timm.list_models())")
    if pretrained_file is not None:
        if not Path(pretrained_file).is_file():
            raise ConfigError(f"pretrained weight file {pretrained_file} does not exist")
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(pretrained_file)},
                                 num_classes=0, **kwargs)
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """The true parameter count (thop's is lower: see scripts/count_params.py)."""
    return sum(p.numel() for p in model.parameters())


def check_size(model: nn.Module, source: str) -> int:
    n = count_parameters(model)
    if n > MAX_PARAMS:
        raise ConfigError(f"{source}: the model has {n / 1e6:.1f}M parameters, over the competition's limit of "
                          f"{MAX_PARAMS / 1e6:.0f}M; choose smaller backbones or a narrower/shallower fusion")
    return n


def example_batch(cfg: Config, batch_size: int = 1, frames: int | None = None) -> dict:
    """A batch of the shape the data pipeline produces (random content), for profiling and smoke tests."""
    from train.data import collate, prepare

    t = frames or cfg.data.frames
    generator = torch.Generator().manual_seed(0)
    samples = []
    for i in range(batch_size):
        sample = {
            "frames": torch.randint(0, 256, (t, 3, cfg.data.size, cfg.data.size), dtype=torch.uint8,
                                    generator=generator),
            "audio": torch.rand(int(cfg.data.max_clip_seconds * 16000), generator=generator) * 2 - 1,
            "label": i % 2, "key": f"example{i}.mp4", "has_face": True, "has_audio": True,
            "meta": {"frames": t, "size": cfg.data.size},
        }
        samples.append(prepare(sample, cfg, train=False, check_shape=frames is None))
    return collate(samples)
