"""The command line's config side: schedules that follow train.steps, --help listing every key,
one-line errors for bad config input, configs that import nothing heavy, MFU at most 100%."""

import importlib
import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"


def parse(spec: str, *overrides: str):
    """The ConfigDict an experiment's flags give for `--config=spec` and `overrides`."""
    argv = ["x", f"--config={CONFIGS / spec}", *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv)
    return fv.config


def test_step_schedule_follows_a_steps_override():
    """The default ConvNet command with --config.train.steps=300: lr divided by 10 at 50% and
    75% of those 300 steps, so lr / peak is 0.1 at 62% and 0.01 at 90% (the trainer logs
    schedule(step - 1) as `lr`)."""
    import jax.numpy as jnp
    from train import optim
    config = parse("convnets.py", "--config.train.steps=300")
    _, schedule = optim.make_optimizer(config.train, {"w": jnp.zeros((2, 2))})
    lr = lambda step: float(schedule(step - 1)) / config.train.lr   # noqa: E731
    assert lr(round(0.62 * 300)) == pytest.approx(0.1)
    assert lr(round(0.90 * 300)) == pytest.approx(0.01)
    assert lr(round(0.45 * 300)) == pytest.approx(1.0)
    assert lr(8) == pytest.approx(7 / 15) and lr(16) == pytest.approx(1.0)   # 5% warmup


def test_warmup_fraction_and_clamped_warmup(capsys):
    from train import optim
    from experiments.configs import common
    t = common.train_config(steps=1000, warmup_steps=0, warmup_fraction=0.1, lr=1.0,
                            schedule="constant")
    assert optim.warmup_steps(t) == 100
    t.steps = 50
    assert optim.warmup_steps(t) == 5
    with pytest.raises(ValueError, match="warmup_fraction"):
        optim.make_schedule(common.train_config(warmup_steps=10, warmup_fraction=0.1))
    schedule = optim.make_schedule(common.train_config(steps=4, warmup_steps=50, lr=1.0))
    assert "cut to 3" in capsys.readouterr().err
    assert float(schedule(3)) == pytest.approx(1.0)


def test_mfu_is_at_most_one_and_says_when_the_peak_was_measured_low():
    from train import perf
    from train.logging import progress_line
    assert perf.mfu(40.0, 100.0) == {"mfu": 0.4}
    over = perf.mfu(102.7, 100.0)
    assert over == {"mfu": 1.0, "mfu_over_peak": 1.0}
    line = progress_line(5, 10, {"loss": 1.0, **over}, None, 1.0)
    assert "mfu >100% of measured peak" in line and "102" not in line
    assert "mfu 40.0%" in progress_line(5, 10, {"loss": 1.0, "mfu": 0.4}, None, 1.0)


def test_config_defaults_mirror_models_and_data():
    """experiments/configs/defaults.py copies the presets and defaults the configs start from
    (so that a config imports no jax): each copy equals its source."""
    import dataclasses
    from data import code_tasks, icl_tasks, text
    from experiments.configs import defaults
    from models import clip, efficientnet, gpt, transformer
    for module, build in ((gpt, defaults.gpt), (transformer, defaults.transformer),
                          (clip, defaults.clip)):
        assert build().to_dict() == dataclasses.asdict(type(next(iter(
            module.PRESETS.values())))()), module.__name__
        assert set(module.PRESETS) == set(getattr(defaults, f"{build.__name__.upper()}_PRESETS"))
        for name in module.PRESETS:
            assert build(name).to_dict() == dataclasses.asdict(module.preset(name)), name
    assert defaults.compound_scaling(0.8) == pytest.approx(efficientnet.compound_scaling(0.8))
    assert defaults.TEXT == text.default_config().to_dict()
    assert defaults.ICL == icl_tasks.default_config().to_dict()
    assert defaults.TRANSFER_TASKS == tuple(code_tasks.TRANSFER_TASKS)


def test_eval_spec_table_mirrors_the_evaluators():
    from experiments.configs import common
    from train import evaluators
    assert common.EVAL_FIELDS == evaluators.FIELDS
    assert common.EVAL_TYPE_FIELDS == {k: dict(c.defaults) for k, c in evaluators.REGISTRY.items()}
    for kind in evaluators.REGISTRY:
        assert common.eval_spec(type=kind) == evaluators.spec(type=kind)


CONFIG_FILES = ("clip", "convnets", "corpus", "gpt", "gpt1", "transformer")


