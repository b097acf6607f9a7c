"""Evaluation library behind ``scripts/evaluate.py`` and ``scripts/make_report.py``.

Five evaluations, each writing one JSON file under ``DEMO_DIR/eval/`` (the report reads only these files, the
runs and the submissions; it never types a number in):

- generality: train with manipulation methods held out (the real ``shards.pack`` / ``train/main.py`` /
  ``python -m infer`` commands on a subset of the dataset), then AUC and TPR@FPR=1e-3 per method on the test set;
- robustness: the test videos extracted once (``infer.predict.extracted``), perturbed deterministically with
  ``infer.perturb`` (DeeperForensics video protocol + audio), scored with ``Predictor.score``;
- modality: AUC of the fused, audio-only and visual-only heads per FakeAVCeleb category and per method, from the
  ``.details.csv`` that ``python -m infer`` writes and the dataset's ``meta.csv``;
- shortcuts: each metadata feature of the files alone (duration, size, resolution, fps, audio rate, leading
  silence...) used as a score; max(AUC, 1 - AUC) >= a threshold flags a shortcut a detector could learn;
- speed: packing, training and inference throughput in one table, with the machine named.

Metrics come from ``train.metrics.compute_metrics``, the function ``scripts/score.py`` uses.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL_METHOD = "real"
REAL_CATEGORY = "RealVideo-RealAudio"
FAKE_CATEGORIES = ("FakeVideo-RealAudio", "RealVideo-FakeAudio", "FakeVideo-FakeAudio")
HEADS = {"fused": "score", "audio": "audio_score", "visual": "visual_score"}
SHORTCUT_THRESHOLD = 0.7
SIGNIFICANCE = 0.01  # a flagged shortcut this unlikely under "no relation" is reported as significant
TPR_KEY = "tpr_at_fpr_1e-3"
LABEL_FILES = {"train": "train_labels.csv", "val": "validation_labels.csv", "test": "test_labels.csv"}
log = logging.getLogger("evaluation")


# --- files and layout ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoLayout:
    """Where ``make demo`` puts things (see scripts/demo.py)."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def run(self, name: str) -> Path:
        return self.root / "runs" / name

    def submission(self, name: str) -> Path:
        return self.root / "submissions" / f"{name}.csv"

    def details(self, name: str) -> Path:
        return self.root / "submissions" / f"{name}.details.csv"

    def models(self) -> list[str]:
        """Run names with a best checkpoint, baseline first."""
        runs = self.root / "runs"
        names = sorted(p.name for p in runs.iterdir() if (p / "best").exists()) if runs.is_dir() else []
        return sorted(names, key=lambda n: (n != "baseline", n))


def read_meta(data_dir: Path) -> list[dict[str, str]]:
    """The rows of ``data_dir/meta.csv`` (one per video: video_name, split, target, category, method, ...)."""
    path = Path(data_dir) / "meta.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the dataset folder needs the meta.csv that "
                                "scripts/make_synthetic_dataset.py writes (video_name,split,target,category,method)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"video_name", "split", "target", "category", "method"}
    missing = need - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: columns {sorted(missing)} are missing (need {sorted(need)})")
    return rows


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def run_command(cmd: list, log_path: Path | None = None) -> None:
    """Run a project command from the repo root; on failure raise with the tail of its output."""
    cmd = [str(c) for c in cmd]
    log.info("$ %s", " ".join(cmd))
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}\n--- stderr (tail)\n{result.stderr[-3000:]}")


# --- metrics ------------------------------------------------------------------------------------------------
def binary_metrics(labels: Iterable[int], scores: Iterable[float]) -> dict:
    """AUC and TPR@FPR=1e-3 (``train.metrics``) with the counts; None for both when one class is absent."""
    y = np.asarray(list(labels), dtype=int)
    s = np.asarray(list(scores), dtype=float)
    out = {"n": int(y.size), "n_fake": int(y.sum()), "auc": None, TPR_KEY: None}
    if y.size == 0 or y.min() == y.max():
        return out
    metrics = _compute_metrics(y.tolist(), s.tolist())
    out["auc"] = float(metrics["auc"])
    out[TPR_KEY] = float(metrics[TPR_KEY])
    return out


def _compute_metrics(labels: list[int], scores: list[float]) -> dict:
    from train.metrics import compute_metrics

    return compute_metrics(labels, scores)


