"""The report's sections: one method of ``Report`` per ``$placeholder`` of report/template.md, each built from the
runs, the evaluations' JSON and the dataset's meta.csv only."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from competition import FAKE_CATEGORIES, TPR_KEY
from evaluation import plots
from evaluation.common import REAL_METHOD
from evaluation.report_runs import (
    EVALUATIONS,
    EXPLAIN_VIDEOS,
    Run,
    Sources,
    auc_ci,
    best_val,
    explained_videos,
    figure,
    history_from_files,
    millions,
    missing,
    model_doc,
    num,
    sizes,
    table,
)
from evaluation.shortcuts import FEATURES, SIGNIFICANCE
from evaluation.speed import THROUGHPUT
from models.scoring import describe_rule


class Report:
    def __init__(self, src: Sources, runs: dict[str, Run], evals: dict[str, dict | None], explain: dict[str, Path],
                 meta: list[dict], out: Path):
        self.src, self.runs, self.evals, self.explain, self.meta, self.out = src, runs, evals, explain, meta, out
        self.figures = out / "figures"
        self.ours = runs.get(src.ours) if src.ours else None
        self.baseline = runs.get("baseline")

    # 1
    def summary(self) -> str:
        rows = [[r.name, r.config.get("model", {}).get("name", "?"), millions(sizes(r).get("params_true")),
                 best_val(r).get("auc"), auc_ci(r.test), (r.test or {}).get(TPR_KEY)]
                for r in self.runs.values()]
        text = [table(["run", "model", "parameters", "val AUC", "test AUC [95% CI]", "test TPR@FPR=1e-3"], rows), ""]
        generality = self.evals.get("generality")
        if generality:
            for e in generality["experiments"]:
                c = e["categories"]
                text.append(f"- Generality ({e['name']}), test AUC on unseen identities and voices: seen methods "
                            f"{auc_ci(c['seen'])}; unseen implementations {auc_ci(c['unseen_method'])}; unseen "
                            f"families {auc_ci(c['unseen_family'])}.")
        robustness = self.evals.get("robustness")
        if robustness and robustness["conditions"]:
            worst = min((c for c in robustness["conditions"] if c["auc"] is not None), key=lambda c: c["auc"],
                        default=None)
            if worst:
                text.append(f"- Robustness ({robustness['model']}): clean test AUC "
                            f"{num(robustness['clean']['fused']['auc'])}; worst condition {worst['perturbation']} "
                            f"level {worst['level']} ({worst['value']}): AUC {num(worst['auc'])}.")
        shortcuts = self.evals.get("shortcuts")
        if shortcuts:
            text.append(f"- Shortcut audit (max(AUC, 1-AUC) >= {shortcuts['threshold']}): "
                        + _flag_summary(shortcuts) + ".")
        return "\n".join(text)

    # 2
    def method(self) -> str:
        parts = []
        for run in self.runs.values():
            name = run.config.get("model", {}).get("name", "?")
            doc = model_doc(name)
            parts.append(f"**{run.name}** (`{name}`):\n\n" + (f"```text\n{doc.strip()}\n```" if doc else "_(no "
                                                                                                         "description)_"))
            score = run.config.get("score", {})
            parts.append(f"Decision rule of {run.name}: "
                         f"{describe_rule(score.get('rule', 'fused'), score.get('time_views', 1))}")
        parts.append("A video whose extraction fails scores the neutral value and is listed in the submission's "
                     "failures file; no face -> audio-only view, no audio -> visual-only view (the fallbacks column "
                     "of `.details.csv`).")
        return "\n\n".join(parts)

    # 3
    def data(self) -> str:
        splits = ["train", "val", "test"]
        methods = sorted({r["method"] for r in self.meta}, key=lambda m: (m != REAL_METHOD, m))
        category = {r["method"]: r["category"] for r in self.meta}
        rows = [[m, category[m], *[sum(r["split"] == s and r["method"] == m for r in self.meta) for s in splits]]
                for m in methods]
        rows.append(["total", "", *[sum(r["split"] == s for r in self.meta) for s in splits]])
        text = [f"Dataset: `{self.src.demo.data}` ({len(self.meta)} videos, "
                f"{sum(int(r['target']) for r in self.meta)} fake).", "",
                table(["method", "FakeAVCeleb category", *splits], rows), ""]
        numeric = [("duration", "s"), ("width", "px"), ("height", "px"), ("fps", ""), ("sample_rate", "Hz"),
                   ("leading_silence", "s")]
        ranges = []
        for column, unit in numeric:
            values = [float(r[column]) for r in self.meta if r.get(column) not in (None, "")]
            if values:
                ranges.append([column, f"{min(values):g} {unit}".strip(), f"{max(values):g} {unit}".strip()])
        if ranges:
            text += ["Source media (from meta.csv):", "", table(["property", "min", "max"], ranges), ""]
        if self.ours:
            d = self.ours.config.get("data", {})
            text.append(f"Extraction (`shards.extract`, shared by packing and inference): {d.get('windows')} windows "
                        f"of {d.get('window_frames')} consecutive frames at {d.get('fps')} fps per clip, spread over at "
                        f"most {d.get('max_clip_seconds')} s; per frame a face crop of {d.get('size')} px (margin "
                        f"{d.get('margin')}) and a mouth crop of {d.get('mouth_size')} px, with the aligned 16 kHz mono "
                        "audio; BlazeFace (MediaPipe's full-range model, run by LiteRT) detection and tracking of the "
                        "main face.")
        shard_rows = []
        for split in ("train", "val"):
            tars = sorted((self.src.demo.shards / split).glob("*.tar"))
            if tars:
                shard_rows.append([split, len(tars), f"{sum(t.stat().st_size for t in tars) / 1e6:.1f} MB"])
        if shard_rows:
            text += ["", "WebDataset shards written by `python -m shards.pack`:", "",
                     table(["split", "shards", "size"], shard_rows)]
        return "\n".join(text)

    # 4
    def model(self) -> str:
        from models.counting import MAX_PARAMS

        rows = []
        for run in self.runs.values():
            m, size = run.config.get("model", {}), sizes(run)
            rows.append([run.name, m.get("name", "?"), m.get("visual_backbone", "") if m.get("name") != "seed_baseline"
                         else "(none)", m.get("audio_backbone", ""),
                         f"{m.get('dim')}/{m.get('depth')}/{m.get('heads')}" if m.get("name") != "seed_baseline"
                         else "(none)", millions(size.get("params_true")), millions(size.get("params_thop")),
                         f"{size['macs_per_clip'] / 1e9:.3f} G" if size.get("macs_per_clip") else "n/a",
                         num(max(size.get("params_true", 0), size.get("params_thop", 0)) <= MAX_PARAMS
                             if size.get("params_true") else None)])
        parts = [f"- {run.name}: " + ", ".join(f"{k} {v:,}" for k, v in run.params["params_by_part"].items())
                 for run in self.runs.values() if run.params.get("params_by_part")]
        return "\n".join([
            table(["run", "model", "visual encoder", "audio encoder", "fusion dim/depth/heads", "parameters (true)",
                   "parameters (thop)", "MACs per clip (thop)", f"<= {MAX_PARAMS / 1e6:.0f}M"], rows), "",
            "Counts from `python -m scripts.count_params` on each run's checkpoint config (true count: sum of all "
            "tensors; thop: `thop.profile` on one clip, which misses some parameters such as position embeddings; "
            "the competition rule is the thop count).", "", *(["Parameters by part:", "", *parts] if parts else [])])

    # 5
    def training(self) -> str:
        keys = ["model.visual_pretrained", "data.frames", "data.size", "data.balance", "data.augment.enabled",
                "train.epochs", "train.batch_size", "train.grad_accum", "train.optimizer", "train.lr",
                "train.weight_decay", "train.schedule", "train.warmup_steps", "train.grad_clip", "train.ema",
                "train.mixed_precision", "train.seed", "loss.aux", "loss.sync", "loss.token"]
        rows = [[k, *[_value(_dotted(r.config, k)) for r in self.runs.values()]] for k in keys]
        rows += [["optimizer steps (run)", *[num(r.metrics.get("global_step")) for r in self.runs.values()]],
                 ["best epoch", *[num(best_val(r).get("epoch")) for r in self.runs.values()]]]
        augment = self.ours.config.get("data", {}).get("augment", {}) if self.ours else {}
        text = [table(["setting", *self.runs], rows), ""]
        if augment:
            text += [f"Augmentation of {self.ours.name} (probability per clip): "
                     + ", ".join(f"{k} {v}" for k, v in augment.items() if k != "enabled") + ".", ""]
        histories = {r.name: r.mlflow.get("history", {}) for r in self.runs.values()}
        path = plots.plot_curves(histories, self.figures / "training_curves.png")
        if path is None:
            histories = {r.name: history_from_files(r) for r in self.runs.values()}
            path = plots.plot_curves(histories, self.figures / "training_curves.png")
        source = ", ".join(sorted({r.mlflow["db"] for r in self.runs.values() if r.mlflow.get("db")})) or "metrics.json"
        text.append(figure(path, self.out, f"Training loss and validation AUC per optimizer step (from {source})"))
        return "\n".join(text)

    # 6
    def results(self) -> str:
        headers = ["run", "val AUC", "val TPR@1e-3", "test AUC [95% CI]", "test TPR@1e-3", "test EER", "test AP",
                   "test videos", "failed", "with fallbacks"]
        rows = []
        for r in self.runs.values():
            v, t = best_val(r), r.test or {}
            rows.append([r.name, v.get("auc"), v.get(TPR_KEY), auc_ci(t), t.get(TPR_KEY), t.get("eer"),
                         t.get("ap"), t.get("n"), sum(d["status"] == "failed" for d in r.details),
                         sum(bool(d.get("fallbacks")) for d in r.details)])
        if self.baseline and self.ours and self.baseline.test and self.ours.test:
            b, o = self.baseline, self.ours
            rows.append([f"{o.name} - baseline", _diff(best_val(o).get("auc"), best_val(b).get("auc")),
                         _diff(best_val(o).get(TPR_KEY), best_val(b).get(TPR_KEY)),
                         _diff(o.test.get("auc"), b.test.get("auc")), _diff(o.test.get(TPR_KEY), b.test.get(TPR_KEY)),
                         "", "", "", "", ""])
        curves = {r.name: r.test_scores for r in self.runs.values() if r.test_scores}
        path = plots.plot_roc(curves, self.figures / "roc_test.png") if curves else None
        note = next((r.test.get("note") for r in self.runs.values() if r.test and r.test.get("note")), None)
        return "\n".join([
            "Validation: the best epoch of each run (`metrics.json`); test: the submissions written by "
            "`python -m infer` from the raw test videos, scored like `python -m competition`.", "",
            table(headers, rows), "", f"_Note: {note}_" if note else "", "",
            figure(path, self.out, "Test ROC curves (right: log-scaled FPR, where TPR@FPR=1e-3 is read)")])

    # 7
    def generality(self) -> str:
        result = self.evals.get("generality")
        if not result:
            return missing("generality evaluation", "python -m evaluation generality --demo-dir DEMO_DIR")
        text = ["The protocol: the splits hold disjoint identities and voices, so every test video shows a person and "
                "a voice that training never saw. Each experiment also trains its config (`shards.pack` -> "
                "`python -m train` -> `python -m infer`) without the held-out methods and families, then scores the "
                "full test set: genuine test videos against the fakes of each category, family and method. "
                "`seen`: methods in training; `unseen_method`: another implementation of a trained family; "
                "`unseen_family`: a family training never saw. Brackets: 95% stratified bootstrap interval "
                "(1000 resamples).", ""]
        if any(e.get("reference") for e in result["experiments"]):
            text[-2] += " The last column is the same config trained on every method (the demo's run)."
        else:
            text[-2] += " The last column (the same config trained on every method) was not run here (n/a)."
        if self.src.protocol:
            text[-2] += (f" These results come from the large protocol run in `{self.src.protocol}` "
                         "(`python -m scripts.protocol`), not from the demo.")
        for e in result["experiments"]:
            ref = e.get("reference") or {}
            overrides = f"; overrides: `{' '.join(e['overrides'])}`" if e.get("overrides") else ""
            text += [f"**{e['name']}** — `{Path(e['config']).name}`{overrides}, trained on {e['train_videos']} "
                     f"train / {e['val_videos']} val videos; held out: {', '.join(e['held_out_names'])}; best val "
                     f"AUC {num(e['val'].get('auc'))}.", ""]
            rows = [[c, auc_ci(v), v[TPR_KEY], v["n"] - v["n_fake"], v["n_fake"],
                     auc_ci(ref.get("categories", {}).get(c))] for c, v in e["categories"].items()]
            text += [table(["category", "test AUC [95% CI]", "TPR@1e-3", "genuine", "fakes",
                            "all-methods model"], rows), ""]
            rows = [[f, v["status"], auc_ci(v), v[TPR_KEY], v["n_fake"], auc_ci(ref.get("per_family", {}).get(f))]
                    for f, v in e["per_family"].items()]
            text += [table(["family", "in training", "test AUC [95% CI]", "TPR@1e-3", "fakes", "all-methods model"],
                           rows), ""]
            rows = [[m, v["family"], v["status"], auc_ci(v), v[TPR_KEY], v["n_fake"],
                     auc_ci(ref.get("per_method", {}).get(m))] for m, v in e["per_method"].items()]
            text += [table(["method", "family", "in training", "test AUC [95% CI]", "TPR@1e-3", "fakes",
                            "all-methods model"], rows), ""]
        text.append(_tpr_resolution(result["experiments"]))
        path = plots.plot_generality(result, self.figures / "generality.png")
        text += [figure(path, self.out, "Per-method test AUC with methods held out from training"), "",
                 self._sync()]
        return "\n".join(text)

    def _sync(self) -> str:
        """The self-supervised synchrony check (``python -m evaluation sync``), when it was run."""
        path = self.src.generality_dir / "sync.json"
        if not path.is_file():
            return ("_Synchrony check: not run. `python -m evaluation sync --demo-dir DEMO_DIR --checkpoint "
                    "DEMO_DIR/eval/generality/<experiment>/run/best` scores a model trained without offset fakes._")
        result = json.loads(path.read_text())
        rows = [[f"{r['shift_ms']} ms", auc_ci(r), r["n_aligned"], r["n_shifted"]] for r in result["shifts"]]
        figure_path = plots.plot_sync(result, self.figures / "sync.png")
        return "\n".join([
            f"**Synchrony check** (`python -m evaluation sync`, checkpoint `{result['checkpoint']}`): the genuine "
            "test videos with their audio moved earlier and later by each shift, against the same videos in sync, "
            "scored by the model's synchrony evidence alone. No fake and no label is involved.", "",
            table(["audio shift", "AUC [95% CI]", "clips in sync", "shifted clips"], rows), "",
            figure(figure_path, self.out, "AUC of the synchrony score against the audio shift")])

    # 8
    def robustness(self) -> str:
        result = self.evals.get("robustness")
        if not result:
            return missing("robustness evaluation", "python -m evaluation robustness --demo-dir DEMO_DIR")
        from infer.predict import NEUTRAL_SCORE

        clean = result["clean"]["fused"]
        levels = sorted({c["level"] for c in result["conditions"]})
        names = list(dict.fromkeys(c["perturbation"] for c in result["conditions"]))
        by = {(c["perturbation"], c["level"]): c for c in result["conditions"]}
        rows = [[name, next(c["kind"] for c in result["conditions"] if c["perturbation"] == name),
                 *[f"{auc_ci(by[name, lv])} ({by[name, lv]['value']:g})" if (name, lv) in by else "" for lv in levels]]
                for name in names]
        text = [f"Model `{result['model']}` on {result['videos']} test videos ({result['extracted']} extracted; "
                f"failures score {NEUTRAL_SCORE}). Each video is extracted once with the inference code, then every condition "
                "perturbs the face clip (video) or the 16 kHz audio track deterministically (seed "
                f"{result['seed']}, one random stream per video and condition) and re-scores it with "
                "`Predictor.score`.", "",
                f"Clean: AUC {auc_ci(clean)}, TPR@FPR=1e-3 {num(clean[TPR_KEY])}.", "",
                table(["perturbation", "kind", *[f"level {lv} AUC (parameter)" for lv in levels]], rows), ""]
        path = plots.plot_robustness(result, self.figures / "robustness.png")
        text.append(figure(path, self.out, "Test AUC per perturbation and level (dashed: clean)"))
        return "\n".join(text)

    # 9
    def modality(self) -> str:
        result = self.evals.get("modality")
        if not result:
            return missing("modality analysis", "python -m evaluation modality --demo-dir DEMO_DIR")
        text = ["AUC of genuine test videos (RealVideo-RealAudio) vs each fake category, scored by the fused output "
                "and by the audio-only and visual-only heads (`.details.csv` of `python -m infer`). A visual head "
                "should find FakeVideo-*, an audio head *-FakeAudio.", ""]
        for model, analysis in result["models"].items():
            groups = [*FAKE_CATEGORIES, "all"]
            rows = [[head, *[auc_ci(tables["by_category"].get(g)) for g in groups]]
                    for head, tables in analysis["heads"].items()]
            methods = [m for m in next(iter(analysis["heads"].values()))["by_method"] if m != "all"]
            method_rows = [[head, *[auc_ci(tables["by_method"].get(m)) for m in methods]]
                           for head, tables in analysis["heads"].items()]
            text += [f"**{model}**", "", table(["head", *groups], rows), "", table(["head", *methods], method_rows), ""]
        path = plots.plot_modality(result, self.figures / "modality.png")
        text.append(figure(path, self.out, "Test AUC per fake category and head"))
        return "\n".join(text)

    # 10
    def shortcuts(self) -> str:
        result = self.evals.get("shortcuts")
        if not result:
            return missing("shortcut audit", "python -m evaluation shortcuts --demo-dir DEMO_DIR")
        splits = list(result["splits"])
        rows = []
        for feature in FEATURES:
            cells = []
            for split in splits:
                f = result["splits"][split]["features"].get(feature)
                cells.append("n/a" if f is None else f"{f['separability']:.2f}" + (" **flag**" if f["flag"] else "")
                             + (f" (p<{SIGNIFICANCE})" if f["flag"] and f["p_value"] < SIGNIFICANCE else ""))
            rows.append([feature, *cells])
        counts = [f"{s}: {a['videos']} videos ({a['n_fake']} fake), chance AUC s.d. {num(a['null_sd'], 3)}"
                  for s, a in result["splits"].items()]
        flagged = any(a["flagged"] for a in result["splits"].values())
        verdict = _flag_summary(result).capitalize() + "." + (
            f" Significant: p < {SIGNIFICANCE} that a feature unrelated to the label separates the classes this "
            "well (normal approximation of the Mann-Whitney null); other flags are within the sampling noise of a "
            "small split." if flagged else "")
        text = [f"Each metadata feature of the video files alone is used as the score (PyAV probe; leading silence "
                f"measured on the decoded audio). Reported: max(AUC, 1-AUC); flagged when >= {result['threshold']}.",
                "", "; ".join(counts) + ".", "", table(["feature", *splits], rows), "", verdict, ""]
        path = plots.plot_shortcuts(result, self.figures / "shortcuts.png")
        text.append(figure(path, self.out, "Separability of genuine and fake videos by one metadata feature"))
        return "\n".join(text)

    # 11
    def interpretability(self) -> str:
        if not self.explain:
            return missing("explanation figures (infer/explain.py)",
                           "python -m infer --videos DATA/test --checkpoint RUN/best --out X.csv --explain OUTDIR")
        meta = {r["video_name"]: r for r in self.meta}
        text = ["Figures written by `python -m infer --explain` (gradient saliency on the face crops and the "
                "spectrogram, per-time token scores and audio-visual synchrony, per-modality scores) for the "
                f"highest- and lowest-scoring test videos; at most {EXPLAIN_VIDEOS} videos are shown here."]
        for model, folder in self.explain.items():
            index = folder / "index.html"
            text += ["", f"**{model}** — all figures: `{index if index.is_file() else folder}`."]
            shown = 0
            for entry in explained_videos(folder):
                row = meta.get(entry["video_name"], {})
                kind = "fake" if row.get("target") == "1" else "genuine" if row.get("target") == "0" else "?"
                score = f"score {entry['score']:.3f}" if isinstance(entry.get("score"), float) else ""
                text += ["", f"*{entry['video_name']}* — {kind}, method {row.get('method', '?')}, "
                             f"{row.get('category', '?')}; {score}"]
                for png in entry["pngs"]:
                    copy = self.figures / "explain" / model / png.relative_to(folder).as_posix().replace("/", "_")
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(png, copy)
                    text += ["", figure(copy, self.out, png.stem.replace("_", " "))]
                shown += 1
            if not shown:
                text.append(f"_(no figure written: see `{self.src.eval_dir / 'logs' / 'explain.log'}`)_")
        return "\n".join(text)

    # 12
    def speed(self) -> str:
        result = self.evals.get("speed")
        if not result:
            return missing("speed table", "python -m evaluation speed --demo-dir DEMO_DIR")
        m = result["machine"]
        rows = []
        stages = [("packing (`shards.pack`)", result.get("packing") or {})]
        stages += [(f"training ({run}, `python -m train`)", {"source": "MLflow", **numbers})
                   for run, numbers in (result.get("training") or {}).items()]
        stages.append(("inference (`python -m scripts.bench_infer`: end to end vs decode alone)", result.get("inference") or {}))
        for stage, numbers in stages:
            values = {k: v for k, v in numbers.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            rates = {k: v for k, v in values.items() if _is_rate(k)}
            details = ", ".join(f"{k} {num(v, 2)}" for k, v in values.items() if k not in rates)
            source = numbers.get("source", "") + (f" ({details})" if details else "")
            rows += [[stage, k, num(float(v), 2), source] for k, v in rates.items()] or [[stage, "n/a", "", source]]
        gpus = ", ".join(m.get("gpus") or []) or "none"
        parts = [f"Machine: {m['cpu']}, {m['usable_cores']} usable of {m['logical_cores']} logical cores, "
                 f"GPU: {gpus}; Python {m['python']}, torch {m.get('torch', '?')}.", "",
                 table(["stage", "measure", "value", "source"], rows)]
        if self.src.gpu_check:
            parts += ["", gpu_check_table(json.loads(self.src.gpu_check.read_text()), self.src.gpu_check)]
        return "\n".join(parts)

    # 13
    def limitations(self) -> str:
        items = []
        test = self.ours.test if self.ours and self.ours.test else None
        if test:
            items.append(f"The test split has {test['n_neg']} genuine and {test['n_pos']} fake videos: one video moves "
                         f"the AUC by up to {1 / max(1, min(test['n_neg'], test['n_pos'])):.3f}, and TPR@FPR=1e-3 "
                         f"is interpolated below the first false positive (FPR step {1 / max(1, test['n_neg']):.3f}).")
        if test and self.baseline and self.baseline.test and self.baseline.test.get("auc") is not None \
                and test.get("auc") is not None and test["auc"] <= self.baseline.test["auc"]:
            items.append(f"On this test set `{self.ours.name}` does not beat the organizers' baseline (AUC "
                         f"{test['auc']:.3f} vs {self.baseline.test['auc']:.3f}).")
        items.append(f"The data are synthetic ({len(self.meta)} videos generated by "
                     "`python -m scripts.make_synthetic_dataset` from two real photos, LFW faces and 15 real speakers); "
                     "the numbers show that the pipeline works end to end, not how it does on real deepfakes.")
        if self.ours:
            items.append(f"The `{self.ours.name}` model uses random-init tiny backbones "
                         f"({self.ours.config.get('model', {}).get('visual_backbone')}, "
                         f"{self.ours.config.get('model', {}).get('mouth_backbone')}) so that it trains on a CPU in "
                         "minutes; configs/base.yaml is the full-size recipe.")
        generality = self.evals.get("generality")
        if generality and any(e.get("overrides") for e in generality["experiments"]):
            items.append("The generality runs used config overrides ("
                         + "; ".join(" ".join(e["overrides"]) for e in generality["experiments"] if e.get("overrides"))
                         + "), so they are not comparable one to one with the full run.")
        robustness = self.evals.get("robustness")
        if robustness:
            n = len({c["perturbation"] for c in robustness["conditions"]})
            items.append(f"Robustness perturbations ({n} types) are applied to the extracted face crops and the "
                         "16 kHz audio, after face detection: the detector itself is not stressed.")
        shortcuts = self.evals.get("shortcuts")
        if shortcuts:
            significant = sorted({f for a in shortcuts["splits"].values() for f in a["significant"]})
            if significant:
                items.append(f"The shortcut audit finds {', '.join(significant)} significantly different between "
                             "genuine and fake videos: a model could score well by reading these instead of "
                             "manipulation artefacts (training masks random prefixes of the clip against the "
                             "leading-silence shortcut).")
        for name in EVALUATIONS:
            if self.evals.get(name) is None:
                items.append(f"The {name} evaluation was skipped for this report.")
        return "\n".join(f"- {item}" for item in items)

    # 14
    def reproduction(self) -> str:
        root = self.src.demo.root
        return "\n".join(["```bash", f"make demo DEMO_DIR={root}", f"make report DEMO_DIR={root}",
                          "# or one evaluation at a time:",
                          *[f"python -m evaluation {n} --demo-dir {root}" for n in EVALUATIONS], "```"])


def gpu_check_table(check: dict, source: Path) -> str:
    """`make gpu-check`'s JSON as a caption and a table: each launch path's training speed, then inference."""
    m = check["machine"]
    caption = (f"GPU training (`make gpu-check`, {source}): {m.get('gpu')} x {m.get('gpu_count')}, {m.get('cpu_count')} "
               f"CPU cores, torch {m.get('torch')}, config {Path(check['config']).name} "
               f"{' '.join(check.get('overrides') or [])}, {check['steps']} steps a run, {check['workers']} loader "
               f"workers; MFU against {num(check.get('peak_tflops'), 0)} TFLOP/s ({check.get('peak_source')}).")
    rows = []
    for mode, run in check["runs"].items():
        if not run.get("ok"):
            rows.append([mode, "failed", "", "", "", "", run.get("error", "")[:80].replace("|", "/")])
            continue
        weights = run["param_dtype"].removeprefix("torch.")
        rows.append([f"{mode} ({run['distributed_type']}, {weights} weights)", num(run["clips_per_s"], 1),
                     num(run["step_seconds"], 3), f"{100 * run['data_wait_frac']:.1f}%",
                     "n/a" if run["mfu"] is None else f"{100 * run['mfu']:.1f}%",
                     f"{num(run['peak_memory_gib'], 1)} GiB",
                     f"{num(run['loss_first_quarter'], 2)} -> {num(run['loss_last_quarter'], 2)}"])
    for precision, result in (check.get("inference") or {}).items():
        rows.append([f"inference, model only, {precision} (batch {result['batch_size']})",
                     num(result["clips_per_s"], 1), "", "", "", "", ""])
    return "\n".join([caption, "", table(["run", "clips/s", "s a step", "data wait", "MFU", "peak memory",
                                          "loss, first -> last quarter"], rows)])


def _tpr_resolution(experiments: list[dict]) -> str:
    """Whether TPR@FPR=1e-3 is a measurement: it needs at least 1000 genuine test videos (one false positive)."""
    genuine = min((e["all"]["n"] - e["all"]["n_fake"] for e in experiments if e.get("all")), default=0)
    if genuine >= 1000:
        return f"_TPR@FPR=1e-3 is measured: {genuine} genuine test videos, FPR steps of {1 / genuine:.1e}._"
    step = f"1/{genuine} = {1 / genuine:.1e}" if genuine else "undefined"
    return (f"_TPR@FPR=1e-3 is not a measurement here: with {genuine} genuine test videos the smallest FPR step is "
            f"{step}, so the value is interpolated inside the first step (it says how many fakes score above every "
            "genuine video, no more). The large protocol run (README) has more genuine test videos._")


def _flag_summary(result: dict) -> str:
    parts = []
    for split, audit in result["splits"].items():
        if audit["flagged"]:
            parts.append(f"{split}: " + ", ".join(f + (" (significant)" if f in audit["significant"] else "")
                                                  for f in audit["flagged"]))
    return "flagged " + "; ".join(parts) if parts else "no metadata feature reaches the threshold"


def _dotted(config: dict, key: str):
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return "n/a"
        node = node[part]
    return node


def _is_rate(key: str) -> bool:
    return re.search(THROUGHPUT, key, re.IGNORECASE) is not None and not key.endswith("seconds")


def _value(value) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _diff(a, b):
    return None if a is None or b is None else a - b
