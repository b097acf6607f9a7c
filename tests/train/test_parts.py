"""train.parts: the EMA's decay against the length of the run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from train.parts import EMA, EMA_START_SHARE, ema_decay_for


def test_ema_decay_is_kept_when_the_run_outlasts_its_horizon():
    assert ema_decay_for(0.995, 1368) == 0.995  # small's 18 epochs of 76 steps: its decay, bit for bit


def test_ema_decay_is_capped_so_the_start_weights_fade_to_one_percent():
    decay = ema_decay_for(0.999, 1368)  # 0.999 ** 1368 = 0.25 of the start left
    assert decay < 0.999 and decay ** 1368 == pytest.approx(EMA_START_SHARE)


def test_capped_ema_forgets_its_start():
    """A layer that jumps from 0 to 1 at the first step: after the run, the capped EMA holds 99% of the new value."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    steps = 200
    ema = EMA(model, ema_decay_for(0.999, steps))
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(steps):
        ema.update(model)
    assert float(ema.model.weight) == pytest.approx(1 - EMA_START_SHARE, rel=1e-4)
