"""One factory for every model: ``create_model(spec)``; models register themselves by name, the way timm's do.

    from models import create_model
    model = create_model(spec)        # spec: models.config.ModelSpec (a training Config is one)

Models are plain ``nn.Module``s built from a ModelSpec, taking the batch dict of :func:`models.batch.collate` and
returning a dict with at least ``"logit"`` (B,) (score = sigmoid(logit)); each has
``loss(outputs, batch) -> (loss, parts)``. A model module registers its builder with ``@register_model(name)``;
importing the ``models`` package imports every model module, so the registry is complete whenever
``create_model`` can be called.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import timm
from torch import nn

from models.config import ConfigError, ModelSpec

Builder = Callable[[ModelSpec], nn.Module]
WEIGHTS_MANIFEST = "manifest.json"  # sha256 of each weight file, beside them (python -m scripts.fetch_pretrained)
_MODELS: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    def decorator(builder: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(spec: ModelSpec, pretrained: bool = True) -> nn.Module:
    """The model named by ``spec.model.name``. ``pretrained=False`` ignores the configured weight files
    (inference loads a whole checkpoint instead)."""
    if spec.model.name not in _MODELS:
        raise ConfigError(f"model.name {spec.model.name!r} is not a registered model; choose one of "
                          f"{list_models()}")
    return _MODELS[spec.model.name](spec if pretrained else _without_pretrained(spec))


def _without_pretrained(spec: ModelSpec) -> ModelSpec:
    spec = copy.deepcopy(spec)
    for name in ("visual_pretrained", "mouth_pretrained", "audio_pretrained"):
        setattr(spec.model, name, None)
    return spec


def timm_backbone(name: str, pretrained_file: str | None, **kwargs) -> nn.Module:
    """A timm model without classifier (``num_classes=0``); ImageNet weights only from a local file."""
    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        raise ConfigError(f"{name!r} is not a timm model (see timm.list_models())")
    if pretrained_file is not None:
        if not Path(pretrained_file).is_file():
            raise ConfigError(f"pretrained weight file {pretrained_file} does not exist")
        verify_weights(pretrained_file)
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(pretrained_file)},
                                 num_classes=0, **kwargs)
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def verify_weights(path: str | Path) -> None:
    """A weight file must match its sha256 in the manifest beside it, when there is one (ConfigError naming the
    command that fetches it again)."""
    import json

    from shards.assets import sha256

    path = Path(path)
    manifest = path.parent / WEIGHTS_MANIFEST
    entry = json.loads(manifest.read_text()).get(path.name) if manifest.is_file() else None
    if entry is not None and sha256(path) != entry["sha256"]:
        raise ConfigError(f"{path} does not match the sha256 in {manifest}: fetch it again with "
                          f"`python -m scripts.fetch_pretrained --out {path.parent} {entry['tag']}`")
