"""The best checkpoint: what training leaves for inference, written and read in one place.

A checkpoint folder (``<run>/best/``), written file by file with atomic renames, ``info.json`` last, every file
0644 (a container's user reads what another user wrote):
    model.safetensors   weights (float32; EMA weights when train.ema)
    config.yaml         the full run config (train.config.Config; read back as a models.config.ModelSpec)
    info.json           {"format": 1, "model": name, "weights_sha256", "code_version", "metrics", "epoch",
                         "global_step", "params", "created", "score"}
``score``: the ``models.scoring.ScoreRule`` fitted on that epoch's validation clips (the statistics a
``score.rule`` other than ``fused`` needs). Inference: ``load_for_inference(path) -> (model, spec)`` and
``load_score_rule(path, spec)``; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from models.config import ConfigError, ModelSpec, dump_yaml, spec_from_yaml
from models.registry import create_model
from models.scoring import ScoreRule
from shards.assets import sha256

WEIGHTS, CONFIG, INFO = "model.safetensors", "config.yaml", "info.json"
FILE_MODE, DIR_MODE = 0o644, 0o755  # readable by other users: a container's user loads what the host wrote


def atomic_write(path: Path, write) -> None:
    """``write(temporary path)``, mode 0644, then an atomic rename onto ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.chmod(tmp, FILE_MODE)  # safetensors writes its file with mode 0600
    os.replace(tmp, path)


def save_best(directory: str | Path, state_dict: dict[str, torch.Tensor], config: Any, info: dict) -> Path:
    """Write model.safetensors, config.yaml (``config``: a ModelSpec or a whole run config) and info.json (last)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, DIR_MODE)
    tensors = {k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in state_dict.items()}
    (directory / INFO).unlink(missing_ok=True)  # a reader never pairs new weights with old info
    name = config.model.name
    atomic_write(directory / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"model": name}))
    atomic_write(directory / CONFIG, lambda p: dump_yaml(config, p))
    info = {"format": 1, "model": name, "weights_sha256": sha256(directory / WEIGHTS),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
    atomic_write(directory / INFO, lambda p: p.write_text(json.dumps(info, indent=2, default=str)))
    return directory


def checkpoint_folder(path: Path) -> Path:
    """The checkpoint folder of ``path``: the folder itself, or the one holding the weights file it names."""
    return path.parent if path.suffix == ".safetensors" else path


def load_for_inference(path: str | Path, device: str | torch.device = "cpu",
                       verify: bool = True) -> tuple[nn.Module, ModelSpec]:
    """The model of a best-checkpoint folder (or its model.safetensors) in eval mode, and its spec. On a CPU its
    convolution weights are stored channels-last (oneDNN's faster layout: small's forward about 20% shorter here,
    logits equal to 1e-6; train.channels_last does the same in training); elsewhere they stay as they are.

    Raises FileNotFoundError (missing files) or ValueError (corrupt, tampered or mismatched checkpoint)."""
    path = Path(path)
    directory = checkpoint_folder(path)
    weights = path if path.suffix == ".safetensors" else directory / WEIGHTS
    for needed in (weights, directory / CONFIG):
        if not needed.is_file():
            raise FileNotFoundError(f"checkpoint file {needed} is missing; a checkpoint folder (e.g. <out>/best) "
                                    f"holds {WEIGHTS}, {CONFIG} and {INFO}")
    try:
        spec = spec_from_yaml(directory / CONFIG)
    except ConfigError as error:
        raise ValueError(f"checkpoint config unusable: {error}") from error
    info_path = directory / INFO
    if verify and info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{info_path} is not valid JSON: {error}") from error
        expected = info.get("weights_sha256")
        if expected and weights.name == WEIGHTS and sha256(weights) != expected:
            raise ValueError(f"{weights} does not match the sha256 recorded in {info_path}: the file is corrupt or "
                             "was replaced; copy the checkpoint folder again")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{weights} is not a readable safetensors file: {error}") from error
    model = create_model(spec, pretrained=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights} does not fit model {spec.model.name!r} of {directory / CONFIG}: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    model.to(device)
    if torch.device(device).type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model.eval(), spec


def load_score_rule(path: str | Path, spec: ModelSpec) -> ScoreRule:
    """How the checkpoint's outputs become scores: its ``score.rule`` with the statistics in info.json.

    Raises ValueError when the rule needs statistics that info.json does not hold."""
    if spec.score.rule == "fused":
        return ScoreRule()
    info_path = checkpoint_folder(Path(path)) / INFO
    try:
        raw = json.loads(info_path.read_text())["score"]
        rule = ScoreRule.from_dict(raw)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{info_path} holds no usable score statistics for score.rule={spec.score.rule!r} "
                         f"({type(error).__name__}: {error}); training writes them with best/: copy the whole "
                         "checkpoint folder, or set score.rule: fused in its config.yaml") from error
    if rule.rule != spec.score.rule:
        raise ValueError(f"{info_path} holds statistics for score.rule={rule.rule!r}, its config.yaml says "
                         f"{spec.score.rule!r}: copy the whole checkpoint folder again")
    return rule
