"""Checkpoint averaging (Vaswani et al. 2017, section 6.1): the leafwise mean of known trees, and
`experiments.evaluate --average_last=N` on a tiny translation run with several checkpoints."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from experiments import evaluate, translate
from test_translate import tiny_config
from train.checkpoint import average_newest, mean_tree, read_step


# ----------------------------------------------------------------------------- mean_tree

def test_mean_of_known_trees_keeps_dtypes_and_the_first_counter():
    trees = [{"w": np.array([1.0, 2.0], np.float32), "b": jnp.array([1.0], jnp.bfloat16),
              "n": {"step": np.int32(9 - i)}} for i in range(3)]
    for i, t in enumerate(trees):
        t["w"] = t["w"] * (i + 1)             # 1x, 2x, 3x: the mean is 2x
        t["b"] = t["b"] + jnp.bfloat16(2 * i)   # 1, 3, 5: the mean is 3
    mean = mean_tree(iter(trees))             # read one at a time, as from checkpoints
    np.testing.assert_array_equal(mean["w"], [2.0, 4.0])
    assert mean["w"].dtype == np.float32
    assert mean["b"].dtype == jnp.bfloat16 and float(mean["b"][0]) == 3.0
    assert mean["n"]["step"] == 9 and mean["n"]["step"].dtype == np.int32   # not averaged
    # summed in float32: in bfloat16 256 + 1 rounds back to 256 and the mean would be 64.5
    small = [jnp.array(v, jnp.bfloat16) for v in (256.0, 1.0, 1.0, 2.0)]
    assert float(mean_tree(small)) == 65.0


def test_mean_tree_refuses_trees_of_different_structure():
    with pytest.raises(ValueError, match="tree 2 of those averaged does not have the first"):
        mean_tree([{"a": np.zeros(2)}, {"b": np.zeros(2)}])
    with pytest.raises(ValueError, match="no trees to average"):
        mean_tree([])


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny translation run with checkpoints at steps 1, 2, 3 and 4."""
    tmp = tmp_path_factory.mktemp("avg")
    config, workdir = tiny_config(tmp), tmp / "run"
    config.train.update(ckpt_every=1, keep_ckpts=4)
    translate.main(config, str(workdir))
    saved = json.loads((workdir / "config.json").read_text())   # run in-process, not as -m
    saved["provenance"]["experiment"] = "experiments.translate"
    (workdir / "config.json").write_text(json.dumps(saved))
    return workdir


@pytest.fixture
def parsed():
    yield lambda *argv: flags.FLAGS(["evaluate", *argv])
    flags.FLAGS.unparse_flags()


def host_params(state) -> dict:
    return jax.device_get(state.params)


def test_evaluate_average_last_prints_bleu_and_evaluates_the_mean(run, parsed, monkeypatch,
                                                                  capsys):
    used = []
    averaged_state = evaluate.averaged_state

    def spy(*args):
        state, info = averaged_state(*args)
        used.append(host_params(state))
        return state, info
    monkeypatch.setattr(evaluate, "averaged_state", spy)
    parsed(f"--workdir={run}", "--average_last=3")
    evaluate.main(["evaluate"])
    (result,) = map(json.loads, capsys.readouterr().out.splitlines())
    assert result["averaged_steps"] == [2, 3, 4] and result["step"] == 4
    assert 0.0 <= result["bleu"] <= 100.0 and result["split"] == "test"
    assert json.loads((run / "evaluate-test-avg3-4.json").read_text()) == result

    saved = [read_step(run / "checkpoints", s)["params"] for s in (2, 3, 4)]
    want = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *saved)
    (got,) = used
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w, last in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(saved[2])):
        assert g.dtype == last.dtype
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(w, last) for w, last in
               zip(jax.tree.leaves(want), jax.tree.leaves(saved[2])))   # the mean is not step 4

    newest = evaluate.evaluate(run, average_last=1)   # today's behaviour: step 4 alone
    assert "averaged_steps" not in newest and newest["step"] == 4
    assert newest["nll"] != pytest.approx(result["nll"], rel=1e-4)   # the mean was evaluated


def test_average_skips_damaged_steps_and_counts_intact_ones(run, tmp_path, capsys):
    directory = tmp_path / "checkpoints"
    shutil.copytree(run / "checkpoints", directory)
    victim = next(p for p in sorted((directory / "3").rglob("*")) if p.is_file()
                  and p.name != "manifest.json" and p.stat().st_size > 0)
    victim.write_bytes(b"x" + victim.read_bytes()[1:])
    steps, mean = average_newest(directory, 3)
    assert steps == [4, 2, 1]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("damaged checkpoints left out of the average in")
    assert f"3 ({victim.relative_to(directory / '3').as_posix()} does not match" in err[0]
    saved = [read_step(directory, s)["params"] for s in steps]
    for m, *xs in zip(jax.tree.leaves(mean), *map(jax.tree.leaves, saved)):
        np.testing.assert_allclose(m, np.mean(xs, axis=0), rtol=1e-6, atol=1e-7)

    with pytest.raises(ValueError, match=r"cannot average the last 4 checkpoints: .* holds 3 "
                                         r"intact one\(s\): steps 4, 2, 1$"):
        average_newest(directory, 4)
    with pytest.raises(ValueError, match="at least 1, got 0"):
        average_newest(directory, 0)


def test_negative_average_last_is_one_line_error(run, parsed):
    with pytest.raises(ValueError, match=r"^--average_last must be 0 or more, got -1$"):
        evaluate.evaluate(run, average_last=-1)
    with pytest.raises(flags.IllegalFlagValueError, match="average_last"):
        parsed(f"--workdir={run}", "--average_last=-1")
