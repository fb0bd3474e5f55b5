"""The evaluators stand below the trainer: importing them loads no trainer, and each evaluator
module imports train.evaluators.base, not its own package (no circle through __init__)."""

import ast
import pathlib
import subprocess
import sys

from conftest import simulated_devices_env

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_evaluators_load_without_the_trainer():
    code = ("import sys, train.evaluators as e; assert 'train.trainer' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith('train.')); print(sorted(e.REGISTRY))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=simulated_devices_env(1), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert {"loss", "accuracy", "bleu", "zeroshot", "fewshot"} <= set(eval(out.stdout))


def test_evaluator_modules_import_the_base_not_the_package():
    for path in (ROOT / "train" / "evaluators").glob("*.py"):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module not in ("train.evaluators", "train.trainer"), path.name
                assert not (node.module == "train" and any(
                    a.name in ("evaluators", "trainer") for a in node.names)), path.name
