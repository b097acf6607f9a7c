"""Build the reproduction image from this checkout and run it the way the organizers do (``make docker-check``).

    python -m scripts.docker_check [--keep] [--videos 24]

1. A Docker daemon: the one ``DOCKER_HOST`` (or the default socket) answers, else a private ``dockerd`` with its
   own data root in a temporary folder, stopped and deleted at the end (``apt-get install docker.io debootstrap``
   first when the engine is missing and this runs as root).
2. The base image the Dockerfile pins (``BASE_IMAGE``): pulled; where no registry is reachable, a stand-in of the
   same Debian release is made with debootstrap and tagged with the pinned name. Only the stand-in carries this
   machine's package-index and pip certificate settings; the Dockerfile itself is built unchanged.
3. ``docker build`` of the checkout (tracked and untracked, not ignored files), then again after a code-only
   change (layer order: only the last layers rebuild).
4. As the image's non-root user, data mounted read-only, ``--network none``:
   the detector self-check; ``train.sh`` (tiny config, ``score.rule=mean``) on a small synthetic dataset, stopped
   after a few steps, and again with ``RESUME=1`` (no repacking, resumes, finishes); ``infer.sh`` with that
   checkpoint, byte-compared with this machine's ``python -m infer`` on the same videos and checkpoint (and scored
   by the checkpoint's score rule); ``infer.sh`` with a checkpoint root
   wrote here under umask 077, mounted read-only; ``infer.sh`` on the bad-input folder
   (``scripts.synth.bad_inputs``): a row per video, the failures file and exit code 4.
It prints each step's time and ends with one JSON line; exit 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "avdeepfake:docker-check"
CONTAINER_UID = 1000
EPOCHS, STEPS_PER_EPOCH = 2, 2
# score.rule=mean: the container fits the late fusion's statistics in training and applies them in infer.sh
TRAIN_OVERRIDES = ["score.rule=mean", f"train.epochs={EPOCHS}", f"train.steps_per_epoch={STEPS_PER_EPOCH}",
                   "train.batch_size=4", "train.eval_batch_size=8"]
STOP_AT_STEP = 3  # the first train.sh run stops here (after epoch 1 saved a best checkpoint); RESUME=1 finishes
RUN_TIMEOUT = 1800
STAND_IN_LABEL = "avdeepfake.stand-in"


class CheckFailed(Exception):
    """One check failed; the message says which and why (with the tail of what the container printed)."""


def log(message: str) -> None:
    print(f"[docker-check] {message}", flush=True)


def run(cmd: list, timeout: float = RUN_TIMEOUT, check: bool = True, quiet: bool = False,
        **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capturing its output; CheckFailed with the output's tail when it fails and ``check``."""
    cmd = [str(c) for c in cmd]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as error:
        raise CheckFailed(f"{' '.join(cmd[:6])} ... did not finish within {timeout:.0f} s") from error
    if not quiet:
        for line in (result.stdout + result.stderr).splitlines()[-4:]:
            print(f"    | {line}", flush=True)
    if check and result.returncode != 0:
        raise CheckFailed(f"{' '.join(cmd[:8])} ... exited {result.returncode}\n{tail(result)}")
    return result


def tail(result: subprocess.CompletedProcess, lines: int = 40) -> str:
    text = (result.stdout or "") + (result.stderr or "")
    return "\n".join("    | " + line for line in text.splitlines()[-lines:])


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        log(f"{name} ...")
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 1)
            log(f"{name}: {self.seconds[name]} s")


# --- the engine -------------------------------------------------------------------------------------------------
def docker(*args, **kwargs) -> subprocess.CompletedProcess:
    return run(["docker", *args], **kwargs)


def daemon_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return run(["docker", "info", "--format", "{{.ServerVersion}}"], check=False, quiet=True,
               timeout=30).returncode == 0


def ensure_engine_installed() -> None:
    if shutil.which("dockerd") and shutil.which("docker") and shutil.which("debootstrap"):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise CheckFailed("no Docker engine here: install docker.io and debootstrap (Debian packages) or start a "
                          "Docker daemon and set DOCKER_HOST, then rerun")
    log("installing the Debian packages docker.io and debootstrap")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], env=env, quiet=True)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "docker.io", "debootstrap"], env=env,
        quiet=True)


