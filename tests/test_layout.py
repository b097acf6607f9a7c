"""The project's shape: no import cycle between its files, each package imports only the layers below it, small
files, one way to launch (``python -m``), no ``sys.path`` edits.

Layers, bottom to top: competition -> shards -> models -> train -> infer -> evaluation -> scripts. Every import
counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("competition", "shards", "models", "train", "infer", "evaluation", "scripts")
# package -> the project packages it may import (its own always)
ALLOWED = {
    "competition": set(),
    "shards": {"competition"},
    "models": {"competition", "shards"},
    "train": {"competition", "shards", "models"},
    "infer": {"competition", "shards", "models"},  # not train: inference needs the model library only
    "evaluation": {"competition", "shards", "models", "train", "infer"},
    "scripts": {"competition", "shards", "models", "train", "infer", "evaluation"},
}
MAX_LINES = 500
LONGER = {}  # path -> why it may exceed MAX_LINES (none today)


def project_files() -> list[Path]:
    files = [ROOT / "competition.py"]
    for package in PACKAGES[1:]:
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in project_files()}


def resolve(name: str) -> str | None:
    """The project module an imported name lives in (``a.b.c`` -> ``a.b`` when c is an attribute)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(path: Path) -> set[str]:
    """Project modules imported anywhere in ``path`` (top level and inside functions)."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {resolve(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found |= {resolve(f"{base}.{alias.name}") for alias in node.names}
    return {m for m in found if m and m != own}


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_the_walker_sees_function_local_imports():
    assert "shards.faces" in GRAPH["infer.predict"]  # imported inside main()
    assert "models.checkpoint" in GRAPH["infer.predict"]


def test_no_import_cycle_between_files():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_the_layers_below(package):
    wrong = sorted(f"{module} imports {target}" for module, targets in GRAPH.items()
                   if module.split(".")[0] == package for target in targets
                   if target.split(".")[0] not in ALLOWED[package] | {package})
    assert not wrong, "\n".join(wrong)


def test_inference_does_not_import_the_trainer():
    reached, todo = set(), [m for m in GRAPH if m.startswith("infer")]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo += GRAPH[module]
    assert not {m for m in reached if m.startswith("train")}


def test_files_are_small():
    long = {str(p.relative_to(ROOT)): n for p in project_files() + sorted((ROOT / "tests").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES and str(p.relative_to(ROOT)) not in LONGER}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_no_sys_path_edits_outside_conftest():
    offenders = [str(p.relative_to(ROOT)) for p in [*project_files(), *(ROOT / "tests").rglob("*.py")]
                 if "sys.path" in p.read_text() and p.name != "conftest.py" and p != Path(__file__)]
    assert not offenders, f"sys.path edited in {offenders}: run modules with python -m instead"


def test_every_command_is_a_module():
    """Each package and tool a user runs has a __main__ or a main() reachable by ``python -m``."""
    for package in ("shards.pack", "shards.merge", "train", "infer", "evaluation", "evaluation.report"):
        path = MODULES[package]
        text = (path.parent / "__main__.py").read_text() if path.name == "__init__.py" else path.read_text()
        assert "main(" in text, package
    for script in (ROOT / "scripts").glob("*.py"):
        if script.name != "__init__.py":
            assert not script.read_text().startswith("#!"), f"{script.name}: run it as python -m scripts.{script.stem}"
