"""One video -> one ``Clip`` (face crops, aligned mono audio, metadata). Shared by ``shards.pack`` and ``infer``.

    clip = extract(path, ExtractOptions(frames=16, size=224), FaceDetector())

Timing (the project contract): the clip is the whole video capped at ``max_clip_seconds`` (centred); frame i is
the one on screen at t_i = clip_start + (i + 0.5) * span / T, and the audio covers exactly
[clip_start, clip_end] at 16 kHz, so audio segment i = [clip_start + i*span/T, clip_start + (i+1)*span/T] is
aligned with frame i.

Faces: BlazeFace on the sampled frames (downscaled to ``detect_side``; every ``detect_stride``-th frame, boxes
interpolated in between where the detections agree, see ``detect_faces``), linked into tracks, the most persistent
track kept (``shards.faces.track_main_face``) and its gaps filled from the nearest detection; each frame is
cropped square around that face with ``margin`` and resized to ``size``. Frames larger than ``max_frame_side``
are downscaled while converting to RGB (a 4K source is cropped from its 1920-wide version), which bounds memory.

Failures raise ``ExtractionError`` with one of ``FAILURE_REASONS``; usable inputs with a problem are packed with
``fallbacks`` from ``FALLBACKS`` listed in the metadata:

  no_face          no face in any sampled frame: centre square crop, ``has_face`` false, boxes null
  no_audio         no audio stream: silent audio, ``has_audio`` false
  audio_unreadable an audio stream that does not decode in the clip span: silent audio, ``has_audio`` false
  partial_audio    the audio stream covers less of the span than the video (more than 0.25 s missing; zeros)
  truncated        the file ends before its header says: the clip is taken from what is really there
  repeated_frames  fewer distinct frames than T (very short videos): frames repeat in time order
  decode_errors    some packets failed to decode; the nearest decoded frame stands in
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from shards import media
from shards.faces import Face, center_box, crop_square, fill_gaps, iou, square_box, track_main_face

AUDIO_SAMPLE_RATE = 16000
FAILURE_REASONS = (
    "missing_file",  # listed in the labels but not on disk
    "empty_file",  # 0 bytes
    "unreadable",  # FFmpeg cannot open it: not a media file, or truncated before its index (moov)
    "no_video_stream",  # audio only: nothing to classify visually (see README: not packed)
    "no_decodable_frames",  # a video stream without one frame that decodes
    "decode_error",  # FFmpeg failed in a way not covered above
    "timeout",  # extraction took longer than the per-video limit (shards.pack --video-timeout)
    "worker_died",  # the worker process was killed while extracting it (e.g. out of memory), twice
    "crash",  # an unexpected exception in the extraction code (a bug: the detail has the traceback tail)
)
FALLBACKS = ("no_face", "no_audio", "audio_unreadable", "partial_audio", "truncated", "repeated_frames",
             "decode_errors")
PARTIAL_AUDIO_SECONDS = 0.25
AGREE_IOU = 0.6  # detected boxes this similar at both ends of a gap: interpolate the frames between


class ExtractionError(Exception):
    """An input that gives no clip. ``reason`` is one of FAILURE_REASONS; str() is "reason: detail"."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ExtractOptions:
    """What a clip is made of. Every field but ``decode_threads`` changes the content (see ``content()``)."""

    frames: int = 16  # T frames per clip
    size: int = 224  # crop side in pixels
    margin: float = 0.3  # added to each side of the face box, as a fraction of its side
    max_clip_seconds: float = 10.0
    jpeg_quality: int = 95
    audio_sample_rate: int = AUDIO_SAMPLE_RATE
    max_frame_side: int = 1920  # larger frames are downscaled while decoding (bounds memory, 4K -> 1080p)
    detect_side: int = 640  # frames are downscaled to this longer side for face detection
    detect_stride: int = 4  # detect on every k-th frame; the rest only where neighbouring boxes disagree
    decode_threads: int = 1  # FFmpeg threads per video (1 when packing with one process per core)

    def __post_init__(self) -> None:
        problems = []
        if self.frames < 1:
            problems.append(f"frames={self.frames} (need >= 1)")
        if not 16 <= self.size <= 1024:
            problems.append(f"size={self.size} (need 16..1024)")
        if not 0 <= self.margin <= 2:
            problems.append(f"margin={self.margin} (need 0..2)")
        if self.max_clip_seconds <= 0:
            problems.append(f"max_clip_seconds={self.max_clip_seconds} (need > 0)")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"jpeg_quality={self.jpeg_quality} (need 1..100)")
        if self.detect_stride < 1 or self.detect_side < 64 or self.max_frame_side < 64:
            problems.append("detect_stride >= 1, detect_side >= 64 and max_frame_side >= 64 are required")
        if problems:
            raise ValueError("invalid ExtractOptions: " + "; ".join(problems))

    def content(self) -> dict:
        """The options that change what a clip contains (recorded with packed shards and compared on resume)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "decode_threads"}


@dataclass
class Clip:
    """frames: uint8 [T, S, S, 3] RGB; audio: int16 [N] mono at meta["audio_sample_rate"]; meta: the sample json
    (without the label)."""

    frames: np.ndarray
    audio: np.ndarray
    meta: dict = field(default_factory=dict)


def clip_span(start: float, duration: float, max_seconds: float) -> tuple[float, float]:
    span = min(duration, max_seconds)
    clip_start = start + (duration - span) / 2
    return clip_start, clip_start + span


def frame_times(clip_start: float, clip_end: float, frames: int) -> list[float]:
    span = clip_end - clip_start
    return [clip_start + (i + 0.5) * span / frames for i in range(frames)]


def extract(path: str | Path, options: ExtractOptions, detector) -> Clip:
    """The clip of one video (see the module doc), or ExtractionError. ``detector``: shards.faces.FaceDetector."""
    path = Path(path)
    try:
        container = media.open_media(path)
    except media.MediaError as error:
        raise ExtractionError(error.reason, error.detail) from error
    try:
        with container:
            return _extract(path, container, options, detector)
    except media.MediaError as error:
        raise ExtractionError(error.reason, error.detail) from error
    except media.av.FFmpegError as error:
        raise ExtractionError("decode_error", f"{path.name}: {error}") from error


def _extract(path: Path, container, options: ExtractOptions, detector) -> Clip:
    info = media.probe(container)
    if not info.has_video:
        raise ExtractionError("no_video_stream", f"{path.name} has no video stream (audio only)")
    fallbacks: list[str] = []
    decoded = load_frames(container, info, options, fallbacks)
    rgb, times, actual_times = decoded.rgb, decoded.times, decoded.frame_times
    clip_start, clip_end, duration = decoded.clip_start, decoded.clip_end, decoded.duration

    height, width = rgb[0].shape[:2]
    coded = (info.width or width, info.height or height)
    rotated = (width > height) != (coded[0] > coded[1]) and coded[0] != coded[1]
    source_w, source_h = (coded[1], coded[0]) if rotated else coded
    to_source = source_w / width  # working-resolution pixels -> source pixels

    detections = detect_faces(rgb, detector, options)
    track = fill_gaps(track_main_face(detections))
    has_face = any(f is not None for f in track)
    crops, boxes, crop_boxes, scores = [], [], [], []
    for t, frame in enumerate(rgb):
        face = track[t]
        box = square_box(face, width, height, options.margin) if face is not None else center_box(width, height)
        crops.append(crop_square(frame, box, options.size))
        crop_boxes.append([round(v * to_source, 1) for v in box])
        boxes.append([round(v * to_source, 1) for v in face.box()] if face is not None else None)
        detected = face is not None and any(face is d for d in detections[t])
        scores.append(round(face.score, 4) if detected else None)
    if not has_face:
        fallbacks.append("no_face")

    audio, has_audio, audio_stats = _audio(container, info, clip_start, clip_end, options, fallbacks)
    meta = {
        "video_name": path.name,
        "frames": options.frames,
        "size": options.size,
        "margin": options.margin,
        "jpeg_quality": options.jpeg_quality,
        "clip_start": round(clip_start, 6),
        "clip_end": round(clip_end, 6),
        "times": [round(t, 6) for t in times],
        "frame_times": [round(t, 6) for t in actual_times],
        "boxes": boxes,  # the face box each crop is centred on (source pixels); null when no face at all
        "crop_boxes": crop_boxes,  # the square actually cropped (may overhang the frame: black padding)
        "scores": scores,  # detector score; null where the box was filled in from a neighbouring frame
        "fallbacks": fallbacks,
        "has_face": has_face,
        "has_audio": has_audio,
        "audio_sample_rate": options.audio_sample_rate,
        "source": {
            "duration": round(duration, 6),
            "fps": round(info.fps, 4) if info.fps else None,
            "width": source_w,
            "height": source_h,
            "rotated": rotated,
            "has_audio": info.has_audio,
            "audio_sample_rate": info.audio_sample_rate,
            "audio_channels": info.audio_channels,
            "audio_missing_seconds": audio_stats.get("missing_seconds"),
            "num_faces": max((len(d) for d in detections), default=0),
            "video_codec": info.video_codec,
            "audio_codec": info.audio_codec,
            "bytes": path.stat().st_size,
        },
    }
    return Clip(frames=np.stack(crops), audio=audio, meta=meta)


@dataclass
class DecodedFrames:
    rgb: list[np.ndarray]  # T frames at working resolution (display orientation)
    times: list[float]  # the wanted t_i
    frame_times: list[float]  # timestamps of the frames actually shown at t_i
    clip_start: float
    clip_end: float
    duration: float
    stats: dict


def load_frames(container, info: media.MediaInfo, options: ExtractOptions, fallbacks: list[str]) -> DecodedFrames:
    """The clip's T frames (the decode half of ``extract``; python -m scripts.bench_pack times it alone)."""
    period = 1.0 / info.fps if info.fps else 0.04
    start, duration, index = _usable_duration(container, info, options, period, fallbacks)
    clip_start, clip_end = clip_span(start, duration, options.max_clip_seconds)
    times = frame_times(clip_start, clip_end, options.frames)
    rgb, actual_times, stats = media.decode_frames(container, times, max_side=options.max_frame_side,
                                                   threads=options.decode_threads, index=index)
    if len(set(actual_times)) < options.frames:
        fallbacks.append("repeated_frames")
    if stats["errors"] or stats["missing"]:
        fallbacks.append("decode_errors")
    return DecodedFrames(rgb, times, actual_times, clip_start, clip_end, duration, stats)


