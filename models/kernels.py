"""Hardware kernels behind the paper's operations: the same math, laid out for a machine.

models/attention.py writes attention as the paper does and dispatches here for implementation
"xla_custom" (CPUs); the dense layers and the tied output projection compute through
`token_matmul`; models/conv.py's convolutions through `conv_1x1_as_matmul` (1x1 as matmuls,
depthwise as shifted sums on CPUs) and its max pooling, on CPUs, through `max_pool_as_shifts`.
"""

import functools
import math

import jax
import jax.numpy as jnp


def query_blocks(kind: str, q_len: int, kv_len: int, window: int | None = None,
                 n: int = 4) -> tuple:
    """(q0, q1, k0, k1) per block of queries: the keys [k0, k1) that some query in [q0, q1) may
    see. Causal and local masks split the queries in n blocks, so each block skips the keys
    after it (and, for local windows, those before its window): 3/8 of the causal scores at
    n = 4. More, smaller blocks cost more in per-matmul overhead than they save."""
    if kind == "full" or q_len != kv_len or q_len % n:
        return ((0, q_len, 0, kv_len),)
    size = q_len // n
    return tuple((q0, q0 + size, 0 if kind == "causal" else max(0, q0 - window + 1), q0 + size)
                 for q0 in range(0, q_len, size))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def headmajor_attention(q, k, v, allowed, blocks: tuple):
    """softmax(q k^T / sqrt(d) masked to `allowed`) v for q, k, v [batch, heads, time, head_dim],
    computed per block of queries over the keys the block may see (`query_blocks`).

    With heads before time every score and weighted-sum matmul is a contiguous batched matmul,
    and the backward needs no reduction over the [time, time] probabilities: with O = P V,
        dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dO * O)),   dQ = dS K,  dK = dS^T Q
    (rowsum(dP * P) = rowsum(dO * O), the identity FlashAttention's backward uses). Scores and
    softmax in float32; P is kept for the backward."""
    return _headmajor_forward(q, k, v, allowed, blocks)[0]


def _headmajor_forward(q, k, v, allowed, blocks):
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    outs, probs = [], []
    for q0, q1, k0, k1 in blocks:
        s = jnp.einsum("bhqd,bhkd->bhqk", q[:, :, q0:q1], k[:, :, k0:k1],
                       preferred_element_type=jnp.float32)
        s = jnp.where(allowed[..., q0:q1, k0:k1], s, jnp.finfo(jnp.float32).min)
        e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
        p = (e / jnp.sum(e, axis=-1, keepdims=True)).astype(v.dtype)
        outs.append(jnp.einsum("bhqk,bhkd->bhqd", p, v[:, :, k0:k1]))
        probs.append(p)
    out = jnp.concatenate(outs, axis=2)
    return out, (q, k, v, tuple(probs), out)


def _headmajor_backward(blocks, residuals, d_out):
    q, k, v, probs, out = residuals     # q already scaled
    scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    dq, dk, dv = [], jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
    for (q0, q1, k0, k1), p in zip(blocks, probs):
        d_block = d_out[:, :, q0:q1]
        dv = dv.at[:, :, k0:k1].add(jnp.einsum("bhqk,bhqd->bhkd", p, d_block.astype(p.dtype),
                                               preferred_element_type=jnp.float32))
        dp = jnp.einsum("bhqd,bhkd->bhqk", d_block, v[:, :, k0:k1],
                        preferred_element_type=jnp.float32)
        ds = (p.astype(jnp.float32) * (dp - row[:, :, q0:q1])).astype(q.dtype)
        dq.append(jnp.einsum("bhqk,bhkd->bhqd", ds, k[:, :, k0:k1]) * scale)
        dk = dk.at[:, :, k0:k1].add(jnp.einsum("bhqk,bhqd->bhkd", ds, q[:, :, q0:q1],
                                               preferred_element_type=jnp.float32))
    return (jnp.concatenate(dq, axis=2), dk.astype(k.dtype), dv.astype(v.dtype), None)


headmajor_attention.defvjp(_headmajor_forward, _headmajor_backward)


def token_matmul(x, kernel, n_in: int = 1):
    """x [..., *in] contracted with kernel [*in, *out] as one 2-D matmul: the leading (token)
    dims, the kernel's input dims and its output dims each merged into one.

    The same product as a tensordot, but its kernel gradient becomes a single
    [tokens, in]^T [tokens, out] matmul that XLA lays out far better on CPU than a rank-3
    contraction over (batch, time) (about 9% of a GPT training step on 2 cores), and a 2-D
    kernel spares the transposes XLA adds around a rank-4 one (about 5% more). A sharded dim must
    lead its merged group (as heads do in [d, heads, 3, head_dim]), so the merge keeps it."""
    lead, in_shape = x.shape[:x.ndim - n_in], kernel.shape[:n_in]
    out_shape = kernel.shape[n_in:]
    y = x.reshape(-1, math.prod(in_shape)) @ kernel.reshape(math.prod(in_shape), -1)
    return y.reshape(*lead, *out_shape)


NHWC_HWIO = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))   # lax's dimension numbers for 2-D NHWC