@contextlib.contextmanager
def private_daemon(parent: Path) -> Iterator[None]:
    """A dockerd of our own (its data root a new folder in ``parent``); stopped, unmounted and deleted on exit."""
    root = Path(tempfile.mkdtemp(prefix="avdf-dockerd-", dir=parent))
    socket = root / "docker.sock"
    logfile = open(root / "dockerd.log", "w")
    process = subprocess.Popen(
        ["dockerd", "--storage-driver=overlay2", "--iptables=false", "--ip6tables=false", "--bridge=none",
         "--data-root", root / "data", "--exec-root", root / "exec", "-H", f"unix://{socket}",
         "-p", root / "docker.pid"], stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
    previous = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = f"unix://{socket}"
    try:
        for _ in range(120):
            if process.poll() is not None:
                raise CheckFailed(f"dockerd exited {process.returncode}: {(root / 'dockerd.log').read_text()[-2000:]}")
            if socket.exists() and daemon_answers():
                break
            time.sleep(0.5)
        else:
            raise CheckFailed("dockerd did not answer within 60 s")
        log(f"started a private dockerd (pid {process.pid}, data root {root / 'data'})")
        yield
    finally:
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        logfile.close()
        unmount_below(root)
        shutil.rmtree(root, ignore_errors=True)
        if root.exists():
            raise CheckFailed(f"could not remove the private daemon's folder {root}")
        log(f"stopped the private dockerd and removed {root}")


def unmount_below(root: Path) -> None:
    """Lazily unmount what the daemon left mounted under ``root`` (e.g. its network namespace), deepest first."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounts if m.startswith(f"{root}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


# --- the base image ---------------------------------------------------------------------------------------------
def pinned_base() -> str:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("ARG BASE_IMAGE="):
            return line.split("=", 1)[1].strip()
    raise CheckFailed("the Dockerfile has no `ARG BASE_IMAGE=` line")


def base_image(scratch: Path) -> tuple[str, str]:
    """(the BASE_IMAGE build argument to use, where it came from: local | pulled | stand-in)."""
    pinned = pinned_base()
    name = pinned.split("@", 1)[0]  # debian:bookworm-YYYYMMDD
    for candidate in (pinned, name):
        found = run(["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", candidate], check=False,
                    quiet=True)
        if found.returncode == 0:
            return candidate, "stand-in, made earlier" if STAND_IN_LABEL in found.stdout else "local"
    if run(["docker", "pull", pinned], check=False, quiet=True, timeout=600).returncode == 0:
        return pinned, "pulled"
    log(f"{pinned} cannot be pulled (no registry): building a stand-in of the same release with debootstrap")
    make_stand_in(name, scratch)
    return name, "stand-in"


def host_apt_mirror() -> str:
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and "security" not in words[1]:
                return words[1]
            if words[:1] == ["deb"]:
                url = next((w for w in words[1:] if "://" in w), "")
                if url and "security" not in url:
                    return url
    return "http://deb.debian.org/debian"


def make_stand_in(tag: str, scratch: Path) -> None:
    """debootstrap the release of ``tag`` (debian:<codename>-<date>), add this machine's apt sources and pip
    certificate/index settings (so apt and pip work inside ``docker build`` here), import it as ``tag``."""
    if os.geteuid() != 0:
        raise CheckFailed("building the stand-in base image needs root (debootstrap); run as root or make the "
                          f"pinned base image {tag} available to the daemon")
    codename = tag.split(":", 1)[1].split("-", 1)[0]
    rootfs = scratch / "rootfs"
    run(["debootstrap", "--variant=minbase", codename, rootfs, host_apt_mirror()], quiet=True, timeout=1200)
    apt = rootfs / "etc" / "apt"
    if list(Path("/etc/apt/sources.list.d").glob("*.sources")):
        (apt / "sources.list").unlink(missing_ok=True)
    for source in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        if source.is_file():
            shutil.copy(source, apt / source.relative_to("/etc/apt"))
    for conf in Path("/etc/apt/apt.conf.d").glob("*"):
        if conf.is_file() and "proxy" in conf.read_text().lower():
            shutil.copy(conf, apt / "apt.conf.d" / conf.name)
    write_stand_in_pip_config(rootfs)
    with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
        run(["docker", "import", "--change", f"LABEL {STAND_IN_LABEL}=debootstrap", "-", tag], stdin=tar.stdout,
            quiet=True)
    shutil.rmtree(rootfs, ignore_errors=True)


def write_stand_in_pip_config(rootfs: Path) -> None:
    """This machine's pip index and certificate bundle (a proxy's CA may be in it) as the stand-in's /etc/pip.conf."""
    settings = {}
    listed = run([sys.executable, "-m", "pip", "config", "list"], check=False, quiet=True).stdout
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        settings[key.split(".", 1)[-1]] = value.strip().strip("'\"")
    for key in ("cert", "index-url", "extra-index-url", "trusted-host"):
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env:
            settings[key] = env
    lines = ["[global]"]
    cert = settings.get("cert")
    if cert and Path(cert).is_file():
        shutil.copy(cert, rootfs / "etc" / "avdf-stand-in-ca.crt")
        lines.append("cert = /etc/avdf-stand-in-ca.crt")
    for key in ("index-url", "extra-index-url", "trusted-host"):
        urls = [u for u in settings.get(key, "").split() if key == "trusted-host" or u.startswith("http")]
        if urls:
            lines.append(f"{key} = {' '.join(urls)}")
    (rootfs / "etc" / "pip.conf").write_text("\n".join(lines) + "\n")


