"""Optimiser, learning-rate schedule, weight-decay and learning-rate multipliers, and freezing,
all from `config.train`.

    optimizer   adamw (decoupled decay, Loshchilov & Hutter) | adam (the Transformer's Adam,
                b1 0.9, b2 0.98, eps 1e-9; decay as an L2 term in the gradient) | sgd (momentum,
                nesterov; decay as an L2 term, as the ConvNet papers train)
    schedule    constant | cosine | linear | step (lr * factor^k after the k-th boundary: the
                ConvNet papers' divide-by-10) | rsqrt (linear warmup to lr, then lr *
                sqrt(warmup / step)) | noam (Vaswani et al. eq. 3, the rsqrt schedule whose peak is
                lr * noam_width^-0.5 * warmup^-0.5); each with linear warmup
    warmup      `warmup_steps`, or `warmup_fraction` of train.steps (one of the two, not both);
                longer than the run it is cut to steps - 1, with a line saying so
    boundaries  step: `step_boundaries` in steps, or `step_fractions` of train.steps (one of
                the two): fractions follow a --config.train.steps override
    wd_mults    ((regex, multiplier), ...): the first regex that fully matches a parameter's
                path ('h_0/attn/qkv/kernel') sets its decay multiplier; unmatched parameters are
                decayed when they are matrices, kernels or embeddings (two or more dimensions,
                W_i and W_t included), not when they are biases or norm gains (Flax's `bias`
                and `scale`, of any shape) or vectors and scalars
    lr_mults    the same for learning-rate multipliers (default 1)
    freeze      a regex fully matched against each parameter's path: those parameters take no
                gradient, hold no optimiser state and stay bitwise unchanged

Frozen parameters are split off before the optimiser sees the tree (`split_frozen`), so its
state, the gradient norm and the non-finite guard cover only what trains.
"""

import math
import re
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "linear", "step", "rsqrt", "noam")


# ----------------------------------------------------------------------------- paths

def path_name(path) -> str:
    """('h_0', 'attn', 'kernel') -> 'h_0/attn/kernel' (jax key paths or plain tuples)."""
    return "/".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path)


