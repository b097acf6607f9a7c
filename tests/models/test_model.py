"""The models: output contract, masking of missing modalities, frame-aligned audio windows, learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import create_model, list_models
from models.av_model import noisy_or_loss
from models.batch import collate, example_batch, prepare
from models.layers import window_audio
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
    t, w, k = cfg.data.frames, cfg.data.windows, cfg.data.window_frames
    shifts = 2 * min(cfg.model.sync_max_shift, k - 1) + 1
    shapes = {"logit": (3,), "audio_logit": (3,), "visual_logit": (3,), "visual_token_logits": (3, t),
              "audio_token_logits": (3, t), "cls_attention": (3, 3 * t), "sync": (3, t), "sync_matrix": (3, w, k, k),
              "shift_logits": (3, w, shifts), "sync_score": (3,)}
    for key, shape in shapes.items():
        assert tuple(out[key].shape) == shape, key
        assert torch.isfinite(out[key]).all(), key
    mass = out["cls_attention"].sum(1)  # the CLS token's attention to the 3T tokens (the rest is on itself)
    assert ((mass > 0) & (mass <= 1 + 1e-5)).all()
    loss, parts = model.loss(out, batch)
    assert torch.isfinite(loss) and set(parts) == {"main", "audio", "visual", "token", "sync"}


@torch.no_grad()
def test_sync_loss_reads_the_clips_marked_in_sync(tiny):
    model, cfg = tiny
    batch = example_batch(cfg.data, 2)  # labels 0 (genuine, in sync) and 1
    out = model(batch)
    assert batch["in_sync"].tolist() == [True, False]
    genuine_only = model.loss(out, batch)[1]["sync"]
    batch["in_sync"] = torch.tensor([True, True])  # a pseudo-fake of a genuine clip: lips and voice in sync
    assert not torch.isclose(model.loss(out, batch)[1]["sync"], genuine_only)
    batch["in_sync"] = torch.tensor([False, True])
    assert torch.isfinite(model.loss(out, batch)[1]["sync"])


def test_blend_head_learns_from_genuine_and_self_blended_faces_only():
    torch.manual_seed(0)
    cfg = load_config(TINY, ["model.blend_head=true", "loss.blend=0.5", "data.augment.self_blend=0.3"])
    model = create_model(cfg)
    batch = example_batch(cfg.data, 3)
    batch["blend_label"] = torch.tensor([0, 1, -1])  # genuine, self-blended, a real fake
    batch["visual_mask"][0, 3:] = False
    out = model(batch)
    mask = batch["visual_mask"].float()
    expected = (out["blend_token_logits"] * mask).sum(1) / mask.sum(1)
    assert torch.allclose(out["blend_logit"], expected)
    _, parts = model.loss(out, batch)
    assert "blend" in parts
    # the fused head reads the blend score detached: the main loss does not train the blend head
    assert torch.autograd.grad(parts["main"], model.blend_head.weight, allow_unused=True)[0] is None
    per_frame = torch.autograd.grad(parts["blend"], out["blend_token_logits"])[0]
    assert (per_frame[2] == 0).all() and (per_frame[0, 3:] == 0).all()  # real fakes and masked frames: no loss
    assert (per_frame[0, :3] != 0).all() and (per_frame[1] != 0).all()


def test_voice_head_trains_the_clip_voice_encoder_on_the_audio_label():
    torch.manual_seed(0)
    cfg = load_config(TINY, ["model.clip_audio_tokens=4", "model.voice_head=true", "loss.voice=0.5"])
    model = create_model(cfg)
    batch = example_batch(cfg.data, 3)
    batch["audio_mask"][2] = False  # clip 2 has no audio: no voice score, no voice loss
    out = model(batch)
    assert out["voice_logit"].shape == (3,) and out["voice_logit"][2] == 0
    _, parts = model.loss(out, batch)
    assert "voice" in parts
    # the fused head reads the voice score detached; the voice loss reaches the clip voice encoder
    assert torch.autograd.grad(parts["main"], model.voice_head.weight, allow_unused=True)[0] is None
    per_clip = torch.autograd.grad(parts["voice"], out["voice_logit"], retain_graph=True)[0]
    assert per_clip[2] == 0 and (per_clip[:2] != 0).all()
    encoder = torch.autograd.grad(parts["voice"], model.clip_voice.proj[1].weight)[0]
    assert encoder.abs().sum() > 0


def test_noisy_or_needs_one_stream_for_a_fake_and_both_for_a_genuine_clip():
    high, low = torch.tensor([6.0]), torch.tensor([-6.0])
    fake, genuine = torch.tensor([1]), torch.tensor([0])
    assert noisy_or_loss([high, low], fake) < 0.01 and noisy_or_loss([low, high], fake) < 0.01  # either stream will do
    assert noisy_or_loss([low, low], fake) > 5
    assert noisy_or_loss([low, low], genuine) < 0.01 and noisy_or_loss([low, high], genuine) > 5  # both must say genuine
    a, b = torch.tensor([3.0], requires_grad=True), torch.tensor([-3.0], requires_grad=True)
    ga, gb = torch.autograd.grad(noisy_or_loss([a, b], fake).sum(), [a, b])
    assert abs(ga.item()) > 5 * abs(gb.item())  # a fake's gradient goes mostly to the stream that already calls it
    expected = -torch.log(1 - torch.sigmoid(-a) * torch.sigmoid(-b)).detach()
    assert torch.allclose(noisy_or_loss([a, b], fake).detach(), expected, atol=1e-6)


def test_stream_heads_score_face_and_lips_and_learn_from_the_visual_label():
    torch.manual_seed(0)
    cfg = load_config(TINY, ["model.stream_heads=true", "loss.stream=0.5"])
    model = create_model(cfg)
    batch = example_batch(cfg.data, 3)
    batch["visual_mask"][2] = False  # clip 2 has no face: no stream loss
    out = model(batch)
    assert out["face_logit"].shape == (3,) and out["lip_logit"].shape == (3,)
    _, parts = model.loss(out, batch)
    assert "stream" in parts
    assert torch.autograd.grad(parts["main"], model.face_head.weight, allow_unused=True)[0] is None
    per_clip = torch.autograd.grad(parts["stream"], out["face_logit"], retain_graph=True)[0]
    assert per_clip[2] == 0 and (per_clip[:2] != 0).all()
    assert torch.autograd.grad(parts["stream"], model.face.proj[1].weight)[0].abs().sum() > 0  # reaches the encoder


def test_stream_sync_lets_an_out_of_sync_fake_spare_the_streams():
    torch.manual_seed(0)
    cfg = load_config(TINY, ["model.stream_heads=true", "loss.stream=0.5", "model.stream_sync=true"])
    model = create_model(cfg)
    batch = example_batch(cfg.data, 3)
    batch["label"][:] = 1
    batch["visual_label"][:] = 1
    batch["audio_mask"][2] = False  # clip 2 has no lip-audio pair: the sync evidence explains nothing
    out = model(batch)
    out["sync_score"] = torch.tensor([-3.0, 3.0, -3.0])  # clip 0 out of sync, clip 1 in sync
    explained = model.sync_explanation(out)
    assert explained[0] > 0 > explained[1] and explained[2] < -100
    _, parts = model.loss(out, batch)
    per_clip = torch.autograd.grad(parts["stream"], out["face_logit"], retain_graph=True)[0].abs()
    assert per_clip[0] < 0.5 * per_clip[1]  # the out-of-sync fake pushes the face stream less
    weight, bias = torch.autograd.grad(parts["stream"], model.stream_sync)[0]
    assert weight != 0 and bias != 0  # only the calibration learns from the evidence; the evidence is detached


@torch.no_grad()
def test_missing_modality_is_masked_not_zeroed(tiny):
    model, cfg = tiny
    batch = example_batch(cfg.data, 2)
    batch["audio_mask"][0] = False  # clip 0 has no audio
    batch["visual_mask"][1] = False  # clip 1 has no face
    base = model(batch)
    changed = dict(batch, audio=batch["audio"].clone(), frames=batch["frames"].clone(), mouths=batch["mouths"].clone())
    changed["audio"][0] = torch.rand_like(changed["audio"][0])  # whatever is in a masked modality ...
    changed["frames"][1] = 255 - changed["frames"][1]
    changed["mouths"][1] = 255 - changed["mouths"][1]
    after = model(changed)
    # ... cannot change the clip's score, and each unimodal head ignores the other modality
    assert torch.allclose(base["logit"], after["logit"], atol=1e-5)
    swapped_audio = dict(batch, audio=torch.flip(batch["audio"], [1]))
    assert torch.allclose(model(swapped_audio)["visual_logit"], base["visual_logit"], atol=1e-5)
    swapped_frames = dict(batch, frames=torch.flip(batch["frames"], [-1]), mouths=torch.flip(batch["mouths"], [-1]))
    assert torch.allclose(model(swapped_frames)["audio_logit"], base["audio_logit"], atol=1e-5)
    # and clip 0 (no audio) is scored from its faces: its visual-only and audio-visual views see the same tokens
    unmasked = model(dict(batch, audio_mask=torch.ones_like(batch["audio_mask"])))
    assert not torch.allclose(unmasked["logit"][0], base["logit"][0], atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("crop", [False, True])
@pytest.mark.parametrize("backbone", [None, "test_resnet"])
def test_clip_voice_tokens_hear_the_real_audio_only(backbone, crop):
    """model.clip_audio_tokens: the whole clip's voice joins the audio views; what lies past the audio's length
    (the padding) changes nothing, the real audio does, the visual-only view never hears it, and a clip without
    audio has no clip voice either. The same with a timm CNN reading the spectrogram (model.clip_audio_backbone),
    and with only the spans inside the audio read (model.clip_audio_crop)."""
    torch.manual_seed(0)
    cfg = load_config(TINY, ["model.clip_audio_tokens=8", f"model.clip_audio_backbone={backbone or 'null'}",
                             f"model.clip_audio_crop={crop}"])
    model = create_model(cfg).eval()
    batch = example_batch(cfg.data, 2)
    batch["audio_length"][:] = 3 * 16000
    batch["audio"][:, 3 * 16000:] = 0.0
    base = model(batch)
    tokens, mask = model.clip_voice(batch["audio"], batch["audio_length"])
    assert tokens.shape == (2, 8, cfg.model.dim) and mask[0].tolist() == [True] * 3 + [False] * 5  # 10 s / 8 spans
    padded = batch["audio"].clone()
    padded[:, 3 * 16000:] = torch.rand_like(padded[:, 3 * 16000:])
    assert torch.allclose(model(dict(batch, audio=padded))["logit"], base["logit"], atol=1e-5)
    louder = dict(batch, audio=batch["audio"] * 4)  # level-free: the clip's own statistics normalise it
    assert torch.allclose(model.clip_voice(louder["audio"], batch["audio_length"])[0], tokens, atol=1e-3)
    changed = batch["audio"].clone()
    changed[:, 5 * 16000 // 2:3 * 16000] = 0.0  # past every window's audio, inside the real audio
    after = model(dict(batch, audio=changed))
    assert not torch.allclose(after["audio_logit"], base["audio_logit"], atol=1e-5)
    assert torch.allclose(after["visual_logit"], base["visual_logit"], atol=1e-5)
    silent = dict(batch, audio_mask=torch.zeros_like(batch["audio_mask"]))
    assert torch.allclose(model(silent)["logit"], model(dict(silent, audio=changed))["logit"], atol=1e-5)


@torch.no_grad()
def test_clip_voice_band_norm_takes_a_fixed_channel_colour_away():
    """model.clip_audio_band_norm: each Mel band centred on its mean over the real audio, so a fixed filter on the
    recording (a microphone's or a room's colour: nearly a constant per band in log-Mel) barely moves the clip
    voice tokens, where without it they move with the colour; the padding still changes nothing."""
    t = torch.arange(3 * 16000) / 16000
    noise = torch.randn(2, t.numel(), generator=torch.Generator().manual_seed(0))
    voice = noise * (1 + torch.sin(2 * torch.pi * 3 * t))  # syllable-rate loudness
    coloured = voice.clone()
    coloured[:, 1:] -= 0.9 * voice[:, :-1]  # pre-emphasis: up to 25 dB more treble than bass
    lengths = torch.full((2,), t.numel())
    moved = {}
    for band_norm in (False, True):
        torch.manual_seed(0)
        cfg = load_config(TINY, ["model.clip_audio_tokens=4", f"model.clip_audio_band_norm={band_norm}"])
        encoder = create_model(cfg).clip_voice.eval()
        tokens = encoder(voice, lengths)[0]
        moved[band_norm] = float((encoder(coloured, lengths)[0] - tokens).norm() / tokens.norm())
        silent_pad, noisy_pad = (torch.cat([voice, pad], 1) for pad in (torch.zeros(2, 16000), torch.rand(2, 16000)))
        assert torch.allclose(encoder(silent_pad, lengths)[0], encoder(noisy_pad, lengths)[0], atol=1e-4)
    assert moved[True] < moved[False] / 3, moved


@torch.no_grad()
def test_clip_voice_crop_reads_only_the_spans_with_audio_and_each_clip_alone_in_evaluation():
    """model.clip_audio_crop: the clip voice encoder computes only the token spans that start inside some clip's
    audio (without it, the whole 10 s of padding): training crops the batch to its longest clip in one call,
    evaluation groups the clips by their own span count, so that a clip's tokens are the same alone as in any batch
    (inference scores a video whatever it is batched with)."""
    torch.manual_seed(0)
    cfg = load_config(TINY, ["model.clip_audio_tokens=8", "model.clip_audio_backbone=test_resnet",
                             "model.clip_audio_crop=true"])
    encoder = create_model(cfg).clip_voice  # spans of 10 s / 8 = 20000 samples
    lengths = torch.tensor([2 * 16000, 5 * 16000, 0])
    audio = example_batch(cfg.data, 3)["audio"] * (torch.arange(160000)[None, :] < lengths[:, None])
    read = []
    encoder.logmel.register_forward_pre_hook(lambda _, args: read.append(tuple(args[0].shape)))
    encoder.train()(audio, lengths)
    assert read == [(3, 80000)]  # 4 spans: those of the 5-s clip
    read.clear()
    encoder.crop = False
    encoder(audio, lengths)
    assert read == [(3, 160000)]
    encoder.crop = True
    read.clear()
    tokens, mask = encoder.eval()(audio, lengths)
    assert sorted(read) == [(1, 20000), (1, 40000), (1, 80000)]  # the silent clip still reads one span
    assert mask.sum(1).tolist() == [2, 4, 0]
    for i in range(3):
        alone, alone_mask = encoder(audio[i:i + 1], lengths[i:i + 1])
        assert torch.equal(alone_mask, mask[i:i + 1])
        assert torch.allclose(alone[mask[i:i + 1]], tokens[i:i + 1][mask[i:i + 1]], atol=1e-6)


@torch.no_grad()
def test_circular_temporal_padding_keeps_position_out_of_the_lip_tokens():
    """Identical mouth crops in every frame of a window: with circular padding every lip token is the same (the
    synchrony losses can only match lips to audio by content); with zero padding the tokens tell the frame's place
    in the window, which the synchrony losses learned to exploit instead of the lips."""
    tokens = {}
    for padding in ("zeros", "circular"):
        torch.manual_seed(0)
        cfg = load_config(TINY, ["model.temporal_kernel=5", "model.temporal_layers=2",
                                 f"model.temporal_padding={padding}"])
        model = create_model(cfg).eval()
        batch = example_batch(cfg.data, 1)
        mouths = batch["mouths"][:, :1].expand_as(batch["mouths"]).contiguous()
        tokens[padding] = model._per_window(model.mouth(mouths), model.lip_motion)[0, :cfg.data.window_frames]
    assert torch.allclose(tokens["circular"], tokens["circular"][:1].expand_as(tokens["circular"]), atol=1e-5)
    assert not torch.allclose(tokens["zeros"], tokens["zeros"][:1].expand_as(tokens["zeros"]), atol=1e-3)


@torch.no_grad()
@pytest.mark.parametrize(("option", "stream", "images"), [("face_motion", "face", "frames"),
                                                          ("mouth_motion", "mouth", "mouths")])
def test_motion_reads_each_frame_and_the_one_before_it_in_its_window(option, stream, images):
    torch.manual_seed(0)
    cfg = load_config(TINY, [f"model.{option}=true"])
    model = create_model(cfg).eval()
    encoder = getattr(model, stream)
    batch = example_batch(cfg.data, 1)
    k = cfg.data.window_frames
    base = encoder(batch[images])
    for frame, expected in ((3, [3, 4]), (k - 1, [k - 1]), (k, [k, k + 1])):  # no difference across windows
        changed = batch[images].clone()
        changed[0, frame] = 255 - changed[0, frame]
        moved = (encoder(changed) - base).abs().sum(-1)[0] > 1e-6
        assert moved.nonzero().flatten().tolist() == expected
    out = model(batch)
    assert torch.isfinite(out["logit"]).all() and tuple(out["visual_token_logits"].shape) == (1, cfg.data.frames)


def test_window_audio_is_cut_at_each_windows_offset():
    audio = torch.zeros(1, 2000)
    audio[0, [100, 900]] = 1.0
    cut = window_audio(audio, torch.tensor([[100, 900]]), 50)
    assert cut.shape == (1, 2, 50) and cut[0, :, 0].tolist() == [1.0, 1.0] and cut.sum().item() == 2.0
    # outside the audio: zeros, not a wrapped or clamped sample
    assert window_audio(audio, torch.tensor([[-10, 1990]]), 20)[0, 0, :10].abs().sum() == 0
    assert window_audio(audio, torch.tensor([[-10, 1990]]), 20)[0, 1, 10:].abs().sum() == 0


def assert_a_click_in_frame_5_reaches_only_its_neighbours(model, cfg, rate: float | None = None) -> None:
    """A click in the middle of window 1's frame 5 (frames of 16000 / rate samples, data.fps when None) changes audio
    token 5 of that window (and its temporal-convolution neighbours), not the far frames nor window 0."""
    batch = example_batch(cfg.data, 1)
    batch["audio"].zero_()
    offset = int(batch["window_offsets"][0, 1])
    rates = None if rate is None else torch.tensor([rate])
    per_frame = 16000 / (rate or cfg.data.fps)
    with torch.no_grad():
        quiet = model.encode_voice(batch["audio"], batch["window_offsets"], rates)
        batch["audio"][0, offset + int(5.5 * per_frame)] = 1.0
        click = model.encode_voice(batch["audio"], batch["window_offsets"], rates)
    changed = (click - quiet).abs().sum(-1)[0] > 1e-6
    k = cfg.data.window_frames
    assert changed[k + 5] and not changed[:k].any()  # window 0 hears nothing of window 1
    reach = cfg.model.temporal_kernel // 2 * cfg.model.temporal_layers + 1  # conv front end: one hop either way
    assert not changed[k + 5 + reach + 1:].any() and not changed[k:k + 5 - reach - 1].any()


def test_each_frames_audio_token_hears_its_own_40_ms(tiny):
    """A click in frame k's audio changes audio token k, not the far frames: the audio stream is aligned with the
    frames to the hop."""
    model, cfg = tiny
    assert_a_click_in_frame_5_reaches_only_its_neighbours(model, cfg)


def test_shift_logits_peak_where_lips_and_audio_align(tiny):
    model, _ = tiny
    k, d = 8, model.max_shift
    for true_shift in (0, 2, -3):
        sim = torch.full((1, 1, k, k), -1.0)
        for i in range(k):
            if 0 <= i + true_shift < k:
                sim[0, 0, i, i + true_shift] = 1.0
        pairs = torch.ones(1, 1, k, dtype=torch.bool)
        logits = model.shift_logits(sim, pairs)[0, 0]
        assert logits.argmax().item() == true_shift + d
        score, has = model.sync_evidence(logits[None, None], pairs)
        assert has.item() == 1.0 and (score.item() > 0) == (true_shift == 0)


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


def test_compiled_graphs_leave_the_stft_to_eager_and_do_not_recompile(tiny):
    """torch.compile: the log-Mel (complex-valued STFT, no inductor code generation) runs outside the traced graphs,
    and a second batch of the same shape compiles nothing new."""
    import copy

    model, cfg = tiny
    graphs: list[torch.fx.GraphModule] = []

    def counting_backend(gm: torch.fx.GraphModule, _inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = copy.deepcopy(model)
    compiled.compile(backend=counting_backend)
    batch = example_batch(cfg.data, 2)
    with torch.no_grad():
        first = compiled(batch)
        traced = len(graphs)
        compiled(batch)
        expected = model(batch)
    torch._dynamo.reset()
    assert traced > 0 and len(graphs) == traced
    targets = {str(node.target) for gm in graphs for node in gm.graph.nodes}
    assert not any("stft" in target for target in targets)
    torch.testing.assert_close(first["logit"], expected["logit"])


def test_tiny_overfits_a_handful_of_clips():
    import numpy as np

    from tests.train.conftest import TINY_TEST_OVERRIDES, decoded, make_sample

    cfg = load_config(TINY, TINY_TEST_OVERRIDES)
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


def test_audio_tokens_of_a_native_rate_clip_hear_their_own_frame(tiny):
    """A clip read at 30 fps (data.native_rate): frame k owns 1/30 s of audio, and its token hears a click there,
    while a clip at data.fps gets the fixed-rate path's tokens exactly."""
    _, cfg = tiny
    torch.manual_seed(0)
    model = create_model(load_config(TINY, ["data.native_rate=true"])).eval()
    batch = example_batch(cfg.data, 1)
    nominal = torch.tensor([cfg.data.fps])
    with torch.no_grad():
        at_fps = model.encode_voice(batch["audio"], batch["window_offsets"], nominal)
        model.native_rate = False
        assert torch.equal(at_fps, model.encode_voice(batch["audio"], batch["window_offsets"], nominal))
        model.native_rate = True
    assert_a_click_in_frame_5_reaches_only_its_neighbours(model, cfg, 30.0)  # at 25 fps that sample is frame 4


def test_resample_steps_stretches_time_linearly():
    from models.layers import resample_steps

    x = torch.arange(10.0).view(1, 1, 1, 10).repeat(2, 1, 3, 1)
    out = resample_steps(x, torch.tensor([1.0, 0.5]), 6)
    assert torch.equal(out[0], x[0, ..., :6])
    assert torch.allclose(out[1, 0, 0], torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5]))
