"""Decoding: the seek plan returns exactly the frames a full sequential decode shows at the wanted times."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from scripts.synth.media_factory import write_video
from shards import media
from shards.extract import ExtractOptions, clip_span, frame_times, window_starts


def brute_force(path, times, max_side=1920):
    """Decode every frame (same RGB conversion); pick the last one with timestamp <= t (or the first frame)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = [(float(f.pts * stream.time_base), media._to_rgb(f, max_side)) for f in container.decode(stream)]
    out = []
    for t in times:
        before = [rgb for ft, rgb in decoded if ft <= t + 1e-6]
        out.append(before[-1] if before else decoded[0][1])
    return out, len(decoded)


@pytest.mark.parametrize("keyint, windows, window_frames, preset", [
    (5, 6, 1, "ultrafast"), (250, 6, 1, "ultrafast"), (5, 40, 1, "ultrafast"), (12, 7, 1, "veryfast"),
    (250, 16, 1, "medium"), (5, 3, 8, "veryfast"), (250, 2, 16, "medium")])
def test_decode_plan_matches_sequential_decode(tmp_path, keyint, windows, window_frames, preset):
    path = write_video(tmp_path / "v.mp4", seconds=6, fps=25, keyint=keyint, audio=False, preset=preset)
    options = ExtractOptions(windows=windows, window_frames=window_frames)
    times = frame_times(window_starts(0.0, 6.0, options, options.fps), options, options.fps)
    frames = len(times)
    with media.open_media(path) as container:
        got, actual, stats = media.decode_frames(container, times)
    expected, total = brute_force(path, times)
    for g, e in zip(got, expected, strict=True):
        assert np.array_equal(g, e)
    assert actual == sorted(actual) and len(got) == frames
    if keyint == 5 and windows == 6:  # sparse frames, short GOPs: seeks skip most of the video
        assert stats["seeks"] > 1 and stats["decoded"] < total // 2
    if keyint == 250:  # one GOP: one pass, nothing decoded twice
        assert stats["seeks"] == 1 and stats["decoded"] <= total
    if preset != "ultrafast":  # B-frames: the non-reference ones that are not wanted are not decoded
        assert stats["decoded"] < total


def test_audio_span_is_exact_and_mono(tmp_path):
    path = write_video(tmp_path / "a.mp4", seconds=3.0, sample_rate=44100, channels=2)
    start, end = clip_span(0.0, 3.0, 2.0)
    with media.open_media(path) as container:
        pcm, stats = media.decode_audio(container, start, end, 16000)
    assert pcm.dtype == np.int16 and pcm.shape == (32000,)
    assert stats["source_rate"] == 44100 and stats["missing_seconds"] == 0
    assert np.abs(pcm).max() > 3000  # the 0.3-amplitude tone, not silence


