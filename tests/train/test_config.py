"""Typed configs: shipped YAMLs load, overrides apply in both spellings, mistakes name the file and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from models.counting import MAX_PARAMS, check_size
from train.config import ConfigError, check_pretrained, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    assert {p.name for p in SHIPPED} >= {"tiny.yaml", "base.yaml", "baseline.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.data.frames >= 1 and cfg.data.size >= 16 and cfg.data.mouth_size >= 8


def test_baseline_is_the_organizers_recipe():
    cfg = load_config(ROOT / "configs" / "baseline.yaml")
    assert cfg.model.name == "seed_baseline" and cfg.model.audio_backbone == "resnet18"
    t = cfg.train
    assert (t.optimizer, t.lr, t.schedule, t.step_epochs, t.step_gamma) == ("adam", 1e-3, "step", 5, 0.1)


def test_model_shorthand(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: seed_baseline\n")
    assert load_config(path).model.name == "seed_baseline"


def test_overrides_in_both_spellings():
    cfg = load_config(ROOT / "configs" / "tiny.yaml",
                      ["train.lr=3e-4", "--model.depth", "3", "--log.mlflow=false", "data.augment.jpeg_quality=[50,60]",
                       "model.visual_pretrained=null", "log.run_name=123"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.model.depth == 3 and cfg.log.mlflow is False
    assert cfg.data.augment.jpeg_quality == [50, 60]
    assert cfg.model.visual_pretrained is None
    assert cfg.log.run_name == "123"  # a string field keeps digits as text


def test_parse_overrides():
    assert parse_overrides(["a.b=1", "--c.d", "x", "--e.f=2"]) == [("a.b", "1"), ("c.d", "x"), ("e.f", "2")]
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--train.lr"])


def test_unknown_key_in_yaml_names_the_file_and_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message and "'train.lrr'" in message and "lr" in message and "batch_size" in message


def test_unknown_section_and_unknown_override():
    with pytest.raises(ConfigError, match="command line: unknown key 'train.nope'.*valid keys in train"):
        load_config(ROOT / "configs" / "tiny.yaml", ["train.nope=1"])
    with pytest.raises(ConfigError, match="unknown key 'optim.lr'"):
        load_config(ROOT / "configs" / "tiny.yaml", ["optim.lr=1"])


@pytest.mark.parametrize("override, message", [
    ("train.epochs=ten", "expected an integer"),
    ("train.lr=fast", "expected a number"),
    ("log.mlflow=maybe", "expected true/false"),
    ("train.optimizer=sgd", "not one of"),
    ("train.select=best", "not one of"),
    ("train.eval_every_epochs=0", "train.eval_every_epochs must be >= 1"),
    ("score.time_views=0", "score.time_views must be >= 1"),
    ("model.dim=65", "divisible by model.heads"),
    ("model.blend_head=true", "model.blend_head learns from self-blended clips"),
    ("model.voice_head=true", "model.voice_head reads the clip voice tokens"),
    ("model.clip_audio_crop=true", "model.clip_audio_crop crops the audio of the clip voice tokens"),
    ("model.stream_heads=true", "model.stream_heads learn from loss.stream"),
    ("model.stream_sync=true", "model.stream_sync adds the sync evidence to the stream heads. noisy OR: it needs"),
    ("train.face_pretrain.steps=-1", "train.face_pretrain.steps must be >= 0"),
    ("train.face_pretrain.steps=10 train.face_pretrain.blend=1.0", "share of blended pairs"),
    ("train.face_pretrain.steps=10 train.face_pretrain.lr_scale=-1", "train.face_pretrain.lr_scale must be >= 0"),
    ("train.face_pretrain.steps=10 model.name=seed_baseline", "model 'seed_baseline' has none"),
])
def test_type_and_value_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "configs" / "tiny.yaml", override.split())


def test_type_error_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "typed.yaml"
    path.write_text("data:\n  windows: many\n")
    with pytest.raises(ConfigError, match=f"{path}: data.windows: expected an integer"):
        load_config(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(ROOT / "configs" / "nope.yaml")


def test_model_over_the_limit_is_refused():
    with torch.device("meta"):  # 200M+ parameters without allocating them
        big = nn.Linear(20_000, MAX_PARAMS // 20_000 + 1)
    with pytest.raises(ConfigError, match=r"configs/big.yaml: the model has 200\.0M parameters, over"):
        check_size(big, "configs/big.yaml")


def test_missing_pretrained_weights_stop_training_with_the_fetch_command():
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["model.visual_pretrained=/no/such/file.safetensors"])
    with pytest.raises(ConfigError, match=r"/no/such/file.safetensors does not exist.*scripts.fetch_pretrained"):
        check_pretrained(cfg, "configs/tiny.yaml")
    scratch = load_config(ROOT / "configs" / "base.yaml", ["model.visual_pretrained=none", "model.mouth_pretrained=None"])
    assert scratch.model.visual_pretrained is None and scratch.model.mouth_pretrained is None
    check_pretrained(scratch, "configs/base.yaml")  # `none`: trained from scratch, on purpose
