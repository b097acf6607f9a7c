"""The reader: exactly once per epoch across ranks x DataLoader workers (eval), seeded infinite stream (train)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from torch.utils.data import DataLoader

from shards.reader import class_counts, list_shards, make_dataset
from tests.shards.conftest import GOOD_VIDEOS


def keys_seen(out, world_size: int, workers: int, **kwargs) -> list[str]:
    seen = []
    for rank in range(world_size):
        dataset = make_dataset(list_shards(out), mode="eval", rank=rank, world_size=world_size, **kwargs)
        loader = DataLoader(dataset, batch_size=None, num_workers=workers)
        seen += [sample["key"] for sample in loader]
    return seen


@pytest.mark.parametrize("fixture", ["packed_full", "packed_parts"])  # 3 shards < 4 slots; 6 shards >= 4 slots
def test_eval_sees_every_sample_once_across_2_ranks_x_2_workers(fixture, request):
    out = request.getfixturevalue(fixture)
    seen = keys_seen(out, world_size=2, workers=2)
    assert sorted(seen) == sorted(GOOD_VIDEOS)
    assert keys_seen(out, world_size=2, workers=2) == seen  # deterministic order: a second epoch is identical


def test_eval_with_shuffle_buffer_still_exactly_once(packed_full):
    seen = keys_seen(packed_full, world_size=2, workers=2, shuffle_buffer=3, seed=1)
    assert sorted(seen) == sorted(GOOD_VIDEOS)


def test_train_stream_is_infinite_seeded_and_balanced(packed_full):
    def draw(n, **kwargs):
        data = make_dataset(packed_full, mode="train", decode=False, rank=0, world_size=1, **kwargs)
        return [s["__key__"] for s in itertools.islice(iter(data), n)]

    first = draw(40, seed=3, epoch=0, shuffle_buffer=4)
    assert first == draw(40, seed=3, epoch=0, shuffle_buffer=4)
    assert first != draw(40, seed=3, epoch=1, shuffle_buffer=4)
    assert len(draw(200, seed=0)) == 200  # 6 samples, 200 draws: infinite
    fake = {n[:-4] for n, (label, _) in GOOD_VIDEOS.items() if label == 1}
    plain = Counter(k in fake for k in draw(1200, seed=5))
    balanced = Counter(k in fake for k in draw(1200, seed=5, balance=True))
    assert abs(plain[True] / 1200 - 1 / 3) < 0.06
    assert abs(balanced[True] / 1200 - 0.5) < 0.06


def test_train_ranks_and_workers_draw_different_streams(packed_full):
    def first_keys(rank, workers):
        data = make_dataset(packed_full, mode="train", rank=rank, world_size=2, decode=False, seed=0)
        loader = DataLoader(data, batch_size=None, num_workers=workers)
        return [s["__key__"] for s in itertools.islice(iter(loader), 24)]

    assert first_keys(0, 2) != first_keys(1, 2)
    assert first_keys(0, 2) == first_keys(0, 2)


def test_class_counts_from_manifest_stats_and_tars(packed_full):
    expected = {0: 4, 1: 2}
    assert class_counts(packed_full) == expected
    urls = list_shards(packed_full)
    assert class_counts(urls) == expected  # from the _stats.json files
    assert class_counts(f"{packed_full}/shard-p0000of0001-{{000000..000002}}.tar") == expected
    assert list_shards(urls[0]) == urls[:1]


def test_decoded_sample_types(packed_full):
    sample = next(iter(make_dataset(packed_full, rank=0, world_size=1)))
    assert set(sample) == {"frames", "mouths", "audio", "label", "key", "has_face", "has_audio", "meta"}
    assert isinstance(sample["label"], int) and isinstance(sample["key"], str) and sample["key"].endswith(".mp4")
