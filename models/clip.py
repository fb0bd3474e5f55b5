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
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from models import convnets
from models.layers import (LearnedPositions, TokenEmbedding, check_config, layer_norm,
                           param_count, stack, training_flops_per_token)
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

    def __post_init__(self):
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
        if cfg.eot_token_id < 0:
            eot = jnp.argmax(tokens, axis=-1)
        else:  # the first end-of-text token (padding may reuse its id)
            eot = jnp.argmax(tokens == cfg.eot_token_id, axis=-1)
        return h[jnp.arange(h.shape[0]), eot]


class CLIP(nn.Module):
    cfg: CLIPConfig

    def setup(self):
        cfg = self.cfg
        pdt = jnp.dtype(cfg.vision.param_dtype)
        self.text_encoder = TextTransformer(cfg.text)
        if cfg.image_encoder == "vit":
            self.image_encoder = ViT(cfg.vision)
            self.W_i = self.param(
                "W_i", nn.with_logical_partitioning(
                    nn.initializers.normal(cfg.vision.d_model ** -0.5), ("embed", None)),
                (cfg.vision.d_model, cfg.embed_dim), pdt)
        else:
            dtype = {} if cfg.vision.dtype == "float32" else {"dtype": cfg.vision.dtype}
            self.image_encoder = convnets.create(cfg.image_encoder, cfg.embed_dim, **dtype)
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

    def encode_image(self, images, train: bool = False):
        """I_e = l2_normalize(image_encoder(I) W_i) (no W_i after a ConvNet tower)."""
        I_f = self.image_features(images, train)
        if self.cfg.image_encoder == "vit":
            I_f = I_f @ self.W_i.astype(I_f.dtype)
        return l2_normalize(I_f)

    def encode_text(self, tokens):
        """T_e = l2_normalize(text_encoder(T) W_t)."""
        T_f = self.text_encoder(tokens)
        return l2_normalize(T_f @ self.W_t.astype(T_f.dtype))

    def logit_scale(self):
        """exp(t), clipped at max_logit_scale (100 in the paper)."""
        return jnp.exp(jnp.minimum(self.t, math.log(self.cfg.max_logit_scale)))

    def __call__(self, images, tokens, train: bool = False):
        """-> (I_e [n, d_e], T_e [m, d_e], logits_per_image = I_e T_e^T exp(t) [n, m]); train:
        BatchNorm of a ConvNet tower on the batch's statistics."""
        I_e = self.encode_image(images, train)
        T_e = self.encode_text(tokens)
        logits = (I_e @ T_e.T).astype(jnp.float32) * self.logit_scale()
        return I_e, T_e, logits


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
    3x its forward FLOPs as XLA's cost analysis gives them (convnets.flops), and has no W_i."""
    params = abstract_params(cfg)
    v, t = cfg.vision, cfg.text
    tt = t.n_ctx
    text = tt * training_flops_per_token(_block_params(params["text_encoder"]), t.n_layer, t.d_model, tt)
    if cfg.image_encoder != "vit":
        vision = 3 * convnets.flops(cfg.image_encoder, v.image_size, cfg.embed_dim, v.channels)
        return float(vision + text + 6 * t.d_model * cfg.embed_dim + 6 * batch * cfg.embed_dim)
    tv = v.num_patches + 1
    patch = v.patch_size ** 2 * v.channels * v.d_model
    vision = tv * training_flops_per_token(_block_params(params["image_encoder"]), v.n_layer, v.d_model,
                                           tv) + 6 * patch * v.num_patches
    return float(vision + text + 6 * (v.d_model + t.d_model) * cfg.embed_dim
                 + 6 * batch * cfg.embed_dim)
