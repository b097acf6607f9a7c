"""The face encoder's self-blend pretraining stage (train.face_pretrain): its frame pairs and what it trains.
The stage inside `python -m train` (metrics.json, skipped on --resume) is covered by test_training.py."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import webdataset as wds

from models import create_model
from shards import reader
from tests.train.conftest import TINY_TEST_OVERRIDES, WINDOW_FRAMES, decoded, make_sample
from train.config import load_config
from train.face_pretrain import BlendPairs, clip_pairs, freeze_if_fixed, pretrain_face
from train.parts import build_optimizer

ROOT = Path(__file__).resolve().parents[2]
# what pretrain_face reads of an accelerate.Accelerator, on the CPU
CPU = SimpleNamespace(device=torch.device("cpu"), autocast=contextlib.nullcontext, is_main_process=True)


def config(*extra: str):
    return load_config(ROOT / "configs" / "tiny.yaml", [*TINY_TEST_OVERRIDES, "model.face_motion=true",
                                                        "train.face_pretrain.steps=3",
                                                        "train.face_pretrain.batch_size=4", *extra])


def raw_clip(index: int = 0, label: int = 0, **meta_changes) -> dict:
    """A sample's raw tar members (what the stage reads), its json changed by ``meta_changes``."""
    raw = make_sample(index, label, np.random.default_rng(index))
    raw["json"] = json.dumps({**json.loads(raw["json"]), **meta_changes}).encode()
    return raw


def faces(raw: dict) -> np.ndarray:
    return np.asarray(decoded(raw)["frames"])


def test_pairs_are_consecutive_frames_of_one_window_with_a_face():
    cfg = config("data.augment.enabled=false")
    cfg.train.face_pretrain.blend = 0.0  # no pair blended: each is the clip's own frames
    boxes = [[0, 0, 32, 32]] * 4
    boxes[2] = None  # window 1's first frame has no face: its pair (frames 2-3) is left out
    clip = raw_clip(0, boxes=boxes)
    pairs = clip_pairs(clip, cfg, np.random.default_rng(0))
    assert len(pairs) == 1 and pairs[0][1] == 0
    assert np.array_equal(pairs[0][0], faces(clip)[0:WINDOW_FRAMES])  # window 0: frames 0 and 1, never across
    assert clip_pairs(raw_clip(0, has_face=False), cfg, np.random.default_rng(0)) == []


def test_blended_pairs_are_labelled_and_differ_from_the_clip():
    cfg = config("data.augment.enabled=false", "train.face_pretrain.blend=0.999")
    clip = raw_clip(1)
    pairs = clip_pairs(clip, cfg, np.random.default_rng(0))
    frames = faces(clip)
    assert [label for _, label in pairs] == [1, 1]
    for (pair, _), start in zip(pairs, (0, 2), strict=True):
        assert pair.shape == frames[start:start + 2].shape and pair.dtype == np.uint8
        assert np.abs(pair.astype(int) - frames[start:start + 2]).mean() > 1


def test_visual_fakes_are_positives_never_blended_and_audio_fakes_blend_like_genuine_clips():
    cfg = config("data.augment.enabled=false", "train.face_pretrain.visual_fakes=true",
                 "train.face_pretrain.blend=0.999")
    visual_fake = raw_clip(2, 1, category="FakeVideo-RealAudio")
    pairs = clip_pairs(visual_fake, cfg, np.random.default_rng(0))
    assert [label for _, label in pairs] == [1, 1]
    assert np.array_equal(pairs[0][0], faces(visual_fake)[0:WINDOW_FRAMES])  # the fake's own frames
    audio_fake = raw_clip(3, 1, category="RealVideo-FakeAudio")
    pairs = clip_pairs(audio_fake, cfg, np.random.default_rng(0))
    assert [label for _, label in pairs] == [1, 1]
    assert np.abs(pairs[0][0].astype(int) - faces(audio_fake)[0:WINDOW_FRAMES]).mean() > 1  # blended
    cfg.train.face_pretrain.blend = 0.0
    assert [label for _, label in clip_pairs(audio_fake, cfg, np.random.default_rng(0))] == [0, 0]
    unknown = raw_clip(4, 1, category=None)  # a fake without a category: its faces are of unknown kind
    assert clip_pairs(unknown, cfg, np.random.default_rng(0)) == []


def test_old_shards_are_refused():
    cfg = config()
    with pytest.raises(ValueError, match="repack"):
        clip_pairs(raw_clip(0, format=1), cfg, np.random.default_rng(0))


