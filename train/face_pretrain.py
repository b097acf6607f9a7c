"""The face encoder's self-blend pretraining: the first stage of a run when ``train.face_pretrain.steps`` > 0.

Why a stage of its own: a face swap leaves a blending boundary and a colour / resolution mismatch that self-blended
faces teach (``train.augment.self_blend``), but an encoder learns it only from many independent blends: a
single-frame classifier on 64-px crops stays at chance for about 1000 steps of 32 blended pairs before it starts to
learn, while the full model draws one blend per clip (about 2400 in a 30-minute CPU run) and its face encoder never
got there (report/experiments.md).

What it does: frame pairs (two consecutive frames of a window, as ``model.face_motion`` reads them; single frames
when a window has one) of the genuine training clips, a share ``blend`` of them self-blended, each pair with its
own draw, then the run's training augmentation (with ``visual_fakes``, also the pairs of every training fake whose
category says its video is manipulated, never blended, labelled 1, and those of the audio-only fakes, whose faces
are genuine, blended like the genuine clips'); the face encoder (``FrameEncoder.net``) and a temporary linear head
score the pair's second frame (its RGB and, with ``face_motion``, its difference from the first) with binary
cross-entropy, AdamW at a constant lr. The head is dropped afterwards: the main training starts from the encoder's
weights. Every process runs the same stage on the same pairs (the wrapper then starts all ranks from rank 0's
weights).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import IterableDataset
from tqdm import tqdm

from models.batch import grey_mouths, modality_labels
from shards import reader
from shards.format import decode_faces, decode_meta
from train.augment import augment_frames, self_blend
from train.config import Config
from train.data import make_loader
from train.parts import optimizer_kernel

log = logging.getLogger("train")
NEAR_CHANCE = 0.55  # the stage's last logged accuracy below which it warns


def pair_length(cfg: Config) -> int:
    """Frames per training example: a pair of consecutive frames, or one when windows have a single frame."""
    return min(2, cfg.data.window_frames)


def visual_label(meta: dict) -> int:
    """1 when a clip's video is manipulated, 0 when its faces are genuine, -1 when unknown (unlabelled, or a fake
    without a category)."""
    label = meta.get("label")
    return -1 if label is None or int(label) < 0 else modality_labels(meta, int(label))[0]


def clip_pairs(sample: dict, cfg: Config, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Up to ``pairs_per_clip`` pairs of consecutive frames of one clip (both with a face box, within one window)
    as (uint8 [L, 3, S, S], label): a clip with genuine faces gives 1 if self-blended else 0, a visual fake 1 (never
    blended), any other clip nothing. ``sample`` holds the raw tar members: only the chosen face crops are
    decoded."""
    pre, aug = cfg.train.face_pretrain, cfg.data.augment
    meta = decode_meta(sample)
    visual = visual_label(meta)
    if not meta.get("has_face", False) or visual < 0:
        return []
    t, k, length = int(meta["frames"]), cfg.data.window_frames, pair_length(cfg)
    boxes = meta.get("boxes") or [True] * t
    ends = [i for i in range(t) if i % k >= length - 1 and all(b is not None for b in boxes[i - length + 1:i + 1])]
    if not ends:
        return []
    out = []
    for end in sorted(rng.choice(ends, size=min(pre.pairs_per_clip, len(ends)), replace=False)):
        pair = decode_faces(sample, list(range(end - length + 1, end + 1)))
        blended = visual == 0 and rng.random() < pre.blend
        if blended:
            pair, _ = self_blend(pair, None, rng)
        if cfg.data.mouth_mask:  # as models.batch.prepare greys them for the main training and inference
            pair = grey_mouths(pair, meta, range(end - length + 1, end + 1))
        if aug.enabled:
            pair = augment_frames(pair, aug, rng)
        out.append((np.ascontiguousarray(pair.transpose(0, 3, 1, 2)), int(blended or visual == 1)))
    return out


