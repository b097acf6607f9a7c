"""Static checks of the Dockerfile; `make docker-check` (python -m scripts.docker_check, in CI) builds and runs it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    return dict(r.split("==", 1) for r in requirements if "==" in r)


def test_every_copy_source_exists():
    for keyword, args in instructions():
        if keyword != "COPY" or "--from=" in args:
            continue
        *sources, _destination = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile COPY source {source} does not exist"


def test_python_stack_comes_from_pyproject():
    """The image installs through scripts/install.sh (pyproject's pins); any pin it names must agree."""
    runs = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    assert "scripts/install.sh" in runs
    install_sh = (ROOT / "scripts" / "install.sh").read_text()
    pins = pyproject_pins()
    for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\"']*)", DOCKERFILE.read_text() + install_sh):
        if name in pins:
            assert pins[name] == version, f"{name}=={version} in the image, {pins[name]} in pyproject.toml"
    assert pins["torch"] == "2.11.0" and pins["torchaudio"] == "2.11.0"


def test_base_image_is_pinned_by_dated_tag_and_digest():
    base = next(args for keyword, args in instructions() if keyword == "ARG" and args.startswith("BASE_IMAGE="))
    image = base.split("=", 1)[1]
    assert re.fullmatch(r"debian:bookworm-\d{8}@sha256:[0-9a-f]{64}", image), image
    stages = [args for keyword, args in instructions() if keyword == "FROM"]
    assert stages and all(args.split()[0] == "${BASE_IMAGE}" for args in stages)


def test_code_is_copied_after_the_python_stack():
    """A code-only change must not reinstall the dependencies (layer order)."""
    steps = instructions()
    copy_code = next(i for i, (k, a) in enumerate(steps) if k == "COPY" and a.split()[0] == ".")
    copy_venv = next(i for i, (k, a) in enumerate(steps) if k == "COPY" and "/opt/venv" in a)
    deps = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "--deps-only" in a)
    assert deps < copy_venv < copy_code
    assert not any(k == "COPY" and a.split()[0] in ("shards/", "train/", "infer/", ".") for k, a in steps[:deps])


def test_entrypoints_exist_and_are_executable():
    text = DOCKERFILE.read_text()
    for script in ("docker/train.sh", "docker/infer.sh"):
        path = ROOT / script
        assert path.exists() and os.access(path, os.X_OK), f"{script} must exist and be executable"
        assert f"/app/{script}" in text, f"the image must put {script} on PATH"
        assert path.read_text().splitlines()[0].startswith("#!"), f"{script} needs a shebang"
        assert "set -euo pipefail" in path.read_text()
    assert "tini" in text and "PYTHONUNBUFFERED=1" in text and re.search(r"^USER ", text, re.M)


def test_dockerignore_keeps_data_and_envs_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in (".venv", "runs", "data", ".git"):
        assert pattern in ignored


@pytest.mark.skipif(shutil.which("hadolint") is None and not (ROOT / ".venv/bin/hadolint").exists(),
                    reason="hadolint not installed")
def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(ROOT / ".venv/bin/hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
