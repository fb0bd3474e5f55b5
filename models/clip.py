"""CLIP (Radford et al. 2021): an image and a text encoder trained so matching pairs align.

The paper's pseudo-code (figure 3):

    I_f = image_encoder(I)                    # [n, d_i]
    T_f = text_encoder(T)                     # [n, d_t]
    I_e = l2_normalize(I_f @ W_i)             # [n, d_e]
    T_e = l2_normalize(T_f @ W_t)             # [n, d_e]
    logits = I_e @ T_e.T * exp(t)             # [n, n]

t is a learned log inverse temperature, initialised to log(1/0.07); exp(t) is clipped at 100
"to prevent training instability". Here the clip is applied in the forward pass, so it holds
whatever the optimiser does to t (the gradient through t stops while clipped).
The image encoder is a ViT (models/vit.py) or, with image_encoder set to a ConvNet registry name
such as "clip-rn50", CLIP's modified ResNet (models/clip_resnet.py), whose attention pooling
already projects to the joint space: that tower has no W_i, and its BatchNorm statistics live in
the "batch_stats" collection (pass train=True with it mutable while training).
The text encoder is a causal Transformer whose feature is the final LayerNorm's output at the
end-of-text token. The symmetric loss lives in train/objectives.py.

Figure 2's other objectives (`objective`), each predicting the text from the image embedding
I_f W_i, with no text encoder:

    bag_of_words   P(w | I) = softmax(I_f W_i W_bow): the caption's words, as a distribution
                   (the loss: cross-entropy against the caption's normalised word counts)
    caption        a causal Transformer decoder over the caption (the text tower's sizes) whose
                   blocks also attend to I_f W_i: P(T | I) = prod_t P(T_t | T_<t, I)

Zero-shot with them scores a prompt by its log-likelihood given the image (log_likelihood).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from models import convnets
from models.layers import (DecoderBlock, LearnedPositions, TokenEmbedding, check_config,
                           layer_norm, param_count, stack, training_flops_per_token)
from models.vit import ViT, ViTConfig


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 49408
    n_ctx: int = 77
    d_model: int = 512
    n_layer: int = 12
    n_head: int = 8
    d_ff: int = 0  # 0: 4 * d_model
    act: str = "quick_gelu"
    ln_eps: float = 1e-5
    eot_token_id: int = -1  # -1: each sequence's largest id (CLIP's tokenizer gives EOT the top id)
    attention_impl: str = "auto"
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        check_config(self)


OBJECTIVES = ("contrastive", "bag_of_words", "caption")


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 512
    # "vit": the ViT of `vision`; else a ConvNet registry name ("clip-rn50", "clip-rn-tiny")
    # built with embed_dim outputs, fed vision.image_size x vision.channels images (the other
    # ViT fields then unused; vision.dtype its compute dtype).
    image_encoder: str = "vit"
    vision: ViTConfig = dataclasses.field(default_factory=ViTConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    init_temperature: float = 0.07  # t = log(1 / 0.07) at initialisation
    max_logit_scale: float = 100.0
    learn_temperature: bool = True  # False: t stays at log(1 / init_temperature) (ablation)
    # contrastive (CLIP) | bag_of_words | caption: figure 2's objectives
    objective: str = "contrastive"

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose from {OBJECTIVES}")
        if self.image_encoder != "vit" and self.image_encoder not in convnets.REGISTRY:
            raise ValueError(f"unknown image_encoder {self.image_encoder!r}; choose 'vit' or a "
                             f"ConvNet such as {sorted(convnets.CLIP_RESNETS)} or 'clip-rn-tiny'")


def _clip(embed_dim, image_size, patch, v_width, v_layers, v_heads, t_width, t_layers, t_heads):
    return CLIPConfig(
        embed_dim=embed_dim,
        vision=ViTConfig(image_size=image_size, patch_size=patch, d_model=v_width,
                         n_layer=v_layers, n_head=v_heads),
        text=TextConfig(d_model=t_width, n_layer=t_layers, n_head=t_heads))


def _clip_rn(name, t_width, t_heads):
    _, _, embed_dim, image_size = convnets.CLIP_RESNETS[f"clip-{name}"]
    return CLIPConfig(embed_dim=embed_dim, image_encoder=f"clip-{name}",
                      vision=ViTConfig(image_size=image_size),
                      text=TextConfig(d_model=t_width, n_layer=12, n_head=t_heads))


PRESETS: dict[str, CLIPConfig] = {
    # Paper table 20 (ViT hyperparameters): embed dim, input resolution, vision layers / width /
    # heads, text layers / width / heads; text context 77, vocabulary 49,408 for all.
    "vit-b-32": _clip(512, 224, 32, 768, 12, 12, 512, 12, 8),
    "vit-b-16": _clip(512, 224, 16, 768, 12, 12, 512, 12, 8),
    "vit-l-14": _clip(768, 224, 14, 1024, 24, 16, 768, 12, 12),
    "vit-l-14-336": _clip(768, 336, 14, 1024, 24, 16, 768, 12, 12),
    # Paper table 19 (ResNet hyperparameters): the modified ResNet of models/clip_resnet.py
    # (its layers, width, embed dim and resolution in convnets.CLIP_RESNETS), text width / heads.
    **{name: _clip_rn(name, t_width, t_heads) for name, t_width, t_heads in (
        ("rn50", 512, 8), ("rn101", 512, 8), ("rn50x4", 640, 10), ("rn50x16", 768, 12),
        ("rn50x64", 1024, 16))},
    # CPU-sized: 32x32 one-channel digit scenes, captions of at most a few words.
    "tiny": CLIPConfig(
        embed_dim=64,
        vision=ViTConfig(image_size=32, patch_size=8, channels=1, d_model=64, n_layer=3,
                         n_head=4),
        text=TextConfig(vocab_size=512, n_ctx=16, d_model=64, n_layer=2, n_head=4)),
}


def preset(name: str) -> CLIPConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown CLIP preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]


def l2_normalize(x, axis=-1, eps=1e-12):
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps))


def eot_positions(tokens, eot_token_id: int):
    """Where each sequence's end-of-text token is: the first `eot_token_id`, or (-1) the largest
    id (CLIP's tokenizer gives EOT the top id)."""
    if eot_token_id < 0:
        return jnp.argmax(tokens, axis=-1)
    return jnp.argmax(tokens == eot_token_id, axis=-1)   # padding may reuse its id


def caption_mask(tokens, eot_token_id: int, with_eot: bool = False):
    """[SOT] w_1 ... w_k [EOT] padding -> True at the words (and at EOT when with_eot): what
    the predictive objectives predict. By position, so padding may reuse any id."""
    position = jnp.arange(tokens.shape[-1])
    eot = eot_positions(tokens, eot_token_id)[..., None]
    return (position >= 1) & ((position <= eot) if with_eot else (position < eot))


class TextTransformer(nn.Module):
    cfg: TextConfig

    @nn.compact
    def __call__(self, tokens):
        """tokens int [batch, T <= context] -> LN(h_L) at the end-of-text token: [batch, d_model]."""
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        if tokens.ndim != 2 or tokens.shape[1] > cfg.n_ctx:
            raise ValueError(f"expected tokens [batch, <= {cfg.n_ctx}], "
                             f"got shape {tuple(tokens.shape)}")
        wte = TokenEmbedding(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
                             name="token_embedding")
        wpe = LearnedPositions(cfg.n_ctx, cfg.d_model, init_std=0.01,
                               param_dtype=param_dtype, name="positions")
        h = wte(tokens) + wpe(tokens.shape[1]).astype(dtype)
        out_std = cfg.d_model ** -0.5 * (2 * cfg.n_layer) ** -0.5
        h = stack(h, n_layer=cfg.n_layer, prefix="block_", num_heads=cfg.n_head,
                  head_dim=cfg.d_model // cfg.n_head, d_ff=cfg.d_ff or 4 * cfg.d_model,
                  norm="pre", act=cfg.act, ln_eps=cfg.ln_eps, out_init_std=out_std,
                  attention_impl=cfg.attention_impl, dtype=dtype, param_dtype=param_dtype)
        h = layer_norm("ln_final", cfg.ln_eps, dtype, param_dtype)(h)
        return h[jnp.arange(h.shape[0]), eot_positions(tokens, cfg.eot_token_id)]


class CaptionDecoder(nn.Module):
    """The caption objective's language model: causal blocks over the caption, each also
    attending to the image embedding (one memory token); logits through the tied W_e."""
    cfg: TextConfig

    @nn.compact
    def __call__(self, tokens, image):
        """tokens int [batch, T], image [batch, d] -> next-token logits [batch, T, vocab]."""
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        wte = TokenEmbedding(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
                             name="token_embedding")
        wpe = LearnedPositions(cfg.n_ctx, cfg.d_model, init_std=0.01, param_dtype=param_dtype,
                               name="positions")
        h = wte(tokens) + wpe(tokens.shape[1]).astype(dtype)
        memory = image[:, None, :].astype(dtype)
        out_std = cfg.d_model ** -0.5 * (2 * cfg.n_layer) ** -0.5
        for layer in range(cfg.n_layer):
            h = DecoderBlock(cfg.n_head, cfg.d_model // cfg.n_head, cfg.d_ff or 4 * cfg.d_model,
                             norm="pre", act=cfg.act, ln_eps=cfg.ln_eps, out_init_std=out_std,
                             attention_impl=cfg.attention_impl, dtype=dtype,
                             param_dtype=param_dtype, name=f"block_{layer}")(h, memory)
        h = layer_norm("ln_final", cfg.ln_eps, dtype, param_dtype)(h)
        return wte.attend(h).astype(jnp.float32)


class CLIP(nn.Module):
    cfg: CLIPConfig

    def setup(self):
        cfg = self.cfg
        pdt = jnp.dtype(cfg.vision.param_dtype)
        if cfg.image_encoder == "vit":
            self.image_encoder = ViT(cfg.vision)
            self.W_i = self.param(
                "W_i", nn.with_logical_partitioning(
                    nn.initializers.normal(cfg.vision.d_model ** -0.5), ("embed", None)),
                (cfg.vision.d_model, cfg.embed_dim), pdt)
        else:
            dtype = {} if cfg.vision.dtype == "float32" else {"dtype": cfg.vision.dtype}
            self.image_encoder = convnets.create(cfg.image_encoder, cfg.embed_dim, **dtype)
        if cfg.objective == "bag_of_words":
            self.W_bow = self.param("W_bow", nn.with_logical_partitioning(
                nn.initializers.normal(cfg.embed_dim ** -0.5), ("embed", "vocab")),
                (cfg.embed_dim, cfg.text.vocab_size), pdt)
        if cfg.objective == "caption":
            self.caption_decoder = CaptionDecoder(cfg.text)
        if cfg.objective != "contrastive":
            return
        self.text_encoder = TextTransformer(cfg.text)
        self.W_t = self.param(
            "W_t", nn.with_logical_partitioning(
                nn.initializers.normal(cfg.text.d_model ** -0.5), ("embed", None)),
            (cfg.text.d_model, cfg.embed_dim), pdt)
        t0 = math.log(1.0 / cfg.init_temperature)
        if cfg.learn_temperature:
            self.t = self.param("t", nn.with_logical_partitioning(
                nn.initializers.constant(t0), ()), (), jnp.float32)
        else:
            self.t = jnp.asarray(t0, jnp.float32)

    def image_features(self, images, train: bool = False):
        """I_f: the ViT's class token, or the ConvNet's output (already in the joint space)."""
        if self.cfg.image_encoder == "vit":
            return self.image_encoder(images)
        v = self.cfg.vision
        expected = (v.image_size, v.image_size, v.channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"expected images [batch, {', '.join(map(str, expected))}] (NHWC), "
                             f"got shape {tuple(images.shape)}")
        return self.image_encoder(images, train=train)

    def image_embedding(self, images, train: bool = False):
        """I_f W_i, before normalisation (no W_i after a ConvNet tower)."""
        I_f = self.image_features(images, train)
        if self.cfg.image_encoder == "vit":
            I_f = I_f @ self.W_i.astype(I_f.dtype)
        return I_f

    def encode_image(self, images, train: bool = False):
        """I_e = l2_normalize(image_encoder(I) W_i)."""
        return l2_normalize(self.image_embedding(images, train))

    def bag_of_words(self, images, train: bool = False):
        """log P(w | I) = log_softmax(I_f W_i W_bow) over the vocabulary: [n, vocab]."""
        x = self.image_embedding(images, train)
        return jax.nn.log_softmax((x @ self.W_bow.astype(x.dtype)).astype(jnp.float32))

    def caption_logits(self, images, tokens, train: bool = False):
        """The caption decoder's next-token logits [n, T, vocab] given each image's embedding."""
        return self.caption_decoder(tokens, self.image_embedding(images, train))

    def decode_caption(self, tokens, image):
        """The caption decoder on given image embeddings [n, d_e] (for log_likelihood)."""
        return self.caption_decoder(tokens, image)

    def encode_text(self, tokens):
        """T_e = l2_normalize(text_encoder(T) W_t)."""
        T_f = self.text_encoder(tokens)
        return l2_normalize(T_f @ self.W_t.astype(T_f.dtype))

    def logit_scale(self):
        """exp(t), clipped at max_logit_scale (100 in the paper)."""
        return jnp.exp(jnp.minimum(self.t, math.log(self.cfg.max_logit_scale)))

    def __call__(self, images, tokens, train: bool = False):
        """-> (I_e [n, d_e], T_e [m, d_e], logits_per_image = I_e T_e^T exp(t) [n, m]); train:
        BatchNorm of a ConvNet tower on the batch's statistics. The predictive objectives
        return their own outputs: log P(w | I) [n, vocab] (bag_of_words), the caption
        decoder's logits [n, T, vocab] (caption)."""
        if self.cfg.objective == "bag_of_words":
            return self.bag_of_words(images, train)
        if self.cfg.objective == "caption":
            return self.caption_logits(images, tokens, train)
        I_e = self.encode_image(images, train)
        T_e = self.encode_text(tokens)
        logits = (I_e @ T_e.T).astype(jnp.float32) * self.logit_scale()
        return I_e, T_e, logits


def log_likelihood(model: CLIP, variables, images, tokens):
    """log P(text_j | image_i) [n, m] under a predictive objective: the sum of the words'
    log-probabilities (bag_of_words), or the log-probability of the tokens after SOT, EOT
    included (caption: one decoder pass per text over all n images)."""
    cfg = model.cfg
    if cfg.objective == "bag_of_words":
        log_p = model.apply(variables, images, method="bag_of_words")             # [n, V]
        words = caption_mask(tokens, cfg.text.eot_token_id).astype(log_p.dtype)  # [m, T]
        return jnp.einsum("nmt,mt->nm", log_p[:, tokens], words)
    if cfg.objective != "caption":
        raise ValueError(f"log_likelihood needs a predictive objective (bag_of_words, "
                         f"caption), not {cfg.objective!r}")
    image = model.apply(variables, images, method="image_embedding")
    predicted = caption_mask(tokens, cfg.text.eot_token_id, with_eot=True)[:, 1:]

    def one_text(text):
        t, mask = text
        logits = model.apply(variables, jnp.broadcast_to(t, (len(image), len(t))), image,
                             method="decode_caption")[:, :-1]
        log_p = jnp.take_along_axis(jax.nn.log_softmax(logits), t[None, 1:, None].repeat(
            len(image), 0), axis=-1)[..., 0]                                  # [n, T - 1]
        return log_p @ mask.astype(log_p.dtype)
    return jax.lax.map(one_text, (tokens, predicted)).T


def dummy_inputs(cfg: CLIPConfig, batch: int = 1):
    v = cfg.vision
    return (jnp.zeros((batch, v.image_size, v.image_size, v.channels), jnp.float32),
            jnp.zeros((batch, cfg.text.n_ctx), jnp.int32))


def abstract_params(cfg: CLIPConfig):
    """Parameter shapes of a config, computed without allocating them."""
    variables = jax.eval_shape(lambda: CLIP(cfg).init(jax.random.key(0), *dummy_inputs(cfg)))
    return nn.meta.unbox(variables["params"])


def _block_params(tower) -> int:
    """Parameters of a Transformer tower's blocks."""
    return param_count([sub for name, sub in tower.items() if name.startswith("block_")])


def flops_per_pair(cfg: CLIPConfig, batch: int) -> float:
    """Training FLOPs per image-text pair in a batch of `batch` pairs, counted as
    gpt.flops_per_token counts them (layers.training_flops_per_token over every position),
    for each tower: the ViT over its patches and class token (the patch embedding a matmul per
    patch), the text Transformer over its full context; then W_i, W_t and the pair's row of the
    n x n logits (6 n d_e: every image is scored against every text). A ConvNet tower counts
    3x its forward FLOPs as XLA's cost analysis gives them (convnets.flops), and has no W_i.
    The predictive objectives count, in place of the text side, W_bow (bag_of_words) or the
    caption decoder over the full context with its tied output layer (caption)."""
    params = abstract_params(cfg)
    v, t = cfg.vision, cfg.text
    tt = t.n_ctx
    if cfg.objective == "contrastive":
        text = tt * training_flops_per_token(_block_params(params["text_encoder"]), t.n_layer,
                                             t.d_model, tt)
        text += 6 * t.d_model * cfg.embed_dim + 6 * batch * cfg.embed_dim
    elif cfg.objective == "bag_of_words":
        text = 6 * cfg.embed_dim * t.vocab_size
    else:
        text = tt * (training_flops_per_token(_block_params(params["caption_decoder"]),
                                              t.n_layer, t.d_model, tt) + 6 * t.d_model * t.vocab_size)
    if cfg.image_encoder != "vit":
        return float(3 * convnets.flops(cfg.image_encoder, v.image_size, cfg.embed_dim,
                                        v.channels) + text)
    tv = v.num_patches + 1
    patch = v.patch_size ** 2 * v.channels * v.d_model
    vision = tv * training_flops_per_token(_block_params(params["image_encoder"]), v.n_layer,
                                           v.d_model, tv) + 6 * patch * v.num_patches
    return float(vision + text + 6 * v.d_model * cfg.embed_dim)
