"""Every shipped model config is within the competition's 200M parameters, by thop and by true count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.counting import MAX_PARAMS
from scripts import count_params

ROOT = Path(__file__).resolve().parents[2]
MODEL_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def script():
    return count_params


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.name)
def test_shipped_config_within_limit(path, script, capsys):
    assert script.main(["--config", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # thop misses parameters (position embeddings, tokens, unknown layer types), never adds any
    assert 0 < result["params_thop"] <= result["params_true"] <= MAX_PARAMS
    assert result["macs_per_clip"] > 0 and result["within_limit"]


def test_text_report_and_failure_over_the_limit(script, capsys, monkeypatch):
    tiny = str(ROOT / "configs" / "tiny.yaml")
    assert script.main(["--config", tiny]) == 0
    printed = capsys.readouterr().out
    assert "params (thop)" in printed and "params (true)" in printed and "MACs per clip" in printed
    monkeypatch.setattr(script, "MAX_PARAMS", 100_000)  # tiny has 0.66M: over a 0.1M limit
    assert script.main(["--config", tiny]) == 1
    assert "OVER THE LIMIT" in capsys.readouterr().out
