"""Plain copies of the model presets and data defaults that the configs start from, so that
loading a config imports no jax, flax, models, data or train (`--help` and a config error answer
in a second). Each table mirrors its source, field for field, and tests/test_cli.py checks that
they agree (the RNNsearch presets: tests/test_rnn_seq2seq.py): the GPT, Transformer, RNNsearch
and CLIP presets (models/gpt.py, models/transformer.py, models/rnn_seq2seq.py, models/clip.py,
models/vit.py), EfficientNet's scaling bases (models/efficientnet.py), and the text,
in-context-learning and transfer-task data defaults (data/text.py, data/icl_tasks.py,
data/code_tasks.py).
"""

import ml_collections

# ----------------------------------------------------------------------------- GPT

GPT = dict(                      # models/gpt.py: GPTConfig
    vocab_size=50257,            # tokens of the BPE (input and tied output embedding)
    n_ctx=1024,                  # context length in tokens
    n_layer=12,                  # blocks
    n_head=12,                   # attention heads
    d_model=768,                 # residual stream width
    head_dim=0,                  # 0 = d_model // n_head; GPT-3's table sets it on its own
    d_ff=0,                      # 0 = 4 * d_model
    norm="pre",                  # pre (GPT-2/3) | post (GPT-1)
    act="gelu_tanh",             # the FFN's activation
    ln_eps=1e-5,                 # LayerNorm epsilon
    dropout=0.1,                 # residual and embedding dropout
    attn_dropout=0.1,            # on the attention probabilities
    init_std=0.02,               # std of the normal initialisation
    scale_residual_init=True,    # GPT-2's 1/sqrt(2 n_layer) on residual projections
    local_window=0,              # > 0: every odd layer attends only to the last local_window tokens
    attention_impl="auto",       # auto | xla | xla_custom | cudnn
    dtype="float32",             # compute dtype: float32 | bfloat16
    param_dtype="float32",       # the parameters' dtype
    remat="none",                # none | full | dots: what jax.checkpoint keeps per block
    pad_vocab_multiple=0,        # > 0: W_e rows rounded up to a multiple; padded logits dropped
)


def _gpt3(n_layer, d_model, n_head, head_dim):
    return dict(n_ctx=2048, n_layer=n_layer, n_head=n_head, d_model=d_model, head_dim=head_dim,
                local_window=256, dropout=0.0, attn_dropout=0.0)


GPT_PRESETS = {
    "gpt1": dict(vocab_size=40478, n_ctx=512, norm="post", act="gelu_tanh",
                 scale_residual_init=False),
    "gpt2-124m": dict(n_layer=12, n_head=12, d_model=768),
    "gpt2-355m": dict(n_layer=24, n_head=16, d_model=1024),
    "gpt2-774m": dict(n_layer=36, n_head=20, d_model=1280),
    "gpt2-1.5b": dict(n_layer=48, n_head=25, d_model=1600),
    "gpt3-125m": _gpt3(12, 768, 12, 64),
    "gpt3-350m": _gpt3(24, 1024, 16, 64),
    "gpt3-760m": _gpt3(24, 1536, 16, 96),
    "gpt3-1.3b": _gpt3(24, 2048, 16, 128),   # Table 2.1's 24 heads x 128 is not 2048 wide
    "gpt3-2.7b": _gpt3(32, 2560, 32, 80),
    "gpt3-6.7b": _gpt3(32, 4096, 32, 128),
    "gpt3-13b": _gpt3(40, 5140, 40, 128),
    "gpt3-175b": _gpt3(96, 12288, 96, 128),
    "tiny": dict(vocab_size=4096, n_ctx=128, n_layer=4, n_head=4, d_model=128, dropout=0.0,
                 attn_dropout=0.0),
}


def gpt(name: str = "", **overrides) -> ml_collections.ConfigDict:
    """GPTConfig's fields for the preset `name` ("" for the defaults) with `overrides`."""
    return _fields(GPT, GPT_PRESETS, "GPT", name, overrides)


# ----------------------------------------------------------------------------- Transformer

TRANSFORMER = dict(              # models/transformer.py: TransformerConfig
    vocab_size=37000,            # one BPE vocabulary for source and target
    d_model=512,
    n_head=8,                    # h; d_k = d_v = d_model / h
    d_k=0,                       # > 0: the head size d_k = d_v instead (Table 3 row B)
    n_layer=6,                   # N, in the encoder and in the decoder
    d_ff=2048,
    dropout=0.1,                 # P_drop: residual dropout, also on embedding + PE
    attn_dropout=0.0,            # on the attention probabilities (not in the paper)
    max_len=256,                 # longest source or target sequence
    positions="sinusoidal",      # sinusoidal | learned
    sinusoid="interleaved",      # interleaved | halves (Marian's [sin | cos])
    scale_embedding=True,        # embeddings times sqrt(d_model)
    act="relu",
    norm="post",                 # post: LayerNorm(x + Sublayer(x)), as the paper | pre
    ln_eps=1e-5,
    final_logits_bias=False,     # a bias on the output logits (Marian)
    pad_id=0,
    attention_impl="auto",
    dtype="float32",
    param_dtype="float32",
)

