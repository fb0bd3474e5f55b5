"""Autoregressive decoding shared by the decoder-only GPTs and the encoder-decoder Transformer.

A model takes part through its key/value cache (models/attention.py): a prefill gives the
logits of the first new token and a filled cache, then

    step(tokens [batch], cache) -> (logits [batch, vocab], cache)

feeds one chosen token per row back in. `sample` picks one token per row and step (greedy at
temperature 0, else drawn from softmax(logits / T), optionally restricted to the k most probable
tokens and to the top-p nucleus); `beam_search` keeps the beam_size most probable prefixes per
row and ranks the finished ones with a length penalty. Each is one lax.while_loop, to be run
inside jit, that stops as soon as every row is done.
"""

from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp

Step = Callable[[jax.Array, object], tuple[jax.Array, object]]


# ----------------------------------------------------------------------------- sampling
def filter_logits(logits, top_k=0, top_p=1.0):
    """-inf outside the top_k most probable tokens (top_k > 0), then outside the smallest set
    of the most probable remaining ones whose probability reaches top_p (nucleus sampling,
    Holtzman et al. 2020); the most probable token always stays. top_k and top_p may be traced,
    so one compiled loop serves every setting."""
    if isinstance(top_k, int) and top_k == 0 and isinstance(top_p, (int, float)) and top_p >= 1:
        return logits
    vocab = logits.shape[-1]
    ranked = jnp.sort(logits, axis=-1)[..., ::-1]
    rank = jnp.arange(vocab)
    in_top_k = rank < jnp.where(top_k > 0, top_k, vocab)
    probs = jax.nn.softmax(jnp.where(in_top_k, ranked, -jnp.inf), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = in_top_k & ((mass_before < top_p) | (rank == 0))
    threshold = jnp.min(jnp.where(keep, ranked, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def choose(logits, rng, temperature=0.0, top_k=0, top_p=1.0):
    """One token per row: argmax at temperature 0, else u ~ softmax(filter(logits / T)).
    A traced temperature picks between the two at run time."""
    logits = logits.astype(jnp.float32)

    def greedy(logits):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def draw(logits):
        logits = filter_logits(logits / temperature, top_k, top_p)
        return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)

    if isinstance(temperature, (int, float)):
        return greedy(logits) if temperature == 0 else draw(logits)
    return jax.lax.cond(temperature > 0, draw, greedy, logits)


def sample(logits, cache, step: Step, *, num_steps: int, rng=None, temperature=0.0, top_k=0,
           top_p=1.0, stop_tokens: Sequence[int] = (), pad_id: int = 0):
    """Up to num_steps tokens per row from the prefill's `logits` [batch, vocab] and `cache`.

    Returns tokens int32 [batch, num_steps] and lengths int32 [batch]: a row that draws one of
    stop_tokens keeps it, is done, and is padded with pad_id after it; lengths count each row's
    tokens up to and including its stop token. Step t draws with fold_in(rng, t). temperature,
    top_k, top_p and stop_tokens (an int array) may be traced."""
    batch = logits.shape[0]
    rng = jax.random.key(0) if rng is None else rng
    stops = jnp.asarray(stop_tokens, jnp.int32).reshape(-1)

    def is_stop(token):
        return jnp.any(token[:, None] == stops[None, :], axis=1)

    def cond(state):
        i, _, done, *_ = state
        return (i < num_steps) & ~jnp.all(done)

    def body(state):
        i, tokens, done, lengths, logits, cache = state
        token = choose(logits, jax.random.fold_in(rng, i), temperature, top_k, top_p)
        token = jnp.where(done, pad_id, token)
        tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, i))
        lengths = lengths + ~done
        done = done | is_stop(token)
        logits, cache = jax.lax.cond(          # no step after the last token
            i + 1 < num_steps, lambda c: as_f32(step(token, c)), lambda c: (logits, c), cache)
        return i + 1, tokens, done, lengths, logits, cache

    state = (jnp.zeros((), jnp.int32), jnp.full((batch, num_steps), pad_id, jnp.int32),
             jnp.zeros(batch, bool), jnp.zeros(batch, jnp.int32), logits.astype(jnp.float32),
             cache)
    _, tokens, _, lengths, _, _ = jax.lax.while_loop(cond, body, state)
    return tokens, lengths


def as_f32(out):
    logits, cache = out
    return logits.astype(jnp.float32), cache


def truncate_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """text up to (not including) the first occurrence of any of stop_strings: stop strings
    are matched on the host, in decoded text, since a string may span several tokens."""
    cut = min((i for i in (text.find(s) for s in stop_strings if s) if i >= 0),
              default=len(text))
    return text[:cut]


# ----------------------------------------------------------------------------- beam search
LengthPenalty = Literal["gnmt", "hf"]


def length_penalty(length, alpha: float, kind: LengthPenalty = "gnmt"):
    """GNMT (Wu et al. 2016): lp(Y) = ((5 + |Y|) / 6)^alpha; "hf": |Y|^alpha, as transformers'
    beam search. A hypothesis scores log P(Y | X) / lp(Y)."""
    length = jnp.asarray(length, jnp.float32)
    if kind == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    if kind == "hf":
        return length ** alpha
    raise ValueError(f"unknown length penalty {kind!r}; choose gnmt or hf")


