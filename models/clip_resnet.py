"""CLIP's modified ResNet image encoder (Radford et al. 2021, section 2.4).

Three changes to the ResNet of He et al. (models/resnet.py, bottleneck blocks):

1. Stem: three 3x3 convolutions (width/2 with stride 2, width/2, width), each with BatchNorm
   and ReLU, then a 2x2 average pooling, in place of the 7x7/2 convolution and max pooling
   (ResNet-D, He et al. 2019).
2. Anti-aliased strided convolutions (Zhang 2019's rect-2 blur pooling): every convolution
   runs with stride 1 and an s x s average pooling of stride s does the downsampling: after
   the 3x3 convolution in a block, and before the 1x1 projection of its shortcut.
3. Attention pooling in place of global average pooling: "a single layer of transformer-style
   multi-head QKV attention where the query is conditioned on the global average-pooled
   representation of the image":

       X = [mean(x); x_1; ...; x_HW] + E_pos                 (HW + 1 tokens of 32 w channels)
       q = mean(x)' W_q,  K = X W_k,  V = X W_v             (per head, d_head = 32 w / heads)
       y = concat_h(softmax(q_h K_h^T / sqrt(d_head)) V_h) W_c     -> [embed_dim]

   W_c projects to CLIP's joint embedding dimension, so this tower needs no separate W_i.

Stages of w, 2w, 4w, 8w planes (x4 at a bottleneck's output); the table of released models
(paper table 19; heads = 32 w / 64):

    RN50    (3, 4, 6, 3)    w 64   embed 1024  heads 32  224 px
    RN101   (3, 4, 23, 3)   w 64   embed 512   heads 32  224 px
    RN50x4  (4, 6, 10, 6)   w 80   embed 640   heads 40  288 px
    RN50x16 (6, 8, 18, 8)   w 96   embed 768   heads 48  384 px
    RN50x64 (3, 15, 36, 10) w 128  embed 1024  heads 64  448 px

E_pos has one row per position of the final feature map, so its size is fixed by the images
the model is initialised with (7 x 7 + 1 rows at 224 px). `num_classes` is the output width
(the embedding dimension), as the ConvNet registry names every model's last layer.
stem_stride=1 keeps the first convolution at full resolution (for 32x32 inputs).
"""

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from models.conv import BatchNorm, avg_pool, check_images, conv

EXPANSION = 4


class AntiAliasedBottleneck(nn.Module):
    """relu(F(x) + shortcut(x)), F = 1x1 -> 3x3 -> avgpool(s) -> 1x1 (x4), BN after each
    convolution; the shortcut is avgpool(s) -> 1x1 conv -> BN when the shape changes."""

    planes: int
    s: int = 1
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x, train: bool = False):
        n_out = self.planes * EXPANSION
        y = nn.relu(BatchNorm(name="bn1")(conv(self.planes, 1, padding=0, bias=False,
                                               name="conv1", dtype=self.dtype)(x), train))
        y = nn.relu(BatchNorm(name="bn2")(conv(self.planes, 3, padding=1, bias=False,
                                               name="conv2", dtype=self.dtype)(y), train))
        if self.s > 1:
            y = avg_pool(y, self.s)
        y = conv(n_out, 1, padding=0, bias=False, name="conv3", dtype=self.dtype)(y)
        # Zero-initialised last scale: each block starts as its shortcut (as CLIP initialises).
        y = BatchNorm(scale_init=nn.initializers.zeros, name="bn3")(y, train)
        identity = x
        if self.s > 1 or x.shape[-1] != n_out:
            if self.s > 1:
                identity = avg_pool(identity, self.s)
            identity = conv(n_out, 1, padding=0, bias=False, name="proj_conv",
                            dtype=self.dtype)(identity)
            identity = BatchNorm(name="proj_bn")(identity, train)
        return nn.relu(y + identity)


class AttentionPool(nn.Module):
    """[batch, H, W, C] -> [batch, out]: one multi-head attention whose only query is the
    global average-pooled feature, over it and every position, with learned positions."""

    num_heads: int
    out: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        if c % self.num_heads:
            raise ValueError(f"attention pooling: {c} channels do not split into "
                             f"{self.num_heads} heads")
        d_head = c // self.num_heads
        x = x.reshape(b, h * w, c)
        tokens = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
        e_pos = self.param("positional_embedding", nn.initializers.normal(c ** -0.5),
                           (h * w + 1, c), jnp.float32)
        tokens = tokens + e_pos.astype(tokens.dtype)

        def dense(n, name):
            return nn.Dense(n, kernel_init=nn.initializers.normal(c ** -0.5), dtype=self.dtype,
                            name=name)

        q = dense(c, "q_proj")(tokens[:, 0]).reshape(b, self.num_heads, d_head)
        k = dense(c, "k_proj")(tokens).reshape(b, h * w + 1, self.num_heads, d_head)
        v = dense(c, "v_proj")(tokens).reshape(b, h * w + 1, self.num_heads, d_head)
        scores = jnp.einsum("bnd,btnd->bnt", q, k).astype(jnp.float32) / math.sqrt(d_head)
        attn = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        y = jnp.einsum("bnt,btnd->bnd", attn, v).reshape(b, c)
        return dense(self.out, "c_proj")(y)


class CLIPResNet(nn.Module):
    """CLIP's modified ResNet: images [batch, H, W, C] -> [batch, num_classes] (the image
    embedding before CLIP's normalisation)."""

    num_classes: int = 1024   # embed_dim
    layers: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    heads: int = 32
    stem_stride: int = 2
    dtype: str = "float32"    # compute dtype: float32 | bfloat16

    @nn.compact
    def __call__(self, images, train: bool = False):
        check_images(images, "CLIPResNet")
        if len(self.layers) != 4:
            raise ValueError(f"CLIPResNet has four stages, got layers {self.layers}")
        w = self.width
        x = images
        for i, (n_c, s) in enumerate([(w // 2, self.stem_stride), (w // 2, 1), (w, 1)], 1):
            x = conv(n_c, 3, s, padding=1, bias=False, name=f"conv{i}", dtype=self.dtype)(x)
            x = nn.relu(BatchNorm(name=f"bn{i}")(x, train))
        x = avg_pool(x, 2)
        for stage, n_blocks in enumerate(self.layers):
            for j in range(n_blocks):
                s = 2 if stage > 0 and j == 0 else 1
                x = AntiAliasedBottleneck(w * 2 ** stage, s, self.dtype,
                                          name=f"conv{stage + 2}_{j + 1}")(x, train)
        return AttentionPool(self.heads, self.num_classes, self.dtype, name="attnpool")(x)
