"""Face sources -> aligned portraits -> identities (morphs, colour, mirroring), face swaps, and animation.

Every source photo is aligned once (per process) by a similarity transform that puts the face detector's eye
and mouth keypoints at fixed canonical positions of a ``P`` x ``P`` portrait, so morphs and swaps between any
two faces are plain blends in that frame. Animation (jaw drop with an open mouth, blinks) uses the portrait's
own keypoints, i.e. the detector's mouth keypoint on the source photo.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from shards.assets import asset_path
from synth.plan import PHOTOS, Identity

P = 320  # portrait side
EYE = 0.22 * P  # canonical eye distance
EYE_Y = 0.40 * P
CANONICAL = np.array([[P / 2 - EYE / 2, EYE_Y], [P / 2 + EYE / 2, EYE_Y], [P / 2, EYE_Y + EYE]], np.float32)
LFW_UPSCALE, LFW_PAD = 4, 50
PHOTO_FILES = {"astronaut": "media/faces/astronaut.png", "grace_hopper": "media/faces/grace_hopper.jpg"}


@dataclass
class Portrait:
    rgb: np.ndarray  # float32 [P, P, 3] in [0, 1]
    mask: np.ndarray  # float32 [P, P]: where the head is (soft)
    keypoints: np.ndarray  # float32 [4, 2]: image-left eye, image-right eye, nose tip, mouth centre
    gray: bool = False

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.keypoints[1] - self.keypoints[0]))


def source_image(base: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """(RGB uint8 image, validity mask uint8, is-grayscale) of a face source as the detector sees it."""
    if base in PHOTO_FILES:
        bgr = cv2.imread(str(asset_path(PHOTO_FILES[base])), cv2.IMREAD_COLOR)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.full(bgr.shape[:2], 255, np.uint8), False
    if not base.startswith("lfw"):
        raise ValueError(f"unknown face source {base}")
    faces = _lfw()
    gray = (np.clip(faces[int(base[3:])], 0, 1) * 255).astype(np.uint8)
    side = gray.shape[0] * LFW_UPSCALE
    gray = cv2.resize(gray, (side, side), interpolation=cv2.INTER_CUBIC)
    # LFW crops are tight squares: keep the face oval inside, not the square's corners
    valid = np.zeros((side + 2 * LFW_PAD,) * 2, np.uint8)
    cv2.ellipse(valid, (side // 2 + LFW_PAD,) * 2, (int(0.44 * side), int(0.5 * side)), 0, 0, 360, 255, -1)
    gray = cv2.copyMakeBorder(gray, LFW_PAD, LFW_PAD, LFW_PAD, LFW_PAD, cv2.BORDER_REPLICATE)
    return np.repeat(gray[:, :, None], 3, axis=2), valid, True


@lru_cache(maxsize=1)
def _lfw() -> np.ndarray:
    return np.load(asset_path("media/faces/lfw_subset.npy"))


def detect_sources(detector, lfw_count: int) -> dict[str, np.ndarray]:
    """Keypoints (eyes, nose, mouth) of every usable face source; LFW faces the detector misses are left out."""
    keypoints = {}
    for base in [*PHOTOS, *(f"lfw{k:03d}" for k in range(lfw_count))]:
        rgb, _, _ = source_image(base)
        faces = detector.detect(rgb)
        if faces and len(faces[0].keypoints) >= 4:
            keypoints[base] = np.array(faces[0].keypoints[:4], np.float32)
        elif base in PHOTOS:
            raise RuntimeError(f"the face detector finds no face in {PHOTO_FILES[base]}")
    return keypoints


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation taking ``src`` points onto ``dst`` (2x3)."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    s, d = src - src_mean, dst - dst_mean
    a = (s * d).sum() / (s**2).sum()
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / (s**2).sum()
    rot = np.array([[a, -b], [b, a]])
    return np.hstack([rot, (dst_mean - rot @ src_mean)[:, None]]).astype(np.float32)


def transform_points(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    return (points @ m[:, :2].T + m[:, 2]).astype(np.float32)


def ellipse_mask(center: tuple[float, float], axes: tuple[float, float], blur: float,
                 shape: tuple[int, int] = (P, P)) -> np.ndarray:
    mask = np.zeros(shape, np.float32)
    cv2.ellipse(mask, (round(center[0] * 16), round(center[1] * 16)), (round(axes[0] * 16), round(axes[1] * 16)),
                0, 0, 360, 1.0, -1, cv2.LINE_AA, shift=4)
    return cv2.GaussianBlur(mask, (0, 0), blur) if blur > 0 else mask


@lru_cache(maxsize=32)
def canonical(base: str, keypoints: tuple[tuple[float, float], ...]) -> Portrait:
    """The aligned portrait of one source (cached per process: aligned once, reused by every video)."""
    rgb, valid, gray = source_image(base)
    points = np.array(keypoints, np.float32)
    m = similarity(points[[0, 1, 3]], CANONICAL)
    warped = cv2.warpAffine(rgb, m, (P, P), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    inside = cv2.warpAffine(valid, m, (P, P), flags=cv2.INTER_LINEAR, borderValue=0).astype(np.float32) / 255
    inside = cv2.GaussianBlur(cv2.erode(inside, np.ones((9, 9), np.uint8)), (0, 0), 4)
    head = ellipse_mask((P / 2, 0.48 * P), (0.33 * P, 0.45 * P), 0.03 * P)
    rgb = warped.astype(np.float32) / 255
    if gray:  # upscaled 25x25 faces: restore some edge contrast
        rgb = np.clip(rgb + 0.6 * (rgb - cv2.GaussianBlur(rgb, (0, 0), 3)), 0, 1)
    return Portrait(rgb=rgb, mask=head * inside, keypoints=transform_points(m, points), gray=gray)


def make_identity(identity: Identity, sources: dict[str, np.ndarray]) -> Portrait:
    """Morph, colour, light and mirror the aligned source portraits into one face."""
    parts = [canonical(b, tuple(map(tuple, sources[b].tolist()))) for b in identity.bases]
    weights = [1.0] if len(parts) == 1 else [1 - identity.alpha, identity.alpha]
    tone = np.array(identity.tone, np.float32)
    tone /= tone @ np.array([0.299, 0.587, 0.114], np.float32)
    # a part only counts where it has a face: morphing a photo with a tight LFW crop keeps the photo's hair
    local = [w * p.mask + 1e-4 for w, p in zip(weights, parts, strict=True)]
    total = sum(local)
    rgb = sum(lw[:, :, None] * (p.rgb * tone if p.gray else p.rgb) for lw, p in zip(local, parts, strict=True))
    rgb = rgb / total[:, :, None]
    mask = np.maximum.reduce([p.mask for p in parts])
    keypoints = sum(w * p.keypoints for w, p in zip(weights, parts, strict=True))
    rgb = np.clip(rgb * np.array(identity.gains, np.float32), 0, 1) ** identity.gamma
    yy, xx = np.mgrid[0:P, 0:P].astype(np.float32) / (P / 2) - 1
    light = 1 + identity.light_strength * (np.cos(identity.light_angle) * xx + np.sin(identity.light_angle) * yy)
    portrait = Portrait(rgb=np.clip(rgb * light[:, :, None], 0, 1).astype(np.float32), mask=mask,
                        keypoints=keypoints.astype(np.float32), gray=all(p.gray for p in parts))
    return mirror(portrait) if identity.mirror else portrait


def mirror(portrait: Portrait) -> Portrait:
    keypoints = portrait.keypoints.copy()
    keypoints[:, 0] = P - 1 - keypoints[:, 0]
    keypoints[[0, 1]] = keypoints[[1, 0]]
    return Portrait(rgb=portrait.rgb[:, ::-1].copy(), mask=portrait.mask[:, ::-1].copy(), keypoints=keypoints,
                    gray=portrait.gray)


def inner_face_mask(portrait: Portrait, blur: float) -> np.ndarray:
    """Brows to chin, cheek to cheek: the region a face-swap model replaces."""
    eyes = portrait.keypoints[:2].mean(0)
    e = portrait.eye_distance
    return ellipse_mask((float(eyes[0]), float(eyes[1] + 0.55 * e)), (0.92 * e, 1.12 * e), blur)


def match_colour(source: np.ndarray, reference: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-channel mean/std transfer of ``source`` onto ``reference`` inside ``weights``."""
    w = weights[:, :, None] / max(float(weights.sum()), 1e-6)
    mu_s, mu_r = (source * w).sum((0, 1)), (reference * w).sum((0, 1))
    sd_s = np.sqrt(((source - mu_s) ** 2 * w).sum((0, 1))) + 1e-4
    sd_r = np.sqrt(((reference - mu_r) ** 2 * w).sum((0, 1))) + 1e-4
    return np.clip((source - mu_s) / sd_s * sd_r + mu_r, 0, 1).astype(np.float32)


