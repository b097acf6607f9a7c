"""One video from its spec: the identity's whole photo filmed like interview footage, audio, and the mp4 (PyAV).

The photo (head, hair, shoulders and its own background) fills the frame through a camera that frames, drifts,
zooms, rolls and shakes; the head nods and sways as a smooth warp of the photo (stronger when the filmed speech
is loud); the mouth opens with the speech and the eyes blink. Fakes are made inside that same footage: a face
swap changes the photo before it is filmed (or, for the jitter method, every frame), lip-sync re-renders the
mouth region every frame. Runs inside worker processes; x264 runs with one thread so the bytes only depend on
the spec.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from scripts.synth import audio
from scripts.synth.faces import (
    Animator,
    Face,
    derive,
    ellipse_mask,
    face_box,
    face_swap,
    lower_face_box,
    to_u8,
)
from scripts.synth.plan import (
    RENDER,
    SWAPS,
    TTS_ENGINES,
    VOICE_CONVERSIONS,
    Camera,
    Identity,
    Nuisance,
    VideoSpec,
    rng,
)

X264_PRESET = "superfast"
AUDIO_FRAME = 1024
_FACES: dict[str, Face] = {}  # per worker: derived identities, reused by every video of the identity


@dataclass
class Context:
    """What every worker needs besides the spec: face-source keypoints, the speech folder and rates."""

    sources: dict[str, np.ndarray]
    speech_dir: Path
    voice_rates: dict[str, int]  # the sample rate of each speaker's recordings (their bandwidth)


def identity_face(identity: Identity, ctx: Context) -> Face:
    if identity.name not in _FACES:
        if len(_FACES) > 16:
            _FACES.clear()
        _FACES[identity.name] = derive(identity, ctx.sources)
    return _FACES[identity.name]


# --- audio ------------------------------------------------------------------------------------------------------
def build_audio(spec: VideoSpec, ctx: Context) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(audio [channels, samples], mouth opening per frame, head loudness per frame) for the spec's method.

    The filmed utterance moves the head (and the mouth unless a lip-sync re-renders it); the heard one is the
    filmed one, another real utterance (lip sync), its voice-converted copy or text-to-speech.
    """
    n, f = spec.nuisance, spec.fake
    params = dict(f.params)
    samples = int(round(n.duration * audio.SR))
    filmed = audio.assemble(spec.speech, ctx.speech_dir, n.leading_silence, samples)
    heard = filmed
    if f.heard_speech:
        heard = audio.assemble(f.heard_speech, ctx.speech_dir, n.leading_silence, samples)
    if f.audio in VOICE_CONVERSIONS:
        heard = audio.convert_voice(filmed, f.audio, params, rng(spec.seed, spec.index, RENDER, 2))
    elif f.audio in TTS_ENGINES:
        heard = audio.text_to_speech(f.tts_text, f.tts_voice, params, n.leading_silence, samples,
                                     ctx.voice_rates[spec.identity.voice], filmed)
    heard = heard + audio.room_tone(filmed, rng(spec.seed, spec.index, RENDER, 3))
    times = (np.arange(n.frames) + 0.5) / n.fps
    offset = f.av_offset + (f.av_offset_end - f.av_offset) * times / n.duration
    shown = times - offset  # the moment of the speech each frame shows
    lag = params.get("lag", 0.0)
    mouth = audio.envelope(heard, shown - lag, 2.0 / n.fps) if f.mouth_follows_heard else \
        audio.envelope(filmed, shown, 2.0 / n.fps)
    head = audio.envelope(filmed, shown, 0.3)
    outside = (shown < 0) | (shown > n.duration)
    mouth[outside], head[outside] = 0, 0
    if f.visual == "lip_sync_viseme":
        mouth = visemes(mouth, int(params["levels"]), int(params["hold"]))
    return audio.finish(heard, n, rng(spec.seed, spec.index, RENDER, 0)), mouth, head


