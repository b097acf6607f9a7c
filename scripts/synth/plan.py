"""What each synthetic video will be: splits, identities, voices, labels, methods and every generation parameter.

Everything is drawn here, in the main process, from random streams keyed by (seed, ..., stream), so a video's
content never depends on the worker that renders it.

Splits hold disjoint groups (drawn per seed): their own speakers (``voice``), their own LFW faces (whose low
spatial frequencies make a face's features) and so their own derived identities; the two source photos (scene,
hair, clothes, texture) are shared by every split, because the registries offer only two with a usable face.
Within a split, genuine and fake videos draw from the same identities and voices: a video's identity, voice,
speech, camera and encoding are drawn from streams that do not depend on its label. Only the ``fake`` stream
depends on the method.

Fakes come in the FakeAVCeleb categories, as families (what is manipulated) with several implementations each
(``method``: a different tool, not another seed), balanced over families and, within a family, over methods.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from competition import LABEL_FILES, REAL_CATEGORY, TEST, TRAIN, VAL

SPLIT_NAMES = (TRAIN, VAL, TEST)
DEFAULT_SHARES = (0.6, 0.2, 0.2)
MIN_PER_SPLIT = 2  # one genuine and one fake
MIN_VIDEOS = MIN_PER_SPLIT * len(SPLIT_NAMES)
VIDEOS_PER_IDENTITY = 3  # a split of n videos has ceil(n / 3) identities (at least 2: a swap needs a donor)
RICH_VOICE_SECONDS = 60.0  # voices with less recorded speech are spread over the splits apart from the rich ones

REAL = "real"
# family -> (FakeAVCeleb category, its methods). Every method is a different implementation, not a parameter set.
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "face_swap": ("FakeVideo-RealAudio", ("face_swap_alpha_ellipse", "face_swap_poisson_hull",
                                          "face_swap_lowres_jitter")),
    "lip_sync": ("FakeVideo-RealAudio", ("lip_sync_dub", "lip_sync_lowres_mouth", "lip_sync_viseme")),
    "av_offset": ("FakeVideo-RealAudio", ("av_offset_constant", "av_offset_drift")),
    "voice_conversion": ("RealVideo-FakeAudio", ("vc_channel_vocoder", "vc_lpc", "vc_formant_shift",
                                                 "vc_griffin_lim")),
    "tts": ("RealVideo-FakeAudio", ("tts_flite_diphone", "tts_flite_clustergen")),
    "both": ("FakeVideo-FakeAudio", ("both_swap_vc", "both_lipsync_tts")),
}
METHOD_FAMILY = {m: family for family, (_, methods) in FAMILIES.items() for m in methods}
SWAPS = FAMILIES["face_swap"][1]
VOICE_CONVERSIONS = FAMILIES["voice_conversion"][1]
TTS_ENGINES = FAMILIES["tts"][1]
FLITE_VOICES = {"tts_flite_diphone": ("kal", "kal16"), "tts_flite_clustergen": ("awb", "rms", "slt")}
# what text-to-speech says (the recordings come without transcripts)
SENTENCES = (
    "Thank you for calling, please hold the line.", "The results will be announced later this evening.",
    "We expect the weather to improve by the end of the week.", "Please leave your message after the tone.",
    "The committee met this morning to discuss the new budget.", "I have never said anything like that.",
    "Our correspondent reports from the city centre.", "The meeting has been moved to Thursday afternoon.",
    "Prices rose again last month, according to official figures.", "Press one to repeat this message.",
    "I would like to thank everyone who made this possible.", "The train to the airport is delayed by ten minutes.",
    "Scientists say the discovery could change the way we think.", "Your call is important to us.",
    "Let me be very clear about what happened yesterday.", "The game ended in a draw after extra time.",
    "Voting closes at eight o'clock tonight.", "We will be back after a short break.",
    "Nobody expected the announcement to come so soon.", "All lines are busy at the moment.",
)

RESOLUTIONS = ((320, 240), (426, 240), (480, 360), (640, 360), (640, 480), (854, 480), (960, 540), (1024, 576))
FPS = (25, 30)
SAMPLE_RATES = (16000, 22050, 24000, 32000, 44100, 48000)
AUDIO_BITRATES = (48000, 64000, 96000, 128000)
MIN_SECONDS, MAX_SECONDS = 2.0, 6.0
MAX_LEADING_SILENCE = 0.8
CRF_RANGE = (18, 30)
PHOTOS = ("astronaut", "grace_hopper")
LFW_FACES = 100  # the first 100 images of lfw_subset.npy are faces, the other 100 are not

# random streams, combined with the seed (and a video index where there is one)
NUISANCE, CONTENT, FAKE, RENDER, CAMERA = 1, 2, 3, 4, 5
POOLS = 9


def rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


@dataclass(frozen=True)
class Nuisance:
    """What a detector could key on without looking at the content; drawn independently of the label."""

    frames: int
    fps: int
    width: int
    height: int
    sample_rate: int
    channels: int
    leading_silence: float
    crf: int
    audio_bitrate: int

    @property
    def duration(self) -> float:
        return self.frames / self.fps


@dataclass(frozen=True)
class Camera:
    """How the photo is filmed: framing, slow camera motion and shake, head motion, and the camera's look."""

    window: float  # crop height / the largest crop of the photo's aspect that fits (1 = widest shot)
    face_x: float  # eye midpoint in the frame (fraction of width)
    face_y: float  # eye line in the frame (fraction of height)
    zoom_drift: float  # relative change of the crop size over the clip
    pan: tuple[float, float]  # drift of the crop centre over the clip (fraction of the crop)
    shake: float  # hand-held shake amplitude (fraction of the crop height)
    roll: float  # degrees
    nod: float  # head motion amplitude, degrees
    speech_nod: float  # extra nod (degrees) at full loudness of the speech the head was filmed with
    gains: tuple[float, float, float]  # white balance
    gamma: float
    noise: float  # sensor noise sd (fraction of full scale)
    blur: float  # lens softness (sigma in photo pixels)


