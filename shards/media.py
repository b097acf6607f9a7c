"""PyAV decoding for the shards pipeline: probe a file, decode chosen frames, decode an audio span.

Everything that touches FFmpeg is here, so extraction and the decode-only benchmark share one code path.

Frames (``decode_frames``): the caller asks for T presentation times; the frame shown at time t is the last
frame whose timestamp is <= t. A demux-only pass over the wanted span (no decoding, a few ms) indexes packet
timestamps and keyframes; the plan then decodes sequentially while the next wanted frame is in the same GOP
(or only a few frames ahead) and seeks to the keyframe before it otherwise. Dense targets (short clips, long
GOPs) therefore decode each frame at most once and sparse targets (long clips, short GOPs) skip whole GOPs.
Only wanted frames are converted to RGB, directly at a capped working resolution, so memory is bounded by
T x working-size frames whatever the source length or resolution.

Audio (``decode_audio``): only the requested span (plus a short pre-roll) is demuxed and decoded; channels are
averaged to mono and resampled with a polyphase filter (scipy) to the target rate, then cut to exactly
round(span x rate) samples (zero-padded where the stream has no data).
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# A seek flushes the decoder and re-reads from a keyframe; below this many skipped frames decoding on is cheaper.
MIN_FRAMES_SKIPPED_BY_SEEK = 4
AUDIO_PREROLL = 0.1  # s decoded before the span: AAC/Opus need the previous frame to reconstruct the first one
AUDIO_CONTEXT = 0.05  # s kept each side of the span while resampling, so the filter has no edge effects


class MediaError(Exception):
    """A file that cannot be used; ``reason`` is a stable code (see shards.extract for the list)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class MediaInfo:
    """What the container says (before decoding). Times are seconds on the streams' shared timeline."""

    has_video: bool
    has_audio: bool
    duration: float | None = None  # of the video stream (None: not stored in the file)
    start: float = 0.0  # timestamp of the first video frame
    fps: float | None = None
    width: int | None = None  # coded size; see ``rotation`` for the displayed orientation
    height: int | None = None
    video_codec: str | None = None
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    audio_codec: str | None = None
    format_name: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def open_media(path: str | Path) -> av.container.InputContainer:
    """Open a file for reading, or raise MediaError(missing_file | empty_file | unreadable)."""
    path = Path(path)
    if not path.exists():
        raise MediaError("missing_file", f"{path} does not exist")
    if not path.is_file():
        raise MediaError("unreadable", f"{path} is not a regular file")
    if path.stat().st_size == 0:
        raise MediaError("empty_file", f"{path} has 0 bytes")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as error:
        raise MediaError("unreadable", f"{path}: FFmpeg cannot open it ({error})") from error


def probe(container: av.container.InputContainer) -> MediaInfo:
    video = container.streams.video[0] if container.streams.video else None
    audio = container.streams.audio[0] if container.streams.audio else None
    info = MediaInfo(has_video=video is not None, has_audio=audio is not None,
                     format_name=getattr(container.format, "name", None))
    if video is not None:
        tb = video.time_base
        info.start = float(video.start_time * tb) if video.start_time is not None and tb else 0.0
        if video.duration is not None and tb:
            info.duration = float(video.duration * tb)
        elif container.duration is not None:
            info.duration = container.duration / av.time_base
        rate = video.average_rate or video.guessed_rate or video.base_rate
        info.fps = float(rate) if rate else None
        info.width, info.height = video.codec_context.width, video.codec_context.height
        info.video_codec = video.codec_context.name
    if audio is not None:
        info.audio_sample_rate = audio.codec_context.sample_rate or None
        info.audio_channels = audio.codec_context.channels or None
        info.audio_codec = audio.codec_context.name
    return info


# --- video ----------------------------------------------------------------------------------------------------
@dataclass
class PacketIndex:
    """Presentation times (s) of the video packets found in a span, sorted, and which are keyframes.

    ``pts`` keeps the raw timestamps for seeking; ``reached_end`` is True when demuxing hit the end of the file.
    """

    times: list[float]
    keyframe: list[bool]
    pts: list[int]
    reached_end: bool

    def last_at_or_before(self, t: float) -> int | None:
        i = bisect.bisect_right(self.times, t + 1e-6) - 1
        return i if i >= 0 else None

    def keyframe_before(self, i: int) -> int:
        while i > 0 and not self.keyframe[i]:
            i -= 1
        return i


