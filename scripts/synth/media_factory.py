"""Small H.264 + AAC test videos written with PyAV, for the tests and checks (and anyone who needs a quick clip).

``write_video(path, ...)`` renders a face photo from the asset cache (or no face) drifting slowly over a
textured background, with a tone that changes pitch each half second as audio. Every knob a bad-input case
needs is an argument: size, duration, fps, audio presence / rate / channels, no video stream, keyframe
interval, encoder preset (B-frames), moov-at-front (``faststart``) so a truncated copy stays readable. Same arguments -> same frames.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import cv2
import numpy as np

from shards.assets import asset_path


@lru_cache(maxsize=8)
def _image(relative: str) -> np.ndarray:
    bgr = cv2.imread(str(asset_path(relative)))
    if bgr is None:
        raise FileNotFoundError(f"cannot read asset {relative}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def face_photo(name: str = "astronaut") -> np.ndarray:
    return _image("media/faces/astronaut.png" if name == "astronaut" else "media/faces/grace_hopper.jpg")


def render_frame(index: int, width: int, height: int, fps: float, face: str | None, faces: int = 1) -> np.ndarray:
    """One RGB frame: background texture, ``faces`` copies of the photo (first one the largest)."""
    background = cv2.resize(_image("media/backgrounds/brick.png"), (width, height), interpolation=cv2.INTER_AREA)
    frame = background.copy()
    if face is None:
        shift = int(index * 3) % max(1, width // 4)  # some motion so the encoder has real work
        return np.roll(frame, shift, axis=1)
    photo = face_photo(face)
    t = index / fps
    for k in range(faces):
        scale = 0.8 * min(width, height) / max(photo.shape[:2]) / (1 + 0.4 * k)
        pw, ph = max(2, int(photo.shape[1] * scale)), max(2, int(photo.shape[0] * scale))
        small = cv2.resize(photo, (pw, ph), interpolation=cv2.INTER_AREA)
        place = 0.5 if faces == 1 else (0.62 if k == 0 else 0.2)  # two faces side by side, both detectable
        cx = width * place + 0.03 * width * np.sin(2 * np.pi * 0.3 * t)
        cy = height * 0.5 + 0.02 * height * np.cos(2 * np.pi * 0.2 * t)
        x0, y0 = int(round(cx - pw / 2)), int(round(cy - ph / 2))
        sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(width, x0 + pw), min(height, y0 + ph)
        if sx1 > sx0 and sy1 > sy0:
            frame[sy0:sy1, sx0:sx1] = small[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
    return frame


def tone(seconds: float, sample_rate: int, channels: int) -> np.ndarray:
    """float32 [channels, samples]: a tone stepping through pitches every 0.5 s (each channel its own phase)."""
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    pitch = 220.0 * (1 + (np.floor(t / 0.5) % 4) / 4)
    return np.stack([0.3 * np.sin(2 * np.pi * pitch * t + c) for c in range(channels)]).astype(np.float32)


def write_video(path: str | Path, *, width: int = 320, height: int = 240, seconds: float = 2.0, fps: int = 25,
                face: str | None = "astronaut", faces: int = 1, video: bool = True, audio: bool = True,
                sample_rate: int = 44100, channels: int = 1, keyint: int | None = None, faststart: bool = False,
                crf: int = 28, preset: str = "ultrafast") -> Path:
    """Write an mp4 (H.264 yuv420p + AAC) and return its path. ``video=False`` writes an audio-only mp4."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        vstream = astream = None
        if video:
            vstream = container.add_stream("libx264", rate=Fraction(fps))
            vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
            vstream.codec_context.thread_count = 1
            opts = {"crf": str(crf), "preset": preset}  # "veryfast" and slower use B-frames
            if keyint:
                opts["g"] = str(keyint)
                opts["keyint_min"] = str(keyint)
            vstream.options = opts
        if audio:
            astream = container.add_stream("aac", rate=sample_rate, layout="mono" if channels == 1 else "stereo")
        if vstream is not None:
            for i in range(max(1, int(round(seconds * fps)))):
                frame = av.VideoFrame.from_ndarray(render_frame(i, width, height, fps, face, faces), format="rgb24")
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode(None))
        if astream is not None:
            samples = tone(seconds, sample_rate, channels)
            block = 1024
            for start in range(0, samples.shape[1], block):
                chunk = np.ascontiguousarray(samples[:, start:start + block])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=astream.layout.name)
                frame.sample_rate = sample_rate
                frame.pts = start
                frame.time_base = Fraction(1, sample_rate)
                container.mux(astream.encode(frame))
            container.mux(astream.encode(None))
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def truncate(source: Path, target: Path, fraction: float = 0.5) -> Path:
    """A copy of ``source`` cut to ``fraction`` of its bytes (an interrupted download)."""
    data = source.read_bytes()
    return write_bytes(target, data[: int(len(data) * fraction)])
