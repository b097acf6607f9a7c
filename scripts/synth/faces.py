"""Source photos -> derived identities (whole photos with a changed face) -> face swaps, lip-sync re-rendering and
mouth / eye animation.

A derived identity is the whole source photo (head, hair, neck, shoulders and the photo's own background) with
its face changed: the low spatial frequencies of an LFW face (the shading that makes eyes, brows, nose and
cheeks look like someone else's; the photo keeps its own skin texture, so no blur is added), a smooth warp of
the face's shape, expression and pose, skin tone, age (greying hair) and light, optionally mirrored. Keypoints
(eyes, nose tip, mouth centre) come from the face detector run once on every source.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from scripts.synth.plan import LFW_FACES, PHOTOS, Identity
from shards.assets import asset_path

PHOTO_FILES = {"astronaut": "media/faces/astronaut.png", "grace_hopper": "media/faces/grace_hopper.jpg"}
LFW_UPSCALE, LFW_PAD = 4, 50


@dataclass
class Face:
    """A whole photo (float32 RGB in [0, 1]) and its face's keypoints: image-left eye, image-right eye, nose, mouth."""

    rgb: np.ndarray
    keypoints: np.ndarray  # float32 [4, 2]

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.keypoints[1] - self.keypoints[0]))

    @property
    def eyes(self) -> np.ndarray:
        return self.keypoints[:2].mean(0)


