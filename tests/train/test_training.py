"""python -m train end to end on tiny shards: single process, resume (stop and kill -9), the MLflow store, the best
checkpoint for inference, and the start-up errors. Multi-process launches (DDP, DeepSpeed, several nodes) are in
test_distributed.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from competition import compute_metrics
from models.checkpoint import load_for_inference, load_score_rule
from models.scoring import evidence
from tests.train.conftest import ROOT, TINY_TEST_OVERRIDES, run_cli, train_cmd
from train.loop import is_selected

# dropout, EMA, a worker process and gradient accumulation: everything exact resumption has to get right; and the
# face pretraining stage (skipped on --resume), the blend head and a late-fusion score rule (fitted on validation)
RUN_ARGS = ["score.rule=mean", "data.workers=1", "model.dropout=0.1", "train.ema=true", "train.ema_decay=0.5", "train.grad_accum=2",
            "train.save_every_steps=2", "train.batch_size=2", "train.face_pretrain.steps=4",
            "train.face_pretrain.batch_size=4", "train.face_pretrain.log_every_steps=2", "model.blend_head=true",
            "loss.blend=0.5", "data.augment.self_blend=0.3"]
STEPS = 6  # 2 epochs x 3 steps


def step_losses(out: Path) -> dict[int, float]:
    """step -> loss; after a kill -9 the re-run steps appear twice and the last entry counts."""
    losses = {}
    for line in (out / "train_log.jsonl").read_text().splitlines():
        row = json.loads(line)
        losses[row["step"]] = row["loss"]
    return losses


@pytest.fixture(scope="module")
def full_run(tiny_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full_run")
    run_cli(train_cmd(tiny_shards, out, *RUN_ARGS))
    return out


def test_run_outputs(full_run):
    for name in ("config.yaml", "metrics.json", "train_log.jsonl", "val_predictions.csv", "best/model.safetensors",
                 "best/config.yaml", "best/info.json", "plots/roc.png", "plots/score_histogram.png", "state/latest",
                 "mlflow.db"):
        assert (full_run / name).is_file(), name
    metrics = json.loads((full_run / "metrics.json").read_text())
    assert sorted(step_losses(full_run)) == list(range(1, STEPS + 1))
    assert len(metrics["history"]) == 2 and metrics["best"]["auc"] is not None
    for epoch in metrics["history"]:
        assert epoch["n"] == epoch["n_evaluated"] == 11  # every validation clip exactly once
    info = json.loads((full_run / "best" / "info.json").read_text())
    assert info["code_version"]["source_sha256"] and info["metrics"]["auc"] == metrics["best"]["auc"]
    pretrain = metrics["face_pretrain"]
    assert pretrain["steps"] == 4 and [row["step"] for row in pretrain["history"]] == [2, 4]
    # train.ema_decay=0.5 over 6 steps would leave 1.6% of the EMA on the start weights: capped to 1%
    assert metrics["ema_decay"] == pytest.approx(0.01 ** (1 / STEPS)) and 0.5 ** STEPS > 0.01


def test_resume_after_stop_reproduces_the_uninterrupted_run(full_run, tiny_shards, tmp_path):
    out = tmp_path / "stopped"
    last = "train.select=last"  # changes which epoch lands in best/, not the losses
    # and no validation after epoch 1: how often a run validates must not change its training either
    args = [*RUN_ARGS, last, "train.eval_every_epochs=2"]
    run_cli(train_cmd(tiny_shards, out, *args, "train.stop_after_steps=4"))  # mid-epoch 2
    assert max(step_losses(out)) == 4
    resumed = run_cli(train_cmd(tiny_shards, out, *args, "--resume"))
    assert "face pretraining" not in resumed.stderr  # the saved state holds the pretrained encoder
    expected, got = step_losses(full_run), step_losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
    metrics = json.loads((out / "metrics.json").read_text())
    reference = json.loads((full_run / "metrics.json").read_text())["final"]
    assert metrics["final"]["log_loss"] == pytest.approx(reference["log_loss"], abs=1e-6)
    assert metrics["best"] == metrics["final"]  # train.select=last
    assert [row["epoch"] for row in metrics["history"]] == [2]
    assert json.loads((out / "best" / "info.json").read_text())["epoch"] == 2


def test_select_rule():
    first, worse, undefined = {"auc": 0.8, "log_loss": 0.5}, {"auc": 0.7, "log_loss": 0.4}, {"auc": None, "log_loss": 0.3}
    assert is_selected(first, None, "auc") and is_selected(first, None, "last")
    assert not is_selected(worse, first, "auc") and is_selected(worse, first, "last")
    assert not is_selected(dict(first), first, "auc")  # a tie keeps the earlier epoch
    assert is_selected(undefined, {"auc": None, "log_loss": 0.4}, "auc")  # single-class validation: log-loss


@pytest.mark.slow
def test_resume_after_kill_9(full_run, tiny_shards, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(c) for c in train_cmd(tiny_shards, out, *RUN_ARGS, "train.save_every_steps=1")]
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    log = out / "train_log.jsonl"
    while time.time() < deadline and process.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    killed = process.returncode == -signal.SIGKILL
    run_cli(train_cmd(tiny_shards, out, *RUN_ARGS, "train.save_every_steps=1", "--resume"))
    expected, got = step_losses(full_run), step_losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(expected[step], abs=1e-6), (step, killed)
    assert killed, "the run finished before it could be killed; the comparison above still held"


def test_mlflow_store_holds_the_run(full_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{full_run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("avdeepfake-tiny")
    assert experiment.artifact_location == (full_run / "mlartifacts").resolve().as_uri()
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["model.name"] == "av_transformer" and params["train.grad_accum"] == "2"
    assert int(params["params_true"]) > 0 and tags["code_version"] and tags["source_sha256"]
    assert len(client.get_metric_history(run.info.run_id, "val/auc")) == 2
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) >= 2
    for name in ("train/clips_per_s", "train/data_time_frac", "train/lr", "train/loss_sync", "val/tpr_at_fpr_1e-3"):
        assert client.get_metric_history(run.info.run_id, name), name
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best", "plots", "metrics.json", "config.yaml"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "best")} == {
        "best/model.safetensors", "best/config.yaml", "best/info.json"}
    assert (full_run / "mlartifacts" / run.info.run_id / "artifacts" / "plots" / "roc.png").is_file()


def test_best_checkpoint_reproduces_its_validation_metrics(full_run, tiny_shards):
    from models.batch import collate, prepare
    from tests.train.conftest import read_samples

    model, cfg = load_for_inference(full_run / "best")
    rule = load_score_rule(full_run / "best", cfg)
    assert not model.training and cfg.data.frames == 4 and cfg.data.windows == 2
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)  # oneDNN's faster layout on a CPU
               for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert rule.rule == cfg.score.rule == "mean"
    # every output, measured on the validation set's genuine clips (the no-face clip has no visual evidence)
    assert set(rule.center) == {"logit", "audio_logit", "visual_logit", "sync_score", "blend_logit"}
    assert rule.genuine_clips == 6 and rule.slope > 0
    samples = read_samples(tiny_shards["val"])
    batch = collate([prepare(s, cfg.data) for s in samples])
    with torch.no_grad():
        out = model(batch)
    ev = evidence(out)
    assert np.isnan(ev["visual_logit"]).sum() == 1 and np.isnan(ev["audio_logit"]).sum() == 1
    info = json.loads((full_run / "best" / "info.json").read_text())
    labels = batch["label"].numpy()
    recomputed = compute_metrics(labels, rule.probability(ev))  # what validation scored: the rule's probability
    assert recomputed["auc"] == pytest.approx(info["metrics"]["auc"])
    assert recomputed["log_loss"] == pytest.approx(info["metrics"]["log_loss"], abs=1e-5)
    fused_head = compute_metrics(labels, torch.sigmoid(out["logit"]).numpy())
    assert fused_head["auc"] == pytest.approx(info["metrics"]["fused_auc"])  # and the fused head, reported beside
    assert {"audio_auc", "visual_auc", "blend_auc"} <= set(info["metrics"])  # and each other head
    same, _ = load_for_inference(full_run / "best" / "model.safetensors")  # the weights file works as well
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values(), strict=True))


def test_broken_checkpoints_fail_clearly(full_run, tmp_path):
    missing = tmp_path / "missing"
    shutil.copytree(full_run / "best", missing)
    (missing / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        load_for_inference(missing)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(full_run / "best", corrupt)
    data = bytearray((corrupt / "model.safetensors").read_bytes())
    data[-10:] = b"0123456789"
    (corrupt / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_for_inference(corrupt)
    (corrupt / "info.json").unlink()  # without the record, the file itself must still be checked
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_for_inference(corrupt)
    mismatched = tmp_path / "mismatched"
    shutil.copytree(full_run / "best", mismatched)
    config = (mismatched / "config.yaml").read_text().replace("depth: 2", "depth: 3")
    (mismatched / "config.yaml").write_text(config)
    with pytest.raises(ValueError, match="does not fit model"):
        load_for_inference(mismatched)


@pytest.mark.parametrize("extra, message", [
    (["data.window_frames=8"], "shards were packed with window_frames=2 but the config says data.window_frames=8"),
    (["train.lrr=1"], "command line: unknown key 'train.lrr'"),
    (["data.native_rate=true"], "shards were packed with native_rate=False but the config says data.native_rate=True"),
])
def test_startup_errors_are_clear(tiny_shards, tmp_path, extra, message, capsys):
    from train.loop import main

    assert main([str(a) for a in train_cmd(tiny_shards, tmp_path / "bad", *extra)[3:]]) == 2
    assert message in capsys.readouterr().err


def test_missing_shards_are_reported(tmp_path, capsys):
    from train.loop import main

    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["--config", "configs/tiny.yaml", "--train-shards", str(empty), "--val-shards", str(empty),
            "--out", str(tmp_path / "o"), *TINY_TEST_OVERRIDES]
    assert main(argv) == 2
    assert "train shards" in capsys.readouterr().err


def test_a_fusion_rule_needs_genuine_validation_clips(tiny_shards, tmp_path, capsys):
    from tests.train.conftest import write_shards
    from train.loop import main

    write_shards(tmp_path / "val", 2, 2, seed=3)  # one genuine clip, one fake
    argv = ["--config", "configs/tiny.yaml", "--train-shards", str(tiny_shards["train"]), "--val-shards",
            str(tmp_path / "val"), "--out", str(tmp_path / "o"), *TINY_TEST_OVERRIDES, "score.rule=max"]
    assert main(argv) == 2
    assert "score.rule=max standardises the outputs on the genuine validation clips" in capsys.readouterr().err


def test_channels_last_changes_the_layout_not_the_training(full_run, tiny_shards, tmp_path):
    from train.loop import setup

    args = [str(a) for a in train_cmd(tiny_shards, tmp_path / "setup", *RUN_ARGS, "log.mlflow=false")[3:]]
    for channels_last in (True, False):
        job, _ = setup([*args, f"train.channels_last={str(channels_last).lower()}"])
        weights = [m.weight for m in job.unwrapped.modules()
                   if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1 and m.weight.shape[-1] > 1]
        assert weights and all(w.is_contiguous(memory_format=torch.channels_last) == channels_last
                               for w in weights)
    out = tmp_path / "contiguous"
    run_cli(train_cmd(tiny_shards, out, *RUN_ARGS, "train.channels_last=false"))  # full_run: tiny.yaml's true
    nhwc, nchw = step_losses(full_run), step_losses(out)
    assert nhwc.keys() == nchw.keys()
    np.testing.assert_allclose(list(nhwc.values()), list(nchw.values()), rtol=1e-4)


def test_validation_scores_each_clip_as_inference_does_with_time_views(tiny_shards, tmp_path):
    """Validation shards packed with `--pack-args val` hold score.time_views x the windows: validation averages each
    clip's outputs over its views and fits the score rule on them, so a checkpoint's inference scores the
    validation clips exactly as validation did (here 1 window x 2 views: the test shards' 2 windows)."""
    from infer.predict import Predictor
    from models import create_model
    from models.checkpoint import save_best
    from tests.train.conftest import read_samples
    from train.config import load_config
    from train.data import shard_urls, validation_views
    from train.parts import make_accelerator
    from train.validate import evaluate

    cfg = load_config(ROOT / "configs" / "tiny.yaml",
                      [*TINY_TEST_OVERRIDES, "data.windows=1", "score.time_views=2", "score.rule=mean"])
    urls = shard_urls(tiny_shards["val"], "val")
    assert validation_views(urls, cfg) == 2
    torch.manual_seed(0)
    model = create_model(cfg).eval()
    validation = evaluate(model, cfg, urls, make_accelerator(cfg), views=2)
    assert validation.metrics["n"] == validation.metrics["n_evaluated"] == 11  # one row per clip, not per view

    save_best(tmp_path / "best", model.state_dict(), cfg, {"score": validation.rule.to_dict()})
    predictor = Predictor(tmp_path / "best")
    assert predictor.time_views == 2
    samples = {s["key"]: s for s in read_samples(tiny_shards["val"])}
    inferred = predictor.score([samples[key] for key in validation.keys])
    assert [row["score"] for row in inferred] == pytest.approx(validation.scores.tolist(), abs=1e-6)
