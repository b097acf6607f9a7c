"""The batch a model takes (models.batch: prepare / collate, shared with inference) and the training augmentations."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.batch import collate, modality_labels, prepare
from tests.train.conftest import FRAMES, MOUTH, SIZE, TINY_TEST_OVERRIDES, WINDOW_FRAMES, decoded, make_sample
from train.augment import augment_frames, jpeg_recompress
from train.config import AugmentConfig, load_config
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


def test_a_clip_read_at_its_own_rate_owns_that_rates_audio_per_frame(cfg):
    """A native-rate clip (meta fps 30): frame k owns 16000 / 30 samples, so frames past the audio's end by that
    measure are masked and the model is told the rate."""
    s = sample(0)
    starts = [0.0, 1.0 - WINDOW_FRAMES / 30]  # the second window ends with the audio (1 s) at 30 fps
    s["meta"] = dict(s["meta"], fps=30.0, window_starts=starts)
    at_30, at_25 = prepare(s, cfg.data), prepare(dict(s, meta=dict(s["meta"], fps=25.0)), cfg.data)
    assert at_30["frame_rate"] == 30.0 and at_25["frame_rate"] == 25.0
    assert at_30["audio_mask"].all()  # at 25 fps the last frame would end 13 ms after the audio
    assert not at_25["audio_mask"][-1] and at_25["audio_mask"][:WINDOW_FRAMES].all()
    assert collate([at_30, at_25])["frame_rate"].tolist() == [30.0, 25.0]


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


ONLY = dict.fromkeys(("flip", "color", "resize", "blur", "noise", "cutout", "jpeg"), 0.0)


def clip(seed: int = 0) -> np.ndarray:
    """A smooth uint8 clip [6, 32, 40, 3] (non-square, so a transposed op would fail), away from 0 and 255."""
    ramp = np.linspace(60, 190, 40)[None, None, :, None] + np.linspace(0, 30, 32)[None, :, None, None]
    shift = np.random.default_rng(seed).uniform(-20, 20, (6, 1, 1, 3))
    return np.clip(ramp + shift, 0, 255).astype(np.uint8)


def test_flip_mirrors_each_frame_left_right():
    x = clip()
    out = augment_frames(x, AugmentConfig(**{**ONLY, "flip": 1.0}), np.random.default_rng(0))
    assert np.array_equal(out, x[:, :, ::-1])


def test_color_jitter_is_the_saturation_contrast_brightness_formula():
    x = clip()
    aug, seed = AugmentConfig(**{**ONLY, "color": 1.0}), 3
    out = augment_frames(x, aug, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    rng.random(), rng.random()  # the flip and colour draws
    saturation, contrast, brightness = rng.uniform(0.6, 1.4), rng.uniform(0.7, 1.3), rng.uniform(-25, 25)
    f = x.astype(np.float64)
    gray = f @ np.array([0.299, 0.587, 0.114])
    f = gray[..., None] + saturation * (f - gray[..., None])
    expected = np.clip((f - gray.mean()) * contrast + gray.mean() + brightness, 0, 255)
    error = np.abs(out - expected)  # rounded to a grey level, in OpenCV's float32 arithmetic
    assert error.max() < 1.0 and error.mean() < 0.3
    assert np.abs(out.astype(int) - x).mean() > 2  # it changed the clip


def test_sensor_noise_has_the_drawn_spread_differs_per_frame_and_repeats_per_rng():
    x = np.full((6, 64, 64, 3), 128, np.uint8)
    aug = AugmentConfig(**{**ONLY, "noise": 1.0})
    out = augment_frames(x, aug, np.random.default_rng(7))
    assert np.array_equal(out, augment_frames(x, aug, np.random.default_rng(7)))
    assert not np.array_equal(out, augment_frames(x, aug, np.random.default_rng(8)))
    rng = np.random.default_rng(7)
    [rng.random() for _ in range(5)]  # flip, colour, resize, blur, noise
    std = rng.uniform(2.0, 10.0)
    residual = out.astype(float) - 128
    assert abs(residual.mean()) < 0.6 and residual.std() == pytest.approx(std, rel=0.05)
    assert not np.array_equal(out[0], out[1])


def test_jpeg_recompress_is_each_frame_through_opencv_jpeg():
    x = clip()
    out = jpeg_recompress(x, 50)
    for frame, got in zip(x, out, strict=True):
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 50])
        assert ok and np.array_equal(got, cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    assert out.shape == x.shape and not np.array_equal(out, x)


def test_augment_frames_leaves_its_input_alone():
    x = clip()
    before = x.copy()
    augment_frames(x, AugmentConfig(**{key: 1.0 for key in ONLY}), np.random.default_rng(1))
    assert np.array_equal(x, before)


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

    with pytest.raises(ConfigError, match="self_blend, self_vocode and mouth_hold"):
        load_config(ROOT / "configs" / "tiny.yaml", ["data.augment.self_blend=0.7", "data.augment.self_vocode=0.5"])
    with pytest.raises(ConfigError, match="self_blend, self_vocode and mouth_hold"):
        load_config(ROOT / "configs" / "tiny.yaml", ["data.augment.self_blend=0.5", "data.augment.mouth_hold=0.6"])


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


def test_mouth_hold_makes_a_visual_fake_of_a_genuine_clip():
    hold = load_config(ROOT / "configs" / "tiny.yaml", [*TINY_TEST_OVERRIDES, "data.max_clip_seconds=2.0",
                                                        "data.augment.mouth_hold=1.0", "data.augment.enabled=true"])
    out = prepare_train(sample(7, 0), hold, np.random.default_rng(0))
    assert (out["label"], out["visual_label"], out["audio_label"]) == (1, 1, 0) and out["in_sync"]
    assert out["blend_label"] == -1  # not a blended face: the blend head never reads it


def test_mouth_hold_holds_each_mouth_for_a_few_frames_within_each_window():
    from train.augment import FACE_PARTS, mouth_hold

    rng = np.random.default_rng(0)

    def smooth_clip(size: int) -> np.ndarray:
        noise = rng.uniform(0, 255, (16 * size, size, 3)).astype(np.float32)
        return np.clip(cv2.GaussianBlur(noise, (0, 0), 3), 0, 255).astype(np.uint8).reshape(16, size, size, 3)

    frames, mouths = smooth_clip(64), smooth_clip(32)
    y0, y1, x0, x1 = (round(v * 64) for v in FACE_PARTS["mouth"])
    for seed in range(6):
        faces, lips = mouth_hold(frames, mouths, window_frames=8, rng=np.random.default_rng(seed))
        assert faces.shape == frames.shape and lips.shape == mouths.shape and lips.dtype == np.uint8
        np.testing.assert_array_equal(faces[:, :8], frames[:, :8])  # above the mouth band: untouched
        np.testing.assert_array_equal(lips[[0, 8]], mouths[[0, 8]])  # each window starts with its own mouth
        changed = [k for k in range(16) if not np.array_equal(lips[k], mouths[k])]
        assert 6 <= len(changed) <= 11 and not {0, 8} & set(changed)
        for k in changed:
            previous = max(j for j in range(k // 8 * 8, k) if j not in changed)
            own, held = (np.abs(lips[k].astype(int) - mouths[j]).mean() for j in (k, previous))
            assert held < own / 3  # the mouth of the step's first frame, slightly moved
            band = faces[k, y0:y1, x0:x1].astype(int)
            own, held = (np.abs(band - frames[j, y0:y1, x0:x1]).mean() for j in (k, previous))
            assert held < own / 3


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


def test_channel_colour_shelves_the_low_end_tilts_and_keeps_the_level():
    from train.augment import channel_colour

    t = np.arange(16_000) / 16_000
    low, high = np.sin(2 * np.pi * 100 * t), np.sin(2 * np.pi * 4000 * t)
    x = (0.2 * low + 0.2 * high).astype(np.float32)

    def share_of_low(y: np.ndarray) -> float:
        return float(np.dot(y, low) ** 2 / (np.dot(y, low) ** 2 + np.dot(y, high) ** 2))

    flat = channel_colour(x, low_db=0.0, corner_hz=300.0, tilt_db=0.0)
    np.testing.assert_allclose(flat, x, atol=1e-5)
    for out in (channel_colour(x, low_db=-20.0, corner_hz=300.0, tilt_db=0.0),
                channel_colour(x, low_db=0.0, corner_hz=300.0, tilt_db=4.0)):
        assert out.shape == x.shape and out.dtype == np.float32
        assert np.sqrt(np.mean(out ** 2)) == pytest.approx(np.sqrt(np.mean(x ** 2)), rel=1e-3)
        assert share_of_low(out) < 0.05  # 100 Hz 20 dB down (the shelf), or 21 dB below 4 kHz (the tilt)
    assert share_of_low(channel_colour(x, low_db=12.0, corner_hz=300.0, tilt_db=0.0)) > 0.9


def test_speech_shaped_noise_stays_in_the_clips_band_at_the_drawn_snr():
    from train.augment import low_pass, speech_shaped_noise

    narrowband = low_pass(np.random.default_rng(0).normal(0, 0.1, 32_000).astype(np.float32), cutoff_hz=3500.0)
    noise = speech_shaped_noise(narrowband, snr_db=10.0, rng=np.random.default_rng(1))
    assert noise.shape == narrowband.shape and noise.dtype == np.float32
    snr = 10 * np.log10(np.mean(narrowband.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
    assert snr == pytest.approx(10.0, abs=0.01)
    spectrum = np.abs(np.fft.rfft(noise)) ** 2
    freqs = np.fft.rfftfreq(noise.size, 1 / 16_000)
    assert spectrum[freqs > 4000].sum() < 0.01 * spectrum.sum()  # no hiss above the band white noise would fill
    assert np.corrcoef(noise, narrowband)[0, 1] < 0.05  # noise, not a copy


def test_channel_eq_colours_when_drawn_and_draws_nothing_when_off():
    from train.augment import augment_audio

    voice = np.random.default_rng(0).normal(0, 0.1, 16_000).astype(np.float32)
    others_off = {"audio_gain": 0.0, "audio_noise": 0.0, "band_limit": 0.0, "audio_jitter_ms": 0.0}
    rng, reference = np.random.default_rng(3), np.random.default_rng(3)
    np.testing.assert_array_equal(augment_audio(voice, AugmentConfig(**others_off), rng), voice)
    reference.random(3)  # the band-limit, gain and noise draws: an older config's stream is unchanged
    assert rng.random() == reference.random()
    coloured = augment_audio(voice, AugmentConfig(**others_off, channel_eq=1.0), np.random.default_rng(3))
    assert np.abs(coloured - voice).mean() > 0.001


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


def test_bench_loader_prints_the_real_loaders_throughput(tiny_shards, capsys):
    from scripts import bench_loader

    sets = [arg for o in TINY_TEST_OVERRIDES if not o.startswith("data.workers") for arg in ("--set", o)]
    assert bench_loader.main(["--config", str(ROOT / "configs" / "tiny.yaml"), "--shards", str(tiny_shards["train"]),
                              "--workers", "0", "--batches", "2", *sets, "--set", "train.batch_size=3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["timed_clips"] == 6 and report["batch_size"] == 3 and report["frames_per_clip"] == FRAMES
    assert report["clips_per_s"] > 0 and report["frames_per_s"] == pytest.approx(report["clips_per_s"] * FRAMES, rel=0.01)
    assert report["clips_per_s_per_worker"] == report["clips_per_s"]  # 0 workers: the main process, counted as one


def test_native_rate_shards_match_a_native_rate_config_whatever_their_rate(tmp_path):
    """Packed with --native-rate, each clip records its video's own rate: the config's data.fps is not compared."""
    import webdataset as wds

    from tests.train.conftest import make_sample
    from train.data import check_shards_match, pack_arguments

    sample = make_sample(0, 1, np.random.default_rng(0))
    sample["json"] = json.dumps(dict(json.loads(sample["json"]), fps=30.0, native_rate=True)).encode()
    with wds.TarWriter(str(tmp_path / "shard-000000.tar")) as sink:
        sink.write(sample)
    native = load_config(ROOT / "configs" / "tiny.yaml", [*TINY_TEST_OVERRIDES, "data.native_rate=true"])
    assert check_shards_match([str(tmp_path / "shard-000000.tar")], native, "train")["fps"] == 30.0
    assert pack_arguments(native)[-1] == "--native-rate"
    assert "--native-rate" not in pack_arguments(load_config(ROOT / "configs" / "tiny.yaml"))


def test_validation_clips_are_packed_with_the_time_views_inference_reads(tiny_shards, caplog):
    """`--pack-args val` packs score.time_views x the windows; validation reads those clips as views, reads shards
    of the training windows as single clips with a warning, and refuses anything else naming the repack."""
    from train.config import ConfigError
    from train.data import pack_arguments, shard_urls, validation_views

    small = load_config(ROOT / "configs" / "small.yaml")
    assert small.score.time_views == 2 and small.data.windows == 4
    assert pack_arguments(small, "val")[:2] == ["--windows", "8"]
    assert pack_arguments(small, "val")[2:] == pack_arguments(small)[2:]
    assert pack_arguments(small)[:2] == ["--windows", "4"]
    tiny = load_config(ROOT / "configs" / "tiny.yaml")
    assert pack_arguments(tiny, "val") == pack_arguments(tiny, "train")  # one view
    with pytest.raises(ValueError, match="one of"):
        pack_arguments(tiny, "test")

    urls = shard_urls(tiny_shards["val"], "val")  # 2 windows of 2 frames
    views = ["data.windows=1", "score.time_views=2"]
    assert validation_views(urls, load_config(ROOT / "configs" / "tiny.yaml", [*TINY_TEST_OVERRIDES, *views])) == 2
    assert validation_views(urls, load_config(ROOT / "configs" / "tiny.yaml", TINY_TEST_OVERRIDES)) == 1
    with caplog.at_level("WARNING"):
        single = load_config(ROOT / "configs" / "tiny.yaml", [*TINY_TEST_OVERRIDES, "score.time_views=2"])
        assert validation_views(urls, single) == 1
    assert "repack them with `--pack-args val`" in caplog.text
    with pytest.raises(ConfigError, match=r"data.windows x score.time_views = 6 windows: repack with .*--pack-args val"):
        validation_views(urls, load_config(ROOT / "configs" / "tiny.yaml", [*TINY_TEST_OVERRIDES, "data.windows=3", "score.time_views=2"]))