def _usable_duration(container, info: media.MediaInfo, options: ExtractOptions, period: float,
                     fallbacks: list[str]) -> tuple[float, float, media.PacketIndex]:
    """(start, duration, packet index over the clip span), measuring the duration from the packets when the
    header has none or the file is cut short."""
    start, duration = info.start, info.duration
    if duration and duration > 0:
        clip_start, clip_end = clip_span(start, duration, options.max_clip_seconds)
        index = media.index_video(container, clip_start, clip_end, period)
        last = index.times[-1] if index.times else None
        if last is not None and index.times[0] <= clip_start + period and (
                not index.reached_end or last + period >= clip_end - 2 * period):
            return start, duration, index
    # no duration in the header, or the packets stop early: measure from the packets themselves
    index = media.index_video(container, start, float("inf"), period)
    if not index.times:
        raise media.MediaError("no_decodable_frames", "no video packet could be read")
    start = index.times[0]
    measured = index.times[-1] + period - start
    if duration and measured < duration - 2 * period:
        fallbacks.append("truncated")
    return start, measured, index


def detect_faces(rgb: list[np.ndarray], detector, options: ExtractOptions) -> list[list[Face]]:
    """Faces per frame (working-resolution pixels), largest first.

    The detector (a fixed ~2.5 ms per call whatever the frame size) runs on every ``detect_stride``-th frame and
    the last. Between two detected frames whose faces agree (same count, each pair IoU >= 0.6) the boxes are
    interpolated linearly (score of the weaker end); where they disagree the middle frame is detected and both
    halves are checked again, down to single frames. Static talking heads cost T/stride calls; moving or
    appearing faces fall back to detecting every frame where needed.
    """
    n = len(rgb)
    found: dict[int, list[Face]] = {}

    def run(i: int) -> list[Face]:
        if i not in found:
            found[i] = _detect(rgb[i], detector, options.detect_side)
        return found[i]

    def refine(a: int, b: int) -> None:
        if b - a < 2:
            return
        fa, fb = run(a), run(b)
        if len(fa) == len(fb) and all(iou(x, y) >= AGREE_IOU for x, y in zip(fa, fb, strict=True)):
            for i in range(a + 1, b):
                w = (i - a) / (b - a)
                found[i] = [_lerp(x, y, w) for x, y in zip(fa, fb, strict=True)]
            return
        middle = (a + b) // 2
        run(middle)
        refine(a, middle)
        refine(middle, b)

    anchors = sorted(set(range(0, n, max(1, options.detect_stride))) | {n - 1})
    for a, b in zip(anchors, anchors[1:], strict=False):
        refine(a, b)
    for i in anchors:
        run(i)
    return [found[i] for i in range(n)]


