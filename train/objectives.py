"""Training objectives. Every loss is a mean over the examples (or tokens) that count."""

import jax
import jax.numpy as jnp
import optax


@jax.custom_vjp
def softmax_nll(logits, labels):
    """-log softmax(logits)[label] per position, in float32 whatever the logits' dtype.

    The gradient, softmax(logits) - one_hot(label), is computed from the logits as they are
    (bfloat16 under mixed precision) and returned in their dtype. Differentiating the float32
    formula instead keeps a float32 copy of every logit for the backward: 6.6 GB for GPT-2's
    50,257 tokens at 32 x 1024 positions, and a pass over it."""
    return _softmax_nll_fwd(logits, labels)[0]


def _softmax_nll_fwd(logits, labels):
    x = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(x, axis=-1)
    picked = jnp.take_along_axis(x, labels[..., None], axis=-1)[..., 0]
    return lse - picked, (logits, labels, lse)


def _softmax_nll_bwd(residuals, g):
    logits, labels, lse = residuals
    p = jnp.exp(logits.astype(jnp.float32) - lse[..., None])
    one_hot = labels[..., None] == jnp.arange(logits.shape[-1])
    return ((p - one_hot) * g[..., None]).astype(logits.dtype), None


softmax_nll.defvjp(_softmax_nll_fwd, _softmax_nll_bwd)


def cross_entropy(logits, labels, mask=None, label_smoothing: float = 0.0):
    """Mean of -log softmax(logits)[label] over positions where mask is true (float32).

    With label_smoothing eps the target is (1 - eps) one-hot + eps / K (Szegedy et al. 2016),
    as the Transformer's training uses (eps = 0.1)."""
    if label_smoothing:
        logits = logits.astype(jnp.float32)
        k = logits.shape[-1]
        targets = optax.smooth_labels(jax.nn.one_hot(labels, k), label_smoothing)
        nll = optax.softmax_cross_entropy(logits, targets)
    else:
        nll = softmax_nll(logits, labels)
    if mask is None:
        return nll.mean()
    mask = mask.astype(jnp.float32)
    return (nll * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def true_class_rank(logits, labels):
    """How many other classes score at least as high as the true one: the prediction is right
    at top-k when rank < k. Ties count against the true class, and a row with a non-finite
    score ranks last (the number of classes), so a diverged model (NaN logits) or a constant
    one is never right. The one rank rule of every accuracy and top-k."""
    logits = jnp.asarray(logits)
    true = jnp.take_along_axis(logits, jnp.asarray(labels)[..., None], axis=-1)
    rank = jnp.sum(logits >= true, axis=-1) - 1
    return jnp.where(jnp.all(jnp.isfinite(logits), axis=-1), rank, logits.shape[-1])


def accuracy(logits, labels, mask=None):
    """Top-1 accuracy (true_class_rank 0), a mean over the positions where mask is set."""
    hit = (true_class_rank(logits, labels) < 1).astype(jnp.float32)
    if mask is None:
        return hit.mean()
    mask = mask.astype(jnp.float32)
    return (hit * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def lm_loss(logits, targets, mask=None):
    """GPT-1's unsupervised objective L1(U) = -sum_i log P(u_i | u_{i-k}, ..., u_{i-1}; Theta),
    here averaged over the predicted tokens: logits [B, T, V] at position i predict targets[i]."""
    return cross_entropy(logits, targets, mask)


def clip_loss(logits):
    """CLIP's symmetric cross-entropy (figure 3), logits[i, j] = <I_e[i], T_e[j]> exp(t):

        labels = arange(n)
        loss_i = cross_entropy_loss(logits, labels, axis=0)
        loss_t = cross_entropy_loss(logits, labels, axis=1)
        loss = (loss_i + loss_t) / 2

    With labels = arange(n) the target of either softmax is the diagonal. Under jit with the
    batch sharded, logits span the global batch, so each image is contrasted with every text."""
    logits = logits.astype(jnp.float32)

    def cross_entropy_loss(axis):
        return -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=axis)))

    loss_i, loss_t = cross_entropy_loss(0), cross_entropy_loss(1)
    return (loss_i + loss_t) / 2


def bag_of_words_loss(log_probs, tokens, words):
    """CLIP figure 2's bag-of-words baseline: cross-entropy between the caption's normalised
    word counts q_w = count(w) / |caption| and the predicted P(w | I),

        loss = -mean_n sum_w q_w log P(w | I_n) = -mean_n (1/|T_n|) sum_{t in T_n} log P(T_n,t | I_n)

    log_probs [n, V]; tokens [n, T]; words [n, T] True at the caption's words (not SOT, EOT
    or padding)."""
    picked = jnp.take_along_axis(log_probs.astype(jnp.float32), tokens, axis=-1)
    words = words.astype(jnp.float32)
    return -jnp.mean(jnp.sum(picked * words, -1) / jnp.maximum(jnp.sum(words, -1), 1.0))


def caption_loss(logits, tokens, predicted):
    """CLIP figure 2's Transformer language model: -log P(T_t | T_<t, I) averaged over the
    predicted tokens (teacher forcing). logits [n, T, V] at position t predict tokens[t + 1];
    predicted [n, T] True where a token is a target (after SOT, up to EOT)."""
    return lm_loss(logits[:, :-1], tokens[:, 1:], predicted[:, 1:])


def task_lm_loss(lm_logits, tokens, lengths):
    """L1 on the task inputs themselves (GPT-1 section 3.2): every token after the first of each
    sequence, padding excluded. lm_logits [..., T, V], tokens [..., T], lengths [...]."""
    predicted = jnp.arange(1, tokens.shape[-1]) < lengths[..., None]
    return lm_loss(lm_logits[..., :-1, :], tokens[..., 1:], predicted)


def supervised_loss(logits, labels):
    """GPT-1's L2(C) = sum_(x, y) log P(y | x^1, ..., x^m), here as the mean cross-entropy."""
    return cross_entropy(logits, labels)


def auxiliary_loss(logits, labels, lm_logits, tokens, lengths, lam: float):
    """GPT-1's L3(C) = L2(C) + lambda * L1(C), L1 on the same task inputs (paper: lambda 0.5).
    Returns (L3, L2, L1)."""
    l2 = supervised_loss(logits, labels)
    l1 = task_lm_loss(lm_logits, tokens, lengths)
    return l2 + lam * l1, l2, l1
