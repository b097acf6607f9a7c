"""Generate the embedded synthetic audio-visual deepfake dataset in the competition format.

    python -m scripts.make_synthetic_dataset --out DIR --videos N --seed S [--workers W] [--shares 0.6,0.2,0.2]

writes DIR/{train,val,test}/<32 hex>.mp4, DIR/{train,validation,test}_labels.csv (video_name,target; 1 = fake)
and DIR/meta.csv (split, FakeAVCeleb category, family, method, identity, voice and every generation parameter
of each video; written last, so its presence means the dataset is complete).

Genuine videos film a derived identity's whole photo like interview footage (camera framing and motion, head
motion, blinks, the mouth opening with real recorded speech of the identity's own speaker, in sync). Identities,
speakers and LFW faces are disjoint across splits (the two source photos are shared); see scripts/synth/plan.py.
Fakes, balanced over families and, within a family, over its implementations (``method``):
  face_swap         FakeVideo-RealAudio  face_swap_alpha_ellipse, face_swap_poisson_hull, face_swap_lowres_jitter
  lip_sync          FakeVideo-RealAudio  lip_sync_dub (audio replaced, mouth not), lip_sync_lowres_mouth,
                                         lip_sync_viseme (mouth re-rendered to another real utterance)
  av_offset         FakeVideo-RealAudio  av_offset_constant (0.2-0.8 s), av_offset_drift (to 0.3-0.8 s)
  voice_conversion  RealVideo-FakeAudio  vc_channel_vocoder, vc_lpc, vc_formant_shift, vc_griffin_lim
  tts               RealVideo-FakeAudio  tts_flite_diphone, tts_flite_clustergen (the mouth keeps the filmed words)
  both              FakeVideo-FakeAudio  both_swap_vc (a face swap + a voice conversion), both_lipsync_tts
Duration, resolution, fps, audio rate and channels, leading silence, compression and the camera are drawn
independently of the label, so genuine and fake videos do not differ in them. Same seed -> byte-identical files,
whatever the number of workers.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from competition import write_labels
from scripts.synth.plan import (
    DEFAULT_SHARES,
    MIN_VIDEOS,
    Catalog,
    VideoSpec,
    label_files,
    plan_dataset,
    read_catalog,
)

LABELS = label_files()
OUTPUTS = [*LABELS, *LABELS.values(), "meta.csv"]
UNFINISHED = ".unfinished"


def at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def shares(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not three numbers: {text!r}") from None
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"need three positive fractions train,val,test, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (created; must be empty or hold an earlier dataset)")
    parser.add_argument("--videos", type=at_least(MIN_VIDEOS), default=200,
                        help=f"videos over all splits (60/20/20; at least {MIN_VIDEOS}: every split needs a "
                             "genuine and a fake video)")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical dataset")
    parser.add_argument("--workers", type=at_least(1), default=os.cpu_count() or 1,
                        help="parallel processes (default: all cores); the output does not depend on it")
    parser.add_argument("--shares", type=shares, default=DEFAULT_SHARES,
                        help="train,val,test fractions of the videos (default 0.6,0.2,0.2); e.g. 0.4,0.1,0.5 for a "
                             "large test split")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous dataset in --out (only the files this script writes)")
    return parser.parse_args(argv)


def check_out(out: Path, overwrite: bool) -> list[Path]:
    """What of --out must be removed first: an earlier dataset (only with --overwrite) or an unfinished run.

    A run marks --out with UNFINISHED until meta.csv is written, so nothing a user put there is ever deleted.
    """
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return []
    ours = [out / name for name in [*OUTPUTS, UNFINISHED] if (out / name).exists()]
    others = sorted(p.name for p in out.iterdir() if p not in ours)
    unfinished, finished = (out / UNFINISHED).exists(), (out / "meta.csv").exists()
    if others or not (unfinished or finished):
        raise SystemExit(f"error: --out {out} is not empty and holds files this script did not write "
                         f"({', '.join(others[:5]) or ', '.join(p.name for p in ours)}); choose another folder")
    if finished and not unfinished and not overwrite:
        raise SystemExit(f"error: --out {out} already holds a dataset; pass --overwrite to replace it")
    if unfinished:
        print(f"replacing the unfinished dataset in {out}", flush=True)
    return ours


def prepare_out(out: Path, stale: list[Path]) -> None:
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / UNFINISHED).write_text("make_synthetic_dataset.py is writing here; meta.csv comes last\n")
    for name in LABELS:
        (out / name).mkdir()


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def load_context():
    """Face-source keypoints (one detection per source), the speech catalog and the TTS program; asset errors exit."""
    from scripts.synth.faces import detect_sources
    from scripts.synth.render import Context
    from shards.assets import flite_binary, speech_manifest
    from shards.faces import FaceDetector

    try:
        manifest = speech_manifest()
        flite_binary()
        with quiet_stderr():  # the TFLite runtime logs a few harmless lines on the first detection
            detector = FaceDetector()
            try:
                sources = detect_sources(detector)
            finally:
                detector.close()
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error}") from None
    with open(manifest, newline="") as f:
        rates = {row["voice"]: int(row["sample_rate"]) for row in csv.DictReader(f)}
    return Context(sources=sources, speech_dir=manifest.parent, voice_rates=rates), read_catalog(manifest)


def generate(specs: list[VideoSpec], out: Path, context, workers: int) -> int:
    """Render every video, one task per identity (largest first, for load balance); returns the total bytes."""
    from tqdm import tqdm

    from scripts.synth.render import init_worker, render_group

    groups: dict[str, list[VideoSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.identity.name, []).append(spec)
    cost = {name: sum(s.nuisance.width * s.nuisance.height * s.nuisance.frames for s in group)
            for name, group in groups.items()}
    order = [groups[name] for name in sorted(groups, key=lambda name: (-cost[name], name))]
    total = 0
    with tqdm(total=len(specs), desc="synthetic videos", unit="video") as bar:
        if workers == 1:
            init_worker(context)
            for group in order:
                total += sum(size for _, size in render_group(group, str(out)))
                bar.update(len(group))
            return total
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")  # inherited by the workers: one core each
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=init_worker,
                                 initargs=(context,)) as pool:
            futures = [pool.submit(render_group, group, str(out)) for group in order]
            for future in as_completed(futures):
                done = future.result()
                total += sum(size for _, size in done)
                bar.update(len(done))
    return total


def write_csvs(specs: list[VideoSpec], out: Path) -> None:
    for split, labels in LABELS.items():
        write_labels(out / labels, sorted((s.name, s.target) for s in specs if s.split == split))
    rows = [s.meta_row() for s in sorted(specs, key=lambda s: (s.split, s.name))]
    with open(out / "meta.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plan(seed: int, videos: int, catalog: Catalog, sources: dict, shares: tuple[float, ...]) -> list[VideoSpec]:
    lfw_faces = sorted(int(b[3:]) for b in sources if b.startswith("lfw"))
    return plan_dataset(seed, videos, catalog, lfw_faces, shares)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    stale = check_out(args.out, args.overwrite)
    context, catalog = load_context()
    try:
        specs = plan(args.seed, args.videos, catalog, context.sources, args.shares)
    except ValueError as error:  # e.g. shares that leave a split without a genuine and a fake video
        raise SystemExit(f"error: {error}") from None
    prepare_out(args.out, stale)
    total = generate(specs, args.out, context, min(args.workers, len(specs)))
    write_csvs(specs, args.out)
    (args.out / UNFINISHED).unlink()
    counts = {split: sum(s.split == split for s in specs) for split in LABELS}
    print(f"wrote {len(specs)} videos ({', '.join(f'{k} {v}' for k, v in counts.items())}, "
          f"{sum(s.target for s in specs)} fake) to {args.out}: {total / 1e6:.1f} MB in "
          f"{time.time() - started:.1f} s with {args.workers} worker(s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
