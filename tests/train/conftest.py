"""Tiny shards written directly in the contract's member format (json + faces.jpgs + mouths.jpgs + audio.npy +
cls), so the train tests need neither the synthetic video generator nor shards.pack. Fakes carry a learnable cue (a
bright patch on the face crops and a higher-pitched tone), so a few optimizer steps lower the loss."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from shards.format import FRAMES_EXT, MOUTHS_EXT, bundle_jpegs, encode_jpeg
from shards.layout import FORMAT_VERSION

ROOT = Path(__file__).resolve().parents[2]
# 32-px mouths, not 16: torch 2.11's CPU bf16 convolution returns garbage weight gradients (up to 1e33) for a 1x1
# map into a padded stride-2 3x3 convolution, which a 16-px crop reaches in the tiny ResNet's last stage.
WINDOWS, WINDOW_FRAMES, SIZE, MOUTH, SECONDS, RATE, FPS = 2, 2, 32, 32, 1.0, 16_000, 25.0
FRAMES = WINDOWS * WINDOW_FRAMES
# configs/tiny.yaml shrunk further: 2 windows of 2 frames, 32-px crops, 1 s of audio, no workers, a couple of short
# epochs.
TINY_TEST_OVERRIDES = [
    f"data.windows={WINDOWS}", f"data.window_frames={WINDOW_FRAMES}", f"data.size={SIZE}", f"data.mouth_size={MOUTH}",
    f"data.max_clip_seconds={SECONDS}", "data.workers=0", "data.shuffle_buffer=8", "train.epochs=2",
    "train.steps_per_epoch=3",
    "train.batch_size=4", "train.eval_batch_size=5", "train.warmup_steps=0", "train.log_every_steps=2",
    "log.thop=false", "log.plots=true",
]


def make_sample(index: int, label: int, rng: np.random.Generator, has_face: bool = True,
                has_audio: bool = True) -> dict:
    """A sample of the shard format (shards.format) with a learnable cue in fakes: a bright patch on the face and
    mouth crops and a higher-pitched tone."""
    name = f"{index:032x}.mp4"
    key = name.replace(".", "_")
    span = SECONDS
    starts = [(w + 0.5) * span / WINDOWS - WINDOW_FRAMES / FPS / 2 for w in range(WINDOWS)]
    times = [s + (k + 0.5) / FPS for s in starts for k in range(WINDOW_FRAMES)]
    meta = {"format": FORMAT_VERSION, "video_name": name, "label": label, "windows": WINDOWS,
            "window_frames": WINDOW_FRAMES, "frames": FRAMES, "fps": FPS, "size": SIZE, "mouth_size": MOUTH,
            "margin": 0.3, "mouth_scale": 0.5,
            "clip_start": 0.0, "clip_end": span, "window_starts": starts, "times": times, "frame_times": times,
            "boxes": [[0, 0, SIZE, SIZE] if has_face else None] * FRAMES, "scores": [0.9] * FRAMES,
            "fallbacks": ([] if has_face else ["no_face"]) + ([] if has_audio else ["no_audio"]),
            "has_face": has_face, "has_audio": has_audio, "audio_sample_rate": RATE,
            "source": {"duration": span, "fps": FPS, "width": 64, "height": 64, "has_audio": has_audio,
                       "audio_sample_rate": RATE, "audio_channels": 1, "num_faces": int(has_face)}}
    sample = {"__key__": key, "json": json.dumps(meta).encode(), "cls": str(label).encode()}
    for ext, side in ((FRAMES_EXT, SIZE), (MOUTHS_EXT, MOUTH)):
        jpegs = []
        for _ in range(FRAMES):
            crop = rng.integers(40, 120, (side, side, 3), dtype=np.uint8)
            if label == 1:
                crop[side // 4:side // 2, side // 4:3 * side // 4] = 230
            jpegs.append(encode_jpeg(crop, 95))
        sample[ext] = bundle_jpegs(jpegs)
    t = np.arange(int(span * RATE)) / RATE
    tone = 0.3 * np.sin(2 * np.pi * (1500.0 if label == 1 else 300.0) * t) + 0.02 * rng.standard_normal(t.size)
    audio = (tone * 32767).astype(np.int16) if has_audio else np.zeros(0, np.int16)
    buffer = io.BytesIO()
    np.save(buffer, audio)
    sample["audio.npy"] = buffer.getvalue()
    return sample


def write_shards(directory: Path, n: int, per_shard: int, seed: int, start: int = 0) -> list[str]:
    """n samples (alternating labels; sample 1 has no face, sample 2 no audio) in shards of per_shard."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    keys = []
    for shard in range((n + per_shard - 1) // per_shard):
        with wds.TarWriter(str(directory / f"shard-{shard:06d}.tar")) as sink:
            for i in range(shard * per_shard, min(n, (shard + 1) * per_shard)):
                sample = make_sample(start + i, i % 2, rng, has_face=i != 1, has_audio=i != 2)
                sink.write(sample)
                keys.append(json.loads(sample["json"])["video_name"])
    return keys


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("train_shards")
    train_keys = write_shards(root / "train", 16, 4, seed=1)
    val_keys = write_shards(root / "val", 11, 3, seed=2, start=1000)
    return {"train": root / "train", "val": root / "val", "train_keys": train_keys, "val_keys": val_keys}


def run_cli(args: list, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """A project command from the repo root, one thread per process (the CPU is shared)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
                "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run([str(a) for a in args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {result.returncode}\n--- stdout\n"
                             f"{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}")
    return result


def train_cmd(shards: dict, out: Path, *extra: str) -> list:
    return [sys.executable, "-m", "train", "--config", "configs/tiny.yaml", "--train-shards", shards["train"],
            "--val-shards", shards["val"], "--out", out, *TINY_TEST_OVERRIDES, *extra]


def read_samples(directory: Path) -> list[dict]:
    """Every sample of a shard folder as the reader yields it, in shard order."""
    import tarfile

    samples = []
    for shard in sorted(Path(directory).glob("*.tar")):
        with tarfile.open(shard) as tar:
            members: dict = {}
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                members.setdefault(key, {"__key__": key})[ext] = tar.extractfile(member).read()
        samples += [decoded(s) for s in members.values()]
    return samples


def decoded(sample: dict) -> dict:
    """A written sample as the reader yields it (shards.format.decode: the one decoder)."""
    from shards.format import decode

    return decode(sample)
