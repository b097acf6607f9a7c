"""The best checkpoint (models.checkpoint): files readable by other users (a container's user loads what the host's
root wrote), whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import torch

from models.checkpoint import load_for_inference, save_best
from train.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_everything_a_run_writes_into_best_is_world_readable(tiny_run):
    best = tiny_run / "best"
    assert mode(best) == 0o755
    files = sorted(best.iterdir())
    assert {p.name for p in files} == {"model.safetensors", "config.yaml", "info.json"}
    for path in files:
        assert mode(path) == 0o644, f"{path.name} has mode {oct(mode(path))}"


def test_modes_do_not_depend_on_the_umask(tiny_run, tmp_path):
    model, cfg = load_for_inference(tiny_run / "best")
    previous = os.umask(0o077)  # a root shell with a strict umask
    try:
        save_best(tmp_path / "best", model.state_dict(), load_config(tiny_run / "best" / "config.yaml"), {})
    finally:
        os.umask(previous)
    assert mode(tmp_path / "best") == 0o755
    assert all(mode(p) == 0o644 for p in (tmp_path / "best").iterdir())
    again, _ = load_for_inference(tmp_path / "best")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(),
                                                 strict=True))
