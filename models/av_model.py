"""The audio-visual transformer (registry name ``av_transformer``).

    frames [B,T,3,S,S] --timm visual encoder per frame--> [B,T,Cv] --LN+Linear--> visual tokens [B,T,d]
    audio  [B,L]  --window around frame i's time--> log-Mel --timm CNN (in_chans=1)--> [B,T,Ca] --> audio tokens
    tokens = [CLS] + (visual + time_i + modality_v) + (audio + time_i + modality_a) -> fusion transformer

The fusion transformer runs three views in one batched pass, differing only in the key padding mask: audio +
visual (-> ``logit``), audio only (-> ``audio_logit``) and visual only (-> ``visual_logit``). A missing
modality (no face / no audio / frames cut by a temporal crop) is masked out, never zero-filled, so a clip
without a face is fused from exactly the tokens of its audio-only view, a view training sees every step. A synchrony head
projects the pre-fusion tokens (no position embedding, so time cannot be read off the position) and an InfoNCE
loss on genuine clips makes time-aligned audio/visual tokens match; ``sync`` is the per-time cosine similarity
of aligned pairs (low = lip-sync evidence) and ``sync_score`` a clip's InfoNCE evidence (0 = chance, > 0 = in
sync), which the fused head also reads. ``visual_token_logits`` / ``audio_token_logits`` score each time step
and ``cls_attention`` is the last block's CLS attention over the 2T tokens (heads averaged).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from models.config import ModelSpec
from models.layers import FusionBlock, LogMel, audio_windows, bce, masked_mean
from models.registry import register_model, timm_backbone
from shards.extract import AUDIO_SAMPLE_RATE


def _backbone(name: str, pretrained: str | None, drop_path: float, **kwargs) -> nn.Module:
    """timm model; ``img_size`` and ``drop_path_rate`` are passed only to models that take them."""
    optional = {"drop_path_rate": drop_path} if drop_path > 0 else {}
    if "img_size" in kwargs:
        optional["img_size"] = kwargs.pop("img_size")
    while True:
        try:
            return timm_backbone(name, pretrained, **kwargs, **optional)
        except TypeError as error:
            dropped = next((k for k in optional if k in str(error)), None)
            if dropped is None:
                raise
            optional.pop(dropped)


class AVTransformer(nn.Module):
    # DeepSpeed (data_types.keep_in_fp32_modules "auto") keeps these buffers in float32 under bf16.
    _keep_in_fp32_modules_strict = ["pixel_mean", "pixel_std"]

    def __init__(self, spec: ModelSpec):
        super().__init__()
        m = spec.model
        self.frames, self.dim = spec.data.frames, m.dim
        self.visual = _backbone(m.visual_backbone, m.visual_pretrained, m.drop_path, img_size=spec.data.size)
        self.audio = _backbone(m.audio_backbone, m.audio_pretrained, m.drop_path, in_chans=1)
        if m.grad_checkpointing:
            for backbone in (self.visual, self.audio):
                if hasattr(backbone, "set_grad_checkpointing"):
                    backbone.set_grad_checkpointing(True)
        self.logmel = LogMel(m.n_mels, m.n_fft, m.hop_length)
        self.window = int(round(m.audio_window_seconds * AUDIO_SAMPLE_RATE))
        data_cfg = getattr(self.visual, "pretrained_cfg", {}) or {}
        self.register_buffer("pixel_mean", torch.tensor(data_cfg.get("mean", IMAGENET_DEFAULT_MEAN)).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(data_cfg.get("std", IMAGENET_DEFAULT_STD)).view(1, 3, 1, 1),
                             persistent=False)
        d = m.dim
        self.visual_proj = nn.Sequential(nn.LayerNorm(self.visual.num_features), nn.Linear(self.visual.num_features, d))
        self.audio_proj = nn.Sequential(nn.LayerNorm(self.audio.num_features), nn.Linear(self.audio.num_features, d))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.time_embed = nn.Parameter(torch.zeros(1, self.frames, d))
        self.modality_embed = nn.Parameter(torch.zeros(2, d))
        self.blocks = nn.ModuleList(FusionBlock(d, m.heads, m.mlp_ratio, m.dropout) for _ in range(m.depth))
        self.norm = nn.LayerNorm(d)
        # The fused head also sees the clip's synchrony evidence (see sync_evidence): a direct lip-sync cue.
        self.head = nn.Linear(d + 2, 1)
        self.audio_head = nn.Linear(d, 1)
        self.visual_head = nn.Linear(d, 1)
        self.token_head = nn.Linear(d, 1)
        self.sync_visual = nn.Linear(d, m.sync_dim)
        self.sync_audio = nn.Linear(d, m.sync_dim)
        self.sync_temperature = m.sync_temperature
        self.loss_weights = spec.loss
        for p in (self.cls_token, self.time_embed, self.modality_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for module in [self.visual_proj, self.audio_proj, self.blocks, self.norm, self.head, self.audio_head,
                       self.visual_head, self.token_head, self.sync_visual, self.sync_audio]:
            module.apply(_init_weights)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.visual.parameters()) + list(self.audio.parameters())

    # --- encoders -----------------------------------------------------------------------------------------
    def encode_visual(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        x = frames.flatten(0, 1).float() / 255.0  # not in place: explain passes frames that need gradients
        x = ((x - self.pixel_mean) / self.pixel_std).to(self.pixel_dtype)
        return self.visual_proj(self.visual(x)).view(b, t, -1)

    def encode_audio(self, audio: torch.Tensor, lengths: torch.Tensor, steps: int) -> torch.Tensor:
        b = audio.shape[0]
        windows = audio_windows(audio.float(), lengths, steps, self.window)  # [B, T, W]
        mel = self.logmel(windows.flatten(0, 1))
        return self.audio_proj(self.audio(mel.to(self.pixel_dtype))).view(b, steps, -1)

    @property
    def pixel_dtype(self) -> torch.dtype:
        return self.visual_proj[1].weight.dtype

    # --- forward ------------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        frames = batch["frames"]
        b, t = frames.shape[:2]
        if t > self.frames:
            raise ValueError(f"batch has {t} frames; the model was built for data.frames={self.frames}")
        visual = self.encode_visual(frames)
        audio = self.encode_audio(batch["audio"], batch["audio_length"], t)
        vmask, amask = batch["visual_mask"].bool(), batch["audio_mask"].bool()

        time = self.time_embed[:, :t]
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), visual + time + self.modality_embed[0],
                            audio + time + self.modality_embed[1]], dim=1)
        cls = torch.ones(b, 1, dtype=torch.bool, device=frames.device)
        none = torch.zeros_like(vmask)
        keep = torch.cat([torch.cat([cls, vmask, amask], 1),  # audio-visual view
                          torch.cat([cls, none, amask], 1),  # audio only
                          torch.cat([cls, vmask, none], 1)])  # visual only
        x = tokens.repeat(3, 1, 1)
        for block in self.blocks[:-1]:
            x = block(x, keep)
        x, attention = self.blocks[-1](x, keep, return_attention=True)
        x = self.norm(x)
        av, audio_only, visual_only = x.split(b)
        token_logits = self.token_head(av[:, 1:]).squeeze(-1).float()

        zv = F.normalize(self.sync_visual(visual).float(), dim=-1)
        za = F.normalize(self.sync_audio(audio).float(), dim=-1)
        sync_matrix = zv @ za.transpose(1, 2)  # [B, T(visual), T(audio)] cosine similarities
        sync_score, has_pairs = self.sync_evidence(sync_matrix, vmask, amask)
        fused = torch.cat([av[:, 0], torch.stack([sync_score, has_pairs], -1).to(av.dtype)], -1)
        return {
            "logit": self.head(fused).squeeze(-1).float(),
            "sync_score": sync_score,
            "audio_logit": self.audio_head(audio_only[:, 0]).squeeze(-1).float(),
            "visual_logit": self.visual_head(visual_only[:, 0]).squeeze(-1).float(),
            "visual_token_logits": token_logits[:, :t],
            "audio_token_logits": token_logits[:, t:],
            "cls_attention": attention[:b, :, 0, 1:].mean(1),  # [B, 2T]: visual tokens then audio tokens
            "sync": torch.diagonal(sync_matrix, dim1=1, dim2=2),
            "sync_matrix": sync_matrix,
            "visual_mask": vmask,
            "audio_mask": amask,
        }

    # --- loss ---------------------------------------------------------------------------------------------
    def loss(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        label = batch["label"]
        known = label >= 0
        vmask, amask = out["visual_mask"], out["audio_mask"]
        has_v, has_a = known & vmask.any(1), known & amask.any(1)
        y_visual = torch.where(batch["visual_label"] >= 0, batch["visual_label"], label)
        y_audio = torch.where(batch["audio_label"] >= 0, batch["audio_label"], label)
        parts = {
            "main": masked_mean(bce(out["logit"], label), known),
            "audio": masked_mean(bce(out["audio_logit"], y_audio), has_a),
            "visual": masked_mean(bce(out["visual_logit"], y_visual), has_v),
            "token": 0.5 * (masked_mean(bce(_log_mean_exp(out["visual_token_logits"], vmask), y_visual), has_v)
                            + masked_mean(bce(_log_mean_exp(out["audio_token_logits"], amask), y_audio), has_a)),
            "sync": self.sync_loss(out["sync_matrix"], vmask, amask, label == 0),
        }
        w = self.loss_weights
        total = (parts["main"] + w.aux * (parts["audio"] + parts["visual"]) + w.token * parts["token"]
                 + w.sync * parts["sync"])
        return total, parts

    def sync_evidence(self, sim: torch.Tensor, vmask: torch.Tensor,
                      amask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per clip: how much better than chance each visual token picks its own audio token among the clip's
        audio tokens (mean log-probability + log(#audio tokens); 0 = chance, > 0 = in sync), and whether the clip
        has any audio-visual pair at all."""
        logits = (sim / self.sync_temperature).masked_fill(~amask[:, None, :], -1e4)
        own = torch.diagonal(logits.log_softmax(-1), dim1=1, dim2=2)  # [B, T]
        pairs = vmask & amask
        count = pairs.sum(1).clamp(min=1)
        score = (own * pairs).sum(1) / count + torch.log(amask.sum(1).clamp(min=1).float())
        has = pairs.any(1)
        return score * has, has.float()

    def sync_loss(self, sim: torch.Tensor, vmask: torch.Tensor, amask: torch.Tensor,
                  genuine: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE within each genuine clip: visual token i should match audio token i among the
        clip's valid audio tokens (and vice versa)."""
        t = sim.shape[1]
        logits = sim / self.sync_temperature
        pairs = vmask & amask & genuine[:, None]  # rows that take part
        target = torch.arange(t, device=sim.device).expand(sim.shape[0], t)
        v2a = F.cross_entropy(logits.masked_fill(~amask[:, None, :], -1e4).flatten(0, 1), target.flatten(),
                              reduction="none")
        a2v = F.cross_entropy(logits.transpose(1, 2).masked_fill(~vmask[:, None, :], -1e4).flatten(0, 1),
                              target.flatten(), reduction="none")
        return masked_mean(0.5 * (v2a + a2v), pairs.flatten())


def _log_mean_exp(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pools per-time logits into one, between their mean and their max (multiple-instance pooling)."""
    count = mask.sum(1).clamp(min=1)
    return torch.logsumexp(logits.masked_fill(~mask, -1e4), dim=1) - torch.log(count.float())


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@register_model("av_transformer")
def build_av_transformer(spec: ModelSpec) -> nn.Module:
    return AVTransformer(spec)

