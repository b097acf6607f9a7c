"""The project's one face detector (MediaPipe BlazeFace full-range), face tracking and square cropping.

Why BlazeFace full-range: about 4 ms per 640x480 frame on one CPU core, finds small faces and several faces,
Apache-2.0, and a 676 KB model (see ../shared/FACTS.md for the comparison). The model file comes from the
asset cache (``scripts/setup_assets.py``); nothing is downloaded at run time.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards.assets import face_model_path

_FORKED_HANDLES: list = []  # detectors inherited through fork: never closed or freed in the child
# MediaPipe's TFLite runtime opens these system libraries when the detector is created (Debian packages).
SYSTEM_LIBRARIES = {"libEGL.so.1": "libegl1", "libGLESv2.so.2": "libgles2"}


class DetectorUnavailable(RuntimeError):
    """The face detector cannot run in this environment; the message names the missing piece and the fix."""


@dataclass(frozen=True)
class Face:
    """One detection in pixel coordinates of the frame it was found in."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float
    # six (x, y) pixel points: right eye, left eye, nose tip, mouth centre, right ear, left ear
    keypoints: tuple[tuple[float, float], ...] = ()

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def box(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]

    def moved(self, dx: float, dy: float) -> Face:
        return Face(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy, self.score,
                    tuple((x + dx, y + dy) for x, y in self.keypoints))


FOLLOW_SIDE = 64  # follow_face compares the face region at this many pixels a side
FOLLOW_MIN_RESPONSE = 0.2  # phase-correlation peaks below this are not trusted (occlusion, a cut, large motion)
FOLLOW_MAX_SHIFT = 0.25  # nor shifts beyond this fraction of the face box


def follow_face(source: np.ndarray, targets: list[np.ndarray], face: Face) -> list[Face | None]:
    """``face`` (found in frame ``source``) moved to where it is in each of ``targets``; None where unsure.

    The face box's region of the frames, grey and at ``FOLLOW_SIDE`` pixels, is phase-correlated (a Hann-windowed
    FFT: ~0.2 ms a target, against ~4 ms for a detection); the peak is the face's translation. Zoom and rotation
    are not followed (the windows are a fraction of a second long); a weak peak or a large shift gives None so
    that the caller detects instead."""
    import cv2

    height, width = source.shape[:2]
    x0, y0 = max(0, int(face.x0)), max(0, int(face.y0))
    x1, y1 = min(width, int(np.ceil(face.x1))), min(height, int(np.ceil(face.y1)))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return [None] * len(targets)

    def patch(frame: np.ndarray) -> np.ndarray:  # grey first: the resize then handles one channel, not three
        grey = cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
        return cv2.resize(grey, (FOLLOW_SIDE, FOLLOW_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)

    reference = patch(source)
    moved: list[Face | None] = []
    for target in targets:
        (dx, dy), response = cv2.phaseCorrelate(reference, patch(target), _hann_window())
        dx, dy = dx * (x1 - x0) / FOLLOW_SIDE, dy * (y1 - y0) / FOLLOW_SIDE
        trusted = response >= FOLLOW_MIN_RESPONSE and max(abs(dx) / (x1 - x0), abs(dy) / (y1 - y0)) <= FOLLOW_MAX_SHIFT
        moved.append(face.moved(dx, dy) if trusted else None)
    return moved


@functools.cache
def _hann_window() -> np.ndarray:
    import cv2

    return cv2.createHanningWindow((FOLLOW_SIDE, FOLLOW_SIDE), cv2.CV_32F)


class FaceDetector:
    """BlazeFace full-range through the MediaPipe Tasks API. Deterministic on CPU; one per process."""

    def __init__(self, min_score: float = 0.5, max_side: int = 1280):
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        self._mp = mp
        self.max_side = max_side
        self._first_call = True
        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(face_model_path())),
            min_detection_confidence=min_score,
        )
        with _silenced_stderr():  # the TFLite runtime prints dozens of harmless lines per process
            self._detector = vision.FaceDetector.create_from_options(options)
        # mediapipe closes through a thread pool that is gone by the time atexit or __del__ run; threading's
        # exit hooks run in reverse order before that pool shuts down, so closing there is clean.
        threading._register_atexit(self.close)
        # A forked child (e.g. a DataLoader worker) inherits this object but not MediaPipe's threads: closing it
        # there waits forever at exit. The child keeps the dead handle aside instead and never closes it.
        os.register_at_fork(after_in_child=self._forget_in_child)

    def _forget_in_child(self) -> None:
        if self._detector is not None:
            _FORKED_HANDLES.append(self._detector)
            self._detector = None

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 [H, W, 3] frame, largest first."""
        height, width = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        image = rgb if scale == 1.0 else _resize(rgb, int(round(width * scale)), int(round(height * scale)))
        mp_image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
        # the first call logs a harmless memory-alignment warning per process; later calls are silent
        with _silenced_stderr() if self._first_call else contextlib.nullcontext():
            result = self._detector.detect(mp_image)
        self._first_call = False
        faces = []
        for detection in result.detections:
            box = detection.bounding_box
            keypoints = tuple((kp.x * width, kp.y * height) for kp in (detection.keypoints or []))
            faces.append(Face(
                x0=max(0.0, box.origin_x / scale), y0=max(0.0, box.origin_y / scale),
                x1=min(width, (box.origin_x + box.width) / scale), y1=min(height, (box.origin_y + box.height) / scale),
                score=float(detection.categories[0].score), keypoints=keypoints,
            ))
        return sorted(faces, key=lambda f: -f.area)

    def close(self) -> None:
        if self._detector is not None:
            with _silenced_stderr():  # the runtime logs each accelerator it destroys
                self._detector.close()
            self._detector = None


@contextlib.contextmanager
def _silenced_stderr() -> Iterator[None]:
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def iou(a: Face, b: Face) -> float:
    ix = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    iy = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = ix * iy
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def track_main_face(detections: list[list[Face]], min_iou: float = 0.2) -> list[Face | None]:
    """Link per-frame detections into tracks by IoU and return the main identity's face per frame.

    The main track is the most persistent one (most frames), ties broken by total area, so a passer-by or
    a face on a poster does not steal the clip. Frames where that track has no detection are ``None``.
    """
    tracks: list[dict[int, Face]] = []
    for t, faces in enumerate(detections):
        taken: set[int] = set()
        for face in faces:
            best, best_iou = None, min_iou
            for k, track in enumerate(tracks):
                if k in taken:
                    continue
                last = track[max(track)]
                overlap = iou(face, last)
                if overlap > best_iou:
                    best, best_iou = k, overlap
            if best is None:
                tracks.append({t: face})
                taken.add(len(tracks) - 1)
            else:
                tracks[best][t] = face
                taken.add(best)
    if not tracks:
        return [None] * len(detections)
    main = max(tracks, key=lambda tr: (len(tr), sum(f.area for f in tr.values())))
    return [main.get(t) for t in range(len(detections))]


def fill_gaps(track: list[Face | None]) -> list[Face | None]:
    """Replace missing frames by the nearest detected frame's box (earlier wins a tie)."""
    known = [t for t, f in enumerate(track) if f is not None]
    if not known:
        return track
    filled = []
    for t in range(len(track)):
        after = bisect.bisect_left(known, t)  # the first known frame at or after t
        if after == len(known) or (after > 0 and t - known[after - 1] <= known[after] - t):
            after -= 1
        filled.append(track[known[after]])
    return filled


