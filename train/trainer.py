"""The one training loop every experiment uses.

fit() takes a model's init function, a loss function
    loss_fn(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))
(rng is None in evaluation; model_state holds mutable collections such as BatchNorm statistics,
{} when there are none), a training iterator with get_state()/set_state(), and an optional
evaluation-batch factory. It owns sharded initialisation, the jitted step with gradient
accumulation, the optimiser, the non-finite guard, evaluation cadence, checkpoints (every N
steps, at the end and on SIGTERM/SIGINT) with the data position, exact resume, and logging.
"""

import contextlib
import dataclasses
import json
import pathlib
import signal
import sys
import time
from typing import Any, Callable, Iterable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import NamedSharding
from tqdm import tqdm

from train import optim, sharding
from train.checkpoint import Checkpointer, abstract_like
from train.logging import MetricWriter
from train.perf import compiler_options, peak_flops


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any
    nonfinite_total: jax.Array   # updates skipped because the loss or a gradient was not finite
    nonfinite_run: jax.Array     # ... of which in a row, up to now


@dataclasses.dataclass
class Throughput:
    """What one training example is worth, for tokens/s and MFU."""
    tokens_per_example: int = 0
    flops_per_example: float = 0.0


class NonFiniteError(FloatingPointError):
    pass


def validate(config, mesh) -> None:
    """Fail on impossible values before anything is compiled."""
    t = config.train
    dp = sharding.data_parallel_size(mesh)
    for name in ("steps", "batch_size", "grad_accum", "log_every", "eval_every", "ckpt_every"):
        if t[name] <= 0:
            raise ValueError(f"train.{name} must be positive, got {t[name]}")
    if t.batch_size % t.grad_accum:
        raise ValueError(f"train.batch_size {t.batch_size} is not divisible by "
                         f"train.grad_accum {t.grad_accum}")
    micro = t.batch_size // t.grad_accum
    if micro % dp:
        raise ValueError(f"the microbatch of {micro} examples (train.batch_size {t.batch_size} / "
                         f"train.grad_accum {t.grad_accum}) is not divisible by the {dp} "
                         f"data-parallel shards (mesh.data x mesh.fsdp)")
    if t.batch_size % jax.process_count():
        raise ValueError(f"train.batch_size {t.batch_size} is not divisible by the "
                         f"{jax.process_count()} processes")
    sharding.check_process_rows(mesh, t.batch_size)


def save_config(config, workdir: pathlib.Path) -> None:
    """Write config.json; refuse to resume a workdir whose checkpoints belong to another model."""
    path = workdir / "config.json"
    new = json.loads(config.to_json_best_effort())
    if path.exists() and (workdir / "checkpoints").exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get("model", {}).get(k), v) for k, v in new.get("model", {}).items()
                if old.get("model", {}).get(k) != v}
        if diff:
            raise ValueError(f"{workdir} holds checkpoints of another model; differences "
                             f"(saved, requested): {diff}. Use a new --workdir.")
    if jax.process_index() == 0:
        path.write_text(json.dumps(new, indent=2) + "\n")


def global_batch(batch: dict, batch_sharding) -> dict:
    """Per-process numpy batch -> global jax arrays sharded over data x fsdp."""
    def put(x):
        x = np.asarray(x)
        shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(batch_sharding, x, shape)
    return jax.tree.map(put, batch)


