#!/usr/bin/env python
"""Generate the embedded synthetic audio-visual deepfake dataset in the competition format.

    python scripts/make_synthetic_dataset.py --out DIR --videos N --seed S [--workers W]

writes DIR/{train,val,test}/<32 hex>.mp4, DIR/{train,validation,test}_labels.csv (video_name,target; 1 = fake)
and DIR/meta.csv (split, FakeAVCeleb category, method and every generation parameter of each video; written
last, so its presence means the dataset is complete).

Genuine videos animate a real face photo as a talking head (head motion, blinks, mouth opening driven by the
loudness of real recorded speech, in sync). Fakes, balanced over methods within every split:
  face_swap    FakeVideo-RealAudio  another identity's inner face pasted in (seam, colour or resolution flaw)
  lip_sync     FakeVideo-RealAudio  mouth driven by a different utterance while the real audio plays
  av_offset    FakeVideo-RealAudio  mouth driven by the real audio shifted by 0.2-0.8 s (column av_offset)
  voice_synth  RealVideo-FakeAudio  vocoded / resynthesised speech, the mouth follows it
  swap_voice   FakeVideo-FakeAudio  face swap + vocoded speech, the mouth follows the fake audio
Duration, resolution, fps, audio rate and channels, leading silence and compression are drawn independently of
the label, so genuine and fake videos do not differ in them. Same seed -> byte-identical files.
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

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from synth.plan import (  # noqa: E402
    LFW_FACES,
    MIN_VIDEOS,
    SPLITS,
    TEXTURES,
    VideoSpec,
    plan_dataset,
    speech_catalog,
)

OUTPUTS = [name for name, _, _ in SPLITS] + [labels for _, labels, _ in SPLITS] + ["meta.csv"]
UNFINISHED = ".unfinished"
_CONTEXT = None  # per worker process: synth.render.Context


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (created; must be empty or hold an earlier dataset)")
    parser.add_argument("--videos", type=at_least(MIN_VIDEOS), default=200,
                        help=f"videos over all splits (60/20/20; at least {MIN_VIDEOS}: every split needs a "
                             "genuine and a fake video)")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical dataset")
    parser.add_argument("--workers", type=at_least(1), default=os.cpu_count() or 1,
                        help="parallel processes (default: all cores); the output does not depend on it")
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
    for name, _, _ in SPLITS:
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
    """Face-source keypoints (one detection per source photo) and the speech recordings; asset errors exit."""
    from shards.assets import asset_path, speech_files
    from shards.faces import FaceDetector
    from synth.faces import detect_sources
    from synth.render import Context

    try:
        speech = speech_files()
        for texture in TEXTURES:
            asset_path(f"media/backgrounds/{texture}.png")
        with quiet_stderr():  # the TFLite runtime logs a few harmless lines on the first detection
            detector = FaceDetector()
            try:
                sources = detect_sources(detector, LFW_FACES)
            finally:
                detector.close()
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error}") from None
    return Context(sources=sources, speech_dir=speech[0].parent), speech_catalog(speech)


def _init_worker(context) -> None:
    global _CONTEXT
    _CONTEXT = context


def _make(spec: VideoSpec, out: str) -> tuple[str, int]:
    from synth.render import make_video

    path = Path(out) / spec.split / spec.name
    return spec.name, make_video(spec, _CONTEXT, path)


def generate(specs: list[VideoSpec], out: Path, context, workers: int) -> int:
    """Render every video (largest first, for load balance); returns the total size in bytes."""
    from tqdm import tqdm

    order = sorted(specs, key=lambda s: -s.nuisance.width * s.nuisance.height * s.nuisance.frames)
    total = 0
    with tqdm(total=len(specs), desc="synthetic videos", unit="video") as bar:
        if workers == 1:
            _init_worker(context)
            for spec in order:
                total += _make(spec, str(out))[1]
                bar.update()
            return total
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")  # inherited by the workers: one core each
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(context,)) as pool:
            futures = [pool.submit(_make, spec, str(out)) for spec in order]
            for future in as_completed(futures):
                total += future.result()[1]
                bar.update()
    return total


def write_csvs(specs: list[VideoSpec], out: Path) -> None:
    for split, labels, _ in SPLITS:
        rows = sorted((s.name, s.target) for s in specs if s.split == split)
        with open(out / labels, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["video_name", "target"])
            writer.writerows(rows)
    rows = [s.meta_row() for s in sorted(specs, key=lambda s: (s.split, s.name))]
    with open(out / "meta.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    stale = check_out(args.out, args.overwrite)
    context, catalog = load_context()
    lfw_faces = sorted(int(b[3:]) for b in context.sources if b.startswith("lfw"))
    specs = plan_dataset(args.seed, args.videos, catalog, lfw_faces)
    prepare_out(args.out, stale)
    total = generate(specs, args.out, context, min(args.workers, len(specs)))
    write_csvs(specs, args.out)
    (args.out / UNFINISHED).unlink()
    counts = {split: sum(s.split == split for s in specs) for split, _, _ in SPLITS}
    print(f"wrote {len(specs)} videos ({', '.join(f'{k} {v}' for k, v in counts.items())}, "
          f"{sum(s.target for s in specs)} fake) to {args.out}: {total / 1e6:.1f} MB in "
          f"{time.time() - started:.1f} s with {args.workers} worker(s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
