"""The batch every model takes, made from shard samples the same way in training and inference.

``prepare(sample, inputs)`` turns one reader sample (``shards.reader`` / ``shards.format.decode`` output) into
fixed-shape tensors; ``collate(list) -> batch`` stacks them. Training passes an ``augment`` callable (see
``train.data``); inference and validation do not, so they see identical, deterministic inputs.

Batch keys (T = W windows x K frames, window by window): ``frames`` uint8 [B,T,3,S,S] face crops; ``mouths``
uint8 [B,T,3,M,M] mouth crops; ``audio`` float32 [B,L] (the clip's audio, zero-padded to L =
max_clip_seconds*16k); ``audio_length`` int64 [B]; ``window_offsets`` int64 [B,W] (the audio sample where each
window's first frame starts: frame k of window w owns audio[offset_w + k*F : offset_w + (k+1)*F], F = 16k / r);
``frame_rate`` float32 [B] (r: the rate the clip's windows were read at, meta ``fps``; each video's own with
``data.native_rate``, else ``data.fps``);
``visual_mask`` / ``audio_mask`` bool [B,T] (valid tokens: the modality exists, the frame has a face box / its
audio lies in the decoded audio, and the time step survived a temporal crop); ``has_face`` / ``has_audio`` bool
[B]; ``label`` int64 [B] (-1 unknown); ``audio_label`` / ``visual_label`` int64 [B] (per-modality fakeness when
the sample's meta names a FakeAVCeleb category, else -1); ``in_sync`` bool [B] (lips and voice are genuine and in
sync, the synchrony loss's clips: genuine clips and the training pseudo-fakes made of them, whose meta says
``pseudo_fake``); ``blend_label`` int64 [B] (0 genuine, 1 a self-blended face: a visual pseudo-fake, -1 any other
clip); ``key`` list[str].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from competition import CATEGORIES
from models.config import InputConfig
from shards.extract import AUDIO_SAMPLE_RATE, FRAME_FIELDS

# (frames uint8 [T,3,S,S], mouths uint8 [T,3,M,M], audio float32 [N]) -> (frames, mouths, audio, time steps to
# keep: bool [T])
Augment = Callable[[torch.Tensor, torch.Tensor, np.ndarray],
                   tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]]


def prepare(sample: dict, inputs: InputConfig, check_shape: bool = True, augment: Augment | None = None) -> dict:
    """A reader sample -> per-sample tensors (see the module doc)."""
    frames, mouths = torch.as_tensor(sample["frames"]), torch.as_tensor(sample["mouths"])
    key = sample.get("key", "?")
    t = frames.shape[0]
    expected = [(inputs.frames, 3, inputs.size, inputs.size), (inputs.frames, 3, inputs.mouth_size, inputs.mouth_size)]
    if check_shape and [tuple(frames.shape), tuple(mouths.shape)] != expected:
        raise ValueError(f"sample {key}: face crops {tuple(frames.shape)} and mouth crops {tuple(mouths.shape)} but "
                         f"the config expects {expected[0]} and {expected[1]} (data.windows x data.window_frames, "
                         "data.size, data.mouth_size): the shards were packed with other extraction options; repack "
                         "or fix the config")
    meta = sample.get("meta") or {}
    has_face, has_audio = bool(sample.get("has_face", True)), bool(sample.get("has_audio", True))
    audio = np.asarray(sample["audio"], dtype=np.float32).reshape(-1)
    length = inputs.audio_samples()
    if audio.size > length:  # a rounding sample or two; never a second of speech
        audio = audio[:length]
    if not has_audio:
        audio = audio[:0]
    if inputs.mouth_mask:
        frames = grey_mouths(frames, meta)
    keep = np.ones(t, dtype=bool)
    if augment is not None:
        frames, mouths, audio, keep = augment(frames, mouths, audio)
    boxes = meta.get("boxes") or [True] * t
    face_in_frame = np.array([b is not None for b in boxes[:t]] + [True] * max(0, t - len(boxes)), dtype=bool)
    offsets = window_offsets(meta, inputs, t)
    rate = float(meta.get("fps") or inputs.fps)
    frame_end = np.round(offsets[:, None] + (np.arange(t // len(offsets)) + 1) * AUDIO_SAMPLE_RATE / rate).reshape(-1)
    padded = np.zeros(length, dtype=np.float32)
    padded[:audio.size] = audio
    label = sample.get("label", -1)
    label = -1 if label is None else int(label)
    visual_label, audio_label = modality_labels(meta, label)
    return {
        "frames": frames.to(torch.uint8),
        "mouths": mouths.to(torch.uint8),
        "audio": torch.from_numpy(padded),
        "audio_length": audio.size,
        "window_offsets": torch.from_numpy(offsets),
        "frame_rate": rate,
        "visual_mask": torch.from_numpy(keep & face_in_frame & has_face),
        "audio_mask": torch.from_numpy(keep & (frame_end <= audio.size)),
        "has_face": has_face,
        "has_audio": has_audio and audio.size > 0,
        "label": label,
        "visual_label": visual_label,
        "audio_label": audio_label,
        "in_sync": label == 0 or bool(meta.get("pseudo_fake")),
        "blend_label": blend_label(meta, label, visual_label),
        "key": sample.get("key") or meta.get("video_name", "?"),
    }


MOUTH_GREY = 128


def mouth_region(meta: dict, t: int, size: int) -> tuple[int, int, int, int] | None:
    """Rows and columns (y0, y1, x0, x1) of frame ``t``'s mouth box (meta ``mouth_boxes``) in its face crop of
    ``size`` pixels (meta ``crop_boxes``, both in source pixels), clipped to the crop; None without those boxes."""
    crops, mouths = meta.get("crop_boxes") or [], meta.get("mouth_boxes") or []
    if t >= min(len(crops), len(mouths)) or crops[t] is None or mouths[t] is None:
        return None
    (cx0, cy0, cx1, _), (mx0, my0, mx1, my1) = crops[t], mouths[t]
    scale = size / (cx1 - cx0)
    y0, x0 = (max(0, min(size, int(np.floor((v - c) * scale)))) for v, c in ((my0, cy0), (mx0, cx0)))
    y1, x1 = (max(0, min(size, int(np.ceil((v - c) * scale)))) for v, c in ((my1, cy0), (mx1, cx0)))
    return y0, y1, x0, x1


def grey_mouths(frames: torch.Tensor | np.ndarray, meta: dict,
                times: Sequence[int] | None = None) -> torch.Tensor | np.ndarray:
    """Face crops, uint8 tensor [N, 3, S, S] or array [N, S, S, 3] (the clip's frames ``times``; default all of
    them) -> a copy with each frame's mouth region (``mouth_region``) mid grey (``data.mouth_mask``)."""
    channels_first = isinstance(frames, torch.Tensor)
    out = frames.clone() if channels_first else frames.copy()
    size = frames.shape[-1] if channels_first else frames.shape[1]
    for i, t in enumerate(range(len(frames)) if times is None else times):
        region = mouth_region(meta, t, size)
        if region is None:
            continue
        y0, y1, x0, x1 = region
        if channels_first:
            out[i, :, y0:y1, x0:x1] = MOUTH_GREY
        else:
            out[i, y0:y1, x0:x1] = MOUTH_GREY
    return out


