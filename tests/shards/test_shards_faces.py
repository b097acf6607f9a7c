"""Faces: the detector, following a face between frames, detecting once per window, square crops."""

from __future__ import annotations

import dataclasses
import multiprocessing

import cv2
import numpy as np
import pytest

from shards import faces
from shards.extract import ExtractOptions, detect_faces
from shards.faces import (
    DetectorUnavailable,
    Face,
    FaceDetector,
    crop_square,
    fill_gaps,
    follow_face,
    iou,
    reference_image,
    self_check,
    smooth_track,
)


def shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def portrait() -> tuple[np.ndarray, Face]:
    image = cv2.resize(reference_image(), (480, 600))
    detector = FaceDetector()
    try:
        return image, detector.detect(image)[0]
    finally:
        detector.close()


def test_weighted_nms_merges_overlapping_candidates_by_score():
    boxes = np.array([[0.0, 0.0, 1.0, 1.0], [0.1, 0.0, 1.1, 1.0], [2.0, 2.0, 3.0, 3.0]])
    keypoints = np.array([[[0.5, 0.5]], [[0.6, 0.5]], [[2.5, 2.5]]])
    scores = np.array([0.6, 0.9, 0.7])
    merged = list(faces._weighted_nms(boxes, keypoints, scores, 0.3))
    assert [score for _, _, score in merged] == [0.9, 0.7]  # the best of each group leads it
    box, points, _ = merged[0]
    np.testing.assert_allclose(box, [0.06, 0.0, 1.06, 1.0])  # (0.6 x 0.0 + 0.9 x 0.1) / 1.5
    np.testing.assert_allclose(points, [[0.56, 0.5]])
    np.testing.assert_allclose(merged[1][0], boxes[2])


