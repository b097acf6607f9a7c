"""Every kind of bad input gets its own clear outcome and the run completes (through the real CLI and pool)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.synth.bad_inputs import BAD_INPUTS as EXPECTED
from scripts.synth.bad_inputs import FAULT_ENV, NOT_AN_INPUT, write_bad_inputs
from scripts.synth.media_factory import write_bytes, write_video
from shards.layout import read_json
from shards.reader import list_shards, make_dataset
from tests.shards.conftest import PACK_OPTIONS, run_pack

ROOT = Path(__file__).resolve().parents[2]

@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory) -> Path:
    return write_bad_inputs(tmp_path_factory.mktemp("bad_inputs") / "videos")


@pytest.fixture(scope="module")
def bad_packed(bad_folder, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("bad_out")
    env = dict(os.environ, **FAULT_ENV)
    result = subprocess.run([sys.executable, "-m", "shards.pack", "--videos", str(bad_folder), "--out", str(out),
                             "--workers", "2", "--shard-max-count", "5", *PACK_OPTIONS],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return out, result


def test_every_bad_input_has_its_outcome(bad_packed):
    out, result = bad_packed
    # 7 of 18 inputs fail, more than the default --max-failed-fraction (0.1): everything is written, exit 1
    assert result.returncode == 1, result.stderr[-3000:]
    assert "7 of 18 videos failed" in result.stderr and "unreadable x4" in result.stderr
    manifest = read_json(out / "manifest.json")
    outcomes = {v["video_name"]: v for v in manifest["videos"]}
    assert set(outcomes) == set(EXPECTED)
    for name, (status, expected) in EXPECTED.items():
        got = outcomes[name]
        assert got["status"] == status, (name, got)
        if status == "failed":
            assert got["reason"] == expected and got["detail"], (name, got)
            assert got["shard"] is None
        else:
            assert got["fallbacks"] == expected, (name, got)
    assert manifest["ignored_files"] == [NOT_AN_INPUT]
    assert "killer.mp4: worker_died" in result.stderr
    assert manifest["summary"]["failures_by_reason"] == {"empty_file": 1, "no_video_stream": 1, "unreadable": 4,
                                                         "worker_died": 1}


def test_packed_bad_inputs_read_back(bad_packed):
    out, _ = bad_packed
    samples = {s["key"]: s for s in make_dataset(list_shards(out), rank=0, world_size=1)}
    packed = {n for n, (status, _) in EXPECTED.items() if status != "failed"}
    assert set(samples) == packed
    for s in samples.values():
        assert tuple(s["frames"].shape) == (4, 3, 64, 64)
        assert s["audio"].numel() == round((s["meta"]["clip_end"] - s["meta"]["clip_start"]) * 16000)
    assert not samples["no_face.mp4"]["has_face"] and samples["no_face.mp4"]["meta"]["boxes"] == [None] * 4
    assert not samples["silent.mp4"]["has_audio"] and float(samples["silent.mp4"]["audio"].abs().max()) == 0
    long = samples["long.mp4"]["meta"]
    assert (long["clip_start"], long["clip_end"]) == (10.0, 20.0) and samples["long.mp4"]["audio"].numel() == 160000
    uhd = samples["uhd.mp4"]["meta"]
    assert (uhd["source"]["width"], uhd["source"]["height"]) == (3840, 2160)
    assert uhd["boxes"][0][2] > 1920  # boxes are in source pixels even though detection ran on a smaller frame
    assert (samples["portrait.mp4"]["meta"]["source"]["width"], samples["portrait.mp4"]["meta"]["source"]["height"]) \
        == (240, 320)
    assert samples["two faces.mp4"]["meta"]["source"]["num_faces"] == 2
    assert samples["short.mp4"]["audio"].numel() == 5120  # 8 frames at 25 fps = 0.32 s
    assert samples["truncated_faststart.mp4"]["meta"]["source"]["duration"] < 1.9
    keys = {s["meta"]["video_name"]: s for s in samples.values()}
    assert keys["dotted.name.mp4"]["meta"]["video_name"] == "dotted.name.mp4"


def test_crash_and_timeout_become_failures(tmp_path, monkeypatch, capsys):
    d = tmp_path / "videos"
    write_video(d / "ok.mp4", seconds=0.5)
    write_video(d / "crashes.mp4", seconds=0.5)
    monkeypatch.setenv("AVDF_PACK_FAULT", "raise:crashes")
    assert run_pack("--videos", d, "--out", tmp_path / "a", "--workers", 0, "--max-failed-fraction", 0.5,
                    *PACK_OPTIONS) == 0
    outcome = {v["video_name"]: v for v in read_json(tmp_path / "a" / "manifest.json")["videos"]}
    assert outcome["crashes.mp4"]["reason"] == "crash" and "injected fault" in outcome["crashes.mp4"]["detail"]
    assert outcome["ok.mp4"]["status"] == "packed"

    monkeypatch.setenv("AVDF_PACK_FAULT", "sleep:crashes")
    assert run_pack("--videos", d, "--out", tmp_path / "b", "--workers", 0, "--video-timeout", "1",
                    "--max-failed-fraction", 0.5, *PACK_OPTIONS) == 0
    outcome = {v["video_name"]: v for v in read_json(tmp_path / "b" / "manifest.json")["videos"]}
    assert outcome["crashes.mp4"]["reason"] == "timeout" and outcome["ok.mp4"]["status"] == "packed"


def test_nothing_packed_exits_nonzero_with_summary(tmp_path, capsys):
    d = tmp_path / "videos"
    write_bytes(d / "a.mp4", b"")
    write_bytes(d / "b.mp4", b"garbage" * 10)
    assert run_pack("--videos", d, "--out", tmp_path / "out", "--workers", 0, *PACK_OPTIONS) == 1
    err = capsys.readouterr().err
    assert "none of the 2 videos" in err and "empty_file" in err and "unreadable" in err
    assert read_json(tmp_path / "out" / "manifest.json")["summary"]["failed"] == 2