@dataclass(frozen=True)
class Prompt:
    """A stretch of one real speech recording: ``length`` s from ``start`` s, then ``gap`` s of silence."""

    file: str  # relative to the speech folder: <voice>/<recording>.wav
    start: float
    length: float
    gap: float


@dataclass(frozen=True)
class Identity:
    """A derived person: one source photo with its face changed (features from an LFW face, shape, expression,
    pose, age, skin tone, light, mirroring), and the voice this person speaks with."""

    name: str
    split: str
    photo: str
    voice: str
    lfw: int  # LFW face whose low spatial frequencies are blended into the face
    lfw_alpha: float
    shape: tuple[float, ...]  # eye spacing, eye height, nose length, mouth width, mouth height, jaw width, chin
    smile: float
    brows: float
    yaw: float
    age: float
    tone: tuple[float, float, float]  # skin colour gains
    hair: tuple[float, float, float]  # hair colour gains
    light_angle: float
    light_strength: float
    mirror: bool


@dataclass(frozen=True)
class Fake:
    visual: str = ""  # face swap or lip-sync implementation applied to the video
    audio: str = ""  # voice conversion or text-to-speech implementation that makes the heard audio
    donor: Identity | None = None  # face swap: whose face is pasted in
    heard_speech: tuple[Prompt, ...] = ()  # lip sync: the real utterance heard instead of the filmed one
    mouth_follows_heard: bool = True  # False: the mouth keeps moving with the filmed utterance
    av_offset: float = 0.0  # seconds the video lags (+) or leads (-) the audio at the start
    av_offset_end: float = 0.0  # ... and at the end (drift)
    tts_voice: str = ""
    tts_text: tuple[str, ...] = ()
    params: tuple[tuple[str, float], ...] = ()  # the implementation's own parameters

    def param(self, key: str, default: float = 0.0) -> float:
        return dict(self.params).get(key, default)


