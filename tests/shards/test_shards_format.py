"""The shard sample format (shards.format): the crops of a kind travel as one bundle member, and samples that are
damaged or of an older format are refused with the repack command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shards.format import FRAMES_EXT, MOUTHS_EXT, bundle_jpegs, decode, decode_faces, unbundle_jpegs
from tests.train.conftest import FRAMES, make_sample


def test_a_bundle_gives_back_its_files_byte_for_byte():
    files = [b"\xff\xd8first\xff\xd9", b"", bytes(range(256)) * 3]
    assert [bytes(f) for f in unbundle_jpegs(bundle_jpegs(files))] == files
    assert unbundle_jpegs(bundle_jpegs([])) == []


@pytest.mark.parametrize("damage", ["truncated", "too long", "no header"])
def test_a_damaged_bundle_is_refused(damage):
    data = bundle_jpegs([b"a" * 10, b"b" * 20])
    broken = {"truncated": data[:-1], "too long": data + b"x", "no header": data[:3]}[damage]
    with pytest.raises(ValueError, match=".jpgs member"):
        unbundle_jpegs(broken)


def test_decode_reads_every_crop_and_decode_faces_the_chosen_ones():
    raw = make_sample(0, 1, np.random.default_rng(0))
    sample = decode(raw)
    assert tuple(sample["frames"].shape)[0] == tuple(sample["mouths"].shape)[0] == FRAMES
    chosen = decode_faces(raw, [FRAMES - 1, 0])
    assert np.array_equal(chosen, sample["frames"][[FRAMES - 1, 0]].permute(0, 2, 3, 1).numpy())


def test_a_bundle_that_disagrees_with_the_json_names_the_member_and_the_fix():
    raw = make_sample(0, 0, np.random.default_rng(0))
    raw[MOUTHS_EXT] = bundle_jpegs([bytes(crop) for crop in unbundle_jpegs(raw[MOUTHS_EXT])][:-1])
    with pytest.raises(ValueError, match=rf"member .{MOUTHS_EXT}: {FRAMES - 1} images where its json says {FRAMES} "
                                         r"frames; the shard is damaged: repack"):
        decode(raw)


def test_format_2_samples_with_a_member_per_crop_are_refused_with_the_repack_command():
    raw = make_sample(0, 0, np.random.default_rng(0))
    old = {k: v for k, v in raw.items() if k not in (FRAMES_EXT, MOUTHS_EXT)}
    for kind, ext in (("f", FRAMES_EXT), ("m", MOUTHS_EXT)):
        old.update({f"{kind}{i:03d}.jpg": bytes(crop) for i, crop in enumerate(unbundle_jpegs(raw[ext]))})
    old["json"] = json.dumps({**json.loads(raw["json"]), "format": 2}).encode()
    with pytest.raises(ValueError, match=r"is shard format 2, this code reads format 3 .* `python -m shards.pack`"):
        decode(old)
