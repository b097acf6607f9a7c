"""The training data: shard folders -> loaders of augmented batches (training) and exact-once batches (validation).

Batches are made by the model library's ``models.batch.prepare`` / ``collate``, which inference uses too; training
adds augmentation (``train.augment``) through ``prepare``'s ``augment`` hook, drawing only from a per-sample RNG.

The loaders own sharding and epoch length: a training epoch is a fixed number of batches drawn from an infinite
resampled stream (identical on all ranks, so DDP never waits on an exhausted rank); batches are made in the
workers with RNGs seeded from (seed, epoch, rank, worker, sample index), so a resumed run can skip to the exact
batch without running augmentation for the skipped ones.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from competition import CATEGORIES
from models.batch import Augment, collate, prepare, time_views
from shards import reader
from train.augment import (
    augment_audio,
    augment_frames,
    mouth_hold,
    self_blend,
    self_vocode,
    temporal_keep_mask,
)
from train.config import AugmentConfig, Config, ConfigError, load_config

log = logging.getLogger(__name__)


def augmenter(aug: AugmentConfig, rng: np.random.Generator) -> Augment:
    """``prepare``'s augment hook: face crops, mouth crops (their own draws), audio, then the temporal crop, all
    drawn from ``rng``."""
    def images(x: torch.Tensor) -> torch.Tensor:
        hwc = x.permute(0, 2, 3, 1).contiguous().numpy()  # torch's transpose: several times numpy's speed
        return torch.from_numpy(augment_frames(hwc, aug, rng)).permute(0, 3, 1, 2)

    def apply(frames: torch.Tensor, mouths: torch.Tensor,
              audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
        frames, mouths = images(frames).contiguous(), images(mouths).contiguous()
        audio = augment_audio(audio, aug, rng)
        return frames, mouths, audio, temporal_keep_mask(frames.shape[0], aug, rng)

    return apply


def prepare_train(sample: dict, cfg: Config, rng: np.random.Generator) -> dict:
    """``prepare`` with the config's augmentation (none when data.augment.enabled is false), after turning a
    genuine clip into a pseudo-fake with chance data.augment.self_blend (a self-blended face), self_vocode (a
    vocoded copy of its audio) or mouth_hold (its mouth held for 2-3 frames at a time)."""
    aug = cfg.data.augment
    if not aug.enabled:
        return prepare(sample, cfg.data)
    if aug.self_blend + aug.self_vocode + aug.mouth_hold > 0 and sample.get("label") == 0:
        draw = rng.random()
        has_face, has_audio = sample.get("has_face", True), sample.get("has_audio", True)
        if draw < aug.self_blend and has_face:
            sample = self_blended(sample, rng)
        elif aug.self_blend <= draw < aug.self_blend + aug.self_vocode and has_audio:
            sample = self_vocoded(sample, rng)
        elif 0 <= draw - aug.self_blend - aug.self_vocode < aug.mouth_hold and has_face:
            sample = mouth_held(sample, cfg.data.window_frames, rng)
    return prepare(sample, cfg.data, augment=augmenter(aug, rng))


VISUAL_FAKE = next(c for c, kinds in CATEGORIES.items() if kinds == (1, 0))
AUDIO_FAKE = next(c for c, kinds in CATEGORIES.items() if kinds == (0, 1))


def self_blended(sample: dict, rng: np.random.Generator) -> dict:
    """A genuine reader sample -> the same clip with a self-blended face (``train.augment.self_blend``), labelled
    a visual fake with genuine audio."""
    frames, mouths = self_blend(_channels_last(sample["frames"]), _channels_last(sample["mouths"]), rng)
    return _pseudo_fake(sample, "self_blend", VISUAL_FAKE, frames=_channels_first(frames),
                        mouths=_channels_first(mouths))


def mouth_held(sample: dict, window_frames: int, rng: np.random.Generator) -> dict:
    """A genuine reader sample -> the same clip with its mouth held for 2-3 frames at a time
    (``train.augment.mouth_hold``), labelled a visual fake with genuine audio."""
    frames, mouths = mouth_hold(_channels_last(sample["frames"]), _channels_last(sample["mouths"]), window_frames, rng)
    return _pseudo_fake(sample, "mouth_hold", VISUAL_FAKE, frames=_channels_first(frames),
                        mouths=_channels_first(mouths))


def _channels_last(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


def _channels_first(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def self_vocoded(sample: dict, rng: np.random.Generator) -> dict:
    """A genuine reader sample -> the same clip with vocoded audio (``train.augment.self_vocode``), labelled an
    audio fake with genuine video."""
    audio = np.asarray(sample["audio"], dtype=np.float32).reshape(-1)
    return _pseudo_fake(sample, "self_vocode", AUDIO_FAKE, audio=self_vocode(audio, rng))


def _pseudo_fake(sample: dict, kind: str, category: str, **changed) -> dict:
    """Labelled fake; its lips and voice stay in sync, so the synchrony loss keeps reading it (``pseudo_fake``: the
    augmentation that made it)."""
    meta = {**(sample.get("meta") or {}), "category": category, "pseudo_fake": kind}
    return {**sample, **changed, "label": 1, "meta": meta}


# --- shards ---------------------------------------------------------------------------------------------------
def pack_arguments(config: Config | str | Path, split: str = "train") -> list[str]:
    """The ``python -m shards.pack`` options that pack the clips a config (or a config file) reads: the options
    inference extracts with (``InputConfig.extract_options``). For the ``val`` split each clip holds
    ``score.time_views`` times the windows, the clips inference scores, so that validation fits the score rule
    on the outputs inference averages (``validation_views``)."""
    cfg = config if isinstance(config, Config) else load_config(config)
    if split not in PACK_SPLITS:
        raise ValueError(f"pack arguments for split {split!r}: one of {list(PACK_SPLITS)}")
    options = cfg.data.extract_options()
    windows = options.windows * (cfg.score.time_views if split == "val" else 1)
    return ["--windows", str(windows), "--window-frames", str(options.window_frames), "--fps",
            str(options.fps), "--size", str(options.size), "--mouth-size", str(options.mouth_size), "--margin",
            str(options.margin), "--mouth-scale", str(options.mouth_scale), "--max-clip-seconds",
            str(options.max_clip_seconds)] + (["--native-rate"] if options.native_rate else [])


def shard_urls(directory: str | Path | None, what: str) -> list[str]:
    """The .tar shards of a folder (through shards.reader), or a clear error."""
    if directory is None:
        raise FileNotFoundError(f"no {what} shards given: pass --{what}-shards DIR or set data.{what}_shards")
    try:
        urls = reader.list_shards(directory)
    except (FileNotFoundError, ValueError) as error:
        raise FileNotFoundError(f"{what} shards: {error}") from error
    if not urls:
        raise FileNotFoundError(f"{what} shards: no .tar shard in {directory}; pack them with `python -m shards.pack`")
    return urls


PACK_SPLITS = ("train", "val")
CLIP_OPTIONS = ("windows", "window_frames", "fps", "size", "mouth_size", "margin", "mouth_scale", "native_rate")


def check_shards_match(urls: list[str], cfg: Config, what: str, views: int = 1) -> dict:
    """Read the first sample: the shards' clip options (format, windows, frames, fps, crop sizes, margins) must
    be the config's (``views`` x ``data.windows`` windows), or a ConfigError says how to repack. Returns its meta."""
    meta = _first_meta(urls, what)
    _require_options(meta, cfg, what, views)
    return meta


