"""Table 1 of Vaswani et al. (2017), measured: the cost of four layer types mapping n positions
of width d to n positions of width d.

    layer type                    complexity per layer   sequential ops   maximum path length
    self-attention                O(n^2 d)               O(1)             O(1)
    recurrent                     O(n d^2)               O(n)             O(n)
    convolutional                 O(k n d^2)             O(1)             O(log_k(n)), O(n/k) contiguous
    self-attention (restricted)   O(r n d)               O(1)             O(n/r)

    python -m experiments.attention_complexity [--n=128,256,512,1024] [--d=32,64,128]
        [--k=3] [--r=17] [--plot=docs/figures/attention_complexity.png] [--out=DIR]

What each column measures:
- FLOPs: XLA's cost analysis of the compiled forward of one layer on one sequence
  (jax.jit(...).lower(...).compile().cost_analysis()). XLA counts a loop's body once, so the
  recurrent layer's count is the whole program's plus (n - 1) times one compiled cell step.
- time: median wall clock of the jitted forward and of forward + backward (the gradient with
  respect to the input and the parameters).
- exponents: least squares of log(cost) = a log n + b log d + c over the grid, beside the
  paper's; they only show the paper's terms where those dominate (self-attention's n^2 d needs
  n >> 1; the softmax's n^2 per head adds a d-independent term).
- sequential operations: the trip counts of the loops in the layer's jaxpr (scan / while),
  nested ones multiplied; 1 where there is none.
- maximum path length: the longest, over pairs (output i, input j) that are connected at all,
  of the fewest position-to-position hops from j to i. A hop is one stacked layer, or for the
  recurrent layer one transition h_t = cell(h_{t-1}, x_t) (all t at once); which positions it
  connects is read off the Jacobian of one hop (exact zeros where no dependence exists), and
  hops are composed as boolean matrix products.

The layers: self-attention is models/attention.py's `attend` with q = k = v = x (the table
counts the attention, not the projections, which cost O(n d^2) like the FFN); recurrent a GRU
(flax nn.GRUCell under nn.RNN, a lax.scan over time); convolutional a 1-D nn.Conv of kernel k,
"same" padding; restricted self-attention lets each position attend to the r positions centred
on it (r odd), computed in blocks of r - 1 queries against their 2(r - 1) neighbouring keys,
so its work grows as r n d, not n^2 d (models/attention.py's softmax_attention on each block).
"""

import dataclasses
import json
import os
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import linen as nn

from models.attention import attend, softmax_attention

FLAGS = flags.FLAGS


def define_flags():
    """The command's flags, defined only when it runs as a command: the experiments'
    modules share absl's global flags, so importing two that define --out would collide."""
    flags.DEFINE_list("n", ["128", "256", "512", "1024"], "Sequence lengths n.")
    flags.DEFINE_list("d", ["32", "64", "128"], "Widths d.")
    flags.DEFINE_integer("k", 3, "Convolution kernel width k (odd).", lower_bound=1)
    flags.DEFINE_integer("r", 17, "Restricted self-attention neighbourhood r (odd).", lower_bound=3)
    flags.DEFINE_integer("heads", 1, "Attention heads (the table's cost does not depend on them).",
                         lower_bound=1)
    flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (the median counts).",
                         lower_bound=1)
    flags.DEFINE_integer("path_n", 32, "Sequence length of the path-length measurement.",
                         lower_bound=2)
    flags.DEFINE_list("layers", [], "Layer types to measure (default: all four).")
    flags.DEFINE_string("plot", "", "Save the log-log plot there (PNG).")
    flags.DEFINE_string("out", "", "Directory for results.json and table.md.")

