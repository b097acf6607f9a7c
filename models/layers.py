"""Building blocks shared by the models: log-Mel, cutting windows of audio, the audio front end, temporal
convolutions, a fusion block with a padding mask, and masked losses."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from shards.extract import AUDIO_SAMPLE_RATE


class LogMel(nn.Module):
    """Waveforms [N, L] -> normalised log-Mel images [N, 1, n_mels, frames], computed on the model's device.

    The STFT runs in float32 even under autocast or a bf16 model (DeepSpeed casts whole models)."""

    # DeepSpeed (data_types.keep_in_fp32_modules "auto") keeps these buffers in float32 under bf16.
    _keep_in_fp32_modules_strict = ["mel.spectrogram.window", "mel.mel_scale.fb"]

    def __init__(self, n_mels: int, n_fft: int, hop_length: int, sample_rate: int = AUDIO_SAMPLE_RATE,
                 center: bool = True, batch_norm: bool = True):
        super().__init__()
        self.n_fft = n_fft
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length,
                                                        n_mels=n_mels, f_min=20.0, f_max=sample_rate / 2,
                                                        center=center)
        # torch's periodic Hann window is a view into a longer tensor, which safetensors refuses to load into.
        self.mel.spectrogram.window = self.mel.spectrogram.window.clone()
        # learns the log-Mel scale (an input normalisation); without it the caller normalises (ClipVoiceEncoder)
        self.norm = nn.BatchNorm2d(1) if batch_norm else nn.Identity()

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.mel.float()
        return self

    # Left to eager under torch.compile: the STFT is complex-valued (inductor generates no code for it) and
    # torchaudio's spectrogram breaks the graph twice, whose pieces were then recompiled for each caller's batch.
    @torch.compiler.disable
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=wave.device.type, enabled=False):
            spec = torch.log(self.mel(wave.float()) + 1e-6)
        spec = spec.unsqueeze(1)
        return self.norm(spec.to(self.norm.weight.dtype)) if isinstance(self.norm, nn.BatchNorm2d) else spec


def window_audio(audio: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """Audio [B, L] -> [B, W, length]: the ``length`` samples from each start [B, W] (zeros outside the audio)."""
    b, w = starts.shape
    index = starts[:, :, None] + torch.arange(length, device=audio.device)[None, None, :]  # [B, W, length]
    valid = (index >= 0) & (index < audio.shape[1])
    gathered = torch.gather(audio, 1, index.clamp(0, audio.shape[1] - 1).reshape(b, -1)).reshape(index.shape)
    return gathered * valid


def resample_steps(x: torch.Tensor, stretch: torch.Tensor, steps: int) -> torch.Tensor:
    """[N, ..., H] -> [N, ..., steps]: output step i is x at position i x stretch[n] along the last axis, linearly
    interpolated (stretch 1: the first ``steps`` unchanged)."""
    n, hops = x.shape[0], x.shape[-1]
    position = torch.arange(steps, device=x.device, dtype=torch.float32)[None, :] * stretch.float()[:, None]
    low = position.floor().long().clamp(max=hops - 1)
    high = (low + 1).clamp(max=hops - 1)
    shape = (n,) + (1,) * (x.dim() - 2) + (steps,)
    frac = (position - low).clamp(0, 1).view(shape).to(x.dtype)
    low, high = low.view(shape).expand(*x.shape[:-1], steps), high.view(shape).expand(*x.shape[:-1], steps)
    return torch.gather(x, -1, low) * (1 - frac) + torch.gather(x, -1, high) * frac


class AudioFrontEnd(nn.Module):
    """Log-Mel [N, 1, n_mels, F x K] -> one token per video frame [N, K, dim]: 2-D convolutions that halve the
    frequency axis and keep every 10 ms hop, the frequencies pooled, then the F hops of each frame averaged."""

    def __init__(self, n_mels: int, channels: list[int], dim: int):
        super().__init__()
        layers, previous = [], 1
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, stride=(2, 1), padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.GELU()]
            previous = width
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Sequential(nn.LayerNorm(previous), nn.Linear(previous, dim))

    def forward(self, mel: torch.Tensor, hops_per_frame: int) -> torch.Tensor:
        x = self.convs(mel).mean(2)  # [N, C, F x K]
        n, c, hops = x.shape
        x = x.view(n, c, hops // hops_per_frame, hops_per_frame).mean(-1)  # [N, C, K]
        return self.proj(x.transpose(1, 2))


class FeatureMap(nn.Module):
    """A timm model's last feature map (``forward_features``, before pooling) as the module's output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class ClipVoiceEncoder(nn.Module):
    """The whole clip's voice as a few tokens: waveforms [N, L] (zero-padded; ``lengths`` [N] real samples) ->
    tokens [N, tokens, dim] and their mask [N, tokens] (True: the token's span starts inside the real audio).

    Vocoder and conversion artefacts are properties of the whole utterance (spectral envelope, pitch contour,
    noise floor), which the per-frame audio tokens of a few short windows see little of. Log-Mel at 10 ms hops,
    normalised by the clip's own mean and deviation over its real audio (level-free, spectral shape kept; the
    padding, set to 0 afterwards, never enters the statistics), then 2-D convolutions that halve frequency and
    time, and the time axis averaged into ``tokens`` equal spans of the padded length. The frequency bands stay
    apart (channels x bands -> a token): a formant moved up or a band smeared by a vocoder is a matter of where in
    the spectrum, which pooling over frequency would blur."""

    def __init__(self, n_mels: int, n_fft: int, hop_length: int, channels: list[int], dim: int, tokens: int,
                 backbone: nn.Module | None = None, crop: bool = False, band_norm: bool = False):
        """``backbone``: a CNN that maps the [N, 1, n_mels, hops] image to a feature map [N, C, bands, steps] (a timm
        model's ``forward_features``, as the seed baseline reads the spectrogram) instead of the strided stack.
        ``crop``: read only the spans that start inside the audio (``model.clip_audio_crop``). ``band_norm``: each
        Mel band centred on its own mean over the real audio first (``model.clip_audio_band_norm``)."""
        super().__init__()
        self.hop_length, self.tokens, self.crop, self.band_norm = hop_length, tokens, crop, band_norm
        self.logmel = LogMel(n_mels, n_fft, hop_length, center=False, batch_norm=False)
        if backbone is None:
            layers, previous = [], 1
            for width in channels:
                layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                           nn.GELU()]
                previous = width
            backbone = nn.Sequential(*layers)
        self.convs = backbone
        with torch.no_grad():  # the width of a time step: channels x frequency bands left
            features = self.convs.eval()(torch.zeros(1, 1, n_mels, 64)).flatten(1, 2).shape[1]
        self.convs.train()
        self.proj = nn.Sequential(nn.LayerNorm(features), nn.Linear(features, dim))

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, padded = audio.shape
        span = padded / self.tokens
        starts = torch.arange(self.tokens, device=audio.device) * span
        mask = starts[None, :] < lengths[:, None]
        # With crop, only the spans that start inside some clip's audio are read (the audio is zero-padded to the
        # longest clip allowed, 10 s, while most clips last a few seconds). Training crops the batch to its longest
        # clip (one call: BatchNorm's statistics over the whole batch); evaluation groups the clips by their own
        # number of spans, so that a clip's tokens never depend on the other clips of its batch.
        every_clip = torch.arange(n, device=audio.device)
        if not self.crop:
            groups = [(self.tokens, every_clip)]
        else:
            counts = mask.sum(1).clamp(min=1)  # a silent clip still reads one span
            if self.training:
                groups = [(int(counts.max()), every_clip)]
            else:
                groups = [(int(c), (counts == c).nonzero()[:, 0]) for c in counts.unique()]
        features = [self._span_features(audio[index, :min(padded, math.ceil(count * span))], lengths[index], count)
                    for count, index in groups]
        x = features[0].new_zeros(n, self.tokens, features[0].shape[-1])
        for (count, index), values in zip(groups, features, strict=True):
            x[index, :count] = values
        return self.proj(x), mask

    def _span_features(self, audio: torch.Tensor, lengths: torch.Tensor, spans: int) -> torch.Tensor:
        """[N, L] audio (L: ``spans`` token spans) -> [N, spans, C x bands]."""
        mel = self.logmel(audio.float())  # [N, 1, M, H]
        hops = mel.shape[-1]
        ends = torch.arange(hops, device=mel.device) * self.hop_length + self.logmel.n_fft  # each STFT frame's end
        real = ends[None, :] <= lengths[:, None]  # [N, H]: frames that read real audio only
        weight = real[:, None, None, :].float()
        if self.band_norm:
            mel = mel - (mel * weight).sum(-1, keepdim=True) / weight.sum(-1, keepdim=True).clamp(min=1.0)
        count = (weight.sum((1, 2, 3)) * mel.shape[2]).clamp(min=1.0)
        mean = (mel * weight).sum((1, 2, 3)) / count
        var = (((mel - mean[:, None, None, None]) * weight) ** 2).sum((1, 2, 3)) / count
        mel = (mel - mean[:, None, None, None]) / (var[:, None, None, None] + 1e-5).sqrt() * weight
        x = self.convs(mel.to(self.proj[1].weight.dtype)).flatten(1, 2)  # [N, C x bands, H / stride]
        return F.adaptive_avg_pool1d(x, spans).transpose(1, 2)