@dataclass(frozen=True)
class VideoSpec:
    seed: int
    index: int
    name: str
    split: str
    target: int
    family: str
    method: str
    category: str
    nuisance: Nuisance
    camera: Camera
    identity: Identity
    speech: tuple[Prompt, ...]  # the utterance the person was filmed saying
    fake: Fake = field(default_factory=Fake)

    def meta_row(self) -> dict[str, object]:
        n, f, c, i = self.nuisance, self.fake, self.camera, self.identity
        return {
            "video_name": self.name, "split": self.split, "target": self.target, "category": self.category,
            "family": self.family, "method": self.method, "identity": i.name, "voice": i.voice, "photo": i.photo,
            "lfw_face": i.lfw, "visual_method": f.visual, "audio_method": f.audio,
            "swap_donor": f.donor.name if f.donor else "", "tts_voice": f.tts_voice,
            "speech_source": prompts_text(self.speech), "heard_source": prompts_text(f.heard_speech),
            "mouth_follows_audio": int(f.mouth_follows_heard), "av_offset": round(f.av_offset, 3),
            "av_offset_end": round(f.av_offset_end, 3),
            "fake_params": ";".join(f"{k}={v:.4g}" for k, v in f.params),
            "duration": round(n.duration, 4), "frames": n.frames, "width": n.width, "height": n.height,
            "fps": n.fps, "sample_rate": n.sample_rate, "channels": n.channels,
            "leading_silence": round(n.leading_silence, 3), "crf": n.crf, "audio_bitrate": n.audio_bitrate,
            "mirror": int(i.mirror), "window": round(c.window, 4), "camera_noise": round(c.noise, 4),
            "camera_blur": round(c.blur, 3), "seed": self.seed, "index": self.index,
        }


def prompts_text(prompts: tuple[Prompt, ...]) -> str:
    return "+".join(f"{p.file}[{p.start:.2f}:{p.start + p.length:.2f}]" for p in prompts)


def video_name(seed: int, index: int) -> str:
    return hashlib.blake2b(f"avdf-synthetic:{seed}:{index}".encode(), digest_size=16).hexdigest() + ".mp4"


def label_files() -> dict[str, str]:
    """split folder -> its labels file (the competition's names; the synthetic set adds test labels)."""
    return {split: LABEL_FILES[split] for split in SPLIT_NAMES}


def split_sizes(videos: int, shares: tuple[float, ...] = DEFAULT_SHARES) -> dict[str, int]:
    if videos < MIN_VIDEOS:
        raise ValueError(f"need at least {MIN_VIDEOS} videos so that every split has a genuine and a fake one")
    total = sum(shares)
    sizes = {name: max(MIN_PER_SPLIT, round(videos * share / total))
             for name, share in zip(SPLIT_NAMES[1:], shares[1:], strict=True)}
    sizes = {SPLIT_NAMES[0]: videos - sum(sizes.values()), **sizes}
    if sizes[SPLIT_NAMES[0]] < MIN_PER_SPLIT:
        raise ValueError(f"shares {shares} leave fewer than {MIN_PER_SPLIT} videos for {SPLIT_NAMES[0]}")
    return sizes