def test_configs_import_nothing_heavy():
    """Every preset of every config file loads without jax, flax, train, data or models."""
    code = (
        "import importlib, sys\n"
        f"for name in {CONFIG_FILES!r}:\n"
        "    module = importlib.import_module('experiments.configs.' + name)\n"
        "    assert module.PRESETS, name\n"
        "    for preset in module.PRESETS:\n"
        "        module.get_config(preset).to_json_best_effort()\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.split('.')[0] in ('jax', 'flax', 'train', 'data', 'models'))\n"
        "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_values_derived_from_the_model_follow_its_override():
    """data.seq_len, data.vocab_size and train.noam_width follow the model field they come
    from, and can still be set on their own."""
    c = parse("gpt.py:tiny", "--config.model.n_ctx=64", "--config.model.vocab_size=300")
    assert (c.data.seq_len, c.data.vocab_size) == (64, 300)
    c = parse("gpt.py:tiny", "--config.data.seq_len=32")
    assert (c.data.seq_len, c.model.n_ctx) == (32, 128)
    c = parse("transformer.py:tiny", "--config.model.d_model=32")
    assert c.train.noam_width == 32
    c = parse("clip.py:tiny", "--config.model.text.vocab_size=256")
    assert c.data.vocab_size == 256


COMMANDS = {"pretrain_lm": [], "classify_images": [], "translate": [], "clip": [],
            "finetune_gpt": [], "benchmark": [],
            "sweep": ["--config=experiments/configs/gpt.py:tiny"]}


def run(*args, env=None, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_every_config_key(command):
    """--help of each command lists its config's keys, train.steps and train.lr with their
    defaults."""
    out = run("-m", f"experiments.{command}", *COMMANDS[command], "--help")
    assert out.returncode in (0, 1) and "Traceback" not in out.stderr, out.stderr[-2000:]
    spec = (COMMANDS[command] or [None])[0]
    from experiments import launch
    module, config = launch.load_config(spec.split("=", 1)[1] if spec else str(
        launch.CONFIGS / DEFAULTS[command]))
    assert f"  train.steps = {config.train.steps!r}" in out.stdout
    assert f"  train.lr = {config.train.lr!r}    # peak learning rate" in out.stdout
    for key in ("train.batch_size", "mesh.data", "seed"):
        assert f"{key} = " in out.stdout


DEFAULTS = {"pretrain_lm": "gpt.py:tiny", "classify_images": "convnets.py:resnet-digits",
            "translate": "transformer.py:sentences", "clip": "clip.py:tiny",
            "finetune_gpt": "gpt1.py:finetune", "benchmark": "gpt.py:bench-cpu"}


def test_config_help_imports_no_jax():
    code = ("import sys\nfrom experiments import launch\n"
            "text = launch.config_help(['x'], 'gpt.py:tiny')\n"
            "assert 'train.steps = 1000' in text and 'model.n_layer = 4' in text, text\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax')))\n")
    out = run("-c", code)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]


EXPERIMENTS = {"gpt.py:tiny": "pretrain_lm", "convnets.py:resnet-digits": "classify_images",
               "convnets.py:lenet5": "classify_images"}


@pytest.mark.parametrize("argv, default, expected", [
    (["--config.train.step=30"], "gpt.py:tiny", "train has no key 'step'; did you mean "
                                                "train.steps?"),
    (["--config=experiments/configs/gpt.py:tinyy"], "gpt.py:tiny",
     "unknown preset 'tinyy'; choose from tiny, tiny-4k, micro"),
    (["--config=experiments/configs/convnets.py:lenet5"], "gpt.py:tiny",
     "is a config of experiments.classify_images, not of experiments.pretrain_lm"),
    (["--config.model.overrides.widht=3"], "convnets.py:resnet-digits",
     "model.overrides has no keys in this preset; set it whole"),
    (["--config.data.sourc=x"], "convnets.py:resnet-digits",
     "data has no key 'sourc'; did you mean data.source? data has: augment, channels"),
    (["--config.model.overrides.act=relu", "--config.model.overrides.ac=1"],
     "convnets.py:lenet5", "model.overrides has no key 'ac'; did you mean model.overrides.act?"),
    (["--config.train.steps.x=1"], "gpt.py:tiny", "train.steps is a value, not a section"),
])
def test_bad_config_input_is_named(argv, default, expected):
    from experiments import launch
    with pytest.raises(launch.ConfigError) as e:
        launch.checked_config(["x", *argv], default, experiment=EXPERIMENTS[default])
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_bad_config_input_is_one_line_and_creates_nothing(tmp_path):
    for args in (["--config.train.step=30"], ["--config=experiments/configs/gpt.py:tinyy"],
                 ["--config=experiments/configs/convnets.py:lenet5"]):
        out = run("-m", "experiments.pretrain_lm", f"--workdir={tmp_path / 'run'}", *args)
        assert out.returncode == 2 and out.stdout == ""
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert out.stderr.startswith("error: --config")
        assert not (tmp_path / "run").exists()


def test_workdir_expands_home(tmp_path):
    code = ("import sys\nsys.argv = ['x', '--workdir=~/runs/a']\nfrom experiments import launch\n"
            "launch.run(lambda config, workdir: print(workdir), 'gpt.py:micro')\n")
    out = run("-c", code, env={"HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(tmp_path / "runs" / "a")
