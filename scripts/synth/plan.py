"""What each synthetic video will be: splits, labels, methods and every generation parameter.

Everything is drawn here, in the main process, from random streams keyed by (seed, video index, stream), so a
video's content never depends on the worker that renders it. The nuisance parameters a detector could key on
(duration, resolution, fps, audio format, leading silence, compression) and the content (identity, background,
speech) are drawn from their own streams, independently of the label: genuine and fake videos share one
distribution for all of them. Only the ``fake`` stream depends on the method.
"""

from __future__ import annotations

import hashlib
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = (("train", "train_labels.csv", 0.6), ("val", "validation_labels.csv", 0.2),
          ("test", "test_labels.csv", 0.2))
MIN_PER_SPLIT = 2  # one genuine and one fake
MIN_VIDEOS = MIN_PER_SPLIT * len(SPLITS)

REAL = ("real", "RealVideo-RealAudio")
# method -> FakeAVCeleb category
METHODS: dict[str, str] = {
    "face_swap": "FakeVideo-RealAudio",  # inner face from another identity, mouth driven by the real audio
    "lip_sync": "FakeVideo-RealAudio",  # mouth driven by a different utterance while the real audio plays
    "av_offset": "FakeVideo-RealAudio",  # mouth driven by the real audio shifted by 0.2-0.8 s
    "voice_synth": "RealVideo-FakeAudio",  # vocoded / resynthesised speech, mouth follows it
    "swap_voice": "FakeVideo-FakeAudio",  # face swap + vocoded speech, mouth follows the fake audio
}
SWAP_ARTIFACTS = ("seam", "colour", "resolution")
AUDIO_FAKES = ("channel_buzz", "channel_noise", "lpc_buzz", "spectral_shift")

RESOLUTIONS = ((320, 240), (426, 240), (480, 360), (640, 360), (640, 480), (854, 480), (960, 540), (1280, 720))
FPS = (25, 30)
SAMPLE_RATES = (16000, 22050, 24000, 32000, 44100, 48000)
AUDIO_BITRATES = (48000, 64000, 96000, 128000)
MIN_SECONDS, MAX_SECONDS = 2.0, 6.0
MAX_LEADING_SILENCE = 0.8
CRF_RANGE = (18, 30)
TEXTURES = ("brick", "grass", "gravel")
BACKGROUNDS = (*TEXTURES, "gradient", "noise")
PHOTOS = ("astronaut", "grace_hopper")
LFW_FACES = 100  # the first 100 images of lfw_subset.npy are faces, the other 100 are not

# random streams, combined with (seed, index)
NUISANCE, CONTENT, FAKE, RENDER = 1, 2, 3, 4


def rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


@dataclass(frozen=True)
class Nuisance:
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
class Prompt:
    """A stretch of one real speech recording: ``length`` s from ``start`` s, then ``gap`` s of silence."""

    file: str
    start: float
    length: float
    gap: float


@dataclass(frozen=True)
class Identity:
    """A face: one source photo, or a morph of two (``alpha`` = weight of the second), plus appearance changes."""

    bases: tuple[str, ...]
    alpha: float = 0.0
    mirror: bool = False
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    light_angle: float = 0.0
    light_strength: float = 0.0
    tone: tuple[float, float, float] = (1.0, 0.8, 0.68)  # skin tone given to grayscale (LFW) faces

    @property
    def name(self) -> str:
        if len(self.bases) == 1:
            return self.bases[0]
        return f"morph({self.bases[0]}+{self.bases[1]}@{self.alpha:.2f})"


@dataclass(frozen=True)
class Layout:
    """Where the head sits in the frame and what is behind it."""

    background: str
    face_size: float  # eye distance / frame height
    face_x: float  # head centre / frame width
    face_y: float  # head centre / frame height


@dataclass(frozen=True)
class Fake:
    donor: Identity | None = None  # face swap: the pasted face
    swap_artifact: str = ""
    audio_method: str = ""  # voice synthesis kind
    mouth_speech: tuple[Prompt, ...] = ()  # lip sync: the utterance that drives the mouth
    av_offset: float = 0.0  # seconds the mouth lags (+) or leads (-) the audio