def compile_regex(pattern: str, what: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{what} {pattern!r} is not a valid regular expression: {e}") from e


def flat(tree) -> dict[str, Any]:
    """{'a/b/kernel': leaf} of a nested dict of parameters."""
    return {"/".join(k): v for k, v in flatten_dict(tree).items()} if tree else {}


def nest(flat_tree: dict[str, Any]) -> dict:
    return unflatten_dict({tuple(k.split("/")): v for k, v in flat_tree.items()})


def split_frozen(params, pattern: str) -> tuple[dict, dict]:
    """(trainable, frozen): two nested dicts that together hold every leaf of `params`."""
    if not pattern:
        return params, {}
    regex = compile_regex(pattern, "train.freeze")
    leaves = flat(params)
    frozen = {k: v for k, v in leaves.items() if regex.fullmatch(k)}
    trainable = {k: v for k, v in leaves.items() if k not in frozen}
    return nest(trainable), nest(frozen)


def merge(*trees) -> dict:
    """The union of nested dicts with disjoint leaves."""
    out = {}
    for t in trees:
        out.update(flat(t))
    return nest(out)


def frozen_state_mask(model_state, frozen_params, pattern: str) -> dict[str, bool]:
    """Which model_state leaves (BatchNorm running statistics, ...) stay fixed: those of the
    modules whose parameters are frozen, and those the freeze regex matches itself. Paths are
    taken without the collection name ('batch_stats/bn1/mean' -> 'bn1/mean')."""
    if not pattern:
        return {}
    regex = compile_regex(pattern, "train.freeze")
    modules = {k.rsplit("/", 1)[0] for k in flat(frozen_params)}
    mask = {}
    for k in flat(model_state):
        inner = k.split("/", 1)[1] if "/" in k else k
        mask[k] = bool(regex.fullmatch(inner)) or inner.rsplit("/", 1)[0] in modules
    return mask


# ----------------------------------------------------------------------------- multipliers

def _multipliers(params, rules, default) -> dict:
    compiled = [(compile_regex(r, "multiplier regex"), float(m)) for r, m in rules]

    def mult(path, leaf):
        name = path_name(path)
        for regex, m in compiled:
            if regex.fullmatch(name):
                return m
        return default(name, leaf)
    return jax.tree_util.tree_map_with_path(mult, params)


def wd_multipliers(params, rules=()) -> dict:
    """Per-parameter weight-decay multipliers (see the module docstring)."""
    def default(path, leaf):
        return 0.0 if path.endswith(("bias", "scale")) or len(leaf.shape) < 2 else 1.0
    return _multipliers(params, rules, default)


def lr_multipliers(params, rules=()) -> dict:
    return _multipliers(params, rules, lambda name, leaf: 1.0)


def _rules(value) -> tuple:
    """Config lists of (regex, multiplier); a string 'regex=mult,regex=mult' is accepted too."""
    if isinstance(value, str):
        value = [item.rsplit("=", 1) for item in value.split(",") if item.strip()]
    rules = tuple(tuple(r) for r in value or ())
    for r in rules:
        if len(r) != 2:
            raise ValueError(f"multiplier rule {r!r} is not a (regex, multiplier) pair")
    return rules


class _Empty(NamedTuple):
    pass


def scale_by_tree(mults) -> optax.GradientTransformation:
    """updates * m, one multiplier per parameter (learning-rate multipliers)."""
    return optax.GradientTransformation(
        lambda params: _Empty(),
        lambda updates, state, params=None: (
            jax.tree.map(lambda u, m: u if m == 1.0 else u * m, updates, mults), state))


def add_decay(weight_decay: float, mults) -> optax.GradientTransformation:
    """updates + weight_decay * m * params: decoupled after Adam's scaling (AdamW), or an L2
    term in the gradient when placed first (Adam, SGD)."""
    def update(updates, state, params=None):
        if params is None:
            raise ValueError("weight decay needs the parameters")
        return jax.tree.map(lambda u, p, m: u if m == 0.0 else u + weight_decay * m * p,
                            updates, params, mults), state
    return optax.GradientTransformation(lambda params: _Empty(), update)


# ----------------------------------------------------------------------------- schedules

def noam_schedule(d_model: int, warmup: int, scale: float = 1.0) -> optax.Schedule:
    """Vaswani et al. eq. (3): lr = d^-0.5 * min(step^-0.5, step * warmup^-1.5), step from 1."""
    return rsqrt_schedule(scale * d_model ** -0.5 * warmup ** -0.5, warmup)


def rsqrt_schedule(peak: float, warmup: int) -> optax.Schedule:
    """Linear warmup to `peak` at step = warmup, then peak * sqrt(warmup / step) (step from 1)."""
    warmup = max(int(warmup), 1)
    warm = lambda count: peak * (count + 1) / warmup                   # noqa: E731
    # join_schedules restarts the count at the boundary: step (from 1) = count + warmup + 1.
    decay = lambda count: peak * jnp.sqrt(warmup / (count + warmup + 1))  # noqa: E731
    return optax.join_schedules([warm, decay], boundaries=[warmup])


def _with_warmup(t, after: optax.Schedule, warmup: int) -> optax.Schedule:
    if warmup <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, t.lr, warmup), after], [warmup])


def warmup_steps(t) -> int:
    """The warmup in steps: warmup_steps, or warmup_fraction of the run."""
    if t.get("warmup_fraction", 0.0) and t.warmup_steps:
        raise ValueError(f"train.warmup_steps ({t.warmup_steps}) and train.warmup_fraction "
                         f"({t.warmup_fraction}) both set; set one of them to 0")
    fraction = t.get("warmup_fraction", 0.0)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"train.warmup_fraction must lie in [0, 1), got {fraction}")
    return int(round(fraction * t.steps)) if fraction else int(t.warmup_steps)


def step_boundaries(t) -> list[int]:
    """The step schedule's boundaries in steps: step_boundaries, or step_fractions of the run."""
    fractions = tuple(t.get("step_fractions", ()))
    if fractions and t.step_boundaries:
        raise ValueError(f"train.step_boundaries {tuple(t.step_boundaries)} and "
                         f"train.step_fractions {fractions} both set; empty one of them")
    if any(not 0.0 < f < 1.0 for f in fractions):
        raise ValueError(f"train.step_fractions {fractions} must lie in (0, 1)")
    return [int(round(f * t.steps)) for f in fractions] or [int(b) for b in t.step_boundaries]


