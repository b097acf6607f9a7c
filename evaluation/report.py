"""`make report`: the technical report from the demo's runs and the evaluations, as report/report.md.

    python -m evaluation.report --runs DEMO_DIR [--out report] [--protocol runs/protocol] [--skip-generality] ...
        [--gpu-check runs/gpu_check/gpu_check.json]
    python -m evaluation.report --runs DEMO_DIR/runs/tiny DEMO_DIR/runs/baseline --out report

--runs takes a `make demo` folder (its runs/*, data/, submissions/) or run folders inside one. Evaluations missing
from DEMO_DIR/eval/ are run first with `python -m evaluation` (cached as JSON there; --force reruns them), the
interpretability figures with `python -m infer --explain`, then report/report.md and report/figures/*.png are
written (and report/report.pdf when pandoc is installed). Every number comes from a file; nothing is typed in.
The sections are ``evaluation.report_sections``', the run reading ``evaluation.report_runs``'.
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
from pathlib import Path
from string import Template

from evaluation.common import ROOT, read_meta, run_command
from evaluation.report_runs import EVALUATIONS, Sources, code_version, read_run, resolve_sources
from evaluation.report_sections import Report

TEMPLATE = ROOT / "report" / "template.md"
log = logging.getLogger("report")


# --- running what is missing --------------------------------------------------------------------------------------
def ensure_evaluations(src: Sources, args: argparse.Namespace) -> dict[str, dict | None]:
    """Each evaluation's JSON, computed with `python -m evaluation` when missing (or --force); None when skipped."""
    results: dict[str, dict | None] = {}
    for name in EVALUATIONS:
        if name == "generality" and src.protocol:
            results[name] = json.loads((src.generality_dir / "generality.json").read_text())
            continue
        path = src.eval_dir / f"{name}.json"
        skipped = name in args.skip
        if (not path.is_file() or args.force) and not skipped:
            extra = shlex.split(args.eval_args.get(name, ""))
            cmd = [sys.executable, "-m", "evaluation", name, "--demo-dir", src.demo.root,
                   "--workers", args.workers, *_default_eval_args(name, src), *extra]
            run_command(cmd, src.eval_dir / "logs" / f"{name}.log")
        results[name] = json.loads(path.read_text()) if path.is_file() else None
    return results


def _default_eval_args(name: str, src: Sources) -> list[str]:
    if name == "modality":
        with_details = [n for n in src.runs if src.demo.details(n).is_file()]
        return ["--models", ",".join(with_details)] if with_details else []
    if name in ("robustness", "speed") and src.ours:
        return ["--model", src.ours]
    return []


def ensure_param_counts(src: Sources) -> dict[str, dict]:
    """run -> `python -m scripts.count_params --config RUN/best/config.yaml --json` (thop and true counts), cached."""
    counts = {}
    for name, folder in src.runs.items():
        config = folder / "best" / "config.yaml"
        cache = src.eval_dir / "params" / f"{name}.json"
        if not cache.is_file() and config.is_file():
            result = subprocess.run([sys.executable, "-m", "scripts.count_params", "--config", str(config), "--json"],
                                    cwd=ROOT, capture_output=True, text=True)
            if result.returncode not in (0, 1) or not result.stdout.strip():  # 1: over the limit, still measured
                raise RuntimeError(f"python -m scripts.count_params --config {config} failed:\n{result.stderr[-2000:]}")
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
                run_command([sys.executable, "-m", "infer", "--videos", src.demo.data / "test", "--checkpoint",
                                src.runs[name] / "best", "--out", src.eval_dir / "explain" / f"{name}.csv",
                                "--workers", args.workers, "--explain", folder], src.eval_dir / "logs" / "explain.log")
            except RuntimeError as error:  # the figures are illustrations: their failure is reported, not fatal
                log.warning("explanations failed (see %s): %s", src.eval_dir / "logs" / "explain.log",
                            str(error).splitlines()[0])
        folders[name] = folder
    return folders


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
    parser = argparse.ArgumentParser(prog="python -m evaluation.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", default=[Path(os.environ.get("DEMO_DIR", "runs/demo"))],
                        help="a `make demo` folder, or run folders inside one")
    parser.add_argument("--out", type=Path, default=ROOT / "report", help="report folder (report.md, figures/)")
    parser.add_argument("--protocol", type=Path, default=None,
                        help="a `python -m scripts.protocol` folder: the generality section and the synchrony check "
                             "show its results (runs/protocol) instead of the demo's")
    parser.add_argument("--gpu-check", type=Path, default=None,
                        help="`make gpu-check`'s runs/gpu_check/gpu_check.json: the speed section adds its GPU rows")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--force", action="store_true", help="rerun the evaluations even when cached")
    for name in ("generality", "robustness", "speed", "explain", "shortcuts", "modality"):
        parser.add_argument(f"--skip-{name}", dest="skip", action="append_const", const=name,
                            help=f"do not run the {name} step (a cached result is still used)")
    parser.add_argument("--eval-args", action="append", default=[], metavar="NAME=ARGS",
                        help="extra `python -m evaluation` arguments for one evaluation, e.g. "
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
    src = resolve_sources(args.runs, args.protocol, args.gpu_check)
    try:
        meta = read_meta(src.demo.data)
        evals = ensure_evaluations(src, args)
        explain = ensure_explanations(src, args)
        params = ensure_param_counts(src)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"python -m evaluation.report: {error}", file=sys.stderr)
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
