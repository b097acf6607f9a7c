"""scripts.fetch_pretrained: ImageNet-1K-only tags, conversion to safetensors with a sha256 manifest, loading
through the model library (no hub here: a checkpoint made from a randomly initialised timm model stands in)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from models.config import ConfigError
from models.registry import timm_backbone
from scripts.fetch_pretrained import IMAGENET_1K, RefusedError, check_tag, configured_tags

ROOT = Path(__file__).resolve().parents[2]


def fetch(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.fetch_pretrained", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("tag", ["vit_base_patch16_224.augreg2_in21k_ft_in1k", "convnext_tiny.fb_in22k",
                                 "vit_base_patch16_clip_224.openai", "resnet50.fb_swsl_ig1b_ft_in1k",
                                 "deit_small_distilled_patch16_224.fb_in1k", "resnet18"])
def test_anything_beyond_imagenet_1k_is_refused(tag):
    with pytest.raises(RefusedError, match="ImageNet-1K"):
        check_tag(tag)


def test_the_command_refuses_before_downloading(tmp_path):
    result = fetch("--out", tmp_path, "resnet18.a1_in1k", "convnext_tiny.fb_in22k")
    assert result.returncode == 2 and "refused 'convnext_tiny.fb_in22k'" in result.stderr
    assert not any(tmp_path.iterdir())  # not even the allowed tag before it


def test_the_shipped_gpu_config_names_allowed_weights():
    tags = configured_tags()
    assert tags and all(check_tag(t) == t for t in tags)


def test_a_local_checkpoint_becomes_verified_safetensors_that_load(tmp_path):
    tag = "resnet18.a1_in1k"
    model = timm.create_model("resnet18", pretrained=False)  # random init: what a download would hold
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ckpt.pth")
    out = tmp_path / "weights"
    result = fetch("--from-file", tmp_path / "ckpt.pth", "--tag", tag, "--out", out)
    assert result.returncode == 0, result.stderr
    file = out / f"{tag}.safetensors"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest[file.name]["tag"] == tag and manifest[file.name]["what"] == IMAGENET_1K[tag]
    assert file.read_bytes()[:8] != b"\x80\x02\x8a\nl\xfc\x9c"  # not a pickle
    loaded = timm_backbone("resnet18", str(file))  # num_classes=0: the classifier is dropped
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())
    data = bytearray(file.read_bytes())  # a changed file is refused, naming the command that fetches it again
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="fetch_pretrained"):
        timm_backbone("resnet18", str(file))
