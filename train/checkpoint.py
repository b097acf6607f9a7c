"""Checkpoints: the best model for inference, and the full training state for ``--resume``.

Best checkpoint (``<out>/best/``), written file by file with atomic renames, ``info.json`` last:
    model.safetensors   weights (float32; EMA weights when train.ema)
    config.yaml         the full run config (train.config.Config)
    info.json           {"format": 1, "model": name, "weights_sha256", "code_version", "metrics", "epoch",
                         "global_step", "params", "created"}
Inference: ``load_for_inference(path) -> (model, cfg)``; nothing is unpickled.

Training state (``<out>/state/``): ``step-<global step>/`` folders written by ``Accelerator.save_state`` (model,
optimizer, RNG states, scheduler, EMA) plus ``trainer.json``; the file ``latest`` names the newest complete one
and is replaced atomically only after every rank finished writing, so a kill -9 mid-save leaves the previous
state in force.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from shards.assets import sha256
from train.config import Config, ConfigError, dump_config, load_config

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS, CONFIG, INFO = "model.safetensors", "config.yaml", "info.json"
STATE_POINTER = "latest"


# --- code version ---------------------------------------------------------------------------------------------
def code_version() -> dict:
    """Git commit and dirty flag when in a git checkout, and always a hash of the package sources."""
    digest = hashlib.sha256()
    for package in ("train", "shards"):
        for path in sorted((ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    version = {"source_sha256": digest.hexdigest()[:16], "git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            version["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--", "train", "shards",
                                     "configs"], cwd=ROOT, capture_output=True, text=True, timeout=10)
            version["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def version_tag(version: dict) -> str:
    if version.get("git_commit"):
        return version["git_commit"][:12] + ("-dirty" if version.get("git_dirty") else "")
    return "src-" + version["source_sha256"]


# --- best checkpoint -----------------------------------------------------------------------------------------
FILE_MODE, DIR_MODE = 0o644, 0o755  # readable by other users: a container's user loads what the host wrote


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.chmod(tmp, FILE_MODE)  # safetensors writes its file with mode 0600
    os.replace(tmp, path)


def save_best(directory: str | Path, state_dict: dict[str, torch.Tensor], cfg: Config, info: dict) -> Path:
    """Write model.safetensors, config.yaml and info.json (last) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, DIR_MODE)
    tensors = {k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in state_dict.items()}
    (directory / INFO).unlink(missing_ok=True)  # a reader never pairs new weights with old info
    _atomic_write(directory / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"model": cfg.model.name}))
    _atomic_write(directory / CONFIG, lambda p: dump_config(cfg, p))
    info = {"format": 1, "model": cfg.model.name, "weights_sha256": sha256(directory / WEIGHTS),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
    _atomic_write(directory / INFO, lambda p: p.write_text(json.dumps(info, indent=2, default=str)))
    return directory


def load_for_inference(path: str | Path, device: str | torch.device = "cpu",
                       verify: bool = True) -> tuple[nn.Module, Config]:
    """The model of a best-checkpoint folder (or its model.safetensors) in eval mode, and its config.

    Raises FileNotFoundError (missing files) or ValueError (corrupt, tampered or mismatched checkpoint)."""
    from train.registry import create_model

    path = Path(path)
    directory = path.parent if path.name == WEIGHTS or path.suffix == ".safetensors" else path
    weights = path if path.suffix == ".safetensors" else directory / WEIGHTS
    for needed in (weights, directory / CONFIG):
        if not needed.is_file():
            raise FileNotFoundError(f"checkpoint file {needed} is missing; a checkpoint folder (e.g. <out>/best) "
                                    f"holds {WEIGHTS}, {CONFIG} and {INFO}")
    try:
        cfg = load_config(directory / CONFIG)
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
    model = create_model(cfg, pretrained=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights} does not fit model {cfg.model.name!r} of {directory / CONFIG}: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    return model.to(device).eval(), cfg


# --- training state ------------------------------------------------------------------------------------------
def state_root(out: str | Path) -> Path:
    return Path(out) / "state"


def latest_state(out: str | Path) -> Path | None:
    """The newest complete training-state folder, or None."""
    pointer = state_root(out) / STATE_POINTER
    if not pointer.is_file():
        return None
    folder = state_root(out) / pointer.read_text().strip()
    if not (folder / "trainer.json").is_file():
        raise FileNotFoundError(f"{pointer} names {folder}, which is incomplete; delete {state_root(out)} to "
                                "start over")
    return folder


def save_state(accelerator, out: str | Path, trainer_state: dict, keep: int = 1) -> Path:
    """``accelerator.save_state`` into a new folder on every rank (DeepSpeed needs all ranks), then — once all
    ranks are done — point ``latest`` at it and delete older folders (main process)."""
    root = state_root(out)
    # The epoch-end save (after validation) and a periodic save can fall on the same step: distinct names.
    suffix = "-eval" if trainer_state.get("evaluated") else ""
    folder = root / f"step-{trainer_state['global_step']:08d}{suffix}"
    if accelerator.is_main_process and folder.exists():
        shutil.rmtree(folder)  # a half-written folder from a killed run
    accelerator.wait_for_everyone()
    accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _atomic_write(folder / "trainer.json", lambda p: p.write_text(json.dumps(trainer_state, indent=2)))
        _atomic_write(root / STATE_POINTER, lambda p: p.write_text(folder.name))
        old = sorted(p for p in root.glob("step-*") if p.is_dir() and p != folder)
        for stale in old[:max(0, len(old) - (keep - 1))]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder


def load_state(accelerator, folder: Path) -> dict:
    accelerator.load_state(str(folder))
    return json.loads((folder / "trainer.json").read_text())
