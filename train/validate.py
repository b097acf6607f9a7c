"""The validation pass: every validation clip scored once across all ranks (each output averaged over the clip's
time views when the shards hold them, as inference does), the score rule (``score.rule``, ``models.scoring``) fitted
on them, and the metrics ``train.loop`` selects the best checkpoint by."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit
from tqdm import tqdm

from competition import compute_metrics
from models.batch import to_device
from models.scoring import ScoreRule, evidence, fit_score_rule, mean_per_clip
from train.config import Config
from train.data import eval_loader
from train.parts import gather_predictions


@dataclass
class Validation:
    """One validation pass: metrics, the score rule fitted on it (``score.rule``) and every clip's scores."""

    metrics: dict
    rule: ScoreRule
    keys: list[str]
    labels: np.ndarray
    scores: np.ndarray  # the clip scores under the rule
    head_scores: dict[str, np.ndarray]  # each head's probability (logit, audio_logit, ...; NaN where absent)

    def write_predictions(self, path: Path) -> None:
        """The clip scores: key, label, score and the audio-only / visual-only scores."""
        heads = [self.head_scores.get(f"{h}_logit") for h in ("audio", "visual")]
        with open(path, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["video_name", "label", "score", "audio_score", "visual_score"])
            for i, key in enumerate(self.keys):
                cells = [self.scores[i], *(None if h is None else h[i] for h in heads)]
                writer.writerow([key, int(self.labels[i]),
                                 *("" if x is None or np.isnan(x) else f"{float(x):.6f}" for x in cells)])


@torch.no_grad()
def evaluate(model: torch.nn.Module, cfg: Config, urls: list[str], accelerator, views: int = 1) -> Validation:
    """Validation on the unwrapped model (no DDP collective inside the loop), then one gather of all ranks; the
    score rule is fitted on the gathered clips (every rank fits the same one). ``views`` > 1: each shard sample
    holds that many time views (``train.data.validation_views``), and a clip's outputs are their mean."""
    was_training = model.training
    model.eval()
    local = []
    for batch in tqdm(eval_loader(urls, cfg, accelerator.process_index, accelerator.num_processes, views),
                      desc="validate", unit="batch", leave=False, disable=not accelerator.is_main_process):
        batch = to_device(batch, accelerator.device)
        with accelerator.autocast():
            out = model(batch)
        ev = evidence(out)
        for i, key in enumerate(batch["key"]):
            local.append((key, int(batch["label"][i]), {name: float(v[i]) for name, v in ev.items()}))
    model.train(was_training)
    rows, n_evaluated = gather_predictions(accelerator, mean_over_views(local))
    labels = np.array([r[1] for r in rows])
    known = labels >= 0
    if not known.any():
        raise ValueError("the validation shards have no labelled samples")
    ev = {name: np.array([r[2][name] for r in rows]) for name in rows[0][2]}
    rule = fit_score_rule(cfg.score.rule, ev, labels)  # the genuine clips were counted at start-up
    scores = rule.probability(ev)
    metrics = compute_metrics(labels[known], scores[known])
    metrics["n_evaluated"] = n_evaluated  # > n would mean some clips were scored on several ranks
    heads = {name: expit(ev[name]) for name in ev if name.endswith("logit")}  # the fused head and each other head
    reported = {name.removesuffix("_logit"): name for name in heads if name != "logit"}
    reported |= {"fused": "logit"} if rule.rule != "fused" else {}
    for prefix, name in reported.items():
        valid = known & ~np.isnan(heads[name])
        if valid.any():  # the clips that have the head's modality
            metrics[f"{prefix}_auc"] = compute_metrics(labels[valid], heads[name][valid])["auc"]
    return Validation(metrics, rule, [r[0] for r in rows], labels, scores, heads)


def mean_over_views(rows: list[tuple]) -> list[tuple]:
    """(key, label, evidence) rows of time views -> one row per key, each output the mean over its views
    (``models.scoring.mean_per_clip``, as inference averages them); a sample's views all come from one rank."""
    keys = list(dict.fromkeys(row[0] for row in rows))
    if len(keys) == len(rows):
        return rows
    index = {key: i for i, key in enumerate(keys)}
    owner = np.array([index[row[0]] for row in rows])
    labels = {row[0]: row[1] for row in rows}
    means = {name: mean_per_clip(np.array([row[2][name] for row in rows]), owner, len(keys)) for name in rows[0][2]}
    return [(key, labels[key], {name: float(v[i]) for name, v in means.items()}) for i, key in enumerate(keys)]
