"""models.scoring: the evidence a model's outputs give, and the score rules fitted on validation clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from models.scoring import ScoreRule, describe_rule, evidence, fit_score_rule, mean_per_clip


def outputs(n: int = 4) -> dict[str, torch.Tensor]:
    visual = torch.ones(n, 3, dtype=torch.bool)
    audio = torch.ones(n, 3, dtype=torch.bool)
    visual[1] = False  # clip 1: no face
    audio[2] = False  # clip 2: no audio
    values = torch.arange(n, dtype=torch.float32)
    return {"logit": values, "audio_logit": values + 1, "visual_logit": values + 2, "sync_score": values + 3,
            "visual_mask": visual, "audio_mask": audio, "sync": torch.zeros(n, 3)}


def test_evidence_is_oriented_and_leaves_out_what_a_clip_cannot_have():
    ev = evidence(outputs())
    assert set(ev) == {"logit", "audio_logit", "visual_logit", "sync_score"}  # per-frame outputs are not evidence
    np.testing.assert_array_equal(ev["logit"], [0, 1, 2, 3])
    np.testing.assert_array_equal(ev["sync_score"], [-3, np.nan, np.nan, -6])  # in sync = genuine: negated
    np.testing.assert_array_equal(ev["visual_logit"], [2, np.nan, 4, 5])
    np.testing.assert_array_equal(ev["audio_logit"], [1, 2, np.nan, 4])
    baseline = evidence({"logit": torch.tensor([0.5, -0.5]), "logits": torch.zeros(2, 2)})
    assert list(baseline) == ["logit"]  # a model without masks or other heads: the fused logit alone


def synthetic_evidence(seed: int = 0, n: int = 400) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Two outputs on different scales; fakes of the first kind show in one, of the second kind in the other."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1, 1], n)
    a = rng.normal(0, 1, labels.size)
    b = rng.normal(10, 0.1, labels.size)
    a[n:2 * n] += 2.0  # fakes the first output sees
    b[2 * n:] += 0.2  # fakes the second output sees (2 s.d. of its genuine spread)
    b[:5] = np.nan  # a few genuine clips without the second output's modality
    return {"logit": a, "audio_logit": b}, labels


@pytest.mark.parametrize("rule", ["mean", "logmeanexp", "max"])
def test_fitted_rule_standardises_on_genuine_clips_and_keeps_the_combined_ranking(rule):
    ev, labels = synthetic_evidence()
    fitted = fit_score_rule(rule, ev, labels)
    genuine = labels == 0
    assert fitted.genuine_clips == genuine.sum()
    assert fitted.center["audio_logit"] == pytest.approx(np.nanmean(ev["audio_logit"][genuine]))
    assert fitted.scale["audio_logit"] == pytest.approx(np.nanstd(ev["audio_logit"][genuine]))
    z = fitted.standardised(ev)[genuine]
    np.testing.assert_allclose(np.nanmean(z, 0), 0, atol=1e-9)
    np.testing.assert_allclose(np.nanstd(z, 0), 1, atol=1e-9)
    probability = fitted.probability(ev)
    assert fitted.slope > 0 and ((probability > 0) & (probability < 1)).all()
    assert roc_auc_score(labels, probability) == pytest.approx(roc_auc_score(labels, fitted.combined(ev)))
    # on these fakes the standardised fusion beats either output alone: the second one's scale no longer hides it
    fused_auc = roc_auc_score(labels, probability)
    assert fused_auc > roc_auc_score(labels, ev["logit"]) + 0.05
    assert fused_auc > roc_auc_score(labels[5:], ev["audio_logit"][5:]) + 0.05
    # the mapping is a calibrated probability: genuine clips score lower on average than fakes, near the base rate
    assert probability[genuine].mean() < 0.6 < probability[~genuine].mean()


def test_logmeanexp_is_a_soft_maximum_over_the_outputs_a_clip_has():
    rule = ScoreRule("logmeanexp", center={"logit": 0.0, "audio_logit": 0.0}, scale={"logit": 1.0, "audio_logit": 1.0})
    ev = {"logit": np.array([0.5, 2.0, 1.0, 1000.0]), "audio_logit": np.array([0.5, -2.0, np.nan, 1000.0])}
    combined = rule.combined(ev)
    assert combined[0] == pytest.approx(0.5)  # outputs that agree: their common value
    assert combined[1] == pytest.approx(np.log(np.cosh(2.0)))  # log((e^2 + e^-2) / 2): between the mean 0 and max 2
    assert combined[2] == pytest.approx(1.0)  # a missing output is left out, not counted as exp(0)
    assert combined[3] == pytest.approx(1000.0)  # no overflow
    mean, largest = ScoreRule("mean", rule.center, rule.scale), ScoreRule("max", rule.center, rule.scale)
    assert (mean.combined(ev) <= combined + 1e-12).all() and (combined <= largest.combined(ev) + 1e-12).all()


def test_clips_far_beyond_the_validation_range_keep_their_ranking_at_six_decimals():
    ev, labels = synthetic_evidence()
    fitted = fit_score_rule("logmeanexp", ev, labels)
    assert fitted.link == "cauchy" and fitted.slope > 0
    z = np.array([12.0, 20.0, 50.0, 120.0, 1000.0])  # standardised values no validation clip came near
    far = {name: z * fitted.scale[name] + fitted.center[name] for name in ev}
    printed = [f"{p:.6f}" for p in fitted.probability(far)]
    assert printed == sorted(set(printed)) and "1.000000" not in printed  # distinct, increasing, none saturated
    logistic = ScoreRule(**{**fitted.to_dict(), "link": "logistic"})
    assert [f"{p:.6f}" for p in logistic.probability(far)][1:] == ["1.000000"] * 4  # what the logistic map did


def test_strongest_names_the_output_that_called_the_clip_fake():
    ev, labels = synthetic_evidence()
    fitted = fit_score_rule("max", ev, labels)
    strongest = np.array(fitted.strongest(ev))
    n = 400
    assert (strongest[n:2 * n] == "logit").mean() > 0.8
    assert (strongest[2 * n:] == "audio_logit").mean() > 0.8
    assert set(strongest[:5]) == {"logit"}  # the only output those clips have
    assert ScoreRule().strongest(ev) == [""] * labels.size  # fused: no statistics, no attribution


def test_fused_rule_is_the_fused_head_and_needs_no_statistics():
    ev, labels = synthetic_evidence()
    rule = fit_score_rule("fused", ev, labels)
    assert rule == ScoreRule()
    np.testing.assert_allclose(rule.probability(ev), 1 / (1 + np.exp(-ev["logit"])))


def test_rules_round_trip_and_refuse_what_cannot_be_fitted_or_applied():
    ev, labels = synthetic_evidence()
    fitted = fit_score_rule("mean", ev, labels)
    again = ScoreRule.from_dict(fitted.to_dict())
    np.testing.assert_array_equal(again.probability(ev), fitted.probability(ev))
    before_links = {k: v for k, v in fitted.to_dict().items() if k != "link"}  # info.json of older checkpoints
    assert ScoreRule.from_dict(before_links).link == "logistic"
    with pytest.raises(ValueError, match="malformed"):
        ScoreRule.from_dict({**fitted.to_dict(), "link": "probit"})
    with pytest.raises(ValueError, match="at least 2"):
        fit_score_rule("mean", ev, np.ones_like(labels))
    with pytest.raises(ValueError, match="not one of"):
        fit_score_rule("median", ev, labels)
    with pytest.raises(ValueError, match="does not produce"):
        fitted.probability({"logit": ev["logit"]})
    with pytest.raises(ValueError, match="malformed"):
        ScoreRule.from_dict({**fitted.to_dict(), "scale": {}})


def test_one_class_validation_still_gives_an_increasing_map():
    ev, labels = synthetic_evidence()
    genuine_only = labels[labels == 0]
    fitted = fit_score_rule("mean", {k: v[labels == 0] for k, v in ev.items()}, genuine_only)
    assert fitted.slope == 1.0
    probability = fitted.probability(ev)
    assert np.median(probability[labels == 0]) == pytest.approx(0.5, abs=0.02)
    assert roc_auc_score(labels, probability) == pytest.approx(roc_auc_score(labels, fitted.combined(ev)))


def test_mean_per_clip_averages_each_clips_views_and_skips_missing_ones():
    owner = np.array([0, 0, 1, 1, 2])  # clips 0 and 1 have two views, clip 2 one
    views = np.array([[1.0, 3.0, np.nan, 5.0, np.nan],
                      [3.0, 5.0, np.nan, 7.0, np.nan]])  # e.g. the clips and their mirror images
    means = mean_per_clip(views, owner, 3)
    assert means[:2].tolist() == [3.0, 6.0] and np.isnan(means[2])  # NaN only where every view lacks it


def test_the_report_names_each_rule_as_it_scores():
    assert "fused head" in describe_rule("fused") and "time views" not in describe_rule("fused")
    text = describe_rule("logmeanexp", 2)
    assert "log(mean(exp(z)))" in text and "averaged over 2 time views" in text and "genuine validation" in text
    assert "averaged," in describe_rule("mean") and "the largest" in describe_rule("max")