def auc_null_sd(n_real: int, n_fake: int) -> float:
    """Standard deviation of the AUC of a score unrelated to the label (Mann-Whitney null): the noise level."""
    return math.sqrt((n_real + n_fake + 1) / (12.0 * n_real * n_fake)) if n_real and n_fake else float("nan")


def auc_p_value(auc: float, n_real: int, n_fake: int) -> float:
    """Two-sided p-value of an AUC this far from 0.5 under no relation (normal approximation, no tie term)."""
    sd = auc_null_sd(n_real, n_fake)
    return math.erfc(abs(auc - 0.5) / sd / math.sqrt(2)) if sd > 0 else 1.0


# --- per-method and per-category metrics of a scored test set -----------------------------------------------
def read_scores(details_or_submission: Path) -> dict[str, dict[str, float | None]]:
    """video_name -> {"score", "audio_score", "visual_score"} (None where the column is empty or absent)."""
    rows = read_csv_rows(details_or_submission)
    out: dict[str, dict[str, float | None]] = {}
    for row in rows:
        out[row["video_name"]] = {col: float(row[col]) if row.get(col) not in (None, "") else None
                                  for col in HEADS.values()}
    return out


def details_path(submission: Path) -> Path:
    return submission.with_name(submission.stem + ".details.csv")


def group_metrics(meta: list[dict], scores: dict[str, dict], column: str, group_key: str,
                  split: str = "test") -> dict[str, dict]:
    """For each fake group (a method or a category): genuine videos of ``split`` vs the fakes of that group,
    scored by ``column``; plus ``all`` (every fake). Videos without a score in ``column`` are left out."""
    rows = [r for r in meta if r["split"] == split and r["video_name"] in scores
            and scores[r["video_name"]].get(column) is not None]
    real = [r for r in rows if int(r["target"]) == 0]
    fakes = [r for r in rows if int(r["target"]) == 1]
    groups = sorted({r[group_key] for r in fakes})
    out = {}
    for group in [*groups, "all"]:
        chosen = fakes if group == "all" else [r for r in fakes if r[group_key] == group]
        subset = real + chosen
        out[group] = binary_metrics([int(r["target"]) for r in subset],
                                    [scores[r["video_name"]][column] for r in subset])
    return out


# --- generality -----------------------------------------------------------------------------------------------
@dataclass
class GeneralityOptions:
    held_out: list[str]
    config: Path = ROOT / "configs" / "tiny.yaml"
    overrides: list[str] = field(default_factory=list)  # passed to train/main.py after its flags
    workers: int = os.cpu_count() or 1
    pack_args: list[str] = field(default_factory=list)  # extra shards.pack flags (e.g. --shard-max-count 8)


def methods_of(meta: list[dict]) -> list[str]:
    return sorted({r["method"] for r in meta if int(r["target"]) == 1})


def experiment_name(held_out: list[str]) -> str:
    return "holdout-" + "+".join(sorted(held_out))


def make_subset(data_dir: Path, meta: list[dict], split: str, exclude: set[str], out: Path) -> tuple[Path, Path, int]:
    """out/<split>/ with symlinks to the split's videos whose method is not excluded, and its labels CSV."""
    videos = out / split
    if videos.exists():
        for link in videos.iterdir():
            link.unlink()
    videos.mkdir(parents=True, exist_ok=True)
    kept = sorted((r for r in meta if r["split"] == split and r["method"] not in exclude),
                  key=lambda r: r["video_name"])
    for row in kept:
        source = (Path(data_dir) / split / row["video_name"]).resolve()
        if not source.is_file():
            raise FileNotFoundError(f"{source} is listed in meta.csv but missing: regenerate the dataset")
        (videos / row["video_name"]).symlink_to(source)
    labels = out / LABEL_FILES[split]
    with open(labels, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["video_name", "target"])
        writer.writerows((r["video_name"], r["target"]) for r in kept)
    return videos, labels, len(kept)


def extraction_args(config: Path) -> list[str]:
    """The shards.pack flags that match the training config's extraction options (as scripts/demo.py does)."""
    from train.config import load_config
    from train.data import pack_arguments

    return pack_arguments(load_config(config))


