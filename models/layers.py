"""Building blocks shared by the models: log-Mel front end, frame-aligned audio windows, a fusion block."""

from __future__ import annotations

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

    def __init__(self, n_mels: int, n_fft: int, hop_length: int, sample_rate: int = AUDIO_SAMPLE_RATE):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length,
                                                        n_mels=n_mels, f_min=20.0, f_max=sample_rate / 2)
        # torch's periodic Hann window is a view into a longer tensor, which safetensors refuses to load into.
        self.mel.spectrogram.window = self.mel.spectrogram.window.clone()
        self.norm = nn.BatchNorm2d(1)  # learns the log-Mel scale (an input normalisation)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.mel.float()
        return self

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=wave.device.type, enabled=False):
            spec = torch.log(self.mel(wave.float()) + 1e-6)
        spec = spec.unsqueeze(1)
        return self.norm(spec.to(self.norm.weight.dtype))


def audio_windows(audio: torch.Tensor, lengths: torch.Tensor, steps: int, window: int) -> torch.Tensor:
    """Audio [B, L] (valid up to ``lengths``) -> [B, steps, window]: window i centred on frame i's time.

    Frame i of a clip is at (i + 0.5) / steps of its audio span (the shards' timing contract); samples outside
    the valid audio are zeros."""
    b = audio.shape[0]
    centres = (torch.arange(steps, device=audio.device, dtype=torch.float32) + 0.5) / steps
    centres = centres[None, :] * lengths[:, None].float()  # [B, T]
    start = torch.round(centres - window / 2).long()
    index = start[:, :, None] + torch.arange(window, device=audio.device)[None, None, :]  # [B, T, W]
    valid = (index >= 0) & (index < lengths[:, None, None])
    gathered = torch.gather(audio, 1, index.clamp(0, audio.shape[1] - 1).reshape(b, -1)).reshape(index.shape)
    return gathered * valid


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
