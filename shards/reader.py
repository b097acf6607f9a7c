"""The one reader of packed shards, shared by training and inference-time evaluation.

    from shards.reader import list_shards, make_dataset, class_counts

    urls = list_shards("runs/shards/train")           # OUTDIR (its manifest.json), a .tar, a brace pattern or a list
    data = make_dataset(urls, mode="eval", rank=r, world_size=w)   # every sample exactly once per epoch
    data = make_dataset(urls, mode="train", seed=0, epoch=e, shuffle_buffer=1000, balance=True,
                        rank=r, world_size=w)         # infinite; the caller batches it and uses .with_epoch(steps)
    class_counts("runs/shards/train")                 # {0: n_real, 1: n_fake} of the packed samples

``make_dataset(urls, *, mode="eval", seed=0, epoch=0, shuffle_buffer=0, balance=False, rank=None,
world_size=None, counts=None, decode=True) -> webdataset.DataPipeline`` yields ``shards.format.decode`` dicts:
frames uint8 [T,3,S,S], mouths uint8 [T,3,M,M], audio float32 [N], label (int, -1 unknown), key (the video file
name), has_face, has_audio, meta (the sample json). ``decode=False`` yields the raw members instead (bytes per extension).
``only_label=0`` keeps the genuine samples alone (chosen before they are decoded).

Splitting. ``rank``/``world_size`` default to torch.distributed when it is initialised, else 0/1; DataLoader
workers are read from ``torch.utils.data.get_worker_info()``. There are rank x workers consumers ("slots").
  eval  : each shard goes to one slot (shard i -> slot i mod slots) so every sample is read exactly once per
          epoch across all ranks and workers; when there are fewer shards than slots, every slot reads all shards
          and keeps samples i mod slots instead (still exactly once; nobody gets nothing unless there are fewer
          samples than slots). Order is deterministic. ``shuffle_buffer`` > 0 shuffles within each slot (seeded
          by seed, epoch, rank, worker).
  train : infinite. Each slot draws shards with replacement from a generator seeded by (seed, epoch, rank,
          worker), optionally keeps samples by class with probability min_count / count[class] (``balance``:
          classes come out about 50/50; counts from ``counts`` or the shards' stats/manifest), then shuffles
          through a ``shuffle_buffer``. Same arguments and worker count -> same stream.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset

from shards.format import decode as decode_sample
from shards.layout import MANIFEST_FILE, OPTIONS_FILE, read_json, stats_path

REMOTE_PREFIXES = ("http://", "https://", "pipe:", "s3://", "gs://", "hf://")


# --- shard lists ----------------------------------------------------------------------------------------------
def list_shards(path_or_urls: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard URLs from an OUTDIR (its manifest.json), a manifest file, a .tar, a brace pattern
    (``dir/shard-{000000..000009}.tar``) or a list of any of these. A folder without a manifest gives its .tar
    files sorted; a multi-part folder that was not merged is an error that says to run ``shards.merge``."""
    if isinstance(path_or_urls, (list, tuple)):
        return [u for item in path_or_urls for u in list_shards(item)]
    text = str(path_or_urls)
    if text.startswith(REMOTE_PREFIXES):
        return list(wds.shardlists.expand_urls(text))
    if "{" in text:
        return [u for part in wds.shardlists.expand_urls(text) for u in list_shards(part)]
    path = Path(text)
    if path.is_dir():
        manifest = path / MANIFEST_FILE
        if manifest.exists():
            return _manifest_shards(manifest)
        if (path / OPTIONS_FILE).exists():
            raise FileNotFoundError(f"{path} has no {MANIFEST_FILE}: its parts are not complete or not merged; run "
                                    f"`python -m shards.merge {path}` (it lists what is missing)")
        return sorted(str(p) for p in path.glob("*.tar"))
    if path.name.endswith(".json") and path.is_file():
        return _manifest_shards(path)
    if not path.exists():
        raise FileNotFoundError(f"no shards at {path}: pass an OUTDIR of `python -m shards.pack`, a .tar or a list")
    return [str(path)]


def _manifest_shards(manifest: Path) -> list[str]:
    return [str(manifest.parent / s["name"]) for s in read_json(manifest)["shards"]]


def class_counts(path_or_urls: str | Path | Sequence[str | Path]) -> dict[int, int]:
    """{label: packed samples} (unlabeled samples not counted): from the manifest of an OUTDIR, else from each
    local shard's ``_stats.json``, else by reading the ``.cls`` members of the shards."""
    if not isinstance(path_or_urls, (list, tuple)) and Path(str(path_or_urls), MANIFEST_FILE).is_file():
        summary = read_json(Path(str(path_or_urls), MANIFEST_FILE))["summary"]
        return {int(k): int(v) for k, v in summary["class_counts"].items()}
    counts: dict[int, int] = {}
    for url in list_shards(path_or_urls):
        stats = stats_path(Path(url)) if not url.startswith(REMOTE_PREFIXES) else None
        if stats is not None and stats.is_file():
            for k, v in read_json(stats)["labels"].items():
                counts[int(k)] = counts.get(int(k), 0) + int(v)
            continue
        for sample in wds.tariterators.tarfile_samples([{"url": url}]):
            label = _raw_label(sample)
            if label >= 0:
                counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


