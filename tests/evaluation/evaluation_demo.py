"""A small `make demo`-shaped folder for the evaluation and report tests, built once per test session.

DEMO/data -> the session's synthetic dataset, DEMO/shards -> its packed shards, DEMO/runs/tiny -> the session's
tiny run, DEMO/runs/baseline: the seed baseline trained for two steps, DEMO/submissions/{baseline,tiny}.csv from
`python -m infer`. Both test modules call :func:`build_demo` with the same folder; the second call finds it ready.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASELINE_OVERRIDES = ["train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=4", "train.eval_batch_size=8"]
# cheap settings for the evaluations that make_report runs when a test did not run them first
ROBUSTNESS_ARGS = ["--perturbations", "gaussian_blur,h264_crf,noise_snr_db,aac_kbps", "--levels", "1,5"]
GENERALITY_ARGS = ["--holdout", "av_offset,lip_sync_viseme", "--configs", "tiny", "--override", "train.epochs=1", "--override", "train.batch_size=4",
                   "--override", "data.margin=0.35",  # a clip option: packing must follow it too
                   "--pack-arg=--shard-max-count", "--pack-arg=8"]
SPEED_ARGS = ["--speed-videos", "2"]


def run(cmd: list) -> subprocess.CompletedProcess:
    cmd = [str(c) for c in cmd]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n"
                             f"--- stderr\n{result.stderr[-3000:]}")
    return result


def build_demo(demo: Path, dataset: Path, shards: Path, tiny_run: Path) -> Path:
    ready = demo / ".ready"
    if ready.is_file():
        return demo
    (demo / "runs").mkdir(parents=True, exist_ok=True)
    for link, target in ((demo / "data", dataset), (demo / "shards", shards), (demo / "runs" / "tiny", tiny_run)):
        if not link.exists():
            link.symlink_to(target)
    baseline = demo / "runs" / "baseline"
    if not (baseline / "metrics.json").is_file():
        run([sys.executable, "-m", "train", "--config", "configs/baseline.yaml", "--train-shards", shards / "train",
             "--val-shards", shards / "val", "--out", baseline, *BASELINE_OVERRIDES])
    for name in ("baseline", "tiny"):
        run([sys.executable, "-m", "infer", "--videos", dataset / "test", "--checkpoint", demo / "runs" / name / "best",
             "--out", demo / "submissions" / f"{name}.csv", "--workers", 2])
    ready.write_text("ok\n")
    return demo