def run_generality(data_dir: Path, out_dir: Path, options: GeneralityOptions,
                   reference: Path | None = None) -> dict:
    """Train without ``options.held_out`` methods, predict the full test split, metrics per method.

    ``reference``: a submission of a model trained on every method (the demo's), for the same per-method table.
    Steps whose output exists are skipped, so an interrupted run resumes.
    """
    meta = read_meta(data_dir)
    known = methods_of(meta)
    unknown = sorted(set(options.held_out) - set(known))
    if unknown or not options.held_out:
        raise ValueError(f"held-out methods {unknown or '(none)'} are not fake methods of {data_dir}/meta.csv; "
                         f"choose from {known}")
    if set(options.held_out) == set(known):
        raise ValueError(f"holding out every method ({known}) leaves no fakes to train on")
    py = sys.executable
    _reset_if_changed(out_dir, {"held_out": sorted(options.held_out), "config": str(options.config),
                                "overrides": options.overrides, "pack_args": options.pack_args})
    subset = out_dir / "data"
    counts = {}
    for split in ("train", "val"):
        _, _, counts[split] = make_subset(data_dir, meta, split, set(options.held_out), subset)
    pack = extraction_args(options.config)
    for split in ("train", "val"):
        target = out_dir / "shards" / split
        _step(out_dir / f"pack_{split}", [py, "-m", "shards.pack", "--videos", subset / split, "--labels",
                                         subset / LABEL_FILES[split], "--out", target, "--workers", options.workers,
                                         *pack, *options.pack_args], clear=target)
    run_dir = out_dir / "run"
    _step(out_dir / "train", [py, "train/main.py", "--config", options.config, "--train-shards",
                              out_dir / "shards" / "train", "--val-shards", out_dir / "shards" / "val", "--out", run_dir,
                              *options.overrides], clear=run_dir)
    submission = out_dir / "test.csv"
    _step(out_dir / "infer", [py, "-m", "infer", "--videos", Path(data_dir) / "test", "--checkpoint",
                              run_dir / "best", "--out", submission, "--workers", options.workers])
    scores = read_scores(details_path(submission))
    per_method = group_metrics(meta, scores, "score", "method")
    unseen_pooled = _pooled(meta, scores, set(options.held_out))
    result = {
        "held_out": sorted(options.held_out),
        "seen": sorted(set(known) - set(options.held_out)),
        "config": str(options.config),
        "overrides": options.overrides,
        "train_videos": counts["train"],
        "val_videos": counts["val"],
        "run_dir": str(run_dir),
        "val": _read_best(run_dir),
        "per_method": {m: {**v, "seen": m not in options.held_out} for m, v in per_method.items() if m != "all"},
        "unseen_pooled": unseen_pooled,
        "all": per_method.get("all"),
    }
    if reference is not None and details_path(reference).is_file():
        ref = group_metrics(meta, read_scores(details_path(reference)), "score", "method")
        result["reference"] = {"submission": str(reference), "per_method": ref}
    return result


def _step(marker: Path, cmd: list, clear: Path | None = None) -> None:
    """Run ``cmd`` unless ``marker.done`` says it finished before; an unfinished earlier try is cleared first."""
    done = marker.with_name(marker.name + ".done")
    if done.is_file():
        return
    if clear is not None and clear.exists():
        shutil.rmtree(clear)
    run_command(cmd, marker.parent / "logs" / f"{marker.name}.log")
    done.write_text(" ".join(map(str, cmd)) + "\n")


def _reset_if_changed(out_dir: Path, spec: dict) -> None:
    """A work folder made with other options (held-out methods, config, overrides) is started afresh."""
    path = out_dir / "spec.json"
    if out_dir.exists() and (not path.is_file() or json.loads(path.read_text()) != spec):
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=2) + "\n")


def _pooled(meta: list[dict], scores: dict, methods: set[str]) -> dict:
    rows = [r for r in meta if r["split"] == "test" and r["video_name"] in scores
            and (int(r["target"]) == 0 or r["method"] in methods)]
    return binary_metrics([int(r["target"]) for r in rows], [scores[r["video_name"]]["score"] for r in rows])