class TemporalConv(nn.Module):
    """Residual depthwise-separable 1-D convolutions over the frames of a window: [N, K, dim] -> [N, K, dim].
    What moves (lips opening and closing, a syllable's onset) is seen across neighbouring frames.

    ``padding``: "zeros" lets a frame's token tell how far it is from the window's edges once the receptive field
    spans the window (kernel 5 x 2 layers on 8 frames), and then the synchrony losses are solved by position
    instead of by content (measured: a small model scored audio moved by 0.5 s as in sync). "circular" keeps the
    tokens equivariant to shifts within the window, so only content can match lips to audio."""

    def __init__(self, dim: int, kernel: int, layers: int, padding: str = "zeros"):
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(
            nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim, padding_mode=padding), nn.GELU(),
            nn.Conv1d(dim, dim, 1))
            for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.transpose(1, 2)
        for layer in self.layers:
            y = y + layer(y)
        return self.norm(y.transpose(1, 2))


class FusionBlock(nn.Module):
    """Pre-norm transformer block with a key padding mask (``keep`` True = attend to this token)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, keep: torch.Tensor, return_attention: bool = False):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = keep[:, None, None, :]
        attention = None
        if return_attention:  # explicit softmax so the weights can be returned (used on the last block only)
            scores = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
            attention = scores.float().masked_fill(~mask, float("-inf")).softmax(-1)
            out = F.dropout(attention.to(v.dtype), self.attn_dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                 dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))
        x = x + self.drop(self.mlp(self.norm2(x)))
        return (x, attention) if return_attention else x


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over ``mask``; 0 (still in the graph, so DDP sees every parameter used) when the mask is empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float().clamp(min=0), reduction="none")


def log_mean_exp(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pools per-time logits into one, between their mean and their max (multiple-instance pooling)."""
    count = mask.sum(1).clamp(min=1)
    return torch.logsumexp(logits.masked_fill(~mask, -1e4), dim=1) - torch.log(count.float())
