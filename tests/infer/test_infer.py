"""`python -m infer` end to end: complete, deterministic CSVs, every bad input scored, template merge."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from scripts.synth.bad_inputs import FAULT_ENV, inference_expectations, write_bad_inputs
from scripts.synth.media_factory import write_bytes, write_video

ROOT = Path(__file__).resolve().parents[2]


def run_infer(videos: Path, checkpoint: Path, out: Path, *extra: str, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "infer", "--videos", str(videos), "--checkpoint", str(checkpoint),
                           "--out", str(out), "--workers", "2", *extra], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=600)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def test_submission(synthetic_dataset, tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("infer") / "submission.csv"
    result = run_infer(synthetic_dataset / "test", tiny_run / "best", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_submission_is_complete_and_well_formed(test_submission, synthetic_dataset):
    lines = test_submission.read_text().splitlines()
    assert lines[0] == "video_name,score"
    expected = sorted(p.name for p in (synthetic_dataset / "test").glob("*.mp4"))
    rows = [line.split(",") for line in lines[1:]]
    assert [name for name, _ in rows] == expected  # every video, sorted, once
    for _, score in rows:
        assert len(score.split(".")[1]) == 6 and 0.0 <= float(score) <= 1.0


def test_two_runs_are_byte_identical(test_submission, synthetic_dataset, tiny_run, tmp_path):
    again = tmp_path / "again.csv"
    assert run_infer(synthetic_dataset / "test", tiny_run / "best", again).returncode == 0
    assert again.read_bytes() == test_submission.read_bytes()


def test_trained_tiny_model_beats_chance_and_score_py_agrees_with_sklearn(test_submission, synthetic_dataset):
    labels = {r["video_name"]: int(r["target"]) for r in read_rows(synthetic_dataset / "test_labels.csv")}
    scores = {r["video_name"]: float(r["score"]) for r in read_rows(test_submission)}
    names = sorted(labels)
    auc = roc_auc_score([labels[n] for n in names], [scores[n] for n in names])
    result = subprocess.run([sys.executable, "-m", "competition", "--pred", str(test_submission), "--labels",
                             str(synthetic_dataset / "test_labels.csv")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    scored = json.loads(result.stdout)
    assert scored["auc"] == pytest.approx(auc, abs=1e-9)
    assert scored["n"] == len(names)
    assert auc > 0.5, f"tiny model at chance on the synthetic test split (AUC {auc:.3f})"


def test_template_keeps_its_rows_and_order(synthetic_dataset, tiny_run, test_submission, tmp_path):
    names = sorted(p.name for p in (synthetic_dataset / "test").glob("*.mp4"))
    template_names = names[::-1][:5] + ["not_in_folder.mp4"]
    template = tmp_path / "template.csv"
    template.write_text("video_name,score\n" + "".join(f"{n},0\n" for n in template_names))
    out = tmp_path / "merged.csv"
    result = run_infer(synthetic_dataset / "test", tiny_run / "best", out, "--template", str(template),
                       "--max-failed-fraction", "0.5")  # the one template video not in DIR fails
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_rows(out)
    assert [r["video_name"] for r in rows] == template_names
    full = {r["video_name"]: r["score"] for r in read_rows(test_submission)}
    assert all(r["score"] == full[r["video_name"]] for r in rows[:-1])  # same scores as the full run
    assert rows[-1]["score"] == "0.500000"
    failures = read_rows(out.with_name("merged.failures.csv"))
    assert [f["video_name"] for f in failures] == ["not_in_folder.mp4"]


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory) -> Path:
    return write_bad_inputs(tmp_path_factory.mktemp("infer_bad") / "videos")


def test_bad_inputs_get_one_row_each_and_the_right_flags(bad_folder, tiny_run, tmp_path):
    expected = inference_expectations()
    out = tmp_path / "bad.csv"
    result = run_infer(bad_folder, tiny_run / "best", out, env=dict(os.environ, **FAULT_ENV))
    n_failed = sum(status == "failed" for status, _ in expected.values())
    # more than the default --max-failed-fraction (0.1) failed: the CSVs are complete, the exit code says so
    assert result.returncode == 4, result.stderr[-3000:]
    assert f"{n_failed} of {len(expected)} videos failed" in result.stderr and "unreadable x3" in result.stderr
    rows = read_rows(out)
    assert [r["video_name"] for r in rows] == sorted(expected)
    details = {r["video_name"]: r for r in read_rows(out.with_name("bad.details.csv"))}
    failures = {r["video_name"]: r["reason"] for r in read_rows(out.with_name("bad.failures.csv"))}
    for name, (status, flag) in expected.items():
        row = details[name]
        assert row["status"] == status, (name, row)
        if status == "failed":
            assert row["score"] == "0.500000" and failures[name].startswith(flag), (name, failures.get(name))
        else:
            assert 0.0 <= float(row["score"]) <= 1.0
            got = row["fallbacks"].split(";")
            # the expected flags, and for a cut-off file also what its shorter stream implies at inference's
            # clip options (repeated_frames, decode_errors); a clean file has none
            assert set(flag) <= set(got) if flag else got == [""], (name, row)
    assert set(failures) == {n for n, (s, _) in expected.items() if s == "failed"}


def test_max_failed_fraction_decides_the_exit_code(tiny_run, tmp_path):
    videos = tmp_path / "videos"
    write_video(videos / "ok.mp4", seconds=0.5)
    write_bytes(videos / "broken.mp4", b"not a video")
    assert run_infer(videos, tiny_run / "best", tmp_path / "a.csv").returncode == 4  # 1 of 2 > 0.1
    assert run_infer(videos, tiny_run / "best", tmp_path / "b.csv", "--max-failed-fraction", "0.5").returncode == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    write_bytes(videos / "ok.mp4", b"")  # every video fails: never exit 0
    result = run_infer(videos, tiny_run / "best", tmp_path / "c.csv", "--max-failed-fraction", "0.99")
    assert result.returncode == 4 and "empty_file x1" in result.stderr
    assert len(read_rows(tmp_path / "c.csv")) == 2


def test_no_video_and_bad_checkpoint_exit_nonzero_with_a_message(tiny_run, bad_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_infer(empty, tiny_run / "best", tmp_path / "x.csv")
    assert result.returncode == 2 and "no .mp4 video" in result.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text((tiny_run / "best" / "config.yaml").read_text())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    result = run_infer(bad_folder, broken, tmp_path / "y.csv")
    assert result.returncode == 3 and "unusable" in result.stderr
    assert not (tmp_path / "y.csv").exists()


def with_score_rule(tiny_run: Path, folder: Path, rule: str, statistics: dict | None) -> Path:
    """A copy of the tiny checkpoint whose config says ``score.rule: rule``, with ``statistics`` in info.json in
    place of the ``fused`` rule training stored (none: no statistics)."""
    shutil.copytree(tiny_run / "best", folder)
    config = (folder / "config.yaml").read_text()
    assert "rule: fused" in config
    (folder / "config.yaml").write_text(config.replace("rule: fused", f"rule: {rule}"))
    info = json.loads((folder / "info.json").read_text())
    info.pop("score")
    (folder / "info.json").write_text(json.dumps(info if statistics is None else {**info, "score": statistics}))
    return folder


def test_a_max_rule_scores_each_video_by_its_strongest_evidence(test_submission, synthetic_dataset, tiny_run,
                                                                 tmp_path):
    from models.scoring import EVIDENCE

    outputs = ("logit", "audio_logit", "visual_logit", "sync_score")  # what tiny outputs
    identity = {"rule": "max", "center": dict.fromkeys(outputs, 0.0), "scale": dict.fromkeys(outputs, 1.0),
                "slope": 1.0, "intercept": 0.0, "genuine_clips": 2}  # score = sigmoid(the largest raw evidence)
    out = tmp_path / "max.csv"
    result = run_infer(synthetic_dataset / "test", with_score_rule(tiny_run, tmp_path / "max", "max", identity), out)
    assert result.returncode == 0, result.stderr[-3000:]
    fused = {r["video_name"]: r for r in read_rows(test_submission.with_name("submission.details.csv"))}
    rows = read_rows(out.with_name("max.details.csv"))
    assert len(rows) == len(fused) and all(not r["strongest_evidence"] for r in fused.values())
    for row in rows:
        score, head = float(row["score"]), fused[row["video_name"]]
        assert row["strongest_evidence"] in EVIDENCE
        for column in ("score", "audio_score", "visual_score"):  # the maximum is at least each head
            assert score >= float(head[column]) - 1e-6
        same = {"logit": "score", "audio_logit": "audio_score", "visual_logit": "visual_score"}
        if row["strongest_evidence"] in same:
            assert score == pytest.approx(float(head[same[row["strongest_evidence"]]]), abs=2e-6)
    assert any(float(r["score"]) > float(fused[r["video_name"]]["score"]) + 1e-3 for r in rows)

    unfitted = with_score_rule(tiny_run, tmp_path / "unfitted", "mean", None)
    result = run_infer(synthetic_dataset / "test", unfitted, tmp_path / "u.csv")
    assert result.returncode == 3 and "holds no usable score statistics for score.rule='mean'" in result.stderr
    mismatched = with_score_rule(tiny_run, tmp_path / "mismatched", "mean", identity)  # statistics of another rule
    result = run_infer(synthetic_dataset / "test", mismatched, tmp_path / "m.csv")
    assert result.returncode == 3 and "holds statistics for score.rule='max', its config.yaml says 'mean'" in \
        result.stderr


def test_explain_writes_aligned_overlays_and_a_page(synthetic_dataset, tiny_run, tmp_path):
    from infer.explain import overlay, saliency
    from infer.predict import Predictor
    from shards.pool import extracted

    predictor = Predictor(tiny_run / "best")
    video = sorted((synthetic_dataset / "test").glob("*.mp4"))[0]
    (_, sample, _), = extracted([video], predictor.extraction_options(), workers=0)
    info = saliency(predictor, sample)
    frames, heat = info["frames"], info["frame_saliency"]
    assert heat.shape == frames.shape[:3]  # one heat value per face-crop pixel
    assert heat.min() >= 0.0 and heat.max() <= 1.0 and heat.max() > 0.0
    assert info["audio_saliency"].shape == info["audio"].shape
    blended = overlay(frames[0], heat[0])
    assert blended.shape == frames[0].shape and blended.dtype == np.uint8
    with pytest.raises(ValueError):
        overlay(frames[0], heat[0][:-1])

    out = tmp_path / "sub.csv"
    result = run_infer(synthetic_dataset / "test", tiny_run / "best", out, "--explain", str(tmp_path / "explain"),
                       "--explain-videos", video.name)
    assert result.returncode == 0, result.stderr[-2000:]
    entries = json.loads((tmp_path / "explain" / "explain.json").read_text())
    assert [e["video_name"] for e in entries] == [video.name]
    submitted = {r["video_name"]: float(r["score"]) for r in read_rows(out)}
    assert entries[0]["score"] == submitted[video.name]  # the score the submission gave, beside the heads'
    assert entries[0]["fused_score"] == pytest.approx(submitted[video.name], abs=1e-6)  # tiny: score.rule fused
    for figure in entries[0]["figures"].values():
        assert (tmp_path / "explain" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert video.name in (tmp_path / "explain" / "index.html").read_text()


def test_time_views_average_interleaved_clips_of_the_configs_windows(synthetic_dataset, tiny_run, test_submission,
                                                                    tmp_path):
    import torch

    from infer.predict import Predictor
    from models.batch import prepare, time_views
    from shards.pool import extracted

    single, predictor = Predictor(tiny_run / "best"), Predictor(tiny_run / "best", time_views=2)
    assert single.time_views == 1  # tiny's score.time_views
    inputs, k = predictor.spec.data, predictor.spec.data.window_frames
    video = sorted((synthetic_dataset / "test").glob("*.mp4"))[0]
    (_, sample, _), = extracted([video], predictor.extraction_options(), workers=0)
    meta = sample["meta"]
    assert meta["windows"] == 2 * inputs.windows
    for j, view in enumerate(time_views(sample, 2)):
        chosen = range(j, meta["windows"], 2)  # view j: windows j, j + 2, ...
        frames = [w * k + i for w in chosen for i in range(k)]
        assert view["meta"]["window_starts"] == [meta["window_starts"][w] for w in chosen]
        assert view["meta"]["boxes"] == [meta["boxes"][t] for t in frames]
        assert torch.equal(view["frames"], sample["frames"][frames])
        assert torch.equal(view["mouths"], sample["mouths"][frames])
        prepare(view, inputs)  # the config's clip shape: refused otherwise
    with pytest.raises(ValueError, match="do not split into 3 views"):
        time_views(sample, 3)

    out = tmp_path / "views.csv"
    result = run_infer(synthetic_dataset / "test", tiny_run / "best", out, "--time-views", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    rows, once = read_rows(out), read_rows(test_submission)
    assert [r["video_name"] for r in rows] == [r["video_name"] for r in once]
    scores = np.array([float(r["score"]) for r in rows])
    assert ((scores > 0) & (scores < 1)).all() and not np.allclose(scores, [float(r["score"]) for r in once])
    result = run_infer(synthetic_dataset / "test", tiny_run / "best", out, "--time-views", "0")
    assert result.returncode == 2 and "--time-views must be 1 or more" in result.stderr
