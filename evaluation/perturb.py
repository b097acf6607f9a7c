"""Perturbations for the robustness evaluation, applied to reader-format samples (the face clip and its audio).

Video: the DeeperForensics-1.0 protocol, 7 types x 5 levels (levels from its paper: saturation 0.4..0,
contrast 0.85..0.35, block-wise 16..80 blocks, colour noise variance 0.001..0.05, Gaussian blur kernel 7..21,
pixelation factor 2..6, H.264 CRF 30..40). Audio: white noise at an SNR, band-limiting, low-bitrate codec and
resampling. Every function is deterministic for a given ``numpy.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import av
import cv2
import numpy as np
import torch
import torchaudio.functional as AF

from shards.extract import AUDIO_SAMPLE_RATE

LEVELS = 5
VIDEO_LEVELS: dict[str, list[float]] = {
    "saturation": [0.4, 0.3, 0.2, 0.1, 0.0],
    "contrast": [0.85, 0.725, 0.6, 0.475, 0.35],
    "block_wise": [16, 32, 48, 64, 80],
    "color_noise": [0.001, 0.002, 0.005, 0.01, 0.05],
    "gaussian_blur": [7, 9, 13, 17, 21],
    "pixelation": [2, 3, 4, 5, 6],
    "h264_crf": [30, 32, 34, 37, 40],
}
AUDIO_LEVELS: dict[str, list[float]] = {
    "noise_snr_db": [30, 20, 10, 5, 0],
    "lowpass_hz": [6000, 4000, 3000, 2000, 1000],
    "aac_kbps": [64, 48, 32, 24, 16],
    "resample_hz": [12000, 11025, 8000, 6000, 4000],
}

Frames = np.ndarray  # uint8 [T, H, W, 3]


def saturation(frames: Frames, factor: float, rng: np.random.Generator) -> Frames:
    hsv = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2HSV) for f in frames]).astype(np.float32)
    hsv[..., 1] *= factor
    return np.stack([cv2.cvtColor(f, cv2.COLOR_HSV2RGB) for f in hsv.clip(0, 255).astype(np.uint8)])


def contrast(frames: Frames, factor: float, rng: np.random.Generator) -> Frames:
    x = frames.astype(np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return ((x - mean) * factor + mean).clip(0, 255).astype(np.uint8)


def block_wise(frames: Frames, blocks: float, rng: np.random.Generator) -> Frames:
    """``blocks`` random squares of random colour, each 1/16 of the side, the same on every frame."""
    out = frames.copy()
    _, height, width, _ = frames.shape
    side = max(1, min(height, width) // 16)
    for _ in range(int(blocks)):
        y, x = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        out[:, y:y + side, x:x + side] = rng.integers(0, 256, size=3, dtype=np.uint8)
    return out


def color_noise(frames: Frames, variance: float, rng: np.random.Generator) -> Frames:
    noise = rng.normal(0.0, np.sqrt(variance), size=frames.shape) * 255
    return (frames.astype(np.float32) + noise).clip(0, 255).astype(np.uint8)


def gaussian_blur(frames: Frames, kernel: float, rng: np.random.Generator) -> Frames:
    k = int(kernel) | 1
    return np.stack([cv2.GaussianBlur(f, (k, k), 0) for f in frames])


def pixelation(frames: Frames, factor: float, rng: np.random.Generator) -> Frames:
    _, height, width, _ = frames.shape
    small = (max(1, int(width / factor)), max(1, int(height / factor)))
    return np.stack([cv2.resize(cv2.resize(f, small, interpolation=cv2.INTER_AREA), (width, height),
                                interpolation=cv2.INTER_NEAREST) for f in frames])


def h264_crf(frames: Frames, crf: float, rng: np.random.Generator) -> Frames:
    """Encode the clip with libx264 at ``crf`` and decode it back (single-threaded, so deterministic)."""
    import io

    buffer = io.BytesIO()
    _, height, width, _ = frames.shape
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(int(crf)), "preset": "veryfast", "threads": "1"}
        stream.thread_count = 1
        for frame in frames:
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:stream.height, :stream.width]),
                                               format="rgb24")
            container.mux(stream.encode(image))
        container.mux(stream.encode())
    buffer.seek(0)
    with av.open(buffer) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    out = np.stack(decoded)
    if out.shape != frames.shape:  # odd sizes lost a row/column: pad back by edge replication
        out = np.pad(out, ((0, 0), (0, height - out.shape[1]), (0, width - out.shape[2]), (0, 0)), mode="edge")
    return out


def noise_snr_db(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    power = float(np.mean(audio ** 2)) or 1e-8
    noise = rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), size=audio.shape)
    return (audio + noise).clip(-1, 1).astype(np.float32)


def lowpass_hz(audio: np.ndarray, cutoff: float, rng: np.random.Generator) -> np.ndarray:
    return AF.lowpass_biquad(torch.from_numpy(audio), AUDIO_SAMPLE_RATE, float(cutoff)).numpy().astype(np.float32)


def resample_hz(audio: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    down = AF.resample(torch.from_numpy(audio), AUDIO_SAMPLE_RATE, int(rate))
    return AF.resample(down, int(rate), AUDIO_SAMPLE_RATE)[: len(audio)].numpy().astype(np.float32)


def aac_kbps(audio: np.ndarray, kbps: float, rng: np.random.Generator) -> np.ndarray:
    """Encode with AAC at ``kbps`` and decode back, re-aligned to the input length."""
    import io

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="adts") as container:
        stream = container.add_stream("aac", rate=AUDIO_SAMPLE_RATE)
        stream.bit_rate = int(kbps * 1000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1).astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = AUDIO_SAMPLE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        container.mux(stream.encode(None))
    buffer.seek(0)
    with av.open(buffer) as container:
        decoded = np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(audio=0)])
    out = np.zeros_like(audio)
    n = min(len(audio), len(decoded))
    out[:n] = decoded[:n]
    return out.astype(np.float32)


VIDEO_PERTURBATIONS: dict[str, Callable] = {
    "saturation": saturation, "contrast": contrast, "block_wise": block_wise, "color_noise": color_noise,
    "gaussian_blur": gaussian_blur, "pixelation": pixelation, "h264_crf": h264_crf,
}
AUDIO_PERTURBATIONS: dict[str, Callable] = {
    "noise_snr_db": noise_snr_db, "lowpass_hz": lowpass_hz, "aac_kbps": aac_kbps, "resample_hz": resample_hz,
}


def conditions() -> list[tuple[str, int, float]]:
    """Every (perturbation, level 1..5, parameter) of the protocol, video first."""
    table = {**VIDEO_LEVELS, **AUDIO_LEVELS}
    return [(name, level + 1, values[level]) for name, values in table.items() for level in range(LEVELS)]


def perturb_sample(sample: dict, name: str, value: float, rng: np.random.Generator) -> dict:
    """A copy of a reader-format sample (frames and mouths uint8 [T,3,H,W], audio float [N]) with one
    perturbation; a video perturbation is applied to the face crops and to the mouth crops alike."""
    out = dict(sample)
    if name in VIDEO_PERTURBATIONS:
        for crops in ("frames", "mouths"):
            perturbed = VIDEO_PERTURBATIONS[name](sample[crops].permute(0, 2, 3, 1).numpy(), value, rng)
            out[crops] = torch.from_numpy(np.ascontiguousarray(perturbed)).permute(0, 3, 1, 2).contiguous()
    elif name in AUDIO_PERTURBATIONS:
        audio = sample["audio"].numpy().astype(np.float32)
        out["audio"] = torch.from_numpy(AUDIO_PERTURBATIONS[name](audio, value, rng)) if len(audio) else sample["audio"]
    else:
        raise KeyError(f"unknown perturbation {name!r}; known: {sorted(VIDEO_LEVELS) + sorted(AUDIO_LEVELS)}")
    return out