# --- the build --------------------------------------------------------------------------------------------------
def copy_context(target: Path) -> Path:
    """The checkout's files (tracked + untracked, not git-ignored) in a folder of their own."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, quiet=True)
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    return target


def build(context: Path, base: str) -> None:
    args = ["docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}", "-t", IMAGE]
    for proxy in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        if os.environ.get(proxy):
            args += ["--build-arg", f"{proxy}={os.environ[proxy]}"]
    run([*args, context], env=dict(os.environ, DOCKER_BUILDKIT="0"), timeout=3600)


def image_size() -> int:
    return int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE, quiet=True).stdout.strip())


# --- the runs ---------------------------------------------------------------------------------------------------
def container(*args, volumes: dict[Path, str] = (), env: dict[str, str] = (), check: bool = True,
              timeout: float = RUN_TIMEOUT, quiet: bool = False) -> subprocess.CompletedProcess:
    """``docker run`` as the image's own (non-root) user, without network, with the given mounts."""
    cmd = ["docker", "run", "--rm", "--network", "none", "--ipc", "host"]
    for host, spec in dict(volumes).items():
        cmd += ["-v", f"{host}:{spec}"]
    for key, value in dict(env).items():
        cmd += ["-e", f"{key}={value}"]
    return run([*cmd, IMAGE, *args], check=check, timeout=timeout, quiet=quiet)


def owned_by_container_user(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, CONTAINER_UID, CONTAINER_UID)
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def host_infer(videos: Path, checkpoint: Path, out: Path) -> None:
    run([sys.executable, "-m", "infer", "--videos", videos, "--checkpoint", checkpoint, "--out", out], cwd=ROOT)


def check_identity() -> dict:
    result = container("sh", "-c", "id -u; python --version")
    uid, python = result.stdout.split("\n", 1)
    if int(uid) != CONTAINER_UID:
        raise CheckFailed(f"the image runs as uid {uid.strip()}, not the non-root user {CONTAINER_UID}")
    return {"uid": int(uid), "python": python.strip()}


def check_detector() -> None:
    result = container("python", "-c", "from shards.faces import self_check; print('face found at', self_check().box())",
                       check=False)
    if result.returncode != 0:
        cause = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise CheckFailed(f"the face detector does not work inside the image: {cause}\n{tail(result, 8)}")


