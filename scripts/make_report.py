#!/usr/bin/env python
"""`make report`: the technical report from the demo's runs and the evaluations, as report/report.md.

    python scripts/make_report.py --runs DEMO_DIR [--out report] [--skip-generality] [--skip-robustness] ...
    python scripts/make_report.py --runs DEMO_DIR/runs/tiny DEMO_DIR/runs/baseline --out report

--runs takes a `make demo` folder (its runs/*, data/, submissions/) or run folders inside one. Evaluations missing
from DEMO_DIR/eval/ are run first with `scripts/evaluate.py` (cached as JSON there; --force reruns them), the
interpretability figures with `python -m infer --explain`, then report/report.md and report/figures/*.png are
written (and report/report.pdf when pandoc is installed). Every number comes from a file; nothing is typed in.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infer import evaluation as ev  # noqa: E402

TEMPLATE = ROOT / "report" / "template.md"
EVALUATIONS = ("shortcuts", "modality", "robustness", "generality", "speed")  # speed reads robustness' timing
OURS = "tiny"  # the run compared with the baseline when several exist (the demo trains baseline and tiny)
EXPLAIN_VIDEOS = 4  # explained videos shown per model: the 2 highest- and the 2 lowest-scoring
log = logging.getLogger("report")


# --- where things are -------------------------------------------------------------------------------------------
@dataclass
class Sources:
    demo: ev.DemoLayout
    runs: dict[str, Path] = field(default_factory=dict)  # name -> run folder, baseline first

    @property
    def eval_dir(self) -> Path:
        return self.demo.eval

    def submission(self, name: str) -> Path | None:
        path = self.demo.submission(name)
        return path if path.is_file() else None

    @property
    def ours(self) -> str | None:
        others = [n for n in self.runs if n != "baseline"]
        return OURS if OURS in self.runs else (others[0] if others else None)


def resolve_sources(paths: list[Path]) -> Sources:
    """A demo folder (has runs/) or run folders (the demo folder is then the runs' grandparent)."""
    roots, runs = set(), {}
    for path in paths:
        path = Path(os.path.abspath(path))  # not resolve(): a run folder may be a symlink inside runs/
        if (path / "runs").is_dir():
            roots.add(path)
            layout = ev.DemoLayout(path)
            runs.update({name: layout.run(name) for name in layout.models()})
        elif (path / "best").is_dir() or (path / "metrics.json").is_file():
            roots.add(path.parent.parent if path.parent.name == "runs" else path.parent)
            runs[path.name] = path
        else:
            raise SystemExit(f"make_report.py: {path} is neither a `make demo` folder (with runs/) nor a run "
                             "folder (with best/ or metrics.json); run `make demo` first")
    if len(roots) != 1:
        raise SystemExit(f"make_report.py: the runs come from {len(roots)} folders ({sorted(map(str, roots))}); "
                         "give runs of one demo folder")
    ordered = dict(sorted(runs.items(), key=lambda kv: (kv[0] != "baseline", kv[0])))
    if not ordered:
        raise SystemExit(f"make_report.py: no trained run under {paths}; run `make demo` first")
    return Sources(ev.DemoLayout(roots.pop()), ordered)


# --- running what is missing --------------------------------------------------------------------------------------
def ensure_evaluations(src: Sources, args: argparse.Namespace) -> dict[str, dict | None]:
    """Each evaluation's JSON, computed with scripts/evaluate.py when missing (or --force); None when skipped."""
    results: dict[str, dict | None] = {}
    for name in EVALUATIONS:
        path = src.eval_dir / f"{name}.json"
        skipped = name in args.skip
        if (not path.is_file() or args.force) and not skipped:
            extra = shlex.split(args.eval_args.get(name, ""))
            cmd = [sys.executable, ROOT / "scripts" / "evaluate.py", name, "--demo-dir", src.demo.root,
                   "--workers", args.workers, *_default_eval_args(name, src), *extra]
            ev.run_command(cmd, src.eval_dir / "logs" / f"{name}.log")
        results[name] = json.loads(path.read_text()) if path.is_file() else None
    return results


def _default_eval_args(name: str, src: Sources) -> list[str]:
    if name == "modality":
        with_details = [n for n in src.runs if src.demo.details(n).is_file()]
        return ["--models", ",".join(with_details)] if with_details else []
    if name in ("robustness", "speed") and src.ours:
        return ["--model", src.ours]
    if name == "generality":
        return ["--reference", src.ours or ""]
    return []


def ensure_param_counts(src: Sources) -> dict[str, dict]:
    """run -> `scripts/count_params.py --config RUN/best/config.yaml --json` (thop and true counts), cached."""
    counts = {}
    for name, folder in src.runs.items():
        config = folder / "best" / "config.yaml"
        cache = src.eval_dir / "params" / f"{name}.json"
        if not cache.is_file() and config.is_file():
            result = subprocess.run([sys.executable, str(ROOT / "scripts" / "count_params.py"), "--config", str(config),
                                     "--json"], cwd=ROOT, capture_output=True, text=True)
            if result.returncode not in (0, 1) or not result.stdout.strip():  # 1: over the limit, still measured
                raise RuntimeError(f"scripts/count_params.py --config {config} failed:\n{result.stderr[-2000:]}")
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(result.stdout.strip().splitlines()[-1] + "\n")
        if cache.is_file():
            counts[name] = json.loads(cache.read_text())
    return counts


def ensure_explanations(src: Sources, args: argparse.Namespace) -> dict[str, Path]:
    """model -> folder of `python -m infer --explain` output (run when it has no PNG yet)."""
    if "explain" in args.skip:
        return {}
    if not (ROOT / "infer" / "explain.py").is_file():
        log.warning("infer/explain.py is not there: no interpretability figures")
        return {}
    folders = {}
    for name in [src.ours] if src.ours else []:
        folder = src.eval_dir / "explain" / name
        if args.force or not any(folder.glob("**/*.png")):
            try:
                ev.run_command([sys.executable, "-m", "infer", "--videos", src.demo.data / "test", "--checkpoint",
                                src.runs[name] / "best", "--out", src.eval_dir / "explain" / f"{name}.csv",
                                "--workers", args.workers, "--explain", folder], src.eval_dir / "logs" / "explain.log")
            except RuntimeError as error:  # the figures are illustrations: their failure is reported, not fatal
                log.warning("explanations failed (see %s): %s", src.eval_dir / "logs" / "explain.log",
                            str(error).splitlines()[0])
        folders[name] = folder
    return folders


# --- reading runs ---------------------------------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    folder: Path
    metrics: dict
    config: dict
    info: dict
    mlflow: dict
    test: dict | None  # test metrics of its submission
    test_scores: tuple[list[int], list[float]] | None
    details: list[dict]
    params: dict  # scripts/count_params.py --json


def read_run(name: str, folder: Path, src: Sources, test_labels: dict[str, int], params: dict) -> Run:
    import yaml

    metrics = _json(folder / "metrics.json")
    config_path = next((p for p in (folder / "config.yaml", folder / "best" / "config.yaml") if p.is_file()), None)
    config = yaml.safe_load(config_path.read_text()) if config_path else {}
    info = _json(folder / "best" / "info.json")
    mlflow = ev.mlflow_run(folder, history=(r"train/loss", r"val/auc", r"train/lr"))
    submission = src.submission(name)
    test = scores = None
    details: list[dict] = []
    if submission is not None:
        predicted = {r["video_name"]: float(r["score"]) for r in ev.read_csv_rows(submission)}
        names = sorted(set(predicted) & set(test_labels))
        y, s = [test_labels[n] for n in names], [predicted[n] for n in names]
        test, scores = _metrics(y, s), (y, s)
        if ev.details_path(submission).is_file():
            details = ev.read_csv_rows(ev.details_path(submission))
    return Run(name, folder, metrics, config, info, mlflow, test, scores, details, params)


def _metrics(y: list[int], s: list[float]) -> dict:
    from train.metrics import compute_metrics

    return compute_metrics(y, s)


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def best_val(run: Run) -> dict:
    return run.metrics.get("best") or run.info.get("metrics") or {}


def sizes(run: Run) -> dict:
    """Parameter/MAC counts: scripts/count_params.py, else what training logged (metrics.json, MLflow)."""
    found = {k: v for k, v in run.params.items() if k in ("params_true", "params_thop", "macs_per_clip")}
    logged = run.metrics.get("params") or run.info.get("params") or {}
    for key in ("params_true", "params_thop", "macs_per_clip"):
        if key not in found and key in logged:
            found[key] = logged[key]
        if key not in found and key in run.mlflow.get("params", {}):
            found[key] = float(run.mlflow["params"][key])
    return found


# --- markdown helpers -------------------------------------------------------------------------------------------------
def num(value, digits: int = 3) -> str:
    if value is None or value == "":
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def millions(value) -> str:
    return "n/a" if value is None else f"{float(value) / 1e6:.3f}M"


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(num(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def figure(path: Path | None, out: Path, caption: str) -> str:
    if path is None or not path.is_file():
        return f"_(figure not available: {caption})_"
    return f"![{caption}]({path.relative_to(out).as_posix()})\n\n_{caption}_"


def missing(what: str, how: str) -> str:
    return f"_Not available: {what}. Produce it with `{how}`._"


# --- sections ---------------------------------------------------------------------------------------------------------
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
                 best_val(r).get("auc"), (r.test or {}).get("auc"), (r.test or {}).get(ev.TPR_KEY)]
                for r in self.runs.values()]
        text = [table(["run", "model", "parameters", "val AUC", "test AUC", "test TPR@FPR=1e-3"], rows), ""]
        generality = self.evals.get("generality")
        if generality:
            for e in generality["experiments"]:
                text.append(f"- Generality ({e['name']}): AUC on genuine vs the unseen methods "
                            f"({', '.join(e['held_out'])}) = {num(e['unseen_pooled']['auc'])}.")
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
        parts.append("Decision rule: the video's score is sigmoid of the model's main logit; a video whose "
                     "extraction fails scores the neutral value and is listed in the submission's failures file; "
                     "no face -> audio-only view, no audio -> visual-only view (the fallbacks column of "
                     "`.details.csv`).")
        return "\n\n".join(parts)

    # 3
    def data(self) -> str:
        splits = ["train", "val", "test"]
        methods = sorted({r["method"] for r in self.meta}, key=lambda m: (m != ev.REAL_METHOD, m))
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
            text.append(f"Extraction (`shards.extract`, shared by packing and inference): {d.get('frames')} face "
                        f"crops of {d.get('size')} px (margin {d.get('margin')}) per clip, evenly spaced over at most "
                        f"{d.get('max_clip_seconds')} s, with the aligned 16 kHz mono audio; MediaPipe BlazeFace "
                        "detection and tracking of the main face.")
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
        from train.config import MAX_PARAMS

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
            "Counts from `scripts/count_params.py` on each run's checkpoint config (true count: sum of all "
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
        path = ev.plot_curves(histories, self.figures / "training_curves.png")
        if path is None:
            histories = {r.name: _history_from_files(r) for r in self.runs.values()}
            path = ev.plot_curves(histories, self.figures / "training_curves.png")
        source = ", ".join(sorted({r.mlflow["db"] for r in self.runs.values() if r.mlflow.get("db")})) or "metrics.json"
        text.append(figure(path, self.out, f"Training loss and validation AUC per optimizer step (from {source})"))
        return "\n".join(text)

    # 6
    def results(self) -> str:
        headers = ["run", "val AUC", "val TPR@1e-3", "test AUC", "test TPR@1e-3", "test EER", "test AP",
                   "test videos", "failed", "with fallbacks"]
        rows = []
        for r in self.runs.values():
            v, t = best_val(r), r.test or {}
            rows.append([r.name, v.get("auc"), v.get(ev.TPR_KEY), t.get("auc"), t.get(ev.TPR_KEY), t.get("eer"),
                         t.get("ap"), t.get("n"), sum(d["status"] == "failed" for d in r.details),
                         sum(bool(d.get("fallbacks")) for d in r.details)])
        if self.baseline and self.ours and self.baseline.test and self.ours.test:
            b, o = self.baseline, self.ours
            rows.append([f"{o.name} - baseline", _diff(best_val(o).get("auc"), best_val(b).get("auc")),
                         _diff(best_val(o).get(ev.TPR_KEY), best_val(b).get(ev.TPR_KEY)),
                         _diff(o.test.get("auc"), b.test.get("auc")), _diff(o.test.get(ev.TPR_KEY), b.test.get(ev.TPR_KEY)),
                         "", "", "", "", ""])
        curves = {r.name: r.test_scores for r in self.runs.values() if r.test_scores}
        path = ev.plot_roc(curves, self.figures / "roc_test.png") if curves else None
        note = next((r.test.get("note") for r in self.runs.values() if r.test and r.test.get("note")), None)
        return "\n".join([
            "Validation: the best epoch of each run (`metrics.json`); test: the submissions written by "
            "`python -m infer` from the raw test videos, scored like `scripts/score.py`.", "",
            table(headers, rows), "", f"_Note: {note}_" if note else "", "",
            figure(path, self.out, "Test ROC curves (right: log-scaled FPR, where TPR@FPR=1e-3 is read)")])

    # 7
    def generality(self) -> str:
        result = self.evals.get("generality")
        if not result:
            return missing("generality evaluation", "python scripts/evaluate.py generality --demo-dir DEMO_DIR")
        text = ["Each experiment trains the same config on the training and validation videos without the held-out "
                "methods (`shards.pack` -> `train/main.py` -> `python -m infer`), then scores the full test set. "
                "Per-method AUC: genuine test videos vs the fakes of that method.", ""]
        for e in result["experiments"]:
            ref = (e.get("reference") or {}).get("per_method", {})
            rows = [[m, "seen" if v["seen"] else "**unseen**", v["auc"], v[ev.TPR_KEY], v["n"] - v["n_fake"],
                     v["n_fake"], ref.get(m, {}).get("auc")] for m, v in e["per_method"].items()]
            rows.append(["all unseen", "", e["unseen_pooled"]["auc"], e["unseen_pooled"][ev.TPR_KEY],
                         e["unseen_pooled"]["n"] - e["unseen_pooled"]["n_fake"], e["unseen_pooled"]["n_fake"], ""])
            overrides = f"; overrides: `{' '.join(e['overrides'])}`" if e.get("overrides") else ""
            text += [f"**{e['name']}** — trained on {e['train_videos']} train / {e['val_videos']} val videos "
                     f"(`{Path(e['config']).name}`{overrides}); best val AUC {num(e['val'].get('auc'))}.", "",
                     table(["method", "in training", "test AUC", "test TPR@1e-3", "genuine", "fakes",
                            "AUC of the all-methods model"], rows), ""]
        path = ev.plot_generality(result, self.figures / "generality.png")
        text.append(figure(path, self.out, "Per-method test AUC with methods held out from training"))
        return "\n".join(text)

    # 8
    def robustness(self) -> str:
        result = self.evals.get("robustness")
        if not result:
            return missing("robustness evaluation", "python scripts/evaluate.py robustness --demo-dir DEMO_DIR")
        from infer.predict import NEUTRAL_SCORE

        clean = result["clean"]["fused"]
        levels = sorted({c["level"] for c in result["conditions"]})
        names = list(dict.fromkeys(c["perturbation"] for c in result["conditions"]))
        by = {(c["perturbation"], c["level"]): c for c in result["conditions"]}
        rows = [[name, next(c["kind"] for c in result["conditions"] if c["perturbation"] == name),
                 *[f"{num(by[name, lv]['auc'])} ({by[name, lv]['value']:g})" if (name, lv) in by else "" for lv in levels]]
                for name in names]
        text = [f"Model `{result['model']}` on {result['videos']} test videos ({result['extracted']} extracted; "
                f"failures score {NEUTRAL_SCORE}). Each video is extracted once with the inference code, then every condition "
                "perturbs the face clip (video) or the 16 kHz audio track deterministically (seed "
                f"{result['seed']}, one random stream per video and condition) and re-scores it with "
                "`Predictor.score`.", "",
                f"Clean: AUC {num(clean['auc'])}, TPR@FPR=1e-3 {num(clean[ev.TPR_KEY])}.", "",
                table(["perturbation", "kind", *[f"level {lv} AUC (parameter)" for lv in levels]], rows), ""]
        path = ev.plot_robustness(result, self.figures / "robustness.png")
        text.append(figure(path, self.out, "Test AUC per perturbation and level (dashed: clean)"))
        return "\n".join(text)

    # 9
    def modality(self) -> str:
        result = self.evals.get("modality")
        if not result:
            return missing("modality analysis", "python scripts/evaluate.py modality --demo-dir DEMO_DIR")
        text = ["AUC of genuine test videos (RealVideo-RealAudio) vs each fake category, scored by the fused output "
                "and by the audio-only and visual-only heads (`.details.csv` of `python -m infer`). A visual head "
                "should find FakeVideo-*, an audio head *-FakeAudio.", ""]
        for model, analysis in result["models"].items():
            groups = [*ev.FAKE_CATEGORIES, "all"]
            rows = [[head, *[tables["by_category"].get(g, {}).get("auc") for g in groups]]
                    for head, tables in analysis["heads"].items()]
            methods = [m for m in next(iter(analysis["heads"].values()))["by_method"] if m != "all"]
            method_rows = [[head, *[tables["by_method"].get(m, {}).get("auc") for m in methods]]
                           for head, tables in analysis["heads"].items()]
            text += [f"**{model}**", "", table(["head", *groups], rows), "", table(["head", *methods], method_rows), ""]
        path = ev.plot_modality(result, self.figures / "modality.png")
        text.append(figure(path, self.out, "Test AUC per fake category and head"))
        return "\n".join(text)

    # 10
    def shortcuts(self) -> str:
        result = self.evals.get("shortcuts")
        if not result:
            return missing("shortcut audit", "python scripts/evaluate.py shortcuts --demo-dir DEMO_DIR")
        splits = list(result["splits"])
        rows = []
        for feature in ev.FEATURES:
            cells = []
            for split in splits:
                f = result["splits"][split]["features"].get(feature)
                cells.append("n/a" if f is None else f"{f['separability']:.2f}" + (" **flag**" if f["flag"] else "")
                             + (f" (p<{ev.SIGNIFICANCE})" if f["flag"] and f["p_value"] < ev.SIGNIFICANCE else ""))
            rows.append([feature, *cells])
        counts = [f"{s}: {a['videos']} videos ({a['n_fake']} fake), chance AUC s.d. {num(a['null_sd'], 3)}"
                  for s, a in result["splits"].items()]
        flagged = any(a["flagged"] for a in result["splits"].values())
        verdict = _flag_summary(result).capitalize() + "." + (
            f" Significant: p < {ev.SIGNIFICANCE} that a feature unrelated to the label separates the classes this "
            "well (normal approximation of the Mann-Whitney null); other flags are within the sampling noise of a "
            "small split." if flagged else "")
        text = [f"Each metadata feature of the video files alone is used as the score (PyAV probe; leading silence "
                f"measured on the decoded audio). Reported: max(AUC, 1-AUC); flagged when >= {result['threshold']}.",
                "", "; ".join(counts) + ".", "", table(["feature", *splits], rows), "", verdict, ""]
        path = ev.plot_shortcuts(result, self.figures / "shortcuts.png")
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
            return missing("speed table", "python scripts/evaluate.py speed --demo-dir DEMO_DIR")
        m = result["machine"]
        rows = []
        stages = [("packing (`shards.pack`)", result.get("packing") or {})]
        stages += [(f"training ({run}, `train/main.py`)", {"source": "MLflow", **numbers})
                   for run, numbers in (result.get("training") or {}).items()]
        stages.append(("inference (`scripts/bench_infer.py`: end to end vs decode alone)", result.get("inference") or {}))
        for stage, numbers in stages:
            values = {k: v for k, v in numbers.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            rates = {k: v for k, v in values.items() if _is_rate(k)}
            details = ", ".join(f"{k} {num(v, 2)}" for k, v in values.items() if k not in rates)
            source = numbers.get("source", "") + (f" ({details})" if details else "")
            rows += [[stage, k, num(float(v), 2), source] for k, v in rates.items()] or [[stage, "n/a", "", source]]
        gpus = ", ".join(m.get("gpus") or []) or "none"
        return "\n".join([f"Machine: {m['cpu']}, {m['usable_cores']} usable of {m['logical_cores']} logical cores, "
                          f"GPU: {gpus}; Python {m['python']}, torch {m.get('torch', '?')}.", "",
                          table(["stage", "measure", "value", "source"], rows)])

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
                     "`scripts/make_synthetic_dataset.py` from a few real face photos and real speech recordings); "
                     "the numbers show that the pipeline works end to end, not how it does on real deepfakes.")
        if self.ours:
            items.append(f"The `{self.ours.name}` model uses random-init tiny backbones "
                         f"({self.ours.config.get('model', {}).get('visual_backbone')}, "
                         f"{self.ours.config.get('model', {}).get('audio_backbone')}) so that it trains on a CPU in "
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
                          *[f"python scripts/evaluate.py {n} --demo-dir {root}" for n in EVALUATIONS], "```"])


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
    import re

    return re.search(ev.THROUGHPUT, key, re.IGNORECASE) is not None and not key.endswith("seconds")


