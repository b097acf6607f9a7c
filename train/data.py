"""Samples -> model batches, for training and inference alike.

``prepare(sample, cfg, train, rng)`` turns one reader sample (``shards.reader`` / ``shards.format.decode``
output) into fixed-shape tensors: augmentation when ``train`` (drawing only from ``rng``), the deterministic
eval transform otherwise. ``collate(list) -> batch`` stacks them. Inference imports both, so training and
inference see identical inputs.

Batch keys: ``frames`` uint8 [B,T,3,S,S]; ``audio`` float32 [B,L] (zero-padded to L = max_clip_seconds*16k);
``audio_length`` int64 [B]; ``visual_mask`` / ``audio_mask`` bool [B,T] (valid tokens: the modality exists, the
frame has a face box, and the time step survived a temporal crop); ``has_face`` / ``has_audio`` bool [B];
``label`` int64 [B] (-1 unknown); ``audio_label`` / ``visual_label`` int64 [B] (per-modality fakeness when the
sample's meta names a FakeAVCeleb category, else -1); ``key`` list[str].

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
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from train.augment import augment_audio, augment_frames, temporal_keep_mask
from train.config import AUDIO_SAMPLE_RATE, Config, ConfigError

log = logging.getLogger(__name__)

CATEGORY_LABELS = {  # FakeAVCeleb category -> (visual fake, audio fake)
    "RealVideo-RealAudio": (0, 0),
    "FakeVideo-RealAudio": (1, 0),
    "RealVideo-FakeAudio": (0, 1),
    "FakeVideo-FakeAudio": (1, 1),
}


def audio_samples(cfg: Config) -> int:
    return int(round(cfg.data.max_clip_seconds * AUDIO_SAMPLE_RATE))


# --- one sample ----------------------------------------------------------------------------------------------
def prepare(sample: dict, cfg: Config, train: bool = False, rng: np.random.Generator | None = None,
            check_shape: bool = True) -> dict:
    """A reader sample -> per-sample tensors (see the module doc). ``rng`` is required when ``train``."""
    frames = torch.as_tensor(sample["frames"])
    key = sample.get("key", "?")
    t = frames.shape[0]
    if check_shape and (t != cfg.data.frames or tuple(frames.shape[1:]) != (3, cfg.data.size, cfg.data.size)):
        raise ValueError(f"sample {key}: frames {tuple(frames.shape)} but the config expects "
                         f"[{cfg.data.frames}, 3, {cfg.data.size}, {cfg.data.size}] (data.frames, data.size): the "
                         "shards were packed with other extraction options; repack or fix the config")
    meta = sample.get("meta") or {}
    has_face, has_audio = bool(sample.get("has_face", True)), bool(sample.get("has_audio", True))
    audio = np.asarray(sample["audio"], dtype=np.float32).reshape(-1)
    length = audio_samples(cfg)
    if audio.size > length:  # a rounding sample or two; never a second of speech
        audio = audio[:length]
    if not has_audio:
        audio = audio[:0]
    keep = np.ones(t, dtype=bool)
    augment = train and cfg.data.augment.enabled
    if augment:
        if rng is None:
            raise ValueError("prepare(train=True) needs an rng (numpy Generator)")
        frames = torch.from_numpy(augment_frames(frames.permute(0, 2, 3, 1).numpy(), cfg.data.augment, rng)
                                  ).permute(0, 3, 1, 2).contiguous()
        audio = augment_audio(audio, cfg.data.augment, rng)
        keep = temporal_keep_mask(t, cfg.data.augment, rng)
    boxes = meta.get("boxes") or [True] * t
    face_in_frame = np.array([b is not None for b in boxes[:t]] + [True] * max(0, t - len(boxes)), dtype=bool)
    padded = np.zeros(length, dtype=np.float32)
    padded[:audio.size] = audio
    label = sample.get("label", -1)
    label = -1 if label is None else int(label)
    visual_label, audio_label = modality_labels(meta, label)
    return {
        "frames": frames.to(torch.uint8),
        "audio": torch.from_numpy(padded),
        "audio_length": audio.size,
        "visual_mask": torch.from_numpy(keep & face_in_frame & has_face),
        "audio_mask": torch.from_numpy(keep & (audio.size > 0)),
        "has_face": has_face,
        "has_audio": has_audio and audio.size > 0,
        "label": label,
        "visual_label": visual_label,
        "audio_label": audio_label,
        "key": sample.get("key") or meta.get("video_name", "?"),
    }


def modality_labels(meta: dict, label: int) -> tuple[int, int]:
    """(visual, audio) fakeness from a FakeAVCeleb category in the sample's meta; (-1, -1) when unknown."""
    if label == 0:
        return 0, 0
    category = meta.get("category") or (meta.get("source") or {}).get("category")
    return CATEGORY_LABELS.get(category, (-1, -1))