@dataclass(frozen=True)
class VideoSpec:
    seed: int
    index: int
    name: str
    split: str
    target: int
    method: str
    category: str
    nuisance: Nuisance
    identity: Identity
    layout: Layout
    speech: tuple[Prompt, ...]
    fake: Fake = field(default_factory=Fake)

    def meta_row(self) -> dict[str, object]:
        n, f = self.nuisance, self.fake
        return {
            "video_name": self.name, "split": self.split, "target": self.target, "category": self.category,
            "method": self.method, "identity": self.identity.name,
            "donor": f.donor.name if f.donor else "", "swap_artifact": f.swap_artifact,
            "audio_method": f.audio_method, "speech_source": prompts_text(self.speech),
            "mouth_source": prompts_text(f.mouth_speech), "av_offset": round(f.av_offset, 3),
            "duration": round(n.duration, 4), "frames": n.frames, "width": n.width, "height": n.height,
            "fps": n.fps, "sample_rate": n.sample_rate, "channels": n.channels,
            "leading_silence": round(n.leading_silence, 3), "crf": n.crf, "audio_bitrate": n.audio_bitrate,
            "mirror": int(self.identity.mirror), "background": self.layout.background,
            "face_size": round(self.layout.face_size, 4), "seed": self.seed, "index": self.index,
        }


def prompts_text(prompts: tuple[Prompt, ...]) -> str:
    return "+".join(f"{p.file}[{p.start:.2f}:{p.start + p.length:.2f}]" for p in prompts)


def video_name(seed: int, index: int) -> str:
    return hashlib.blake2b(f"avdf-synthetic:{seed}:{index}".encode(), digest_size=16).hexdigest() + ".mp4"


def split_sizes(videos: int) -> dict[str, int]:
    if videos < MIN_VIDEOS:
        raise ValueError(f"need at least {MIN_VIDEOS} videos so that every split has a genuine and a fake one")
    sizes = {name: max(MIN_PER_SPLIT, round(videos * share)) for name, _, share in SPLITS[1:]}
    sizes = {SPLITS[0][0]: videos - sum(sizes.values()), **sizes}
    return sizes


def speech_catalog(files: list[Path]) -> dict[str, float]:
    """Recording name -> duration in seconds, leaving out silent recordings (the prompt set has some)."""
    catalog = {}
    for path in files:
        with wave.open(str(path)) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
            if len(pcm) and np.abs(pcm.astype(np.int32)).max() > 32768 * 10 ** (-40 / 20):
                catalog[path.name] = w.getnframes() / w.getframerate()
    if not catalog:
        raise ValueError(f"no usable speech recording among {len(files)} files in {files[0].parent}")
    return catalog


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


def draw_base(r: np.random.Generator, lfw_faces: list[int], exclude: tuple[str, ...] = ()) -> str:
    while True:
        base = str(r.choice(PHOTOS)) if r.random() < 0.6 else f"lfw{int(r.choice(lfw_faces)):03d}"
        if base not in exclude:
            return base


def draw_identity(r: np.random.Generator, lfw_faces: list[int], exclude: tuple[str, ...] = ()) -> Identity:
    """A photo (45%), a morph of a photo with another face (40%), or a low-resolution LFW face (15%)."""
    kind = r.random()
    photos = tuple(p for p in PHOTOS if p not in exclude)
    if kind < 0.85 and photos:
        bases: tuple[str, ...] = (str(r.choice(photos)),)
    else:
        bases = (f"lfw{int(r.choice([k for k in lfw_faces if f'lfw{k:03d}' not in exclude])):03d}",)
    alpha = 0.0
    if 0.45 <= kind < 0.85 and photos:
        bases = (bases[0], draw_base(r, lfw_faces, (*exclude, bases[0])))
        alpha = float(r.uniform(0.3, 0.7))
    tones = ((1.0, 0.8, 0.68), (0.92, 0.7, 0.55), (0.7, 0.5, 0.38), (0.98, 0.84, 0.76))
    tone = np.array(tones[r.integers(len(tones))]) * r.uniform(0.95, 1.05, 3)
    return Identity(
        bases=bases, alpha=alpha, mirror=bool(r.random() < 0.5),
        gains=tuple(float(g) for g in r.uniform(0.88, 1.12, 3)), gamma=float(r.uniform(0.8, 1.25)),
        light_angle=float(r.uniform(0, 2 * np.pi)), light_strength=float(r.uniform(0.0, 0.3)),
        tone=tuple(float(t) for t in tone),
    )