def _value(value) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _diff(a, b):
    return None if a is None or b is None else a - b


def _history_from_files(run: Run) -> dict[str, list[tuple[int, float]]]:
    """Fallback without MLflow: per-step loss from train_log.jsonl, val AUC from metrics.json's history."""
    history: dict[str, list[tuple[int, float]]] = {}
    log_path = run.folder / "train_log.jsonl"
    if log_path.is_file():
        steps = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
        history["train/loss"] = [(s["step"], s["loss"]) for s in steps]
    val = [(h["global_step"], h["auc"]) for h in run.metrics.get("history", []) if h.get("auc") is not None]
    if val:
        history["val/auc"] = val
    return history


def explained_videos(folder: Path) -> list[dict]:
    """The videos of an --explain folder to show (explain.json order: highest scores first, then lowest), each
    with its PNGs; without explain.json, the PNGs grouped by video stem."""
    listing = folder / "explain.json"
    entries = json.loads(listing.read_text()) if listing.is_file() else [
        {"video_name": stem + ".mp4", "figures": {}} for stem in sorted({p.name.split("_")[0]
                                                                          for p in folder.glob("*.png")})]
    out = []
    for entry in entries:
        stem = Path(entry["video_name"]).stem
        named = [folder / f for f in (entry.get("figures") or {}).values() if isinstance(f, str)]
        pngs = [p for p in named if p.suffix == ".png" and p.is_file()] or sorted(folder.glob(f"{stem}_*.png"))
        if pngs:
            out.append({**entry, "pngs": pngs})
    half = EXPLAIN_VIDEOS // 2
    chosen = out if len(out) <= EXPLAIN_VIDEOS else out[:half] + out[-(EXPLAIN_VIDEOS - half):]
    return list({e["video_name"]: e for e in chosen}.values())