def _require_options(meta: dict, cfg: Config, what: str, views: int) -> None:
    differ, packed, wanted = _differing_options(meta, cfg, views)
    if differ:
        said = {k: f"data.{k}={wanted[k]}" for k in differ}
        if "windows" in said and views > 1:
            said["windows"] = f"data.windows x score.time_views = {wanted['windows']} windows"
        raise ConfigError(f"{what} shards were packed with {', '.join(f'{k}={packed[k]}' for k in differ)} but the "
                          f"config says {', '.join(said.values())}: repack with "
                          f"`python -m shards.pack ... $(python -m train --config CONFIG --pack-args {what})` or "
                          "override the data section to match the shards (inference extracts with the config's "
                          "options)")


def _first_meta(urls: list[str], what: str) -> dict:
    dataset = reader.make_dataset(urls, mode="eval", seed=0, epoch=0, shuffle_buffer=0, balance=False, rank=0,
                                  world_size=1)
    try:
        sample = next(iter(dataset), None)
    except ValueError as error:  # e.g. shards of an older format
        raise ConfigError(f"{what} shards: {error}") from error
    if sample is None:
        raise FileNotFoundError(f"{what} shards {urls[0]}...: no samples")
    return sample["meta"]


def _differing_options(meta: dict, cfg: Config, views: int) -> tuple[list[str], dict, dict]:
    """The clip options in which a packed sample's meta differs from the config's clips of ``views`` views, with
    the packed and the wanted values."""
    packed = {k: meta.get(k) for k in CLIP_OPTIONS}
    packed["native_rate"] = bool(packed["native_rate"])  # shards packed before the option: fixed rate
    wanted = {k: getattr(cfg.data, k) for k in CLIP_OPTIONS} | {"windows": cfg.data.windows * views}
    compared = [k for k in CLIP_OPTIONS if not (k == "fps" and cfg.data.native_rate)]  # fps: each video's own
    differ = [k for k in compared if packed[k] is None or abs(float(packed[k]) - float(wanted[k])) > 1e-6]
    return differ, packed, wanted


