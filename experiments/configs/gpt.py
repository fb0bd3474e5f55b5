"""GPT language-model pretraining presets: get_config("PRESET").

    tiny        4 layers x 128 wide, BPE of 512 tokens, on the standard-library corpus; a few
                minutes on 2 CPU cores
    tiny-4k     the same model with a 4096-token BPE, 500 steps of 16 x 128 tokens: the language
                model of GPT-1's transfer table (gpt1.py); `micro` is a seconds-long version
    bench-cpu   6 layers / 6 heads / 384 wide / context 256 / vocab 8192 / batch 8, float32,
                CPU attention (xla_custom)
    bench-gpu   GPT-2 small, context 1024, batch 16, bfloat16 compute, cuDNN attention
    bench-decode  GPT-2 small's greedy cached generation, float32: a 32-token prompt + 128 new
                tokens, batch 1 and 8 (config.bench: the benchmark's decode workload)
    gpt1        GPT-1: 12 x 768, context 512, post-norm, Adam 2.5e-4, batch 64
    gpt2-124m   GPT-2 small (and gpt2-355m, gpt2-774m, gpt2-1.5b): context 1024, batch 512
    gpt3-125m   ... gpt3-175b: GPT-3 Table 2.1 (width, depth, heads, lr, batch in tokens)
    icl-s       in-context learning in miniature (GPT-3 figure 1.2, section 3.9): bytes as
    icl-m       tokens (data.tokenizer="bytes"), context 640, the same 1600 x 8 x 640 tokens
    icl-l       of the mixture (3:1) of task lists and text (data.source=icl,
                data/icl_tasks.py) for every size, 100k to 1.4M parameters (ICL_SIZES); at the
                end the evaluator `icl` scores K = 0..16 examples with and without the
                description, example orders, line layouts and the in-context score

Named sweep `icl` (SWEEPS below): the three ICL sizes, three seeds each, pretrained and
evaluated few-shot; experiments/icl_report.py then writes the tables and the figure.
"""

import ml_collections

from experiments.configs import defaults
from experiments.configs.common import (base_config, check_preset, eval_spec, mesh_config,
                                        train_config)

EXPERIMENT = "pretrain_lm"

# GPT-3 Table 2.1: learning rate and batch size in tokens (2048-token sequences).
GPT3_TRAIN = {"gpt3-125m": (6e-4, 0.5e6), "gpt3-350m": (3e-4, 0.5e6),
              "gpt3-760m": (2.5e-4, 0.5e6), "gpt3-1.3b": (2e-4, 1e6), "gpt3-2.7b": (1.6e-4, 1e6),
              "gpt3-6.7b": (1.2e-4, 2e6), "gpt3-13b": (1e-4, 2e6), "gpt3-175b": (0.6e-4, 3.2e6)}


# In-context learning in miniature: (n_layer, n_head, d_model, peak lr) per size, each trained
# on ICL_STEPS batches of ICL_BATCH windows of the 640-byte context (8.2M bytes): the nine
# runs of the sweep then fit about 90 minutes on 2 CPU cores, two at a time (--parallel=2).
ICL_SIZES = {"icl-s": (2, 2, 48, 5e-3), "icl-m": (3, 4, 96, 4e-3), "icl-l": (4, 4, 160, 3e-3)}
ICL_STEPS, ICL_BATCH, ICL_CTX = 1600, 8, 640

SWEEPS = {"icl": {
    "size": [{"label": name.split("-")[1], "model.n_layer": n_layer, "model.n_head": n_head,
              "model.d_model": d_model, "train.lr": lr}
             # largest first: with --parallel the longest runs start first
             for name, (n_layer, n_head, d_model, lr) in reversed(ICL_SIZES.items())],
    "seeds": 3,
    "metric": "test/icl/exact_match_k16"}}

MICRO_MODEL = dict(vocab_size=512, n_ctx=64, n_layer=1, n_head=2, d_model=32, dropout=0.0,
                   attn_dropout=0.0)   # fields of defaults.gpt()


def follow_model(data: ml_collections.ConfigDict, model: ml_collections.ConfigDict) -> None:
    """data.vocab_size and data.seq_len follow a --config.model.vocab_size / n_ctx override
    (each can still be set on its own)."""
    data.vocab_size = model.get_ref("vocab_size").identity()
    data.seq_len = model.get_ref("n_ctx").identity()


