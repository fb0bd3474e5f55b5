"""CLIP's two evaluations (Radford et al. 2021, section 3), as evaluators.

zeroshot: each class is described by prompts ("a photo of the number {x}."); the classifier's
weights are the text embeddings of those prompts, and an image gets the class whose embedding
is most similar to its own. Prompt ensembling (section 3.1.4) averages the normalised embeddings
of a class's prompts and normalises again, building the ensemble in embedding space. A model
trained with a predictive objective (figure 2's bag of words or caption model) scores each
prompt by its log-likelihood given the image instead; its ensemble averages the prompts'
log-likelihoods.

linear_probe (section 3.2): L2-regularised logistic regression on frozen image features
(standardised with the train split's statistics), C = 1 / lambda chosen on a validation split,
accuracy on the test split. Fitted on device by L-BFGS along the path of Cs from the strongest
regularisation to the weakest, each fit warm-started from the previous one.

The experiment provides (Context.fns): `tasks` (names, the first one logged without prefix),
`labelled(task, split, n) -> (images, labels)`, `image_embeds(variables, images)` (I_e),
`image_features(variables, images)` (I_f), `text_embeds(variables, tokens)` (T_e) and
`prompt_tokens(task) -> [classes, prompts, context]`; for a predictive objective
(`objective` not "contrastive"), `log_likelihood(variables, images, tokens) -> [n, m]` in place
of the two embeddings.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from train.evaluators.base import Evaluator, register
from train.evaluators.classification import labelled_in_batches
from train.objectives import accuracy


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def zeroshot_top1(image_embeds: np.ndarray, class_weights: np.ndarray, labels) -> float:
    """Top-1 accuracy of argmax_c <I_e, W_c> (ties and non-finite scores are wrong)."""
    return float(accuracy(image_embeds @ class_weights.T, np.asarray(labels)))


class _CLIPEvaluator(Evaluator):
    defaults = dict(images=500, batch_size=512, seed=1234)

    def __init__(self, *args):
        super().__init__(*args)
        program = self.ctx.program
        dp = program.batch_sharding.mesh.size // program.mesh.shape["tensor"]
        self.batch_size = -(-int(self.cfg.batch_size) // dp) * dp
        repl = jax.sharding.NamedSharding(program.mesh, jax.sharding.PartitionSpec())
        self._jit = {}
        states = (program.state_shardings.params, program.state_shardings.model_state)
        for name in ("image_embeds", "image_features", "text_embeds", "log_likelihood"):
            if name not in self.ctx.fns:
                continue
            fn = self.ctx.fns[name]
            # variables: the parameters and the model state (a ResNet tower's BatchNorm);
            # log_likelihood's texts (its last argument) go to every device whole.
            self._jit[name] = jax.jit(
                lambda params, model_state, x, *texts, fn=fn: fn(
                    {"params": params, **model_state}, x, *texts),
                in_shardings=(*states, program.batch_sharding,
                              *([repl] if name == "log_likelihood" else [])),
                out_shardings=repl)

    def embed(self, name, state, x, *texts):
        fn = lambda batch: self._jit[name](state.params, state.model_state, batch,  # noqa: E731
                                           *texts)
        return labelled_in_batches(fn, self.ctx.program, x, self.batch_size)

    def tasks(self):
        return list(self.ctx.fns["tasks"])

    def prefix(self, i, task, key):
        return key if i == 0 else f"{task}/{key}"


@register("zeroshot")
class ZeroShot(_CLIPEvaluator):
    """zeroshot_top1 (prompt ensemble), zeroshot_top1_single_prompt (the first prompt alone)
    and zeroshot_top1_prompt_mean (any one prompt, on average), per task."""

    def run(self, state):
        out = {}
        for i, task in enumerate(self.tasks()):
            x, labels = self.ctx.fns["labelled"](task, self.split, int(self.cfg.images))
            tokens = np.asarray(self.ctx.fns["prompt_tokens"](task))
            scores, ensemble = self.class_scores(state, x, tokens)
            single = [float(accuracy(scores[:, :, j], labels)) for j in range(scores.shape[2])]
            r = {"zeroshot_top1": float(accuracy(ensemble, np.asarray(labels))),
                 "zeroshot_top1_single_prompt": single[0],
                 "zeroshot_top1_prompt_mean": float(np.mean(single))}
            out.update({self.prefix(i, task, k): v for k, v in r.items()})
        return out

    def class_scores(self, state, x, tokens):
        """(scores [n, classes, prompts] of each prompt alone, [n, classes] of the ensemble):
        <I_e, T_e> and the re-normalised mean of a class's prompt embeddings (contrastive), or
        each prompt's log-likelihood given the image and their mean (a predictive objective)."""
        flat = tokens.reshape(-1, tokens.shape[-1])
        if "log_likelihood" in self._jit:
            scores = self.embed("log_likelihood", state, x, flat).reshape(
                len(x), *tokens.shape[:2])
            return scores, scores.mean(axis=2)
        i_e = self.embed("image_embeds", state, x)
        t_e = self.embed("text_embeds", state, flat).reshape(*tokens.shape[:2], -1)
        return np.einsum("nd,cpd->ncp", i_e, t_e), i_e @ _normalize(t_e.mean(axis=1)).T