def model_doc(name: str) -> str | None:
    """The module docstring of the registered model ``name`` (its description lives with its code)."""
    import inspect

    from train import registry

    registry.list_models()
    builder = getattr(registry, "_MODELS", {}).get(name)
    module = inspect.getmodule(builder) if builder is not None else None
    return module.__doc__ if module is not None else None


def code_version(runs: dict[str, Run]) -> str:
    for run in runs.values():
        version = run.info.get("code_version") or run.metrics.get("code_version")
        if isinstance(version, dict):
            commit = str(version.get("git_commit", "?"))[:12]
            return f"git {commit}{' (dirty)' if version.get('git_dirty') else ''}, sources sha256 " \
                   f"{str(version.get('source_sha256', '?'))[:12]}"
    return "unknown"


# --- rendering ----------------------------------------------------------------------------------------------------
def render(report: Report, template: Path) -> str:
    text = Template(template.read_text())
    sections = {name: getattr(report, name)() for name in template_sections(template)
                if name not in ("generated", "source", "eval_dir", "code_version")}
    return text.substitute(generated=dt.datetime.now().strftime("%Y-%m-%d %H:%M"), source=report.src.demo.root,
                           eval_dir=report.src.eval_dir, code_version=code_version(report.runs), **sections)


def template_sections(template: Path) -> list[str]:
    """The $placeholders of the template, in order."""
    return list(dict.fromkeys(m.group("named") or m.group("braced") for m in Template.pattern.finditer(
        template.read_text()) if m.group("named") or m.group("braced")))


