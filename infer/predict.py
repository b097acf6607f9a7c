"""Raw videos -> submission.csv, the path the organizers run on the hidden test set.

Extraction is the shards code (``shards.pool`` / ``shards.extract``, run in worker processes), the model, its
batches and its score rule come from the model library (``models.checkpoint``, ``models.batch``,
``models.scoring``: the checkpoint's ``score.rule`` with the statistics training stored in ``best/info.json``),
the files are the competition's (``competition``): inference imports nothing from the trainer.

Every video gets a row: a failed extraction scores ``NEUTRAL_SCORE`` and is listed in ``<out>.failures.csv`` with
its reason; no face -> the model's audio-only path, no audio -> the visual-only path (both flagged in
``<out>.details.csv``, which also names the output that called each clip fake under a late-fusion rule).
Nothing fails silently: the face detector must find the face in a known portrait before any video is read (exit
5 naming the missing piece otherwise), and when more than ``--max-failed-fraction`` of the videos fail the CSV is
still written but the exit code is 4, with the most common reasons and their counts on stderr. Exit codes: 0 ok,
2 no videos, 3 unusable checkpoint, 4 too many failed videos, 5 face detector unusable. The model sees batches in
sorted-name order whatever the worker timing, so two runs give byte-identical CSVs.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from competition import LabelsError, find_videos, format_score, read_template, write_submission
from models.batch import collate, prepare, time_views, to_device
from models.checkpoint import load_for_inference, load_score_rule
from models.scoring import evidence, mean_per_clip
from shards.extract import ExtractOptions
from shards.pool import extracted

NEUTRAL_SCORE = 0.5
EXIT_NO_VIDEOS = 2  # also: the folder or the --template is unusable
EXIT_BAD_CHECKPOINT = 3
EXIT_TOO_MANY_FAILED = 4
EXIT_NO_DETECTOR = 5
DEFAULT_MAX_FAILED_FRACTION = 0.1
log = logging.getLogger("infer")


@dataclass
class Prediction:
    video_name: str
    score: float = NEUTRAL_SCORE
    status: str = "failed"  # ok | failed
    fallbacks: list[str] = field(default_factory=list)
    reason: str = ""
    audio_score: float | None = None
    visual_score: float | None = None
    strongest: str = ""  # the output that called the clip fake (a late-fusion score.rule; models.scoring)


# --- the model ----------------------------------------------------------------------------------------------
class Predictor:
    """A checkpoint, the eval transform it was trained with, its score rule, and batched deterministic scoring.

    ``tta``: each clip is also scored mirrored. ``time_views`` (default: the config's ``score.time_views``) N > 1:
    clips are extracted with N times the config's windows and scored as N clips of interleaved windows
    (``models.batch.time_views``); a clip's evidence is averaged over all of its views before the score rule
    combines it."""

    def __init__(self, checkpoint: Path, device: str = "cpu", tta: bool = False, time_views: int | None = None):
        self.device = torch.device(device)
        self.model, self.spec = load_for_inference(checkpoint, device=self.device)
        self.rule = load_score_rule(checkpoint, self.spec)
        self.tta = tta
        self.time_views = self.spec.score.time_views if time_views is None else time_views
        if self.time_views < 1:
            raise ValueError(f"time_views={self.time_views} (need >= 1)")

    def extraction_options(self) -> ExtractOptions:
        options = self.spec.data.extract_options()
        return dataclasses.replace(options, windows=options.windows * self.time_views)

    def views(self, sample: dict) -> list[dict]:
        """The clips the model reads for one extracted sample (one unless ``time_views`` > 1)."""
        return time_views(sample, self.time_views)

    @torch.no_grad()
    def score(self, samples: list[dict]) -> list[dict[str, float | None]]:
        views = [self.views(sample) for sample in samples]
        owner = np.repeat(np.arange(len(samples)), [len(v) for v in views])  # view -> its sample
        batch = to_device(collate([prepare(view, self.spec.data) for vs in views for view in vs]), self.device)
        outputs = [self.model(batch)]
        if self.tta:  # mirrored faces: a deepfake cue should not depend on left/right
            flipped = dict(batch, frames=batch["frames"].flip(-1))
            outputs.append(self.model(flipped))
        per_view = [evidence(o) for o in outputs]  # the rule reads every output, averaged over the views
        ev = {name: mean_per_clip(np.stack([v[name] for v in per_view]), owner, len(samples)) for name in per_view[0]}
        scores, strongest = self.rule.probability(ev), self.rule.strongest(ev)  # as validation scores a clip
        probability = {key: mean_per_clip(np.stack([torch.sigmoid(o[key].float()).cpu().numpy() for o in outputs]),
                                             owner, len(samples))
                       for key in ("logit", "audio_logit", "visual_logit") if key in outputs[0]}
        sync = (mean_per_clip(outputs[0]["sync_score"].float().cpu().numpy()[None], owner, len(samples))
                if "sync_score" in outputs[0] else None)  # lip/audio synchrony evidence, of the unmirrored views
        result = []
        for i in range(len(samples)):
            row = {"score": float(scores[i]), "strongest": strongest[i]}
            for head in ("audio", "visual"):
                key = f"{head}_logit"
                row[f"{head}_score"] = float(probability[key][i]) if key in probability else None
            if sync is not None:
                row["sync_score"] = float(sync[i])
            result.append(row)
        return result


def predict(videos: list[Path], predictor: Predictor, batch_size: int, workers: int,
            timeout: float = 300.0) -> list[Prediction]:
    predictions: list[Prediction] = []
    pending: list[tuple[Prediction, dict]] = []

    def flush() -> None:
        for (prediction, _), scores in zip(pending, predictor.score([s for _, s in pending]), strict=True):
            prediction.score = scores["score"]
            prediction.audio_score = scores["audio_score"]
            prediction.visual_score = scores["visual_score"]
            prediction.strongest = scores["strongest"]
        pending.clear()

    progress = tqdm(extracted(videos, predictor.extraction_options(), workers, timeout), total=len(videos),
                    desc="predict", unit="video", file=sys.stderr)
    for name, sample, reason in progress:
        prediction = Prediction(video_name=name)
        predictions.append(prediction)
        if sample is None:
            prediction.reason = reason
            continue
        prediction.status = "ok"
        prediction.fallbacks = list(sample["meta"].get("fallbacks", []))
        pending.append((prediction, sample))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return predictions


# --- outputs ------------------------------------------------------------------------------------------------
def write_reports(out: Path, predictions: list[Prediction]) -> tuple[Path, Path]:
    details = out.with_name(out.stem + ".details.csv")
    failures = out.with_name(out.stem + ".failures.csv")
    with open(details, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["video_name", "score", "status", "fallbacks", "audio_score", "visual_score",
                         "strongest_evidence", "reason"])
        for p in predictions:
            writer.writerow([p.video_name, format_score(p.score), p.status, ";".join(p.fallbacks),
                             _fmt(p.audio_score), _fmt(p.visual_score), p.strongest, p.reason])
    with open(failures, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["video_name", "reason"])
        for p in predictions:
            if p.status == "failed":
                writer.writerow([p.video_name, p.reason])
    return details, failures


def _fmt(value: float | None) -> str:
    return "" if value is None else format_score(value)


def order_by_template(predictions: list[Prediction], template: list[str]) -> list[Prediction]:
    """The template's rows in the template's order; template videos absent from DIR fail with a reason."""
    by_name = {p.video_name: p for p in predictions}
    extra = sorted(set(by_name) - set(template))
    if extra:
        log.warning("%d video(s) in DIR are not in the template and are left out: %s", len(extra), extra[:5])
    return [by_name.get(name) or Prediction(video_name=name, reason="listed in the template, not found in DIR")
            for name in template]


def make_deterministic(seed: int = 0) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m infer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, required=True, help="folder of .mp4 videos")
    parser.add_argument("--checkpoint", type=Path, required=True, help="best-checkpoint folder from training")
    parser.add_argument("--out", type=Path, default=Path("submission.csv"))
    parser.add_argument("--template", type=Path, help="submission template: keep its rows and order")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="extraction processes (0: inline)")
    parser.add_argument("--video-timeout", type=float, default=300.0,
                        help="seconds one video may take to extract before it fails with a neutral score")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-failed-fraction", type=float, default=DEFAULT_MAX_FAILED_FRACTION,
                        help="exit 4 (after writing the CSV) when more than this share of the videos fail "
                             f"(default {DEFAULT_MAX_FAILED_FRACTION}; 1 never)")
    parser.add_argument("--tta", action="store_true", help="average the scores of the clip and its mirror image")
    parser.add_argument("--time-views", type=int, metavar="N",
                        help="read N times the config's windows and average the evidence of N interleaved clips "
                             "(default: the config's score.time_views)")
    parser.add_argument("--explain", type=Path, metavar="OUTDIR", help="write explanation figures for videos")
    parser.add_argument("--explain-videos", nargs="*", default=None,
                        help="video names to explain (default: the 4 highest- and lowest-scoring)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.max_failed_fraction <= 1.0:
        parser.error("--max-failed-fraction must be between 0 and 1")
    if args.time_views is not None and args.time_views < 1:
        parser.error("--time-views must be 1 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[infer] %(message)s")
    args = parse_args(argv)
    make_deterministic()
    try:
        videos = find_videos(args.videos)
        template = read_template(args.template) if args.template else None
    except (FileNotFoundError, LabelsError) as error:
        log.error("%s", error)
        return EXIT_NO_VIDEOS
    if not videos:
        log.error("no .mp4 video in %s: nothing to predict", args.videos)
        return EXIT_NO_VIDEOS
    try:
        from shards.faces import self_check

        self_check()
    except Exception as error:  # noqa: BLE001 - whatever breaks the detector, say so and stop
        log.error("face detector unusable, no video can be scored: %s", error)
        return EXIT_NO_DETECTOR
    try:
        predictor = Predictor(args.checkpoint, device=args.device, tta=args.tta, time_views=args.time_views)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as error:
        log.error("checkpoint %s is unusable: %s", args.checkpoint, error)
        return EXIT_BAD_CHECKPOINT
    started = time.time()
    predictions = predict(videos, predictor, args.batch_size, args.workers, args.video_timeout)
    seconds = time.time() - started
    if template is not None:
        predictions = order_by_template(predictions, template)
    write_submission(args.out, ((p.video_name, p.score) for p in predictions))
    details, failures = write_reports(args.out, predictions)
    if args.explain:
        from infer.explain import explain_videos

        explain_videos(predictor, videos, predictions, args.explain, args.explain_videos)
    n_failed = sum(p.status == "failed" for p in predictions)
    n_fallback = sum(bool(p.fallbacks) for p in predictions)
    log.info("%d videos: %d ok (%d with fallbacks), %d failed -> score %.1f; %.2f videos/s; wrote %s (%s, %s)",
             len(predictions), len(predictions) - n_failed, n_fallback, n_failed, NEUTRAL_SCORE,
             len(videos) / max(seconds, 1e-9), args.out, details.name, failures.name)
    if n_failed > args.max_failed_fraction * len(predictions):
        reasons = Counter(p.reason.split(":", 1)[0] for p in predictions if p.status == "failed")
        log.error("%d of %d videos failed (more than --max-failed-fraction %g); most common reasons: %s; see %s",
                  n_failed, len(predictions), args.max_failed_fraction,
                  ", ".join(f"{reason} x{count}" for reason, count in reasons.most_common(5)), failures)
        return EXIT_TOO_MANY_FAILED
    return 0
