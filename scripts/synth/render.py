"""One video from its spec: background, moving talking head, audio, and the H.264 + AAC mp4 (PyAV).

Runs inside worker processes. x264 runs with one thread so the bytes only depend on the spec.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from shards.assets import asset_path
from synth import audio
from synth.faces import EYE, Animator, P, face_swap, make_identity
from synth.plan import RENDER, TEXTURES, Layout, Nuisance, VideoSpec, rng

X264_PRESET = "veryfast"
AUDIO_FRAME = 1024


@dataclass
class Context:
    """What every worker needs besides the spec: face-source keypoints and the speech folder."""

    sources: dict[str, np.ndarray]
    speech_dir: Path


def background(layout: Layout, width: int, height: int, r: np.random.Generator) -> np.ndarray:
    """A static RGB uint8 background: a tinted texture, a two-colour gradient, or smooth colour noise."""
    colours = r.uniform(0.1, 0.9, (2, 3)).astype(np.float32)
    if layout.background in TEXTURES:
        tex = cv2.imread(str(asset_path(f"media/backgrounds/{layout.background}.png")), cv2.IMREAD_GRAYSCALE)
        side = int(r.integers(160, tex.shape[0] + 1))
        y, x = r.integers(0, tex.shape[0] - side + 1), r.integers(0, tex.shape[1] - side + 1)
        crop = tex[y:y + side, x:x + side].astype(np.float32) / 255
        crop = cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)
        img = colours[0] + (crop[:, :, None] - 0.5) * r.uniform(0.4, 1.0) * (colours[1] + 0.3)
    elif layout.background == "gradient":
        angle = r.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        img = colours[0] + ramp[:, :, None] * (colours[1] - colours[0])
    else:
        cells = r.uniform(0, 1, (int(r.integers(3, 8)), int(r.integers(4, 10)), 3)).astype(np.float32)
        img = cv2.resize(cells, (width, height), interpolation=cv2.INTER_CUBIC) * 0.8 + 0.1
    img = img + r.normal(0, r.uniform(0.0, 0.03), (height, width, 1)).astype(np.float32)
    blur = r.uniform(0, 2.0)
    if blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def wobble(r: np.random.Generator, times: np.ndarray, amplitude: float) -> np.ndarray:
    """A smooth random curve: two sinusoids of random frequency (0.1-0.7 Hz) and phase."""
    curve = np.zeros_like(times)
    for weight in (1.0, 0.5):
        curve += weight * np.sin(2 * np.pi * r.uniform(0.1, 0.7) * times + r.uniform(0, 2 * np.pi))
    return (amplitude * curve / 1.5).astype(np.float32)


def blinks(r: np.random.Generator, times: np.ndarray) -> np.ndarray:
    """Eye closure in [0, 1] per frame: a 0.2 s blink every 2-5 s."""
    closure = np.zeros_like(times)
    t = r.uniform(0.3, 2.5)
    while t < times[-1] + 1:
        closure = np.maximum(closure, np.clip(1 - np.abs(times - t) / 0.1, 0, 1))
        t += r.uniform(2.0, 5.0)
    return closure


def head_poses(layout: Layout, n: Nuisance, r: np.random.Generator, times: np.ndarray) -> np.ndarray:
    """Per frame 2x3 affine from portrait to frame: small rotation, translation and scale changes."""
    angle = wobble(r, times, r.uniform(1.0, 5.0))
    dx = wobble(r, times, r.uniform(0.005, 0.03) * n.width)
    dy = wobble(r, times, r.uniform(0.005, 0.02) * n.height)
    scale = 1 + wobble(r, times, r.uniform(0.0, 0.04))
    base = layout.face_size * n.height / EYE
    centre_x, centre_y = layout.face_x * n.width, layout.face_y * n.height
    poses = []
    for a, x, y, s in zip(angle, dx, dy, scale, strict=True):
        m = cv2.getRotationMatrix2D((P / 2, 0.48 * P), float(a), float(base * s))
        m[:, 2] += (centre_x + x - P / 2, centre_y + y - 0.48 * P)
        poses.append(m)
    return np.stack(poses).astype(np.float32)


def composite(frame: np.ndarray, rgb: np.ndarray, mask: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Warp the portrait by ``m`` and blend it into ``frame`` (a copy of the background), inside its box only."""
    height, width = frame.shape[:2]
    corners = np.array([[0, 0, 1], [P, 0, 1], [0, P, 1], [P, P, 1]], np.float32) @ m.T
    x0, y0 = np.clip(np.floor(corners.min(0)).astype(int), 0, [width, height])
    x1, y1 = np.clip(np.ceil(corners.max(0)).astype(int), 0, [width, height])
    if x1 <= x0 or y1 <= y0:
        return frame
    local = m.copy()
    local[:, 2] -= (x0, y0)
    size = (int(x1 - x0), int(y1 - y0))
    head = cv2.warpAffine(rgb, local, size, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    alpha = cv2.warpAffine(mask, local, size, flags=cv2.INTER_LINEAR, borderValue=0)[:, :, None]
    roi = frame[y0:y1, x0:x1].astype(np.float32)
    frame[y0:y1, x0:x1] = np.clip(roi + alpha * (head * 255 - roi), 0, 255).astype(np.uint8)
    return frame


def build_audio(spec: VideoSpec, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """(audio [channels, samples], mouth opening per frame) for the spec's method."""
    n, fake = spec.nuisance, spec.fake
    samples16 = int(round(n.duration * audio.SR))
    speech = audio.assemble(spec.speech, ctx.speech_dir, n.leading_silence, samples16)
    if fake.audio_method:
        speech = audio.vocode(speech, fake.audio_method, rng(spec.seed, spec.index, RENDER, 2))
    times = (np.arange(n.frames) + 0.5) / n.fps
    window = 2.0 / n.fps
    if fake.mouth_speech:
        driver = audio.assemble(fake.mouth_speech, ctx.speech_dir, n.leading_silence, samples16)
        mouth = audio.envelope(driver, times, window)
    else:
        mouth = audio.envelope(speech, times - fake.av_offset, window)
        mouth[(times - fake.av_offset < 0) | (times - fake.av_offset > n.duration)] = 0
    return audio.finish(speech, n, rng(spec.seed, spec.index, RENDER, 0)), mouth


def frames(spec: VideoSpec, ctx: Context, mouth: np.ndarray) -> Iterator[np.ndarray]:
    n = spec.nuisance
    r = rng(spec.seed, spec.index, RENDER, 1)
    portrait = make_identity(spec.identity, ctx.sources)
    if spec.fake.donor is not None:
        donor = make_identity(spec.fake.donor, ctx.sources)
        portrait = face_swap(portrait, donor, spec.fake.swap_artifact, rng(spec.seed, spec.index, RENDER, 3))
    animator = Animator(portrait)
    bg = background(spec.layout, n.width, n.height, r)
    times = np.arange(n.frames) / n.fps
    poses = head_poses(spec.layout, n, r, times)
    closure = blinks(r, times)
    for k in range(n.frames):
        rgb = animator.render(float(mouth[k]), float(closure[k]))
        yield composite(bg.copy(), rgb, portrait.mask, poses[k])


def encode(path: Path, video: Iterator[np.ndarray], sound: np.ndarray, n: Nuisance) -> None:
    """H.264 (x264, one thread, fixed preset) + AAC mp4."""
    with av.open(str(path), "w", format="mp4") as container:
        vs = container.add_stream("libx264", rate=n.fps)
        vs.width, vs.height, vs.pix_fmt = n.width, n.height, "yuv420p"
        vs.codec_context.thread_count = 1
        vs.options = {"crf": str(n.crf), "preset": X264_PRESET}
        layout = "mono" if n.channels == 1 else "stereo"
        aus = container.add_stream("aac", rate=n.sample_rate, layout=layout)
        aus.bit_rate = n.audio_bitrate
        written = 0
        for k, rgb in enumerate(video):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = k
            container.mux(vs.encode(frame))
            # interleave: audio up to the end of this frame
            until = sound.shape[1] if k == n.frames - 1 else (k + 1) * n.sample_rate // n.fps
            while written < until:
                chunk = np.ascontiguousarray(sound[:, written:written + AUDIO_FRAME])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                frame.sample_rate, frame.pts = n.sample_rate, written
                container.mux(aus.encode(frame))
                written += chunk.shape[1]
        container.mux(vs.encode(None))
        container.mux(aus.encode(None))


def make_video(spec: VideoSpec, ctx: Context, path: Path) -> int:
    """Render and write one video; returns its size in bytes."""
    cv2.setNumThreads(1)
    sound, mouth = build_audio(spec, ctx)
    encode(path, frames(spec, ctx, mouth), sound, spec.nuisance)
    return path.stat().st_size
