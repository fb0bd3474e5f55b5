"""The layers of DESIGN.md, read off the source: every import of every module (those inside
functions too) points down experiments/ -> train/, data/ -> models/, and no module imports
another that imports it back."""

import ast
import pathlib
import subprocess
import sys

from conftest import simulated_devices_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("models", "data", "train", "experiments")
# Which of our packages each package may import (itself included).
ALLOWED = {"models": {"models"}, "data": {"data"}, "train": {"train", "models"},
           "experiments": {"experiments", "train", "data", "models"}}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imported(name: str, source: str, is_package: bool = False) -> set[str]:
    """Our modules that module `name` imports anywhere in its source, functions included."""
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from . import x, from .y import z
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from p import m` imports the module p.m when there is one, else names of p.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:   # import a.b.c of a module a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: _imported(name, path.read_text(encoding="utf-8"), path.name == "__init__.py")
         for name, path in MODULES.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _edges_out_of_layer(package: str) -> list[str]:
    return [f"{a} -> {b}" for a, targets in sorted(GRAPH.items()) if a.split(".")[0] == package
            for b in sorted(targets) if b.split(".")[0] not in ALLOWED[package]]


def test_the_graph_sees_every_form_of_import():
    source = ("import os\nimport models.gpt as g\nfrom data import iterators, sources\n"
              "from data.tokenizer import EOT\nfrom . import prompts\n\n"
              "def f():\n    from train.trainer import fit\n    import experiments.launch\n")
    assert _imported("data.text", source) == {
        "models.gpt", "data.iterators", "data.sources", "data.tokenizer", "data.prompts",
        "train.trainer", "experiments.launch"}
    assert "data.sources" in GRAPH["data.text"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_data_has_no_import_circle_and_imports_nothing_outside_data():
    data = {a: {b for b in t if b.startswith("data.")} for a, t in GRAPH.items()
            if a.split(".")[0] == "data"}
    assert _cycle(data) is None, f"import circle in data/: {' -> '.join(_cycle(data))}"
    assert not _edges_out_of_layer("data")


def test_models_import_nothing_outside_models():
    assert not _edges_out_of_layer("models")


def test_experiments_import_only_down():
    assert not _edges_out_of_layer("experiments")


def test_train_imports_only_models():
    assert not _edges_out_of_layer("train")


def test_no_import_circle():
    cycle = _cycle(GRAPH)
    assert cycle is None, f"import circle: {' -> '.join(cycle)}"


def test_evaluators_never_import_the_trainer():
    offenders = [a for a, targets in GRAPH.items()
                 if a.startswith("train.evaluators") and "train.trainer" in targets]
    assert not offenders, f"{offenders} import train.trainer"


def test_evaluator_modules_import_the_base_not_their_package():
    offenders = [a for a, targets in GRAPH.items()
                 if a.startswith("train.evaluators.") and "train.evaluators" in targets]
    assert not offenders, f"{offenders} import train.evaluators, which imports them"


def test_evaluators_load_without_the_trainer():
    code = ("import sys, train.evaluators as e; assert 'train.trainer' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith('train.')); print(sorted(e.REGISTRY))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=simulated_devices_env(1), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert {"loss", "accuracy", "bleu", "zeroshot", "fewshot"} <= set(eval(out.stdout))