def _clamped_warmup(t) -> int:
    """Warmup longer than the run would never reach the peak: cut to steps - 1, and say so."""
    warmup = warmup_steps(t)
    cut = min(warmup, max(int(t.steps) - 1, 0))
    if cut < warmup and jax.process_index() == 0:
        print(f"train: warmup of {warmup} steps is longer than the run's {t.steps} steps; "
              f"cut to {cut}", file=sys.stderr)
    return cut


def make_schedule(t) -> optax.Schedule:
    kind = t.schedule
    if kind in ("rsqrt", "noam"):   # no end: the warmup sets the peak and may outlast the run
        warmup = warmup_steps(t)
    else:
        warmup = _clamped_warmup(t)
    rest = max(int(t.steps) - warmup, 1)
    end = t.lr * t.min_lr_ratio
    if kind == "constant":
        return _with_warmup(t, optax.constant_schedule(t.lr), warmup)
    if kind == "cosine":
        return _with_warmup(t, optax.cosine_decay_schedule(t.lr, rest, alpha=t.min_lr_ratio),
                            warmup)
    if kind == "linear":
        return _with_warmup(t, optax.linear_schedule(t.lr, end, rest), warmup)
    if kind == "step":
        bounds = step_boundaries(t)
        if sorted(bounds) != bounds or any(b <= warmup for b in bounds):
            raise ValueError(f"train.step_boundaries {tuple(bounds)} must increase and lie "
                             f"after the {warmup} warmup steps")
        scales: dict[int, float] = {}
        for b in bounds:   # fractions of a short run may round onto the same step
            scales[b - warmup] = scales.get(b - warmup, 1.0) * t.step_factor
        after = optax.piecewise_constant_schedule(t.lr, scales)
        return _with_warmup(t, after, warmup)
    if kind == "rsqrt":
        return rsqrt_schedule(t.lr, warmup)
    if kind == "noam":
        if t.noam_width <= 0:
            raise ValueError("the noam schedule needs train.noam_width, the model width "
                             "d_model of Vaswani et al. eq. (3)")
        return noam_schedule(t.noam_width, warmup, scale=t.lr)
    raise ValueError(f"unknown train.schedule {kind!r}; choose from {SCHEDULES}")


# ----------------------------------------------------------------------------- optimiser

def validate(t) -> None:
    """Fail on an impossible optimiser or schedule before anything is compiled."""
    if t.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown train.optimizer {t.optimizer!r}; choose from {OPTIMIZERS}")
    if t.schedule not in SCHEDULES:
        raise ValueError(f"unknown train.schedule {t.schedule!r}; choose from {SCHEDULES}")
    if not (math.isfinite(t.lr) and t.lr >= 0):
        raise ValueError(f"train.lr must be a finite number >= 0, got {t.lr}")
    if t.freeze:
        compile_regex(t.freeze, "train.freeze")
    _rules(t.wd_mults)
    _rules(t.lr_mults)


def make_optimizer(t, params) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimiser for the (trainable) parameters `params` (shapes are enough)."""
    validate(t)
    schedule = make_schedule(t)
    wd = wd_multipliers(params, _rules(t.wd_mults))
    lr = lr_multipliers(params, _rules(t.lr_mults))
    parts = []
    if t.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(t.grad_clip))
    if t.optimizer == "adamw":
        parts += [optax.scale_by_adam(b1=t.b1, b2=t.b2, eps=t.eps)]
        if t.weight_decay:
            parts.append(add_decay(t.weight_decay, wd))
    else:
        if t.weight_decay:
            parts.append(add_decay(t.weight_decay, wd))
        if t.optimizer == "adam":
            parts.append(optax.scale_by_adam(b1=t.b1, b2=t.b2, eps=t.eps))
        elif t.momentum:
            parts.append(optax.trace(decay=t.momentum, nesterov=t.nesterov))
    parts += [optax.scale_by_learning_rate(schedule), scale_by_tree(lr)]
    return optax.chain(*parts), schedule
