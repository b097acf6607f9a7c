"""`make demo` (`python -m scripts.demo`): the whole job end to end on the embedded synthetic dataset, on CPU.

Steps (each one is the real command a user would run, so the demo exercises the shipped entry points):
1. generate the synthetic audio-visual deepfake dataset (competition format) -> OUT/data
2. pack train and val into WebDataset shards with the extraction options of the tiny config -> OUT/shards
3. train the organizers' seed baseline and our audio-visual transformer (tiny config) -> OUT/runs/{baseline,tiny}
4. predict the test split from raw videos with each model -> OUT/submissions/*.csv
5. score both against the test labels; the last line printed is one JSON object with all scores.
Finished steps are skipped on a rerun (delete OUT to start over).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from competition import TEST, TRAIN, VAL, label_file, split_dir
from train.data import pack_arguments

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"baseline": "configs/baseline.yaml", "tiny": "configs/tiny.yaml"}


def run(cmd: list[str], done_marker: Path | None = None) -> None:
    if done_marker is not None and done_marker.exists():
        print(f"[demo] skip (done): {' '.join(cmd)}", flush=True)
        return
    print(f"[demo] $ {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("DEMO_DIR", "runs/demo")))
    parser.add_argument("--videos", type=int, default=200, help="synthetic videos over all splits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    out = args.out.resolve()
    py = sys.executable
    started = time.time()

    data = out / "data"
    run([py, "-m", "scripts.make_synthetic_dataset", "--out", str(data), "--videos", str(args.videos),
         "--seed", str(args.seed), "--workers", str(args.workers)], done_marker=data / "meta.csv")

    shards = out / "shards"
    for split in (TRAIN, VAL):
        run([py, "-m", "shards.pack", "--videos", str(split_dir(data, split)), "--labels", str(label_file(data, split)),
             "--out", str(shards / split), "--workers", str(args.workers),
             *pack_arguments(ROOT / MODELS["tiny"], split)])

    results: dict[str, dict] = {}
    for name, config in MODELS.items():
        run_dir = out / "runs" / name
        run([py, "-m", "train", "--config", config, "--train-shards", str(shards / "train"),
             "--val-shards", str(shards / "val"), "--out", str(run_dir)], done_marker=run_dir / "metrics.json")
        submission = out / "submissions" / f"{name}.csv"
        run([py, "-m", "infer", "--videos", str(split_dir(data, TEST)), "--checkpoint", str(run_dir / "best"),
             "--out", str(submission), "--workers", str(args.workers)])
        scored = subprocess.run([py, "-m", "competition", "--pred", str(submission), "--labels",
                                 str(label_file(data, TEST))], check=True, cwd=ROOT, capture_output=True, text=True)
        val = json.loads((run_dir / "metrics.json").read_text())
        results[name] = {"val": val.get("best", val), "test": json.loads(scored.stdout)}

    summary = {
        "demo_dir": str(out),
        "minutes": round((time.time() - started) / 60, 2),
        "val_auc": {name: r["val"].get("auc") for name, r in results.items()},
        "test_auc": {name: r["test"]["auc"] for name, r in results.items()},
        "test_tpr_at_fpr_1e-3": {name: r["test"]["tpr_at_fpr_1e-3"] for name, r in results.items()},
        "results": results,
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
