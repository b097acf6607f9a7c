"""Speech tracks: real recordings assembled into an utterance, mouth-opening envelopes, and fake voices.

Work happens at 16 kHz; ``finish`` sets the level, adds a noise floor, resamples to the video's rate and
makes the channels. Fake voices: four numpy vocoders of the real utterance (same words, same timing, another
voice) and Debian's flite text-to-speech (diphone and clustergen voices), all band-limited to what the
speaker's recordings hold and laid over the recording's own room tone, so that neither bandwidth nor
background noise gives them away by itself.
"""

from __future__ import annotations

import subprocess
import tempfile
import wave
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.linalg import solve_toeplitz
from scipy.signal import lfilter, resample_poly

from scripts.synth.plan import Nuisance

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


def assemble(prompts: tuple, speech_dir: Path, leading: float, samples: int) -> np.ndarray:
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
    """Windowed overlap-add inverse of ``stft`` (N_FFT = 4 hops: four shifted block sums)."""
    frames = (np.fft.irfft(spec, n=N_FFT, axis=1) * WINDOW).reshape(len(spec), N_FFT // HOP, HOP)
    out = np.zeros((len(spec) + N_FFT // HOP - 1, HOP))
    norm = np.zeros_like(out)
    squared = (WINDOW**2).reshape(N_FFT // HOP, HOP)
    for k in range(N_FFT // HOP):
        out[k:k + len(spec)] += frames[:, k]
        norm[k:k + len(spec)] += squared[k]
    out = out.reshape(-1) / np.maximum(norm.reshape(-1), 1e-3)
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


def channel_envelope(spec: np.ndarray, bands: int = 28) -> np.ndarray:
    fb = filterbank(bands)
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


def buzz(samples: int, r: np.random.Generator, f0_scale: float = 1.0) -> np.ndarray:
    """A glottal-pulse-like impulse train with a slowly wandering pitch, plus a little breath noise."""
    t = np.arange(samples) / SR
    f0 = f0_scale * r.uniform(85, 230) * (1 + 0.07 * np.sin(2 * np.pi * r.uniform(0.2, 0.6) * t + r.uniform(0, 6.3)))
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


def griffin_lim(magnitude: np.ndarray, samples: int, iterations: int, r: np.random.Generator) -> np.ndarray:
    """A waveform whose STFT magnitude approaches ``magnitude`` (phase retrieval from random phase)."""
    phase = np.exp(2j * np.pi * r.random(magnitude.shape))
    for _ in range(iterations):
        phase = np.exp(1j * np.angle(stft(istft(magnitude * phase, samples))))
    return istft(magnitude * phase, samples)


def warp_frequencies(magnitude: np.ndarray, factor: float) -> np.ndarray:
    """Formants moved by ``factor`` (the magnitude resampled along frequency)."""
    bins = np.arange(magnitude.shape[1], dtype=np.float32)
    return np.stack([np.interp(bins / factor, bins, row, right=0) for row in magnitude])


def convert_voice(x: np.ndarray, method: str, params: dict[str, float], r: np.random.Generator) -> np.ndarray:
    """The same words in another voice, by one of four independent vocoders:

    vc_channel_vocoder: mel channel vocoder on a pulse-train (or noise) carrier; vc_lpc: LPC resynthesis with a
    shifted pitch; vc_formant_shift: pitch and formants scaled together; vc_griffin_lim: formants warped on the
    magnitude spectrogram, phase rebuilt by Griffin-Lim.
    """
    spec = stft(x)
    if method == "vc_formant_shift":
        out = spectral_shift(spec, params["factor"])
    elif method == "vc_griffin_lim":
        magnitude = warp_frequencies(np.abs(spec), params["warp"])
        return griffin_lim(magnitude * band_limit(spec), len(x), int(params["iterations"]), r)
    elif method == "vc_channel_vocoder":
        carrier = r.standard_normal(len(x)).astype(np.float32) if params["noise_carrier"] else buzz(len(x), r)
        out = flat(stft(carrier)) * channel_envelope(spec, int(params["bands"]))
    elif method == "vc_lpc":
        out = flat(stft(buzz(len(x), r, params["f0_shift"]))) * lpc_envelope(spec, int(params["order"]))
    else:
        raise ValueError(f"unknown voice conversion {method}")
    return istft(out * band_limit(spec), len(x))


def room_tone(x: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """Noise with the recording's own background spectrum (per frequency, the 10th percentile over the frames
    that hold sound), laid under the whole track of every video: the room and microphone of the filmed
    utterance stay when a voice is replaced, and the pauses between prompts are not digital silence."""
    spec = np.abs(stft(x))
    sounding = spec[(spec**2).sum(1) > 1e-8]
    if not len(sounding):
        return np.zeros_like(x)
    floor = np.percentile(sounding, 10, axis=0)
    return istft(flat(stft(r.standard_normal(len(x)).astype(np.float32))) * floor, len(x))


def bandwidth(x: np.ndarray, rate: float) -> np.ndarray:
    """``x`` (at ``SR``) limited to what a recording at ``rate`` Hz holds."""
    if rate >= SR:
        return x
    ratio = Fraction(int(round(rate)), SR)
    low = resample_poly(x, ratio.numerator, ratio.denominator)
    return resample_poly(low, ratio.denominator, ratio.numerator)[:len(x)].astype(np.float32)


def flite(text: str, voice: str, stretch: float, f0: float) -> np.ndarray:
    """One sentence spoken by Debian's flite (``voice``: kal, kal16 diphone; awb, rms, slt clustergen) at ``SR``."""
    from shards.assets import flite_binary, flite_env

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tts.wav"
        subprocess.run([str(flite_binary()), "-voice", voice, "--setf", f"duration_stretch={stretch:.3f}",
                        "--setf", f"int_f0_target_mean={f0:.1f}", "-t", text, "-o", str(out)],
                       check=True, capture_output=True, env=flite_env())
        return read_speech(str(out))


def long_term_spectrum(spec: np.ndarray) -> np.ndarray:
    """Mean power per frequency over the frames that hold sound, smoothed over ~200 Hz."""
    power = np.abs(spec) ** 2
    energy = power.sum(1)
    sounding = power[energy > 1e-3 * max(float(energy.max()), 1e-12)]
    mean = sounding.mean(0) if len(sounding) else power.mean(0)
    return np.convolve(mean, np.ones(7) / 7, mode="same") + 1e-10


def match_spectrum(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``x`` equalised to the long-term spectrum of ``reference`` (what a careful forger does to make a synthetic
    voice sound like it came through the speaker's microphone and channel)."""
    spec = stft(x)
    gain = np.sqrt(long_term_spectrum(stft(reference)) / long_term_spectrum(spec))
    return istft(spec * np.clip(gain, 0.05, 20), len(x))


def text_to_speech(sentences: tuple[str, ...], voice: str, params: dict[str, float], leading: float, samples: int,
                   rate: float, reference: np.ndarray) -> np.ndarray:
    """The sentences spoken after ``leading`` s (flite's own pauses between them, its leading and trailing
    silence cut), at the speech level, equalised to the long-term spectrum of the filmed utterance
    (``reference``) and band-limited like the speaker's recordings (``rate``), so that neither bandwidth nor
    overall timbre alone gives it away."""
    x = flite(" ".join(sentences), voice, params["stretch"], params["f0"])
    loud = np.flatnonzero(np.abs(x) > 0.02 * max(float(np.abs(x).max()), 1e-6))
    x = x[loud[0]:loud[-1] + 1] if len(loud) else x
    out = np.zeros(samples, np.float32)
    pos = int(round(leading * SR))
    x = x[:max(0, samples - pos)]
    out[pos:pos + len(x)] = x * (0.1 / max(float(np.sqrt(np.mean(x**2))), 1e-4)) if len(x) else x
    return bandwidth(match_spectrum(out, reference), rate * params["band_ratio"])


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