def collate(samples: list[dict]) -> dict:
    if not samples:
        raise ValueError("collate() got no samples")
    batch: dict = {}
    for name in ("frames", "audio", "visual_mask", "audio_mask"):
        batch[name] = torch.stack([s[name] for s in samples])
    for name in ("audio_length", "label", "visual_label", "audio_label"):
        batch[name] = torch.tensor([s[name] for s in samples], dtype=torch.int64)
    for name in ("has_face", "has_audio"):
        batch[name] = torch.tensor([s[name] for s in samples], dtype=torch.bool)
    batch["key"] = [s["key"] for s in samples]
    return batch


def to_device(batch: dict, device: torch.device | str) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# --- shards ---------------------------------------------------------------------------------------------------
def _reader():
    from shards import reader  # imported on use: inference needs prepare/collate only

    return reader


def extraction_options(cfg: Config):
    """The ``shards.extract.ExtractOptions`` of the config's data section (what inference extracts with)."""
    from shards.extract import ExtractOptions

    data = cfg.data
    return ExtractOptions(frames=data.frames, size=data.size, margin=data.margin,
                          max_clip_seconds=data.max_clip_seconds)


def pack_arguments(cfg: Config) -> list[str]:
    """The ``python -m shards.pack`` options that pack the same clips as ``extraction_options(cfg)``."""
    options = extraction_options(cfg)
    return ["--frames", str(options.frames), "--size", str(options.size), "--margin", str(options.margin),
            "--max-clip-seconds", str(options.max_clip_seconds)]


def shard_urls(directory: str | Path | None, what: str) -> list[str]:
    """The .tar shards of a folder (through shards.reader), or a clear error."""
    if directory is None:
        raise FileNotFoundError(f"no {what} shards given: pass --{what}-shards DIR or set data.{what}_shards")
    try:
        urls = _reader().list_shards(directory)
    except (FileNotFoundError, ValueError) as error:
        raise FileNotFoundError(f"{what} shards: {error}") from error
    if not urls:
        raise FileNotFoundError(f"{what} shards: no .tar shard in {directory}; pack them with `python -m shards.pack`")
    return urls


def check_shards_match(urls: list[str], cfg: Config, what: str) -> dict:
    """Read the first sample: the shards' (frames, size) must equal the config's. Returns its meta."""
    dataset = _reader().make_dataset(urls, mode="eval", seed=0, epoch=0, shuffle_buffer=0, balance=False, rank=0,
                           world_size=1)
    sample = next(iter(dataset), None)
    if sample is None:
        raise FileNotFoundError(f"{what} shards {urls[0]}...: no samples")
    meta = sample["meta"]
    if (meta.get("frames"), meta.get("size")) != (cfg.data.frames, cfg.data.size):
        raise ConfigError(f"{what} shards were packed with frames={meta.get('frames')} size={meta.get('size')} but the "
                          f"config says data.frames={cfg.data.frames} data.size={cfg.data.size}: repack with "
                          f"`python -m shards.pack --frames {cfg.data.frames} --size {cfg.data.size}` or override "
                          f"data.frames/data.size to match the shards")
    if "margin" in meta and abs(float(meta["margin"]) - cfg.data.margin) > 1e-6:
        raise ConfigError(f"{what} shards were packed with margin={meta['margin']} but the config says "
                          f"data.margin={cfg.data.margin}; make them agree (inference extracts with the config's)")
    return meta