TRANSFORMER_PRESETS = {
    "base": {},
    "big": dict(d_model=1024, n_head=16, d_ff=4096, dropout=0.3),
    "tiny": dict(vocab_size=512, d_model=64, n_head=4, n_layer=2, d_ff=128, max_len=64),
}


def transformer(name: str = "", **overrides) -> ml_collections.ConfigDict:
    return _fields(TRANSFORMER, TRANSFORMER_PRESETS, "Transformer", name, overrides)


RNN = dict(                      # models/rnn_seq2seq.py: RNNConfig (Bahdanau et al. 2015)
    vocab_size=30000,            # one BPE vocabulary for source and target
    embed_dim=620,               # m, the word embedding
    hidden=1000,                 # n, the decoder's state and each encoder direction
    attn_dim=1000,               # n', the alignment model's hidden layer
    maxout=500,                  # l, the deep output's units
    dropout=0.0,                 # on the embeddings and the deep output (not in the paper)
    max_len=256,                 # longest source or target sequence
    pad_id=0,
    dtype="float32",
    param_dtype="float32",
)

RNN_PRESETS = {
    "rnnsearch": {},
    "tiny": dict(vocab_size=1024, embed_dim=64, hidden=72, attn_dim=64, maxout=64, dropout=0.1,
                 max_len=128),
}


def rnn(name: str = "", **overrides) -> ml_collections.ConfigDict:
    return _fields(RNN, RNN_PRESETS, "RNN", name, overrides)


# ----------------------------------------------------------------------------- CLIP

VIT = dict(                      # models/vit.py: ViTConfig
    image_size=224,
    patch_size=32,
    channels=3,
    d_model=768,
    n_layer=12,
    n_head=12,
    d_ff=0,                      # 0: 4 * d_model
    act="quick_gelu",            # the released CLIP models; "gelu" for the erf form
    ln_eps=1e-5,
    patch_bias=False,            # CLIP's patch embedding has no bias; the original ViT's has one
    ln_pre=True,                 # CLIP's LayerNorm on the embeddings
    attention_impl="auto",
    dtype="float32",
    param_dtype="float32",
)

CLIP_TEXT = dict(                # models/clip.py: TextConfig
    vocab_size=49408,
    n_ctx=77,
    d_model=512,
    n_layer=12,
    n_head=8,
    d_ff=0,                      # 0: 4 * d_model
    act="quick_gelu",
    ln_eps=1e-5,
    eot_token_id=-1,             # -1: each sequence's largest id
    attention_impl="auto",
    dtype="float32",
    param_dtype="float32",
)

CLIP = dict(                     # models/clip.py: CLIPConfig (vision, text: the towers above)
    embed_dim=512,
    image_encoder="vit",         # vit | a ConvNet name ("clip-rn50", "clip-rn-tiny")
    init_temperature=0.07,       # t = log(1 / 0.07) at initialisation
    max_logit_scale=100.0,
    learn_temperature=True,      # False: t stays at log(1 / init_temperature) (ablation)
    objective="contrastive",     # contrastive | bag_of_words | caption (figure 2's baselines)
)

# The modified ResNets' joint-space width and resolution (models/convnets.py: CLIP_RESNETS).
CLIP_RESNETS = {"rn50": (1024, 224), "rn101": (512, 224), "rn50x4": (640, 288),
                "rn50x16": (768, 384), "rn50x64": (1024, 448)}


def _clip(embed_dim, image_size, patch, v_width, v_layers, v_heads, t_width, t_layers, t_heads):
    return dict(embed_dim=embed_dim,
                vision=dict(image_size=image_size, patch_size=patch, d_model=v_width,
                            n_layer=v_layers, n_head=v_heads),
                text=dict(d_model=t_width, n_layer=t_layers, n_head=t_heads))


def _clip_rn(name, t_width, t_heads):
    embed_dim, image_size = CLIP_RESNETS[name]
    return dict(embed_dim=embed_dim, image_encoder=f"clip-{name}",
                vision=dict(image_size=image_size),
                text=dict(d_model=t_width, n_layer=12, n_head=t_heads))


