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