def _microbatches(batch, n: int):
    """[B, ...] -> [n, B/n, ...], each microbatch drawing from every device's shard."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1),
                        batch)


def with_logical_rules(loss_fn):
    """loss_fn traced under the logical axis rules, so the models' activation constraints
    (nn.with_logical_constraint) resolve to mesh axes."""
    def wrapped(*args):
        with nn.logical_axis_rules(sharding.LOGICAL_RULES):
            return loss_fn(*args)
    return wrapped


def make_train_step(loss_fn, tx, grad_accum: int, batch_spec, seed: int):
    def grads_of(params, model_state, batch, rng):
        (loss, (metrics, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, model_state, batch, rng)
        return loss, metrics, new_state, grads

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        if grad_accum == 1:
            loss, metrics, model_state, grads = grads_of(state.params, state.model_state, batch,
                                                         rng)
        else:
            def micro(carry, xs):
                model_state, grad_sum = carry
                mb, i = xs
                mb = jax.lax.with_sharding_constraint(mb, batch_spec)
                loss, metrics, model_state, grads = grads_of(
                    state.params, model_state, mb, jax.random.fold_in(rng, i))
                grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
                return (model_state, grad_sum), (loss, metrics)
            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (model_state, grad_sum), (losses, metrics) = jax.lax.scan(
                micro, (state.model_state, zeros),
                (_microbatches(batch, grad_accum), jnp.arange(grad_accum)))
            grads = jax.tree.map(lambda g: g / grad_accum, grad_sum)
            loss, metrics = losses.mean(), jax.tree.map(lambda m: m.mean(0), metrics)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(_):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            return optax.apply_updates(state.params, updates), opt_state, model_state

        def skip(_):
            return state.params, state.opt_state, state.model_state

        # A branch, not a select per array: no extra pass over parameters and optimiser state.
        params, opt_state, model_state = jax.lax.cond(ok, update, skip, None)
        new_state = TrainState(
            step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state,
            nonfinite_total=state.nonfinite_total + (~ok),
            nonfinite_run=jnp.where(ok, 0, state.nonfinite_run + 1))
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm)
        return new_state, metrics

    return step


def make_eval_step(loss_fn):
    def step(state: TrainState, batch):
        loss, (metrics, _) = loss_fn(state.params, state.model_state, batch, None)
        return dict(metrics, loss=loss)
    return step


class _StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step."""

    def __init__(self):
        self.received = None

    def __enter__(self):
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@dataclasses.dataclass
class Program:
    """The compiled pieces of training on one mesh: state shapes and shardings, init and steps."""
    mesh: Any
    tx: optax.GradientTransformation
    schedule: Callable
    abstract: TrainState          # ShapeDtypeStructs of the whole train state
    state_shardings: TrainState
    batch_sharding: NamedSharding
    init: Callable                # rng -> TrainState, sharded
    train_step: Callable          # (state, batch) -> (state, metrics); donates state
    eval_step: Callable           # (state, batch) -> metrics


def build(config, *, init_fn: Callable, loss_fn: Callable, mesh, d_model: int = 0) -> Program:
    """Shapes and shardings of the train state (from the parameters' logical axis names) and
    the jitted init, train and eval steps."""
    t = config.train
    tx, schedule = optim.make_optimizer(t, d_model)
    loss_fn = with_logical_rules(loss_fn)
    batch_sharding = sharding.batch_sharding(mesh)
    repl = sharding.replicated(mesh)
    boxed = jax.eval_shape(init_fn, jax.random.key(config.seed))
    var_shardings = sharding.logical_shardings(boxed, mesh)
    param_shardings = var_shardings["params"]
    state_shardings_model = {k: v for k, v in var_shardings.items() if k != "params"}

    def init_state(rng):
        variables = nn.meta.unbox(init_fn(rng))
        params = variables.pop("params")
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), model_state=variables,
                          nonfinite_total=jnp.zeros((), jnp.int32),
                          nonfinite_run=jnp.zeros((), jnp.int32))

    abstract = jax.eval_shape(init_state, jax.random.key(config.seed))
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, abstract.opt_state, param_shardings,
        transform_non_params=lambda _: repl,
        is_leaf=lambda x: isinstance(x, NamedSharding))
    state_shardings = TrainState(step=repl, params=param_shardings, opt_state=opt_shardings,
                                 model_state=state_shardings_model, nonfinite_total=repl,
                                 nonfinite_run=repl)
    options = compiler_options(mesh.devices.flat[0].platform)
    train_step = jax.jit(make_train_step(loss_fn, tx, t.grad_accum, batch_sharding, config.seed),
                         in_shardings=(state_shardings, batch_sharding),
                         out_shardings=(state_shardings, repl), donate_argnums=0,
                         compiler_options=options)
    eval_step = jax.jit(make_eval_step(loss_fn), in_shardings=(state_shardings, batch_sharding),
                        out_shardings=repl, compiler_options=options)
    return Program(mesh=mesh, tx=tx, schedule=schedule, abstract=abstract,
                   state_shardings=state_shardings, batch_sharding=batch_sharding,
                   init=jax.jit(init_state, out_shardings=state_shardings),
                   train_step=train_step, eval_step=eval_step)