def source_image(base: str) -> np.ndarray:
    """RGB uint8 of a source photo or of an LFW face (``lfw007``: grayscale, upscaled and padded)."""
    if base in PHOTO_FILES:
        return cv2.cvtColor(cv2.imread(str(asset_path(PHOTO_FILES[base])), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if not base.startswith("lfw"):
        raise ValueError(f"unknown face source {base}")
    gray = (np.clip(_lfw()[int(base[3:])], 0, 1) * 255).astype(np.uint8)
    side = gray.shape[0] * LFW_UPSCALE
    gray = cv2.resize(gray, (side, side), interpolation=cv2.INTER_CUBIC)
    gray = cv2.copyMakeBorder(gray, LFW_PAD, LFW_PAD, LFW_PAD, LFW_PAD, cv2.BORDER_REPLICATE)
    return np.repeat(gray[:, :, None], 3, axis=2)


@lru_cache(maxsize=1)
def _lfw() -> np.ndarray:
    return np.load(asset_path("media/faces/lfw_subset.npy"))


def detect_sources(detector) -> dict[str, np.ndarray]:
    """Keypoints (eyes, nose, mouth) of every usable source; LFW faces the detector misses are left out."""
    keypoints = {}
    for base in [*PHOTOS, *(f"lfw{k:03d}" for k in range(LFW_FACES))]:
        faces = detector.detect(source_image(base))
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


def ellipse_mask(center, axes, blur: float, shape: tuple[int, int], angle: float = 0.0) -> np.ndarray:
    mask = np.zeros(shape, np.float32)
    cv2.ellipse(mask, (round(center[0] * 16), round(center[1] * 16)), (round(axes[0] * 16), round(axes[1] * 16)),
                angle, 0, 360, 1.0, -1, cv2.LINE_AA, shift=4)
    return cv2.GaussianBlur(mask, (0, 0), blur) if blur > 0 else mask


def inner_face_mask(face: Face, shape: tuple[int, int], blur: float, scale: float = 1.0) -> np.ndarray:
    """Brows to chin, cheek to cheek: the region a face-swap model replaces."""
    e, eyes = face.eye_distance, face.eyes
    angle = float(np.degrees(np.arctan2(*(face.keypoints[1] - face.keypoints[0])[::-1])))
    return ellipse_mask((float(eyes[0]), float(eyes[1] + 0.55 * e)), (0.92 * e * scale, 1.12 * e * scale), blur,
                        shape, angle)


def skin_mask(rgb: np.ndarray) -> np.ndarray:
    """Soft skin probability from the YCrCb chroma (the classic Cr 133-173, Cb 77-127 box), smoothed."""
    ycc = cv2.cvtColor((rgb * 255).astype(np.uint8), cv2.COLOR_RGB2YCrCb).astype(np.float32)
    cr = np.clip(1 - np.abs(ycc[:, :, 1] - 153) / 25, 0, 1)
    cb = np.clip(1 - np.abs(ycc[:, :, 2] - 102) / 30, 0, 1)
    return cv2.GaussianBlur(np.minimum(cr, cb) * 1.5, (0, 0), 2).clip(0, 1)


def liquify(rgb: np.ndarray, moves: list[tuple[np.ndarray, np.ndarray, float]], box) -> tuple[np.ndarray, callable]:
    """Move points smoothly (Gaussian-weighted displacements) inside ``box`` (x0, y0, x1, y1) of the photo.

    ``moves``: (point, displacement, radius). Returns the warped photo and a function mapping points the same way.
    """
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)

    def displacement(x, y):
        dx, dy = np.zeros_like(x), np.zeros_like(y)
        for point, move, radius in moves:
            w = np.exp(-((x - point[0]) ** 2 + (y - point[1]) ** 2) / (2 * radius**2))
            dx, dy = dx + w * move[0], dy + w * move[1]
        return dx, dy

    dx, dy = displacement(xx, yy)  # backward map, good for small moves
    out = rgb.copy()
    out[y0:y1, x0:x1] = cv2.remap(rgb, (xx - dx).astype(np.float32), (yy - dy).astype(np.float32), cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT)

    def move_points(points: np.ndarray) -> np.ndarray:
        px, py = displacement(points[:, 0].astype(np.float32), points[:, 1].astype(np.float32))
        return (points + np.stack([px, py], 1)).astype(np.float32)

    return out, move_points


def face_box(face: Face, shape: tuple[int, ...], wide: float = 2.6) -> tuple[int, int, int, int]:
    e, (cx, cy) = face.eye_distance, face.eyes
    x0, x1 = int(max(0, cx - wide * e)), int(min(shape[1], cx + wide * e))
    y0, y1 = int(max(0, cy - wide * e)), int(min(shape[0], cy + 1.4 * wide * e))
    return x0, y0, x1, y1


def lfw_low_frequencies(face: Face, base: str, keypoints: np.ndarray, alpha: float) -> np.ndarray:
    """The face's shading replaced (by ``alpha``) with that of an LFW face, below ~1/5 of the eye distance."""
    lfw = source_image(base).astype(np.float32) / 255
    m = similarity(keypoints[[0, 1, 3]], face.keypoints[[0, 1, 3]])
    h, w = face.rgb.shape[:2]
    other = cv2.warpAffine(lfw[:, :, 0], m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    region = inner_face_mask(face, (h, w), 0.12 * face.eye_distance, 0.95)
    luma = cv2.cvtColor(face.rgb, cv2.COLOR_RGB2GRAY)
    weights = region / max(float(region.sum()), 1e-6)
    mu, sd = float((luma * weights).sum()), float(np.sqrt(((luma - (luma * weights).sum()) ** 2 * weights).sum()))
    o_mu = float((other * weights).sum())
    o_sd = float(np.sqrt(((other - o_mu) ** 2 * weights).sum()))
    other = (other - o_mu) / max(o_sd, 1e-4) * sd + mu
    sigma = 0.2 * face.eye_distance
    change = cv2.GaussianBlur(other, (0, 0), sigma) - cv2.GaussianBlur(luma, (0, 0), sigma)
    ratio = (np.clip(luma + alpha * region * change, 0.02, 1) / np.maximum(luma, 0.02))[:, :, None]
    return np.clip(face.rgb * ratio, 0, 1).astype(np.float32)


def derive(identity: Identity, sources: dict[str, np.ndarray]) -> Face:
    """The identity's whole photo (see the module docstring); deterministic."""
    rgb = source_image(identity.photo).astype(np.float32) / 255
    keypoints = sources[identity.photo].copy()
    if identity.mirror:
        rgb = rgb[:, ::-1].copy()
        keypoints[:, 0] = rgb.shape[1] - 1 - keypoints[:, 0]
        keypoints[[0, 1]] = keypoints[[1, 0]]
    face = Face(rgb, keypoints)
    e, (cx, cy) = face.eye_distance, face.eyes
    left, right, nose, mouth = keypoints
    s = np.array(identity.shape) * 0.09 * e
    # shape, expression and pose as smooth point moves (eye spacing, eye height, nose, mouth, jaw, chin)
    moves = [(left, (-s[0], s[1]), 0.35 * e), (right, (s[0], s[1]), 0.35 * e), (nose, (0, s[2]), 0.3 * e),
             (mouth + (-0.35 * e, 0), (-s[3] - 0.04 * e * identity.smile, s[4] - 0.05 * e * identity.smile), 0.25 * e),
             (mouth + (0.35 * e, 0), (s[3] + 0.04 * e * identity.smile, s[4] - 0.05 * e * identity.smile), 0.25 * e),
             (np.array([cx - 0.9 * e, cy + 1.0 * e]), (-s[5], 0), 0.45 * e),
             (np.array([cx + 0.9 * e, cy + 1.0 * e]), (s[5], 0), 0.45 * e),
             (np.array([cx, cy + 1.6 * e]), (0, s[6] + 0.04 * e * identity.age), 0.5 * e),
             (np.array([cx, cy - 0.35 * e]), (0, -0.05 * e * identity.brows), 0.4 * e),
             (np.array([cx, cy + 0.5 * e]), (0.08 * e * identity.yaw, 0), 0.7 * e)]
    warped, move = liquify(rgb, moves, face_box(face, rgb.shape))
    face = Face(warped, move(keypoints))
    if identity.photo in sources and f"lfw{identity.lfw:03d}" in sources:
        face.rgb = lfw_low_frequencies(face, f"lfw{identity.lfw:03d}", sources[f"lfw{identity.lfw:03d}"],
                                       identity.lfw_alpha)
    h, w = face.rgb.shape[:2]
    head = ellipse_mask((float(face.eyes[0]), float(face.eyes[1] + 0.3 * e)), (1.6 * e, 2.4 * e), 0.4 * e, (h, w))
    skin = skin_mask(face.rgb) * head
    tone = np.array(identity.tone, np.float32)
    rgb = face.rgb * (1 + skin[:, :, None] * (tone - 1))
    # hair (not skin, around the top of the head) takes another colour, and greys and lightens with age
    hair = head * (1 - skin) * np.clip((face.eyes[1] - np.arange(h, dtype=np.float32)[:, None]) / e, 0, 1)
    rgb = rgb * (1 + hair[:, :, None] * (np.array(identity.hair, np.float32) - 1))
    grey = rgb.mean(2, keepdims=True) * 0.6 + 0.4
    rgb = rgb + (0.7 * identity.age * hair)[:, :, None] * (grey - rgb)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (np.cos(identity.light_angle) * (xx - face.eyes[0]) + np.sin(identity.light_angle) * (yy - face.eyes[1]))
    light = 1 + identity.light_strength * np.clip(ramp / (3 * e), -1, 1)
    return Face(np.clip(rgb * light[:, :, None], 0, 1).astype(np.float32), face.keypoints)


def match_colour(source: np.ndarray, reference: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-channel mean/std transfer (in Lab) of ``source`` onto ``reference`` inside ``weights``."""
    src, ref = cv2.cvtColor(source, cv2.COLOR_RGB2LAB), cv2.cvtColor(reference, cv2.COLOR_RGB2LAB)
    w = weights[:, :, None] / max(float(weights.sum()), 1e-6)
    mu_s, mu_r = (src * w).sum((0, 1)), (ref * w).sum((0, 1))
    sd_s = np.sqrt(((src - mu_s) ** 2 * w).sum((0, 1))) + 1e-4
    sd_r = np.sqrt(((ref - mu_r) ** 2 * w).sum((0, 1))) + 1e-4
    out = ((src - mu_s) / sd_s * sd_r + mu_r).astype(np.float32)
    return np.clip(cv2.cvtColor(out, cv2.COLOR_LAB2RGB), 0, 1)


def aligned_donor(target: Face, donor: Face) -> tuple[np.ndarray, np.ndarray]:
    """The donor photo warped so that its eyes and mouth land on the target's, and its warped keypoints."""
    m = similarity(donor.keypoints[[0, 1, 3]], target.keypoints[[0, 1, 3]])
    h, w = target.rgb.shape[:2]
    rgb = cv2.warpAffine(donor.rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return rgb, transform_points(m, donor.keypoints)


@dataclass
class Swap:
    """A face swap: the swapped photo and, for per-frame blending (jitter), the pasted layer and its mask."""

    face: Face
    layer: np.ndarray | None = None
    mask: np.ndarray | None = None
    jitter: float = 0.0


def face_swap(method: str, target: Face, donor: Face, params: dict[str, float]) -> Swap:
    """Paste the donor's inner face onto the target photo with one of three blending implementations.

    alpha_ellipse: Lab colour transfer + feathered elliptical alpha. poisson_hull: OpenCV's seamless cloning
    (gradient-domain) inside a polygon around brows, cheeks and chin. lowres_jitter: the face generated at
    40-96 px across and upsampled, colour-matched, re-blended every frame with a small random misalignment.
    """
    h, w = target.rgb.shape[:2]
    rgb, points = aligned_donor(target, donor)
    keypoints = target.keypoints.copy()
    keypoints[[0, 1, 3]] = points[[0, 1, 3]]
    e = target.eye_distance
    if method == "face_swap_poisson_hull":
        hull = swap_polygon(target, 1 + params["dilate"])
        mask = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(mask, hull.astype(np.int32), 255)
        x, y, bw, bh = cv2.boundingRect(hull.astype(np.int32))
        centre = (int(x + bw // 2), int(y + bh // 2))
        flag = cv2.MIXED_CLONE if params["mixed"] else cv2.NORMAL_CLONE
        out = cv2.seamlessClone(to_u8(rgb), to_u8(target.rgb), mask, centre, flag)
        return Swap(Face(out.astype(np.float32) / 255, keypoints))
    region = inner_face_mask(target, (h, w), 0, params.get("scale", 1.0))
    rgb = match_colour(rgb, target.rgb, region)
    mask = inner_face_mask(target, (h, w), params["feather"] * e, params.get("scale", 1.0))
    if method == "face_swap_lowres_jitter":
        x0, y0, x1, y1 = face_box(target, (h, w), 1.3)
        crop = rgb[y0:y1, x0:x1]
        small = max(8, int(params["res"] * (x1 - x0) / (2.2 * e)))
        crop = cv2.resize(cv2.resize(crop, (small, small), interpolation=cv2.INTER_AREA), (x1 - x0, y1 - y0),
                          interpolation=cv2.INTER_LINEAR)
        rgb = rgb.copy()
        rgb[y0:y1, x0:x1] = crop
    swapped = target.rgb + mask[:, :, None] * (rgb - target.rgb)
    face = Face(swapped.astype(np.float32), keypoints)
    if method == "face_swap_lowres_jitter":
        return Swap(face, layer=rgb, mask=mask, jitter=params["jitter"] * e)
    return Swap(face)


def swap_polygon(face: Face, scale: float) -> np.ndarray:
    """Points around brows, cheeks and chin (from the 4 keypoints), scaled about the face centre."""
    e, (cx, cy) = face.eye_distance, face.eyes
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    rx, ry = 0.88 * e, np.where(np.sin(angles) > 0, 1.25 * e, 0.75 * e)  # longer towards the chin
    centre = np.array([cx, cy + 0.45 * e])
    return (centre + scale * np.stack([rx * np.cos(angles), ry * np.sin(angles)], 1)).astype(np.float32)


def to_u8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


class Animator:
    """Opens the mouth (jaw drop + dark mouth interior + teeth) and closes the eyes inside one region of a photo."""

    def __init__(self, face: Face, box: tuple[int, int, int, int]):
        x0, y0, x1, y1 = box
        self.box = box
        self.rgb = face.rgb[y0:y1, x0:x1].copy()
        self.keypoints = face.keypoints - np.array([x0, y0], np.float32)
        e = face.eye_distance
        self.e = e
        self.mouth = self.keypoints[3]
        self.jaw = 0.25 * e  # pixels the lower lip drops at full opening
        h, w = self.rgb.shape[:2]
        self.h, self.w = h, w
        mx, my = float(self.mouth[0]), float(self.mouth[1])
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        across = np.exp(-(((xx - mx) / (0.8 * e)) ** 2))
        down = np.interp(yy - my, [-0.03 * e, 0.15 * e, 0.9 * e, 1.7 * e], [0, 1, 1, 0])
        self.grid_x, self.grid_y = xx, yy
        self.drop = (across * down).astype(np.float32)
        lips = self.rgb[int(np.clip(my, 0, h - 1)), int(np.clip(mx, 0, w - 1))]
        self.inside = np.clip(lips * 0.35, 0, 1) * np.array([1.0, 0.55, 0.55], np.float32)
        patch = self.rgb[max(0, int(my - 0.3 * e)):max(1, int(my)), max(0, int(mx - 0.2 * e)):int(mx + 0.2 * e)]
        lum = float(patch.mean()) if patch.size else 0.5
        self.teeth = np.array([0.92, 0.9, 0.84], np.float32) * min(1.0, 0.5 + lum)
        self.skin = [self._skin_below(eye) for eye in self.keypoints[:2]]

    def _skin_below(self, eye: np.ndarray) -> np.ndarray:
        x, y, s = int(eye[0]), int(eye[1] + 0.32 * self.e), max(2, int(0.1 * self.e))
        patch = self.rgb[max(0, y - s):y + s, max(0, x - s):x + s]
        return np.median(patch.reshape(-1, 3), axis=0) if patch.size else np.full(3, 0.6, np.float32)

    def render(self, openness: float, closure: float, inside: np.ndarray | None = None) -> np.ndarray:
        rgb = self.rgb.copy()
        if openness > 0.02:
            gap = openness * self.jaw
            rgb = cv2.remap(rgb, self.grid_x, self.grid_y - gap * self.drop, cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
            rgb = self._mouth_interior(rgb, gap, openness, self.inside if inside is None else inside)
        if closure > 0.05:
            rgb = self._eyelids(rgb, closure)
        return rgb

    def _mouth_interior(self, rgb: np.ndarray, gap: float, openness: float, inside: np.ndarray) -> np.ndarray:
        mx, my = float(self.mouth[0]), float(self.mouth[1])
        half_w = 0.3 * self.e * (1 - 0.1 * openness)
        x0, x1 = int(max(0, mx - half_w - 4)), int(min(self.w, mx + half_w + 5))
        y0, y1 = int(max(0, my - 4)), int(min(self.h, my + gap + 5))
        if x1 <= x0 or y1 <= y0:
            return rgb
        mouth = ellipse_mask((mx - x0, my + gap / 2 - y0), (half_w, gap / 2 + 0.5), 0.8, (y1 - y0, x1 - x0))
        rows = np.arange(y0, y1, dtype=np.float32)[:, None]
        teeth = mouth * np.clip((my + 0.3 * gap - rows) / 1.5, 0, 1) * min(1.0, openness * 2)
        roi = rgb[y0:y1, x0:x1]
        roi = roi + mouth[:, :, None] * (inside - roi)
        rgb[y0:y1, x0:x1] = roi + teeth[:, :, None] * (self.teeth - roi)
        return rgb

    def _eyelids(self, rgb: np.ndarray, closure: float) -> np.ndarray:
        e = self.e
        for eye, skin in zip(self.keypoints[:2], self.skin, strict=True):
            ex, ey = float(eye[0]), float(eye[1])
            x0, x1 = int(max(0, ex - 0.35 * e)), int(min(self.w, ex + 0.35 * e))
            y0, y1 = int(max(0, ey - 0.25 * e)), int(min(self.h, ey + 0.25 * e))
            if x1 <= x0 or y1 <= y0:
                continue
            lid = ellipse_mask((ex - x0, ey - y0), (0.27 * e, 0.15 * e), 1.0, (y1 - y0, x1 - x0))
            rows = np.arange(y0, y1, dtype=np.float32)[:, None]
            edge = ey - 0.15 * e + 0.3 * e * closure
            lid = lid * np.clip((edge - rows) / 1.5 + 0.5, 0, 1)
            lash = lid * np.clip(1 - np.abs(rows - edge) / 1.5, 0, 1) * closure
            roi = rgb[y0:y1, x0:x1]
            roi = roi + lid[:, :, None] * (skin - roi)
            rgb[y0:y1, x0:x1] = roi * (1 - 0.7 * lash[:, :, None])
        return rgb


def lower_face_box(animator: Animator) -> tuple[int, int, int, int]:
    """Nose to chin, cheek to cheek, in the animator's region: what a lip-sync model regenerates."""
    e, (mx, my) = animator.e, animator.mouth
    x0, x1 = int(max(0, mx - 0.75 * e)), int(min(animator.w, mx + 0.75 * e))
    y0, y1 = int(max(0, my - 0.55 * e)), int(min(animator.h, my + 0.9 * e))
    return x0, y0, x1, y1
