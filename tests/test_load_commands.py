"""The commands that read a finished run: --workdir names it in each (a former name still works
and says it is deprecated), the result comes without the checkpoint library's INFO lines and
is not lost to an unwritable workdir, and bad arguments fail in one line before any work;
pretrain_lm's last lines; pretrain_lm's and translate's checks before training."""

import errno
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from absl import flags
from absl import logging as absl_logging

from experiments import ensemble, evaluate, generate, icl_report, pretrain_lm, translate
from experiments.configs import gpt as gpt_configs, transformer as transformer_configs
from test_trainer import ROOT, corpus_flags
from train.logging import read_metrics

INFO_LINE = re.compile(r"^I\d{4} \d\d:\d\d", re.MULTILINE)   # absl's INFO prefix: I1204 16:33


def command(module: str, *args) -> subprocess.CompletedProcess:
    """python -m experiments.MODULE ARGS, stdout and stderr together, in their order."""
    return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=ROOT,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny GPT pretrained for two steps: (its workdir, the command's output)."""
    tmp = tmp_path_factory.mktemp("tiny_lm")
    result = command("pretrain_lm", f"--workdir={tmp / 'run'}", *corpus_flags(tmp),
                     "--config.train.steps=2")
    assert result.returncode == 0, result.stdout[-3000:]
    return tmp / "run", result.stdout


@pytest.fixture
def parsed():
    """Parses a command line into the global flags, and forgets it (and the logging level the
    command sets) afterwards."""
    verbosity = absl_logging.get_verbosity()
    yield lambda *argv: flags.FLAGS(["command", *argv])
    flags.FLAGS.unparse_flags()
    absl_logging.set_verbosity(verbosity)


def test_help_lists_workdir():
    result = command("generate", "--help")   # (absl's --help exits with status 1)
    assert all(f"  --{name}:" in result.stdout for name in ("workdir", "prompt", "top_p"))
    for module in (evaluate, icl_report):   # --workdir, defined by launch, is theirs too
        assert "workdir" in {f.name for f in flags.FLAGS.get_key_flags_for_module(module)}


# ----------------------------------------------------------------------------- pretrain_lm

def test_pretrain_lm_ends_with_its_last_val_and_test_lines(tiny_run):
    workdir, output = tiny_run
    lines = output.rstrip().splitlines()
    rows = read_metrics(workdir)
    val = [r for r in rows if r["split"] == "val"][-1]
    test = [r for r in rows if r["split"] == "test"][-1]
    assert lines[-2:] == [
        f"final val (step 2): loss {val['loss']:.4f}, perplexity {val['perplexity']:.4f}",
        f"final test (step 2): loss {test['loss']:.4f}, perplexity {test['perplexity']:.4f}"]
    assert "--- sample ---" in output
    assert not INFO_LINE.search(output)


def test_pretrain_lm_refuses_an_empty_sample_prompt_before_training(tmp_path):
    config = gpt_configs.get_config("tiny")
    config.sample.prompt = ""
    with pytest.raises(ValueError, match="sample.prompt is empty"):
        pretrain_lm.main(config, tmp_path / "run")
    config.sample.prompt, config.sample.top_k = "def", -1
    with pytest.raises(ValueError, match="sample.top_k must be >= 0"):
        pretrain_lm.main(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    config.sample.update(prompt="", num_tokens=0)   # no sample: nothing to continue
    pretrain_lm.check_sample(config)


# ----------------------------------------------------------------------------- generate

def test_generate_reads_workdir_and_prints_no_info_lines(tiny_run):
    workdir, _ = tiny_run
    result = command("generate", f"--workdir={workdir}", "--prompt=import os",
                     "--max_new_tokens=3", "--temperature=0")
    assert result.returncode == 0, result.stdout[-3000:]
    assert not INFO_LINE.search(result.stdout), result.stdout[:2000]
    first, timing = result.stdout.splitlines()
    assert first.startswith("import os") and "prompt tokens, " in timing


def test_generate_init_from_is_a_deprecated_workdir(parsed, capsys):
    parsed("--init_from=runs/lm", "--prompt=x")
    assert generate.FLAGS.workdir == "runs/lm"
    assert capsys.readouterr().err == "--init_from is deprecated; use --workdir\n"


@pytest.mark.parametrize("flag,message", [
    ("--temperature=-0.5", "--temperature must be >= 0 (0: greedy), got -0.5"),
    ("--top_k=-1", "--top_k must be >= 0 (0: every token), got -1"),
    ("--top_p=0", "--top_p must lie in (0, 1], got 0.0"),
    ("--top_p=1.5", "--top_p must lie in (0, 1], got 1.5"),
    ("--max_new_tokens=0", "--max_new_tokens must be positive, got 0"),
    ("--prompt=", "--prompt is empty"),
])
def test_generate_refuses_bad_settings_before_loading(parsed, tmp_path, flag, message):
    """One line and exit status 1, before the (missing) run is looked at."""
    parsed(f"--workdir={tmp_path / 'missing'}", "--prompt=def", flag)
    with pytest.raises(SystemExit) as e:
        generate.main(["generate"])
    assert e.value.code.startswith(f"error: {message}") and "\n" not in e.value.code


# ----------------------------------------------------------------------------- evaluate

def test_evaluate_prints_its_result_before_failing_to_save_it(tiny_run, parsed, monkeypatch,
                                                              capsys):
    """A read-only workdir: the result is printed first, then one warning; nothing is lost but
    the file. The checkpoint library's INFO lines are off."""
    workdir, _ = tiny_run
    printed_before_saving = []
    write_text = pathlib.Path.write_text

    def read_only(path, *args, **kwargs):
        if path.parent == workdir:
            printed_before_saving.append(capsys.readouterr().out)
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return write_text(path, *args, **kwargs)
    monkeypatch.setattr(pathlib.Path, "write_text", read_only)
    parsed(f"--workdir={workdir}")
    evaluate.main(["evaluate"])
    assert absl_logging.get_verbosity() == absl_logging.WARNING
    (result,) = map(json.loads, printed_before_saving[0].splitlines())
    test = [r for r in read_metrics(workdir) if r["split"] == "test"][-1]
    assert result["step"] == 2 and result["loss"] == pytest.approx(test["loss"], rel=1e-5)
    assert capsys.readouterr().err == (f"warning: the result was not saved to {workdir}/"
                                       "evaluate-test-2.json: Read-only file system\n")
    assert not list(workdir.glob("evaluate-*.json"))


# ----------------------------------------------------------------------------- ensemble

def test_ensemble_takes_several_workdirs_and_the_former_runs(capsys):
    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "the experiments' single one", flag_values=fv)
    ensemble.define_flags(fv)
    fv(["ensemble", "--workdir=a", "--workdir=b"])
    assert fv.workdir == ["a", "b"] and capsys.readouterr().err == ""
    fv.unparse_flags()
    fv(["ensemble", "--runs=a", "--workdir=b", "--runs=c"])
    assert fv.workdir == ["a", "b", "c"]
    assert capsys.readouterr().err == "--runs is deprecated; use --workdir\n"
    fv.unparse_flags()
    with pytest.raises(flags.IllegalFlagValueError, match="workdir"):
        fv(["ensemble"])


# ----------------------------------------------------------------------------- icl_report

def test_icl_report_reads_the_sweep_named_by_workdir(parsed, tmp_path, capsys):
    keys = [f"test/icl/k{k}{d}/{g}/{m}" for m in icl_report.METRICS for k in (0, 2)
            for d in ("", "/nodesc") for g in icl_report.GROUPS]
    (tmp_path / "results.csv").write_text(
        ",".join(["size", "seed", *keys]) + "\n"
        + "".join(f"{s},0," + ",".join(["0.5"] * len(keys)) + "\n" for s in ("s", "m")))
    parsed(f"--workdir={tmp_path}", f"--figure={tmp_path / 'icl.png'}")
    icl_report.main(["icl_report"])
    assert "| m | no | 0.500 | 0.500 |" in (tmp_path / "icl.md").read_text()
    assert (tmp_path / "icl.png").exists()
    flags.FLAGS.unparse_flags()
    parsed(f"--workdir={tmp_path / 'icl.png'}")
    with pytest.raises(SystemExit) as e:
        icl_report.main(["icl_report"])
    assert e.value.code == (f"error: {tmp_path / 'icl.png'} holds no results.csv: --workdir "
                            "names the directory of a finished experiments.sweep")


# ----------------------------------------------------------------------------- translate

@pytest.mark.parametrize("change,message", [
    ({"beam_size": 0}, "config.evals.test_bleu.beam_size must be >= 1"),
    ({"beam_size": 400}, "beam_size 400 needs a vocabulary of at least 800 tokens"),
    ({"alpha": -0.1}, "config.evals.test_bleu.alpha, the length penalty, must be >= 0"),
    ({"extra_len": -5}, "config.evals.test_bleu.extra_len must be >= 0"),
])
def test_translate_checks_decoding_before_writing(tmp_path, change, message):
    config = transformer_configs.get_config("tiny")
    config.evals.test_bleu.update(change)
    with pytest.raises(ValueError, match=re.escape(message)):
        translate.main(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
