"""python -m evaluation on tiny data: every subcommand runs the real pipeline and writes its JSON/CSV/PNG.

The shortcut audit gets a planted shortcut: a small competition-format folder written here with PyAV where every
fake starts with silence (and nothing else differs), which it must flag, and nothing else.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from competition import REAL_CATEGORY, TPR_KEY
from evaluation.common import binary_metrics, group_metrics, rank_auc, read_csv_rows, read_meta
from evaluation.generality import GeneralityOptions, experiment_spec, method_status, resolve_holdout
from evaluation.shortcuts import FEATURES, media_features, shortcut_audit
from tests.evaluation.evaluation_demo import GENERALITY_ARGS, ROBUSTNESS_ARGS, SPEED_ARGS, build_demo

ROOT = Path(__file__).resolve().parents[2]


def evaluate(*args, expect: int = 0) -> subprocess.CompletedProcess:
    """Run python -m evaluation; a wrong exit code fails the test with the command's output."""
    cmd = [sys.executable, "-m", "evaluation", *map(str, args)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == expect, (f"{' '.join(cmd)} exited {result.returncode}\n--- stdout\n"
                                         f"{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")
    return result


# --- a planted shortcut ---------------------------------------------------------------------------------------
def write_video(path: Path, seconds: float, silence: float, seed: int, fps: int = 10, size: int = 64,
                rate: int = 16_000) -> None:
    """A small H.264 + AAC mp4: a changing grey frame and a tone that starts after ``silence`` seconds."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for i in range(int(seconds * fps)):
            image = np.full((size, size, 3), (i * 7 + seed) % 255, np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        n = int(seconds * rate)
        t = np.arange(n) / rate
        tone = (0.3 * np.sin(2 * np.pi * rng.uniform(150, 400) * t)).astype(np.float32)
        tone[: int(silence * rate)] = 0
        for start in range(0, n, 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(audio.encode(frame))
        container.mux(video.encode())
        container.mux(audio.encode())


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """test/ split: 8 genuine videos that speak at once, 8 fakes that start with 0.5-0.7 s of silence; durations
    1.0 / 1.5 s equally often in both classes (no duration shortcut)."""
    root = tmp_path_factory.mktemp("planted")
    (root / "test").mkdir()
    rows = []
    for i in range(16):
        fake = i % 2
        name = f"{i:032x}.mp4"
        write_video(root / "test" / name, seconds=1.0 if (i // 2) % 2 else 1.5,
                    silence=0.5 + 0.025 * i / 2 if fake else 0.0, seed=i)
        rows.append((name, fake))
    with open(root / "test_labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("video_name", "target"), *rows])
    return root


def test_leading_silence_is_measured_from_the_decoded_audio(planted):
    fake = next(p for p in sorted((planted / "test").iterdir()) if int(p.stem, 16) == 5)
    features = media_features(fake)
    assert features["leading_silence"] == pytest.approx(0.5 + 0.025 * 5 / 2, abs=0.03)
    assert features["duration"] == pytest.approx(1.5, abs=0.05)
    assert (features["width"], features["height"], features["fps"], features["sample_rate"]) == (64, 64, 10, 16000)


def test_shortcut_audit_flags_the_planted_leading_silence(planted):
    out = planted / "eval" / "shortcuts.json"
    evaluate("shortcuts", "--data", planted, "--splits", "test", "--out", out, "--workers", 1)
    audit = json.loads(out.read_text())["splits"]["test"]
    assert audit["videos"] == 16 and audit["n_fake"] == 8
    silence = audit["features"]["leading_silence"]
    assert silence["auc"] == 1.0 and silence["flag"] and silence["direction"] == "higher in fakes"
    assert "leading_silence" in audit["significant"]
    for feature in ("duration", "width", "height", "fps", "sample_rate", "audio_channels"):
        assert audit["features"][feature]["separability"] == 0.5, feature
        assert feature not in audit["flagged"]
    assert out.with_suffix(".png").stat().st_size > 0 and out.with_suffix(".csv").is_file()
    # --fail-on-flag turns a flagged shortcut into a failing exit code (for CI on a new dataset)
    failing = evaluate("shortcuts", "--data", planted, "--splits", "test", "--out", out, "--workers", 1,
                       "--fail-on-flag", expect=1)
    assert "leading_silence" in failing.stdout


def test_feature_auc_is_direction_free():
    features = {f"v{i}": {name: 0.0 for name in FEATURES} for i in range(6)}
    for i in range(6):
        features[f"v{i}"]["duration"] = 10.0 - i  # fakes (i >= 3) are shorter
    labels = {f"v{i}": int(i >= 3) for i in range(6)}
    audit = shortcut_audit(features, labels, threshold=0.7)
    duration = audit["features"]["duration"]
    assert duration["auc"] == 0.0 and duration["separability"] == 1.0
    assert duration["direction"] == "lower in fakes" and audit["flagged"] == ["duration"]


def test_group_metrics_score_genuine_against_each_group():
    meta = [{"video_name": f"v{i}.mp4", "split": "test", "target": str(t), "category": c, "method": m}
            for i, (t, c, m) in enumerate([(0, REAL_CATEGORY, "real")] * 3 + [(1, "RealVideo-FakeAudio", "voice")] * 2
                                          + [(1, "FakeVideo-RealAudio", "swap")] * 2)]
    # an audio head that ranks voice fakes above every genuine video, and swap fakes below them
    audio = [0.3, 0.4, 0.5, 0.9, 0.8, 0.1, 0.2]
    scores = {f"v{i}.mp4": {"score": 0.5, "audio_score": a, "visual_score": None} for i, a in enumerate(audio)}
    by_category = group_metrics(meta, scores, "audio_score", "category")
    assert by_category["RealVideo-FakeAudio"]["auc"] == 1.0 and by_category["FakeVideo-RealAudio"]["auc"] == 0.0
    assert by_category["RealVideo-FakeAudio"]["n"] == 5 and by_category["all"]["n_fake"] == 4
    assert group_metrics(meta, scores, "visual_score", "method") == {"all": {"n": 0, "n_fake": 0, "auc": None,
                                                                                TPR_KEY: None, "auc_ci": None}}


def test_bootstrap_interval_brackets_the_auc_and_narrows_with_more_videos():
    rng = np.random.default_rng(0)
    fake, real = rng.normal(1.0, 1.0, (3, 40)).round(1), rng.normal(0.0, 1.0, (3, 60)).round(1)  # with ties
    for f, r in zip(fake, real, strict=True):
        assert rank_auc(f, r) == pytest.approx(roc_auc_score([1] * f.size + [0] * r.size, np.r_[f, r]))
    widths = []
    for n in (30, 300):
        labels = np.r_[np.zeros(n), np.ones(n)].astype(int)
        scores = np.r_[rng.normal(0, 1, n), rng.normal(1, 1, n)]
        m = binary_metrics(labels, scores, ci=True)
        low, high = m["auc_ci"]
        assert low < m["auc"] < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # about 1/sqrt(10) as wide


def test_holdout_names_expand_families_and_classify_methods():
    rows = [("real", "real"), ("face_swap", "swap_a"), ("face_swap", "swap_b"), ("av_offset", "offset_a"),
            ("av_offset", "offset_b"), ("tts", "tts_a")]
    meta = [{"video_name": f"v{i}", "split": "test", "target": str(int(f != "real")), "family": f, "method": m}
            for i, (f, m) in enumerate(rows)]
    held = resolve_holdout(meta, ["av_offset", "swap_b"])
    assert held == ["offset_a", "offset_b", "swap_b"]
    assert method_status(meta, held) == {"swap_a": "seen", "swap_b": "unseen_method", "offset_a": "unseen_family",
                                         "offset_b": "unseen_family", "tts_a": "seen"}
    with pytest.raises(ValueError, match="neither fake methods nor families"):
        resolve_holdout(meta, ["lip_sync"])
    with pytest.raises(ValueError, match="leaves no fakes"):
        resolve_holdout(meta, ["face_swap", "av_offset", "tts"])


# --- the real pipeline on the session's tiny data ----------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(synthetic_dataset, packed_shards, tiny_run, tmp_path_factory) -> Path:
    return build_demo(tmp_path_factory.getbasetemp() / "eval_demo", synthetic_dataset, packed_shards, tiny_run)


def test_modality_per_head_and_category(demo):
    evaluate("modality", "--demo-dir", demo)
    result = json.loads((demo / "eval" / "modality.json").read_text())
    meta = read_meta(demo / "data")
    genuine = sum(r["split"] == "test" and r["target"] == "0" for r in meta)
    tiny, baseline = result["models"]["tiny"], result["models"]["baseline"]
    assert set(tiny["heads"]) == {"fused", "audio", "visual"}
    assert set(baseline["heads"]) == {"fused"}  # the seed baseline has no per-modality heads
    for category, m in tiny["heads"]["audio"]["by_category"].items():
        fakes = sum(r["split"] == "test" and (category == "all" or r["category"] == category) and r["target"] == "1"
                    for r in meta)
        assert (m["n"], m["n_fake"]) == (genuine + fakes, fakes)
        assert m["auc"] is None or 0.0 <= m["auc"] <= 1.0
    assert {r["method"] for r in meta if r["split"] == "test" and r["target"] == "1"} | {"all"} == \
        set(tiny["heads"]["fused"]["by_method"])
    assert (demo / "eval" / "modality.png").stat().st_size > 0


def test_robustness_table_and_plot(demo):
    evaluate("robustness", "--demo-dir", demo, "--workers", 2, "--threads", 2, *ROBUSTNESS_ARGS)
    result = json.loads((demo / "eval" / "robustness.json").read_text())
    assert [(c["perturbation"], c["level"]) for c in result["conditions"]] == [
        (p, lv) for p in ("gaussian_blur", "h264_crf", "noise_snr_db", "aac_kbps") for lv in (1, 5)]
    # clean scores are the submission's: the same extraction and the same Predictor
    submission = {r["video_name"]: float(r["score"]) for r in read_csv_rows(demo / "submissions" / "tiny.csv")}
    labels = {r["video_name"]: int(r["target"]) for r in read_csv_rows(demo / "data" / "test_labels.csv")}
    names = sorted(labels)
    expected = binary_metrics([labels[n] for n in names], [submission[n] for n in names])["auc"]
    assert result["clean"]["fused"]["auc"] == pytest.approx(expected, abs=1e-3)
    for c in result["conditions"]:
        assert 0.0 <= c["auc"] <= 1.0 and c["kind"] == ("audio" if c["perturbation"] in ("noise_snr_db", "aac_kbps")
                                                         else "video")
        # a perturbation of one modality cannot move the head that never sees it
        untouched = "visual" if c["kind"] == "audio" else "audio"
        assert c["heads"][untouched] == pytest.approx(result["clean"][untouched]["auc"], abs=1e-9)
    table = read_csv_rows(demo / "eval" / "robustness.csv")
    assert table[0]["perturbation"] == "clean" and len(table) == 1 + len(result["conditions"])
    assert (demo / "eval" / "robustness.png").stat().st_size > 0


def test_generality_work_folder_depends_on_the_config_files_content(tmp_path):
    """Editing the config file (same path) must start the experiment afresh, not reuse the old run's results."""
    config = tmp_path / "small.yaml"
    config.write_text("train:\n  epochs: 20\n")
    options = GeneralityOptions(held_out=["vc_lpc"], config=config)
    before = experiment_spec(options, ["vc_lpc"])
    assert experiment_spec(options, ["vc_lpc"]) == before
    config.write_text("train:\n  epochs: 18\n")
    assert experiment_spec(options, ["vc_lpc"]) != before
    config.write_text("score:\n  time_views: 2\n")  # the validation clips inference scores: packed again
    packing = experiment_spec(options, ["vc_lpc"])["packing"]
    assert int(packing["val"][1]) == 2 * int(packing["train"][1]) and packing["val"][2:] == packing["train"][2:]


def test_generality_holds_methods_and_families_out_of_training(demo):
    evaluate("generality", "--demo-dir", demo, "--workers", 2, *GENERALITY_ARGS)
    result = json.loads((demo / "eval" / "generality.json").read_text())
    (experiment,) = result["experiments"]
    meta = read_meta(demo / "data")
    offsets = sorted({r["method"] for r in meta if r["family"] == "av_offset"})
    held_out = set(offsets) | {"lip_sync_viseme"}
    assert len(offsets) >= 2 and experiment["held_out"] == sorted(held_out)
    assert experiment["train_videos"] == sum(r["split"] == "train" and r["method"] not in held_out for r in meta)
    work = demo / "eval" / "generality" / "tiny-holdout-av_offset+lip_sync_viseme"
    trained_on = {p.name for p in (work / "data" / "train").iterdir()}
    assert not trained_on & {r["video_name"] for r in meta if r["method"] in held_out}
    test_fakes = [r for r in meta if r["split"] == "test" and r["target"] == "1"]
    assert set(experiment["per_method"]) == {r["method"] for r in test_fakes}
    expected = {m: "unseen_family" if m in offsets else "unseen_method" if m == "lip_sync_viseme" else "seen"
                for m in experiment["per_method"]}
    assert {m: v["status"] for m, v in experiment["per_method"].items()} == expected
    assert experiment["per_family"]["av_offset"]["status"] == "unseen_family"
    assert experiment["per_family"]["lip_sync"]["status"] == "partly_seen"
    for category, metrics in experiment["categories"].items():
        assert metrics["n_fake"] == sum(expected[r["method"]] == category for r in test_fakes), category
    for m in [*experiment["per_method"].values(), *experiment["categories"].values()]:
        if m["auc"] is not None:
            low, high = m["auc_ci"]
            assert 0.0 <= low <= m["auc"] <= high <= 1.0
    assert set(experiment["reference"]["per_method"]) == {r["method"] for r in test_fakes}
    assert experiment["reference"]["categories"].keys() == experiment["categories"].keys()
    assert (work / "run" / "best" / "model.safetensors").is_file()
    assert (demo / "eval" / "generality.png").stat().st_size > 0


def test_sync_check_scores_shifted_audio_against_the_same_clips_in_sync(demo):
    evaluate("sync", "--demo-dir", demo, "--workers", 2, "--max-videos", 4, "--shifts", "80,400")
    result = json.loads((demo / "eval" / "sync.json").read_text())
    assert result["videos"] == 4 and result["checkpoint"].endswith("tiny/best")
    assert [r["shift_ms"] for r in result["shifts"]] == [80, 400]
    for r in result["shifts"]:
        assert r["n_aligned"] == result["scored"] and r["n_shifted"] == 2 * result["scored"]  # earlier and later
        low, high = r["auc_ci"]
        assert 0.0 <= low <= r["auc"] <= high <= 1.0
    assert (demo / "eval" / "sync.png").stat().st_size > 0
    evaluate("sync", "--demo-dir", demo, "--videos", demo / "data" / "train", "--labels", demo / "data" / "test_labels.csv",
             expect=1)  # no genuine video of those labels in that folder: a message, no empty table


@pytest.mark.slow
def test_speed_table_names_the_machine(demo):
    evaluate("speed", "--demo-dir", demo, "--workers", 2, *SPEED_ARGS)
    result = json.loads((demo / "eval" / "speed.json").read_text())
    assert result["machine"]["cpu"] and result["machine"]["usable_cores"] >= 1
    pack_rates = [v for k, v in result["packing"].items() if "per_s_per_core" in k and k.startswith(("pack", "videos"))]
    assert pack_rates and all(v > 0 for v in pack_rates)
    assert result["inference"]["end_to_end_videos_per_s"] > 0 and result["inference"]["decode_videos_per_s"] > 0
    assert any("clips_per_s" in k for k in result["training"]["tiny"])