def check_train(data: Path, work: Path) -> None:
    volumes = {data: "/data:ro", work: "/work"}
    env = {"CONFIG": "configs/tiny.yaml"}
    container("train.sh", "/data", "/work", "--", *TRAIN_OVERRIDES, f"train.stop_after_steps={STOP_AT_STEP}",
              volumes=volumes, env=env)
    best = work / "run" / "best" / "model.safetensors"
    if not best.is_file():
        raise CheckFailed(f"train.sh left no best checkpoint ({best})")
    shards = {p: p.stat().st_mtime_ns for p in (work / "shards").rglob("*.tar")}
    if not shards:
        raise CheckFailed("train.sh packed no shards")


def check_resume(data: Path, work: Path) -> None:
    shards = {p: p.stat().st_mtime_ns for p in (work / "shards").rglob("*.tar")}
    result = container("train.sh", "/data", "/work", "--", *TRAIN_OVERRIDES, volumes={data: "/data:ro", work: "/work"},
                       env={"CONFIG": "configs/tiny.yaml", "RESUME": "1"})
    if {p: p.stat().st_mtime_ns for p in shards} != shards:
        raise CheckFailed("RESUME=1 repacked shards that were already complete")
    if f"global step {STOP_AT_STEP}" not in result.stdout + result.stderr:
        raise CheckFailed(f"RESUME=1 did not resume from global step {STOP_AT_STEP}:\n{tail(result)}")
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    if metrics.get("global_step") != EPOCHS * STEPS_PER_EPOCH:
        raise CheckFailed(f"the resumed run ended at step {metrics.get('global_step')}, expected "
                          f"{EPOCHS * STEPS_PER_EPOCH}")


def check_infer_matches_host(data: Path, work: Path, output: Path, scratch: Path) -> None:
    container("infer.sh", "/data/test", volumes={data: "/data:ro", work: "/work:ro", output: "/output"})
    inside = output / "submission.csv"
    host = scratch / "host_submission.csv"
    host_infer(data / "test", work / "run" / "best", host)
    videos = sorted(p.name for p in (data / "test").glob("*.mp4"))
    rows = read_csv(inside)
    if [r["video_name"] for r in rows] != videos:
        raise CheckFailed(f"{inside} does not list every test video once, in order")
    if len({r["score"] for r in rows}) < 2:
        raise CheckFailed(f"every video in {inside} has the same score {rows[0]['score']}: extraction failed "
                          f"inside the image ({(output / 'submission.failures.csv').read_text()[:500]})")
    if inside.read_bytes() != host.read_bytes():
        raise CheckFailed(f"the container's {inside} differs from this machine's python -m infer ({host})")
    details = read_csv(output / "submission.details.csv")
    if not all(r["strongest_evidence"] for r in details if r["status"] == "ok"):
        raise CheckFailed("infer.sh did not score with the checkpoint's score.rule=mean (no strongest_evidence in "
                          "submission.details.csv)")


def check_host_written_checkpoint(data: Path, work: Path, output: Path, scratch: Path) -> None:
    """A checkpoint written here by root under umask 077 (another user than the container's), mounted read-only."""
    run_dir = scratch / "host_run"
    previous = os.umask(0o077)
    try:
        run([sys.executable, "-m", "train", "--config", "configs/tiny.yaml", "--train-shards",
             work / "shards" / "train", "--val-shards", work / "shards" / "val", "--out", run_dir,
             "train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=4", "train.eval_batch_size=8",
             "log.mlflow=false", "log.plots=false"], cwd=ROOT)
    finally:
        os.umask(previous)
    container("infer.sh", "/data/test", "/output/host_checkpoint.csv",
              volumes={data: "/data:ro", run_dir / "best": "/checkpoint:ro", output: "/output"},
              env={"CHECKPOINT": "/checkpoint"})
    host = scratch / "host_checkpoint.csv"
    host_infer(data / "test", run_dir / "best", host)
    if (output / "host_checkpoint.csv").read_bytes() != host.read_bytes():
        raise CheckFailed("infer.sh with the host-written checkpoint differs from this machine's python -m infer")


