"""Vision Transformer (Dosovitskiy et al. 2020) as CLIP's image tower (Radford et al. 2021).

    z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos      (patches of P x P pixels, E a linear map)
    z_0 = LN_pre(z_0)                                   (CLIP's extra LayerNorm before the tower)
    z_l = pre-norm Transformer block(z_{l-1})           for l in 1..L, full attention
    y   = LN_post(z_L^0)                                 (the class token's final state)

Images are NHWC, already normalised.
"""

import dataclasses

import jax.numpy as jnp
from flax import linen as nn

from models.layers import LearnedPositions, check_config, layer_norm, stack


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    image_size: int = 224
    patch_size: int = 32
    channels: int = 3
    d_model: int = 768   # the fields GPTConfig and TextConfig name the same way
    n_layer: int = 12
    n_head: int = 12
    d_ff: int = 0  # 0: 4 * d_model
    act: str = "quick_gelu"  # the released CLIP models; "gelu" for the erf form
    ln_eps: float = 1e-5
    patch_bias: bool = False  # CLIP's patch embedding has no bias; the original ViT's has one
    ln_pre: bool = True       # CLIP's LayerNorm on the embeddings
    attention_impl: str = "auto"
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        check_config(self)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class ViT(nn.Module):
    cfg: ViTConfig

    @nn.compact
    def __call__(self, images):
        """images [batch, H, W, C] -> the class token's normalised final state [batch, d_model]."""
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        expected = (cfg.image_size, cfg.image_size, cfg.channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"expected images [batch, {', '.join(map(str, expected))}] (NHWC), "
                             f"got shape {tuple(images.shape)}")
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image size {cfg.image_size} is not a multiple of the patch "
                             f"size {cfg.patch_size}")
        scale = cfg.d_model ** -0.5  # CLIP's init for the class token and positions
        p = cfg.patch_size
        x = nn.Conv(  # x_p E: a linear map of each P x P patch, as a stride-P convolution
            cfg.d_model, (p, p), strides=(p, p), padding="VALID", use_bias=cfg.patch_bias,
            dtype=dtype, param_dtype=param_dtype, name="patch_embed",
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None, None, None, "embed")))(images)
        x = x.reshape(x.shape[0], -1, cfg.d_model)
        x_class = self.param(
            "class_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(scale), ("embed",)),
            (cfg.d_model,), param_dtype)
        x_class = jnp.broadcast_to(x_class.astype(dtype), (x.shape[0], 1, cfg.d_model))
        e_pos = LearnedPositions(cfg.num_patches + 1, cfg.d_model, init_std=scale,
                                 param_dtype=param_dtype, name="positions")
        z = jnp.concatenate([x_class, x], axis=1) + e_pos(cfg.num_patches + 1).astype(dtype)
        if cfg.ln_pre:
            z = layer_norm("ln_pre", cfg.ln_eps, dtype, param_dtype)(z)
        out_std = scale * (2 * cfg.n_layer) ** -0.5  # CLIP's init for residual projections
        z = stack(z, n_layer=cfg.n_layer, prefix="block_", layer_mask=lambda _: "full",
                  num_heads=cfg.n_head, head_dim=cfg.d_model // cfg.n_head,
                  d_ff=cfg.d_ff or 4 * cfg.d_model, norm="pre", act=cfg.act, ln_eps=cfg.ln_eps,
                  out_init_std=out_std, attention_impl=cfg.attention_impl, dtype=dtype,
                  param_dtype=param_dtype)
        return layer_norm("ln_post", cfg.ln_eps, dtype, param_dtype)(z[:, 0])