def gather_beams(x, beams):
    """x [batch, n, ...] -> x[b, beams[b, j], ...]: the rows of beams [batch, m]."""
    return jnp.take_along_axis(x, beams.reshape(beams.shape + (1,) * (x.ndim - 2)), axis=1)


def map_cache(fn, cache):
    """fn over the cache's per-row arrays; the shared scalars (cache_index) are left alone."""
    return jax.tree.map(lambda x: fn(x) if x.ndim else x, cache)


def beam_search(logits, cache, step: Step, *, beam_size: int, max_len: int, eos_id: int,
                alpha: float = 0.6, penalty: LengthPenalty = "gnmt", pad_id: int = 0):
    """Beam search from the prefill's `logits` [batch, vocab] and `cache` (batch rows).

    Each step extends every live prefix by every token, keeps the beam_size most probable
    prefixes that do not end in eos_id alive and moves those that do to the finished set,
    scored log P / lp(length) (length counts the tokens generated, eos included). A row is
    done when its beam_size finished hypotheses all beat what its best live prefix could still
    reach (its log P / lp(max_len), since log P only falls and lp only grows). Prefixes still
    alive at max_len compete as they are.

    Returns sequences int32 [batch, beam_size, max_len] (eos, then pad_id) and their scores
    [batch, beam_size], best first."""
    batch, vocab = logits.shape
    k = beam_size
    if 2 * k > vocab:
        raise ValueError(f"beam_size {k} needs a vocabulary of at least {2 * k} tokens")
    if alpha < 0:
        raise ValueError(f"length penalty alpha {alpha} must be >= 0")
    lp = lambda n: length_penalty(n, alpha, penalty)  # noqa: E731
    flat = lambda x: x.reshape((batch * k,) + x.shape[2:])  # noqa: E731
    split = lambda x: x.reshape((batch, k) + x.shape[1:])   # noqa: E731
    cache = map_cache(lambda x: jnp.repeat(x, k, axis=0), cache)
    logprobs = jnp.repeat(jax.nn.log_softmax(logits.astype(jnp.float32))[:, None], k, axis=1)
    # Only the first beam is live at first, so the first top-k draws k distinct tokens.
    alive_logp = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf)[None].repeat(batch, axis=0)
    seqs = jnp.full((batch, k, max_len), pad_id, jnp.int32)

    def cond(state):
        i, _, alive_logp, _, finished_scores, _, _ = state
        best_reachable = alive_logp[:, 0] / lp(max_len)
        done = finished_scores[:, -1] >= best_reachable     # all k finished beat the best live
        return (i < max_len) & ~jnp.all(done)

    def body(state):
        i, alive_seqs, alive_logp, logprobs, finished_scores, finished_seqs, cache = state
        candidates = (alive_logp[:, :, None] + logprobs).reshape(batch, k * vocab)
        top_logp, top = jax.lax.top_k(candidates, 2 * k)    # k of them at least do not end
        parent, token = top // vocab, top % vocab
        grown = gather_beams(alive_seqs, parent)
        grown = jnp.where(jnp.arange(max_len) == i, token[:, :, None], grown)
        ended = token == eos_id

        alive_logp, keep = jax.lax.top_k(jnp.where(ended, -jnp.inf, top_logp), k)
        alive_seqs = gather_beams(grown, keep)
        new_scores = jnp.where(ended, top_logp / lp(i + 1), -jnp.inf)
        finished_scores, best = jax.lax.top_k(
            jnp.concatenate([finished_scores, new_scores], axis=1), k)
        finished_seqs = gather_beams(jnp.concatenate([finished_seqs, grown], axis=1), best)

        beams = gather_beams(parent, keep)
        cache = map_cache(lambda x: flat(gather_beams(split(x), beams)), cache)
        tokens = flat(gather_beams(token, keep))
        logits, cache = jax.lax.cond(
            i + 1 < max_len, lambda c: as_f32(step(tokens, c)),
            lambda c: (jnp.zeros((batch * k, vocab), jnp.float32), c), cache)
        logprobs = split(jax.nn.log_softmax(logits))
        return i + 1, alive_seqs, alive_logp, logprobs, finished_scores, finished_seqs, cache

    state = (jnp.zeros((), jnp.int32), seqs, alive_logp, logprobs,
             jnp.full((batch, k), -jnp.inf), seqs, cache)
    i, alive_seqs, alive_logp, _, finished_scores, finished_seqs, _ = jax.lax.while_loop(
        cond, body, state)
    truncated = jnp.where(i >= max_len, alive_logp / lp(max_len), -jnp.inf)
    scores, best = jax.lax.top_k(jnp.concatenate([finished_scores, truncated], axis=1), k)
    return gather_beams(jnp.concatenate([finished_seqs, alive_seqs], axis=1), best), scores