def allot(items: list, shares: tuple[float, ...], r: np.random.Generator,
          ties: tuple[int, ...] = (0, 1, 2)) -> dict[str, list]:
    """Shuffle ``items`` and cut them into the splits by ``shares``: at least one each, the rest by largest
    remainder (equal remainders in the split order ``ties``)."""
    if len(items) < len(SPLIT_NAMES):
        raise ValueError(f"{len(items)} items cannot give each of {len(SPLIT_NAMES)} splits its own")
    order = [items[k] for k in r.permutation(len(items))]
    quota = np.array(shares, float) / sum(shares) * len(items)
    counts = np.maximum(1, np.floor(quota)).astype(int)
    rank = {split: ties.index(split) for split in range(len(SPLIT_NAMES))}
    while counts.sum() > len(items):
        counts[max(range(len(counts)), key=lambda k: (counts[k] - quota[k], -rank[k]))] -= 1
    while counts.sum() < len(items):
        counts[max(range(len(counts)), key=lambda k: (quota[k] - counts[k], -rank[k]))] += 1
    cuts = np.concatenate([[0], np.cumsum(counts)])
    return {split: order[cuts[k]:cuts[k + 1]] for k, split in enumerate(SPLIT_NAMES)}


# --- speech -----------------------------------------------------------------------------------------------------
Catalog = dict[str, list[tuple[str, float]]]  # voice -> [(recording relative to the speech folder, seconds)]


def read_catalog(manifest: Path) -> Catalog:
    """The speech manifest written by scripts/setup_assets.py, grouped by speaker."""
    catalog: Catalog = {}
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            catalog.setdefault(row["voice"], []).append((row["file"], float(row["seconds"])))
    if len(catalog) < len(SPLIT_NAMES):
        raise ValueError(f"{manifest} names {len(catalog)} speakers; every split needs its own")
    return {voice: sorted(files) for voice, files in sorted(catalog.items())}


def split_voices(catalog: Catalog, shares: tuple[float, ...], r: np.random.Generator) -> dict[str, list[str]]:
    """Disjoint speakers per split; speakers with much and with little recorded speech are cut separately, so
    that every split gets some of each."""
    rich = [v for v, files in catalog.items() if sum(s for _, s in files) >= RICH_VOICE_SECONDS]
    small = [v for v in catalog if v not in rich]
    groups = [g for g in (rich, small) if len(g) >= len(SPLIT_NAMES)] or [rich + small]
    leftover = [v for v in rich + small if not any(v in g for g in groups)]
    if leftover:
        groups[0] = groups[0] + leftover
    out: dict[str, list[str]] = {split: [] for split in SPLIT_NAMES}
    ties = tuple(int(k) for k in r.permutation(len(SPLIT_NAMES)))
    for group in groups:  # ties go one way for the rich speakers and the other way for the rest
        for split, voices in allot(sorted(group), shares, r, ties).items():
            out[split] += voices
        ties = ties[::-1]
    return {split: sorted(voices) for split, voices in out.items()}


def draw_speech(r: np.random.Generator, files: list[tuple[str, float]], seconds: float) -> tuple[Prompt, ...]:
    """Real recordings of one speaker, separated by short pauses, until ``seconds`` are filled."""
    weights = np.array([s for _, s in files])  # every second of recorded speech equally likely
    weights /= weights.sum()
    prompts: list[Prompt] = []
    left = seconds
    while left > 0.05:
        name, available = files[int(r.choice(len(files), p=weights))]
        length = min(available, left)
        start = float(r.uniform(0, available - length)) if available > length else 0.0
        gap = float(r.uniform(0.15, 0.5))
        prompts.append(Prompt(file=name, start=start, length=length, gap=gap))
        left -= length + gap
    return tuple(prompts)


