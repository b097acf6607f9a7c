"""The audio-visual transformer (registry name ``av_transformer``): face, lips and voice, frame by frame.

A clip is W windows of K consecutive frames (``models.batch``). Three streams make one token per frame each:

    face crops  [B,T,3,S,S] --timm encoder per frame--> face tokens                              [B,T,d]
    mouth crops [B,T,3,M,M] --timm encoder per frame--> temporal convolution within the window --> lip tokens
    audio       [B,L]  --each window cut to its frames--> log-Mel (10 ms hop) --conv front end, frequency pooled,
                          4 hops pooled to one video frame (resampled in time for clips read at another rate,
                          data.native_rate)--> temporal convolution --> audio tokens   [B,T,d]

and a fusion transformer reads [CLS] + face + lip + audio tokens (each with its frame's position in the window,
its window and its modality), plus, with ``model.clip_audio_tokens`` N > 0, N tokens of the whole clip's voice
(``layers.ClipVoiceEncoder``: utterance-level vocoder and conversion artefacts; they join the audio views). It
runs three views in one batched pass that differ only in the key padding mask: audio + visual (-> ``logit``),
audio only (-> ``audio_logit``) and visual only (face + lips, -> ``visual_logit``). A missing modality (no face /
no audio / frames cut by a temporal crop) is masked out, never zero-filled.

Synchrony: the lip and audio tokens are projected (``sync_dim``) and compared frame by frame within each window
(S[k, j] = cosine of lip frame k and audio frame j over ``sync_temperature``). On genuine clips two losses make
aligned frames match: an InfoNCE over the window's frames (each lip frame picks its audio frame, and vice versa),
and a shift classification: the mean of S along each diagonal (the window's audio shifted by -D..D frames) must
peak at shift 0. ``sync_score`` is that evidence per clip (mean over windows of log p(shift 0) + log(2D + 1):
0 = chance, > 0 = in sync), which the fused head also reads; ``sync`` is the per-frame curve S[k, k].
``visual_token_logits`` / ``audio_token_logits`` score each frame (face and lips averaged for the visual one) and
``cls_attention`` is the last block's CLS attention over the 3T tokens (heads averaged).

Blend head (``model.blend_head``): a linear head on each frame's face token, trained by ``loss.blend`` on genuine
clips against self-blended faces only (``blend_label``; the real fakes never reach it). ``blend_token_logits``
[B, T] and their mean over the clip's faces, ``blend_logit``, which the fused head reads detached.

Voice head (``model.voice_head``): a linear head on the mean of the clip voice tokens, trained by ``loss.voice`` on
the audio label, so the voice encoder learns from the labels directly and not only through the fusion transformer;
its ``voice_logit`` (0 for a clip without audio) joins the fused head detached, as the blend score does.

Stream heads (``model.stream_heads``): a linear head on each frame's face token and one on each frame's lip token,
before fusion; their clip means ``face_logit`` and ``lip_logit`` are trained by ``loss.stream`` on the visual label
as a noisy OR (``noisy_or_loss``): a fake needs one stream that calls it fake, a genuine clip needs both to call it
genuine. Most visual fakes of a lip-sync-heavy training set change the mouth only; with the face stream alone on
the visual label, those teach it to call genuine-looking faces fake (report/experiments.md), while under the
OR the lip stream can take them. They are evidence for ``score.rule``; the fused head does not read them. With
``model.stream_sync`` the OR has a third term, a learned logistic of the clip's detached sync evidence
(``sync_explanation``): a fake whose lips do not follow its audio is explained by that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from models.config import ModelSpec
from models.layers import (
    AudioFrontEnd,
    ClipVoiceEncoder,
    FeatureMap,
    FusionBlock,
    LogMel,
    TemporalConv,
    bce,
    log_mean_exp,
    masked_mean,
    resample_steps,
    window_audio,
)
from models.registry import register_model, timm_backbone

FACE, LIPS, VOICE = 0, 1, 2  # modality indices
# model.stream_sync's logistic starts at logit -2 x evidence - 1 (a genuine clip's evidence, about 2, gives p 0.01;
# chance, 0, gives 0.27) and its two parameters move SYNC_OR_RATE x as fast as others: at a CPU run's lr (5e-4 over
# about 1400 steps) a plain parameter moves by less than 1.
SYNC_OR_INIT = (-2.0, -1.0)
SYNC_OR_RATE = 10.0


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


class FrameEncoder(nn.Module):
    """A timm image encoder applied to every frame, normalised with its own pretrained statistics."""

    # DeepSpeed (data_types.keep_in_fp32_modules "auto") keeps buffers whose names contain these in float32 under
    # bf16; "pixel_" keeps BatchNorm's running_mean out of it.
    _keep_in_fp32_modules_strict = ["pixel_mean", "pixel_std"]

    def __init__(self, name: str, pretrained: str | None, drop_path: float, size: int, dim: int,
                 grad_checkpointing: bool, window_frames: int = 0):
        super().__init__()
        # window_frames > 0: each frame's difference from the previous frame of its window (zero for the first)
        # joins its RGB as 3 more input channels (timm adapts the stem; pretrained RGB filters are repeated)
        self.window_frames = window_frames
        extra = {"in_chans": 6} if window_frames else {}
        self.net = _backbone(name, pretrained, drop_path, img_size=size, **extra)
        if grad_checkpointing and hasattr(self.net, "set_grad_checkpointing"):
            self.net.set_grad_checkpointing(True)
        stats = getattr(self.net, "pretrained_cfg", {}) or {}
        self.register_buffer("pixel_mean", torch.tensor(stats.get("mean", IMAGENET_DEFAULT_MEAN)).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(stats.get("std", IMAGENET_DEFAULT_STD)).view(1, 3, 1, 1),
                             persistent=False)
        self.proj = nn.Sequential(nn.LayerNorm(self.net.num_features), nn.Linear(self.net.num_features, dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, T, 3, H, W] -> [B, T, dim]."""
        b, t = images.shape[:2]
        x = self.net_inputs(images, self.window_frames)
        return self.proj(self.net(x.to(self.proj[1].weight.dtype))).view(b, t, -1)

    def net_inputs(self, images: torch.Tensor, window_frames: int) -> torch.Tensor:
        """uint8 [B, T, 3, H, W] -> the encoder's float input [B x T, C, H, W]: normalised RGB, and with
        ``model.face_motion`` each frame's difference from the previous one of its window of ``window_frames``."""
        b, t = images.shape[:2]
        x = images.flatten(0, 1).float() / 255.0  # not in place: explain passes images that need gradients
        x = (x - self.pixel_mean) / self.pixel_std
        if self.window_frames:
            x = torch.cat([x, self.frame_differences(x.view(b, t, *x.shape[1:]), window_frames).flatten(0, 1)], 1)
        return x

    @staticmethod
    def frame_differences(x: torch.Tensor, window_frames: int) -> torch.Tensor:
        """[B, T, C, H, W] -> each frame minus the previous one of its window; zero for a window's first frame."""
        b, t = x.shape[:2]
        windows = x.view(b, t // window_frames, window_frames, *x.shape[2:])
        diff = torch.cat([torch.zeros_like(windows[:, :, :1]), windows[:, :, 1:] - windows[:, :, :-1]], 2)
        return diff.view_as(x)


class AVTransformer(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        m, data = spec.model, spec.data
        d = m.dim
        self.windows, self.window_frames = data.windows, data.window_frames
        self.fps, self.native_rate, self.samples_per_frame = data.fps, data.native_rate, data.samples_per_frame()
        self.face = FrameEncoder(m.visual_backbone, m.visual_pretrained, m.drop_path, data.size, d,
                                 m.grad_checkpointing, data.window_frames if m.face_motion else 0)
        self.mouth = FrameEncoder(m.mouth_backbone, m.mouth_pretrained, m.drop_path, data.mouth_size, d,
                                  m.grad_checkpointing, data.window_frames if m.mouth_motion else 0)
        self.lip_motion = TemporalConv(d, m.temporal_kernel, m.temporal_layers, m.temporal_padding)
        self.logmel = LogMel(m.n_mels, m.n_fft, m.hop_length, center=False)
        self.mel_per_frame = self.samples_per_frame // m.hop_length
        if self.mel_per_frame * m.hop_length != self.samples_per_frame:
            raise ValueError(f"model.hop_length {m.hop_length} must divide the {self.samples_per_frame} audio "
                             f"samples of a frame at data.fps={data.fps}")
        self.voice = AudioFrontEnd(m.n_mels, m.audio_channels, d)
        self.voice_motion = TemporalConv(d, m.temporal_kernel, m.temporal_layers, m.temporal_padding)
        self.clip_voice = None
        if m.clip_audio_tokens:
            backbone = None
            if m.clip_audio_backbone:
                backbone = FeatureMap(timm_backbone(m.clip_audio_backbone, None, in_chans=1))
            self.clip_voice = ClipVoiceEncoder(m.n_mels, m.n_fft, m.hop_length, m.clip_audio_channels, d,
                                               m.clip_audio_tokens, backbone, m.clip_audio_crop,
                                               m.clip_audio_band_norm)
            self.clip_voice_embed = nn.Parameter(torch.zeros(1, m.clip_audio_tokens, d))  # its span and modality

        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.frame_embed = nn.Parameter(torch.zeros(1, data.window_frames, d))  # position within the window
        self.window_embed = nn.Parameter(torch.zeros(1, data.windows, d))
        self.modality_embed = nn.Parameter(torch.zeros(3, d))
        self.blocks = nn.ModuleList(FusionBlock(d, m.heads, m.mlp_ratio, m.dropout) for _ in range(m.depth))
        self.norm = nn.LayerNorm(d)
        # per frame: genuine face or self-blended one (model.blend_head; trained by loss.blend on those clips only)
        self.blend_head = nn.Linear(d, 1) if m.blend_head else None
        self.voice_head = nn.Linear(d, 1) if m.voice_head else None  # the clip voice tokens' own audio-fake head
        self.face_head = nn.Linear(d, 1) if m.stream_heads else None  # per frame, face token (loss.stream)
        self.lip_head = nn.Linear(d, 1) if m.stream_heads else None  # per frame, lip token (loss.stream)
        # model.stream_sync: (weight, bias) of the logistic on the detached sync evidence, scaled by SYNC_OR_RATE
        self.stream_sync = nn.Parameter(torch.tensor(SYNC_OR_INIT) / SYNC_OR_RATE) if m.stream_sync else None
        # the fused head also reads the clip's sync evidence, whether it has any, and the detached blend / voice scores
        self.head = nn.Linear(d + 2 + int(m.blend_head) + int(m.voice_head), 1)
        self.audio_head = nn.Linear(d, 1)
        self.visual_head = nn.Linear(d, 1)
        self.token_head = nn.Linear(d, 1)
        self.sync_lips = nn.Linear(d, m.sync_dim)
        self.sync_voice = nn.Linear(d, m.sync_dim)
        self.sync_temperature = m.sync_temperature
        self.max_shift = min(m.sync_max_shift, data.window_frames - 1)
        self.loss_weights = spec.loss
        for p in (self.cls_token, self.frame_embed, self.window_embed, self.modality_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for module in [self.face.proj, self.mouth.proj, self.lip_motion, self.voice, self.voice_motion, self.blocks,
                       self.norm, self.head, self.audio_head, self.visual_head, self.token_head, self.sync_lips,
                       self.sync_voice, self.blend_head or nn.Identity(), self.voice_head or nn.Identity(),
                       self.face_head or nn.Identity(), self.lip_head or nn.Identity()]:
            module.apply(_init_weights)
        if self.clip_voice is not None:
            nn.init.trunc_normal_(self.clip_voice_embed, std=0.02)
            self.clip_voice.apply(_init_weights)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The timm encoders' parameters (pretrained: trained at train.backbone_lr_scale x the lr)."""
        return list(self.face.net.parameters()) + list(self.mouth.net.parameters())

    # --- streams ------------------------------------------------------------------------------------------
    def _per_window(self, tokens: torch.Tensor, conv: nn.Module) -> torch.Tensor:
        """A temporal convolution run within each window (never across two): [B, T, d] -> [B, T, d]."""
        b, t, d = tokens.shape
        w = t // self.window_frames
        return conv(tokens.reshape(b * w, self.window_frames, d)).reshape(b, t, d)

    def encode_voice(self, audio: torch.Tensor, offsets: torch.Tensor,
                     frame_rate: torch.Tensor | None = None) -> torch.Tensor:
        """Each window's audio, cut exactly to its frames (plus the STFT's half window of real context on either
        side), as log-Mel at 10 ms hops, pooled to one token per video frame: [B, T, d]. With ``data.native_rate``
        each clip's hops are resampled linearly in time from its ``frame_rate`` [B] to data.fps's hops per frame, so
        each frame's token still hears exactly its own 1 / rate seconds (rates of at least data.fps / 2: extraction
        reads slower videos at data.fps). Nothing is read back from the device."""
        b, w = offsets.shape
        context = self.logmel.n_fft // 2
        steps = self.window_frames * self.mel_per_frame
        length = self.window_frames * self.samples_per_frame
        stretch = None  # hops of a clip's audio per output step
        if self.native_rate and frame_rate is not None:
            stretch = (self.fps / frame_rate.float().to(audio.device)).repeat_interleave(w)  # [B*W], <= 2
            length *= 2
        clips = window_audio(audio.float(), offsets - context, length + 2 * context)  # [B, W, length + n_fft]
        mel = self.logmel(clips.flatten(0, 1))  # [B*W, 1, n_mels, hops]
        mel = mel[..., :steps] if stretch is None else resample_steps(mel, stretch, steps)
        tokens = self.voice(mel.to(self.head.weight.dtype), self.mel_per_frame)  # [B*W, K, d]
        return self.voice_motion(tokens).reshape(b, w * self.window_frames, -1)

    # --- forward ------------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        frames = batch["frames"]
        b, t = frames.shape[:2]
        if t % self.window_frames or t // self.window_frames > self.windows:
            raise ValueError(f"batch has {t} frames; the model reads up to {self.windows} windows of "
                             f"{self.window_frames} frames (data.windows, data.window_frames)")
        face = self.face(frames)
        lips = self._per_window(self.mouth(batch["mouths"]), self.lip_motion)
        voice = self.encode_voice(batch["audio"], batch["window_offsets"], batch.get("frame_rate"))
        vmask, amask = batch["visual_mask"].bool(), batch["audio_mask"].bool()

        w = t // self.window_frames
        position = (self.frame_embed.repeat(1, w, 1) + self.window_embed[:, :w].repeat_interleave(
            self.window_frames, dim=1))
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), face + position + self.modality_embed[FACE],
                            lips + position + self.modality_embed[LIPS],
                            voice + position + self.modality_embed[VOICE]], dim=1)
        cls = torch.ones(b, 1, dtype=torch.bool, device=frames.device)
        none = torch.zeros_like(vmask)
        clip_mask = torch.zeros(b, 0, dtype=torch.bool, device=frames.device)
        clip_tokens = None
        if self.clip_voice is not None:  # the whole clip's voice: tokens after the 3T frame tokens
            clip_tokens, clip_mask = self.clip_voice(batch["audio"], batch["audio_length"])
            clip_mask = clip_mask & amask.any(1, keepdim=True)  # no audio token: no clip voice either
            tokens = torch.cat([tokens, clip_tokens + self.clip_voice_embed], dim=1)
        keep = torch.cat([torch.cat([cls, vmask, vmask, amask, clip_mask], 1),  # audio-visual view
                          torch.cat([cls, none, none, amask, clip_mask], 1),  # audio only
                          torch.cat([cls, vmask, vmask, none, torch.zeros_like(clip_mask)], 1)])  # visual only
        x = tokens.repeat(3, 1, 1)
        for block in self.blocks[:-1]:
            x = block(x, keep)
        x, attention = self.blocks[-1](x, keep, return_attention=True)
        x = self.norm(x)
        av, audio_only, visual_only = x.split(b)
        token_logits = self.token_head(av[:, 1:1 + 3 * t]).squeeze(-1).float()  # [B, 3T]: face, lips, voice

        sync_matrix = self.sync_matrix(lips, voice)  # [B, W, K, K]
        pairs = (vmask & amask).view(b, w, self.window_frames)
        shift_logits = self.shift_logits(sync_matrix, pairs)  # [B, W, 2D + 1]
        sync_score, has_pairs = self.sync_evidence(shift_logits, pairs)
        evidence = [sync_score, has_pairs]
        heads = {}  # the optional blend and voice heads
        if self.blend_head is not None:
            heads["blend_token_logits"] = self.blend_head(face).squeeze(-1).float()  # [B, T]
            heads["blend_logit"] = clip_mean(heads["blend_token_logits"], vmask)
            evidence.append(heads["blend_logit"].detach())  # the blend head learns from loss.blend alone
        if self.voice_head is not None:
            heads["voice_logit"] = clip_mean(self.voice_head(clip_tokens).squeeze(-1).float(), clip_mask)
            evidence.append(heads["voice_logit"].detach())  # the voice head learns from loss.voice alone
        if self.face_head is not None:
            heads["face_logit"] = clip_mean(self.face_head(face).squeeze(-1).float(), vmask)
            heads["lip_logit"] = clip_mean(self.lip_head(lips).squeeze(-1).float(), vmask)
        fused = torch.cat([av[:, 0], torch.stack(evidence, -1).to(av.dtype)], -1)
        return {
            "logit": self.head(fused).squeeze(-1).float(),
            "sync_score": sync_score,
            "audio_logit": self.audio_head(audio_only[:, 0]).squeeze(-1).float(),
            "visual_logit": self.visual_head(visual_only[:, 0]).squeeze(-1).float(),
            "visual_token_logits": 0.5 * (token_logits[:, :t] + token_logits[:, t:2 * t]),
            "audio_token_logits": token_logits[:, 2 * t:],
            "cls_attention": attention[:b, :, 0, 1:1 + 3 * t].mean(1),  # [B, 3T]: face, lip and audio tokens
            "sync": torch.diagonal(sync_matrix, dim1=2, dim2=3).reshape(b, t),
            "sync_matrix": sync_matrix,
            "shift_logits": shift_logits,
            "visual_mask": vmask,
            "audio_mask": amask,
            **heads,
        }

    # --- synchrony ----------------------------------------------------------------------------------------
    def sync_matrix(self, lips: torch.Tensor, voice: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every lip frame with every audio frame of its window: [B, W, K, K]."""
        b = lips.shape[0]
        zl = F.normalize(self.sync_lips(lips).float(), dim=-1).view(b, -1, self.window_frames,
                                                                     self.sync_lips.out_features)
        zv = F.normalize(self.sync_voice(voice).float(), dim=-1).view(zl.shape)
        return zl @ zv.transpose(-1, -2)

    def shift_logits(self, sim: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """For each shift s in -D..D: the mean similarity of lip frame k with audio frame k + s over the window's
        valid pairs (/ temperature). [B, W, K, K], [B, W, K] -> [B, W, 2D + 1]."""
        valid = (pairs[..., :, None] & pairs[..., None, :]).float()
        out = []
        for shift in range(-self.max_shift, self.max_shift + 1):
            diagonal = torch.diagonal(sim, offset=shift, dim1=-2, dim2=-1)
            weight = torch.diagonal(valid, offset=shift, dim1=-2, dim2=-1)
            out.append((diagonal * weight).sum(-1) / weight.sum(-1).clamp(min=1.0))
        return torch.stack(out, -1) / self.sync_temperature

    def sync_evidence(self, shift_logits: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per clip: how much better than chance shift 0 wins among the window's shifts (mean over windows with
        pairs of log p(0) + log(2D + 1); 0 = chance, > 0 = in sync), and whether the clip has any pair."""
        log_p0 = shift_logits.log_softmax(-1)[..., self.max_shift] + torch.log(
            torch.tensor(2.0 * self.max_shift + 1.0, device=shift_logits.device))
        has = pairs.any(-1)  # [B, W]
        score = (log_p0 * has).sum(1) / has.sum(1).clamp(min=1)
        any_pair = has.any(1)
        return score * any_pair, any_pair.float()

    def sync_explanation(self, out: dict) -> torch.Tensor:
        """model.stream_sync: per clip, the logit that its lips and audio are out of sync, a learned logistic of the
        detached sync evidence (only the two calibration parameters learn from it); never for a clip without
        lip-audio pairs."""
        weight, bias = (self.stream_sync * SYNC_OR_RATE).unbind()
        has_pairs = (out["visual_mask"] & out["audio_mask"]).any(1)
        logit = weight * out["sync_score"].detach().float() + bias
        return logit.masked_fill(~has_pairs, -1e4)

    def sync_loss(self, out: dict, genuine: torch.Tensor) -> torch.Tensor:
        """On genuine clips: InfoNCE of aligned lip/audio frames within each window (both ways) and the shift
        classification (shift 0 among -D..D)."""
        sim = out["sync_matrix"] / self.sync_temperature  # [B, W, K, K]
        b, w, k, _ = sim.shape
        pairs = (out["visual_mask"] & out["audio_mask"]).view(b, w, k) & genuine[:, None, None]
        target = torch.arange(k, device=sim.device).expand(b, w, k)
        amask = out["audio_mask"].view(b, w, 1, k)
        vmask = out["visual_mask"].view(b, w, 1, k)
        lips_to_voice = F.cross_entropy(sim.masked_fill(~amask, -1e4).flatten(0, 2), target.flatten(), reduction="none")
        voice_to_lips = F.cross_entropy(sim.transpose(-1, -2).masked_fill(~vmask, -1e4).flatten(0, 2),
                                        target.flatten(), reduction="none")
        frame_loss = masked_mean(0.5 * (lips_to_voice + voice_to_lips), pairs.flatten())
        windows = pairs.any(-1)  # [B, W]
        shift = F.cross_entropy(out["shift_logits"].flatten(0, 1),
                                torch.full((b * w,), self.max_shift, device=sim.device), reduction="none")
        return frame_loss + masked_mean(shift, windows.flatten())

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
            "token": 0.5 * (masked_mean(bce(log_mean_exp(out["visual_token_logits"], vmask), y_visual), has_v)
                            + masked_mean(bce(log_mean_exp(out["audio_token_logits"], amask), y_audio), has_a)),
            "sync": self.sync_loss(out, batch["in_sync"]),
        }
        w = self.loss_weights
        total = (parts["main"] + w.aux * (parts["audio"] + parts["visual"]) + w.token * parts["token"]
                 + w.sync * parts["sync"])
        if self.blend_head is not None:
            y_blend = batch["blend_label"][:, None].expand_as(vmask)
            parts["blend"] = masked_mean(bce(out["blend_token_logits"], y_blend), vmask & (y_blend >= 0))
            total = total + w.blend * parts["blend"]
        if self.voice_head is not None:
            parts["voice"] = masked_mean(bce(out["voice_logit"], y_audio), has_a)
            total = total + w.voice * parts["voice"]
        if self.face_head is not None:
            streams = [out["face_logit"], out["lip_logit"]]
            if self.stream_sync is not None:
                streams.append(self.sync_explanation(out))
            parts["stream"] = masked_mean(noisy_or_loss(streams, y_visual), has_v)
            total = total + w.stream * parts["stream"]
        return total, parts


def noisy_or_loss(logits: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Per clip, the cross-entropy of P(fake) = 1 - prod_i (1 - sigmoid(logit_i)) against ``target`` (0/1):
    genuine needs every logit low; fake needs any one high, and its gradient goes mostly to the highest."""
    log_genuine = sum(F.logsigmoid(-x.float()) for x in logits)  # log P(all say genuine)
    log_fake = torch.log(-torch.expm1(log_genuine.clamp(max=-1e-6)))  # log(1 - P(all say genuine))
    target = target.float().clamp(min=0)
    return -(target * log_fake + (1 - target) * log_genuine)


def clip_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per clip, the mean of [B, T] values over the masked time steps; 0 for a clip without any."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(1) / mask.sum(1).clamp(min=1.0)


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
