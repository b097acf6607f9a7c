"""The full training state for ``--resume``, and the code version a run records.

(The best checkpoint, the one inference loads, is the model library's: ``models.checkpoint``.)

Training state (``<out>/state/``): ``step-<global step>/`` folders written by ``Accelerator.save_state`` (model,
optimizer, RNG states, scheduler, EMA) plus ``trainer.json``; the file ``latest`` names the newest complete one
and is replaced atomically only after every rank finished writing, so a kill -9 mid-save leaves the previous
state in force.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from models.checkpoint import atomic_write

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("competition.py", "shards", "models", "train")  # what a trained model's behaviour depends on
STATE_POINTER = "latest"


# --- code version ---------------------------------------------------------------------------------------------
def code_version() -> dict:
    """Git commit and dirty flag when in a git checkout, and always a hash of the package sources."""
    digest = hashlib.sha256()
    for package in SOURCES:
        for path in sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else [ROOT / package]:
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    version = {"source_sha256": digest.hexdigest()[:16], "git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            version["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--", *SOURCES, "configs"], cwd=ROOT,
                                    capture_output=True, text=True, timeout=10)
            version["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def version_tag(version: dict) -> str:
    if version.get("git_commit"):
        return version["git_commit"][:12] + ("-dirty" if version.get("git_dirty") else "")
    return "src-" + version["source_sha256"]


# --- training state ------------------------------------------------------------------------------------------
@dataclass
class TrainerState:
    """Where a run is: saved as trainer.json beside the accelerator's state, restored by ``--resume``."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    evaluated: bool = False  # the current epoch is closed: its validation (if it has one) is done and saved
    best: dict | None = None  # the best validation record so far
    history: list[dict] = field(default_factory=list)  # one validation record per epoch
    mlflow_run_id: str | None = None
    steps_per_epoch: int = 0
    face_pretrain: dict | None = None  # what the face pretraining stage measured (train.face_pretrain)


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


def save_state(accelerator, out: str | Path, trainer: TrainerState, keep: int = 1) -> Path:
    """``accelerator.save_state`` into a new folder on every rank (DeepSpeed needs all ranks), then — once all
    ranks are done — point ``latest`` at it and delete older folders (main process)."""
    root = state_root(out)
    # The epoch-end save (after validation) and a periodic save can fall on the same step: distinct names.
    suffix = "-eval" if trainer.evaluated else ""
    folder = root / f"step-{trainer.global_step:08d}{suffix}"
    if accelerator.is_main_process and folder.exists():
        shutil.rmtree(folder)  # a half-written folder from a killed run
    accelerator.wait_for_everyone()
    accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        record = json.dumps(dataclasses.asdict(trainer), indent=2)
        atomic_write(folder / "trainer.json", lambda p: p.write_text(record))
        atomic_write(root / STATE_POINTER, lambda p: p.write_text(folder.name))
        old = sorted(p for p in root.glob("step-*") if p.is_dir() and p != folder)
        for stale in old[:max(0, len(old) - (keep - 1))]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder


def load_state(accelerator, folder: Path) -> TrainerState:
    accelerator.load_state(str(folder))
    return TrainerState(**json.loads((folder / "trainer.json").read_text()))
