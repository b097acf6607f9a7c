"""Speech tracks: real recordings assembled into an utterance, mouth-opening envelopes, and fake voices.

Work happens at 16 kHz; ``finish`` sets the level, adds a noise floor, resamples to the video's rate and
makes the channels. The fake voices are numpy vocoders of the real utterance (same words, same timing,
synthetic excitation), band-limited to what the recording had so that bandwidth alone does not give them away.
"""

from __future__ import annotations

import wave
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.linalg import solve_toeplitz
from scipy.signal import lfilter, resample_poly

from synth.plan import Nuisance, Prompt

SR = 16000
N_FFT, HOP = 512, 128
WINDOW = np.hanning(N_FFT + 1)[:-1].astype(np.float32)


@lru_cache(maxsize=128)
def read_speech(path: str) -> np.ndarray:
    """A mono 16-bit wav as float32 at ``SR``."""
    with wave.open(path) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM speech is supported")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    pcm = pcm.reshape(-1, channels).mean(1)
    return resample(pcm, rate, SR)


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return x.astype(np.float32)
    ratio = Fraction(target, rate)
    return resample_poly(x, ratio.numerator, ratio.denominator).astype(np.float32)


def assemble(prompts: tuple[Prompt, ...], speech_dir: Path, leading: float, samples: int) -> np.ndarray:
    """The prompts one after another (each at the same speech level), after ``leading`` s of silence."""
    out = np.zeros(samples, np.float32)
    pos = int(round(leading * SR))
    fade = np.linspace(0, 1, int(0.01 * SR), dtype=np.float32)
    for p in prompts:
        x = read_speech(str(speech_dir / p.file))[int(round(p.start * SR)):int(round((p.start + p.length) * SR))]
        x = x[:max(0, samples - pos)].copy()
        if len(x) > 2 * len(fade):
            x[:len(fade)] *= fade
            x[-len(fade):] *= fade[::-1]
        x *= 0.1 / max(float(np.sqrt(np.mean(x**2))), 1e-4) if len(x) else 1.0
        out[pos:pos + len(x)] = x
        pos += len(x) + int(round(p.gap * SR))
    return out