def visemes(mouth: np.ndarray, levels: int, hold: int) -> np.ndarray:
    """A generator that predicts a few mouth shapes at a lower frame rate: quantised and held."""
    held = np.repeat(mouth[::hold], hold)[:len(mouth)]
    return np.round(held * (levels - 1)) / (levels - 1)


# --- motion -----------------------------------------------------------------------------------------------------
def wobble(r: np.random.Generator, times: np.ndarray, amplitude: float, low: float = 0.1,
           high: float = 0.7) -> np.ndarray:
    """A smooth random curve: two sinusoids of random frequency and phase."""
    curve = np.zeros_like(times)
    for weight in (1.0, 0.5):
        curve += weight * np.sin(2 * np.pi * r.uniform(low, high) * times + r.uniform(0, 2 * np.pi))
    return (amplitude * curve / 1.5).astype(np.float32)


def blinks(r: np.random.Generator, times: np.ndarray) -> np.ndarray:
    """Eye closure in [0, 1] per frame: a 0.2 s blink every 2-5 s."""
    closure = np.zeros_like(times)
    t = r.uniform(0.3, 2.5)
    while t < times[-1] + 1:
        closure = np.maximum(closure, np.clip(1 - np.abs(times - t) / 0.1, 0, 1))
        t += r.uniform(2.0, 5.0)
    return closure


def camera_path(cam: Camera, n: Nuisance, face: Face, shape: tuple[int, ...], r: np.random.Generator,
                times: np.ndarray) -> np.ndarray:
    """Per frame 2x3 affine from photo to frame: framing, zoom and pan drift, roll and hand-held shake, always
    inside the photo (no border is ever shown)."""
    photo_h, photo_w = shape[:2]
    aspect = n.width / n.height
    progress = times / max(times[-1], 1e-6)
    shake = [wobble(r, times, cam.shake, 1.5, 5.0) for _ in range(2)]
    roll = cam.roll + wobble(r, times, 0.3, 0.2, 1.0)
    out = []
    for k, t in enumerate(progress):
        angle = np.radians(roll[k])
        cos, sin = abs(np.cos(angle)), abs(np.sin(angle))
        # the largest window of this aspect and rotation inside the photo
        fit = min(photo_h / (cos + aspect * sin), photo_w / (aspect * cos + sin))
        height = min(cam.window * (1 + cam.zoom_drift * t), 0.97) * fit
        half_w = (height * aspect * cos + height * sin) / 2
        half_h = (height * cos + height * aspect * sin) / 2
        cx = face.eyes[0] + (0.5 - cam.face_x) * height * aspect + (cam.pan[0] * t + shake[0][k]) * height
        cy = face.eyes[1] + (0.5 - cam.face_y) * height + (cam.pan[1] * t + shake[1][k]) * height
        cx, cy = np.clip(cx, half_w, photo_w - half_w), np.clip(cy, half_h, photo_h - half_h)
        m = cv2.getRotationMatrix2D((float(cx), float(cy)), float(roll[k]), n.height / height)
        m[:, 2] += (n.width / 2 - cx, n.height / 2 - cy)
        out.append(m)
    return np.stack(out).astype(np.float32)


