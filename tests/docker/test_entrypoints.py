"""docker/train.sh and docker/infer.sh outside Docker (same variables as in the image), on the tiny config."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def script_env(work: Path, **extra: str) -> dict:
    env = dict(os.environ, PYTHON=sys.executable, WORK_DIR=str(work), NUM_GPUS="0", PACK_WORKERS="2",
               CONFIG="configs/tiny.yaml", **extra)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.fixture(scope="module")
def trained_work_dir(synthetic_dataset, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("work")
    result = subprocess.run(["docker/train.sh", str(synthetic_dataset), str(work), "--", "train.epochs=2"],
                            cwd=ROOT, env=script_env(work), capture_output=True, text=True, timeout=900)
    return work, result


@pytest.mark.slow
def test_train_sh_packs_trains_and_leaves_the_checkpoint_for_infer(trained_work_dir):
    work, result = trained_work_dir
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[train.sh] python" in result.stdout and "gpus=0" in result.stdout  # versions and GPU count
    assert "configs/accelerate/cpu.yaml" in result.stdout
    for split in ("train", "val"):
        assert (work / "shards" / split / "manifest.json").is_file()
    assert (work / "run" / "best" / "model.safetensors").is_file()
    assert (work / "run" / "mlflow.db").is_file()


@pytest.mark.slow
def test_train_sh_rerun_skips_packed_shards(trained_work_dir, synthetic_dataset):
    work, _ = trained_work_dir
    tars = sorted((work / "shards" / "train").glob("*.tar"))
    before = {p: p.stat().st_mtime_ns for p in tars}
    env = script_env(work)
    result = subprocess.run(["docker/train.sh", str(synthetic_dataset), str(work), "--", "train.epochs=2"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in tars} == before


@pytest.mark.slow
def test_infer_sh_writes_a_complete_submission(trained_work_dir, synthetic_dataset, tmp_path):
    work, _ = trained_work_dir
    out = tmp_path / "submission.csv"
    result = subprocess.run(["docker/infer.sh", str(synthetic_dataset / "test"), str(out)], cwd=ROOT,
                            env=script_env(work), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"checkpoint={work}/run/best" in result.stdout
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["video_name"] for r in rows) == sorted(p.name for p in (synthetic_dataset / "test").glob("*.mp4"))
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)


def test_scripts_fail_clearly_on_bad_setup(tmp_path):
    env = script_env(tmp_path)
    result = subprocess.run(["docker/train.sh", str(tmp_path / "nodata"), str(tmp_path)], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "nodata/train is missing" in result.stderr
    (tmp_path / "videos").mkdir()
    result = subprocess.run(["docker/infer.sh", str(tmp_path / "videos")], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 3 and "no checkpoint" in result.stderr
