"""The shard sample format: the one place that encodes a ``Clip`` into tar members and decodes them again.

A sample (one video, format 2) is stored as ``<key>.json``, the face crops ``<key>.f000.jpg`` ..
``<key>.f{T-1:03d}.jpg``, the mouth crops ``<key>.m000.jpg`` .., ``<key>.audio.npy`` (int16 mono over the clip)
and ``<key>.cls`` (only when the label is known); T = windows x window_frames, window by window (see
``shards.extract`` for the timing and the json fields). ``decode`` turns the raw members (as WebDataset yields
them, bytes per extension) into the reader's output::

    {"frames": uint8 tensor [T, 3, S, S], "mouths": uint8 tensor [T, 3, M, M], "audio": float32 tensor [N] in
     [-1, 1], "label": int (-1 unknown), "key": exact video file name, "has_face": bool, "has_audio": bool,
     "meta": the json dict}

Samples of another format (format 1 had T frames spread over the clip, no mouths) are refused with a message that
says to repack.

``decode_meta`` / ``decode_faces`` read the json alone and chosen face crops (the face pretraining stage).
``clip_to_sample(clip, label)`` = ``decode(encode(clip, ...))``: inference sees exactly what training saw,
JPEG round trip included. Encoding is deterministic (same clip -> same bytes).
"""

from __future__ import annotations

import io
import json

import numpy as np

from shards.extract import FORMAT, Clip

FRAME_EXT = "f{:03d}.jpg"
MOUTH_EXT = "m{:03d}.jpg"
# json fields written by extraction and encoding; extra per-video columns (shards.pack --meta) may not reuse them
RESERVED_JSON_KEYS = frozenset({
    "format", "video_name", "label", "windows", "window_frames", "frames", "fps", "native_rate", "size", "mouth_size",
    "margin", "mouth_scale", "jpeg_quality", "clip_start", "clip_end", "window_starts", "times", "frame_times", "boxes",
    "crop_boxes", "mouth_boxes", "scores", "fallbacks", "has_face", "has_audio", "audio_sample_rate", "audio_shift",
    "source",
})
AUDIO_EXT = "audio.npy"


def sample_key(video_name: str) -> str:
    """The WebDataset key of a video: its stem with every '.' replaced by '_' (keys end at the first dot)."""
    stem = video_name.rsplit(".", 1)[0] if "." in video_name.lstrip(".") else video_name
    return stem.replace(".", "_")


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a JPEG image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode(clip: Clip, key: str, label: int | None) -> dict[str, bytes | str]:
    """Tar members of one sample for ``webdataset.TarWriter`` (every value already bytes)."""
    if label not in (None, 0, 1):
        raise ValueError(f"label must be 0, 1 or None, got {label!r}")
    meta = dict(clip.meta, label=label)
    quality = int(meta.get("jpeg_quality", 95))
    sample: dict[str, bytes | str] = {"__key__": key}
    sample["json"] = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    for i, frame in enumerate(clip.frames):
        sample[FRAME_EXT.format(i)] = encode_jpeg(frame, quality)
    for i, mouth in enumerate(clip.mouths):
        sample[MOUTH_EXT.format(i)] = encode_jpeg(mouth, quality)
    sample[AUDIO_EXT] = encode_npy(clip.audio.astype(np.int16, copy=False))
    if label is not None:
        sample["cls"] = str(int(label)).encode()
    return sample


def decode(sample: dict) -> dict:
    """Raw WebDataset sample (bytes per extension) -> the reader's output dict (see the module doc)."""
    import torch

    meta = decode_meta(sample)
    count = int(meta["frames"])
    names = [FRAME_EXT.format(i) for i in range(count)]
    mouth_names = [MOUTH_EXT.format(i) for i in range(count)]
    _check_members(sample, names + mouth_names + [AUDIO_EXT])
    frames = np.stack([decode_jpeg(sample[n]) for n in names])
    mouths = np.stack([decode_jpeg(sample[n]) for n in mouth_names])
    pcm = decode_npy(sample[AUDIO_EXT])
    label = meta.get("label")
    return {
        "frames": torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(),
        "mouths": torch.from_numpy(mouths).permute(0, 3, 1, 2).contiguous(),
        "audio": torch.from_numpy(pcm.astype(np.float32) / 32768.0),
        "label": -1 if label is None else int(label),
        "key": meta.get("video_name", sample.get("__key__", "?")),
        "has_face": bool(meta.get("has_face", False)),
        "has_audio": bool(meta.get("has_audio", False)),
        "meta": meta,
    }


def decode_meta(sample: dict) -> dict:
    """The json of a raw sample, refused unless it is of this code's format."""
    key = sample.get("__key__", "?")
    if "json" not in sample:
        raise ValueError(f"sample {key} ({sample.get('__url__', '?')}) has no .json member: not a shards sample")
    meta = json.loads(sample["json"])
    if meta.get("format") != FORMAT:
        raise ValueError(f"sample {key} ({sample.get('__url__', '?')}) is shard format {meta.get('format', 1)}, this "
                         f"code reads format {FORMAT} (windows of consecutive frames with mouth crops): repack the "
                         "videos with `python -m shards.pack` into a new folder")
    return meta


def decode_faces(sample: dict, indices: list[int]) -> np.ndarray:
    """Some face crops of a raw sample, uint8 RGB [len(indices), S, S, 3], without decoding the rest."""
    names = [FRAME_EXT.format(i) for i in indices]
    _check_members(sample, names)
    return np.stack([decode_jpeg(sample[n]) for n in names])


def _check_members(sample: dict, names: list[str]) -> None:
    missing = [n for n in names if n not in sample]
    if missing:
        raise ValueError(f"sample {sample.get('__key__', '?')} ({sample.get('__url__', '?')}) lacks members "
                         f"{missing}: the shard is damaged or from another tool; repack it with `python -m shards.pack`")


def clip_to_sample(clip: Clip, label: int | None = None) -> dict:
    """The reader's output for a freshly extracted clip, through the same JPEG encoding the shards use."""
    return decode(encode(clip, sample_key(clip.meta.get("video_name", "clip")), label))
