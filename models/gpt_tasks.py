"""GPT-1 supervised fine-tuning (Radford et al. 2018, sections 3.2-3.3).

The pretrained decoder reads each input sequence; its final state at the extract token, h_l^m,
feeds one added linear layer W_y:

    P(y | x^1, ..., x^m) = softmax(h_l^m W_y)

classification / entailment: one sequence, K classes;
similarity: the states of both orderings are added before W_y;
multiple choice: W_y gives one scalar per answer sequence, and the softmax runs over answers.

The LM logits of the same pass are returned too, for the auxiliary objective L3 = L2 + lambda L1.
"""

import jax.numpy as jnp
from flax import linen as nn

from models.gpt import GPT

HEAD_INIT = nn.initializers.normal(stddev=0.02)


class TaskHead(nn.Module):
    """W_y (with a bias, as the reference implementation) on the extract states [B, S, d]."""

    kind: str
    num_classes: int
    dropout: float = 0.1   # GPT-1: dropout 0.1 on the classifier

    @nn.compact
    def __call__(self, h_m, deterministic: bool = True):
        h_m = nn.Dropout(self.dropout, deterministic=deterministic)(h_m)
        multiple_choice = self.kind == "multiple_choice"
        w_y = nn.Dense(1 if multiple_choice else self.num_classes, name="W_y",
                       kernel_init=nn.with_logical_partitioning(HEAD_INIT, ("embed", None)),
                       bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))
        if multiple_choice:
            return w_y(h_m)[..., 0]          # [B, answers]: softmax over the answers
        return w_y(h_m.sum(axis=1))          # S = 1, or similarity: h_m(a $ b) + h_m(b $ a)


class GPTForTasks(GPT):
    """The decoder (its parameters where a language model has them, so a pretrained LM's
    checkpoint loads as it is) + task head `head`: tokens [B, S, T] and lengths [B, S] (the
    extract token is at length - 1) -> (task logits [B, K], LM logits [B, S, T, V]).
    Construct it with keywords after cfg: GPTForTasks(cfg, kind=..., num_classes=...)."""

    kind: str = "classification"
    num_classes: int = 2
    head_dropout: float = 0.1

    @nn.compact
    def __call__(self, tokens, lengths, *, deterministic: bool = True):
        b, s, t = tokens.shape
        lm_logits, h = super().__call__(tokens.reshape(b * s, t), deterministic=deterministic,
                                        with_hidden=True)
        h = h.reshape(b, s, t, h.shape[-1])
        h_m = jnp.take_along_axis(h, (lengths - 1)[:, :, None, None], axis=2)[:, :, 0]
        logits = TaskHead(self.kind, self.num_classes, self.head_dropout, name="head")(
            h_m, deterministic)
        return logits, lm_logits.reshape(b, s, t, -1)