class BlendPairs(IterableDataset):
    """Endless batches (pairs uint8 [N, L, 3, S, S], labels float32 [N]) from the genuine clips of the training
    shards (all clips with ``face_pretrain.visual_fakes``); the same stream in every process."""

    def __init__(self, urls: list[str], cfg: Config):
        super().__init__()
        self.urls, self.cfg = urls, cfg

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cfg, size = self.cfg, self.cfg.train.face_pretrain.batch_size
        worker, _ = reader.worker_slot()
        only_label = None if cfg.train.face_pretrain.visual_fakes else 0
        clips = reader.make_dataset(self.urls, mode="train", seed=cfg.train.seed, epoch=0,
                                    shuffle_buffer=cfg.data.shuffle_buffer, rank=0, world_size=1,
                                    only_label=only_label, decode=False)
        pairs: list[np.ndarray] = []
        labels: list[int] = []
        for index, sample in enumerate(clips):
            rng = np.random.default_rng([cfg.train.seed, worker, index, 1])
            for pair, label in clip_pairs(sample, cfg, rng):
                pairs.append(pair)
                labels.append(label)
                if len(pairs) == size:
                    yield torch.from_numpy(np.stack(pairs)), torch.tensor(labels, dtype=torch.float32)
                    pairs, labels = [], []
        raise RuntimeError("the training stream ended; shards.reader.make_dataset(mode='train') must be infinite")


def freeze_if_fixed(model: nn.Module, cfg: Config) -> None:
    """With ``face_pretrain.lr_scale`` 0 the face encoder keeps the stage's weights: its parameters stop taking
    gradients (also on --resume, where the stage is not run again), so ``build_optimizer`` leaves them out."""
    pre = cfg.train.face_pretrain
    if pre.steps and pre.lr_scale == 0:
        model.face.net.requires_grad_(False)


def pretrain_face(model: nn.Module, urls: list[str], cfg: Config, accelerator) -> dict:
    """Run the stage on ``model.face`` in place (before the model is wrapped); returns what it measured: steps,
    seconds, and the loss and accuracy per logging window (chance: log 2 = 0.693 and 0.5)."""
    pre, device = cfg.train.face_pretrain, accelerator.device
    encoder = model.face
    with torch.random.fork_rng(devices=[]):  # the main training's random draws stay those of a run without it
        torch.manual_seed(cfg.train.seed)
        head = nn.Linear(encoder.net.num_features, 1).to(device)
    parameters = list(encoder.net.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=pre.lr, weight_decay=pre.weight_decay, **optimizer_kernel(device))
    length = pair_length(cfg)
    batches = iter(make_loader(BlendPairs(urls, cfg), cfg.data.workers, seed=cfg.train.seed))
    encoder.train()
    history, window, started = [], [], time.perf_counter()
    progress = tqdm(range(1, pre.steps + 1), desc="face pretraining", unit="step",
                    disable=not accelerator.is_main_process)
    for step in progress:
        pairs, labels = (x.to(device) for x in next(batches))
        inputs = encoder.net_inputs(pairs, length).unflatten(0, (pairs.shape[0], length))[:, -1]
        with accelerator.autocast():
            logits = head(encoder.net(inputs)).squeeze(-1).float()
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(parameters, cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(torch.stack([loss.detach(), ((logits > 0).float() == labels).float().mean()]))
        if step % pre.log_every_steps == 0 or step == pre.steps:
            loss_mean, accuracy = torch.stack(window).mean(0).tolist()
            history.append({"step": step, "loss": round(loss_mean, 4), "accuracy": round(accuracy, 4)})
            progress.set_postfix(loss=f"{loss_mean:.4f}", acc=f"{accuracy:.3f}")
            window = []
    del batches
    seconds = time.perf_counter() - started
    last = history[-1]
    log.info("face pretraining: %d steps in %.1f s; last %d steps: loss %.4f, accuracy %.3f (chance 0.693, 0.5)",
             pre.steps, seconds, pre.log_every_steps, last["loss"], last["accuracy"])
    if last["accuracy"] < NEAR_CHANCE:
        log.warning("face pretraining ended near chance (accuracy %.3f < %.2f): the main training starts from an "
                    "encoder that has not learned the blends; lower train.face_pretrain.lr (now %g) or raise "
                    "train.face_pretrain.steps", last["accuracy"], NEAR_CHANCE, pre.lr)
    return {"steps": pre.steps, "seconds": round(seconds, 1), "pairs_per_step": pre.batch_size, "history": history}