# --- identities -------------------------------------------------------------------------------------------------
def draw_identity(r: np.random.Generator, split: str, number: int, photo: str, voice: str, lfw: int) -> Identity:
    tones = ((1.0, 1.0, 1.0), (1.04, 0.97, 0.92), (0.86, 0.8, 0.74), (0.72, 0.62, 0.55), (1.05, 1.02, 1.0))
    tone = np.array(tones[r.integers(len(tones))]) * r.uniform(0.96, 1.04, 3)
    hairs = np.array(((1.0, 1.0, 1.0), (0.55, 0.45, 0.4), (1.25, 1.1, 0.75), (1.2, 0.8, 0.6), (0.8, 0.8, 0.85)))
    identity = Identity(
        name="", split=split, photo=photo, voice=voice, lfw=lfw, lfw_alpha=float(r.uniform(0.35, 0.8)),
        shape=tuple(float(v) for v in r.uniform(-1, 1, 7)), smile=float(r.uniform(-0.3, 1.0)),
        brows=float(r.uniform(-1, 1)), yaw=float(r.uniform(-1, 1)), age=float(r.uniform(0, 1)),
        tone=tuple(float(t) for t in tone), hair=tuple(float(h) for h in hairs[r.integers(len(hairs))] * r.uniform(0.9, 1.1, 3)), light_angle=float(r.uniform(0, 2 * np.pi)),
        light_strength=float(r.uniform(0.0, 0.35)), mirror=bool(r.random() < 0.5),
    )
    tag = hashlib.blake2b(repr(identity).encode(), digest_size=3).hexdigest()
    return Identity(**{**identity.__dict__, "name": f"{split}{number:03d}-{photo}-lfw{lfw:03d}-{tag}"})


def identity_pools(seed: int, sizes: dict[str, int], catalog: Catalog, lfw_faces: list[int],
                   shares: tuple[float, ...]) -> dict[str, list[Identity]]:
    """Each split's own identities: its own LFW faces and voices; every photo in every split."""
    r = rng(seed, POOLS)
    voices = split_voices(catalog, shares, r)
    lfw = allot(sorted(lfw_faces), shares, r)
    pools = {}
    for k, split in enumerate(SPLIT_NAMES):
        count = max(2, math.ceil(sizes[split] / VIDEOS_PER_IDENTITY))
        pr = rng(seed, POOLS, k + 1)
        first = int(pr.integers(len(PHOTOS)))
        photos = [PHOTOS[(first + j) % len(PHOTOS)] for j in range(count)]
        speakers = [voices[split][j % len(voices[split])] for j in pr.permutation(count)]
        faces = [lfw[split][j % len(lfw[split])] for j in pr.permutation(count)]
        pools[split] = [draw_identity(pr, split, j, photos[j], speakers[j], int(faces[j])) for j in range(count)]
    return pools


# --- per video --------------------------------------------------------------------------------------------------
def draw_nuisance(r: np.random.Generator) -> Nuisance:
    fps = int(r.choice(FPS))
    seconds = r.uniform(MIN_SECONDS, MAX_SECONDS)
    frames = int(np.clip(round(seconds * fps), np.ceil(MIN_SECONDS * fps), np.floor(MAX_SECONDS * fps)))
    width, height = RESOLUTIONS[r.integers(len(RESOLUTIONS))]
    return Nuisance(
        frames=frames, fps=fps, width=width, height=height, sample_rate=int(r.choice(SAMPLE_RATES)),
        channels=int(r.integers(1, 3)), leading_silence=float(r.uniform(0.0, MAX_LEADING_SILENCE)),
        crf=int(r.integers(CRF_RANGE[0], CRF_RANGE[1] + 1)), audio_bitrate=int(r.choice(AUDIO_BITRATES)),
    )


def draw_camera(r: np.random.Generator) -> Camera:
    return Camera(
        window=float(r.uniform(0.72, 0.95)), face_x=float(r.uniform(0.4, 0.6)), face_y=float(r.uniform(0.33, 0.45)),
        zoom_drift=float(r.uniform(-0.06, 0.06)), pan=(float(r.uniform(-0.04, 0.04)), float(r.uniform(-0.03, 0.03))),
        shake=float(r.uniform(0.0, 0.006)), roll=float(r.uniform(-2, 2)), nod=float(r.uniform(0.5, 2.5)),
        speech_nod=float(r.uniform(0.0, 2.0)), gains=tuple(float(g) for g in r.uniform(0.92, 1.08, 3)),
        gamma=float(r.uniform(0.85, 1.15)), noise=float(r.uniform(0.0, 0.008)), blur=float(r.uniform(0.0, 0.8)),
    )


