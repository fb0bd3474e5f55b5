"""Transformer translation presets: get_config("PRESET").

    sentences  the default: a 2-layer, 64-wide Transformer on the offline sentences (English
               sentences around numbers up to a million -> French, German, Spanish or Italian,
               a target-language token leading each source; data/number_sentences.py), joint
               BPE of 1,024 tokens, batches of about 2,048 tokens a side, 2,000 steps; test
               BLEU 72.4 in 10 min on 2 CPU cores shared with other jobs
    rnn        the recurrent baseline (Bahdanau et al. 2015, models/rnn_seq2seq.py) of about
               the same parameters on the same data, the same optimiser and steps
               (model.arch = "rnn"; its sizes in config.rnn); test BLEU 65.0 in 19 min
    tiny       the quick smoke run: the same Transformer on English -> French number phrases
               (num2words), joint BPE of 512 tokens, batches of about 1,024 tokens a side;
               3 minutes on 2 CPU cores; test BLEU 99.98, at the ceiling
    base       the paper's base model (Table 3: N 6, d_model 512, d_ff 2048, h 8, P_drop 0.1,
               eps_ls 0.1, 100K steps) on WMT 2014 English -> German through HF `datasets`,
               37,000 shared BPE tokens, batches of about 25,000 source + 25,000 target
               tokens, Adam (0.9, 0.98, 1e-9), the noam schedule with 4,000 warmup steps,
               beam 4, alpha 0.6
    big        the big model (d_model 1024, d_ff 4096, h 16, P_drop 0.3, 300K steps)

model.arch picks the model: "transformer" (config.model) or "rnn" (config.rnn, whose
vocab_size and max_len follow config.model's, as data.vocab_size does).

Benchmark presets (experiments/benchmark.py; BENCH_PRESETS below):
    bench-cpu     the base model's training step (label-smoothed cross-entropy, Adam), batch 16
                  x (32 source + 32 target tokens), float32, no dropout, CPU attention
                  (xla_custom); --peer: transformers' MarianMTModel of the same sizes
    bench-decode  the base model's greedy cached decoding, 32-token sources -> 32 tokens,
                  batch 1 and 8 (--config.bench.beam_size=4: the paper's beam search);
                  --peer: MarianMTModel.generate

A base config is built first; each preset then overrides model, data and train fields.

Named sweeps (SWEEPS below), one command each. On tiny (run; docs/papers/transformer.md):
label_smoothing and positions 2 runs, about 6 min each; heads 4 runs, about 12 min; beam 1
training run (3 min) and two evaluation-only runs of the test split. On sentences
(docs/papers/transformer.md): Table 3's rows A-E and its base row, the recurrent baseline and
the data-size curve, 3 seeds each; a Transformer run takes 2.5-4 min alone on 2 cores, 4-7 min
two at a time, a recurrent one 8-10 min two at a time: A 12 runs (33 min at --parallel=2),
C 18 (53 min), data_size 18 (61 min), baseline 3 (20 min).
"""

import ml_collections

from experiments.configs import defaults
from experiments.configs.common import base_config, check_preset, eval_spec, train_config

EXPERIMENT = "translate"

# Table 3 in miniature on the number phrases, each one command:
#   python -m experiments.sweep --config=experiments/configs/transformer.py:tiny \
#       --name=label_smoothing --workdir=DIR
# label_smoothing: (E) eps_ls 0 vs 0.1 (perplexity rises, BLEU improves in the paper);
# heads: (A) h at constant compute (d_k = d_v = d_model / h); positions: (E) sinusoidal vs
# learned; beam: section 6.1's beam 4 against greedy decoding, evaluation only, of one model
# trained first in DIR/train.
SWEEPS = {
    "label_smoothing": {"label_smoothing": [0.0, 0.1], "metric": "test/bleu"},
    "heads": {"model.n_head": [1, 2, 4, 8], "metric": "test/bleu"},
    "positions": {"model.positions": ["sinusoidal", "learned"], "metric": "test/bleu"},
    "beam": {"evals.test_bleu.beam_size": [1, 4], "metric": "test/bleu",
             "before": {"experiment": "translate", "config": "transformer.py:tiny",
                        "workdir": "train"},
             "overrides": {"init_from": "{sweep_dir}/train", "train.steps": 0}},
}