def draw_layout(r: np.random.Generator) -> Layout:
    return Layout(background=str(r.choice(BACKGROUNDS)), face_size=float(r.uniform(0.10, 0.18)),
                  face_x=float(r.uniform(0.38, 0.62)), face_y=float(r.uniform(0.45, 0.55)))


def draw_speech(r: np.random.Generator, catalog: dict[str, float], seconds: float) -> tuple[Prompt, ...]:
    """Real recordings, separated by short pauses, until ``seconds`` are filled."""
    names = sorted(catalog)
    weights = np.array([catalog[n] for n in names])  # every second of recorded speech equally likely
    weights /= weights.sum()
    prompts: list[Prompt] = []
    left = seconds
    while left > 0.05:
        name = names[r.choice(len(names), p=weights)]
        available = catalog[name]
        length = min(available, left)
        start = float(r.uniform(0, available - length)) if available > length else 0.0
        gap = float(r.uniform(0.15, 0.5))
        prompts.append(Prompt(file=name, start=start, length=length, gap=gap))
        left -= length + gap
    return tuple(prompts)


def draw_fake(method: str, r: np.random.Generator, identity: Identity, nuisance: Nuisance,
              catalog: dict[str, float], lfw_faces: list[int]) -> Fake:
    if method in ("face_swap", "swap_voice"):
        donor = draw_identity(r, lfw_faces, exclude=identity.bases)
        artifact = str(r.choice(SWAP_ARTIFACTS))
        audio = str(r.choice(AUDIO_FAKES)) if method == "swap_voice" else ""
        return Fake(donor=donor, swap_artifact=artifact, audio_method=audio)
    if method == "lip_sync":
        return Fake(mouth_speech=draw_speech(r, catalog, nuisance.duration - nuisance.leading_silence))
    if method == "av_offset":
        return Fake(av_offset=float(r.choice([-1, 1]) * r.uniform(0.2, 0.8)))
    if method == "voice_synth":
        return Fake(audio_method=str(r.choice(AUDIO_FAKES)))
    raise ValueError(f"unknown method {method}")


def assign_labels(seed: int, videos: int) -> list[tuple[str, int, str]]:
    """(split, target, method) per video index: about half fake in every split, methods spread evenly."""
    r = rng(seed, 0)
    order = r.permutation(videos)
    assignment: list[tuple[str, int, str]] = [("", 0, "")] * videos
    start = 0
    methods = list(METHODS)
    for split, size in split_sizes(videos).items():
        fakes = size // 2 + (int(r.integers(2)) if size % 2 else 0)
        targets = r.permutation([1] * fakes + [0] * (size - fakes))
        cycle = [methods[k] for k in r.permutation(len(methods))]
        offset = int(r.integers(len(methods)))
        k = 0
        for index, target in zip(order[start:start + size], targets, strict=True):
            method = REAL[0]
            if target:
                method = cycle[(offset + k) % len(cycle)]
                k += 1
            assignment[int(index)] = (split, int(target), method)
        start += size
    return assignment


def plan_dataset(seed: int, videos: int, catalog: dict[str, float], lfw_faces: list[int]) -> list[VideoSpec]:
    if not lfw_faces:
        raise ValueError("no usable LFW face")
    specs = []
    for index, (split, target, method) in enumerate(assign_labels(seed, videos)):
        nuisance = draw_nuisance(rng(seed, index, NUISANCE))
        content = rng(seed, index, CONTENT)
        identity = draw_identity(content, lfw_faces)
        layout = draw_layout(content)
        speech = draw_speech(content, catalog, nuisance.duration - nuisance.leading_silence)
        category = REAL[1] if method == REAL[0] else METHODS[method]
        fake = Fake() if method == REAL[0] else draw_fake(
            method, rng(seed, index, FAKE), identity, nuisance, catalog, lfw_faces)
        specs.append(VideoSpec(seed=seed, index=index, name=video_name(seed, index), split=split, target=target,
                               method=method, category=category, nuisance=nuisance, identity=identity,
                               layout=layout, speech=speech, fake=fake))
    return specs