def test_stream_reads_genuine_clips_only(tiny_shards):
    cfg = config("train.face_pretrain.pairs_per_clip=1")
    urls = reader.list_shards(tiny_shards["train"])
    genuine = sum(1 for s in reader.make_dataset(urls, only_label=0))
    assert genuine == 8 and all(s["label"] == 0 for s in reader.make_dataset(urls, only_label=0))
    pairs, labels = next(iter(BlendPairs(urls, cfg)))
    assert pairs.shape == (4, 2, 3, cfg.data.size, cfg.data.size) and pairs.dtype == torch.uint8
    assert set(labels.tolist()) <= {0.0, 1.0}


def test_stream_with_visual_fakes_reads_every_clip_with_a_known_category(tmp_path):
    cfg = config("data.augment.enabled=false", "train.face_pretrain.pairs_per_clip=1",
                 "train.face_pretrain.visual_fakes=true", "train.face_pretrain.batch_size=5",
                 "train.face_pretrain.blend=0.001", "data.shuffle_buffer=0")
    categories = ["FakeVideo-RealAudio", "FakeVideo-FakeAudio", "RealVideo-FakeAudio", None]
    clips = [raw_clip(0), raw_clip(1), *(raw_clip(i, 1, category=c) for i, c in enumerate(categories, 2))]
    with wds.TarWriter(str(tmp_path / "shard-000000.tar")) as sink:
        for clip in clips:
            sink.write(clip)
    urls = reader.list_shards(tmp_path)
    pairs, labels = next(iter(BlendPairs(urls, cfg)))
    # one pass: a pair from each clip but the fake without a category; the two visual fakes are the positives
    assert pairs.shape[0] == 5 and labels.tolist() == [0.0, 0.0, 1.0, 1.0, 0.0]


def test_stage_trains_the_face_encoder_alone(tiny_shards):
    cfg = config()
    torch.manual_seed(0)
    model = create_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_state = torch.get_rng_state()
    result = pretrain_face(model, reader.list_shards(tiny_shards["train"]), cfg, CPU)
    assert result["steps"] == 3 and result["history"][-1]["step"] == 3
    assert 0.0 <= result["history"][-1]["accuracy"] <= 1.0
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("face.net.") for k in changed), sorted(changed)
    # the main training draws the same random numbers as a run without the stage
    assert torch.equal(torch.get_rng_state(), rng_state)


@pytest.mark.parametrize("near_chance", [1.01, -0.01])
def test_a_stage_ending_near_chance_warns(tiny_shards, monkeypatch, caplog, near_chance):
    monkeypatch.setattr("train.face_pretrain.NEAR_CHANCE", near_chance)  # above / below any accuracy
    cfg = config()
    with caplog.at_level("WARNING", logger="train"):
        pretrain_face(create_model(cfg), reader.list_shards(tiny_shards["train"]), cfg, CPU)
    warned = [r.getMessage() for r in caplog.records if "near chance" in r.getMessage()]
    assert len(warned) == (near_chance > 1)
    assert all("train.face_pretrain.lr" in message for message in warned)


@pytest.mark.parametrize("lr_scale", [0.1, 0.0])
def test_the_face_encoder_trains_at_its_own_lr_after_the_stage(lr_scale):
    cfg = config(f"train.face_pretrain.lr_scale={lr_scale}", "train.backbone_lr_scale=0.5")
    model = create_model(cfg)
    freeze_if_fixed(model, cfg)  # what python -m train does after the stage
    lr_of = {id(p): group["lr"] for group in build_optimizer(model, cfg).param_groups for p in group["params"]}
    face, mouth = set(map(id, model.face.net.parameters())), set(map(id, model.mouth.net.parameters()))
    assert {lr_of.get(i) for i in face} == ({None} if lr_scale == 0 else {cfg.train.lr * 0.5 * lr_scale})
    assert {lr_of[i] for i in mouth} == {cfg.train.lr * 0.5}
    others = [lr for i, lr in lr_of.items() if i not in face | mouth]
    assert others and set(others) == {cfg.train.lr}


def test_windows_of_one_frame_give_single_frames():
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [*TINY_TEST_OVERRIDES, "data.window_frames=1",
                                                       "data.windows=4", "data.augment.enabled=false"])
    cfg.train.face_pretrain.blend = 0.0
    pairs = clip_pairs(raw_clip(2), cfg, np.random.default_rng(0))
    assert len(pairs) == 4 and all(pair.shape[0] == 1 for pair, _ in pairs)