def to_pdf(markdown: Path) -> Path | None:
    pandoc = shutil.which("pandoc")
    if pandoc is None:
        log.info("pandoc is not installed: no PDF (the Markdown report is complete)")
        return None
    pdf = markdown.with_suffix(".pdf")
    result = subprocess.run([pandoc, markdown.name, "-o", pdf.name, "--resource-path", "."], cwd=markdown.parent,
                            capture_output=True, text=True)
    if result.returncode != 0:
        log.warning("pandoc could not write a PDF: %s", result.stderr.strip()[-500:])
        return None
    return pdf


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", default=[Path(os.environ.get("DEMO_DIR", "runs/demo"))],
                        help="a `make demo` folder, or run folders inside one")
    parser.add_argument("--out", type=Path, default=ROOT / "report", help="report folder (report.md, figures/)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--force", action="store_true", help="rerun the evaluations even when cached")
    for name in ("generality", "robustness", "speed", "explain", "shortcuts", "modality"):
        parser.add_argument(f"--skip-{name}", dest="skip", action="append_const", const=name,
                            help=f"do not run the {name} step (a cached result is still used)")
    parser.add_argument("--eval-args", action="append", default=[], metavar="NAME=ARGS",
                        help="extra scripts/evaluate.py arguments for one evaluation, e.g. "
                             "'robustness=--levels 1,5' or 'generality=--override train.epochs=2'")
    parser.add_argument("--no-pdf", action="store_true")
    args = parser.parse_args(argv)
    args.skip = set(args.skip or [])
    pairs = {}
    for item in args.eval_args:
        name, _, value = item.partition("=")
        if name not in EVALUATIONS:
            parser.error(f"--eval-args {item!r}: the name must be one of {', '.join(EVALUATIONS)}")
        pairs[name] = f"{pairs.get(name, '')} {value}".strip()
    args.eval_args = pairs
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[report] %(message)s")
    args = parse_args(argv)
    src = resolve_sources(args.runs)
    try:
        meta = ev.read_meta(src.demo.data)
        evals = ensure_evaluations(src, args)
        explain = ensure_explanations(src, args)
        params = ensure_param_counts(src)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"make_report.py: {error}", file=sys.stderr)
        return 1
    test_labels = {r["video_name"]: int(r["target"]) for r in meta if r["split"] == "test"}
    runs = {name: read_run(name, folder, src, test_labels, params.get(name, {})) for name, folder in src.runs.items()}
    out = args.out.resolve()
    if (out / "figures").is_dir():
        shutil.rmtree(out / "figures")  # figures of an older report must not linger
    (out / "figures").mkdir(parents=True)
    report = Report(src, runs, evals, explain, meta, out)
    markdown = out / "report.md"
    markdown.write_text(render(report, TEMPLATE))
    pdf = None if args.no_pdf else to_pdf(markdown)
    print(f"wrote {markdown}" + (f" and {pdf}" if pdf else "") + f" ({len(list((out / 'figures').rglob('*.png')))} "
          "figures)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