def fit(config, *, init_fn: Callable, loss_fn: Callable, train_data, workdir,
        eval_data: Callable[[], Iterable] | None = None, mesh=None,
        throughput: Throughput | None = None, d_model: int = 0,
        on_eval: Callable[[TrainState], dict] | None = None) -> TrainState:
    """Train until config.train.steps; resume from workdir's newest checkpoint if there is one.

    init_fn(rng) -> variables ({"params": ..., other collections}), parameters may carry
    logical partitioning. eval_data() returns a fresh finite iterable of batches. on_eval(state)
    returns extra validation metrics (e.g. accuracies computed on the host)."""
    t = config.train
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh or sharding.make_mesh(config.mesh)
    validate(config, mesh)
    save_config(config, workdir)
    if jax.process_index() == 0:
        print(f"mesh {dict(mesh.shape)}: {mesh.size} {mesh.devices.flat[0].platform} devices in "
              f"{jax.process_count()} process(es)", file=sys.stderr)
    program = build(config, init_fn=init_fn, loss_fn=loss_fn, mesh=mesh, d_model=d_model)
    train_step, eval_step, batch_sharding = (program.train_step, program.eval_step,
                                             program.batch_sharding)
    writer = MetricWriter(workdir)

    ckpt = Checkpointer(workdir, keep=t.keep_ckpts)
    start = ckpt.latest_step()
    if start is None:
        with jax.set_mesh(mesh):
            state = program.init(jax.random.key(config.seed))
        start = 0
    else:
        state, data_state = ckpt.restore(
            start, abstract_like(program.abstract, program.state_shardings))
        train_data.set_state(data_state)
        writer.truncate_after(start)
        # Step 0 is a starting point written before training (e.g. pretrained weights).
        what = "starting from" if start == 0 else "resumed from"
        print(f"{what} {ckpt.directory}/{start}", file=sys.stderr)

    def evaluate(step):
        if eval_data is None and on_eval is None:
            return {}
        results = {}
        if eval_data is not None:
            sums, n = {}, 0
            for i, batch in enumerate(eval_data()):
                if t.eval_steps and i >= t.eval_steps:
                    break
                m = jax.device_get(eval_step(state, global_batch(batch, batch_sharding)))
                sums = m if not sums else jax.tree.map(np.add, sums, m)
                n += 1
            results = {k: float(v) / max(n, 1) for k, v in sums.items()}
        if on_eval is not None:
            results.update(on_eval(state))
        writer.write(step, "val", **results)
        return results

    throughput = throughput or Throughput()
    peak = peak_flops(mesh.devices.flatten().tolist()) if throughput.flops_per_example else None
    with jax.set_mesh(mesh):
        last_val = evaluate(0) if start == 0 else {}
    window, window_start, window_steps = [], None, 0
    bar = tqdm(total=t.steps, initial=start, desc="train", unit="step", disable=None,
               dynamic_ncols=True)
    try:
        with _StopSignal() as stop, jax.set_mesh(mesh):
            for step in range(start, t.steps):
                batch = global_batch(next(train_data), batch_sharding)
                state, metrics = train_step(state, batch)
                s = step + 1
                window.append(metrics)
                if window_start is None:   # the first step compiles: time from its end
                    jax.block_until_ready(metrics)
                    window_start, window_steps = time.perf_counter(), 0
                else:
                    window_steps += 1
                if s % t.log_every == 0 or s == t.steps:
                    row = _log_train(writer, s, window, window_steps, window_start,
                                     throughput, peak, program.schedule, state,
                                     t.batch_size)
                    window, window_start, window_steps = [], time.perf_counter(), 0
                    if row.get("nonfinite_run", 0) >= t.max_nonfinite:
                        ckpt.wait()
                        raise NonFiniteError(
                            f"{int(row['nonfinite_run'])} updates in a row had a non-finite loss "
                            f"or gradient (step {s}); the run is stopped. Lower train.lr, check "
                            f"the data, or raise train.max_nonfinite.")
                    bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}",
                                    val=f"{last_val.get('loss', float('nan')):.4f}")
                bar.update(1)
                if s % t.eval_every == 0 or s == t.steps:
                    last_val = evaluate(s)
                if s % t.ckpt_every == 0 or s == t.steps or stop.received:
                    ckpt.save(s, state, train_data.get_state())
                if stop.received:
                    ckpt.wait()
                    print(f"\n{stop.received} at step {s}: checkpoint saved in "
                          f"{ckpt.directory}; run the same command to resume.", file=sys.stderr)
                    raise SystemExit(0)
    finally:
        bar.close()
        ckpt.wait()
        ckpt.close()
    return state


def _log_train(writer, step, window, window_steps, window_start, throughput, peak, schedule,
               state, batch_size) -> dict:
    # On the host: eager jnp ops here would compile once per mesh and window length.
    window = jax.device_get(window)
    means = jax.tree.map(lambda *m: np.mean(np.stack(m)), *window) if window else {}
    row = {k: float(v) for k, v in means.items()}
    row["lr"] = float(schedule(step - 1))
    row["nonfinite_skipped"] = int(jax.device_get(state.nonfinite_total))
    row["nonfinite_run"] = int(jax.device_get(state.nonfinite_run))
    elapsed = time.perf_counter() - window_start if window_start is not None else 0.0
    if window_steps and elapsed > 0:
        examples_per_sec = window_steps * batch_size / elapsed
        row["examples_per_sec"] = examples_per_sec
        if throughput.tokens_per_example:
            row["tokens_per_sec"] = examples_per_sec * throughput.tokens_per_example
        if throughput.flops_per_example and peak:
            row["mfu"] = examples_per_sec * throughput.flops_per_example / peak
    writer.write(step, "train", **row)
    return row

