"""Train the Transformer (Vaswani et al. 2017), or its recurrent baseline (Bahdanau et al. 2015),
to translate, and score it with BLEU.

    python -m experiments.translate --workdir=DIR          # transformer.py:sentences, offline
    python -m experiments.translate --config=experiments/configs/transformer.py:rnn \
        --workdir=DIR                                      # the recurrent baseline
    python -m experiments.translate --config=experiments/configs/transformer.py:tiny \
        --workdir=DIR                                      # number phrases: a quick check
    python -m experiments.translate --config=experiments/configs/transformer.py:base \
        --workdir=DIR [--config.data.hf_config=fr-en --config.data.tgt_lang=fr ...]

Default data: English sentences around numbers (cardinals, ordinals, years, dates, money) into
French, German, Spanish or Italian, the target's token leading the source, split by template and by
number (data/number_sentences.py); `tiny`: English -> French number phrases; data.source=hf
reads a translation dataset (wmt14, or local json / parquet files with a `translation` column
of {lang: text}). One byte-level BPE serves every language and the Transformer shares its
embedding between encoder, decoder and the pre-softmax projection (section 3.4); it is kept in
DIR/tokenizer.json. model.arch = "rnn" trains RNNsearch (models/rnn_seq2seq.py, sized by
config.rnn) through the same trainer, loss and evaluators. Batches group pairs of similar
length, about data.tokens_per_batch tokens per side (section 5.1). Training: Adam (0.9, 0.98,
1e-9), the noam schedule (eq. 3), label smoothing `config.label_smoothing` (section 5.4),
residual dropout. Logged: training loss (label-smoothed) and `nll`; perplexity on val during
training and on test at the end; BLEU of greedy decoding on val during training and of beam
search (beam 4, alpha 0.6) on test at the end (train/evaluators/translation.py).
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from data import translation
from experiments import launch
from experiments.built import Built
from models import rnn_seq2seq, transformer
from train import objectives, sharding
from train.logging import read_metrics
from train.trainer import fit, preflight

BOS_ID, EOS_ID = 1, 2     # data/translation.py: <pad>, <s>, </s> are 0, 1, 2


# model.arch -> (its module, config class, model class, the config section of its sizes)
ARCHS = {"transformer": (transformer, transformer.TransformerConfig, transformer.Transformer,
                         "model"),
         "rnn": (rnn_seq2seq, rnn_seq2seq.RNNConfig, rnn_seq2seq.RNNSearch, "rnn")}


def arch(config) -> tuple:
    """ARCHS[config.model.arch]."""
    name = config.model.get("arch", "transformer")
    if name not in ARCHS:
        raise ValueError(f"unknown model.arch {name!r}; choose from {', '.join(ARCHS)}")
    return ARCHS[name]


def model_config(config):
    """The TransformerConfig of config.model, or with model.arch "rnn" the RNNConfig of
    config.rnn."""
    module, cls, _, section = arch(config)
    fields = {k: v for k, v in config[section].to_dict().items() if k != "arch"}
    try:
        cfg = cls(**fields)
    except TypeError as e:
        raise ValueError(f"config.{section}: {e}") from e
    module.check(cfg)
    if cfg.pad_id != 0:
        raise ValueError(f"model.pad_id must be 0, the tokenizer's <pad>, got {cfg.pad_id}")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
    return cfg


def translation_loss_fn(model, label_smoothing: float):
    """Label-smoothed cross-entropy over the target tokens (batch["weights"]), the decoder fed
    the target shifted right; also the plain per-token NLL (perplexity's) and accuracy."""
    def loss_fn(params, state, batch, rng):
        train = rng is not None
        logits = model.apply({"params": params}, batch["src"], batch["tgt_in"],
                             deterministic=not train, rngs={"dropout": rng} if train else {})
        target, w = batch["tgt_out"], batch["weights"]
        loss = objectives.cross_entropy(logits, target, w, label_smoothing)
        nll = objectives.cross_entropy(logits, target, w) if label_smoothing else loss
        metrics = {"nll": nll, "accuracy": objectives.accuracy(logits, target, w)}
        if train:   # the rows and tokens of this batch (its size varies with the lengths)
            real = batch["index"] >= 0
            metrics["examples"] = jnp.sum(real).astype(jnp.float32)
            metrics["tokens"] = jnp.sum(w) + jnp.sum((batch["src"] != 0) & real[:, None])
        return loss, (metrics, state)
    return loss_fn


def run_tokenizer(config, workdir, train_pairs=None):
    """The run's tokenizer: DIR/tokenizer.json when resuming, else init_from's when it has one
    (its weights index that vocabulary), else the cached joint BPE of the data."""
    for d in (workdir, config.init_from):
        if d and (path := pathlib.Path(d).expanduser() / "tokenizer.json").exists():
            tok = translation.Tokenizer.load(path)
            translation.check_specials(tok)
            return tok
    return translation.get_tokenizer(config.data, train_pairs)


def make_translate(cfg):
    """(params, src [batch, len], beam_size, alpha, extra) -> token ids: greedy for beam 1,
    else beam search; output up to the source's length + extra tokens (the model's max_len)."""
    module = rnn_seq2seq if isinstance(cfg, rnn_seq2seq.RNNConfig) else transformer

    def translate(params, src, beam_size, alpha, extra):
        max_len = min(src.shape[1] + extra, cfg.max_len)
        if beam_size == 1:
            return module.greedy_decode(cfg, params, src, max_len=max_len, bos_id=BOS_ID,
                                        eos_id=EOS_ID)
        return module.beam_search(cfg, params, src, beam_size, alpha, max_len=max_len,
                                  bos_id=BOS_ID, eos_id=EOS_ID)
    return translate


def build(config, src_len: float = 0, tgt_len: float = 0) -> Built:
    """The model of config.model.arch, without loading data. FLOPs per target token of pairs
    of src_len source and tgt_len target tokens (0: the model's max_len; its module's
    flops_per_token); an example is a pair. predict_fn: the teacher-forced logits [batch,
    target, vocab]."""
    module, _, model_cls, _ = arch(config)
    cfg = model_config(config)
    model = model_cls(cfg)
    example = jnp.zeros((1, 8), jnp.int32)
    src_len, tgt_len = src_len or cfg.max_len, tgt_len or cfg.max_len

    def predict_fn(params, model_state, batch):
        return model.apply({"params": params}, batch["src"], batch["tgt_in"])

    return Built(cfg, model, lambda rng: model.init(rng, example, example),
                 translation_loss_fn(model, config.label_smoothing), predict_fn, "token",
                 module.flops_per_token(cfg, src_len, tgt_len), units_per_example=tgt_len)


def setup(config, workdir) -> dict:
    """What fit() needs for this experiment (also used by experiments.evaluate)."""
    cfg = model_config(config)
    d, t = config.data, config.train
    corpus = translation.load_corpus(d)
    tok = run_tokenizer(config, workdir, corpus["train"])
    if tok.vocab_size > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but model.vocab_size is "
                         f"{cfg.vocab_size}")
    corpus["train"] = translation.take_fraction(corpus["train"], d.train_fraction)
    encoded, report = translation.encode_splits(tok, corpus, cfg.max_len)
    if jax.process_index() == 0:
        print("\n".join(translation.report_lines(report, cfg.max_len)), file=sys.stderr)
    train_enc = encoded["train"]
    dp = sharding.data_parallel_size(sharding.make_mesh(config.mesh))
    kw = dict(process_index=jax.process_index(), process_count=jax.process_count())
    train_data = translation.LengthBatches(
        train_enc, d.tokens_per_batch, rows=t.batch_size, row_multiple=dp * t.grad_accum,
        pad_step=d.pad_step, max_len=cfg.max_len, seed=config.seed, **kw)
    evals = {split: encoded[split] for split in ("val", "test")}
    eval_tokens = d.eval_tokens_per_batch or d.tokens_per_batch
    data = {split: lambda enc=enc: translation.LengthBatches(
        enc, eval_tokens, rows=t.batch_size, row_multiple=dp, pad_step=d.pad_step,
        max_len=cfg.max_len, seed=0, shuffle=False, prefetch=0, **kw)
        for split, enc in evals.items()}
    # MFU: the FLOPs of a pair of the training pairs' mean lengths (the target without <s>).
    built = build(config, np.mean([len(s) for s in train_enc.src]),
                  np.mean([len(t) - 1 for t in train_enc.tgt]))
    return dict(
        **built.fit_args(), train_data=train_data, data=data,
        eval_fns=dict(translate=make_translate(cfg),
                      detokenize=lambda ids: translation.detokenize(tok, ids),
                      texts={s: (corpus[s].src, corpus[s].tgt) for s in ("val", "test")}),
        artifacts={"tokenizer.json": tok.save, "data_report.json": lambda path: path.write_text(
            json.dumps(report, indent=1) + "\n")})


