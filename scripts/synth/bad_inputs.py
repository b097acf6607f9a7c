"""A folder of broken and unusual input files, and the outcome each must get (shards.pack and python -m infer).

    write_bad_inputs(folder)   # the files of BAD_INPUTS (plus a README.txt that is no input at all)

Used by the shards and inference tests and by ``make docker-check``, which runs ``infer.sh`` on it inside the
image. ``killer.mp4`` is an ordinary video whose worker kills itself when the run has ``FAULT_ENV`` set (the
packing pool's fault hook), so it tests a worker killed by the OS; without it, it is packed like any other.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from scripts.synth.media_factory import truncate, write_bytes, write_video

FAULT_ENV = {"AVDF_PACK_FAULT": "kill:killer"}
# name -> (packing status, failure reason or the fallbacks that must be listed); inference reads only the .mp4
# files (any case): "failed" there too, anything packed scores as "ok" with the same fallbacks
BAD_INPUTS: dict[str, tuple[str, str | list[str]]] = {
    "empty.mp4": ("failed", "empty_file"),
    "truncated.mp4": ("failed", "unreadable"),  # moov atom at the end: cut off
    "truncated_faststart.mp4": ("packed_with_fallback", ["truncated"]),  # index first: the first part is usable
    "notes.mp4": ("failed", "unreadable"),  # text with a video name
    "random bytes.mp4": ("failed", "unreadable"),
    "noise.mov": ("failed", "unreadable"),  # random bytes with another video extension
    "audio_only.mp4": ("failed", "no_video_stream"),
    "silent.mp4": ("packed_with_fallback", ["no_audio"]),
    "no_face.mp4": ("packed_with_fallback", ["no_face"]),
    "short.mp4": ("packed", []),  # 0.3 s: 8 frames at 25 fps (enough for T <= 8)
    "three_frames.mp4": ("packed_with_fallback", ["repeated_frames"]),  # 0.12 s: fewer frames than T
    "uhd.mp4": ("packed", []),  # 3840x2160, 0.4 s
    "portrait.mp4": ("packed", []),
    "long.mp4": ("packed", []),  # 30 s, keyframe every second
    "two faces.mp4": ("packed", []),
    "with spaces é 日本.MP4": ("packed", []),
    "dotted.name.mp4": ("packed", []),
    "killer.mp4": ("failed", "worker_died"),  # under FAULT_ENV: its worker is killed, also when retried alone
}
NOT_AN_INPUT = "README.txt"


def write_bad_inputs(folder: str | Path) -> Path:
    """Write every file of BAD_INPUTS (and NOT_AN_INPUT) into ``folder``; returns it. Same files every time."""
    folder = Path(folder)
    scratch = folder.parent / f".{folder.name}_sources"
    write_bytes(folder / "empty.mp4", b"")
    truncate(write_video(scratch / "source.mp4", seconds=2.0), folder / "truncated.mp4", 0.5)
    truncate(write_video(scratch / "fast.mp4", seconds=2.0, faststart=True), folder / "truncated_faststart.mp4", 0.5)
    write_bytes(folder / "notes.mp4", b"these are my notes, not a video\n" * 40)
    write_bytes(folder / "random bytes.mp4", np.random.default_rng(0).bytes(20000))
    write_bytes(folder / "noise.mov", np.random.default_rng(1).bytes(20000))
    write_video(folder / "audio_only.mp4", video=False, seconds=1.0)
    write_video(folder / "silent.mp4", audio=False)
    write_video(folder / "no_face.mp4", face=None)
    write_video(folder / "short.mp4", seconds=0.3)
    write_video(folder / "three_frames.mp4", seconds=0.12)
    write_video(folder / "uhd.mp4", width=3840, height=2160, seconds=0.4, crf=40)
    write_video(folder / "portrait.mp4", width=240, height=320)
    write_video(folder / "long.mp4", seconds=30, fps=25, keyint=25, width=160, height=120, crf=40, sample_rate=16000)
    write_video(folder / "two faces.mp4", faces=2, width=480, height=270)
    write_video(folder / "with spaces é 日本.MP4")
    write_video(folder / "dotted.name.mp4")
    write_video(folder / "killer.mp4")
    (folder / NOT_AN_INPUT).write_text("not an input\n")
    for path in scratch.iterdir():
        path.unlink()
    os.rmdir(scratch)
    return folder


def inference_expectations() -> dict[str, tuple[str, str | list[str]]]:
    """The files ``python -m infer`` reads (.mp4, any case) -> ("failed", reason) or ("ok", fallbacks)."""
    return {name: (status if status == "failed" else "ok", flag) for name, (status, flag) in BAD_INPUTS.items()
            if name.lower().endswith(".mp4")}