def count_samples(directory: str | Path) -> dict[int, int]:
    """{label: number of samples} of a shard folder (shards.reader.class_counts)."""
    counts = _reader().class_counts(directory)
    return {int(k): int(v) for k, v in dict(counts).items()}


def steps_per_epoch(cfg: Config, n_train: int, world_size: int) -> int:
    if cfg.train.steps_per_epoch > 0:
        return cfg.train.steps_per_epoch
    per_step = cfg.train.batch_size * cfg.train.grad_accum * world_size
    return max(1, math.ceil(n_train / per_step))


# --- streams --------------------------------------------------------------------------------------------------
def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


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
        worker, workers = _worker()
        # The DataLoader takes batch j from worker j % workers, so this worker's share of the skipped batches is:
        skip = max(0, math.ceil((self.skip_batches - worker) / workers))
        cfg, bs = self.cfg, self.cfg.train.batch_size
        dataset = _reader().make_dataset(self.urls, mode="train", seed=cfg.train.seed, epoch=self.epoch,
                               shuffle_buffer=cfg.data.shuffle_buffer, balance=cfg.data.balance, rank=self.rank,
                               world_size=self.world_size, counts=self.counts)
        batch: list[dict] = []
        for index, sample in enumerate(dataset):
            if index < skip * bs:
                continue
            rng = np.random.default_rng([cfg.train.seed, self.epoch, self.rank, worker, index])
            batch.append(prepare(sample, cfg, train=True, rng=rng))
            if len(batch) == bs:
                yield collate(batch)
                batch = []
        raise RuntimeError("the training stream ended; shards.reader.make_dataset(mode='train') must be infinite")


class EvalStream(IterableDataset):
    """Every sample of this rank's share of the shards exactly once, eval transform, in batches."""

    def __init__(self, urls: list[str], cfg: Config, rank: int, world_size: int):
        super().__init__()
        self.urls, self.cfg, self.rank, self.world_size = urls, cfg, rank, world_size

    def __iter__(self) -> Iterator[dict]:
        dataset = _reader().make_dataset(self.urls, mode="eval", seed=self.cfg.train.seed, epoch=0, shuffle_buffer=0,
                               balance=False, rank=self.rank, world_size=self.world_size)
        batch: list[dict] = []
        for sample in dataset:
            batch.append(prepare(sample, self.cfg, train=False))
            if len(batch) == self.cfg.train.eval_batch_size:
                yield collate(batch)
                batch = []
        if batch:
            yield collate(batch)


def _loader(dataset: IterableDataset, workers: int, seed: int) -> DataLoader:
    # An own generator: creating the iterator must not draw from the global torch RNG (exact resume).
    return DataLoader(dataset, batch_size=None, num_workers=workers, worker_init_fn=_worker_init,
                      generator=torch.Generator().manual_seed(seed), pin_memory=torch.cuda.is_available(),
                      persistent_workers=False, prefetch_factor=2 if workers > 0 else None)


def train_loader(urls: list[str], cfg: Config, epoch: int, rank: int, world_size: int, skip_batches: int = 0,
                 counts: dict[int, int] | None = None) -> DataLoader:
    """Batches of one training epoch (the caller takes steps_per_epoch * grad_accum of them)."""
    return _loader(TrainStream(urls, cfg, epoch, rank, world_size, skip_batches, counts), cfg.data.workers,
                   seed=cfg.train.seed + epoch)


def eval_loader(urls: list[str], cfg: Config, rank: int, world_size: int) -> DataLoader:
    return _loader(EvalStream(urls, cfg, rank, world_size), cfg.data.workers, seed=cfg.train.seed)
