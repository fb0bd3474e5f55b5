"""The loss (and whatever the loss function reports) and classification accuracy, over a split."""

import jax
import jax.numpy as jnp
import numpy as np

from train.evaluators import Evaluator, register


def global_batch(batch: dict, program) -> dict:
    from train.trainer import global_batch as put
    return put(batch, program.batch_sharding)


@register("loss")
class Loss(Evaluator):
    """Means over the examples (tokens, with per-token weights) of the loss function's loss and
    metrics; padding rows (weight 0) count for nothing."""

    def run(self, state):
        program, sums, total = self.ctx.program, {}, 0.0
        for batch in self.batches():
            m = jax.device_get(program.eval_step(state, global_batch(batch, program)))
            n = float(m.pop("n"))
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            total += n
        return {k: v / total for k, v in sums.items()} if total else {}


@register("accuracy")
class Accuracy(Evaluator):
    """Top-k accuracy of predict_fn's logits [batch, classes] against batch["labels"], weighted
    by batch["weights"] (0 on padding rows). Logs `accuracy` (top-1) and `top{k}` for each k of
    `topk` below the number of classes."""

    defaults = dict(topk=(1,))

    def __init__(self, *args):
        super().__init__(*args)
        if self.ctx.predict_fn is None:
            raise ValueError(f"evaluator {self.name!r} (accuracy) needs the experiment's "
                             f"predict_fn")
        ks = tuple(int(k) for k in self.cfg.topk)
        predict, program = self.ctx.predict_fn, self.ctx.program
        from train.trainer import with_logical_rules

        def counts(state, batch):
            logits = with_logical_rules(predict)(state.params, state.model_state, batch)
            w = batch.get("weights", jnp.ones(logits.shape[0], jnp.float32)).astype(jnp.float32)
            # rank of the true class's logit among all: correct at k when fewer than k beat it
            true = jnp.take_along_axis(logits, batch["labels"][:, None], axis=-1)
            rank = jnp.sum(logits > true, axis=-1)
            hits = {k: jnp.sum(w * (rank < k)) for k in ks if k <= logits.shape[-1]}
            return hits, jnp.sum(w)

        self._counts = jax.jit(counts, in_shardings=(program.state_shardings,
                                                      program.batch_sharding),
                               out_shardings=jax.sharding.NamedSharding(
                                   program.mesh, jax.sharding.PartitionSpec()))

    def run(self, state):
        hits, total = {}, 0.0
        for batch in self.batches():
            h, n = jax.device_get(self._counts(state, global_batch(batch, self.ctx.program)))
            for k, v in h.items():
                hits[k] = hits.get(k, 0.0) + float(v)
            total += float(n)
        if not total:
            return {}
        out = {"accuracy": hits[1] / total} if 1 in hits else {}
        if len(self.cfg.topk) > 1:
            out.update({f"top{k}": v / total for k, v in hits.items()})
        return out


def labelled_in_batches(fn, program, x: np.ndarray, batch_size: int):
    """fn(params_or_state, global batch) -> [rows, ...] over all of x (the same array on every
    process), each process feeding its rows of each global batch; returns the whole result,
    unpadded, on every process."""
    p, P = jax.process_index(), jax.process_count()
    local = batch_size // P
    out = []
    for start in range(0, len(x), batch_size):
        rows = np.resize(np.arange(start, min(start + batch_size, len(x))), batch_size)
        part = x[rows[p * local:(p + 1) * local]]
        y = jax.device_get(fn(global_batch({"x": part}, program)["x"]))
        out.append(np.asarray(y)[:min(batch_size, len(x) - start)])
    return np.concatenate(out)
