"""Session-scoped tiny data shared by the whole suite, made by the real commands a user runs.

synthetic_dataset -> packed_shards -> tiny_run (a trained `tiny` checkpoint). Each is built once per test
session; tests that need less take the earlier fixture.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_VIDEOS = 120  # 72 train / 24 val / 24 test: enough for a stable above-chance AUC, a minute to generate
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"


def run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    """Run a project command from the repo root; on failure show its output in the test report."""
    result = subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
                             f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    run([sys.executable, "-m", "scripts.make_synthetic_dataset", "--out", out, "--videos", TEST_VIDEOS, "--seed", 0,
         "--workers", os.cpu_count() or 1])
    return out


def tiny_extraction_args() -> list[str]:
    from train.data import pack_arguments

    return pack_arguments(TINY_CONFIG)


@pytest.fixture(scope="session")
def packed_shards(synthetic_dataset, tmp_path_factory) -> Path:
    """Train and val shards of the synthetic dataset, packed with the tiny config's extraction options."""
    out = tmp_path_factory.mktemp("shards")
    for split, labels in (("train", "train_labels.csv"), ("val", "validation_labels.csv")):
        run([sys.executable, "-m", "shards.pack", "--videos", synthetic_dataset / split,
             "--labels", synthetic_dataset / labels, "--out", out / split, "--shard-max-count", 8,
             *tiny_extraction_args()])
    return out


@pytest.fixture(scope="session")
def tiny_run(packed_shards, tmp_path_factory) -> Path:
    """A `tiny` model trained on the synthetic train split; its best checkpoint is tiny_run / "best"."""
    out = tmp_path_factory.mktemp("tiny_run")
    run([sys.executable, "-m", "train", "--config", TINY_CONFIG, "--train-shards", packed_shards / "train",
         "--val-shards", packed_shards / "val", "--out", out])
    return out