def probe_path(train, val, test, Cs, num_classes: int, iters: int = 100):
    """(val accuracies, test accuracies) of the probe for each C of Cs (ascending), fitted with
    warm starts. sklearn's objective C * sum(nll) + ||W||^2 / 2, divided by C n. Compiled once
    per shape: a sweep of probes of the same sizes (the evaluator's every evaluation, the
    K-shot draws) reuses it."""
    (x, y), (xv, yv), (xt, yt) = train, val, test
    mean, std = x.mean(0), x.std(0) + 1e-8
    x, xv, xt = ((a - mean) / std for a in (x, xv, xt))
    lams = jnp.asarray([1.0 / (c * len(x)) for c in Cs], jnp.float32)
    val_acc, test_acc = _probe_path(x, y, xv, yv, xt, yt, lams, num_classes, iters)
    return np.asarray(val_acc), np.asarray(test_acc)


@functools.partial(jax.jit, static_argnums=(7, 8))
def _probe_path(x, y, xv, yv, xt, yt, lams, num_classes: int, iters: int):
    def loss(w, lam):
        logits = x @ w["W"] + w["b"]
        nll = jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
            logits, y[:, None], -1)[:, 0])
        return nll + 0.5 * lam * jnp.sum(w["W"] ** 2)

    def probe_accuracy(w, a, labels):
        return accuracy(a @ w["W"] + w["b"], labels)

    solver = optax.lbfgs()

    def fit(w, lam):
        f = lambda w: loss(w, lam)   # noqa: E731
        value_and_grad = optax.value_and_grad_from_state(f)

        def body(carry, _):
            w, s = carry
            value, grad = value_and_grad(w, state=s)
            updates, s = solver.update(grad, s, w, value=value, grad=grad, value_fn=f)
            return (optax.apply_updates(w, updates), s), None
        (w, _), _ = jax.lax.scan(body, (w, solver.init(w)), None, length=iters)
        return w, (probe_accuracy(w, xv, yv), probe_accuracy(w, xt, yt))

    w0 = {"W": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
    return jax.lax.scan(fit, w0, lams)[1]


@register("linear_probe")
class LinearProbe(_CLIPEvaluator):
    """linear_probe_top1 (test accuracy at the C chosen on val), linear_probe_val_top1 and
    linear_probe_C, per task."""

    defaults = dict(images=1000, batch_size=512, seed=1234, train_images=3000,
                    val_images=500, Cs=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
                    iters=100)

    def run(self, state):
        out = {}
        c = self.cfg
        for i, task in enumerate(self.tasks()):
            sets = []
            for split, n in (("train", c.train_images), ("val", c.val_images),
                             ("test", c.images)):
                x, labels = self.ctx.fns["labelled"](task, split, int(n))
                feats = self.embed("image_features", state, x).astype(np.float32)
                sets.append((jnp.asarray(feats), jnp.asarray(labels, jnp.int32)))
            num_classes = int(max(int(s[1].max()) for s in sets)) + 1
            Cs = sorted(float(v) for v in c.Cs)
            val_acc, test_acc = probe_path(*sets, Cs, num_classes, int(c.iters))
            best = int(np.argmax(val_acc))   # the first (most regularised) of equals
            r = {"linear_probe_top1": float(test_acc[best]),
                 "linear_probe_val_top1": float(val_acc[best]), "linear_probe_C": Cs[best]}
            out.update({self.prefix(i, task, k): v for k, v in r.items()})
        return out