def time_views(sample: dict, views: int) -> list[dict]:
    """A reader sample of W x ``views`` windows -> ``views`` samples of W windows each, view j holding windows j,
    j + views, j + 2 x views, ... (interleaved: every view spans the whole clip, as one clip of W windows would)."""
    if views == 1:
        return [sample]
    meta = sample["meta"]
    windows, length = int(meta["windows"]), int(meta["window_frames"])
    if windows % views:
        raise ValueError(f"sample {sample.get('key', '?')}: its {windows} windows do not split into {views} views "
                         "(score.time_views)")
    result = []
    for view in range(views):
        chosen = range(view, windows, views)
        frames = [w * length + k for w in chosen for k in range(length)]
        per_frame = {key: [meta[key][t] for t in frames] for key in FRAME_FIELDS if key in meta}
        view_meta = dict(meta, **per_frame, windows=len(chosen), frames=len(frames),
                         window_starts=[meta["window_starts"][w] for w in chosen])
        result.append(dict(sample, frames=sample["frames"][frames], mouths=sample["mouths"][frames], meta=view_meta))
    return result


def window_offsets(meta: dict, inputs: InputConfig, frames: int) -> np.ndarray:
    """int64 [W]: the audio sample each window starts at (its first frame's start), from the sample's meta."""
    starts = meta.get("window_starts")
    windows = len(starts) if starts else max(1, frames // inputs.window_frames)
    if not starts:  # no timing (synthetic batches): windows back to back from the start
        starts = [w * inputs.window_frames / inputs.fps for w in range(windows)]
    return np.array([int(round(s * AUDIO_SAMPLE_RATE)) for s in starts], dtype=np.int64)


def modality_labels(meta: dict, label: int) -> tuple[int, int]:
    """(visual, audio) fakeness from a FakeAVCeleb category in the sample's meta; (-1, -1) when unknown."""
    if label == 0:
        return 0, 0
    category = meta.get("category") or (meta.get("source") or {}).get("category")
    return CATEGORIES.get(category, (-1, -1))


def blend_label(meta: dict, label: int, visual_label: int) -> int:
    """0 for a genuine clip, 1 for a self-blended face (a visual pseudo-fake), -1 for every other clip: the real
    fakes never reach the blend head, so mouth-only manipulations, whose frames look genuine, cannot confuse it."""
    if label == 0:
        return 0
    return 1 if meta.get("pseudo_fake") == "self_blend" and visual_label == 1 else -1


def collate(samples: list[dict]) -> dict:
    if not samples:
        raise ValueError("collate() got no samples")
    batch: dict = {}
    for name in ("frames", "mouths", "audio", "window_offsets", "visual_mask", "audio_mask"):
        batch[name] = torch.stack([s[name] for s in samples])
    for name in ("audio_length", "label", "visual_label", "audio_label", "blend_label"):
        batch[name] = torch.tensor([s[name] for s in samples], dtype=torch.int64)
    for name in ("has_face", "has_audio", "in_sync"):
        batch[name] = torch.tensor([s[name] for s in samples], dtype=torch.bool)
    batch["frame_rate"] = torch.tensor([s["frame_rate"] for s in samples], dtype=torch.float32)
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
            "mouths": torch.randint(0, 256, (t, 3, inputs.mouth_size, inputs.mouth_size), dtype=torch.uint8,
                                    generator=generator),
            "audio": torch.rand(int(inputs.max_clip_seconds * AUDIO_SAMPLE_RATE), generator=generator) * 2 - 1,
            "label": i % 2, "key": f"example{i}.mp4", "has_face": True, "has_audio": True,
            "meta": {"frames": t, "size": inputs.size},
        }
        samples.append(prepare(sample, inputs, check_shape=frames is None))
    return collate(samples)