def index_video(container: av.container.InputContainer, start: float, end: float,
                frame_period: float = 0.04) -> PacketIndex:
    """Demux (no decoding) the video packets from the keyframe before ``start`` until past ``end``."""
    stream = container.streams.video[0]
    tb = stream.time_base
    entries: list[tuple[float, bool, int]] = []
    reached_end = True
    _seek(container, stream, start)
    try:
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:  # the flush packet at EOF, or no timestamp
                continue
            t = float(packet.pts * tb)
            entries.append((t, bool(packet.is_keyframe), packet.pts))
            # past the end by more than B-frame reordering could hide: stop at the next keyframe or after 2 s
            if t > end + frame_period and (packet.is_keyframe or t > end + 2.0):
                reached_end = False
                break
    except av.FFmpegError:  # a truncated or damaged file: what was read so far is the index
        pass
    entries.sort()
    return PacketIndex([e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries], reached_end)


def plan_runs(index: PacketIndex, targets: list[float]) -> list[tuple[int | None, list[int]]]:
    """Group the (sorted) target indices into decode runs; each run starts with a seek to a keyframe pts
    (None: no index, decode from the start). Returns [(seek_pts, [target indices])]."""
    if not index.times:
        return [(None, list(range(len(targets))))]
    runs: list[tuple[int | None, list[int]]] = []
    position: int | None = None  # index entry of the last frame the decoder will have produced
    for i, t in enumerate(targets):
        chosen = index.last_at_or_before(t)
        chosen = 0 if chosen is None else chosen
        key = index.keyframe_before(chosen)
        if position is None or (key > position and key - position - 1 >= MIN_FRAMES_SKIPPED_BY_SEEK):
            runs.append((index.pts[key], [i]))
        else:
            runs[-1][1].append(i)
        position = max(chosen, position or 0)
    return runs


def decode_frames(container: av.container.InputContainer, times: list[float], *, max_side: int = 1920,
                  threads: int = 1, index: PacketIndex | None = None) -> tuple[list[np.ndarray], list[float], dict]:
    """RGB uint8 frames shown at each of ``times`` (sorted), at most ``max_side`` pixels on the longer side
    (after applying the stream's rotation). Returns (frames, actual frame times, stats).

    Raises MediaError(no_decodable_frames) when not one frame decodes.
    """
    stream = container.streams.video[0]
    stream.codec_context.thread_count = max(1, threads)
    stream.codec_context.thread_type = "SLICE" if threads <= 1 else "AUTO"
    if index is None:
        index = index_video(container, times[0], times[-1])
    runs = plan_runs(index, times)
    chosen_times = [index.times[j] if (j := index.last_at_or_before(t)) is not None else None for t in times]
    frames: list[np.ndarray | None] = [None] * len(times)
    frame_times: list[float] = [math.nan] * len(times)
    stats = {"decoded": 0, "seeks": 0, "errors": 0}
    converted: list = [None, None]  # (av frame, rgb) of the last conversion: consecutive targets may share a frame

    def take(i: int, frame: av.VideoFrame, t: float) -> None:
        if converted[0] is not frame:  # identity, not id(): a freed frame's id can be reused by a new one
            converted[:] = [frame, _to_rgb(frame, max_side)]
        frames[i], frame_times[i] = converted[1], t

    # packets of wanted frames decode normally; for the others the decoder may drop non-reference frames, which
    # nothing else needs (typically the B-frames: half the work of a usual H.264 stream)
    wanted_pts = {index.pts[j] for t in times if (j := index.last_at_or_before(t)) is not None}
    last_good: tuple[av.VideoFrame, float] | None = None
    for seek_pts, members in runs:
        if seek_pts is not None:
            container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
            stats["seeks"] += 1
        pending = list(members)
        previous: tuple[av.VideoFrame, float] | None = None
        for frame, t in _frames(container, stream, stats, wanted_pts):
            while pending:
                i = pending[0]
                exact = chosen_times[i] is not None and abs(t - chosen_times[i]) < 1e-6
                if exact:
                    take(i, frame, t)
                elif t > times[i] + 1e-6:  # this frame is already later: the previous one was on screen at t_i
                    before = previous or (frame, t)
                    take(i, *before)
                else:
                    break
                pending.pop(0)
            previous = last_good = (frame, t)
            if not pending:
                break
        for i in pending:  # end of stream: the last frame stays on screen
            if previous is not None:
                take(i, *previous)
    missing = [i for i, f in enumerate(frames) if f is None]
    if len(missing) == len(frames):
        if last_good is None:
            raise MediaError("no_decodable_frames", "the video stream has no frame that decodes")
        for i in missing:
            take(i, *last_good)
        missing = []
    for i in missing:  # a damaged stretch: reuse the nearest decoded target
        nearest = min((j for j, f in enumerate(frames) if f is not None), key=lambda j: (abs(j - i), j))
        frames[i], frame_times[i] = frames[nearest], frame_times[nearest]
    stats["missing"] = len(missing)
    return frames, frame_times, stats  # type: ignore[return-value]