class HeadMotion:
    """Nods and sways of the head as a smooth warp of the photo around the neck (background stretches a little
    near the head, as in talking-head animation), inside ``box``."""

    def __init__(self, face: Face, box: tuple[int, int, int, int]):
        x0, y0, x1, y1 = box
        e = face.eye_distance
        h, w = y1 - y0, x1 - x0
        eyes = face.eyes - (x0, y0)
        weight = ellipse_mask((float(eyes[0]), float(eyes[1] + 0.3 * e)), (1.5 * e, 2.2 * e), 0.4 * e, (h, w))
        taper = np.minimum.outer(np.clip(np.minimum(np.arange(h), h - 1 - np.arange(h)) / (0.3 * e), 0, 1),
                                 np.clip(np.minimum(np.arange(w), w - 1 - np.arange(w)) / (0.3 * e), 0, 1))
        weight = (weight * taper).astype(np.float32)
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32)
        px, py = float(eyes[0]), float(eyes[1] + 2.2 * e)  # the pivot: the neck
        # the backward map is linear in the motion: map = grid + w * (R^-1 (grid - pivot - shift) + pivot - grid)
        self.w, self.wx, self.wy = weight, weight * (self.xx - px), weight * (self.yy - py)

    def maps(self, angle: float, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
        """Backward maps: each pixel takes the colour from where the rotated and shifted head was."""
        a = float(np.radians(-angle))
        cos, sin = float(np.cos(a)), float(np.sin(a))
        map_x = self.xx + (cos - 1) * self.wx - sin * self.wy - (cos * dx - sin * dy) * self.w
        map_y = self.yy + sin * self.wx + (cos - 1) * self.wy - (sin * dx + cos * dy) * self.w
        return map_x, map_y


def grade_lut(cam: Camera) -> np.ndarray:
    """The camera's white balance and gamma as a 3-channel lookup table for cv2.LUT."""
    v = np.arange(256, dtype=np.float32)[:, None] / 255
    lut = np.clip((v * np.array(cam.gains, np.float32)) ** cam.gamma, 0, 1) * 255
    return (lut + 0.5).astype(np.uint8)[None, :, :]


def noise_bank(cam: Camera, n: Nuisance, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three frames of sensor noise (as + and - uint8 parts for saturating adds), larger than the frame so that
    every frame takes a random window of one."""
    if cam.noise < 0.002:
        return []
    cv2.setRNGSeed(seed)
    bank = []
    for _ in range(3):
        noise = np.zeros((n.height + 16, n.width + 16, 3), np.int16)
        cv2.randn(noise, 0, cam.noise * 255)
        bank.append((np.clip(noise, 0, 255).astype(np.uint8), np.clip(-noise, 0, 255).astype(np.uint8)))
    return bank


# --- frames -----------------------------------------------------------------------------------------------------
class LipSync:
    """Per-frame re-rendering of the lower face: low-resolution generation blended in with a soft rectangle."""

    def __init__(self, animator: Animator, res: float):
        self.box = lower_face_box(animator)
        x0, y0, x1, y1 = self.box
        h, w = y1 - y0, x1 - x0
        self.small = (max(8, int(res)), max(8, int(res * h / max(w, 1))))
        ramp = lambda size: np.clip(np.minimum(np.arange(size), size - 1 - np.arange(size)) / (0.18 * size), 0, 1)  # noqa: E731
        self.mask = np.minimum.outer(ramp(h), ramp(w)).astype(np.float32)[:, :, None]

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        patch = rgb[y0:y1, x0:x1]
        low = cv2.resize(cv2.resize(patch, self.small, interpolation=cv2.INTER_AREA), (x1 - x0, y1 - y0),
                         interpolation=cv2.INTER_LINEAR)
        rgb[y0:y1, x0:x1] = patch + self.mask * (low - patch)
        return rgb


def frames(spec: VideoSpec, ctx: Context, mouth: np.ndarray, head: np.ndarray) -> Iterator[np.ndarray]:
    n, cam, f = spec.nuisance, spec.camera, spec.fake
    params = dict(f.params)
    r = rng(spec.seed, spec.index, RENDER, 1)
    face = identity_face(spec.identity, ctx)
    filmed, jitter = face, None
    if f.visual in SWAPS:
        swap = face_swap(f.visual, face, identity_face(f.donor, ctx), params)
        filmed = swap.face
        if swap.layer is not None:
            jitter = swap
    shape = face.rgb.shape
    head_box = face_box(face, shape, 2.3)
    hx0, hy0, hx1, hy1 = head_box
    anim_box = face_box(face, shape, 1.3)
    ax0, ay0, ax1, ay1 = anim_box
    inner = (slice(ay0 - hy0, ay1 - hy0), slice(ax0 - hx0, ax1 - hx0))
    animator = Animator(filmed, anim_box)
    if jitter is not None:  # the target's own face moves underneath; the pasted layer is re-blended every frame
        under = Animator(face, anim_box)
        layer = Animator(Face(jitter.layer, filmed.keypoints), anim_box)
        layer_mask = jitter.mask[ay0:ay1, ax0:ax1, None]
        jr = rng(spec.seed, spec.index, RENDER, 4)
    lip_sync = LipSync(animator, params["res"]) if f.visual == "lip_sync_lowres_mouth" else None
    inside = animator.inside * params["gain"] if f.visual == "lip_sync_viseme" else None

    lut = grade_lut(cam)
    photo = filmed.rgb
    if cam.blur > 0.3:
        photo = cv2.GaussianBlur(photo, (3, 3), cam.blur)
    buffer = cv2.LUT(to_u8(photo), lut)
    head_base = to_u8(filmed.rgb[hy0:hy1, hx0:hx1])
    motion = HeadMotion(face, head_box)
    times = np.arange(n.frames) / n.fps
    poses = camera_path(cam, n, face, shape, r, times)
    nod = wobble(r, times, cam.nod) + cam.speech_nod * np.convolve(head, np.ones(3) / 3, mode="same")
    sway = [wobble(r, times, 0.04 * face.eye_distance) for _ in range(2)]
    closure = blinks(r, times)
    bank = noise_bank(cam, n, int(r.integers(2**31)))
    for k in range(n.frames):
        if jitter is not None:
            base = under.render(float(mouth[k]), float(closure[k]))
            top = layer.render(float(mouth[k]), float(closure[k]))
            m = np.float32([[1, 0, jr.normal(0, jitter.jitter)], [0, 1, jr.normal(0, jitter.jitter)]])
            top = cv2.warpAffine(top, m, top.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
            mask = cv2.warpAffine(layer_mask, m, top.shape[1::-1])[:, :, None]
            roi = base + mask * (top - base)
        else:
            roi = animator.render(float(mouth[k]), float(closure[k]), inside)
        if lip_sync is not None:
            roi = lip_sync.apply(roi)
        region = head_base.copy()
        region[inner] = to_u8(roi)
        map_x, map_y = motion.maps(float(nod[k]), float(sway[0][k]), float(sway[1][k]))
        region = cv2.remap(region, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if cam.blur > 0.3:
            region = cv2.GaussianBlur(region, (3, 3), cam.blur)
        buffer[hy0:hy1, hx0:hx1] = cv2.LUT(region, lut)
        frame = cv2.warpAffine(buffer, poses[k], (n.width, n.height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)
        if bank:
            plus, minus = bank[int(r.integers(len(bank)))]
            y, x = int(r.integers(16)), int(r.integers(16))
            frame = cv2.subtract(cv2.add(frame, plus[y:y + n.height, x:x + n.width]),
                                 minus[y:y + n.height, x:x + n.width])
        yield frame


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
            # OpenCV's BT.601 limited-range conversion: the same as FFmpeg's, ten times faster
            frame = av.VideoFrame.from_ndarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
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
    sound, mouth, head = build_audio(spec, ctx)
    encode(path, frames(spec, ctx, mouth, head), sound, spec.nuisance)
    return path.stat().st_size


# --- worker processes -------------------------------------------------------------------------------------------
_CONTEXT: Context | None = None


def init_worker(context: Context) -> None:
    global _CONTEXT
    _CONTEXT = context


def render_group(specs: list[VideoSpec], out: str) -> list[tuple[str, int]]:
    """Worker entry point: writes ``out/<split>/<name>`` for each spec (the videos of one identity, so that a
    worker derives the identity once) with the context given to ``init_worker``."""
    return [(spec.name, make_video(spec, _CONTEXT, Path(out) / spec.split / spec.name)) for spec in specs]