def _detect(frame: np.ndarray, detector, side: int) -> list[Face]:
    height, width = frame.shape[:2]
    scale = min(1.0, side / max(height, width))
    if scale < 1.0:
        import cv2

        small = cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    else:
        small = frame
    faces = detector.detect(small)
    if scale == 1.0:
        return faces
    return [Face(f.x0 / scale, f.y0 / scale, f.x1 / scale, f.y1 / scale, f.score,
                 tuple((x / scale, y / scale) for x, y in f.keypoints)) for f in faces]


def _lerp(a: Face, b: Face, w: float) -> Face:
    mix = lambda u, v: (1 - w) * u + w * v  # noqa: E731
    keypoints = tuple((mix(p[0], q[0]), mix(p[1], q[1])) for p, q in zip(a.keypoints, b.keypoints, strict=False))
    return Face(mix(a.x0, b.x0), mix(a.y0, b.y0), mix(a.x1, b.x1), mix(a.y1, b.y1), min(a.score, b.score), keypoints)


def _audio(container, info: media.MediaInfo, clip_start: float, clip_end: float, options: ExtractOptions,
           fallbacks: list[str]) -> tuple[np.ndarray, bool, dict]:
    samples = int(round((clip_end - clip_start) * options.audio_sample_rate))
    if not info.has_audio:
        fallbacks.append("no_audio")
        return np.zeros(samples, dtype=np.int16), False, {}
    try:
        audio, stats = media.decode_audio(container, clip_start, clip_end, options.audio_sample_rate)
    except media.MediaError:
        fallbacks.append("audio_unreadable")
        return np.zeros(samples, dtype=np.int16), False, {}
    if stats["missing_seconds"] > PARTIAL_AUDIO_SECONDS:
        fallbacks.append("partial_audio")
    return audio, True, stats