# Table 3 on the sentences, each row one command of 3 seeds:
#   python -m experiments.sweep --config=experiments/configs/transformer.py:sentences \
#       --name=A --workdir=DIR
# The miniature's base: N 2, d_model 64, d_ff 256, h 4, d_k = d_v 16, P_drop 0.1, eps_ls 0.1,
# sinusoids (base_row: its 3 seeds). A: h 1, 2, 8, 16 at constant compute (d_k = d_v =
# d_model / h); B: smaller d_k (4, 8; d_v shrinks with it, the heads sharing one size here);
# C: N 1 and 4, d_model 32 and 128 (d_k = d_model / h, the lr's sqrt(d_model) following), d_ff
# 128 and 512; D: P_drop 0 and 0.2, eps_ls 0 and 0.2; E: learned positions.
TABLE_3 = {
    "A": {"model.n_head": [1, 2, 8, 16]},
    "B": {"model.d_k": [4, 8]},
    "C": {"row": [{"label": "N=1", "model.n_layer": 1}, {"label": "N=4", "model.n_layer": 4},
                  {"label": "d_model=32", "model.d_model": 32},
                  {"label": "d_model=128", "model.d_model": 128},
                  {"label": "d_ff=128", "model.d_ff": 128},
                  {"label": "d_ff=512", "model.d_ff": 512}]},
    "D": {"row": [{"label": "P_drop=0", "model.dropout": 0.0},
                  {"label": "P_drop=0.2", "model.dropout": 0.2},
                  {"label": "eps_ls=0", "label_smoothing": 0.0},
                  {"label": "eps_ls=0.2", "label_smoothing": 0.2}]},
    "E": {"model.positions": ["learned"]},
    "base_row": {},
}
# The recurrent baseline (its Transformer counterpart is base_row's runs), and both against the
# amount of training data (data.train_fraction of the 50,000 pairs; one vocabulary for all, the
# same steps; all the pairs: base_row and baseline). experiments/table3.py reports them.
MODELS = [{"label": "transformer", "model.arch": "transformer"},
          {"label": "rnn", "model.arch": "rnn"}]
SWEEPS.update({name: {**axes, "seeds": 3, "metric": "test/bleu"}
               for name, axes in TABLE_3.items()})
SWEEPS.update({
    "baseline": {"model.arch": ["rnn"], "seeds": 3, "metric": "test/bleu"},
    "data_size": {"data.train_fraction": [0.125, 0.25, 0.5], "model": MODELS,
                  "seeds": 3, "metric": "test/bleu"},
})


def data_config(**overrides) -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict(dict(
        source="numbers",          # sentences | numbers (offline, num2words) | hf
        src_lang="en",
        tgt_lang="fr",             # sentences: several, "fr,de,es" (a token per language)
        # numbers: integers drawn from [0, max_number) without repeats, split by number;
        # sentences: counts and amounts drawn from [2, max_number), split by template and
        # number (data/number_sentences.py)
        max_number=1_000_000,
        clauses=2,                 # sentences: clauses per sentence
        train_size=50_000,
        val_size=500,
        test_size=1000,
        split_seed=0,              # which numbers go to which split (not the training seed)
        train_fraction=1.0,        # the first fraction of the training pairs (after the BPE)
        # hf: a translation dataset, a `translation` column of {lang: text} per example
        hf_dataset="",             # a hub name ("wmt14") or a builder ("json", "parquet")
        hf_config="",              # e.g. "de-en", "fr-en"
        hf_data_files="",          # "train=a.jsonl,validation=b.jsonl,test=c.jsonl"
        translation_column="translation",  # splits train, validation (or valid, val, dev),
                                           # test; a missing val / test is carved from train
        max_examples=0,            # hf: per split, 0 = all
        bpe_examples=1_000_000,    # pairs of the train split the joint BPE is trained on
        # one byte-level BPE for both languages (section 5.1: a shared vocabulary)
        vocab_size=512,
        tokenizer="",              # a tokenizer.json to use instead of training one
        cache_dir="~/.cache/flaxpapers",
        # section 5.1: "each training batch contained ... approximately 25000 source tokens and
        # 25000 target tokens"; pairs are grouped by length, padded per batch
        tokens_per_batch=25_000,
        eval_tokens_per_batch=0,   # 0: tokens_per_batch
        pad_step=8,                # batches pad to a multiple of this: one compiled shape per
                                   # multiple, so a larger step compiles fewer
    ))
    d.update(overrides)
    return d


def evals_config(beam_size: int = 4, alpha: float = 0.6) -> ml_collections.ConfigDict:
    """Perplexity and greedy BLEU on val during training; perplexity and beam-search BLEU on
    test at the end (section 6.1: beam 4, alpha 0.6, output length up to input + 50)."""
    return ml_collections.ConfigDict(dict(
        val=eval_spec(type="perplexity", split="val"),
        val_bleu=eval_spec(type="bleu", split="val", beam_size=1, show=0),
        test=eval_spec(type="perplexity", split="test", every=0, steps=0),
        test_bleu=eval_spec(type="bleu", split="test", every=0, steps=0, beam_size=beam_size,
                            alpha=alpha)))          # steps 0: the whole test split


def transformer_train_config(**overrides) -> ml_collections.ConfigDict:
    """Section 5.3: Adam (beta1 0.9, beta2 0.98, eps 1e-9), lr = d_model^-0.5 *
    min(step^-0.5, step * warmup^-1.5), no weight decay, no gradient clipping (noam_width:
    d_model, set by follow_model)."""
    return train_config(**{**dict(optimizer="adam", schedule="noam", lr=1.0, warmup_steps=4000,
                                  b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.0, grad_clip=0.0),
                           **overrides})