def validation_views(urls: list[str], cfg: Config) -> int:
    """How many time views validation reads per clip: ``score.time_views`` when the validation shards were packed
    with ``--pack-args val`` (the clips inference scores), so that the score rule is fitted on the view-averaged
    outputs inference combines; 1 for shards of the training clips' windows (a warning says how to repack). A
    ConfigError, naming what inference reads, for anything else."""
    views = cfg.score.time_views
    meta = _first_meta(urls, "val")
    if views > 1 and _differing_options(meta, cfg, views)[0] and not _differing_options(meta, cfg, 1)[0]:
        log.warning("the validation shards hold clips of data.windows=%d windows while inference averages "
                    "score.time_views=%d views of them: validation reads single clips, so the score rule is "
                    "fitted on single clips' outputs; repack them with `--pack-args val` to validate what "
                    "inference scores", cfg.data.windows, views)
        return 1
    _require_options(meta, cfg, "val", views)
    return views


def count_samples(directory: str | Path) -> dict[int, int]:
    """{label: number of samples} of a shard folder (shards.reader.class_counts)."""
    counts = reader.class_counts(directory)
    return {int(k): int(v) for k, v in dict(counts).items()}


def steps_per_epoch(cfg: Config, n_train: int, world_size: int) -> int:
    if cfg.train.steps_per_epoch > 0:
        return cfg.train.steps_per_epoch
    per_step = cfg.train.batch_size * cfg.train.grad_accum * world_size
    return max(1, math.ceil(n_train / per_step))


# --- streams --------------------------------------------------------------------------------------------------
def _worker_init(_: int) -> None:
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


class TrainStream(IterableDataset):
    """Infinite batches of augmented training samples for one rank and epoch; the first ``skip_batches`` of
    this rank's batch sequence are skipped (resume) without augmenting them."""

    def __init__(self, urls: list[str], cfg: Config, epoch: int, rank: int, world_size: int, skip_batches: int = 0,
                 counts: dict[int, int] | None = None):
        super().__init__()
        self.urls, self.cfg, self.epoch = urls, cfg, epoch
        self.rank, self.world_size, self.skip_batches, self.counts = rank, world_size, skip_batches, counts

    def __iter__(self) -> Iterator[dict]:
        worker, workers = reader.worker_slot()
        # The DataLoader takes batch j from worker j % workers, so this worker's share of the skipped batches is:
        skip = max(0, math.ceil((self.skip_batches - worker) / workers))
        cfg, bs = self.cfg, self.cfg.train.batch_size
        dataset = reader.make_dataset(self.urls, mode="train", seed=cfg.train.seed, epoch=self.epoch,
                               shuffle_buffer=cfg.data.shuffle_buffer, balance=cfg.data.balance, rank=self.rank,
                               world_size=self.world_size, counts=self.counts)
        batch: list[dict] = []
        for index, sample in enumerate(dataset):
            if index < skip * bs:
                continue
            rng = np.random.default_rng([cfg.train.seed, self.epoch, self.rank, worker, index])
            batch.append(prepare_train(sample, cfg, rng))
            if len(batch) == bs:
                yield collate(batch)
                batch = []
        raise RuntimeError("the training stream ended; shards.reader.make_dataset(mode='train') must be infinite")


class EvalStream(IterableDataset):
    """Every sample of this rank's share of the shards exactly once, eval transform, in batches; a sample of
    ``views`` x ``data.windows`` windows becomes its ``views`` time views (``models.batch.time_views``), each a
    batch row with the sample's key."""

    def __init__(self, urls: list[str], cfg: Config, rank: int, world_size: int, views: int = 1):
        super().__init__()
        self.urls, self.cfg, self.rank, self.world_size, self.views = urls, cfg, rank, world_size, views

    def __iter__(self) -> Iterator[dict]:
        dataset = reader.make_dataset(self.urls, mode="eval", seed=self.cfg.train.seed, epoch=0, shuffle_buffer=0,
                               balance=False, rank=self.rank, world_size=self.world_size)
        batch: list[dict] = []
        for sample in dataset:
            for view in time_views(sample, self.views):
                batch.append(prepare(view, self.cfg.data))
                if len(batch) == self.cfg.train.eval_batch_size:
                    yield collate(batch)
                    batch = []
        if batch:
            yield collate(batch)


def make_loader(dataset: IterableDataset, workers: int, seed: int) -> DataLoader:
    # An own generator: creating the iterator must not draw from the global torch RNG (exact resume).
    return DataLoader(dataset, batch_size=None, num_workers=workers, worker_init_fn=_worker_init,
                      generator=torch.Generator().manual_seed(seed), pin_memory=torch.cuda.is_available(),
                      persistent_workers=False, prefetch_factor=2 if workers > 0 else None)


def train_loader(urls: list[str], cfg: Config, epoch: int, rank: int, world_size: int, skip_batches: int = 0,
                 counts: dict[int, int] | None = None) -> DataLoader:
    """Batches of one training epoch (the caller takes steps_per_epoch * grad_accum of them)."""
    return make_loader(TrainStream(urls, cfg, epoch, rank, world_size, skip_batches, counts), cfg.data.workers,
                   seed=cfg.train.seed + epoch)


def eval_loader(urls: list[str], cfg: Config, rank: int, world_size: int, views: int = 1) -> DataLoader:
    return make_loader(EvalStream(urls, cfg, rank, world_size, views), cfg.data.workers, seed=cfg.train.seed)
