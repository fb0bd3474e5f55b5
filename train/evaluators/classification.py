"""The loss (and whatever the loss function reports) and classification accuracy, over a split."""

import jax
import jax.numpy as jnp
import numpy as np

from train import sharding
from train.evaluators.base import Evaluator, register
from train.objectives import true_class_rank


def global_batch(batch: dict, program) -> dict:
    return sharding.global_batch(batch, program.batch_sharding)


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


CROPS = (1, 10)


def average_probabilities(logits):
    """[members, n, classes] logits -> [n, classes]: the mean of the members' softmax
    probabilities (the averaging of an ensemble, and of AlexNet's ten patches)."""
    return jnp.mean(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1), axis=0)


@register("accuracy")
class Accuracy(Evaluator):
    """Top-k accuracy of predict_fn's logits [batch, classes] against batch["labels"], weighted
    by batch["weights"] (0 on padding rows). Logs `accuracy` (top-1) and `top{k}` for each k of
    `topk` below the number of classes. `pp`: evaluation views of each image (e.g.
    "ten_crop(32)", parsed by the experiment's `eval_views` function, data/augment.py's
    parse_eval for the image experiments), each image scored by the averaged softmax of its k views,
    the names logged with `_{k}crop` appended when k > 1; crops=10 is pp "ten_crop(crop_size)"
    (AlexNet's ten patches)."""

    defaults = dict(topk=(1,), crops=1, crop_size=0, pp="")

    def __init__(self, *args):
        super().__init__(*args)
        if self.ctx.predict_fn is None:
            raise ValueError(f"evaluator {self.name!r} (accuracy) needs the experiment's "
                             f"predict_fn")
        if self.cfg.crops not in CROPS or (self.cfg.crops == 10 and self.cfg.crop_size <= 0):
            raise ValueError(f"evaluator {self.name!r}: crops must be 1 or 10 (10 with "
                             f"crop_size > 0), got crops={self.cfg.crops}, "
                             f"crop_size={self.cfg.crop_size}")
        pp = self.cfg.get("pp", "")
        if self.cfg.crops == 10 and pp:
            raise ValueError(f"evaluator {self.name!r}: set pp or crops=10, not both")
        pp = f"ten_crop({self.cfg.crop_size})" if self.cfg.crops == 10 else pp
        if pp and "eval_views" not in self.ctx.fns:
            raise ValueError(f"evaluator {self.name!r}: pp {pp!r} needs evaluation views, which "
                             f"this experiment does not provide")
        views = self.ctx.fns["eval_views"](pp) if pp else None
        ks = tuple(int(k) for k in self.cfg.topk)
        predict, program = sharding.with_logical_rules(self.ctx.predict_fn), self.ctx.program
        self.views = views.count if views else 1

        def scores(state, batch):
            if views is None:
                return predict(state.params, state.model_state, batch)
            patches = views(batch["images"])
            flat = patches.reshape(-1, *patches.shape[2:])   # eval mode: rows independent
            logits = predict(state.params, state.model_state, {**batch, "images": flat})
            return average_probabilities(logits.reshape(patches.shape[0], -1,
                                                        logits.shape[-1]))

        def counts(state, batch):
            logits = scores(state, batch)
            w = batch.get("weights", jnp.ones(logits.shape[0], jnp.float32)).astype(jnp.float32)
            rank = true_class_rank(logits, batch["labels"])
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
        suffix = f"_{self.views}crop" if self.views > 1 else ""
        return {k + suffix: v for k, v in out.items()}


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