def envelope(x: np.ndarray, times: np.ndarray, window: float) -> np.ndarray:
    """Mouth opening in [0, 1] at ``times`` (s) from the loudness of ``x`` in a ``window`` s around each."""
    energy = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
    lo = np.clip(np.round((times - window / 2) * SR), 0, len(x)).astype(int)
    hi = np.clip(np.round((times + window / 2) * SR), 0, len(x)).astype(int)
    rms = np.sqrt((energy[hi] - energy[lo]) / np.maximum(hi - lo, 1))
    voiced = rms[rms > 1e-4]
    ref = float(np.percentile(voiced, 90)) if len(voiced) else 1.0
    opening = np.clip(rms / ref, 0, 1) ** 0.6
    opening[rms < 0.08 * ref] = 0
    smooth = np.convolve(np.pad(opening, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    return smooth.astype(np.float32)


def stft(x: np.ndarray) -> np.ndarray:
    padded = np.pad(x, (N_FFT // 2, N_FFT))
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    return np.fft.rfft(frames * WINDOW, axis=1)  # [T, K]


def istft(spec: np.ndarray, samples: int) -> np.ndarray:
    frames = np.fft.irfft(spec, n=N_FFT, axis=1) * WINDOW
    length = (len(frames) - 1) * HOP + N_FFT
    out = np.zeros(length)
    norm = np.zeros(length)
    for t, frame in enumerate(frames):
        out[t * HOP:t * HOP + N_FFT] += frame
        norm[t * HOP:t * HOP + N_FFT] += WINDOW**2
    out /= np.maximum(norm, 1e-3)
    return out[N_FFT // 2:N_FFT // 2 + samples].astype(np.float32)


def filterbank(bands: int = 28) -> np.ndarray:
    """Triangular bands on the mel scale, [bands, bins]."""
    mel = np.linspace(0, 2595 * np.log10(1 + (SR / 2) / 700), bands + 2)
    edges = 700 * (10 ** (mel / 2595) - 1)
    freqs = np.fft.rfftfreq(N_FFT, 1 / SR)
    fb = np.zeros((bands, len(freqs)))
    for b in range(bands):
        lo, mid, hi = edges[b:b + 3]
        fb[b] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    return fb


def channel_envelope(spec: np.ndarray) -> np.ndarray:
    fb = filterbank()
    power = np.abs(spec) ** 2 @ fb.T / fb.sum(1)  # [T, bands]
    return np.sqrt(power @ fb / np.maximum(fb.sum(0), 1e-6))


def lpc_envelope(spec: np.ndarray, order: int = 16) -> np.ndarray:
    autocorr = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :order + 1]
    env = np.zeros(spec.shape)
    for t, r in enumerate(autocorr):
        r = r.copy()
        r[0] = r[0] * 1.001 + 1e-9
        a = solve_toeplitz(r[:order], -r[1:])
        gain = max(r[0] + float(a @ r[1:]), 1e-12)
        env[t] = np.sqrt(gain * N_FFT) / np.abs(np.fft.rfft(np.concatenate([[1.0], a]), N_FFT))
    return env


def buzz(samples: int, r: np.random.Generator) -> np.ndarray:
    """A glottal-pulse-like impulse train with a slowly wandering pitch, plus a little breath noise."""
    t = np.arange(samples) / SR
    f0 = r.uniform(85, 230) * (1 + 0.07 * np.sin(2 * np.pi * r.uniform(0.2, 0.6) * t + r.uniform(0, 6.3)))
    phase = np.cumsum(f0 / SR)
    pulses = np.diff(np.floor(phase), prepend=0.0)
    return (pulses + 0.03 * r.standard_normal(samples)).astype(np.float32)


def flat(spec: np.ndarray) -> np.ndarray:
    return spec / np.maximum(np.sqrt(np.mean(np.abs(spec) ** 2, axis=1, keepdims=True)), 1e-9)


def band_limit(source: np.ndarray) -> np.ndarray:
    """Per frame, 1 up to the frequency holding 99.9% of the source's energy, else 0."""
    cumulative = np.cumsum(np.abs(source) ** 2, axis=1)
    cutoff = (cumulative < 0.999 * cumulative[:, -1:]).sum(1, keepdims=True) + 2
    return (np.arange(source.shape[1])[None, :] <= cutoff).astype(np.float32)


def spectral_shift(spec: np.ndarray, factor: float) -> np.ndarray:
    """Shift pitch and formants together by scaling the frequency axis (with crude phase scaling)."""
    bins = np.arange(spec.shape[1]) / factor
    index = np.clip(np.round(bins).astype(int), 0, spec.shape[1] - 1)
    magnitude = np.stack([np.interp(bins, np.arange(spec.shape[1]), np.abs(row), right=0) for row in spec])
    return magnitude * np.exp(1j * factor * np.angle(spec[:, index]))


def vocode(x: np.ndarray, method: str, r: np.random.Generator) -> np.ndarray:
    """A fake voice saying what ``x`` says: channel vocoder (buzz or noise carrier), LPC resynthesis, or a shift."""
    spec = stft(x)
    if method == "spectral_shift":
        factor = float(r.choice([-1, 1]) * r.uniform(0.12, 0.28))
        out = spectral_shift(spec, 1 + factor if factor > 0 else 1 / (1 - factor))
    else:
        carrier = r.standard_normal(len(x)).astype(np.float32) if method == "channel_noise" else buzz(len(x), r)
        env = lpc_envelope(spec) if method == "lpc_buzz" else channel_envelope(spec)
        out = flat(stft(carrier)) * env
    return istft(out * band_limit(spec), len(x))


def finish(x: np.ndarray, nuisance: Nuisance, r: np.random.Generator) -> np.ndarray:
    """Level, noise floor, resampling and channels: float32 [channels, samples at the video's rate]."""
    speech = x[int(nuisance.leading_silence * SR):]
    rms = float(np.sqrt(np.mean(speech**2))) if len(speech) else 0.0
    x = x * (10 ** (r.uniform(-26, -18) / 20) / max(rms, 1e-6))
    noise = lfilter([1.0], [1.0, -r.uniform(0.0, 0.95)], r.standard_normal(len(x)))
    noise *= 10 ** (r.uniform(-66, -50) / 20) / max(float(np.std(noise)), 1e-9)
    x = x + noise
    x /= max(1.0, float(np.abs(x).max()) / 0.98)
    y = resample(x, SR, nuisance.sample_rate)
    samples = int(round(nuisance.duration * nuisance.sample_rate))
    y = np.pad(y, (0, max(0, samples - len(y))))[:samples]
    if nuisance.channels == 1:
        return y[None, :].astype(np.float32)
    return np.stack([y, y * r.uniform(0.85, 1.0)]).astype(np.float32)
