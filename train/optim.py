"""Optimisers and learning-rate schedules, assembled from optax parts."""

import re

import jax
import jax.numpy as jnp
import optax
from flax.traverse_util import path_aware_map

# Weight matrices and embeddings (the ViT class token, CLIP's projections W_i and W_t too); biases,
# LayerNorm scales and offsets and scalars (CLIP's temperature) are not decayed.
DECAYED = ("kernel", "embedding", "class_embedding", "W_i", "W_t")


def noam_schedule(d_model: int, warmup: int, scale: float = 1.0) -> optax.Schedule:
    """Vaswani et al. eq. (3): lr = d^-0.5 * min(step^-0.5, step * warmup^-1.5), step from 1.

    A linear warmup joined to an inverse-square-root decay at step = warmup."""
    peak = scale * d_model ** -0.5 * warmup ** -0.5
    warm = lambda count: peak * (count + 1) / warmup                   # noqa: E731
    decay = lambda count: peak * jnp.sqrt(warmup / (count + warmup))  # noqa: E731
    return optax.join_schedules([warm, decay], boundaries=[warmup - 1])


def make_schedule(train_cfg, d_model: int = 0) -> optax.Schedule:
    kind = train_cfg.schedule
    if kind == "noam":
        if d_model <= 0:
            raise ValueError("the noam schedule needs the model width d_model")
        return noam_schedule(d_model, train_cfg.warmup_steps, scale=train_cfg.lr)
    if kind == "cosine":
        warmup = min(train_cfg.warmup_steps, max(train_cfg.steps - 1, 0))
        return optax.warmup_cosine_decay_schedule(
            0.0, train_cfg.lr, warmup_steps=warmup, decay_steps=max(train_cfg.steps, warmup + 1),
            end_value=train_cfg.lr * train_cfg.min_lr_ratio)
    if kind == "constant":
        return optax.constant_schedule(train_cfg.lr)
    raise ValueError(f"unknown schedule {kind!r}; choose cosine, noam or constant")


def _path_name(path) -> str:
    return "/".join(str(p) for p in path)


def decay_mask(params):
    return path_aware_map(lambda path, _: path[-1] in DECAYED, params)


def frozen_mask(params, pattern: str):
    """True for parameters whose path ('h_0/attn/qkv/kernel') matches the regex `pattern`."""
    regex = re.compile(pattern)
    return path_aware_map(lambda path, _: bool(regex.search(_path_name(path))), params)


def make_optimizer(train_cfg, d_model: int = 0) -> tuple[optax.GradientTransformation,
                                                         optax.Schedule]:
    """AdamW with global-norm clipping; parameters matching train_cfg.freeze get no update."""
    schedule = make_schedule(train_cfg, d_model)
    parts = []
    if train_cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(train_cfg.grad_clip))
    parts.append(optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps,
                             weight_decay=train_cfg.weight_decay, mask=decay_mask))
    tx = optax.chain(*parts)
    if train_cfg.freeze:
        pattern = train_cfg.freeze
        tx = optax.multi_transform(
            {"train": tx, "frozen": optax.set_to_zero()},
            lambda params: jax.tree.map(lambda f: "frozen" if f else "train",
                                        frozen_mask(params, pattern)))
    return tx, schedule