def square_box(face: Face, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """A square box around the face, enlarged by ``margin`` (0.3 = 30% per side), in integer pixels, its side even
    (``crop_square``'s fast path for large faces halves it).

    It may extend past the frame; ``crop_square`` pads with black rather than shifting the face.
    """
    cx, cy = face.center
    side = max(face.x1 - face.x0, face.y1 - face.y0) * (1 + 2 * margin)
    s = _even(side)
    x0 = int(round(cx - s / 2))
    y0 = int(round(cy - s / 2))
    return x0, y0, x0 + s, y0 + s


def _even(side: float) -> int:
    return max(2, 2 * int(round(side / 2)))


def smooth_track(track: list[Face | None], frames: int) -> list[Face | None]:
    """Boxes and keypoints averaged over ``frames`` consecutive frames (centred; fewer at the ends): detector jitter
    would otherwise shake the crops, and the mouth crop most. Frames without a face stay None."""
    if frames <= 1 or not any(track):
        return list(track)
    half = frames // 2
    if all(track) and len({len(f.keypoints) for f in track}) == 1:  # the usual case: one array op per frame
        boxes = np.array([f.box() for f in track])
        points = np.array([f.keypoints for f in track]).reshape(len(track), -1, 2)
        spans = [slice(max(0, t - half), t + half + 1) for t in range(len(track))]
        return [Face(*boxes[span].mean(axis=0).tolist(), face.score,
                     tuple(map(tuple, points[span].mean(axis=0).tolist())) if face.keypoints else ())
                for face, span in zip(track, spans, strict=True)]
    out: list[Face | None] = []
    for t, face in enumerate(track):
        if face is None:
            out.append(face)
            continue
        near = [f for f in track[max(0, t - half):t + half + 1] if f is not None]
        box = np.mean([f.box() for f in near], axis=0)
        keypoints = ()
        if all(len(f.keypoints) == len(face.keypoints) for f in near) and face.keypoints:
            keypoints = tuple(map(tuple, np.mean([f.keypoints for f in near], axis=0).tolist()))
        out.append(Face(*box.tolist(), face.score, keypoints))
    return out


def mouth_box(face: Face, scale: float) -> tuple[int, int, int, int]:
    """A square around the mouth: centred on BlazeFace's mouth keypoint (or, without keypoints, at 78% of the box's
    height), ``scale`` x the face box's width on a side (even, as ``square_box``)."""
    if len(face.keypoints) > 3:
        cx, cy = face.keypoints[3]
    else:
        cx, cy = (face.x0 + face.x1) / 2, face.y0 + 0.78 * (face.y1 - face.y0)
    side = _even(scale * (face.x1 - face.x0))
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    return x0, y0, x0 + side, y0 + side


def center_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The fallback crop when no face is found: the largest centred square."""
    side = min(width, height)
    x0 = (width - side) // 2
    y0 = (height - side) // 2
    return x0, y0, x0 + side, y0 + side


def crop_square(rgb: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop ``box`` (may overhang the frame; padded with black) and resize to ``size`` x ``size``, close to
    one-step INTER_AREA (within 0.6 grey levels on average) at a fraction of its cost where its factor is not
    whole (OpenCV's slow general path): see ``shrink_square``."""
    x0, y0, x1, y1 = box
    if x1 - x0 != y1 - y0:
        raise ValueError(f"crop_square needs a square box, got {box}")
    return shrink_square(_region(rgb, box), size)


def shrink_square(region: np.ndarray, size: int) -> np.ndarray:
    """A square image resized to ``size``: bilinear when it is at most ``size`` (or up to twice it: bilinear to
    2 x ``size`` first); a whole-factor INTER_AREA when ``size`` divides its side; halved by a whole-factor
    INTER_AREA while it is 4x ``size`` or more and even-sided (``square_box`` and ``mouth_box`` make sides even);
    then bilinear to the largest whole multiple k x ``size`` below its side and a k x k INTER_AREA (a 406 -> 64 px
    face: 0.1 ms instead of 0.25-0.7; base's 412 -> 224: 0.47 ms instead of 0.74)."""
    import cv2

    side = region.shape[0]
    if side <= size:
        return cv2.resize(region, (size, size), interpolation=cv2.INTER_LINEAR)
    if side % size == 0:
        return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA)
    k = side // size
    if k >= 4 and side % 2 == 0:
        return shrink_square(cv2.resize(region, (side // 2, side // 2), interpolation=cv2.INTER_AREA), size)
    factor = max(2, k)
    region = cv2.resize(region, (factor * size, factor * size), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA)


def _region(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels of ``box``: a view when it lies inside the frame, else a copy padded with black."""
    x0, y0, x1, y1 = box
    height, width = rgb.shape[:2]
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        return rgb[y0:y1, x0:x1]
    region = np.zeros((y1 - y0, x1 - x0, 3), dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    if sx1 > sx0 and sy1 > sy0:
        region[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    return region


def reference_image() -> np.ndarray:
    """A known portrait (Grace Hopper, public domain) that ships inside matplotlib: RGB uint8."""
    import importlib.util

    import cv2

    spec = importlib.util.find_spec("matplotlib")  # located, not imported (importing builds a font cache)
    package = Path(spec.origin).parent if spec and spec.origin else Path("matplotlib-not-installed")
    path = package / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    bgr = cv2.imread(str(path))
    if bgr is None:
        raise DetectorUnavailable(f"the reference image {path} is missing or unreadable (matplotlib's sample data)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def self_check() -> Face:
    """Load the detector and find the face in ``reference_image()``; raise DetectorUnavailable naming the cause.

    Run once at start-up by the commands that extract faces, so a broken install (a missing system library, a
    corrupt model file) stops the run with one clear message instead of failing every video."""
    try:
        detector = FaceDetector()
    except FileNotFoundError as error:
        raise DetectorUnavailable(f"face detector model missing: {error}") from error
    except (OSError, RuntimeError, ImportError) as error:
        raise DetectorUnavailable(_describe_load_error(error)) from error
    try:
        faces = detector.detect(reference_image())
    finally:
        detector.close()
    if not faces:
        raise DetectorUnavailable(f"the face detector ({face_model_path()}) loaded but found no face in the "
                                  "reference portrait; the model file is wrong or corrupt: rerun "
                                  "scripts/setup_assets.py")
    return faces[0]


def _describe_load_error(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    missing = [lib for lib in SYSTEM_LIBRARIES if lib in text]
    if missing:
        packages = " ".join(SYSTEM_LIBRARIES[lib] for lib in missing)
        return (f"the face detector (MediaPipe) cannot load the system library {', '.join(missing)} ({text}); "
                f"install the Debian packages {' '.join(SYSTEM_LIBRARIES.values())} "
                f"(apt-get install {packages}), or use the project's Docker image")
    return f"the face detector (MediaPipe) failed to start: {text}"
