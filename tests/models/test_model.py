"""The models: output contract, masking of missing modalities, frame-aligned audio windows, learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import create_model, list_models
from models.batch import collate, example_batch, prepare
from models.layers import audio_windows
from train.config import load_config

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = load_config(TINY)
    return create_model(cfg).eval(), cfg


def test_registry_lists_both_models():
    assert {"av_transformer", "seed_baseline"} <= set(list_models())


def test_output_contract(tiny):
    model, cfg = tiny
    batch = example_batch(cfg.data, 3)
    out = model(batch)
    t = cfg.data.frames
    shapes = {"logit": (3,), "audio_logit": (3,), "visual_logit": (3,), "visual_token_logits": (3, t),
              "audio_token_logits": (3, t), "cls_attention": (3, 2 * t), "sync": (3, t), "sync_matrix": (3, t, t)}
    for key, shape in shapes.items():
        assert tuple(out[key].shape) == shape, key
        assert torch.isfinite(out[key]).all(), key
    mass = out["cls_attention"].sum(1)  # the CLS token's attention to the 2T tokens (the rest is on itself)
    assert ((mass > 0) & (mass <= 1 + 1e-5)).all()
    loss, parts = model.loss(out, batch)
    assert torch.isfinite(loss) and set(parts) == {"main", "audio", "visual", "token", "sync"}


@torch.no_grad()
def test_missing_modality_is_masked_not_zeroed(tiny):
    model, cfg = tiny
    batch = example_batch(cfg.data, 2)
    batch["audio_mask"][0] = False  # clip 0 has no audio
    batch["visual_mask"][1] = False  # clip 1 has no face
    base = model(batch)
    changed = dict(batch, audio=batch["audio"].clone(), frames=batch["frames"].clone())
    changed["audio"][0] = torch.rand_like(changed["audio"][0])  # whatever is in a masked modality ...
    changed["frames"][1] = 255 - changed["frames"][1]
    after = model(changed)
    # ... cannot change the clip's score, and each unimodal head ignores the other modality
    assert torch.allclose(base["logit"], after["logit"], atol=1e-5)
    swapped_audio = dict(batch, audio=torch.flip(batch["audio"], [1]))
    assert torch.allclose(model(swapped_audio)["visual_logit"], base["visual_logit"], atol=1e-5)
    swapped_frames = dict(batch, frames=torch.flip(batch["frames"], [-1]))
    assert torch.allclose(model(swapped_frames)["audio_logit"], base["audio_logit"], atol=1e-5)
    # and clip 0 (no audio) is scored from its faces: its visual-only and audio-visual views see the same tokens
    unmasked = model(dict(batch, audio_mask=torch.ones_like(batch["audio_mask"])))
    assert not torch.allclose(unmasked["logit"][0], base["logit"][0], atol=1e-5)


def test_audio_windows_are_centred_on_frame_times():
    length, steps, window = 1600, 4, 80
    audio = torch.zeros(1, 2000)
    centres = [int((i + 0.5) * length / steps) for i in range(steps)]
    audio[0, centres] = 1.0
    windows = audio_windows(audio, torch.tensor([length]), steps, window)
    assert windows.shape == (1, steps, window)
    for i in range(steps):
        assert windows[0, i].argmax().item() == window // 2  # each frame's impulse sits mid-window
        assert windows[0, i].sum().item() == 1.0  # neighbours' impulses are 400 samples away
    # samples past the clip's valid audio are zeros, not the padding's content
    audio[0, length:] = 5.0
    assert audio_windows(audio, torch.tensor([length]), steps, window).max() == 1.0


def test_baseline_scores_are_the_logit_difference():
    cfg = load_config(ROOT / "configs" / "baseline.yaml")
    model = create_model(cfg).eval()
    batch = example_batch(cfg.data, 2)
    with torch.no_grad():
        out = model(batch)
    assert torch.allclose(out["logit"], out["logits"][:, 1] - out["logits"][:, 0])
    assert torch.allclose(torch.sigmoid(out["logit"]), out["logits"].softmax(1)[:, 1], atol=1e-6)


def test_bf16_model_runs(tiny):
    """DeepSpeed bf16 casts the whole model; the STFT must stay float32 and inputs follow the weights."""
    import copy

    model, cfg = tiny
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert half.logmel.mel.spectrogram.window.dtype == torch.float32
    with torch.no_grad():
        out = half(example_batch(cfg.data, 2))
    assert torch.isfinite(out["logit"]).all()


def test_tiny_overfits_a_handful_of_clips():
    import numpy as np

    from tests.train.conftest import FRAMES, SIZE, decoded, make_sample

    cfg = load_config(TINY, [f"data.frames={FRAMES}", f"data.size={SIZE}", "data.max_clip_seconds=1.0",
                             "model.audio_window_seconds=0.25"])
    torch.manual_seed(0)
    model = create_model(cfg).train()
    rng = np.random.default_rng(0)
    batch = collate([prepare(decoded(make_sample(i, i % 2, rng)), cfg.data) for i in range(6)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss, _ = model.loss(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
