"""The organizers' seed baseline (registry name ``seed_baseline``), our yardstick.

ResNet-18 (timm, ``in_chans=1``, 2 classes) on the log-Mel spectrogram of a fixed-length audio crop/pad, trained
with 2-class cross-entropy (configs/baseline.yaml: Adam lr 1e-3, StepLR step 5 epochs, gamma 0.1). For scoring it
outputs ``logit = l1 - l0`` (so sigmoid(logit) = softmax(l)[1]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModelSpec
from models.layers import LogMel, masked_mean
from models.registry import register_model, timm_backbone
from shards.extract import AUDIO_SAMPLE_RATE


class SeedBaseline(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        m = spec.model
        self.samples = int(round(m.baseline_audio_seconds * AUDIO_SAMPLE_RATE))
        self.logmel = LogMel(m.n_mels, m.n_fft, m.hop_length)
        self.backbone = timm_backbone(m.audio_backbone, m.audio_pretrained, in_chans=1)
        self.classifier = nn.Linear(self.backbone.num_features, 2)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        audio = batch["audio"].float()
        if audio.shape[1] >= self.samples:  # fixed-length crop (from the start) or zero pad
            audio = audio[:, :self.samples]
        else:
            audio = F.pad(audio, (0, self.samples - audio.shape[1]))
        mel = self.logmel(audio)
        logits = self.classifier(self.backbone(mel.to(self.classifier.weight.dtype))).float()
        return {"logit": logits[:, 1] - logits[:, 0], "logits": logits}

    def loss(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        label = batch["label"]
        ce = F.cross_entropy(out["logits"], label.clamp(min=0), reduction="none")
        loss = masked_mean(ce, label >= 0)
        return loss, {"main": loss}


@register_model("seed_baseline")
def build_seed_baseline(spec: ModelSpec) -> nn.Module:
    return SeedBaseline(spec)