PRESETS = ("tiny", "tiny-4k", "micro", *ICL_SIZES, "bench-cpu", "bench-gpu", "bench-decode",
           "gpt1", "gpt2-124m", "gpt2-355m", "gpt2-774m", "gpt2-1.5b", *GPT3_TRAIN)


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    check_preset(arg, PRESETS)
    config = base_config()
    config.data = defaults.text_data(seq_len=128)
    # Validation loss during training; test loss once, at the end.
    config.evals.val = eval_spec(type="loss", split="val")
    config.evals.test = eval_spec(type="loss", split="test", every=0)
    config.sample = ml_collections.ConfigDict(dict(prompt="import os\n\n\ndef", num_tokens=64,
                                                   temperature=0.8, top_k=40))
    if arg == "tiny":
        # A 512-token BPE: on 2 CPU cores the small vocabulary buys more steps per minute.
        model = defaults.gpt("tiny", vocab_size=512)
        config.train = train_config(steps=1000, batch_size=16, lr=3e-3, warmup_steps=50,
                                    eval_every=100, eval_steps=8, ckpt_every=200, log_every=10)
    elif arg in ("tiny-4k", "micro"):
        # The tasks' texts stay short in a 4096-token BPE, which keeps the twelve fine-tuning
        # runs of the transfer table cheap; about 1M tokens of pretraining.
        model = defaults.gpt("tiny") if arg == "tiny-4k" else defaults.gpt(**MICRO_MODEL)
        config.train = train_config(steps=500, batch_size=16, lr=3e-3, warmup_steps=50,
                                    eval_every=100, eval_steps=4, ckpt_every=500, log_every=10)
        config.sample.num_tokens = 0
        if arg == "micro":
            config.data.max_docs = 40
            config.train.update(steps=4, batch_size=4, warmup_steps=1, eval_every=4,
                                eval_steps=2, ckpt_every=4, log_every=2)
    elif arg in ICL_SIZES:
        # GPT-3's few-shot evaluation of models pretrained on a mixture of task lists (an
        # optional description line, then K + 1 lines of one task) and ordinary text. Bytes
        # as tokens let a model see the letters it unscrambles; 640 bytes hold 16 examples of
        # the longest task with the description (checked before training).
        n_layer, n_head, d_model, lr = ICL_SIZES[arg]
        model = defaults.gpt(vocab_size=257, n_ctx=ICL_CTX, n_layer=n_layer, n_head=n_head,
                             d_model=d_model, dropout=0.0, attn_dropout=0.0,
                             attention_impl="xla_custom")
        config.data.source, config.data.tokenizer = "icl", "bytes"
        config.data.icl = defaults.icl_data(
            task_weight=0.75, text_weight=0.25,
            train_chars=ICL_STEPS * ICL_BATCH * ICL_CTX + 100_000)   # about one epoch
        config.train = train_config(steps=ICL_STEPS, batch_size=ICL_BATCH, lr=lr,
                                    warmup_steps=ICL_STEPS // 20, eval_every=ICL_STEPS // 2,
                                    eval_steps=4, ckpt_every=ICL_STEPS // 2, log_every=20)
        config.evals.icl = eval_spec(
            type="fewshot", split="test", every=0, shots=(0, 1, 2, 4, 8, 16), queries=8,
            orders=5, layouts=("arrow", "colon", "qa", "quoted", "json"), variant_k=8,
            seen_k=16)
        config.sample.num_tokens = 0
    elif arg == "bench-cpu":
        # The CPU benchmark target (experiments/benchmark.py); attention in head-major layout
        # with a hand-derived backward is the faster XLA attention on CPUs.
        model = defaults.gpt(vocab_size=8192, n_ctx=256, n_layer=6, n_head=6, d_model=384,
                             dropout=0.0, attn_dropout=0.0, attention_impl="xla_custom")
        config.train = train_config(steps=50, batch_size=8, lr=6e-4, warmup_steps=10,
                                    eval_every=1000, ckpt_every=1000)
    elif arg == "bench-gpu":
        # GPT-2 small on one GPU: bfloat16 compute on float32 parameters, cuDNN attention.
        model = defaults.gpt("gpt2-124m", dropout=0.0, attn_dropout=0.0, dtype="bfloat16")
        config.train = train_config(steps=50, batch_size=16, lr=6e-4, warmup_steps=10,
                                    eval_every=1000, ckpt_every=1000)
    elif arg == "bench-decode":
        # experiments/benchmark.py times generation, not training: config.bench picks its
        # decode workload and the shapes; the model is GPT-2 small with random weights.
        model = defaults.gpt("gpt2-124m", dropout=0.0, attn_dropout=0.0)
        config.train = train_config(steps=1, batch_size=8, lr=6e-4, warmup_steps=0,
                                    eval_every=1000, ckpt_every=1000)
        config.bench = ml_collections.ConfigDict(dict(workload="decode", prompt_len=32,
                                                      new_tokens=128, batches=(1, 8)))
    elif arg == "gpt1":
        # GPT-1 section 4.1: Adam max lr 2.5e-4, linear warmup 2000 updates then cosine to 0,
        # 100 epochs of minibatches of 64 sequences of 512 tokens, L2 weight decay 0.01.
        model = defaults.gpt("gpt1")
        config.train = train_config(steps=100_000, batch_size=64, lr=2.5e-4, warmup_steps=2000,
                                    min_lr_ratio=0.0, b2=0.999, weight_decay=0.01,
                                    eval_every=1000, ckpt_every=1000)
    elif arg.startswith("gpt2-"):
        # GPT-2 section 2.3: context 1024, batch 512; lr tuned per size (2.5e-4 as GPT-1).
        model = defaults.gpt(arg)
        config.train = train_config(steps=100_000, batch_size=512, lr=2.5e-4, warmup_steps=2000,
                                    eval_every=1000, ckpt_every=1000)
        config.mesh = mesh_config(data=1, fsdp=-1)
    elif arg in GPT3_TRAIN:
        # GPT-3 section 2.3 / appendix B: Adam(0.9, 0.95, 1e-8), clip 1.0, weight decay 0.1,
        # 375M-token warmup, cosine to 10% over 260B tokens. The warmup is kept as its share
        # of the 300B-token run, so that it follows a train.steps override.
        model = defaults.gpt(arg)
        lr, batch_tokens = GPT3_TRAIN[arg]
        batch = int(batch_tokens // model.n_ctx)
        config.train = train_config(
            steps=int(300e9 // batch_tokens), batch_size=batch, lr=lr,
            warmup_steps=0, warmup_fraction=375e6 / 300e9, min_lr_ratio=0.1,
            eval_every=1000, ckpt_every=1000)
        config.mesh = mesh_config(data=1, fsdp=-1)
    config.model = model
    follow_model(config.data, config.model)
    return config