def test_detector_boxes_follow_the_face_through_letterboxing_and_mirroring(portrait):
    image, face = portrait
    height, width = image.shape[:2]
    canvas = np.zeros((height, 2 * width, 3), np.uint8)  # the face half as large in the model's square input
    canvas[:, width // 2:width // 2 + width] = image
    detector = FaceDetector()
    try:
        [wide] = detector.detect(canvas)
        [mirrored] = detector.detect(image[:, ::-1])
    finally:
        detector.close()
    assert iou(wide.moved(-(width // 2), 0), face) > 0.85
    assert iou(Face(width - mirrored.x1, mirrored.y0, width - mirrored.x0, mirrored.y1, 1.0), face) > 0.9
    assert all(float(v).is_integer() for v in face.box())  # whole pixels, as MediaPipe's Tasks API reports them
    mouth = face.keypoints[3]
    assert face.x0 < mouth[0] < face.x1 and (face.y0 + face.y1) / 2 < mouth[1] < face.y1


def _detect_in_child(image: np.ndarray, detector: FaceDetector, queue) -> None:
    queue.put(detector.detect(image)[0].box())


def test_a_forked_process_uses_the_detector_it_inherits(portrait):
    """DataLoader workers and pack's worker pool fork after the detector exists: it must work there and exit."""
    image, face = portrait
    detector = FaceDetector()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_detect_in_child, args=(image, detector, queue))
    child.start()
    box = queue.get(timeout=60)
    child.join(timeout=60)
    detector.close()
    assert child.exitcode == 0 and box == face.box()


def test_self_check_names_a_corrupt_model_file(tmp_path, monkeypatch):
    corrupt = tmp_path / "face.tflite"
    corrupt.write_bytes(b"not a model")
    monkeypatch.setattr(faces, "face_model_path", lambda: corrupt)
    with pytest.raises(DetectorUnavailable, match="setup_assets|install"):
        self_check()


@pytest.mark.parametrize("dx, dy", [(0, 0), (6, -3), (-15, 9)])
def test_follow_face_recovers_the_translation(portrait, dx, dy):
    image, face = portrait
    [moved] = follow_face(image, [shifted(image, dx, dy)], face)
    assert moved is not None
    assert abs(moved.x0 - face.x0 - dx) < 1.0 and abs(moved.y1 - face.y1 - dy) < 1.0
    assert abs(moved.keypoints[3][0] - face.keypoints[3][0] - dx) < 1.0


def test_follow_face_gives_up_rather_than_guess(portrait):
    image, face = portrait
    width = face.x1 - face.x0
    assert follow_face(image, [shifted(image, 0.5 * width, 0)], face) == [None]  # beyond FOLLOW_MAX_SHIFT
    noise = np.random.default_rng(0).integers(0, 256, image.shape, dtype=np.uint8)
    assert follow_face(image, [noise], face) == [None]  # nothing like the face there (a cut, an occlusion)


class CountingDetector:
    def __init__(self, detector: FaceDetector):
        self.detector, self.calls = detector, 0

    def detect(self, rgb: np.ndarray) -> list[Face]:
        self.calls += 1
        return self.detector.detect(rgb)


def test_one_detection_per_window_when_the_face_can_be_followed(portrait):
    """A head drifting 1 px per frame: following costs one detection per window and lands where detecting
    every frame does; without following, every detect_stride-th frame is detected."""
    image, _ = portrait
    frames = [shifted(image, t, 0.5 * t) for t in range(16)]
    options = ExtractOptions(windows=2, window_frames=8, detect_side=640)
    detector = CountingDetector(FaceDetector())
    try:
        followed = detect_faces(frames, detector, options)
        assert detector.calls == 2
        detector.calls = 0
        every = detect_faces(frames, detector, dataclasses.replace(options, follow=False, detect_stride=1))
        assert detector.calls == 16
        detector.calls = 0
        detect_faces(frames, detector, dataclasses.replace(options, follow=False))
        assert detector.calls == 6  # frames 0, 4, 7 of each window
    finally:
        detector.detector.close()
    assert all(len(f) == 1 for f in followed)
    assert min(iou(a[0], b[0]) for a, b in zip(followed, every, strict=True)) > 0.9


def test_one_detection_per_window_falls_back_to_detecting(portrait):
    """A cut inside a window (the face is gone at its end): following gives up and the frames are detected."""
    image, _ = portrait
    blank = np.zeros_like(image)
    frames = [image] * 6 + [blank] * 2
    detector = CountingDetector(FaceDetector())
    try:
        found = detect_faces(frames, detector, ExtractOptions(windows=1, window_frames=8))
    finally:
        detector.detector.close()
    assert detector.calls > 1
    assert [len(f) for f in found] == [1] * 6 + [0] * 2


def test_crop_square_pads_and_matches_area_resampling(portrait):
    image, face = portrait
    x0, y0 = int(face.x0), int(face.y0)
    side = int(face.x1 - face.x0)
    inside = (x0, y0, x0 + side, y0 + side)
    for size in (64, side // 2 + 7, side + 10):
        crop = crop_square(image, inside, size)
        region = image[y0:y0 + side, x0:x0 + side]
        reference = cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)
        assert crop.shape == (size, size, 3) and np.abs(crop.astype(float) - reference).mean() < 1.0
    overhang = crop_square(image, (-side // 2, -side // 2, side // 2, side // 2), 32)
    assert overhang.shape == (32, 32, 3) and overhang[:12, :12].max() == 0  # outside the frame: black


def test_fill_gaps_takes_the_nearest_detection_and_the_earlier_on_a_tie():
    a, b = Face(0, 0, 10, 10, 0.9), Face(4, 4, 14, 14, 0.8)
    assert fill_gaps([None, a, None, None, None, b, None]) == [a, a, a, a, b, b, b]
    assert fill_gaps([None, None]) == [None, None]


def test_smooth_track_averages_neighbours_and_keeps_gaps():
    faces = [Face(t, 0, t + 10, 10, 0.9, ((t, 5.0),) * 6) for t in range(5)]
    smoothed = smooth_track(faces, 3)
    assert [f.x0 for f in smoothed] == [0.5, 1.0, 2.0, 3.0, 3.5]  # fewer neighbours at the ends
    assert [f.keypoints[3][0] for f in smoothed] == [0.5, 1.0, 2.0, 3.0, 3.5]
    gappy = smooth_track([faces[0], None, faces[2], Face(3, 0, 13, 10, 0.9)], 3)
    assert gappy[1] is None and gappy[0].x0 == 0.0 and gappy[2].x0 == 2.5  # the keypoint-less face: box only
    assert gappy[3].keypoints == () and gappy[3].x0 == 2.5