def _read_best(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data.get("best", data) if isinstance(data, dict) else {}


# --- robustness -----------------------------------------------------------------------------------------------
@dataclass
class ExtractedSet:
    """Test videos extracted once: names in sorted order, reader-format samples (None: extraction failed)."""

    names: list[str]
    samples: list[dict | None]
    labels: list[int]
    seconds: float
    workers: int
    reasons: dict[str, str] = field(default_factory=dict)


def extract_set(videos: list[Path], labels: dict[str, int], options, workers: int) -> ExtractedSet:
    from tqdm import tqdm

    from infer.predict import extracted

    names, samples, reasons = [], [], {}
    started = time.perf_counter()
    for name, sample, reason in tqdm(extracted(videos, options, workers), total=len(videos), desc="extract",
                                     unit="video", file=sys.stderr):
        names.append(name)
        samples.append(sample)
        if sample is None:
            reasons[name] = reason
    seconds = time.perf_counter() - started
    missing = [n for n in names if n not in labels]
    if missing:
        raise ValueError(f"{len(missing)} test video(s) have no label (e.g. {missing[:3]}): check the labels CSV")
    return ExtractedSet(names, samples, [labels[n] for n in names], seconds, workers, reasons)


def score_set(predictor, samples: list[dict | None], batch_size: int = 16) -> list[dict[str, float | None]]:
    """Predictor.score in batches; a failed extraction gets the submission's neutral score on every head."""
    from infer.predict import NEUTRAL_SCORE

    out: list[dict[str, float | None]] = [
        {"score": NEUTRAL_SCORE, "audio_score": None, "visual_score": None} for _ in samples]
    ok = [i for i, s in enumerate(samples) if s is not None]
    for start in range(0, len(ok), batch_size):
        chunk = ok[start:start + batch_size]
        for i, scores in zip(chunk, predictor.score([samples[i] for i in chunk]), strict=True):
            out[i] = scores
    return out


def head_metrics(labels: list[int], scores: list[dict]) -> dict[str, dict]:
    """binary_metrics of each head that produced scores for every video."""
    out = {}
    for head, column in HEADS.items():
        values = [s.get(column) for s in scores]
        if all(v is not None for v in values):
            out[head] = binary_metrics(labels, values)
    return out


def condition_rng(seed: int, perturbation: str, level: int, index: int) -> np.random.Generator:
    """One random stream per (perturbation, level, video): independent of batching and of the condition list."""
    return np.random.default_rng([seed, zlib.crc32(perturbation.encode()), level, index])


def run_robustness(predictor, data: ExtractedSet, conditions: list[tuple[str, int, float]], seed: int = 0,
                   batch_size: int = 16, progress: bool = True) -> dict:
    """Clean metrics and metrics under each (perturbation, level, value) condition."""
    from tqdm import tqdm

    from infer.perturb import AUDIO_PERTURBATIONS, perturb_sample

    started = time.perf_counter()
    clean_scores = score_set(predictor, data.samples, batch_size)
    score_seconds = time.perf_counter() - started
    clean = head_metrics(data.labels, clean_scores)
    rows = []
    for name, level, value in tqdm(conditions, desc="robustness", unit="condition", file=sys.stderr,
                                   disable=not progress):
        perturbed = [None if s is None else perturb_sample(s, name, value, condition_rng(seed, name, level, i))
                     for i, s in enumerate(data.samples)]
        metrics = head_metrics(data.labels, score_set(predictor, perturbed, batch_size))
        fused = metrics["fused"]
        rows.append({
            "perturbation": name, "kind": "audio" if name in AUDIO_PERTURBATIONS else "video", "level": level,
            "value": value, "auc": fused["auc"], TPR_KEY: fused[TPR_KEY],
            "auc_drop": _difference(clean["fused"]["auc"], fused["auc"]),
            "heads": {h: m["auc"] for h, m in metrics.items()},
        })
    n_ok = sum(s is not None for s in data.samples)
    return {
        "videos": len(data.names), "extracted": n_ok, "failed": data.reasons, "seed": seed,
        "clean": clean, "conditions": rows,
        "timing": {"extract_seconds": data.seconds, "extract_workers": data.workers,
                   "score_seconds": score_seconds, "videos": len(data.names)},
    }


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def robustness_rows(result: dict) -> list[dict]:
    """The conditions as flat table rows (the CSV and the report's table)."""
    return [{k: row[k] for k in ("perturbation", "kind", "level", "value", "auc", TPR_KEY, "auc_drop")}
            for row in result["conditions"]]


# --- modality -----------------------------------------------------------------------------------------------
def modality_analysis(meta: list[dict], details: Path, split: str = "test") -> dict:
    """AUC of each head per FakeAVCeleb category and per method (genuine vs that group) on ``split``."""
    scores = read_scores(details)
    heads: dict[str, dict] = {}
    for head, column in HEADS.items():
        if not any(s.get(column) is not None for s in scores.values()):
            continue  # a model without that head (e.g. the seed baseline)
        heads[head] = {"by_category": group_metrics(meta, scores, column, "category", split),
                       "by_method": group_metrics(meta, scores, column, "method", split)}
    return {"details": str(details), "split": split, "heads": heads}


# --- shortcut audit -------------------------------------------------------------------------------------------
FEATURES = ("leading_silence", "duration", "file_size", "bitrate", "width", "height", "pixels", "fps",
            "sample_rate", "audio_channels")


def probe_media(path: Path) -> dict[str, float]:
    """Container metadata of one video, read by ``shards.media`` (the extraction's PyAV code); 0 where absent."""
    from shards.media import open_media, probe

    with open_media(path) as container:
        info = probe(container)
    duration = float(info.duration or 0.0)
    size = float(Path(path).stat().st_size)
    width, height = float(info.width or 0), float(info.height or 0)
    return {"file_size": size, "duration": duration, "start": float(info.start or 0.0), "width": width,
            "height": height, "pixels": width * height, "fps": float(info.fps or 0.0),
            "sample_rate": float(info.audio_sample_rate or 0) if info.has_audio else 0.0,
            "audio_channels": float(info.audio_channels or 0) if info.has_audio else 0.0,
            "bitrate": size * 8 / duration if duration > 0 else 0.0}


def decode_audio(path: Path, start: float, end: float, rate: int = 16_000) -> np.ndarray:
    """[start, end] s of the first audio stream as mono float32 at ``rate`` (``shards.media.decode_audio``)."""
    from shards.media import decode_audio as media_decode_audio
    from shards.media import open_media

    with open_media(path) as container:
        pcm, _ = media_decode_audio(container, start, end, rate)
    return pcm.astype(np.float32) / 32768.0


def leading_silence(audio: np.ndarray, rate: int = 16_000, window: float = 0.01, relative_db: float = -30.0,
                    floor: float = 1e-4) -> float:
    """Seconds before the first ``window`` whose RMS reaches ``relative_db`` below the loud (95th pct) level."""
    hop = max(1, int(round(window * rate)))
    n = len(audio) // hop
    if n == 0:
        return 0.0
    rms = np.sqrt(np.mean(audio[:n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1))
    threshold = max(floor, float(np.percentile(rms, 95)) * 10 ** (relative_db / 20))
    loud = np.flatnonzero(rms >= threshold)
    return float(loud[0] * hop / rate) if loud.size else float(n * hop / rate)


def media_features(path: Path) -> dict[str, float]:
    info = probe_media(path)
    info["leading_silence"] = 0.0
    if info["sample_rate"] and info["duration"] > 0:  # measured from the first video frame, as extraction sees it
        info["leading_silence"] = leading_silence(decode_audio(path, info["start"], info["start"] + info["duration"]))
    return {name: float(info[name]) for name in FEATURES}


def shortcut_audit(features: dict[str, dict[str, float]], labels: dict[str, int],
                   threshold: float = SHORTCUT_THRESHOLD) -> dict:
    """Each feature alone as a score: AUC, separability max(AUC, 1-AUC), direction, flag (>= threshold)."""
    names = sorted(set(features) & set(labels))
    y = [labels[n] for n in names]
    n_fake = sum(y)
    out = {"videos": len(names), "n_fake": n_fake, "threshold": threshold,
           "null_sd": auc_null_sd(len(names) - n_fake, n_fake), "features": {}}
    for feature in FEATURES:
        values = [features[n][feature] for n in names]
        auc = binary_metrics(y, values)["auc"]
        if auc is None:
            continue
        separability = max(auc, 1 - auc)
        out["features"][feature] = {
            "auc": auc, "separability": separability, "flag": separability >= threshold,
            "p_value": auc_p_value(auc, len(names) - n_fake, n_fake),
            "direction": "higher in fakes" if auc > 0.5 else "lower in fakes" if auc < 0.5 else "none",
            "real_mean": float(np.mean([v for v, t in zip(values, y, strict=True) if t == 0])),
            "fake_mean": float(np.mean([v for v, t in zip(values, y, strict=True) if t == 1])),
        }
    out["flagged"] = [f for f, v in out["features"].items() if v["flag"]]
    out["significant"] = [f for f, v in out["features"].items() if v["flag"] and v["p_value"] < SIGNIFICANCE]
    return out


def audit_dataset(data_dir: Path, splits: list[str], threshold: float = SHORTCUT_THRESHOLD,
                  workers: int = 1) -> dict:
    """The shortcut audit of every split in ``splits`` and of all of them together."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    labels_by_split: dict[str, dict[str, int]] = {}
    paths: dict[str, Path] = {}
    for split in splits:
        labels_path = Path(data_dir) / LABEL_FILES[split]
        if not labels_path.is_file():
            raise FileNotFoundError(f"{labels_path} is missing: --data must be a dataset in the competition format")
        labels_by_split[split] = {r["video_name"]: int(r["target"]) for r in read_csv_rows(labels_path)}
        for name in labels_by_split[split]:
            paths[f"{split}/{name}"] = Path(data_dir) / split / name
    keys = sorted(paths)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            values = list(tqdm(pool.map(media_features, [paths[k] for k in keys], chunksize=4), total=len(keys),
                               desc="probe", unit="video", file=sys.stderr))
    else:
        values = [media_features(paths[k]) for k in tqdm(keys, desc="probe", unit="video", file=sys.stderr)]
    features = dict(zip(keys, values, strict=True))
    result = {"data": str(data_dir), "threshold": threshold, "splits": {}}
    all_labels = {}
    for split in splits:
        labels = {f"{split}/{n}": t for n, t in labels_by_split[split].items()}
        all_labels.update(labels)
        result["splits"][split] = shortcut_audit(features, labels, threshold)
    if len(splits) > 1:
        result["splits"]["all"] = shortcut_audit(features, all_labels, threshold)
    return result


# --- speed ----------------------------------------------------------------------------------------------------
def machine_info() -> dict:
    """CPU model (from /proc/cpuinfo), core counts, GPUs (torch), for the speed table's caption."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else os.cpu_count(), "gpus": [], "python": platform.python_version(),
            "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def find_numbers(data, pattern: str, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a nested dict whose dotted key matches ``pattern`` (case-insensitive)."""
    out: dict[str, float] = {}
    regex = re.compile(pattern, re.IGNORECASE)
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(find_numbers(value, pattern, f"{prefix}{key}."))
    elif isinstance(data, int | float) and not isinstance(data, bool) and regex.search(prefix.rstrip(".")):
        out[prefix.rstrip(".")] = float(data)
    return out


THROUGHPUT = r"(per_s|per_sec|/s|_s$|throughput|per_core)"


def training_speed(run_dir: Path) -> dict[str, float]:
    """Throughput numbers a run recorded: its metrics.json, then its MLflow metrics (clips/s, samples/s...)."""
    numbers: dict[str, float] = {}
    path = run_dir / "metrics.json"
    if path.is_file():
        numbers.update(find_numbers(json.loads(path.read_text()), r"(clips|samples|videos|steps).*(per_s|/s|_s$)"))
    if not numbers:  # the median over the run's logging windows (the last window alone is noisy)
        history = mlflow_run(run_dir, history=(r".*(clips|samples|videos|steps)_?per_s(ec)?",)).get("history", {})
        numbers.update({f"{k} (median of {len(v)} windows)": float(np.median([x for _, x in v]))
                        for k, v in history.items() if v})
    return numbers


# --- MLflow ---------------------------------------------------------------------------------------------------
def mlflow_databases(run_dir: Path) -> list[Path]:
    candidates = [run_dir / "mlflow.db", run_dir.parent / "mlflow.db", run_dir.parent.parent / "mlflow.db"]
    return [p for p in candidates if p.is_file()]


def mlflow_run(run_dir: Path, history: tuple[str, ...] = ()) -> dict:
    """The latest MLflow run logged for ``run_dir`` (matched by run name = folder name, else the only run):
    {"run_id", "params", "metrics" (last values), "history": {key: [(step, value), ...]}}; {} when none."""
    for db in mlflow_databases(run_dir):
        try:
            found = _mlflow_read(db, run_dir.name, history)
        except Exception as error:  # a corrupt or foreign database must not break the report
            log.warning("cannot read MLflow database %s: %s", db, error)
            continue
        if found:
            return found
    return {}


def _mlflow_read(db: Path, run_name: str, history: tuple[str, ...]) -> dict:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return {}
    runs = client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=200)
    named = [r for r in runs if r.info.run_name == run_name]
    if not named and len(runs) == 1:
        named = runs
    if not named:
        return {}
    run = named[0]
    keys = [k for k in run.data.metrics if any(re.fullmatch(h, k) for h in history)]
    return {
        "db": str(db), "run_id": run.info.run_id, "params": dict(run.data.params), "metrics": dict(run.data.metrics),
        "history": {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in keys},
    }


# --- figures (matplotlib, Agg) --------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_robustness(result: dict, path: Path) -> Path:
    """AUC per level for each perturbation, video and audio side by side; the clean AUC dashed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    clean = result["clean"]["fused"]["auc"]
    for ax, kind in zip(axes, ("video", "audio"), strict=True):
        rows = [r for r in result["conditions"] if r["kind"] == kind]
        for name in dict.fromkeys(r["perturbation"] for r in rows):
            points = sorted((r["level"], r["auc"]) for r in rows if r["perturbation"] == name and r["auc"] is not None)
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=name)
        if clean is not None:
            ax.axhline(clean, color="black", linestyle="--", linewidth=1, label="clean")
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{kind} perturbations")
        ax.set_xlabel("level (1 mild .. 5 severe)")
        ax.set_xticks(range(1, 6))
        ax.legend(fontsize=7, loc="best")
    axes[0].set_ylabel("test AUC")
    axes[0].set_ylim(0.0, 1.02)
    return _save(fig, path)


def plot_grouped_bars(groups: list[str], series: dict[str, list[float | None]], path: Path, title: str,
                      ylabel: str = "AUC", threshold: float | None = None) -> Path:
    """One bar group per entry of ``groups``, one bar per series (None -> no bar)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) + 2), 4))
    width = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i, v in enumerate(values) if v is not None]
        ax.bar(xs, [v for v in values if v is not None], width, label=label)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20, ha="right", fontsize=8)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    if threshold is not None:
        ax.axhline(threshold, color="red", linestyle="--", linewidth=1, label=f"flag >= {threshold}")
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_roc(curves: dict[str, tuple[list[int], list[float]]], path: Path) -> Path:
    """ROC curves (log-scaled FPR axis, where TPR@FPR=1e-3 lives) of several scored test sets."""
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, (y, s) in curves.items():
        if len(set(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        axes[0].plot(fpr, tpr, label=label)
        axes[1].plot(np.maximum(fpr, 1e-4), tpr, label=label)  # FPR 0 drawn at 1e-4 on the log axis
    axes[0].plot([0, 1], [0, 1], color="grey", linestyle=":")
    axes[0].set_title("ROC (test)")
    axes[1].set_xscale("log")
    axes[1].set_xlim(1e-4, 1)
    axes[1].axvline(1e-3, color="grey", linestyle="--", linewidth=1)
    axes[1].set_title("ROC, log FPR (dashed: FPR = 1e-3)")
    for ax in axes:
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_curves(histories: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> Path | None:
    """Training curves from MLflow metric histories: one panel per metric, one line per run."""
    keys = sorted({k for h in histories.values() for k in h})
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for run, history in histories.items():
            if history.get(key):
                ax.plot(*zip(*history[key], strict=True), label=run)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_generality(result: dict, path: Path) -> Path:
    """Per-method test AUC of each held-out experiment, and of the model trained on every method."""
    experiments = result["experiments"]
    methods = sorted({m for e in experiments for m in e["per_method"]})
    series = {}
    for e in experiments:
        series[f"unseen: {', '.join(e['held_out'])}"] = [e["per_method"].get(m, {}).get("auc") for m in methods]
        ref = e.get("reference")
        if ref and "trained on all methods" not in series:
            series["trained on all methods"] = [ref["per_method"].get(m, {}).get("auc") for m in methods]
    return plot_grouped_bars(methods, series, path, "Test AUC per manipulation method (genuine vs method)")


def plot_modality(result: dict, path: Path) -> Path:
    groups = [*FAKE_CATEGORIES, "all"]
    series = {f"{model} {head}": [tables["by_category"].get(g, {}).get("auc") for g in groups]
              for model, analysis in result["models"].items() for head, tables in analysis["heads"].items()}
    return plot_grouped_bars(groups, series, path, "Test AUC per fake category (genuine vs category), per head")


def plot_shortcuts(result: dict, path: Path) -> Path:
    series = {split: [audit["features"].get(f, {}).get("separability") for f in FEATURES]
              for split, audit in result["splits"].items()}
    return plot_grouped_bars(list(FEATURES), series, path, "Shortcut audit: one metadata feature as the score",
                             ylabel="max(AUC, 1-AUC)", threshold=result["threshold"])
