"""The shard sample format: the one place that encodes a ``Clip`` into tar members and decodes them again.

A sample (one video, format 3) is stored as ``<key>.json``, the T face crops in ``<key>.faces.jpgs``, the T mouth
crops in ``<key>.mouths.jpgs``, ``<key>.audio.npy`` (int16 mono over the clip) and ``<key>.cls`` (only when the label
is known); T = windows x window_frames, window by window (see ``shards.extract`` for the timing and the json
fields). A ``.jpgs`` member is a bundle of JPEG files: the count N and the N byte lengths as little-endian uint32,
then the N files back to back. One member per kind instead of one per crop (format 2) makes a sample 5 tar members
instead of 2T + 3: reading a packed `small` sample went from 2.5 to 0.5 ms, the tar headers being parsed in Python.
``decode`` turns the raw members (as WebDataset yields them, bytes per extension) into the reader's output::

    {"frames": uint8 tensor [T, 3, S, S], "mouths": uint8 tensor [T, 3, M, M], "audio": float32 tensor [N] in
     [-1, 1], "label": int (-1 unknown), "key": exact video file name, "has_face": bool, "has_audio": bool,
     "meta": the json dict}

Samples of another format (format 2 had a member per crop, format 1 T frames spread over the clip and no mouths)
are refused with a message that says to repack.

``decode_meta`` / ``decode_faces`` read the json alone and chosen face crops (the face pretraining stage).
``clip_to_sample(clip, label)`` = ``decode(encode(clip, ...))``: inference sees exactly what training saw,
JPEG round trip included. Encoding is deterministic (same clip -> same bytes).
"""

from __future__ import annotations

import io
import json

import numpy as np

from shards.extract import FORMAT, Clip

FRAMES_EXT = "faces.jpgs"
MOUTHS_EXT = "mouths.jpgs"
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


def decode_jpeg(data: bytes | memoryview) -> np.ndarray:
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a JPEG image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def bundle_jpegs(images: list[bytes]) -> bytes:
    """JPEG files -> one ``.jpgs`` member: count and lengths (little-endian uint32), then the files."""
    header = np.array([len(images), *map(len, images)], dtype="<u4")
    return header.tobytes() + b"".join(images)


def unbundle_jpegs(data: bytes) -> list[memoryview]:
    """A ``.jpgs`` member -> its JPEG files (views into ``data``, no copy)."""
    view = memoryview(data)
    count = int(np.frombuffer(view[:4], dtype="<u4")[0]) if len(view) >= 4 else -1
    header = 4 * (count + 1)
    if count < 0 or len(view) < header:
        raise ValueError(f"a .jpgs member of {len(view)} bytes is too short for its header")
    lengths = np.frombuffer(view[4:header], dtype="<u4").astype(np.int64)
    bounds = (header + np.concatenate([[0], np.cumsum(lengths)])).tolist()
    if bounds[-1] != len(view):
        raise ValueError(f"a .jpgs member of {len(view)} bytes whose {count} images take {bounds[-1]}")
    return [view[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


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
    sample[FRAMES_EXT] = bundle_jpegs([encode_jpeg(frame, quality) for frame in clip.frames])
    sample[MOUTHS_EXT] = bundle_jpegs([encode_jpeg(mouth, quality) for mouth in clip.mouths])
    sample[AUDIO_EXT] = encode_npy(clip.audio.astype(np.int16, copy=False))
    if label is not None:
        sample["cls"] = str(int(label)).encode()
    return sample


def decode(sample: dict) -> dict:
    """Raw WebDataset sample (bytes per extension) -> the reader's output dict (see the module doc)."""
    import torch

    meta = decode_meta(sample)
    _check_members(sample, [FRAMES_EXT, MOUTHS_EXT, AUDIO_EXT])
    count = int(meta["frames"])
    frames = np.stack([decode_jpeg(data) for data in _crops(sample, FRAMES_EXT, count)])
    mouths = np.stack([decode_jpeg(data) for data in _crops(sample, MOUTHS_EXT, count)])
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
                         f"code reads format {FORMAT} (windows of consecutive frames with mouth crops, each kind of "
                         "crop in one member): repack the videos with `python -m shards.pack` into a new folder")
    return meta


def decode_faces(sample: dict, indices: list[int]) -> np.ndarray:
    """Some face crops of a raw sample, uint8 RGB [len(indices), S, S, 3], without decoding the rest."""
    _check_members(sample, [FRAMES_EXT])
    crops = _crops(sample, FRAMES_EXT)
    return np.stack([decode_jpeg(crops[i]) for i in indices])


def _crops(sample: dict, ext: str, count: int | None = None) -> list[memoryview]:
    """The JPEG files of a bundle member, checked against the json's frame count when given."""
    try:
        crops = unbundle_jpegs(sample[ext])
        if count is not None and len(crops) != count:
            raise ValueError(f"{len(crops)} images where its json says {count} frames")
    except ValueError as error:
        raise ValueError(f"sample {sample.get('__key__', '?')} ({sample.get('__url__', '?')}) member .{ext}: {error}; "
                         "the shard is damaged: repack it with `python -m shards.pack`") from None
    return crops


def _check_members(sample: dict, names: list[str]) -> None:
    missing = [n for n in names if n not in sample]
    if missing:
        raise ValueError(f"sample {sample.get('__key__', '?')} ({sample.get('__url__', '?')}) lacks members "
                         f"{missing}: the shard is damaged or from another tool; repack it with `python -m shards.pack`")


def clip_to_sample(clip: Clip, label: int | None = None) -> dict:
    """The reader's output for a freshly extracted clip, through the same JPEG encoding the shards use."""
    return decode(encode(clip, sample_key(clip.meta.get("video_name", "clip")), label))
