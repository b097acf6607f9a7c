"""One video -> one ``Clip`` (face and mouth crops of runs of consecutive frames, mono audio, metadata). Shared by
``shards.pack`` and ``infer``.

    clip = extract(path, ExtractOptions(windows=4, window_frames=16, size=224), FaceDetector())

Timing (the project contract since format 2): the clip is the whole video capped at ``max_clip_seconds`` (centred). It
is read in W = ``windows`` windows of K = ``window_frames`` consecutive frames at a rate r: ``fps`` (the video is
resampled to it: frame k of a window is the one on screen at start + (k + 0.5) / r), or with ``native_rate`` the
video's own rate (every frame of a window then a distinct source frame, evenly spaced; meta ``fps`` records r). The
windows' centres spread evenly over the clip (window w centred at clip_start + (w + 0.5) * span / W, kept inside the
clip; they overlap when the clip is shorter than W windows). The audio covers exactly [clip_start, clip_end] at
16 kHz; ``window_starts`` (seconds from clip_start) cut each window's audio exactly to its frames: window w's frame
k owns the audio [start_w + k / r, start_w + (k + 1) / r].

Faces: BlazeFace on the sampled frames (shrunk by a whole factor to ``detect_side`` or less; once per window with
the faces followed to its ends by phase correlation, or every ``detect_stride``-th frame where that fails, boxes and
keypoints interpolated in between where they agree, see ``detect_faces``), linked into tracks, the most persistent
track kept (``shards.faces.track_main_face``), its gaps filled from the nearest detection and its boxes and keypoints
smoothed over time within each window; each frame is cropped square around that face with
``margin`` and resized to ``size``, and around the mouth keypoint (a square of ``mouth_scale`` x the face box's
width) resized to ``mouth_size``. Frames larger than ``max_frame_side`` are downscaled while converting to RGB (a
4K source is cropped from its 1920-wide version), which bounds memory.

Failures raise ``ExtractionError`` with one of ``FAILURE_REASONS``; usable inputs with a problem are packed with
``fallbacks`` from ``FALLBACKS`` listed in the metadata:

  no_face          no face in any sampled frame: centre square crop, ``has_face`` false, boxes null
  no_audio         no audio stream: silent audio, ``has_audio`` false
  audio_unreadable an audio stream that does not decode in the clip span: silent audio, ``has_audio`` false
  partial_audio    the audio stream covers less of the span than the video (more than 0.25 s missing; zeros)
  truncated        the file ends before its header says: the clip is taken from what is really there
  repeated_frames  a window has fewer distinct frames than K (short or low-frame-rate videos): frames repeat
  decode_errors    some packets failed to decode; the nearest decoded frame stands in
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from shards import media
from shards.faces import (
    Face,
    center_box,
    crop_square,
    fill_gaps,
    follow_face,
    iou,
    mouth_box,
    smooth_track,
    square_box,
    track_main_face,
)
from shards.layout import FORMAT_VERSION

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
FORMAT = FORMAT_VERSION  # the sample format (shards.format): windows of consecutive frames with mouth crops
FRAME_FIELDS = ("times", "frame_times", "boxes", "crop_boxes", "mouth_boxes", "scores")  # meta lists, one per frame
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

    windows: int = 4  # W runs of consecutive frames spread over the clip
    window_frames: int = 16  # K consecutive frames per window
    fps: float = 25.0  # the rate the windows' frames are taken at (the video is resampled to it)
    native_rate: bool = False  # take each video's frames at its own rate (from fps / 2 to 120) instead of fps
    size: int = 224  # face crop side in pixels
    mouth_size: int = 64  # mouth crop side in pixels
    margin: float = 0.3  # added to each side of the face box, as a fraction of its side
    mouth_scale: float = 0.5  # mouth crop side as a fraction of the face box's width
    max_clip_seconds: float = 10.0
    jpeg_quality: int = 95
    audio_sample_rate: int = AUDIO_SAMPLE_RATE
    audio_shift: float = 0.0  # seconds the audio is taken later than the frames (0: in sync; evaluations only)
    max_frame_side: int = 1920  # larger frames are downscaled while decoding (bounds memory, 4K -> 1080p)
    detect_side: int = 640  # frames are shrunk by a whole factor to at most this longer side for detection
    follow: bool = True  # detect at each window's middle frame and follow the faces to its ends (detect_faces)
    detect_stride: int = 4  # else (or where following fails) every k-th frame; between, where neighbours disagree
    smooth_frames: int = 5  # boxes and keypoints are averaged over this many consecutive frames of a window
    decode_threads: int = 1  # FFmpeg threads per video (1 when packing with one process per core)

    def __post_init__(self) -> None:
        problems = []
        if self.windows < 1 or self.window_frames < 1:
            problems.append(f"windows={self.windows}, window_frames={self.window_frames} (need >= 1)")
        if not 1 <= self.fps <= 120:
            problems.append(f"fps={self.fps} (need 1..120)")
        if not 16 <= self.size <= 1024 or not 8 <= self.mouth_size <= 512:
            problems.append(f"size={self.size}, mouth_size={self.mouth_size} (need 16..1024 and 8..512)")
        if not 0 <= self.margin <= 2 or not 0.1 <= self.mouth_scale <= 2:
            problems.append(f"margin={self.margin}, mouth_scale={self.mouth_scale} (need 0..2 and 0.1..2)")
        if self.max_clip_seconds <= 0:
            problems.append(f"max_clip_seconds={self.max_clip_seconds} (need > 0)")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"jpeg_quality={self.jpeg_quality} (need 1..100)")
        if self.detect_stride < 1 or self.detect_side < 64 or self.max_frame_side < 64 or self.smooth_frames < 1:
            problems.append("detect_stride >= 1, detect_side >= 64, max_frame_side >= 64 and smooth_frames >= 1 are "
                            "required")
        if problems:
            raise ValueError("invalid ExtractOptions: " + "; ".join(problems))

    @property
    def frames(self) -> int:
        """T = W x K frames per clip."""
        return self.windows * self.window_frames

    def frame_rate(self, source_fps: float | None) -> float:
        """The rate a video's windows are read at: its own with ``native_rate`` when it states one from ``fps`` / 2
        to 120 (slower videos would repeat frames either way), else ``fps``."""
        if self.native_rate and source_fps and self.fps / 2 <= source_fps <= 120:
            return float(source_fps)
        return self.fps

    def content(self) -> dict:
        """The options that change what a clip contains (recorded with packed shards and compared on resume).
        ``native_rate`` is recorded only when set, so folders packed before it existed still resume."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "decode_threads" and not (f.name == "native_rate" and not self.native_rate)}