def follow_model(config: ml_collections.ConfigDict) -> None:
    """train.noam_width, data.vocab_size and the recurrent model's vocab_size and max_len
    follow a --config.model.d_model / vocab_size / max_len override (each can still be set on
    its own)."""
    config.train.noam_width = config.model.get_ref("d_model").identity()
    config.data.vocab_size = config.model.get_ref("vocab_size").identity()
    if "rnn" in config:
        config.rnn.vocab_size = config.model.get_ref("vocab_size").identity()
        config.rnn.max_len = config.model.get_ref("max_len").identity()


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
    """The Transformer's fields (models/transformer.py) and `arch`: which model trains."""
    return ml_collections.ConfigDict(dict(arch="transformer",
                                          **defaults.transformer(name, **overrides)))


BENCH_PRESETS = ("bench-cpu", "bench-decode")
PRESETS = ("sentences", "rnn", "tiny", "base", "big", *BENCH_PRESETS)


def get_config(arg: str = "sentences") -> ml_collections.ConfigDict:
    check_preset(arg, PRESETS)
    if arg in BENCH_PRESETS:
        return bench_config(arg)
    config = base_config()
    config.data = data_config()
    config.label_smoothing = 0.1     # section 5.4: eps_ls
    config.evals = evals_config()
    config.rnn = defaults.rnn("rnnsearch" if arg in ("base", "big") else "tiny")
    if arg in ("sentences", "rnn"):
        config.model = model_config("tiny", d_model=64, n_head=4, n_layer=2, d_ff=256,
                                    vocab_size=1024, max_len=128)
        config.model.arch = "rnn" if arg == "rnn" else "transformer"
        config.data.update(source="sentences", tgt_lang="fr,de,es,it", max_number=1_000_000,
                           tokens_per_batch=2048, eval_tokens_per_batch=8192, pad_step=16)
        config.evals.val_bleu.steps = 2
        # Table 3 reports dev BLEU (beam search, the whole split) and beam against greedy on
        # the same runs: both once, at the end
        config.evals.dev_bleu = eval_spec(type="bleu", split="val", every=0, steps=0, show=0,
                                          key="bleu_beam")
        config.evals.test_greedy = eval_spec(type="bleu", split="test", every=0, steps=0,
                                             beam_size=1, show=0, key="bleu_greedy")
        # the last 5 checkpoints, 50 steps apart, stay for --average_last=5: the last 10% of
        # training (the paper's base models average the last 5 of 10-minute checkpoints, the
        # last 7% of 12 hours)
        config.train = transformer_train_config(
            steps=2000, batch_size=64, lr=0.3, warmup_steps=200,
            eval_every=500, eval_steps=4, ckpt_every=50, keep_ckpts=5, log_every=50)
    elif arg == "tiny":
        config.model = model_config("tiny", d_model=64, n_head=4, n_layer=2, d_ff=256,
                                    max_len=32)
        config.data.update(tokens_per_batch=1024, eval_tokens_per_batch=4096)
        config.evals.val_bleu.steps = 2
        # lr scale 0.3 (peak 2.7e-3 at d_model 64): at the paper's scale 1 (peak 8.8e-3) the
        # encoder's output collapsed to one vector and the decoder learned French numbers
        # without their source (test BLEU 3.3 after 1,500 steps); at 0.3 val BLEU was 96 at
        # step 500 and 100 at step 1,000.
        config.train = transformer_train_config(
            steps=1000, batch_size=64, lr=0.3, warmup_steps=200,
            eval_every=500, eval_steps=4, ckpt_every=500, log_every=50)
    else:
        config.model = model_config(arg)
        config.data.update(source="hf", hf_dataset="wmt14", hf_config="de-en", src_lang="en",
                           tgt_lang="de")
        config.train = transformer_train_config(
            steps=100_000 if arg == "base" else 300_000, batch_size=512,
            eval_every=5000, eval_steps=20, ckpt_every=5000, log_every=100)
    follow_model(config)
    return config


# ------------------------------------------------------------------------ benchmark presets

def bench_config(arg: str) -> ml_collections.ConfigDict:
    """The base model with random weights and random sentence pairs (config.bench: their
    lengths; bench.workload "translate_decode" times decoding instead of training). No dropout,
    as the GPT and ConvNet benchmarks, so that both sides compute the same function."""
    config = get_config("base")
    config.model = model_config("base", dropout=0.0, attention_impl="xla_custom")
    config.train = transformer_train_config(steps=50, batch_size=16, eval_every=1000,
                                            ckpt_every=1000)
    follow_model(config)
    if arg == "bench-cpu":
        config.bench = ml_collections.ConfigDict(dict(workload="translate", src_len=32,
                                                      tgt_len=32))
    else:
        config.train.batch_size = 8
        # beam_size 1: greedy; 4 with alpha 0.6: section 6.1's beam search
        config.bench = ml_collections.ConfigDict(dict(workload="translate_decode", src_len=32,
                                                      new_tokens=32, batches=(1, 8),
                                                      beam_size=1, alpha=0.6))
    return config