def draw_tts(r: np.random.Generator, engine: str) -> dict:
    voices = FLITE_VOICES[engine]
    text = tuple(str(s) for s in r.choice(SENTENCES, size=4, replace=False))
    return {"tts_voice": str(voices[r.integers(len(voices))]), "tts_text": text,
            "params": {"stretch": float(r.uniform(0.85, 1.2)), "f0": float(r.uniform(90, 220)),
                       "band_ratio": float(r.uniform(0.9, 1.0))}}


def draw_swap(r: np.random.Generator, method: str) -> dict:
    if method == "face_swap_alpha_ellipse":
        return {"feather": float(r.uniform(0.04, 0.12)), "scale": float(r.uniform(0.9, 1.1))}
    if method == "face_swap_poisson_hull":
        return {"dilate": float(r.uniform(0.0, 0.12)), "mixed": float(r.random() < 0.3)}
    return {"res": float(r.uniform(40, 96)), "jitter": float(r.uniform(0.01, 0.04)),
            "feather": float(r.uniform(0.05, 0.12))}


def draw_voice_conversion(r: np.random.Generator, method: str) -> dict:
    if method == "vc_channel_vocoder":
        return {"noise_carrier": float(r.random() < 0.4), "bands": float(r.integers(16, 33))}
    if method == "vc_lpc":
        return {"order": float(r.integers(10, 21)), "f0_shift": float(r.uniform(0.75, 1.35))}
    if method == "vc_formant_shift":
        factor = float(r.uniform(0.12, 0.28))
        return {"factor": 1 + factor if r.random() < 0.5 else 1 / (1 + factor)}
    return {"warp": float(r.uniform(0.85, 1.18)), "iterations": float(r.integers(8, 25))}


def draw_fake(method: str, r: np.random.Generator, identity: Identity, pool: list[Identity],
              nuisance: Nuisance, catalog: Catalog) -> Fake:
    others = [i for i in pool if i.name != identity.name]
    seconds = nuisance.duration - nuisance.leading_silence

    def donor() -> Identity:
        other_photo = [i for i in others if i.photo != identity.photo]
        choices = other_photo if other_photo and r.random() < 0.7 else others
        return choices[int(r.integers(len(choices)))]

    if method in SWAPS:
        return Fake(visual=method, donor=donor(), params=tuple(draw_swap(r, method).items()))
    if method in ("lip_sync_dub", "lip_sync_lowres_mouth", "lip_sync_viseme"):
        params = {"lip_sync_dub": {},
                  "lip_sync_lowres_mouth": {"res": float(r.uniform(32, 72)), "lag": float(r.uniform(0, 0.08))},
                  "lip_sync_viseme": {"levels": float(r.integers(3, 6)), "hold": float(r.integers(2, 4)),
                                      "gain": float(r.uniform(0.9, 1.1))}}[method]
        return Fake(visual="" if method == "lip_sync_dub" else method,
                    heard_speech=draw_speech(r, catalog[identity.voice], seconds),
                    mouth_follows_heard=method != "lip_sync_dub", params=tuple(params.items()))
    if method == "av_offset_constant":
        offset = float(r.choice([-1, 1]) * r.uniform(0.2, 0.8))
        return Fake(av_offset=offset, av_offset_end=offset)
    if method == "av_offset_drift":
        return Fake(av_offset=float(r.uniform(-0.05, 0.05)), av_offset_end=float(r.choice([-1, 1]) * r.uniform(0.3, 0.8)))
    if method in VOICE_CONVERSIONS:
        return Fake(audio=method, params=tuple(draw_voice_conversion(r, method).items()))
    if method in TTS_ENGINES:  # real video, the audio replaced: the mouth still says the filmed words
        tts = draw_tts(r, method)
        return Fake(audio=method, mouth_follows_heard=False, tts_voice=tts["tts_voice"], tts_text=tts["tts_text"],
                    params=tuple(tts["params"].items()))
    if method == "both_swap_vc":
        swap, vc = SWAPS[r.integers(len(SWAPS))], VOICE_CONVERSIONS[r.integers(len(VOICE_CONVERSIONS))]
        params = {**draw_swap(r, swap), **draw_voice_conversion(r, vc)}
        return Fake(visual=swap, audio=vc, donor=donor(), params=tuple(params.items()))
    if method == "both_lipsync_tts":  # text-to-speech and the mouth re-rendered to it
        engine = TTS_ENGINES[r.integers(len(TTS_ENGINES))]
        tts = draw_tts(r, engine)
        params = {**tts["params"], "res": float(r.uniform(32, 72)), "lag": float(r.uniform(0, 0.08))}
        return Fake(visual="lip_sync_lowres_mouth", audio=engine, tts_voice=tts["tts_voice"],
                    tts_text=tts["tts_text"], params=tuple(params.items()))
    raise ValueError(f"unknown method {method}")