CLIP_PRESETS = {
    "vit-b-32": _clip(512, 224, 32, 768, 12, 12, 512, 12, 8),
    "vit-b-16": _clip(512, 224, 16, 768, 12, 12, 512, 12, 8),
    "vit-l-14": _clip(768, 224, 14, 1024, 24, 16, 768, 12, 12),
    "vit-l-14-336": _clip(768, 336, 14, 1024, 24, 16, 768, 12, 12),
    **{name: _clip_rn(name, t_width, t_heads) for name, t_width, t_heads in (
        ("rn50", 512, 8), ("rn101", 512, 8), ("rn50x4", 640, 10), ("rn50x16", 768, 12),
        ("rn50x64", 1024, 16))},
    "tiny": dict(embed_dim=64,
                 vision=dict(image_size=32, patch_size=8, channels=1, d_model=64, n_layer=3,
                             n_head=4),
                 text=dict(vocab_size=512, n_ctx=16, d_model=64, n_layer=2, n_head=4)),
}


def clip(name: str = "") -> ml_collections.ConfigDict:
    """CLIPConfig's fields, the vision and text towers nested, for the preset `name`."""
    if name and name not in CLIP_PRESETS:
        raise ValueError(f"unknown CLIP preset {name!r}; choose from {sorted(CLIP_PRESETS)}")
    p = CLIP_PRESETS.get(name, {})
    top = {**CLIP, **{k: v for k, v in p.items() if k not in ("vision", "text")}}
    return ml_collections.ConfigDict(dict(
        embed_dim=top.pop("embed_dim"), image_encoder=top.pop("image_encoder"),
        vision={**VIT, **p.get("vision", {})}, text={**CLIP_TEXT, **p.get("text", {})}, **top))


# ----------------------------------------------------------------------------- EfficientNet

EFFICIENTNET_BASES = (1.2, 1.1, 1.15)   # alpha, beta, gamma of eq. 3 (depth, width, resolution)


def compound_scaling(phi: float) -> tuple[float, float, float]:
    """(d, w, r) = (alpha^phi, beta^phi, gamma^phi)."""
    return tuple(base ** phi for base in EFFICIENTNET_BASES)


# ----------------------------------------------------------------------------- data

TEXT = dict(                     # data/text.py: the text corpora's fields
    source="auto",               # stdlib | hf | files; auto: hf if hf_dataset is set, files if
                                 # files is set, else stdlib
    hf_dataset="",               # e.g. "wikitext", or a builder such as "json" / "text"
    hf_config="",                # e.g. "wikitext-103-raw-v1"; "" = none
    hf_data_files="",            # "a.jsonl,b.jsonl" or "train=a.jsonl,test=b.jsonl"; "" = none
    hf_text_column="text",       # hf: the column holding the text
    files="",                    # source=files: comma-separated paths/globs/directories, split
                                 # 90/5/5 by a hash of each path; or "train=a/*.txt,val=b.txt"
    encoding="utf-8",            # stdlib / files: how the files are decoded
    on_decode_error="skip",      # a file that does not decode: skip (one warning) | error
    max_docs=0,                  # first N non-empty documents of each split; 0 = all
    tokenizer="",                # tokenizer.json, or a directory with vocab.json + merges.txt,
                                 # or "bytes": a token per byte
    vocab_size=8192,             # BPE trained on the train split when `tokenizer` is ""
    cache_dir="~/.cache/flaxpapers",  # trained tokenizers and tokenized splits
)

ICL = dict(                      # data/icl_tasks.py: the in-context-learning mixture
    seed=0,
    numbers=100,                 # number items 0 .. numbers-1
    words=1000,                  # the most frequent words of 4-8 letters of Python's docs
    heldout_frac=0.1,            # words, numbers and arithmetic questions kept out of pretraining
    heldout_tasks="digits_en,fr_en",   # tasks kept out of pretraining altogether
    task_weight=0.5,             # the mixture's weights (normalised): task lists ...
    text_weight=0.5,             # ... and ordinary text
    train_chars=2_000_000,       # the mixture's size (val and test: val_chars each)
    val_chars=100_000,
    min_lines=2,                 # lines per task list (K + 1), drawn uniformly
    max_lines=40,
    described=0.5,               # share of the task lists that begin with the description line
    text_chunk=2000,             # ordinary text comes in pieces of at most this many characters
)

# data/code_tasks.py: GPT-1's transfer table, one offline task per input transformation.
TRANSFER_TASKS = ("package", "claims", "same_package", "next_line")


def text_data(**overrides) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({**TEXT, **overrides})


def icl_data(**overrides) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({**ICL, **overrides})


# -----------------------------------------------------------------------------

def _fields(defaults, presets, family, name, overrides) -> ml_collections.ConfigDict:
    if name and name not in presets:
        raise ValueError(f"unknown {family} preset {name!r}; choose from {sorted(presets)}")
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {family} fields {sorted(unknown)}")
    return ml_collections.ConfigDict({**defaults, **presets.get(name, {}), **overrides})