def check_decoding(config) -> None:
    """The bleu evaluators' decoding settings, before anything is written (the evaluators
    themselves are built once training starts, and the test one runs at its end)."""
    vocab = config.model.vocab_size
    for name, e in config.evals.items():
        if e.type != "bleu":
            continue
        where = f"config.evals.{name}"
        if e.beam_size < 1:
            raise ValueError(f"{where}.beam_size must be >= 1 (1: greedy), got {e.beam_size}")
        if 2 * e.beam_size > vocab:
            raise ValueError(f"{where}.beam_size {e.beam_size} needs a vocabulary of at least "
                             f"{2 * e.beam_size} tokens; model.vocab_size is {vocab}")
        if e.alpha < 0:
            raise ValueError(f"{where}.alpha, the length penalty, must be >= 0, got {e.alpha}")
        if e.extra_len < 0:
            raise ValueError(f"{where}.extra_len must be >= 0 (output tokens beyond the "
                             f"source's length), got {e.extra_len}")


def main(config, workdir):
    check_decoding(config)
    translation.check_fraction(config.data.train_fraction)
    preflight(config, workdir)
    fit(config, workdir=workdir, **setup(config, workdir))
    if jax.process_index() == 0:
        rows = read_metrics(workdir)
        test = [r for r in rows if r["split"] == "test"]
        last = test[-1] if test else {}
        print(f"{config.data.src_lang} -> {config.data.tgt_lang}: test BLEU "
              f"{last.get('bleu', float('nan')):.2f}, perplexity "
              f"{last.get('perplexity', float('nan')):.3f}", file=sys.stderr)


if __name__ == "__main__":
    launch.run(main, "transformer.py:sentences")
