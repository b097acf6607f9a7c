"""Training augmentations suited to deepfake detection, one parameter draw per clip (all frames alike).

Visual: mirror, colour jitter, resolution loss (down/up-scaling), Gaussian blur, sensor noise, face-part cutout,
JPEG re-compression. Audio: gain, additive noise at a random SNR, codec-like band-limiting, a recording channel's
noise floor (``channel_noise``) and colour (``channel_eq``), a small shift of the whole track. Pseudo-fakes:
``self_blend`` turns a genuine clip's faces into a blended face (the clip's own face, slightly moved, recoloured
and re-sampled, pasted inside a soft elliptical mask), a face swap without a donor;
``self_vocode`` re-synthesises a genuine clip's audio from its magnitude spectrogram (Griffin-Lim), a converted
voice without a target speaker; ``mouth_hold`` holds each mouth for 2-3 frames (a talking-mouth generator that runs
at a lower frame rate) while the audio stays the clip's own. Time: a random temporal crop (a prefix and/or suffix
of the clip is masked out) so that a model cannot rely on where speech starts (fakes in FakeAVCeleb /
AV-Deepfake1M start with silence).
Every function draws from the ``numpy.random.Generator`` it is given: no global RNG (the sensor noise comes from
OpenCV's generator, seeded from that one right before each use).

Each visual op works on the whole clip at once where OpenCV can (a [T*H, W, 3] image): on a 224-px training clip
this keeps the augmentation cheaper than decoding it, which a GPU's data loader needs (README, GPU check).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torchaudio

from shards.extract import AUDIO_SAMPLE_RATE
from train.config import AugmentConfig

# Face-part bands in a square crop with margin 0.3 around the face box: (y0, y1, x0, x1) as fractions.
FACE_PARTS = {
    "eyes": (0.34, 0.48, 0.22, 0.78),
    "nose": (0.45, 0.62, 0.40, 0.60),
    "mouth": (0.60, 0.76, 0.32, 0.68),
}


def augment_frames(frames: np.ndarray, aug: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """``frames`` uint8 [T, H, W, 3] RGB -> augmented uint8 array of the same shape."""
    t, h, w, _ = frames.shape
    x = np.ascontiguousarray(frames)
    if rng.random() < aug.flip:
        x = cv2.flip(as_image(x), 1).reshape(x.shape)  # flips each row, so each frame, left-right
    if rng.random() < aug.color:
        x = _color_jitter(x, rng)
    if rng.random() < aug.resize:
        factor = rng.uniform(0.35, 0.9)
        small = (max(8, round(w * factor)), max(8, round(h * factor)))
        x = np.stack([cv2.resize(cv2.resize(f, small, interpolation=cv2.INTER_AREA), (w, h),
                                 interpolation=cv2.INTER_LINEAR) for f in x])
    if rng.random() < aug.blur:
        sigma = rng.uniform(0.3, 1.5) * h / 224
        x = np.stack([cv2.GaussianBlur(f, (0, 0), max(sigma, 0.1)) for f in x])
    if rng.random() < aug.noise:
        x = _sensor_noise(x, rng.uniform(2.0, 10.0), int(rng.integers(2**31)))
    if rng.random() < aug.cutout:
        x = _cutout(np.array(x), rng)
    if rng.random() < aug.jpeg:
        low, high = aug.jpeg_quality
        x = jpeg_recompress(x, int(rng.integers(low, high + 1)))
    return x  # contiguous: the input made so, or a new array from each op that ran


def jpeg_recompress(frames: np.ndarray, quality: int) -> np.ndarray:
    """Each RGB frame [T, H, W, 3] through a JPEG encode and decode at ``quality``."""
    bgr = cv2.cvtColor(as_image(np.ascontiguousarray(frames)), cv2.COLOR_RGB2BGR).reshape(frames.shape)
    for frame in bgr:
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("OpenCV could not JPEG-encode a frame")
        frame[:] = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return cv2.cvtColor(as_image(bgr), cv2.COLOR_BGR2RGB).reshape(frames.shape)


def as_image(x: np.ndarray) -> np.ndarray:
    """A contiguous uint8 clip [T, H, W, 3] as one [T*H, W, 3] image (a view), for OpenCV's per-pixel ops."""
    return x.reshape(-1, x.shape[2], x.shape[3])


LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _color_jitter(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Saturation s around each pixel's grey g = f . LUMA, then contrast c around the clip's mean grey and
    brightness b: c * (g + s * (f - g) - mean) + mean + b, one 3x4 affine map per pixel (rounded, saturated)."""
    saturation, contrast, brightness = rng.uniform(0.6, 1.4), rng.uniform(0.7, 1.3), rng.uniform(-25, 25)
    image = as_image(x)
    mean = float(np.array(cv2.mean(image)[:3], np.float32) @ LUMA)
    linear = contrast * (saturation * np.eye(3, dtype=np.float32) + (1 - saturation) * np.outer(np.ones(3), LUMA))
    offset = np.full((3, 1), (1 - contrast) * mean + brightness)
    return cv2.transform(image, np.hstack([linear, offset]).astype(np.float32)).reshape(x.shape)


def _sensor_noise(x: np.ndarray, std: float, seed: int) -> np.ndarray:
    """Gaussian noise of ``std`` grey levels on every pixel; OpenCV draws it (4x faster than numpy) from ``seed``."""
    cv2.setRNGSeed(seed)
    noise = np.empty(x.shape, np.float32)
    cv2.randn(noise, 0.0, std)
    noise += x
    return np.clip(noise, 0, 255, out=noise).astype(np.uint8)


def _cutout(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    _, h, w, _ = x.shape
    y0, y1, x0, x1 = FACE_PARTS[list(FACE_PARTS)[int(rng.integers(len(FACE_PARTS)))]]
    dy, dx = rng.uniform(-0.04, 0.04, 2)
    r0, r1 = int((y0 + dy) * h), int(math.ceil((y1 + dy) * h))
    c0, c1 = int((x0 + dx) * w), int(math.ceil((x1 + dx) * w))
    x[:, max(r0, 0):r1, max(c0, 0):c1] = np.uint8(rng.integers(0, 256))
    return x


def self_blend(frames: np.ndarray, mouths: np.ndarray | None,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """A genuine clip's crops -> the crops of a blended face (uint8 [T, H, W, 3] each, one draw for the clip).

    The idea of self-blended images (Shiohara & Yamasaki, CVPR 2022): a face swap leaves a blending boundary and a
    mismatch of colour and resolution between the pasted inner face and the rest, whoever the donor is; a detector
    that learns those from pseudo-fakes made of the genuine training faces learns them without the identity cues
    of the few real swaps it sees. The mouth crops (inside the pasted region; None: none) get the same colour and
    resolution change."""
    source = _blend_source(rng)
    t, h, w, _ = frames.shape
    moved = np.stack([cv2.warpAffine(f, source["warp"](w, h), (w, h), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT) for f in frames])
    mask = _blend_mask(h, w, rng)[None, :, :, None]
    pasted = source["look"](moved).astype(np.float32)
    blended = frames.astype(np.float32) * (1 - mask) + pasted * mask
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8), None if mouths is None else source["look"](mouths)


def mouth_hold(frames: np.ndarray, mouths: np.ndarray, window_frames: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A genuine clip's crops (uint8 [T, H, W, 3] faces and mouths, windows of ``window_frames`` consecutive
    frames) -> the same clip whose mouth moves in held steps: within each window every frame shows the mouth of
    the step's first frame, in the mouth crop and in the mouth band of the face crop.

    Generators that re-render a mouth to new speech often predict it at a lower rate than the video's and hold
    each shape; the head, the camera and the rest of the face keep moving. Each copied mouth is moved by a random
    sub-pixel shift, so a held step is not a run of identical crops (in a real video the crop tracks a moving
    head)."""
    hold, phase = int(rng.integers(2, 4)), int(rng.integers(0, 3))
    step = np.arange(frames.shape[0]) % window_frames
    source = np.arange(frames.shape[0]) - step + np.maximum((step + phase) // hold * hold - phase, 0)
    h, w = frames.shape[1:3]
    y0, y1, x0, x1 = FACE_PARTS["mouth"]
    band = np.zeros((h, w), np.float32)
    band[int((y0 - 0.04) * h):int(np.ceil((y1 + 0.04) * h)), int((x0 - 0.04) * w):int(np.ceil((x1 + 0.04) * w))] = 1
    band = cv2.GaussianBlur(band, (0, 0), 0.02 * w)[:, :, None]
    faces, lips = frames.copy(), mouths.copy()
    for k in np.flatnonzero(source != np.arange(frames.shape[0])):
        dx, dy, mouth_dx, mouth_dy = rng.normal(0.0, 0.4, 4)
        faces[k] = np.clip(frames[k] * (1 - band) + _shifted(frames[source[k]], dx, dy) * band + 0.5, 0, 255)
        lips[k] = _shifted(mouths[source[k]], mouth_dx, mouth_dy)
    return faces, lips


def _shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, m, image.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _blend_source(rng: np.random.Generator) -> dict:
    """The pasted face's change: a small similarity warp, a colour shift and a resolution change."""
    scale, angle = rng.uniform(0.96, 1.04), rng.uniform(-3.0, 3.0)
    shift = rng.uniform(-0.02, 0.02, 2)
    gain, offset = rng.uniform(0.92, 1.08, 3).astype(np.float32), rng.uniform(-12.0, 12.0, 3).astype(np.float32)
    resample = ("down", "blur", "sharpen", "none")[int(rng.integers(4))]
    factor, sigma, amount = rng.uniform(0.5, 0.85), rng.uniform(0.4, 1.0), rng.uniform(0.5, 1.5)

    def warp(w: int, h: int) -> np.ndarray:
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        m[:, 2] += shift * (w, h)
        return m

    def look(x: np.ndarray) -> np.ndarray:
        h, w = x.shape[1:3]
        out = []
        for f in x.astype(np.float32) * gain + offset:
            if resample == "down":
                small = (max(4, round(w * factor)), max(4, round(h * factor)))
                f = cv2.resize(cv2.resize(f, small, interpolation=cv2.INTER_AREA), (w, h),
                               interpolation=cv2.INTER_LINEAR)
            elif resample == "blur":
                f = cv2.GaussianBlur(f, (0, 0), sigma * h / 64)
            elif resample == "sharpen":
                f = f + amount * (f - cv2.GaussianBlur(f, (0, 0), h / 64))
            out.append(f)
        return np.clip(np.stack(out) + 0.5, 0, 255).astype(np.uint8)

    return {"warp": warp, "look": look}


def _blend_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [H, W] in [0, 1]: a soft, irregular ellipse over the inner face of a crop (margin 0.3 around the
    face box), scaled by a blend ratio."""
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    wobble = sum(rng.uniform(0, 0.06) * np.cos(k * angles + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    rx, ry = rng.uniform(0.20, 0.29) * w, rng.uniform(0.26, 0.35) * h
    cx, cy = (0.5 + rng.uniform(-0.02, 0.02)) * w, (0.53 + rng.uniform(-0.02, 0.03)) * h
    points = np.stack([cx + rx * (1 + wobble) * np.cos(angles), cy + ry * (1 + wobble) * np.sin(angles)], 1)
    mask = np.zeros((h, w), np.float32)
    cv2.fillPoly(mask, [np.round(points * 4).astype(np.int32)], 1.0, shift=2)
    mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(0.02, 0.08) * w)
    mask /= max(float(mask.max()), 1e-6)
    return mask * float(rng.choice([0.6, 0.8, 1.0, 1.0, 1.0]))


def augment_audio(audio: np.ndarray, aug: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """``audio`` float32 [N] in [-1, 1] -> augmented float32 [N] (same length, so timing is kept)."""
    x = audio.astype(np.float32, copy=True)
    if x.size == 0:
        return x
    if aug.audio_jitter_ms > 0:
        shift = int(rng.uniform(-1, 1) * aug.audio_jitter_ms * AUDIO_SAMPLE_RATE / 1000)
        x = np.roll(x, shift)
        if shift > 0:
            x[:shift] = 0.0
        elif shift < 0:
            x[shift:] = 0.0
    if rng.random() < aug.band_limit:
        x = low_pass(x, cutoff_hz=rng.uniform(3000.0, 7000.0))
    if rng.random() < aug.audio_gain:
        x = x * np.float32(10 ** (rng.uniform(-6.0, 6.0) / 20))
    if rng.random() < aug.audio_noise:
        rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        if rms > 0:
            snr_db = rng.uniform(10.0, 40.0)
            x = x + rng.normal(0.0, rms / 10 ** (snr_db / 20), x.shape).astype(np.float32)
    if aug.channel_noise > 0 and rng.random() < aug.channel_noise:
        x = x + speech_shaped_noise(x, snr_db=rng.uniform(5.0, 30.0), rng=rng)
    if aug.channel_eq > 0 and rng.random() < aug.channel_eq:
        x = channel_colour(x, low_db=rng.uniform(-24.0, 12.0), corner_hz=float(np.exp(rng.uniform(np.log(100.0),
                           np.log(600.0)))), tilt_db=rng.uniform(-4.0, 4.0))
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def self_vocode(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A genuine clip's audio re-synthesised from its STFT magnitude by Griffin-Lim (random FFT size, few
    iterations, zero initial phase: no global RNG), at the original level: the phase and smearing artefacts a
    vocoder leaves, in the clip's own voice and words (vocoded copies as spoofing training data: Wang & Yamagishi,
    ICASSP 2023)."""
    n_fft = int(rng.choice([256, 512, 1024]))
    hop = n_fft // 4
    if audio.size < 2 * n_fft:
        return audio.astype(np.float32, copy=True)
    x = torch.from_numpy(audio.astype(np.float32))
    window = torch.hann_window(n_fft)
    magnitude = torch.stft(x, n_fft, hop, window=window, return_complex=True).abs()
    y = torchaudio.functional.griffinlim(magnitude, window, n_fft, hop, n_fft, power=1.0,
                                         n_iter=int(rng.integers(4, 17)), momentum=0.99, length=audio.size,
                                         rand_init=False).numpy()
    return np.clip(y * level_gain(audio, y), -1.0, 1.0).astype(np.float32)


def low_pass(x: np.ndarray, cutoff_hz: float, sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray:
    """Zero the spectrum above ``cutoff_hz`` with a 300 Hz cosine taper (a codec's band limit)."""
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(x.size, 1.0 / sample_rate)
    taper = np.clip((cutoff_hz + 300.0 - freqs) / 300.0, 0.0, 1.0)
    gain = 0.5 - 0.5 * np.cos(np.pi * taper)
    return np.fft.irfft(spectrum * gain, n=x.size).astype(np.float32)


def channel_colour(x: np.ndarray, low_db: float, corner_hz: float, tilt_db: float,
                   sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray:
    """The clip as another microphone, room or phone line would colour it, at the same RMS level: ``low_db`` of
    gain below ``corner_hz`` (a smooth 4th-order shelf: negative is a high-pass, positive a boomy low end) and a
    tilt of ``tilt_db`` per octave around 1 kHz (clipped at +-12 dB). Meant for genuine voices recorded through
    channels unlike the training speakers', which the voice encoder calls fake (report/experiments.md)."""
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(x.size, 1.0 / sample_rate)
    shelf = low_db / (1.0 + (freqs / corner_hz) ** 4)
    tilt = np.clip(tilt_db * np.log2(np.maximum(freqs, 20.0) / 1000.0), -12.0, 12.0)
    y = np.fft.irfft(spectrum * 10 ** ((shelf + tilt) / 20), n=x.size)
    return (y * level_gain(x, y)).astype(np.float32)


def speech_shaped_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary noise with the clip's own long-term spectrum (its magnitudes, random phases) at ``snr_db`` below
    its level: the in-band hiss and hum of a noisy recording, where white noise would fill the empty band above a
    narrowband source's cut-off."""
    magnitude = np.abs(np.fft.rfft(x.astype(np.float64)))
    width = max(1, round(100.0 * x.size / AUDIO_SAMPLE_RATE))  # smoothed over 100 Hz: no harmonics of the voice
    magnitude = np.convolve(magnitude, np.full(width, 1.0 / width), mode="same")
    noise = np.fft.irfft(magnitude * np.exp(2j * np.pi * rng.random(magnitude.size)), n=x.size)
    return (noise * level_gain(x, noise) * 10 ** (-snr_db / 20)).astype(np.float32)


def level_gain(reference: np.ndarray, y: np.ndarray) -> float:
    """The gain that brings ``y`` to the RMS level of ``reference`` (1e-12 floor on a silent ``y``), as a float64
    scalar: a float32 ``y`` times it is computed in float64, as the pseudo-fakes always were."""
    power = np.mean(reference.astype(np.float64) ** 2)
    return np.sqrt(power / max(float(np.mean(y.astype(np.float64) ** 2)), 1e-12))


def temporal_keep_mask(frames: int, aug: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """bool [T]: True for the time steps kept; a random contiguous run of at least ``min_keep`` of them."""
    keep = np.ones(frames, dtype=bool)
    if frames < 2 or rng.random() >= aug.temporal_crop:
        return keep
    shortest = max(1, math.ceil(aug.min_keep * frames))
    length = int(rng.integers(shortest, frames + 1))
    start = int(rng.integers(0, frames - length + 1))
    keep[:] = False
    keep[start:start + length] = True
    return keep
