"""Fixtures of the shards tests: a few small generated videos, packed once per session (in this process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.synth.media_factory import write_video

# small and fast (one window of 4 frames); shard size given per test
PACK_OPTIONS = ["--windows", "1", "--window-frames", "4", "--size", "64", "--mouth-size", "32", "--no-progress"]
# name -> (label, write_video arguments): variety in fps, audio format and face without being slow to make
GOOD_VIDEOS = {
    "0a1b2c3d4e5f60718293a4b5c6d7e8f9.mp4": (0, {}),
    "1a1b2c3d4e5f60718293a4b5c6d7e8f9.mp4": (0, {"fps": 30, "face": "grace_hopper"}),
    "2a1b2c3d4e5f60718293a4b5c6d7e8f9.mp4": (0, {"sample_rate": 48000, "channels": 2}),
    "3a1b2c3d4e5f60718293a4b5c6d7e8f9.mp4": (0, {"seconds": 1.5, "sample_rate": 16000}),
    "4a1b2c3d4e5f60718293a4b5c6d7e8f9.mp4": (1, {"face": "grace_hopper", "sample_rate": 22050}),
    "5a1b2c3d4e5f60718293a4b5c6d7e8f9.mp4": (1, {"width": 426, "seconds": 2.5}),
}


def run_pack(*args) -> int:
    from shards.pack import main

    return main([str(a) for a in args])


@pytest.fixture(scope="session")
def small_videos(tmp_path_factory) -> tuple[Path, Path]:
    """(video folder, labels csv) of GOOD_VIDEOS: 320x240-ish, 1.5-2.5 s, H.264 + AAC."""
    root = tmp_path_factory.mktemp("small_videos")
    videos = root / "videos"
    for name, (_, kwargs) in GOOD_VIDEOS.items():
        write_video(videos / name, **kwargs)
    labels = root / "labels.csv"
    labels.write_text("video_name,target\n" + "".join(f"{n},{lab}\n" for n, (lab, _) in GOOD_VIDEOS.items()))
    return videos, labels


@pytest.fixture(scope="session")
def packed_full(small_videos, tmp_path_factory) -> Path:
    """small_videos packed in one uninterrupted single-part run (3 shards of 2)."""
    videos, labels = small_videos
    out = tmp_path_factory.mktemp("packed_full")
    assert run_pack("--videos", videos, "--labels", labels, "--out", out, "--workers", 0, "--shard-max-count", 2,
                    *PACK_OPTIONS) == 0
    return out


@pytest.fixture(scope="session")
def packed_parts(small_videos, tmp_path_factory) -> Path:
    """small_videos packed as 2 parts of one shard per video into one folder (6 shards), merged."""
    videos, labels = small_videos
    out = tmp_path_factory.mktemp("packed_parts")
    for part in (0, 1):
        assert run_pack("--videos", videos, "--labels", labels, "--out", out, "--workers", 0, "--num-parts", 2,
                        "--part", part, "--shard-max-count", 1, *PACK_OPTIONS) == 0
    return out