@dataclass
class Clip:
    """frames: uint8 [T, S, S, 3] RGB face crops; mouths: uint8 [T, M, M, 3] RGB mouth crops (T = W x K, window by
    window); audio: int16 [N] mono at meta["audio_sample_rate"] covering the clip; meta: the sample json (without the
    label)."""

    frames: np.ndarray
    mouths: np.ndarray
    audio: np.ndarray
    meta: dict = field(default_factory=dict)


def clip_span(start: float, duration: float, max_seconds: float) -> tuple[float, float]:
    span = min(duration, max_seconds)
    clip_start = start + (duration - span) / 2
    return clip_start, clip_start + span


def window_starts(clip_start: float, clip_end: float, options: ExtractOptions, rate: float) -> list[float]:
    """Start time of each window of frames at ``rate``: centres spread evenly over the clip, each window kept
    inside it when it fits."""
    span, length = clip_end - clip_start, options.window_frames / rate
    latest = max(clip_start, clip_end - length)
    return [min(max(clip_start + (w + 0.5) * span / options.windows - length / 2, clip_start), latest)
            for w in range(options.windows)]


def frame_times(starts: list[float], options: ExtractOptions, rate: float) -> list[float]:
    """The wanted time of every frame, window by window: start + (k + 0.5) / rate."""
    return [start + (k + 0.5) / rate for start in starts for k in range(options.window_frames)]


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
    rgb, clip_start, clip_end = decoded.rgb, decoded.clip_start, decoded.clip_end

    height, width = rgb[0].shape[:2]
    coded = (info.width or width, info.height or height)
    rotated = (width > height) != (coded[0] > coded[1]) and coded[0] != coded[1]
    source_w, source_h = (coded[1], coded[0]) if rotated else coded
    to_source = source_w / width  # working-resolution pixels -> source pixels

    detections = detect_faces(rgb, detector, options)
    track = fill_gaps(track_main_face(detections))
    has_face = any(f is not None for f in track)
    smoothed = [face for w in range(options.windows) for face in smooth_track(
        track[w * options.window_frames:(w + 1) * options.window_frames], options.smooth_frames)]
    crops, mouths, boxes, crop_boxes, mouth_boxes, scores = [], [], [], [], [], []
    for t, frame in enumerate(rgb):
        face = smoothed[t]
        box = square_box(face, width, height, options.margin) if face is not None else center_box(width, height)
        lips = mouth_box(face, options.mouth_scale) if face is not None else _lower_centre(box)
        crops.append(crop_square(frame, box, options.size))
        mouths.append(crop_square(frame, lips, options.mouth_size))
        crop_boxes.append([round(v * to_source, 1) for v in box])
        mouth_boxes.append([round(v * to_source, 1) for v in lips])
        boxes.append([round(v * to_source, 1) for v in face.box()] if face is not None else None)
        detected = track[t] is not None and any(track[t] is d for d in detections[t])
        scores.append(round(track[t].score, 4) if detected else None)
    if not has_face:
        fallbacks.append("no_face")

    audio, has_audio, audio_stats = _audio(container, info, clip_start, clip_end, options, fallbacks)
    meta = {
        "format": FORMAT,
        "video_name": path.name,
        "windows": options.windows,
        "window_frames": options.window_frames,
        "frames": options.frames,
        "fps": decoded.rate,
        "native_rate": options.native_rate,
        "size": options.size,
        "mouth_size": options.mouth_size,
        "margin": options.margin,
        "mouth_scale": options.mouth_scale,
        "jpeg_quality": options.jpeg_quality,
        "clip_start": round(clip_start, 6),
        "clip_end": round(clip_end, 6),
        "window_starts": [round(t - clip_start, 6) for t in decoded.window_starts],  # seconds from clip_start
        "times": [round(t, 6) for t in decoded.times],
        "frame_times": [round(t, 6) for t in decoded.frame_times],
        "boxes": boxes,  # the face box each crop is centred on (source pixels); null when no face at all
        "crop_boxes": crop_boxes,  # the square actually cropped (may overhang the frame: black padding)
        "mouth_boxes": mouth_boxes,  # the square the mouth crop was cut from (source pixels)
        "scores": scores,  # detector score; null where the box was filled in from a neighbouring frame
        "fallbacks": fallbacks,
        "has_face": has_face,
        "has_audio": has_audio,
        "audio_sample_rate": options.audio_sample_rate,
        "audio_shift": options.audio_shift,
        "source": {
            "duration": round(decoded.duration, 6),
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
    return Clip(frames=np.stack(crops), mouths=np.stack(mouths), audio=audio, meta=meta)


def _lower_centre(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Without a face: the middle of the lower half of the frame's centre crop stands in for the mouth."""
    x0, y0, x1, y1 = box
    side = max(2, (x1 - x0) // 3)
    cx, cy = (x0 + x1) // 2, y0 + 3 * (y1 - y0) // 4
    return cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side


@dataclass
class DecodedFrames:
    rgb: list[np.ndarray]  # W x K frames at working resolution (display orientation), window by window
    times: list[float]  # the wanted times
    frame_times: list[float]  # timestamps of the frames actually shown then
    window_starts: list[float]
    clip_start: float
    clip_end: float
    duration: float
    stats: dict
    rate: float  # frames per second the windows were read at (ExtractOptions.frame_rate)


def load_frames(container, info: media.MediaInfo, options: ExtractOptions, fallbacks: list[str]) -> DecodedFrames:
    """The clip's W x K frames (the decode half of ``extract``; python -m scripts.bench_pack times it alone)."""
    period = 1.0 / info.fps if info.fps else 0.04
    start, duration, index = _usable_duration(container, info, options, period, fallbacks)
    clip_start, clip_end = clip_span(start, duration, options.max_clip_seconds)
    rate = options.frame_rate(info.fps)
    starts = window_starts(clip_start, clip_end, options, rate)
    times = frame_times(starts, options, rate)
    order = sorted(range(len(times)), key=lambda i: times[i])  # overlapping windows (short clips) interleave
    rgb_sorted, actual_sorted, stats = media.decode_frames(container, [times[i] for i in order],
                                                           max_side=options.max_frame_side,
                                                           threads=options.decode_threads, index=index)
    rgb, actual = [None] * len(times), [0.0] * len(times)
    for position, i in enumerate(order):
        rgb[i], actual[i] = rgb_sorted[position], actual_sorted[position]
    if any(len(set(actual[w * options.window_frames:(w + 1) * options.window_frames])) < options.window_frames
           for w in range(options.windows)):
        fallbacks.append("repeated_frames")
    if stats["errors"] or stats["missing"]:
        fallbacks.append("decode_errors")
    return DecodedFrames(rgb, times, actual, starts, clip_start, clip_end, duration, stats, rate)


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

    With ``follow`` (the default) the detector (~2.5 ms a call) runs once per window, on its middle frame, and each
    face found there is followed to the window's first and last frames by phase correlation (``follow_face``,
    ~0.2 ms). Otherwise, and wherever following is unsure or the middle frame has no face, it runs on every
    ``detect_stride``-th frame of the window and its last. Between two known frames of a window whose faces agree
    (same count, each pair IoU >= 0.6) the boxes and keypoints are interpolated linearly (score of the weaker end);
    where they disagree the middle frame is detected and both halves are checked again, down to single frames. A
    talking head costs one call per window; moving or appearing faces fall back to detecting where needed.
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

    def follow(first: int, last: int) -> bool:
        """Detect the window's middle frame and follow its faces to both ends; False when that is not enough."""
        middle = (first + last) // 2
        faces = run(middle)
        if not faces:
            return False
        ends = sorted({first, last} - {middle} - set(found))
        moved = [follow_face(rgb[middle], [rgb[end] for end in ends], face) for face in faces]  # [face][end]
        if any(face is None for per_end in moved for face in per_end):
            return False
        for e, end in enumerate(ends):
            found[end] = [per_end[e] for per_end in moved]
        refine(first, middle)
        refine(middle, last)
        return True

    k = options.window_frames if n == options.frames else n  # interpolate within a window, never across two
    for first in range(0, n, k):
        last = min(n, first + k) - 1
        if options.follow and follow(first, last):
            continue
        anchors = sorted(set(range(first, last + 1, max(1, options.detect_stride))) | {last})
        for a, b in zip(anchors, anchors[1:], strict=False):
            refine(a, b)
        for i in anchors:
            run(i)
    return [found[i] for i in range(n)]


def _detect(frame: np.ndarray, detector, side: int) -> list[Face]:
    """Faces in ``frame`` (its pixels), detected on the frame shrunk by the smallest whole factor k that brings its
    longer side to ``side`` or less: a whole-factor INTER_AREA is OpenCV's fast path (0.2 ms for 854 x 480 -> 427
    x 240, against 2-3 ms to 640 x 360), and the detector resizes to its 192-px input anyway. Up to k - 1 pixel
    rows and columns at the bottom and right are left out so that k divides the sides."""
    height, width = frame.shape[:2]
    k = -(-max(height, width) // side)
    if k <= 1:
        return detector.detect(frame)
    import cv2

    h, w = height // k, width // k
    small = cv2.resize(frame[:h * k, :w * k], (w, h), interpolation=cv2.INTER_AREA)
    return [Face(f.x0 * k, f.y0 * k, f.x1 * k, f.y1 * k, f.score, tuple((x * k, y * k) for x, y in f.keypoints))
            for f in detector.detect(small)]


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
    shift = options.audio_shift  # evaluations pair the frames with audio from elsewhere in the video
    try:
        audio, stats = media.decode_audio(container, clip_start + shift, clip_end + shift,
                                          options.audio_sample_rate)
    except media.MediaError:
        fallbacks.append("audio_unreadable")
        return np.zeros(samples, dtype=np.int16), False, {}
    if stats["missing_seconds"] > PARTIAL_AUDIO_SECONDS:
        fallbacks.append("partial_audio")
    return audio, True, stats
