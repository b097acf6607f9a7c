"""Packing good videos: one sample per video with the contract's members, shapes, labels and timing."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch

from shards.extract import ExtractOptions, extract
from shards.faces import FaceDetector
from shards.format import clip_to_sample
from shards.layout import read_json
from shards.pack import estimate_sample_bytes
from shards.reader import list_shards, make_dataset
from tests.shards.conftest import GOOD_VIDEOS, PACK_OPTIONS, run_pack


def samples_by_name(out) -> dict[str, dict]:
    return {s["key"]: s for s in make_dataset(list_shards(out), mode="eval", rank=0, world_size=1)}


def test_one_sample_per_video_with_contract_members(packed_full):
    urls = list_shards(packed_full)
    assert [u.rsplit("/", 1)[1] for u in urls] == [f"shard-p0000of0001-{i:06d}.tar" for i in range(3)]
    with tarfile.open(urls[0]) as tar:
        names = tar.getnames()
    key = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
    assert names[:5] == [f"{key}.{m}" for m in ("audio.npy", "cls", "faces.jpgs", "json", "mouths.jpgs")]
    assert not names[5].startswith(key)
    samples = samples_by_name(packed_full)
    assert sorted(samples) == sorted(GOOD_VIDEOS)
    for name, sample in samples.items():
        meta = sample["meta"]
        assert sample["frames"].dtype == torch.uint8 and tuple(sample["frames"].shape) == (4, 3, 64, 64)
        assert sample["mouths"].dtype == torch.uint8 and tuple(sample["mouths"].shape) == (4, 3, 32, 32)
        assert meta["format"] == 3 and (meta["windows"], meta["window_frames"], meta["fps"]) == (1, 4, 25.0)
        assert sample["label"] == GOOD_VIDEOS[name][0] == meta["label"]
        assert sample["has_face"] and sample["has_audio"] and meta["fallbacks"] == []
        span = meta["clip_end"] - meta["clip_start"]
        assert sample["audio"].dtype == torch.float32 and sample["audio"].numel() == round(span * 16000)
        assert float(sample["audio"].abs().max()) > 0.05
        start = meta["clip_start"] + span / 2 - 4 / 25 / 2  # one window of 4 consecutive frames, centred
        assert np.allclose(meta["window_starts"], [start - meta["clip_start"]], atol=1e-6)
        assert np.allclose(meta["times"], [start + (k + 0.5) / 25 for k in range(4)], atol=1e-6)
        source_fps = meta["source"]["fps"]
        assert all(abs(a - t) <= 1 / source_fps + 1e-6 for a, t in zip(meta["frame_times"], meta["times"], strict=True))
        assert all(m is not None for m in meta["mouth_boxes"])
        assert all(b is not None for b in meta["boxes"]) and all(s is not None for s in meta["scores"])
        assert meta["source"]["num_faces"] == 1 and meta["audio_sample_rate"] == 16000


def test_manifest_and_stats(packed_full):
    manifest = read_json(packed_full / "manifest.json")
    assert manifest["summary"]["packed"] == len(GOOD_VIDEOS) and manifest["summary"]["failed"] == 0
    assert manifest["summary"]["class_counts"] == {"0": 4, "1": 2}
    assert {v["video_name"] for v in manifest["videos"]} == set(GOOD_VIDEOS)
    assert all(v["status"] == "packed" for v in manifest["videos"])
    stats = read_json(packed_full / "shard-p0000of0001-000001_stats.json")
    assert stats["count"] == 2 and stats["failures"] == 0 and stats["bytes"] > 0 and stats["seconds"] >= 0
    assert stats["keys"] == [n[:-4] for n in sorted(GOOD_VIDEOS)[2:4]]
    extract = read_json(packed_full / "options.json")["extract"]
    assert (extract["windows"], extract["window_frames"], extract["size"], extract["mouth_size"]) == (1, 4, 64, 32)


def test_clip_to_sample_equals_the_packed_sample(packed_full, small_videos):
    """Inference (extract + clip_to_sample) sees exactly what the reader gives training."""
    videos, _ = small_videos
    name = sorted(GOOD_VIDEOS)[4]
    options = ExtractOptions(windows=1, window_frames=4, size=64, mouth_size=32)
    direct = clip_to_sample(extract(videos / name, options, FaceDetector()), label=GOOD_VIDEOS[name][0])
    packed = samples_by_name(packed_full)[name]
    assert torch.equal(direct["frames"], packed["frames"]) and torch.equal(direct["audio"], packed["audio"])
    assert torch.equal(direct["mouths"], packed["mouths"])
    assert direct["meta"] == packed["meta"] and direct["label"] == packed["label"] == 1


def test_same_inputs_give_identical_tars(packed_full, small_videos, tmp_path):
    videos, labels = small_videos
    assert run_pack("--videos", videos, "--labels", labels, "--out", tmp_path, "--workers", 0,
                    "--shard-max-count", 2, *PACK_OPTIONS) == 0
    for url in list_shards(packed_full):
        name = url.rsplit("/", 1)[1]
        assert (tmp_path / name).read_bytes() == (packed_full / name).read_bytes()


def test_rerun_with_other_options_refuses(packed_full, small_videos, capsys):
    videos, labels = small_videos
    code = run_pack("--videos", videos, "--labels", labels, "--out", packed_full, "--workers", 0,
                    "--shard-max-count", 2, "--window-frames", "5", "--size", "64", "--no-progress")
    assert code == 2
    message = capsys.readouterr().err
    assert "window_frames" in message and "new --out" in message and str(packed_full) in message


def test_default_shard_count_comes_from_the_size_target():
    per = estimate_sample_bytes(ExtractOptions())
    assert 1_000_000 < per < 2_500_000  # 64 face crops (~17 KB) + 64 mouth crops + 10 s of int16 audio (320 KB)
    from shards.pack import PackConfig

    config = PackConfig(videos=None, out=None)  # type: ignore[arg-type]
    assert config.samples_per_shard() == int(256e6 // per)


@pytest.mark.parametrize("header", ["name,label\n", "video_name;target\n", ""])
def test_bad_label_header_is_named(small_videos, tmp_path, capsys, header):
    videos, _ = small_videos
    bad = tmp_path / "labels.csv"
    bad.write_text(header + "x.mp4,1\n" if header else "")
    assert run_pack("--videos", videos, "--labels", bad, "--out", tmp_path / "out", *PACK_OPTIONS) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "video_name,target" in err
    assert not (tmp_path / "out").exists()


def test_label_problems_are_named(small_videos, tmp_path, capsys):
    videos, labels = small_videos
    rows = labels.read_text().splitlines()
    cases = {
        "duplicate": (rows + [rows[1]], "duplicate"),
        "missing": (rows + ["ffffffffffffffffffffffffffffffff.mp4,1"], "--allow-missing-videos"),
        "unlabeled": (rows[:-1], "--allow-unlabeled"),
        "bad value": (rows[:1] + [rows[1].replace(",0", ",2")] + rows[2:], "not 0 or 1"),
    }
    for case, (lines, hint) in cases.items():
        path = tmp_path / f"{case}.csv"
        path.write_text("\n".join(lines) + "\n")
        assert run_pack("--videos", videos, "--labels", path, "--out", tmp_path / "o", *PACK_OPTIONS) == 2, case
        err = capsys.readouterr().err
        assert hint in err and str(path) in err, (case, err)


def test_allow_unlabeled_and_missing(small_videos, tmp_path):
    videos, labels = small_videos
    rows = labels.read_text().splitlines()
    path = tmp_path / "partial.csv"
    path.write_text("\n".join(rows[:-1] + ["ffffffffffffffffffffffffffffffff.mp4,1"]) + "\n")
    out = tmp_path / "out"
    assert run_pack("--videos", videos, "--labels", path, "--out", out, "--workers", 0, "--allow-unlabeled",
                    "--allow-missing-videos", "--windows", "1", "--window-frames", "2", "--size", "32", "--max-clip-seconds", "0.5",
                    "--no-progress") == 0
    videos_out = {v["video_name"]: v for v in read_json(out / "manifest.json")["videos"]}
    assert videos_out["ffffffffffffffffffffffffffffffff.mp4"]["reason"] == "missing_file"
    unlabeled = videos_out[sorted(GOOD_VIDEOS)[-1]]
    assert unlabeled["status"] == "packed" and unlabeled["label"] is None
    sample = samples_by_name(out)[sorted(GOOD_VIDEOS)[-1]]
    assert sample["label"] == -1 and json.loads(json.dumps(sample["meta"]))["label"] is None


def test_meta_columns_are_copied_into_the_json(small_videos, tmp_path, capsys):
    videos, labels = small_videos
    names = sorted(GOOD_VIDEOS)
    meta = tmp_path / "meta.csv"
    meta.write_text("video_name,split,target,category,method\n" + "".join(
        f"{n},train,{GOOD_VIDEOS[n][0]},{'FakeVideo-RealAudio' if GOOD_VIDEOS[n][0] else 'RealVideo-RealAudio'},"
        f"{'face_swap' if GOOD_VIDEOS[n][0] else 'real'}\n" for n in names[1:]))
    out = tmp_path / "out"
    fast = ["--windows", "1", "--window-frames", "2", "--size", "32", "--max-clip-seconds", "0.5", "--no-progress", "--workers", "0"]
    assert run_pack("--videos", videos, "--labels", labels, "--meta", meta, "--out", out, *fast) == 0
    samples = samples_by_name(out)
    assert samples[names[-1]]["meta"]["category"] == "FakeVideo-RealAudio"
    assert samples[names[-1]]["meta"]["method"] == "face_swap"
    assert "category" not in samples[names[0]]["meta"]  # not listed in meta.csv
    assert run_pack("--videos", videos, "--meta", meta, "--meta-columns", "label", "--out", tmp_path / "o2",
                    *fast) == 2
    assert "overwrite" in capsys.readouterr().err
