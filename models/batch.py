"""The batch every model takes, made from shard samples the same way in training and inference.

``prepare(sample, inputs)`` turns one reader sample (``shards.reader`` / ``shards.format.decode`` output) into
fixed-shape tensors; ``collate(list) -> batch`` stacks them. Training passes an ``augment`` callable (see
``train.data``); inference and validation do not, so they see identical, deterministic inputs.

Batch keys: ``frames`` uint8 [B,T,3,S,S]; ``audio`` float32 [B,L] (zero-padded to L = max_clip_seconds*16k);
``audio_length`` int64 [B]; ``visual_mask`` / ``audio_mask`` bool [B,T] (valid tokens: the modality exists, the
frame has a face box, and the time step survived a temporal crop); ``has_face`` / ``has_audio`` bool [B];
``label`` int64 [B] (-1 unknown); ``audio_label`` / ``visual_label`` int64 [B] (per-modality fakeness when the
sample's meta names a FakeAVCeleb category, else -1); ``key`` list[str].
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from competition import CATEGORIES
from models.config import InputConfig
from shards.extract import AUDIO_SAMPLE_RATE

# (frames uint8 [T,3,S,S], audio float32 [N]) -> (frames, audio, time steps to keep: bool [T])
Augment = Callable[[torch.Tensor, np.ndarray], tuple[torch.Tensor, np.ndarray, np.ndarray]]


def prepare(sample: dict, inputs: InputConfig, check_shape: bool = True, augment: Augment | None = None) -> dict:
    """A reader sample -> per-sample tensors (see the module doc)."""
    frames = torch.as_tensor(sample["frames"])
    key = sample.get("key", "?")
    t = frames.shape[0]
    if check_shape and (t != inputs.frames or tuple(frames.shape[1:]) != (3, inputs.size, inputs.size)):
        raise ValueError(f"sample {key}: frames {tuple(frames.shape)} but the config expects "
                         f"[{inputs.frames}, 3, {inputs.size}, {inputs.size}] (data.frames, data.size): the "
                         "shards were packed with other extraction options; repack or fix the config")
    meta = sample.get("meta") or {}
    has_face, has_audio = bool(sample.get("has_face", True)), bool(sample.get("has_audio", True))
    audio = np.asarray(sample["audio"], dtype=np.float32).reshape(-1)
    length = inputs.audio_samples()
    if audio.size > length:  # a rounding sample or two; never a second of speech
        audio = audio[:length]
    if not has_audio:
        audio = audio[:0]
    keep = np.ones(t, dtype=bool)
    if augment is not None:
        frames, audio, keep = augment(frames, audio)
    boxes = meta.get("boxes") or [True] * t
    face_in_frame = np.array([b is not None for b in boxes[:t]] + [True] * max(0, t - len(boxes)), dtype=bool)
    padded = np.zeros(length, dtype=np.float32)
    padded[:audio.size] = audio
    label = sample.get("label", -1)
    label = -1 if label is None else int(label)
    visual_label, audio_label = modality_labels(meta, label)
    return {
        "frames": frames.to(torch.uint8),
        "audio": torch.from_numpy(padded),
        "audio_length": audio.size,
        "visual_mask": torch.from_numpy(keep & face_in_frame & has_face),
        "audio_mask": torch.from_numpy(keep & (audio.size > 0)),
        "has_face": has_face,
        "has_audio": has_audio and audio.size > 0,
        "label": label,
        "visual_label": visual_label,
        "audio_label": audio_label,
        "key": sample.get("key") or meta.get("video_name", "?"),
    }


def modality_labels(meta: dict, label: int) -> tuple[int, int]:
    """(visual, audio) fakeness from a FakeAVCeleb category in the sample's meta; (-1, -1) when unknown."""
    if label == 0:
        return 0, 0
    category = meta.get("category") or (meta.get("source") or {}).get("category")
    return CATEGORIES.get(category, (-1, -1))


def collate(samples: list[dict]) -> dict:
    if not samples:
        raise ValueError("collate() got no samples")
    batch: dict = {}
    for name in ("frames", "audio", "visual_mask", "audio_mask"):
        batch[name] = torch.stack([s[name] for s in samples])
    for name in ("audio_length", "label", "visual_label", "audio_label"):
        batch[name] = torch.tensor([s[name] for s in samples], dtype=torch.int64)
    for name in ("has_face", "has_audio"):
        batch[name] = torch.tensor([s[name] for s in samples], dtype=torch.bool)
    batch["key"] = [s["key"] for s in samples]
    return batch


def to_device(batch: dict, device: torch.device | str) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def example_batch(inputs: InputConfig, batch_size: int = 1, frames: int | None = None) -> dict:
    """A batch of the shape the data pipeline produces (random content), for profiling and smoke tests."""
    t = frames or inputs.frames
    generator = torch.Generator().manual_seed(0)
    samples = []
    for i in range(batch_size):
        sample = {
            "frames": torch.randint(0, 256, (t, 3, inputs.size, inputs.size), dtype=torch.uint8,
                                    generator=generator),
            "audio": torch.rand(int(inputs.max_clip_seconds * AUDIO_SAMPLE_RATE), generator=generator) * 2 - 1,
            "label": i % 2, "key": f"example{i}.mp4", "has_face": True, "has_audio": True,
            "meta": {"frames": t, "size": inputs.size},
        }
        samples.append(prepare(sample, inputs, check_shape=frames is None))
    return collate(samples)