LAYERS = ("self-attention", "recurrent", "convolutional", "restricted")
# The paper's Table 1: complexity per layer as exponents of (n, d), sequential operations,
# maximum path length.
PAPER = {"self-attention": ("O(n^2 d)", (2, 1), "O(1)", "O(1)"),
         "recurrent": ("O(n d^2)", (1, 2), "O(n)", "O(n)"),
         "convolutional": ("O(k n d^2)", (1, 2), "O(1)", "O(n/k)"),
         "restricted": ("O(r n d)", (1, 1), "O(1)", "O(n/r)")}


# ---------------------------------------------------------------------------------- layers

def split_heads(x, heads: int):
    b, n, d = x.shape
    if d % heads:
        raise ValueError(f"width {d} is not a multiple of {heads} heads")
    return x.reshape(b, n, heads, d // heads)


class SelfAttention(nn.Module):
    """softmax(x x^T / sqrt(d_k)) x over all n positions, per head."""

    heads: int = 1

    @nn.compact
    def __call__(self, x):
        h = split_heads(x, self.heads)
        return attend(h, h, h, kind="full", implementation="xla").reshape(x.shape)


def neighbourhood_blocks(x, r: int):
    """x [b, n, h, dh] -> (queries [b * n/(r-1), r-1, h, dh], keys [b * n/(r-1), 2(r-1), h, dh],
    allowed [1, 1, r-1, 2(r-1)] with the padding, position-dependent, as [blocks, 1, r-1, 2(r-1)])
    for attention within distance w = (r-1)/2: query block j (positions jB .. jB+B-1, B = r-1)
    sees keys jB - w .. jB + B + w - 1, which are blocks j and j+1 of x padded by w each side."""
    b, n, heads, dh = x.shape
    w, size = (r - 1) // 2, r - 1
    if r % 2 == 0 or n % size:
        raise ValueError(f"restricted attention needs an odd r and n a multiple of r - 1; "
                         f"got r={r}, n={n}")
    blocks = n // size
    padded = jnp.pad(x, ((0, 0), (w, w), (0, 0), (0, 0))).reshape(b, blocks + 1, size, heads, dh)
    keys = jnp.concatenate([padded[:, :-1], padded[:, 1:]], axis=2)
    queries = x.reshape(b, blocks, size, heads, dh)
    i, j = np.arange(size)[:, None], np.arange(2 * size)[None, :]
    near = (j - i >= 0) & (j - i <= 2 * w)            # |query - key| <= w
    position = np.arange(blocks)[:, None] * size - w + j  # each key's position
    inside = (position >= 0) & (position < n)          # [blocks, 2 size]: not padding
    allowed = near[None] & inside[:, None, :]          # [blocks, size, 2 size]
    flat = lambda t: t.reshape(b * blocks, *t.shape[2:])  # noqa: E731
    allowed = np.broadcast_to(allowed[None], (b,) + allowed.shape).reshape(b * blocks, 1, size,
                                                                            2 * size)
    return flat(queries), flat(keys), jnp.asarray(allowed)


class RestrictedSelfAttention(nn.Module):
    """Self-attention over the r positions centred on each output position (section 4)."""

    r: int
    heads: int = 1

    @nn.compact
    def __call__(self, x):
        q, k, allowed = neighbourhood_blocks(split_heads(x, self.heads), self.r)
        return softmax_attention(q, k, k, allowed).reshape(x.shape)


class Recurrent(nn.Module):
    """A GRU over time: h_t = cell(h_{t-1}, x_t), a lax.scan of n steps (nn.RNN)."""

    @nn.compact
    def __call__(self, x):
        return nn.RNN(nn.GRUCell(x.shape[-1], name="cell"))(x)


class Convolutional(nn.Module):
    k: int

    @nn.compact
    def __call__(self, x):
        return nn.Conv(x.shape[-1], (self.k,), padding="SAME", name="conv")(x)


def build(name: str, k: int, r: int, heads: int) -> nn.Module:
    if name not in LAYERS:
        raise ValueError(f"unknown layer type {name!r}; choose from {list(LAYERS)}")
    if name == "convolutional" and k % 2 == 0:
        raise ValueError(f"the convolution's kernel k={k} must be odd (centred)")
    return {"self-attention": lambda: SelfAttention(heads),
            "recurrent": Recurrent,
            "convolutional": lambda: Convolutional(k),
            "restricted": lambda: RestrictedSelfAttention(r, heads)}[name]()


# ------------------------------------------------------------------------------ measuring

def compiled(fn: Callable, *args):
    return jax.jit(fn).lower(*args).compile()


def xla_flops(executable) -> float:
    cost = executable.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def sequential_ops(fn: Callable, *args) -> int:
    """The loops' trip counts in fn's jaxpr, nested loops multiplied, the longest nest."""
    def longest(jaxpr) -> int:
        best = 1
        for eqn in jaxpr.eqns:
            trips = eqn.params["length"] if eqn.primitive.name == "scan" else 1
            inner = [longest(getattr(p, "jaxpr", p)) for p in eqn.params.values()
                     if hasattr(p, "jaxpr") or hasattr(p, "eqns")]
            best = max(best, trips * max(inner, default=1))
        return best
    return longest(jax.make_jaxpr(fn)(*args).jaxpr)


def layer_flops(name: str, forward, params, x) -> float:
    """The compiled forward's FLOPs by XLA's count; the recurrent layer's loop body, which
    XLA counts once, counted n times."""
    total = xla_flops(forward)
    if name == "recurrent":
        cell = nn.GRUCell(x.shape[-1])
        h = jnp.zeros((x.shape[0], x.shape[-1]), x.dtype)
        step = compiled(lambda p, h, xt: cell.apply(p, h, xt), cell_params(params), h, x[:, 0])
        total += (x.shape[1] - 1) * xla_flops(step)
    return total


def cell_params(params):
    return {"params": params["params"]["cell"]}


def wall_time(fn: Callable, args, repeats: int) -> float:
    """Median seconds of the compiled fn after one untimed call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(name: str, n: int, d: int, k: int, r: int, heads: int, repeats: int) -> dict:
    model = build(name, k, r, heads)
    x = jax.random.normal(jax.random.key(0), (1, n, d))
    params = model.init(jax.random.key(1), x)
    forward = compiled(lambda p, x: model.apply(p, x), params, x)
    backward = compiled(jax.grad(lambda p, x: jnp.sum(model.apply(p, x) ** 2), argnums=(0, 1)),
                        params, x)
    return {"layer": name, "n": n, "d": d, "flops": layer_flops(name, forward, params, x),
            "forward_s": wall_time(forward, (params, x), repeats),
            "backward_s": wall_time(backward, (params, x), repeats),
            "sequential_ops": sequential_ops(lambda p, x: model.apply(p, x), params, x)}


# ---------------------------------------------------------------------------- path length

@dataclasses.dataclass
class Hop:
    """One hop of a layer type on a sequence: h' = step(h, x), starting from h = start(x)."""

    start: Callable
    step: Callable


def hop_of(name: str, model: nn.Module, params) -> Hop:
    if name != "recurrent":
        return Hop(start=lambda x: x, step=lambda h, x: model.apply(params, h))
    cell = nn.GRUCell(model_width(params))
    p = cell_params(params)

    def step(h, x):
        """Every position's transition at once: h'_t = cell(h_{t-1}, x_t), h_{-1} = 0."""
        before = jnp.pad(h, ((0, 0), (1, 0), (0, 0)))[:, :-1]
        return jax.vmap(lambda hb, xb: cell.apply(p, hb, xb)[0], in_axes=1, out_axes=1)(
            before, x)
    return Hop(start=lambda x: step(jnp.zeros_like(x), x), step=step)


def model_width(params) -> int:
    return params["params"]["cell"]["hn"]["kernel"].shape[-1]


def dependence(fn: Callable, arg) -> np.ndarray:
    """Boolean [n_out, n_in] of fn: [1, n, d] -> [1, n, d]: output position i depends on input
    position j (some entry of the Jacobian's block (i, j) is not zero)."""
    jac = jax.jit(jax.jacfwd(fn))(arg)     # one compile, not one per eager operation
    return np.asarray(jnp.abs(jac[0, :, :, 0]).sum(axis=(1, 3)) > 0)


def path_lengths(hop: Hop, x) -> np.ndarray:
    """[n, n]: the fewest hops from input j to output i (-1: never connected)."""
    h = hop.start(x)
    reach = dependence(hop.start, x)
    through_h = dependence(lambda h: hop.step(h, x), h)
    through_x = dependence(lambda x: hop.step(h, x), x)
    first = np.where(reach, 0, -1)
    for hops in range(1, x.shape[1] + 1):
        reach = ((through_h.astype(np.int32) @ reach.astype(np.int32)) > 0) | through_x
        first = np.where((first < 0) & reach, hops, first)
    return first


def max_path_length(name: str, n: int, d: int, k: int, r: int, heads: int) -> int:
    model = build(name, k, r, heads)
    x = jax.random.normal(jax.random.key(2), (1, n, d))
    params = model.init(jax.random.key(3), x)
    return int(path_lengths(hop_of(name, model, params), x).max())


# -------------------------------------------------------------------------------- fitting

def fit_exponents(n, d, cost) -> tuple[float, float, float]:
    """Least squares of log cost = a log n + b log d + c: (a, b, c)."""
    n, d, cost = (np.asarray(v, np.float64) for v in (n, d, cost))
    if np.any(cost <= 0):
        raise ValueError("costs must be positive to fit in log-log")
    design = np.stack([np.log(n), np.log(d), np.ones_like(n)], axis=1)
    if np.linalg.matrix_rank(design) < 3:
        raise ValueError("the grid needs at least two values of n and two of d")
    (a, b, c), *_ = np.linalg.lstsq(design, np.log(cost), rcond=None)
    return float(a), float(b), float(c)


def summarise(rows: list[dict], paths: dict) -> dict:
    out = {}
    for name in dict.fromkeys(r["layer"] for r in rows):
        mine = [r for r in rows if r["layer"] == name]
        fits = {key: fit_exponents([r["n"] for r in mine], [r["d"] for r in mine],
                                   [r[key] for r in mine])[:2]
                for key in ("flops", "forward_s", "backward_s")}
        out[name] = {"paper": PAPER[name][0], "paper_exponents": PAPER[name][1],
                     "flops_exponents": fits["flops"], "forward_exponents": fits["forward_s"],
                     "backward_exponents": fits["backward_s"],
                     "sequential_ops": {str(r["n"]): r["sequential_ops"] for r in mine
                                        if r["d"] == mine[0]["d"]},
                     "paper_sequential_ops": PAPER[name][2],
                     "max_path_length": paths[name], "paper_max_path_length": PAPER[name][3]}
    return out


# ------------------------------------------------------------------------------- reporting

def table(summary: dict, path_n: int) -> str:
    lines = ["| layer type | paper | FLOPs n-exp | FLOPs d-exp | time n-exp (fwd / fwd+bwd) | "
             "time d-exp (fwd / fwd+bwd) | sequential ops (paper: measured at each n) | "
             f"max path length (paper: measured at n={path_n}) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        (fa, fb), (ta, tb), (ba, bb) = (s["flops_exponents"], s["forward_exponents"],
                                        s["backward_exponents"])
        pa, pb = s["paper_exponents"]
        seq = ", ".join(f"{v}" for v in s["sequential_ops"].values())
        lines.append(f"| {name} | {s['paper']} (n^{pa} d^{pb}) | {fa:.2f} | {fb:.2f} | "
                     f"{ta:.2f} / {ba:.2f} | {tb:.2f} / {bb:.2f} | "
                     f"{s['paper_sequential_ops']}: {seq} | "
                     f"{s['paper_max_path_length']}: {s['max_path_length']} |")
    return "\n".join(lines)


def plot(rows: list[dict], summary: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    d_max, n_max = max(r["d"] for r in rows), max(r["n"] for r in rows)
    for name, s in summary.items():
        mine = [r for r in rows if r["layer"] == name]
        by_n = sorted((r for r in mine if r["d"] == d_max), key=lambda r: r["n"])
        by_d = sorted((r for r in mine if r["n"] == n_max), key=lambda r: r["d"])
        a, b = s["flops_exponents"]
        axes[0].loglog([r["n"] for r in by_n], [r["flops"] for r in by_n], "o-",
                       label=f"{name}: n^{a:.2f} (paper {s['paper']})")
        axes[1].loglog([r["d"] for r in by_d], [r["flops"] for r in by_d], "o-",
                       label=f"{name}: d^{b:.2f}")
        axes[2].loglog([r["n"] for r in by_n], [r["backward_s"] * 1e3 for r in by_n], "o-",
                       label=name)
    axes[0].set(xlabel="sequence length n", ylabel="forward FLOPs (XLA)",
                title=f"FLOPs vs n (d = {d_max})")
    axes[1].set(xlabel="width d", ylabel="forward FLOPs (XLA)", title=f"FLOPs vs d (n = {n_max})")
    axes[2].set(xlabel="sequence length n", ylabel="forward + backward (ms)",
                title=f"wall time vs n (d = {d_max})")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    ns, ds = [int(v) for v in FLAGS.n], [int(v) for v in FLAGS.d]
    layers = FLAGS.layers or list(LAYERS)
    for name in layers:
        build(name, FLAGS.k, FLAGS.r, FLAGS.heads)      # bad names and sizes fail before work
    t0 = time.perf_counter()
    rows = []
    print(f"{'layer':16s} {'n':>6s} {'d':>5s} {'FLOPs':>12s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} "
          f"{'seq ops':>8s}", flush=True)
    for name in layers:
        for n in ns:
            for d in ds:
                r = measure(name, n, d, FLAGS.k, FLAGS.r, FLAGS.heads, FLAGS.repeats)
                rows.append(r)
                print(f"{name:16s} {n:6d} {d:5d} {r['flops']:12.4g} {r['forward_s'] * 1e3:9.3f} "
                      f"{r['backward_s'] * 1e3:11.3f} {r['sequential_ops']:8d}", flush=True)
    paths = {name: max_path_length(name, FLAGS.path_n, 8, FLAGS.k, FLAGS.r, FLAGS.heads)
             for name in layers}
    summary = summarise(rows, paths)
    markdown = table(summary, FLAGS.path_n)
    print(f"\nk = {FLAGS.k}, r = {FLAGS.r}, {FLAGS.heads} head(s); n in {ns}, d in {ds}\n")
    print(markdown)
    wall = time.perf_counter() - t0
    result = {"grid": {"n": ns, "d": ds, "k": FLAGS.k, "r": FLAGS.r, "heads": FLAGS.heads,
                       "path_n": FLAGS.path_n},
              "rows": rows, "summary": summary, "wall_s": wall,
              "load_average": os.getloadavg()[0], "devices": str(jax.devices()[0].device_kind)}
    if FLAGS.plot:
        plot(rows, summary, FLAGS.plot)
        print(f"plot: {FLAGS.plot}")
    if FLAGS.out:
        out = pathlib.Path(FLAGS.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=1))
        (out / "table.md").write_text(markdown + "\n")
    print(json.dumps({name: {"flops_exponents": s["flops_exponents"],
                             "max_path_length": s["max_path_length"]}
                      for name, s in summary.items()} | {"wall_s": wall,
                                                         "load_average": result["load_average"]}))


if __name__ == "__main__":
    define_flags()
    app.run(main)
