"""The project's one face detector (MediaPipe's BlazeFace full-range model, run by LiteRT), face tracking and square
cropping.

Why BlazeFace full-range: about 2-3 ms a frame on one CPU core, finds small faces and several faces, Apache-2.0, and
a 676 KB model (see ../shared/FACTS.md for the comparison). The model file comes from the asset cache
(``scripts/setup_assets.py``); nothing is downloaded at run time.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards.assets import face_model_path


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
    FFT: ~0.2 ms a target, against ~2.5 ms for a detection); the peak is the face's translation. Zoom and rotation
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
    """BlazeFace full-range (MediaPipe's model file) run by the LiteRT interpreter on one CPU thread, with the
    pre- and post-processing of MediaPipe's face-detection graph: the frame letterboxed to the model's square input
    (bilinear, black borders, pixels to [-1, 1]), one anchor per 4-px cell, sigmoid scores, weighted non-maximum
    suppression at IoU 0.3. Boxes come out in whole pixels as MediaPipe's Tasks API reports them (origin and size
    truncated), so the boxes are MediaPipe's own; this saves its graph's ~1 ms a call. Deterministic; no threads, so
    forked processes may use or drop it."""

    def __init__(self, min_score: float = 0.5, max_side: int = 1280):
        from ai_edge_litert.interpreter import Interpreter

        self.max_side = max_side
        self._min_logit = float(np.log(min_score / (1 - min_score)))
        with _silenced_stderr():  # the runtime announces its CPU delegate on stderr
            self._interpreter = Interpreter(model_path=str(face_model_path()), num_threads=1)
            self._interpreter.allocate_tensors()
        (tensor_in,) = self._interpreter.get_input_details()
        self._input, self.side = tensor_in["index"], int(tensor_in["shape"][1])
        details = self._interpreter.get_output_details()
        outputs = {int(o["shape"][-1]): o["index"] for o in details}
        self._regressors, self._scores = outputs.get(4 + 2 * KEYPOINTS), outputs.get(1)
        self._anchors = _anchor_centres(self.side)
        shapes = [tuple(int(n) for n in o["shape"]) for o in details]
        if self._regressors is None or self._scores is None or (1, len(self._anchors), 1) not in shapes:
            raise RuntimeError(f"{face_model_path()} is not BlazeFace full-range (outputs {shapes}); rerun "
                               "scripts/setup_assets.py")

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 [H, W, 3] frame, largest first."""
        if self._interpreter is None:
            raise RuntimeError("FaceDetector.detect after close()")
        height, width = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        image = rgb if scale == 1.0 else _resize(rgb, int(round(width * scale)), int(round(height * scale)))
        image_height, image_width = image.shape[:2]
        fit = self.side / max(image_height, image_width)
        pad_x, pad_y = (self.side - image_width * fit) / 2, (self.side - image_height * fit) / 2
        self._interpreter.set_tensor(self._input, _letterbox(image, self.side, fit, pad_x, pad_y))
        self._interpreter.invoke()
        logits = self._interpreter.get_tensor(self._scores)[0, :, 0]
        keep = np.flatnonzero(logits >= self._min_logit)
        if keep.size == 0:
            return []
        raw = self._interpreter.get_tensor(self._regressors)[0, keep].astype(np.float64) / self.side
        centres = self._anchors[keep]
        middle, size = raw[:, :2] + centres, raw[:, 2:4]
        boxes = np.concatenate([middle - size / 2, middle + size / 2], axis=1)  # x0, y0, x1, y1 of the input square
        keypoints = raw[:, 4:].reshape(-1, KEYPOINTS, 2) + centres[:, None, :]
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits[keep].astype(np.float64), -100.0, 100.0)))
        # from the model's square back to the image: the letterbox undone, as fractions of the image's sides
        shift, extent = np.array([pad_x, pad_y]) / self.side, np.array([image_width, image_height]) * fit / self.side
        faces = []
        for box, points, score in _weighted_nms(boxes, keypoints, scores, NMS_IOU):
            (rx0, ry0), (rx1, ry1) = (box[:2] - shift) / extent, (box[2:] - shift) / extent
            x0, y0 = int(rx0 * image_width), int(ry0 * image_height)  # whole pixels, truncated as MediaPipe does
            x1, y1 = x0 + int((rx1 - rx0) * image_width), y0 + int((ry1 - ry0) * image_height)
            relative = (points - shift) / extent
            faces.append(Face(
                x0=max(0.0, x0 / scale), y0=max(0.0, y0 / scale), x1=min(width, x1 / scale), y1=min(height, y1 / scale),
                score=float(score), keypoints=tuple((float(x * width), float(y * height)) for x, y in relative),
            ))
        return sorted(faces, key=lambda f: -f.area)

    def close(self) -> None:
        self._interpreter = None


KEYPOINTS = 6  # BlazeFace's: right eye, left eye, nose tip, mouth centre, right ear, left ear
NMS_IOU = 0.3  # MediaPipe's face-detection graph: overlapping candidates above this IoU are merged


@functools.cache
def _anchor_centres(side: int) -> np.ndarray:
    """BlazeFace full-range's anchors: one per 4 x 4 pixel cell of the input, at its centre, as fractions [N, 2]."""
    cells = side // 4
    ys, xs = np.meshgrid((np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _letterbox(image: np.ndarray, side: int, fit: float, pad_x: float, pad_y: float) -> np.ndarray:
    """The image scaled by ``fit`` into the middle of a black ``side`` square, as the model's float input [1, S, S, 3]
    in [-1, 1]."""
    import cv2

    warp = np.array([[fit, 0.0, pad_x], [0.0, fit, pad_y]], dtype=np.float32)
    square = cv2.warpAffine(np.ascontiguousarray(image), warp, (side, side), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return (square.astype(np.float32) * np.float32(2 / 255) - np.float32(1))[None]


def _weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                  threshold: float) -> Iterator[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted non-maximum suppression: the best remaining candidate and every candidate overlapping it
    by more than ``threshold`` IoU become one detection, their boxes and keypoints averaged by score, with the best
    one's score."""
    remaining = np.argsort(-scores, kind="stable")
    while remaining.size:
        overlap = _ious(boxes[remaining[0]], boxes[remaining])
        overlap[0] = 1.0  # the best candidate leads its group even when its box is degenerate
        group, remaining = remaining[overlap > threshold], remaining[overlap <= threshold]
        weights = scores[group] / scores[group].sum()
        yield (weights @ boxes[group], np.tensordot(weights, keypoints[group], axes=1), scores[group[0]])


def _ious(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return inter / np.maximum(union, 1e-12)


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
    except ValueError as error:  # LiteRT's word for a file that is not a model
        raise DetectorUnavailable(f"the face detector model {face_model_path()} is unreadable ({error}); rerun "
                                  "scripts/setup_assets.py") from error
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
    return (f"the face detector (LiteRT) failed to start: {type(error).__name__}: {error}; reinstall with "
            "scripts/install.sh (pyproject's ai-edge-litert) or use the project's Docker image")