def _frames(container: av.container.InputContainer, stream, stats: dict, wanted_pts: set[int] | None = None):
    """(frame, time) in presentation order; damaged packets are skipped and counted, never raised. With
    ``wanted_pts``, non-reference frames whose packet pts is not in it are not decoded at all."""
    tb = stream.time_base
    counter = 0
    context = stream.codec_context
    for packet in container.demux(stream):
        if wanted_pts:
            context.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in wanted_pts else "NONREF"
        try:
            decoded = packet.decode()
        except av.FFmpegError:
            stats["errors"] += 1
            continue
        for frame in decoded:
            stats["decoded"] += 1
            counter += 1
            if frame.pts is not None and tb:
                t = float(frame.pts * tb)
            else:
                rate = stream.average_rate or stream.guessed_rate or Fraction(25)
                t = counter / float(rate)
            yield frame, t


def _seek(container: av.container.InputContainer, stream, t: float) -> None:
    tb = stream.time_base
    target = int(math.floor(max(0.0, t) / tb)) if tb else 0
    try:
        container.seek(target, stream=stream, backward=True, any_frame=False)
    except av.FFmpegError:
        container.seek(0, stream=stream, backward=True, any_frame=False)


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) scaled so the longer side is at most ``max_side``; even numbers, aspect kept."""
    scale = min(1.0, max_side / max(width, height))
    if scale == 1.0:
        return width, height
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def _to_rgb(frame: av.VideoFrame, max_side: int) -> np.ndarray:
    width, height = output_size(frame.width, frame.height, max_side)
    if (width, height) == (frame.width, frame.height) and _plain_yuv420p(frame):
        # the common case: OpenCV's I420 -> RGB (BT.601, video range, like swscale's default) is ~4x faster
        rgb = _cv2().cvtColor(frame.to_ndarray(format="yuv420p"), _cv2().COLOR_YUV2RGB_I420)
    else:
        rgb = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
    try:
        rotation = int(round(frame.rotation / 90)) % 4
    except (AttributeError, TypeError, ValueError):
        rotation = 0
    if rotation:  # the display matrix rotates counter-clockwise by rotation x 90 degrees
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation))
    return rgb


def _plain_yuv420p(frame: av.VideoFrame) -> bool:
    return (frame.format.name == "yuv420p" and frame.width % 2 == 0 and frame.height % 2 == 0
            and frame.color_range != 2)  # 2 = full ("JPEG") range: leave it to swscale


def _cv2():
    import cv2

    return cv2


# --- audio ----------------------------------------------------------------------------------------------------
def decode_audio(container: av.container.InputContainer, start: float, end: float,
                 rate: int = 16000) -> tuple[np.ndarray, dict]:
    """Mono int16 at ``rate`` covering exactly [start, end] (round((end - start) x rate) samples).

    Returns (samples, stats) where stats has the source sample rate and how much of the span had no data.
    Raises MediaError(audio_unreadable) when the stream exists but yields nothing in the span.
    """
    from scipy.signal import resample_poly

    stream = container.streams.audio[0]
    source_rate = stream.codec_context.sample_rate
    if not source_rate:
        raise MediaError("audio_unreadable", "the audio stream has no sample rate")
    begin = start - AUDIO_CONTEXT
    length = int(round((end + AUDIO_CONTEXT - begin) * source_rate))
    buffer = np.zeros(length, dtype=np.float32)
    covered = np.zeros(length, dtype=bool)
    _seek(container, stream, begin - AUDIO_PREROLL)
    time_base = float(stream.time_base) if stream.time_base else None
    next_t: float | None = None
    errors = 0
    run: list[av.AudioFrame] = []  # frames that follow each other without a gap: converted in one go
    run_start = run_end = 0

    def flush() -> None:
        if run:
            place(_mono(run), run_start)
            run.clear()

    def place(mono: np.ndarray, offset: int) -> None:
        lo, hi = max(0, offset), min(length, offset + mono.size)
        if hi > lo:
            buffer[lo:hi] = mono[lo - offset:hi - offset]
            covered[lo:hi] = True

    try:
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.FFmpegError:
                errors += 1
                continue
            t = None
            for frame in decoded:
                t = frame.pts * time_base if frame.pts is not None and time_base else (next_t or 0.0)
                next_t = t + frame.samples / frame.sample_rate
                offset = int(round((t - begin) * source_rate))
                if frame.sample_rate != source_rate:  # a mid-stream rate change: keep the span's timeline
                    flush()
                    place(resample_poly(_mono(frame), source_rate, frame.sample_rate).astype(np.float32), offset)
                    continue
                if run and (offset != run_end or frame.format.name != run[0].format.name
                            or frame.layout.name != run[0].layout.name):
                    flush()
                if not run:
                    run_start = offset
                run.append(frame)
                run_end = offset + frame.samples
            if t is not None and t > end + AUDIO_CONTEXT:
                break
    except av.FFmpegError:
        errors += 1
    flush()
    if not covered.any():
        raise MediaError("audio_unreadable", f"no decodable audio in [{start:.3f}, {end:.3f}] s")
    g = math.gcd(rate, source_rate)
    up, down = rate // g, source_rate // g
    resampled = resample_poly(buffer, up, down, window=_resample_filter(up, down)) if source_rate != rate else buffer
    first = int(round(AUDIO_CONTEXT * rate))
    wanted = int(round((end - start) * rate))
    out = np.zeros(wanted, dtype=np.float32)
    piece = resampled[first:first + wanted]
    out[:piece.size] = piece
    pcm = np.clip(np.round(out * 32767.0), -32768, 32767).astype(np.int16)
    inner = covered[int(round(AUDIO_CONTEXT * source_rate)):][: int(round((end - start) * source_rate))]
    missing = float((~inner).sum()) / source_rate if inner.size else end - start
    return pcm, {"source_rate": source_rate, "missing_seconds": round(missing, 4), "errors": errors}


@functools.cache
def _resample_filter(up: int, down: int) -> np.ndarray:
    """The low-pass filter ``scipy.signal.resample_poly`` designs for these rates by default (Kaiser, beta 5,
    20 x max(up, down) + 1 taps), as float32 like the samples: designed once per process, not per video (~0.5 ms)."""
    from scipy.signal import firwin

    half = 10 * max(up, down)
    return firwin(2 * half + 1, 1.0 / max(up, down), window=("kaiser", 5.0)).astype(np.float32)


_PLANAR_DTYPES = {"fltp": np.float32, "dblp": np.float64, "s16p": np.int16, "s32p": np.int32, "u8p": np.uint8}


def _mono(frames: av.AudioFrame | list[av.AudioFrame]) -> np.ndarray:
    """float32 mono samples of one audio frame (or of consecutive frames of one format and layout, joined),
    whatever the sample format and layout."""
    frames = [frames] if isinstance(frames, av.AudioFrame) else frames
    dtype = _PLANAR_DTYPES.get(frames[0].format.name)
    if dtype is not None:  # one plane per channel, read in place (to_ndarray stacks them: ~4x the cost a frame)
        array = [np.concatenate([np.frombuffer(f.planes[c], dtype, f.samples) for f in frames])
                 for c in range(len(frames[0].planes))]
    else:
        array = np.concatenate([_packed(f) for f in frames], axis=-1)
    channels = [_as_float(channel) for channel in array]
    if len(channels) == 1:
        return channels[0]
    mixed = channels[0] + channels[1]  # the mean over channels, added in order as np.mean would (same bits)
    for channel in channels[2:]:
        mixed += channel
    return mixed / len(channels)


def _packed(frame: av.AudioFrame) -> np.ndarray:
    """[channels, samples] of a frame in a packed (interleaved) sample format."""
    array = frame.to_ndarray()
    if array.shape[0] == 1 and not frame.format.is_planar:  # packed: [1, samples x channels]
        channels = len(frame.layout.channels)
        if channels > 1:
            array = array.reshape(-1, channels).T
    return array


def _as_float(samples: np.ndarray) -> np.ndarray:
    """Samples of any PCM sample type as float32 in [-1, 1]."""
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    if samples.dtype == np.int32:
        return samples.astype(np.float32) / 2147483648.0
    if samples.dtype == np.uint8:
        return (samples.astype(np.float32) - 128.0) / 128.0
    return samples.astype(np.float32, copy=False)
