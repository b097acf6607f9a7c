"""python -m evaluation.report on the session's tiny demo folder: every section, every figure, numbers from files."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.common import binary_metrics, read_csv_rows
from tests.evaluation.evaluation_demo import GENERALITY_ARGS, ROBUSTNESS_ARGS, SPEED_ARGS, build_demo

pytestmark = pytest.mark.slow  # make test-slow and CI run it (make test leaves it out)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "report" / "template.md"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVAL_ARGS = [f"robustness={' '.join(ROBUSTNESS_ARGS)}", f"generality={' '.join(GENERALITY_ARGS)}",
             f"speed={' '.join(SPEED_ARGS)}"]
FIGURES = ["training_curves.png", "roc_test.png", "generality.png", "robustness.png", "modality.png",
           "shortcuts.png"]


def make_report(*args, expect: int = 0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "evaluation.report", *map(str, args)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == expect, (f"{' '.join(cmd)} exited {result.returncode}\n--- stdout\n"
                                         f"{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def demo(synthetic_dataset, packed_shards, tiny_run, tmp_path_factory) -> Path:
    return build_demo(tmp_path_factory.getbasetemp() / "eval_demo", synthetic_dataset, packed_shards, tiny_run)


@pytest.fixture(scope="module")
def report(demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    make_report("--runs", demo, "--out", out, "--workers", 2, *[f"--eval-args={a}" for a in EVAL_ARGS])
    return out


def sections(markdown: str) -> dict[str, str]:
    parts = re.split(r"^## ", markdown, flags=re.MULTILINE)[1:]
    return {p.split("\n", 1)[0].strip(): p.split("\n", 1)[1] for p in parts}


def test_every_section_is_filled(report):
    markdown = (report / "report.md").read_text()
    expected = [line[3:].strip() for line in TEMPLATE.read_text().splitlines() if line.startswith("## ")]
    found = sections(markdown)
    assert list(found) == expected
    explain = (ROOT / "infer" / "explain.py").is_file()
    for title, body in found.items():
        assert body.strip(), title
        if explain or title != "11. Interpretability":
            assert "Not available" not in body, f"section {title!r} is missing its evaluation:\n{body[:500]}"
    assert "$" not in markdown.replace("$ ", "")  # no unfilled template placeholder
    assert "Decision rule of" in markdown and "sigmoid of the model's main logit" not in markdown


def test_every_figure_is_a_generated_png(report):
    markdown = (report / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert {f"figures/{name}" for name in FIGURES} <= set(linked)
    if (ROOT / "infer" / "explain.py").is_file():
        assert any(link.startswith("figures/explain/") for link in linked)
    for link in linked:
        path = report / link
        assert path.read_bytes()[:8] == PNG_MAGIC, link


def test_numbers_come_from_the_runs_and_evaluations(report, demo):
    markdown = (report / "report.md").read_text()
    summary = sections(markdown)["1. Summary"]
    labels = {r["video_name"]: int(r["target"]) for r in read_csv_rows(demo / "data" / "test_labels.csv")}
    for name in ("baseline", "tiny"):
        scores = {r["video_name"]: float(r["score"]) for r in read_csv_rows(demo / "submissions" / f"{name}.csv")}
        auc = binary_metrics([labels[n] for n in sorted(labels)], [scores[n] for n in sorted(labels)])["auc"]
        row = next(line for line in summary.splitlines() if line.startswith(f"| {name} |"))
        assert f"| {auc:.3f} [" in row  # the test AUC with its bootstrap interval
    import json

    generality = json.loads((demo / "eval" / "generality.json").read_text())
    (experiment,) = generality["experiments"]
    section = sections(markdown)["7. Generality to unseen identities, voices and methods"]
    for category, m in experiment["categories"].items():
        if m["auc"] is not None:
            low, high = m["auc_ci"]
            assert f"| {category} | {m['auc']:.3f} [{low:.3f}, {high:.3f}] |" in section
    assert "is not a measurement here" in section  # 12 genuine test videos cannot resolve FPR=1e-3

    robustness = json.loads((demo / "eval" / "robustness.json").read_text())
    assert f"Clean: AUC {robustness['clean']['fused']['auc']:.3f}" in markdown
    shortcuts = json.loads((demo / "eval" / "shortcuts.json").read_text())
    duration = shortcuts["splits"]["train"]["features"]["duration"]["separability"]
    assert f"| duration | {duration:.2f}" in sections(markdown)["10. Shortcut audit"]


def test_run_folders_and_cached_evaluations(demo, tmp_path):
    """--runs may name run folders; cached evaluations are reused (no evaluation reruns: it is quick)."""
    out = tmp_path / "report"
    make_report("--runs", demo / "runs" / "tiny", "--out", out, "--skip-explain", "--no-pdf")
    results = sections((out / "report.md").read_text())["6. Results vs the organizers' baseline"]
    assert "| tiny |" in results and "| baseline |" not in results


def test_protocol_results_replace_the_demos_generality(demo, tmp_path):
    """--protocol DIR: the generality tables come from DIR/eval/generality.json (here the demo's, with one method
    renamed so the source shows); a folder without it is refused with the command that makes it."""
    import json

    result = json.loads((demo / "eval" / "generality.json").read_text())
    per_method = result["experiments"][0]["per_method"]
    per_method["protocol_only_method"] = per_method.pop(next(iter(per_method)))
    (tmp_path / "protocol" / "eval").mkdir(parents=True)
    (tmp_path / "protocol" / "eval" / "generality.json").write_text(json.dumps(result))
    out = tmp_path / "report"
    make_report("--runs", demo, "--out", out, "--protocol", tmp_path / "protocol", "--skip-explain", "--no-pdf")
    generality = [v for k, v in sections((out / "report.md").read_text()).items() if "eneralit" in k][0]
    assert "| protocol_only_method |" in generality and str(tmp_path / "protocol") in generality
    refused = make_report("--runs", demo, "--out", out, "--protocol", tmp_path, expect=1)
    assert "python -m scripts.protocol --out" in refused.stderr


def test_the_arguments_make_report_adds_are_accepted(demo):
    """make_report runs a missing evaluation with arguments of its own: python -m evaluation must accept them
    (the tests above find most evaluations cached, so they would not notice)."""
    from evaluation.__main__ import parse_args
    from evaluation.report import _default_eval_args
    from evaluation.report_runs import EVALUATIONS, resolve_sources

    src = resolve_sources([demo])
    for name in EVALUATIONS:
        parse_args([name, "--demo-dir", str(demo), *map(str, _default_eval_args(name, src))])


def test_refuses_a_folder_without_runs(tmp_path):
    result = make_report("--runs", tmp_path, "--out", tmp_path / "report", expect=1)
    assert "make demo" in result.stderr


def test_gpu_check_json_adds_a_gpu_table_to_the_speed_section(demo, tmp_path):
    """--gpu-check FILE: make gpu-check's JSON (its fields, one run failed) becomes rows of the speed section; a
    missing file is refused with the command that makes it."""
    import json

    run = {"ok": True, "distributed_type": "MULTI_GPU", "param_dtype": "torch.float32", "clips_per_s": 63.56,
           "step_seconds": 0.2518, "data_wait_frac": 0.2335, "mfu": 0.0888, "peak_memory_gib": 28.16,
           "loss_first_quarter": 1.42, "loss_last_quarter": 0.25}
    check = {"machine": {"gpu": "NVIDIA H200", "gpu_count": 1, "cpu_count": 16, "torch": "2.11.0+cu130"},
             "config": "/repo/configs/base.yaml", "overrides": ["model.visual_pretrained=none"], "steps": 300,
             "workers": 14, "peak_tflops": 989.0, "peak_source": "table (H200, dense bf16)",
             "runs": {"ddp": run, "deepspeed": {"ok": False, "error": "exit 1: out of memory"}},
             "inference": {"bf16": {"clips_per_s": 335.09, "batch_size": 32}}}
    (tmp_path / "gpu_check.json").write_text(json.dumps(check))
    out = tmp_path / "report"
    make_report("--runs", demo, "--out", out, "--gpu-check", tmp_path / "gpu_check.json", "--skip-explain", "--no-pdf")
    speed = sections((out / "report.md").read_text())["12. Speed"]
    assert "NVIDIA H200 x 1" in speed and "base.yaml model.visual_pretrained=none" in speed
    assert "| ddp (MULTI_GPU, float32 weights) | 63.6 | 0.252 | 23.4% | 8.9% | 28.2 GiB | 1.42 -> 0.25 |" in speed
    assert "| deepspeed | failed |" in speed and "exit 1: out of memory" in speed
    assert "| inference, model only, bf16 (batch 32) | 335.1 |" in speed
    refused = make_report("--runs", demo, "--out", out, "--gpu-check", tmp_path / "none.json", expect=1)
    assert "make gpu-check" in refused.stderr
