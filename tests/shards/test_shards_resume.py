"""Resume after kill -9, and partitioned packing + merge, give exactly the samples of one uninterrupted run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from shards.layout import read_json
from shards.merge import merge
from shards.reader import list_shards, make_dataset
from tests.shards.conftest import GOOD_VIDEOS, PACK_OPTIONS, run_pack

ROOT = Path(__file__).resolve().parents[2]


def contents(out: Path) -> dict[str, tuple]:
    """key -> (frames, audio, label, meta) of every sample, decoded."""
    result = {}
    for s in make_dataset(list_shards(out), rank=0, world_size=1):
        result[s["key"]] = (s["frames"], s["audio"], s["label"], s["meta"])
    return result


def assert_same_contents(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key][0], b[key][0]) and torch.equal(a[key][1], b[key][1]), key
        assert a[key][2:] == b[key][2:], key


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_resume_after_kill_gives_the_same_shards(small_videos, packed_full, tmp_path):
    videos, labels = small_videos
    out = tmp_path / "out"
    names = sorted(GOOD_VIDEOS)
    args = ["--videos", str(videos), "--labels", str(labels), "--out", str(out), "--shard-max-count", "2",
            *PACK_OPTIONS]
    # the second video of the last shard sleeps, so the kill lands while that shard's .tmp is half written
    env = dict(os.environ, AVDF_PACK_FAULT=f"sleep:{names[5][:8]}")
    process = subprocess.Popen([sys.executable, "-m", "shards.pack", *args, "--workers", "1"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (out / "shard-p0000of0001-000001_stats.json").exists() or not list(out.glob("*.tmp")):
            assert process.poll() is None, "the run ended before it could be interrupted"
            assert time.time() < deadline, "the run did not reach the last shard in time"
            time.sleep(0.2)
        workers = children(process.pid)
        assert workers, "no worker process found"
        os.kill(process.pid, signal.SIGKILL)  # kill -9 of the run itself: its workers must not linger
        process.wait()
        deadline = time.time() + 20
        while any(alive(pid) for pid in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in workers), "orphaned workers kept running"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    assert not (out / "manifest.json").exists()
    assert not (out / "shard-p0000of0001-000002.tar").exists()
    assert [p.name for p in out.glob("*.tmp")] == ["shard-p0000of0001-000002.tar.p0000of0001.tmp"]
    kept = (out / "shard-p0000of0001-000000.tar").stat().st_mtime_ns
    (out / "shard-p0000of0001-000001.tar").unlink()  # a finished shard lost as well: it must be redone

    assert run_pack(*args, "--workers", 0) == 0
    assert (out / "shard-p0000of0001-000000.tar").stat().st_mtime_ns == kept  # finished shard skipped
    assert not list(out.glob("*.tmp"))
    for url in list_shards(packed_full):
        name = Path(url).name
        assert (out / name).read_bytes() == (packed_full / name).read_bytes(), name
    assert_same_contents(contents(out), contents(packed_full))
    assert read_json(out / "manifest.json")["summary"] == read_json(packed_full / "manifest.json")["summary"]


def test_changed_inputs_refuse_on_resume(small_videos, tmp_path, capsys):
    videos, labels = small_videos
    copy = tmp_path / "videos"
    shutil.copytree(videos, copy)
    out = tmp_path / "out"
    args = ["--videos", copy, "--out", out, "--workers", 0, "--shard-max-count", 2, "--windows", "1", "--window-frames", "2", "--size", "32",
            "--max-clip-seconds", "0.5", "--no-progress"]
    assert run_pack(*args) == 0
    (copy / sorted(GOOD_VIDEOS)[0]).unlink()
    assert run_pack(*args) == 2
    assert "other videos" in capsys.readouterr().err


def test_parts_and_merge_equal_one_run(packed_parts, packed_full):
    names = sorted(p.name for p in packed_parts.glob("*.tar"))
    assert names == [f"shard-p{p:04d}of0002-{i:06d}.tar" for p in (0, 1) for i in range(3)]
    manifest = read_json(packed_parts / "manifest.json")
    assert len(manifest["shards"]) == 6 and manifest["summary"]["packed"] == len(GOOD_VIDEOS)
    assert_same_contents(contents(packed_parts), contents(packed_full))
    again = merge(packed_parts, write=False)
    assert again["videos"] == manifest["videos"]


def test_merge_names_the_missing_part(small_videos, tmp_path):
    videos, labels = small_videos
    out = tmp_path / "out"
    assert run_pack("--videos", videos, "--labels", labels, "--out", out, "--workers", 0, "--num-parts", 3,
                    "--part", 2, "--shard-max-count", 1, "--windows", "1", "--window-frames", "2", "--size", "32", "--max-clip-seconds",
                    "0.5", "--no-progress") == 0
    assert not (out / "manifest.json").exists()
    from shards.merge import main as merge_main

    with pytest.raises(Exception, match="part 0 of 3"):
        merge(out)
    assert merge_main([str(out)]) == 1
    with pytest.raises(FileNotFoundError, match="shards.merge"):
        list_shards(out)