def face_swap(target: Portrait, donor: Portrait, artifact: str, r: np.random.Generator) -> Portrait:
    """Paste the donor's inner face onto the target head; ``artifact`` is the visible flaw left behind.

    seam: colour-matched but a hard, slightly misaligned edge; colour: well blended but not colour-matched
    (plus a tint); resolution: well blended and colour-matched but the pasted face was down- then up-sampled.
    """
    donor_rgb, donor_points = donor.rgb, donor.keypoints
    e = target.eye_distance
    soft = 0.07 * e
    if artifact == "seam":
        centre = target.keypoints[:2].mean(0)
        m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(r.uniform(-4, 4)),
                                    float(r.uniform(0.93, 1.07)))
        m[:, 2] += r.uniform(-0.05, 0.05, 2) * e
        donor_rgb = cv2.warpAffine(donor_rgb, m, (P, P), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        donor_points = transform_points(m, donor_points)
        soft = float(r.uniform(0.6, 1.5))
    region = inner_face_mask(target, soft)
    if artifact == "colour":
        tint = np.ones(3, np.float32)
        tint[r.integers(3)] = r.uniform(0.8, 1.2)
        donor_rgb = np.clip(donor_rgb * tint * r.uniform(0.85, 1.15), 0, 1)
    else:
        donor_rgb = match_colour(donor_rgb, target.rgb, inner_face_mask(target, 0))
    if artifact == "resolution":
        factor = float(r.uniform(3, 6))
        small = max(8, round(P / factor))
        donor_rgb = cv2.resize(cv2.resize(donor_rgb, (small, small), interpolation=cv2.INTER_AREA), (P, P),
                               interpolation=cv2.INTER_LINEAR)
    rgb = target.rgb + region[:, :, None] * (donor_rgb - target.rgb)
    keypoints = target.keypoints.copy()
    keypoints[[0, 1, 3]] = donor_points[[0, 1, 3]]  # the visible eyes and mouth are the donor's
    return Portrait(rgb=rgb.astype(np.float32), mask=target.mask, keypoints=keypoints, gray=target.gray)


class Animator:
    """Opens the mouth (jaw drop + dark mouth interior + teeth) and closes the eyes of one portrait."""

    def __init__(self, portrait: Portrait):
        self.portrait = portrait
        e = portrait.eye_distance
        self.e = e
        self.mouth = portrait.keypoints[3]
        self.jaw = 0.25 * e  # pixels the lower lip drops at full opening
        mx, my = float(self.mouth[0]), float(self.mouth[1])
        yy, xx = np.mgrid[0:P, 0:P].astype(np.float32)
        across = np.exp(-(((xx - mx) / (0.8 * e)) ** 2))
        down = np.interp(yy - my, [-0.03 * e, 0.15 * e, 0.9 * e, 1.7 * e], [0, 1, 1, 0])
        self.grid_x, self.grid_y = xx, yy
        self.drop = (across * down).astype(np.float32)
        lips = portrait.rgb[int(my), int(np.clip(mx, 0, P - 1))]
        self.inside = np.clip(lips * 0.35, 0, 1) * np.array([1.0, 0.55, 0.55], np.float32)
        lum = float(portrait.rgb[int(my - 0.3 * e):int(my), int(mx - 0.2 * e):int(mx + 0.2 * e)].mean())
        self.teeth = np.array([0.92, 0.9, 0.84], np.float32) * min(1.0, 0.5 + lum)
        self.skin = [self._skin_below(eye) for eye in portrait.keypoints[:2]]

    def _skin_below(self, eye: np.ndarray) -> np.ndarray:
        x, y, s = int(eye[0]), int(eye[1] + 0.32 * self.e), max(2, int(0.1 * self.e))
        patch = self.portrait.rgb[max(0, y - s):y + s, max(0, x - s):x + s]
        return np.median(patch.reshape(-1, 3), axis=0) if patch.size else np.full(3, 0.6, np.float32)

    def render(self, openness: float, closure: float) -> np.ndarray:
        rgb = self.portrait.rgb
        if openness > 0.02:
            gap = openness * self.jaw
            rgb = cv2.remap(rgb, self.grid_x, self.grid_y - gap * self.drop, cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
            rgb = self._mouth_interior(rgb, gap, openness)
        if closure > 0.05:
            rgb = self._eyelids(rgb if rgb is not self.portrait.rgb else rgb.copy(), closure)
        return rgb

    def _mouth_interior(self, rgb: np.ndarray, gap: float, openness: float) -> np.ndarray:
        mx, my = float(self.mouth[0]), float(self.mouth[1])
        half_w = 0.3 * self.e * (1 - 0.1 * openness)
        x0, x1 = int(max(0, mx - half_w - 4)), int(min(P, mx + half_w + 5))
        y0, y1 = int(max(0, my - 4)), int(min(P, my + gap + 5))
        shape = (y1 - y0, x1 - x0)
        mouth = ellipse_mask((mx - x0, my + gap / 2 - y0), (half_w, gap / 2 + 0.5), 0.8, shape)
        rows = np.arange(y0, y1, dtype=np.float32)[:, None]
        teeth = mouth * np.clip((my + 0.3 * gap - rows) / 1.5, 0, 1) * min(1.0, openness * 2)
        roi = rgb[y0:y1, x0:x1]
        roi = roi + mouth[:, :, None] * (self.inside - roi)
        roi = roi + teeth[:, :, None] * (self.teeth - roi)
        out = rgb.copy() if rgb is self.portrait.rgb else rgb
        out[y0:y1, x0:x1] = roi
        return out

    def _eyelids(self, rgb: np.ndarray, closure: float) -> np.ndarray:
        e = self.e
        for eye, skin in zip(self.portrait.keypoints[:2], self.skin, strict=True):
            ex, ey = float(eye[0]), float(eye[1])
            x0, x1 = int(max(0, ex - 0.35 * e)), int(min(P, ex + 0.35 * e))
            y0, y1 = int(max(0, ey - 0.25 * e)), int(min(P, ey + 0.25 * e))
            lid = ellipse_mask((ex - x0, ey - y0), (0.27 * e, 0.15 * e), 1.0, (y1 - y0, x1 - x0))
            rows = np.arange(y0, y1, dtype=np.float32)[:, None]
            edge = ey - 0.15 * e + 0.3 * e * closure
            lid = lid * np.clip((edge - rows) / 1.5 + 0.5, 0, 1)
            lash = lid * np.clip(1 - np.abs(rows - edge) / 1.5, 0, 1) * closure
            roi = rgb[y0:y1, x0:x1]
            roi = roi + lid[:, :, None] * (skin - roi)
            rgb[y0:y1, x0:x1] = roi * (1 - 0.7 * lash[:, :, None])
        return rgb
