"""Evaluations of a `make demo` output folder; each writes JSON (and a table/figure) under DEMO_DIR/eval/.

    python -m evaluation generality --demo-dir runs/demo [--holdout av_offset,vc_lpc] [--configs tiny,baseline]
    python -m evaluation robustness --demo-dir runs/demo [--model tiny] [--perturbations a,b] [--levels 1,5]
    python -m evaluation modality   --demo-dir runs/demo [--models baseline,tiny]
    python -m evaluation shortcuts  --demo-dir runs/demo [--splits train,val,test] [--threshold 0.7]
    python -m evaluation speed      --demo-dir runs/demo
    python -m evaluation sync       --demo-dir runs/demo [--checkpoint RUN/best] [--shifts 40,80,120,200,400]

generality: train each config without the held-out methods and families (a subset folder of symlinks, packed
  with `python -m shards.pack`, trained with `python -m train`, predicted with `python -m infer`), then AUC with
  bootstrap intervals and TPR@FPR=1e-3 on the test set (unseen identities and voices) per method, family and
  category: seen methods, unseen implementations, unseen families. Repeat --holdout for several experiments.
robustness: extract the test videos once, apply each perturbation of evaluation/perturb.py (DeeperForensics video
  protocol, 7 types x 5 levels, plus audio noise/low-pass/AAC/resampling) deterministically, score each condition.
modality: AUC of the fused, audio-only and visual-only heads per FakeAVCeleb category and per method, from the
  submissions' .details.csv and meta.csv.
shortcuts: AUC of each file-metadata feature alone (leading silence, duration, size, bitrate, resolution, fps,
  audio rate/channels); max(AUC, 1-AUC) >= threshold is flagged (--fail-on-flag: exit 1 then).
speed: packing videos/s per core, training clips/s, inference videos/s and the machine, in one table.
sync: the genuine test videos with their audio moved by N ms against the frames: AUC of the synchrony score.
The report of all of them: python -m evaluation.report (make report).
"""

from __future__ import annotations

import argparse
import logging
import sys

from evaluation import generality, modality, robustness, shortcuts, speed, sync

EVALUATIONS = {"generality": generality, "robustness": robustness, "modality": modality, "shortcuts": shortcuts,
               "speed": speed, "sync": sync}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in EVALUATIONS.values():
        module.add_parser(sub)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[evaluation] %(message)s")
    args = parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"python -m evaluation {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
