"""A path that loads a trained model never trains a tokenizer: a run whose tokenizer is missing
is an error naming the file, never a freshly trained tokenizer that would not match its
weights (generate, evaluate_lm, evaluate, finetune_gpt's decoder, pretrain_lm's load_lm)."""

import json
import re

import pytest

from data import text, tokenizer
from data.tokenizer import train_bpe   # bound here: the fixture below stops the module's
from experiments.configs import gpt as gpt_configs


@pytest.fixture
def no_training(monkeypatch):
    def fail(*args, **kwargs):
        pytest.fail("a tokenizer was trained on a path that loads")
    monkeypatch.setattr(text, "train_bpe", fail)
    monkeypatch.setattr(tokenizer, "train_bpe", fail)


def trained_run(tmp_path, monkeypatch):
    """A pretrain_lm workdir with a checkpoint but no tokenizer.json (the checkpoint itself is
    stood in for: only the tokenizer is under test)."""
    from train import checkpoint
    config = gpt_configs.get_config("tiny")
    config.data.cache_dir = str(tmp_path / "cache")
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    saved = dict(config.to_dict(), provenance={"experiment": "experiments.pretrain_lm"})
    (workdir / "config.json").write_text(json.dumps(saved))
    monkeypatch.setattr(checkpoint, "load_params", lambda path: (config.to_dict(), {}))
    return workdir, re.escape(str(workdir / "tokenizer.json"))


def test_load_tokenizer_loads_or_names_the_missing_file(tmp_path, no_training):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "tokenizer.json"))):
        text.load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        text.load_tokenizer(tmp_path / "missing.json")
    tok = train_bpe(["hello world"] * 5, 270)
    tok.save(tmp_path / "tokenizer.json")
    assert text.load_tokenizer(tmp_path).to_str() == tok.to_str()


def test_a_run_with_checkpoints_is_never_given_a_new_tokenizer(tmp_path, monkeypatch,
                                                               no_training):
    workdir, missing = trained_run(tmp_path, monkeypatch)
    config = gpt_configs.get_config("tiny")
    with pytest.raises(FileNotFoundError, match=missing):
        text.workdir_tokenizer(config.data, workdir)


def test_generate_and_load_lm_name_the_missing_tokenizer(tmp_path, monkeypatch, no_training):
    from experiments import generate, pretrain_lm
    workdir, missing = trained_run(tmp_path, monkeypatch)
    for load in (pretrain_lm.load_lm, generate.load_model):
        with pytest.raises(FileNotFoundError, match=missing):
            load(workdir)


def test_evaluate_names_the_missing_tokenizer(tmp_path, monkeypatch, no_training):
    from experiments import evaluate
    workdir, missing = trained_run(tmp_path, monkeypatch)
    with pytest.raises(FileNotFoundError, match=missing):
        evaluate.evaluate(workdir)


def test_finetuning_from_a_run_without_its_tokenizer_names_it(tmp_path, monkeypatch,
                                                               no_training):
    from experiments import finetune_gpt
    from experiments.configs import gpt1
    workdir, missing = trained_run(tmp_path, monkeypatch)
    config = gpt1.get_config("finetune")
    config.init_from = str(workdir)
    with pytest.raises(FileNotFoundError, match=missing):
        finetune_gpt.decoder_and_tokenizer(config, tmp_path / "finetune")


def test_loading_only_refuses_to_train(tmp_path, monkeypatch):
    with tokenizer.loading_only(tmp_path / "tokenizer.json"):
        with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "tokenizer.json"))):
            tokenizer.train_bpe(["hello world"] * 5, 270)
    assert tokenizer.train_bpe(["hello world"] * 5, 270).vocab_size >= 257   # outside it: trains


def test_a_run_started_from_another_takes_its_tokenizer(tmp_path, monkeypatch, no_training):
    """pretrain_lm with init_from: the weights come with their tokenizer, loaded, never a new
    one trained on config.data (which would not match their embedding)."""
    from experiments import pretrain_lm
    source = tmp_path / "source"
    source.mkdir()
    tok = train_bpe(["hello world"] * 5, 270)
    tok.save(source / "tokenizer.json")
    config = gpt_configs.get_config("tiny")
    config.init_from = str(source)
    monkeypatch.setattr(pretrain_lm, "lm_data", lambda config, tokenizer: (None, {}))
    run = pretrain_lm.setup(config, tmp_path / "run")
    run["artifacts"]["tokenizer.json"](tmp_path / "written.json")
    assert (tmp_path / "written.json").read_text() == (source / "tokenizer.json").read_text()
    (source / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(source / "tokenizer.json"))):
        pretrain_lm.setup(config, tmp_path / "run")
