"""Where the files the pipeline needs (face-detector model, media and tools for the synthetic dataset) live.

They are fetched once by ``python -m scripts.setup_assets`` (run by ``make install`` and the Docker build), checked
against the sha256 sums below (single files) or in that script (Debian packages), and never downloaded at run
time.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

FACE_MODEL = "models/face_detection_full_range_sparse.tflite"
SPEECH_DIR = "media/voices"  # <voice>/<recording>.wav, one folder per speaker
SPEECH_MANIFEST = f"{SPEECH_DIR}/voices.csv"  # file,voice,language,source,seconds,sample_rate
FLITE_ROOT = "tools/flite"  # Debian's flite + libflite1 + libasound2, unpacked (bin under usr/bin)
INSTALL_HINT = "run `make install` (or `python -m scripts.setup_assets`); set AVDF_CACHE if the assets live elsewhere"

# relative path in the cache -> sha256; the sources are named in scripts/setup_assets.py
CHECKSUMS: dict[str, str] = {
    FACE_MODEL: "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
    "media/faces/astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    "media/faces/lfw_subset.npy": "9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c",
    "media/backgrounds/brick.png": "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf",
    "media/backgrounds/grass.png": "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89",
    "media/backgrounds/gravel.png": "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12",
}


def cache_dir() -> Path:
    """The asset cache: ``$AVDF_CACHE`` if set, else ``~/.cache/avdeepfake``."""
    return Path(os.environ.get("AVDF_CACHE", Path.home() / ".cache" / "avdeepfake")).expanduser()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def asset_path(relative: str) -> Path:
    """Path of an installed asset; a clear error says how to install it when it is missing."""
    path = cache_dir() / relative
    if not path.exists():
        raise FileNotFoundError(f"asset {path} is missing: {INSTALL_HINT}")
    return path


def face_model_path() -> Path:
    return asset_path(FACE_MODEL)


def speech_manifest() -> Path:
    """The speech recordings' manifest (one row per recording, with its speaker); the files lie beside it."""
    return asset_path(SPEECH_MANIFEST)


def flite_binary() -> Path:
    """The flite text-to-speech program unpacked from Debian (run it with ``flite_env()``)."""
    return asset_path(f"{FLITE_ROOT}/usr/bin/flite")


def flite_env() -> dict[str, str]:
    """The environment that makes the unpacked flite find its own libraries."""
    libs = sorted((cache_dir() / FLITE_ROOT / "usr/lib").glob("*-linux-gnu"))
    return {"LD_LIBRARY_PATH": ":".join(map(str, libs)), "PATH": "/usr/bin:/bin"}
