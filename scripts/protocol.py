"""The large generality protocol run (issues 13 and 14) in one command, timed:

    python -m scripts.protocol --out runs/protocol [--videos 2000] [--configs small,tiny,baseline]

1. ``python -m scripts.make_synthetic_dataset --videos 2000 --shares 0.4,0.1,0.5`` -> OUT/data: identities and
   voices disjoint across splits, about 500 genuine test videos.
2. ``python -m evaluation generality --data OUT/data --configs ...``: each config trained without the held-out
   methods and families (default ``evaluation.generality.DEFAULT_HOLDOUT``: the audio-offset family and one
   implementation of every other family), scored per method, family and category with bootstrap intervals
   -> OUT/eval/generality.{json,csv,png}.
3. ``python -m evaluation sync`` on the first config's model (trained without any offset fake) and the genuine
   test videos -> OUT/eval/sync.{json,csv,png}.
Finished steps are skipped on a rerun. The last line printed is one JSON object with the categories' AUCs, the
sync AUC per shift and the minutes of each step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from evaluation.common import csv_list
from evaluation.generality import DEFAULT_HOLDOUT, experiment_name

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list, minutes: dict, name: str, done: Path, record: Path) -> None:
    """Run ``cmd`` from the repository root unless ``done`` exists; its minutes go to ``minutes[name]``, saved in
    ``record`` at once (a later invocation that skips the step still reports them)."""
    if done.exists():
        print(f"[protocol] skip (done): {name}", flush=True)
        return
    cmd = [str(c) for c in cmd]
    print(f"[protocol] $ {' '.join(cmd)}", flush=True)
    started = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    minutes[name] = round((time.time() - started) / 60, 2)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"minutes": minutes}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/protocol"))
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--shares", default="0.4,0.1,0.5", help="train,val,test shares of the videos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", type=csv_list, default=csv_list("small,tiny,baseline"),
                        help="configs to train; the first one's model is given the sync check")
    parser.add_argument("--holdout", default=DEFAULT_HOLDOUT, help="methods and families left out of training")
    parser.add_argument("--sync-videos", type=int, default=200, help="genuine test videos for the sync check")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    out, py = args.out.resolve(), sys.executable
    summary_path = out / "protocol_summary.json"
    # the minutes of steps finished by an earlier, interrupted invocation are kept
    minutes = json.loads(summary_path.read_text()).get("minutes", {}) if summary_path.is_file() else {}
    data, evals = out / "data", out / "eval"
    timed([py, "-m", "scripts.make_synthetic_dataset", "--out", data, "--videos", args.videos, "--seed", args.seed,
           "--workers", args.workers, "--shares", args.shares], minutes, "dataset", data / "meta.csv", summary_path)
    timed([py, "-m", "evaluation", "generality", "--demo-dir", out, "--data", data, "--holdout", args.holdout,
           "--configs", ",".join(args.configs), "--no-reference", "--workers", args.workers],
          minutes, "generality", evals / "generality.json", summary_path)
    first = Path(args.configs[0]).stem
    checkpoint = evals / "generality" / f"{first}-{experiment_name(csv_list(args.holdout))}" / "run" / "best"
    timed([py, "-m", "evaluation", "sync", "--demo-dir", out, "--checkpoint", checkpoint, "--videos", data / "test",
           "--labels", data / "test_labels.csv", "--max-videos", args.sync_videos, "--workers", args.workers,
           "--model", first], minutes, "sync", evals / "sync.json", summary_path)
    generality = json.loads((evals / "generality.json").read_text())
    sync = json.loads((evals / "sync.json").read_text())
    summary = {
        "out": str(out), "minutes": minutes,
        "categories": {e["name"]: {c: {"auc": m["auc"], "auc_ci": m["auc_ci"], "n_fake": m["n_fake"]}
                                   for c, m in e["categories"].items()} for e in generality["experiments"]},
        "sync_auc": {r["shift_ms"]: r["auc"] for r in sync["shifts"]},
    }
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