def cycle(r: np.random.Generator, items: tuple[str, ...] | list[str]):
    """An endless round-robin over ``items`` in a random order, from a random start."""
    order = [items[k] for k in r.permutation(len(items))]
    k = int(r.integers(len(order)))
    while True:
        yield order[k % len(order)]
        k += 1


def assign_labels(seed: int, sizes: dict[str, int]) -> list[tuple[str, int, str]]:
    """(split, target, method) per video index: about half fake in every split, families spread evenly and,
    within a family, its methods."""
    videos = sum(sizes.values())
    r = rng(seed, 0)
    order = r.permutation(videos)
    assignment: list[tuple[str, int, str]] = [("", 0, "")] * videos
    start = 0
    for split, size in sizes.items():
        fakes = size // 2 + (int(r.integers(2)) if size % 2 else 0)
        targets = r.permutation([1] * fakes + [0] * (size - fakes))
        families = cycle(r, list(FAMILIES))
        methods = {family: cycle(r, FAMILIES[family][1]) for family in FAMILIES}
        for index, target in zip(order[start:start + size], targets, strict=True):
            method = next(methods[next(families)]) if target else REAL
            assignment[int(index)] = (split, int(target), method)
        start += size
    return assignment


def plan_dataset(seed: int, videos: int, catalog: Catalog, lfw_faces: list[int],
                 shares: tuple[float, ...] = DEFAULT_SHARES) -> list[VideoSpec]:
    if len(lfw_faces) < len(SPLIT_NAMES):
        raise ValueError("too few usable LFW faces")
    sizes = split_sizes(videos, shares)
    pools = identity_pools(seed, sizes, catalog, lfw_faces, shares)
    assignment = assign_labels(seed, sizes)
    position = {split: 0 for split in sizes}
    specs = []
    for index, (split, target, method) in enumerate(assignment):
        nuisance = draw_nuisance(rng(seed, index, NUISANCE))
        content = rng(seed, index, CONTENT)
        pool = pools[split]
        # identities in turn, by the video's rank in its split (which ignores the label)
        identity = pool[position[split] % len(pool)]
        position[split] += 1
        speech = draw_speech(content, catalog[identity.voice], nuisance.duration - nuisance.leading_silence)
        family = METHOD_FAMILY.get(method, REAL)
        category = REAL_CATEGORY if method == REAL else FAMILIES[family][0]
        fake = Fake() if method == REAL else draw_fake(method, rng(seed, index, FAKE), identity, pool, nuisance,
                                                       catalog)
        specs.append(VideoSpec(seed=seed, index=index, name=video_name(seed, index), split=split, target=target,
                               family=family, method=method, category=category, nuisance=nuisance,
                               camera=draw_camera(rng(seed, index, CAMERA)), identity=identity, speech=speech,
                               fake=fake))
    return specs
