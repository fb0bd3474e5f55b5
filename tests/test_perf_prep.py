"""Changes made for speed that must not change results: the non-finite guard as a select,
the GPT vocabulary padded to a round size, the benchmark's step-time memory."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from train.trainer import TrainState, make_train_step


# ------------------------------------------------------------------ the non-finite guard

class DenseNorm(nn.Module):
    """A model with state (BatchNorm's running statistics) beside its parameters."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.BatchNorm(use_running_average=False)(x))[..., 0]


def guarded_step():
    model = DenseNorm()

    def loss_fn(params, state, batch, rng):
        y, new_state = model.apply({"params": params, **state}, batch["x"],
                                   mutable=["batch_stats"])
        loss = jnp.mean((y - batch["y"]) ** 2) * batch["scale"]
        return loss, ({}, new_state)

    variables = model.init(jax.random.key(0), jnp.zeros((1, 4)))
    params = variables.pop("params")
    tx = optax.adamw(0.1)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       model_state=variables, nonfinite_total=jnp.zeros((), jnp.int32),
                       nonfinite_run=jnp.zeros((), jnp.int32))
    step = jax.jit(make_train_step(loss_fn, tx, 1, None, seed=0, freeze="", state_mask={}))
    return step, state


def batch(x_poison=1.0, scale=1.0):
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    x[2, 1] *= x_poison
    return {"x": x, "y": x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32),
            "scale": np.float32(scale)}


def same_bits(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(leaves_a, leaves_b))


def kept(state):
    return state.params, state.opt_state, state.model_state


@pytest.mark.parametrize("bad", [dict(x_poison=np.nan), dict(scale=np.inf)],
                         ids=["nan_in_batch", "infinite_loss"])
def test_a_skipped_update_leaves_the_state_bit_identical(bad):
    step, state = guarded_step()
    state, _ = step(state, batch())          # some optimiser state that is not all zeros
    after, metrics = step(state, batch(**bad))
    assert not np.isfinite(float(metrics["loss"]))
    assert same_bits(kept(after), kept(state))
    assert int(after.step) == int(state.step) + 1
    assert int(after.nonfinite_total) == 1 and int(after.nonfinite_run) == 1


def test_a_finite_update_changes_params_optimiser_and_model_state():
    step, state = guarded_step()
    after, _ = step(state, batch())
    for old, new in zip(kept(state), kept(after)):
        assert not same_bits(old, new)
    assert int(after.nonfinite_total) == 0 and int(after.nonfinite_run) == 0


# ------------------------------------------------------------------ the padded vocabulary

def test_a_padded_vocabulary_gives_the_unpadded_models_logits_and_loss():
    from models import gpt
    small = dict(vocab_size=61, n_ctx=16, n_layer=2, n_head=2, d_model=32, dropout=0.0,
                 attn_dropout=0.0)
    cfg, padded_cfg = gpt.GPTConfig(**small), gpt.GPTConfig(**small, pad_vocab_multiple=128)
    assert padded_cfg.padded_vocab == 128 and cfg.padded_vocab == 61
    params = gpt.GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    params = jax.tree.map(np.asarray, nn.meta.unbox(params))
    extra = np.random.default_rng(1).normal(size=(128 - 61, 32)).astype(np.float32) * 5
    padded = dict(params, wte={"embedding": np.concatenate([params["wte"]["embedding"], extra])})
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 61, size=(2, 9)), jnp.int32)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    ref, logp_ref = gpt.GPT(cfg).apply({"params": params}, inputs), gpt.token_scores(
        cfg, params, inputs, targets)
    got, logp_got = gpt.GPT(padded_cfg).apply({"params": padded}, inputs), gpt.token_scores(
        padded_cfg, padded, inputs, targets)
    assert got.shape == ref.shape == (2, 8, 61)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logp_got[0], logp_ref[0], rtol=1e-5, atol=1e-5)   # the loss
    np.testing.assert_array_equal(logp_got[1], logp_ref[1])                       # argmax
    mask = np.ones(inputs.shape, bool)
    first, _ = gpt.prefill(padded_cfg, padded, inputs, mask, 12)
    np.testing.assert_allclose(first, gpt.prefill(cfg, params, inputs, mask, 12)[0],
                               rtol=1e-5, atol=1e-5)
    assert gpt.count_params(padded_cfg) - gpt.count_params(cfg) == (128 - 61) * 32
    with pytest.raises(ValueError, match="pad_vocab_multiple"):
        gpt.GPTConfig(**small, pad_vocab_multiple=-1)


def test_the_config_layer_takes_pad_vocab_multiple():
    """--config.model.pad_vocab_multiple=128 reaches GPTConfig (pretrain_lm builds it so)."""
    from experiments.configs import defaults
    from models import gpt
    cfg = gpt.GPTConfig(**defaults.gpt("gpt1", pad_vocab_multiple=128).to_dict())
    assert cfg.padded_vocab == 40576 and cfg.vocab_size == 40478