def conv_1x1_as_matmul(lhs, rhs, window_strides, padding, lhs_dilation=None,
                       rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                       precision=None):
    """lax.conv_general_dilated for Conv2d, with two special cases of NHWC convolutions that
    XLA:CPU computes far below the speed of the same sums written plainly:

    - a 1x1 convolution (no padding or groups) as the matmul it is, y[n, i, j] = x[n, s i, s j] W;
      XLA:CPU computes its kernel gradient as a convolution whose window is the whole feature
      map, about ten times slower (ResNet-50's training step was 1.9x slower for it);
    - on a CPU, a depthwise convolution (one filter per channel) as f*f shifted, strided slices
      of the padded input times one weight each, y = sum_{u,v} x[s i + u, s j + v] * w[u, v],
      whose gradients are slices and pads again (2-25x faster than XLA:CPU's grouped
      convolution for MobileNet's and EfficientNet's shapes, forward and backward)."""
    plain = all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    nhwc = tuple(dimension_numbers) == NHWC_HWIO
    if (rhs.shape[:2] == (1, 1) and feature_group_count == 1 and plain and nhwc
            and all(tuple(p) == (0, 0) for p in padding)):
        s_h, s_w = window_strides
        return pointwise_matmul(lhs[:, ::s_h, ::s_w, :], rhs[0, 0], precision)
    if (feature_group_count > 1 and feature_group_count == lhs.shape[-1] == rhs.shape[-1]
            and rhs.shape[2] == 1 and plain and nhwc and not isinstance(padding, str)
            and jax.default_backend() == "cpu"):
        return depthwise_as_shifts(lhs, rhs, window_strides, padding)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers,
                                        feature_group_count=feature_group_count,
                                        precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def pointwise_matmul(x, w, precision=None):
    """x [n, h, w, c_in] @ w [c_in, c_out], with the kernel gradient written as
    x^T [c_in, n h w] @ dy [n h w, c_out] on 2-D operands. JAX's transpose rule computes it as
    dy^T x and then transposes the [c_out, c_in] result, an order that oneDNN and XLA:CPU run
    3-5x slower for ResNet's 1x1 shapes."""
    return _pointwise_forward(x, w, precision)[0]


def _pointwise_forward(x, w, precision):
    return jax.lax.dot_general(x, w, (((3,), (0,)), ((), ())), precision=precision), (x, w)


def _pointwise_backward(precision, residuals, dy):
    x, w = residuals
    dx = jax.lax.dot_general(dy, w, (((3,), (1,)), ((), ())), precision=precision)
    dw = jax.lax.dot_general(x.reshape(-1, x.shape[3]), dy.reshape(-1, dy.shape[3]),
                             (((0,), (0,)), ((), ())), precision=precision)
    return dx.astype(x.dtype), dw.astype(w.dtype)


pointwise_matmul.defvjp(_pointwise_forward, _pointwise_backward)


def depthwise_as_shifts(x, w, strides, padding):
    """Depthwise cross-correlation of x [n, H, W, C] with w [f_h, f_w, 1, C]: the sum of the
    f_h * f_w strided windows of the padded input, each times its filter tap."""
    (s_h, s_w), (f_h, f_w) = strides, w.shape[:2]
    x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    h, wd = (x.shape[1] - f_h) // s_h + 1, (x.shape[2] - f_w) // s_w + 1
    # From zeros, so the traced program counts 2 f_h f_w FLOPs per output, as a convolution
    # does (XLA drops the zero when it compiles).
    y = jnp.zeros((x.shape[0], h, wd, x.shape[3]), jnp.result_type(x, w))
    for u, v, view in _windows(x, (f_h, f_w), (s_h, s_w), (h, wd)):
        y = y + view * w[u, v, 0]
    return y


def _windows(x, f: tuple[int, int], s: tuple[int, int], out: tuple[int, int]):
    """The f_h * f_w strided views x[:, s_h i + u, s_w j + v] of an already padded x, with
    their (u, v): the taps of depthwise convolution and max pooling."""
    (f_h, f_w), (s_h, s_w), (h, w) = f, s, out
    for u in range(f_h):
        for v in range(f_w):
            yield u, v, x[:, u:u + s_h * (h - 1) + 1:s_h, v:v + s_w * (w - 1) + 1:s_w]


def _pool_geometry(x, f, s, pads):
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    return xp, ((xp.shape[1] - f) // s + 1, (xp.shape[2] - f) // s + 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool_as_shifts(x, f: int, s: int, pads: tuple):
    """Max pooling of x [n, H, W, C] over f x f windows, stride s, padding `pads` ((top,
    bottom), (left, right)) of -inf: the maximum of the f*f strided views.

    Its gradient goes to the first maximum of each window in row-major order (as lax's
    select-and-scatter and torch's max_pool2d route it), written as masks and interior pads:
    XLA:CPU expands select-and-scatter into a reduce-window that carries an iota per dimension
    and a scatter, several times the whole pooling's memory traffic."""
    return _max_pool_forward(x, f, s, pads)[0]


def _max_pool_forward(x, f, s, pads):
    xp, out = _pool_geometry(x, f, s, pads)
    y = functools.reduce(jnp.maximum, (view for _, _, view in _windows(xp, (f, f), (s, s), out)))
    return y, (x, y)


def _max_pool_backward(f, s, pads, residuals, dy):
    x, y = residuals
    xp, (h, w) = _pool_geometry(x, f, s, pads)
    taken = jnp.zeros(y.shape, bool)
    dxp = jnp.zeros(xp.shape, dy.dtype)
    zero = jnp.zeros((), dy.dtype)
    for u, v, view in _windows(xp, (f, f), (s, s), (h, w)):
        hit = (view == y) & ~taken
        taken = taken | hit
        # dy where this tap was the window's maximum, placed at s i + u, s j + v
        placed = jax.lax.pad(jnp.where(hit, dy, zero), zero,
                             ((0, 0, 0), (u, xp.shape[1] - u - s * (h - 1) - 1, s - 1),
                              (v, xp.shape[2] - v - s * (w - 1) - 1, s - 1), (0, 0, 0)))
        dxp = dxp + placed
    (top, _), (left, _) = pads
    return (dxp[:, top:top + x.shape[1], left:left + x.shape[2]],)


max_pool_as_shifts.defvjp(_max_pool_forward, _max_pool_backward)