def check_bad_inputs(work: Path, output: Path, scratch: Path) -> dict:
    from scripts.synth.bad_inputs import FAULT_ENV, inference_expectations, write_bad_inputs

    videos = write_bad_inputs(scratch / "bad_inputs" / "videos")
    subprocess.run(["chmod", "-R", "a+rX", str(videos)], check=True)
    expected = inference_expectations()
    result = container("infer.sh", "/data/bad", "/output/bad.csv", volumes={videos: "/data/bad:ro", work: "/work:ro",
                                                                          output: "/output"},
                       env=FAULT_ENV, check=False)
    if result.returncode != 4:
        raise CheckFailed(f"infer.sh on the bad inputs exited {result.returncode}, expected 4 (more than "
                          f"--max-failed-fraction of the videos failed):\n{tail(result)}")
    rows = read_csv(output / "bad.csv")
    if sorted(r["video_name"] for r in rows) != sorted(expected):
        raise CheckFailed("infer.sh on the bad inputs did not write one row per video")
    failures = {r["video_name"]: r["reason"] for r in read_csv(output / "bad.failures.csv")}
    wanted = {name: flag for name, (status, flag) in expected.items() if status == "failed"}
    wrong = {n: failures.get(n) for n, reason in wanted.items() if not str(failures.get(n, "")).startswith(reason)}
    if wrong or set(failures) != set(wanted):
        raise CheckFailed(f"the failures file does not match the bad inputs: {wrong or sorted(failures)}")
    return {"videos": len(rows), "failed": len(failures), "exit_code": result.returncode}


# --- the whole check --------------------------------------------------------------------------------------------
TIMER = Timer()


def check(scratch: Path, videos: int) -> dict:
    summary: dict = {"image": IMAGE}
    with TIMER("base image"):
        base, source = base_image(scratch)
    summary.update(base_image=base, base_source=source, pinned_base=pinned_base())
    context = copy_context(scratch / "context")
    with TIMER("build"):
        build(context, base)
    summary["image_bytes"] = image_size()
    marker = f"# docker-check: a code-only change {time.time()}"
    with (context / "infer" / "__init__.py").open("a") as f:
        f.write(marker + "\n")
    with TIMER("rebuild after a code-only change"):
        build(context, base)
    if marker not in container("cat", "/app/infer/__init__.py", quiet=True).stdout:
        raise CheckFailed("the rebuilt image does not hold the changed code")
    summary["identity"] = check_identity()
    with TIMER("detector self-check"):
        check_detector()

    data = scratch / "data"
    with TIMER("synthetic dataset (host)"):
        run([sys.executable, "-m", "scripts.make_synthetic_dataset", "--out", data, "--videos", videos, "--seed", 0],
            cwd=ROOT, quiet=True)
    subprocess.run(["chmod", "-R", "a+rX", str(data)], check=True)
    work, output = owned_by_container_user(scratch / "work"), owned_by_container_user(scratch / "output")
    with TIMER("train.sh"):
        check_train(data, work)
    with TIMER("train.sh RESUME=1"):
        check_resume(data, work)
    with TIMER("infer.sh vs host"):
        check_infer_matches_host(data, work, output, scratch)
    with TIMER("infer.sh, host-written checkpoint"):
        check_host_written_checkpoint(data, work, output, scratch)
    with TIMER("infer.sh, bad inputs"):
        summary["bad_inputs"] = check_bad_inputs(work, output, scratch)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.docker_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=24, help="size of the synthetic dataset train.sh trains on")
    parser.add_argument("--scratch", type=Path, default=None, help="where temporary files go (default: /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (data, work, outputs)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="avdf-docker-check-", dir=args.scratch or "/var/tmp"))
    summary: dict = {"ok": False}
    try:
        if daemon_answers():
            log("using the running Docker daemon")
            summary.update(check(scratch, args.videos), daemon="existing")
        else:
            ensure_engine_installed()
            with private_daemon(scratch.parent):
                summary.update(check(scratch, args.videos), daemon="private (stopped and removed)")
        summary["ok"] = True
    except CheckFailed as error:
        log(f"FAILED: {error}")
        summary["error"] = str(error).splitlines()[0]
    finally:
        if args.keep:
            log(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    summary["seconds"] = {**TIMER.seconds, "total": round(time.perf_counter() - started, 1)}
    print(json.dumps(summary, sort_keys=True))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
