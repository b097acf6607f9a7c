"""The batch a model takes (models.batch: prepare / collate, shared with inference) and the training augmentations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.batch import collate, modality_labels, prepare
from tests.train.conftest import FRAMES, MOUTH, SIZE, TINY_TEST_OVERRIDES, WINDOW_FRAMES, decoded, make_sample
from train.config import load_config
from train.data import prepare_train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "configs" / "tiny.yaml", [*TINY_TEST_OVERRIDES, "data.max_clip_seconds=2.0"])


def sample(i: int, label: int = 1, **kwargs) -> dict:
    return decoded(make_sample(i, label, np.random.default_rng(i), **kwargs))


def test_eval_transform_shapes_and_masks(cfg):
    batch = collate([prepare(sample(0), cfg.data), prepare(sample(1, 0, has_face=False), cfg.data),
                     prepare(sample(2, 1, has_audio=False), cfg.data)])
    assert batch["frames"].shape == (3, FRAMES, 3, SIZE, SIZE) and batch["frames"].dtype == torch.uint8
    assert batch["mouths"].shape == (3, FRAMES, 3, MOUTH, MOUTH) and batch["mouths"].dtype == torch.uint8
    # window w starts (w + 0.5) * 1 s / 2 - 2 frames / 25 fps / 2 into the clip: samples 3360 and 11360
    assert batch["window_offsets"].tolist() == [[3360, 11360]] * 3
    assert batch["audio"].shape == (3, 32_000)  # padded to data.max_clip_seconds
    assert batch["audio_length"].tolist() == [16_000, 16_000, 0]
    assert batch["visual_mask"].tolist() == [[True] * FRAMES, [False] * FRAMES, [True] * FRAMES]
    assert batch["audio_mask"].tolist() == [[True] * FRAMES, [True] * FRAMES, [False] * FRAMES]
    assert batch["has_face"].tolist() == [True, False, True] and batch["has_audio"].tolist() == [True, True, False]
    assert batch["label"].tolist() == [1, 0, 1] and batch["key"][0] == f"{0:032x}.mp4"
    assert (batch["audio"][0, 16_000:] == 0).all()


def test_eval_transform_is_deterministic_and_lossless(cfg):
    s = sample(3)
    a, b = prepare(s, cfg.data), prepare(s, cfg.data)
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["frames"], s["frames"])
    assert torch.equal(a["audio"][:16_000], s["audio"])


def test_augmentation_depends_only_on_the_rng(cfg):
    s = sample(4)
    one = prepare_train(s, cfg, np.random.default_rng([0, 1, 2]))
    same = prepare_train(s, cfg, np.random.default_rng([0, 1, 2]))
    assert torch.equal(one["frames"], same["frames"]) and torch.equal(one["audio"], same["audio"])
    assert torch.equal(one["visual_mask"], same["visual_mask"])
    others = [prepare_train(s, cfg, np.random.default_rng([0, 1, k])) for k in range(3, 8)]
    assert any(not torch.equal(one["frames"], o["frames"]) for o in others)


def test_temporal_crop_keeps_a_contiguous_run(cfg):
    s = sample(5)
    for k in range(30):
        keep = prepare_train(s, cfg, np.random.default_rng(k))["visual_mask"].numpy()
        assert keep.sum() >= int(np.ceil(cfg.data.augment.min_keep * FRAMES))
        kept = np.flatnonzero(keep)
        assert (np.diff(kept) == 1).all()


def test_wrong_extraction_options_fail_clearly(cfg):
    other = load_config(ROOT / "configs" / "tiny.yaml", [*TINY_TEST_OVERRIDES, f"data.window_frames={2 * WINDOW_FRAMES}"])
    with pytest.raises(ValueError, match=r"data.windows x data.window_frames.*repack"):
        prepare(sample(6), other.data)


def test_modality_labels_from_a_category():
    assert modality_labels({"category": "FakeVideo-RealAudio"}, 1) == (1, 0)
    assert modality_labels({"category": "RealVideo-FakeAudio"}, 1) == (0, 1)
    assert modality_labels({}, 1) == (-1, -1)
    assert modality_labels({}, 0) == (0, 0)


def test_config_refuses_pseudo_fake_chances_over_one():
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="self_blend and self_vocode"):
        load_config(ROOT / "configs" / "tiny.yaml", ["data.augment.self_blend=0.7", "data.augment.self_vocode=0.5"])


def test_self_blend_makes_a_visual_fake_of_a_genuine_clip(cfg):
    blend = load_config(ROOT / "configs" / "tiny.yaml", [*TINY_TEST_OVERRIDES, "data.max_clip_seconds=2.0",
                                                         "data.augment.self_blend=1.0"])
    genuine, fake = sample(7, 0), sample(8, 1)
    out = prepare_train(genuine, blend, np.random.default_rng(0))
    assert (out["label"], out["visual_label"], out["audio_label"]) == (1, 1, 0)
    assert out["in_sync"] and out["blend_label"] == 1  # the synchrony loss and the blend head read it
    real_fake = prepare_train(fake, blend, np.random.default_rng(0))
    assert real_fake["label"] == 1 and not real_fake["in_sync"]
    assert real_fake["blend_label"] == -1  # a real fake never reaches the blend head
    untouched = prepare_train(genuine, cfg, np.random.default_rng(0))
    assert (untouched["label"], untouched["visual_label"], untouched["audio_label"]) == (0, 0, 0)
    assert untouched["blend_label"] == 0


def test_self_vocode_makes_an_audio_fake_of_a_genuine_clip():
    vocode = load_config(ROOT / "configs" / "tiny.yaml", [*TINY_TEST_OVERRIDES, "data.max_clip_seconds=2.0",
                                                          "data.augment.self_vocode=1.0", "data.augment.enabled=true"])
    genuine = sample(9, 0)
    out = prepare_train(genuine, vocode, np.random.default_rng(0))
    assert (out["label"], out["visual_label"], out["audio_label"]) == (1, 0, 1) and out["in_sync"]
    assert out["blend_label"] == -1
    assert out["audio_length"] == genuine["audio"].numel()


def test_self_vocode_keeps_length_and_level_and_changes_the_waveform():
    from train.augment import self_vocode

    t = np.arange(16_000) / 16_000
    voice = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    for k in range(3):
        out = self_vocode(voice, np.random.default_rng(k))
        assert out.shape == voice.shape and out.dtype == np.float32
        assert np.sqrt(np.mean(out ** 2)) == pytest.approx(np.sqrt(np.mean(voice ** 2)), rel=0.05)
        assert np.abs(out - voice).mean() > 0.01


def test_self_blend_changes_the_inner_face_only():
    from train.augment import self_blend

    rng = np.random.default_rng(1)
    frames = np.repeat(rng.integers(60, 200, (1, 64, 64, 3), dtype=np.uint8), 4, axis=0)
    mouths = rng.integers(60, 200, (4, 32, 32, 3), dtype=np.uint8)
    changed = []
    for k in range(20):
        out, out_mouths = self_blend(frames, mouths, np.random.default_rng(k))
        assert out.shape == frames.shape and out.dtype == np.uint8 and out_mouths.shape == mouths.shape
        assert (out == out[:1]).all()  # one draw for the whole clip
        diff = np.abs(out.astype(int) - frames.astype(int)).mean(-1)[0]
        assert diff[:4, :4].max() <= 1 and diff[-4:, -4:].max() <= 1  # the crop's corners stay the clip's own
        changed.append(diff[24:40, 24:40].mean())
    assert np.mean(changed) > 5  # the centre of the face is pasted from the changed copy