def _raw_label(sample: dict) -> int:
    if "cls" in sample:
        return int(sample["cls"])
    if "json" in sample:
        label = json.loads(sample["json"]).get("label")
        return -1 if label is None else int(label)
    return -1


# --- splitting ------------------------------------------------------------------------------------------------
def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        return rank, world_size
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return (dist.get_rank() if rank is None else rank), (dist.get_world_size() if world_size is None
                                                                 else world_size)
    except ImportError:
        pass
    return (rank or 0), (world_size or 1)


def worker_slot() -> tuple[int, int]:
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def stream_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class _EvalSource(IterableDataset):
    """Raw samples of this (rank, worker) slot: exactly once across slots (see the module doc)."""

    def __init__(self, urls: list[str], rank: int, world_size: int):
        super().__init__()
        self.urls, self.rank, self.world_size = urls, rank, world_size

    def __iter__(self) -> Iterator[dict]:
        worker, workers = worker_slot()
        slots, slot = self.world_size * workers, self.rank * workers + worker
        if len(self.urls) >= slots:
            yield from _read(self.urls[slot::slots])
        else:
            yield from itertools.islice(_read(self.urls), slot, None, slots)


class _TrainSource(IterableDataset):
    """Endless raw samples from shards drawn with replacement, seeded per (seed, epoch, rank, worker)."""

    def __init__(self, urls: list[str], seed: int, epoch: int, rank: int):
        super().__init__()
        self.urls, self.seed, self.epoch, self.rank = urls, seed, epoch, rank

    def __iter__(self) -> Iterator[dict]:
        worker, _ = worker_slot()
        rng = random.Random(stream_seed(self.seed, self.epoch, self.rank, worker, 1))
        while True:
            yield from _read([rng.choice(self.urls)])


def _read(urls: list[str]) -> Iterator[dict]:
    return wds.tariterators.tarfile_samples({"url": u} for u in urls)


# --- stages ---------------------------------------------------------------------------------------------------
def _balance(samples: Iterator[dict], counts: dict[int, int], rng: random.Random) -> Iterator[dict]:
    present = {k: v for k, v in counts.items() if v > 0}
    smallest = min(present.values())
    keep = {k: smallest / v for k, v in present.items()}
    for sample in samples:
        p = keep.get(_raw_label(sample), 1.0)
        if p >= 1.0 or rng.random() < p:
            yield sample


def _shuffle(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


class _Seeded:
    """A stage whose RNG is created per iteration from (seed, epoch, rank, worker, salt)."""

    def __init__(self, fn, seed: int, epoch: int, rank: int, salt: int, **kwargs):
        self.fn, self.seed, self.epoch, self.rank, self.salt, self.kwargs = fn, seed, epoch, rank, salt, kwargs

    def __call__(self, samples: Iterator[dict]) -> Iterator[dict]:
        worker, _ = worker_slot()
        rng = random.Random(stream_seed(self.seed, self.epoch, self.rank, worker, self.salt))
        return self.fn(samples, rng=rng, **self.kwargs)


def _decode_all(samples: Iterator[dict]) -> Iterator[dict]:
    for sample in samples:
        yield decode_sample(sample)


def make_dataset(urls: str | Path | Sequence[str | Path], *, mode: str = "eval", seed: int = 0, epoch: int = 0,
                 shuffle_buffer: int = 0, balance: bool = False, rank: int | None = None,
                 world_size: int | None = None, counts: dict[int, int] | None = None,
                 decode: bool = True, only_label: int | None = None) -> wds.DataPipeline:
    """A WebDataset pipeline over packed shards; see the module doc for the modes and the splitting rules."""
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
    shard_urls = list_shards(urls)
    if not shard_urls:
        raise FileNotFoundError(f"no shards in {urls}: pack them with `python -m shards.pack`")
    rank, world_size = resolve_rank(rank, world_size)
    if mode == "eval":
        stages: list = [_EvalSource(shard_urls, rank, world_size)]
    else:
        stages = [_TrainSource(shard_urls, seed, epoch, rank)]
        if balance:
            counts = counts if counts is not None else class_counts(urls)
            if len([v for v in counts.values() if v > 0]) < 2:
                raise ValueError(f"balance=True needs samples of two classes, the shards have {counts}")
            stages.append(_Seeded(_balance, seed, epoch, rank, 2, counts=counts))
    if only_label is not None:
        stages.append(wds.filters.select(lambda sample: _raw_label(sample) == only_label))
    if shuffle_buffer > 0:
        stages.append(_Seeded(_shuffle, seed, epoch, rank, 3, size=shuffle_buffer))
    if decode:
        stages.append(_decode_all)
    return wds.DataPipeline(*stages)