@pytest.mark.parametrize("layout", ["mono", "stereo"])
def test_audio_after_a_gap_lands_at_its_timestamps(tmp_path, layout):
    """Consecutive frames are converted together; a gap in the timestamps starts a new run and stays silent."""
    rate, samples, channels = 16000, 1000, len(av.AudioLayout(layout).channels)
    present = [*range(16), *range(24, 40)]  # frames of 1000 samples; 1.0-1.5 s has none
    path = tmp_path / "gap.nut"  # NUT keeps the timestamps exact (Matroska rounds them to milliseconds)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout=layout)
        for i in present:
            level = np.full((1, samples * channels), 500 * (i + 1), np.int16)
            frame = av.AudioFrame.from_ndarray(level, format="s16", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, i * samples, Fraction(1, rate)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with media.open_media(path) as container:
        pcm, stats = media.decode_audio(container, 0.5, 2.5, rate)
    assert stats["missing_seconds"] == pytest.approx(0.5, abs=0.01)
    expected = np.zeros(2 * rate, np.int16)
    for i in present:
        lo, hi = max(0, i * samples - rate // 2), min(2 * rate, (i + 1) * samples - rate // 2)
        if hi > lo:
            expected[lo:hi] = 500 * (i + 1)
    assert np.abs(pcm.astype(int) - expected).max() <= 1  # same rate, no resampling: int16 / 32768 x 32767, rounded


@pytest.mark.parametrize("fmt", ["fltp", "flt", "s16p", "s16", "s32p", "dblp", "u8p", "u8"])
@pytest.mark.parametrize("layout", ["mono", "stereo", "2.1"])
def test_mono_is_the_channel_mean_in_every_sample_format(fmt, layout):
    channels = len(av.AudioLayout(layout).channels)
    rng = np.random.default_rng(0)
    planar = av.AudioFormat(fmt).is_planar
    values = rng.uniform(-0.9, 0.9, (channels, 256))
    scale = {"s16": 32768.0, "s32": 2147483648.0}.get(fmt.rstrip("p"))
    if scale:
        raw = np.round(values * scale).astype(np.int16 if "16" in fmt else np.int32)
        expected = (raw.astype(np.float32) / np.float32(scale)).mean(axis=0)
    elif fmt.startswith("u8"):
        raw = np.round(values * 128 + 128).astype(np.uint8)
        expected = ((raw.astype(np.float32) - 128.0) / 128.0).mean(axis=0)
    else:
        raw = values.astype(np.float64 if fmt.startswith("dbl") else np.float32)
        expected = raw.astype(np.float32).mean(axis=0)
    array = raw if planar else raw.T.reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(array), format=fmt, layout=layout)
    frame.sample_rate = 16000
    got = media._mono(frame)
    assert got.dtype == np.float32 and got.shape == (256,)
    assert np.array_equal(got, expected)


def test_rgb_conversion_fast_path_matches_swscale(tmp_path):
    path = write_video(tmp_path / "c.mp4", seconds=0.2, audio=False)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        fast = media._to_rgb(frame, 1920)
        reference = frame.to_ndarray(format="rgb24")
    assert fast.shape == reference.shape and np.abs(fast.astype(int) - reference).mean() < 1.5


def test_large_frames_are_downscaled_while_decoding(tmp_path):
    path = write_video(tmp_path / "big.mp4", width=1280, height=720, seconds=0.4, audio=False)
    with media.open_media(path) as container:
        frames, _, _ = media.decode_frames(container, [0.1, 0.3], max_side=640)
    assert frames[0].shape == (360, 640, 3)


def test_open_errors_have_reasons(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video at all\n" * 50)
    for name, reason in (("empty.mp4", "empty_file"), ("text.mp4", "unreadable"), ("nope.mp4", "missing_file")):
        with pytest.raises(media.MediaError) as error:
            media.open_media(tmp_path / name)
        assert error.value.reason == reason


@pytest.mark.parametrize("native", [False, True])
def test_native_rate_reads_every_source_frame_of_a_window(tmp_path, native):
    """A 30-fps video read at 25 fps skips every sixth source frame (a 67-ms step among 33-ms ones); with
    native_rate each window is consecutive source frames, evenly spaced, and the clip records its rate."""
    from shards.extract import load_frames

    path = write_video(tmp_path / "v.mp4", seconds=3, fps=30, keyint=10, audio=False)
    options = ExtractOptions(windows=2, window_frames=8, native_rate=native)
    with media.open_media(path) as container:
        decoded = load_frames(container, media.probe(container), options, [])
    assert decoded.rate == (30.0 if native else 25.0)
    steps = np.diff(np.reshape(decoded.frame_times, (2, 8)), axis=1)
    if native:
        assert np.allclose(steps, 1 / 30, atol=1e-4)
    else:
        assert np.isclose(steps.max(), 2 / 30, atol=1e-4) and np.isclose(steps.min(), 1 / 30, atol=1e-4)
    windows = np.reshape(decoded.times, (2, 8))
    assert np.allclose(windows[:, 0] - np.asarray(decoded.window_starts), 0.5 / decoded.rate)


def test_native_rate_is_recorded_only_when_set():
    """Folders packed before the option existed record the same content as fixed-rate packing now."""
    assert "native_rate" not in ExtractOptions().content()
    assert ExtractOptions(native_rate=True).content()["native_rate"] is True
    assert ExtractOptions(native_rate=True).frame_rate(29.97) == 29.97
    assert ExtractOptions(native_rate=True).frame_rate(None) == 25.0  # a video that states no rate
    assert ExtractOptions(native_rate=True).frame_rate(1000.0) == 25.0  # not a plausible frame rate
    assert ExtractOptions(native_rate=True).frame_rate(10.0) == 25.0  # below fps / 2: frames repeat either way
