"""Translation quality: BLEU of decoded translations, and per-token perplexity.

bleu: decodes every source of a split with beam search (`beam_size`, length penalty `alpha`;
beam 1 is greedy decoding), output length up to the source's padded length + `extra_len`
(section 6.1 of Vaswani et al.: beam 4, alpha 0.6, input length + 50), detokenises and scores
the corpus with sacreBLEU's corpus_bleu (0-100, its default 13a tokenisation; the paper's
numbers are tokenised BLEU of multi-bleu.perl, a little higher on WMT). Logs `bleu` (or `key`)
and prints `show` translations (source, reference, hypothesis).

The experiment provides (Context.fns): `translate(params, src, beam_size, alpha, max_extra)`
-> token ids [batch, n] (each row ends at its EOS, then padding), `detokenize(ids) -> str`
(cuts at EOS) and `texts[source] -> (sources, references)`, the split's strings, indexed by
the batches' "index" (-1 on padding rows).

perplexity: the loss evaluator's means over the target tokens, plus perplexity = exp(mean
per-token negative log-likelihood `nll` without label smoothing), the number Table 3 reports.
"""

import math
import sys

import jax
import numpy as np
import sacrebleu
from jax.experimental import multihost_utils

from train.evaluators.base import Evaluator, register
from train.evaluators.classification import Loss


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacreBLEU's corpus BLEU (0-100) of one reference per sentence."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def _host(x) -> np.ndarray:
    """A whole (global) array on this host."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


@register("bleu")
class BLEU(Evaluator):
    defaults = dict(beam_size=4, alpha=0.6, extra_len=50, show=3, key="bleu")

    def __init__(self, *args):
        super().__init__(*args)
        missing = [k for k in ("translate", "detokenize", "texts") if k not in self.ctx.fns]
        if missing:
            raise ValueError(f"evaluator {self.name!r} (bleu) needs the experiment's "
                             f"{', '.join(missing)}")
        if int(self.cfg.beam_size) < 1:
            raise ValueError(f"config.evals.{self.name}.beam_size must be >= 1, got "
                             f"{self.cfg.beam_size}")

    def translations(self, state) -> dict[int, str]:
        """{example index: hypothesis} over the split's batches."""
        fns, out = self.ctx.fns, {}
        for batch in self.batches():
            src, index = _host(batch["src"]), _host(batch["index"])
            tokens = _host(fns["translate"](state.params, src, int(self.cfg.beam_size),
                                            float(self.cfg.alpha), int(self.cfg.extra_len)))
            for i, row in zip(index, tokens):
                if i >= 0:
                    out[int(i)] = fns["detokenize"](row)
        return out

    def run(self, state):
        hyps = self.translations(state)
        if not hyps:
            return {}
        sources, references = self.ctx.fns["texts"][self.source]
        order = sorted(hyps)
        bleu = corpus_bleu([hyps[i] for i in order], [references[i] for i in order])
        if jax.process_index() == 0 and self.cfg.show:
            print(f"{self.name} (beam {self.cfg.beam_size}): BLEU {bleu:.2f} on {len(order)} "
                  f"sentences", file=sys.stderr)
            for i in order[:int(self.cfg.show)]:
                print(f"  source     {sources[i]}\n  reference  {references[i]}\n"
                      f"  hypothesis {hyps[i]}", file=sys.stderr)
        return {str(self.cfg.key): bleu}


@register("perplexity")
class Perplexity(Loss):
    """Loss means over target tokens and perplexity = exp(mean nll)."""

    def run(self, state):
        out = super().run(state)
        if "nll" in out:
            out["perplexity"] = math.exp(min(out["nll"], 700.0))
        return out
