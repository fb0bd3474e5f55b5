"""The one training loop every experiment uses.

fit() takes a model's init function, a loss function
    loss_fn(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))
(rng is None in evaluation; model_state holds mutable collections such as BatchNorm statistics,
{} when there are none), a training iterator with get_state()/set_state(), and the data sources
and functions its evaluators (`config.evals`, train/evaluators/) read. It owns sharded
initialisation (or `config.init_from`), the jitted step with gradient accumulation, the
optimiser and freezing from `config.train` (train/optim.py), the non-finite guard, evaluation
cadence, verified checkpoints (every N steps, at the end and on SIGTERM/SIGINT) with the data
position, exact resume, the workdir lock and logging.
"""

import collections
import contextlib
import dataclasses
import json
import pathlib
import signal
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import NamedSharding
from tqdm import tqdm

from train import evaluators, init_from, optim, sharding
from train.checkpoint import Checkpointer, WorkdirLock, abstract_like
from train.logging import (MetricWriter, clear_finished, progress_line, quiet_library_logging,
                           write_finished)
from train.hostmem import trim_host_memory
from train.perf import compiler_options, mfu, peak_flops


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any               # every parameter, frozen ones included
    opt_state: Any            # the optimiser's state of the trainable parameters only
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


# Config sections that may change between a run and its resumption (with a warning); a change
# anywhere else (model, data, task, seed, ...) would make the checkpoint mean something else.
RESUMABLE_CHANGES = ("train.", "evals.", "eval.", "sample.", "mesh.", "init_from")


def validate(config, mesh) -> None:
    """Fail on impossible values before anything is compiled or written."""
    t = config.train
    dp = sharding.data_parallel_size(mesh)
    for name in ("batch_size", "grad_accum", "log_every", "eval_every", "ckpt_every",
                 "keep_ckpts", "max_nonfinite"):
        if t[name] <= 0:
            raise ValueError(f"train.{name} must be positive, got {t[name]}")
    if t.steps < 0:
        raise ValueError(f"train.steps must be >= 0 (0: only evaluate the initial or init_from "
                         f"weights), got {t.steps}")
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
    optim.validate(t)
    evaluators.validate(config)


def preflight(config, workdir, mesh=None, resume: bool = True):
    """Every check that needs no data and writes nothing: the mesh, the config's values, and
    (resume=True) whether the workdir may be resumed with it. Returns the mesh."""
    mesh = mesh or sharding.make_mesh(config.mesh)
    validate(config, mesh)
    if resume:
        check_resume(config, pathlib.Path(workdir), warn=False)
    return mesh


def _flat_config(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: dict, new: dict) -> tuple[dict, dict]:
    """(refused, warned): the keys whose values differ between a run's saved config and the
    one it is resumed with, as {key: (saved, requested)}."""
    a, b = _flat_config(old), _flat_config(new)
    diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k != "provenance" and not k.startswith("provenance.") and a.get(k) != b.get(k)}
    warned = {k: v for k, v in diff.items() if k.startswith(RESUMABLE_CHANGES)}
    return {k: v for k, v in diff.items() if k not in warned}, warned


def check_resume(config, workdir: pathlib.Path, warn: bool = True) -> dict:
    """Refuse to resume a workdir whose checkpoints belong to another model, data or task;
    warn about changed training settings. Returns the new config as a dict."""
    new = json.loads(config.to_json_best_effort())
    path = workdir / "config.json"
    if path.exists() and (workdir / "checkpoints").exists():
        old = json.loads(path.read_text())
        refused, warned = config_changes(old, new)
        if refused:
            lines = "\n".join(f"  {k}: saved {a!r}, requested {b!r}" for k, (a, b) in refused.items())
            raise ValueError(f"{workdir} holds checkpoints of another run; these settings "
                             f"differ:\n{lines}\nUse a new --workdir, or the saved settings.")
        if warned and warn and jax.process_index() == 0:
            lines = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in warned.items())
            print(f"warning: resuming {workdir} with changed settings: {lines}",
                  file=sys.stderr)
    return new


CONFIG_HISTORY = "config_history.jsonl"


def save_config(new: dict, workdir: pathlib.Path, step: int) -> None:
    """Writes the config a run continues with (from `step`) as config.json, with provenance;
    called only once the run owns the workdir and goes on. An earlier config.json is first
    appended to config_history.jsonl as {"step", "changed": {key: [saved, new]}, "config"},
    and changed settings are named in one line."""
    if jax.process_index() != 0:
        return
    from train.provenance import provenance
    main = getattr(sys.modules["__main__"], "__spec__", None)
    new = dict(new, provenance=dict(provenance(), experiment=getattr(main, "name", ""),
                                    argv=sys.argv))
    path = workdir / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        refused, warned = config_changes(old, new)
        changed = {**refused, **warned}
        with (workdir / CONFIG_HISTORY).open("a") as f:
            f.write(json.dumps({"step": step, "changed": changed, "config": old}) + "\n")
        if changed:
            print(f"{path} changes at step {step}: "
                  + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
                  + f"; the previous config is the last line of {CONFIG_HISTORY}",
                  file=sys.stderr)
    tmp = workdir / "config.json.tmp"
    tmp.write_text(json.dumps(new, indent=2) + "\n")
    tmp.replace(path)


def _microbatches(batch, n: int):
    """[B, ...] -> [n, B/n, ...], each microbatch drawing from every device's shard."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1),
                        batch)


def _keep_frozen_state(new, old, mask: dict[str, bool]):
    """model_state with the entries of frozen modules taken from `old`."""
    if not any(mask.values()):
        return new
    new_flat, old_flat = optim.flat(new), optim.flat(old)
    return optim.nest({k: old_flat[k] if mask.get(k) else v for k, v in new_flat.items()})


def make_train_step(loss_fn, tx, grad_accum: int, batch_spec, seed: int, freeze: str,
                    state_mask: dict):
    def step(state: TrainState, batch):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        trainable, frozen = optim.split_frozen(state.params, freeze)

        def grads_of(trainable, model_state, batch, rng):
            def f(trainable):
                return loss_fn(optim.merge(trainable, frozen), model_state, batch, rng)
            (loss, (metrics, new_state)), grads = jax.value_and_grad(f, has_aux=True)(trainable)
            return loss, metrics, new_state, grads

        if grad_accum == 1:
            loss, metrics, model_state, grads = grads_of(trainable, state.model_state, batch, rng)
        else:
            def micro(carry, xs):
                model_state, grad_sum = carry
                mb, i = xs
                mb = jax.lax.with_sharding_constraint(mb, batch_spec)
                loss, metrics, model_state, grads = grads_of(
                    trainable, model_state, mb, jax.random.fold_in(rng, i))
                grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
                return (model_state, grad_sum), (loss, metrics)
            zeros = jax.tree.map(jnp.zeros_like, trainable)
            (model_state, grad_sum), (losses, metrics) = jax.lax.scan(
                micro, (state.model_state, zeros),
                (_microbatches(batch, grad_accum), jnp.arange(grad_accum)))
            grads = jax.tree.map(lambda g: g / grad_accum, grad_sum)
            loss, metrics = losses.mean(), jax.tree.map(lambda m: m.mean(0), metrics)
        model_state = _keep_frozen_state(model_state, state.model_state, state_mask)
        grad_norm = optax.tree.norm(grads)   # of the trainable parameters only
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        params = optim.merge(optax.apply_updates(trainable, updates), frozen)
        # A select, not a lax.cond: a branch on a device value can cost a host round trip per
        # step on GPUs; a skipped update keeps the old arrays bit for bit.
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        params, opt_state, model_state = jax.tree.map(
            keep, (params, opt_state, model_state),
            (state.params, state.opt_state, state.model_state))
        new_state = TrainState(
            step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state,
            nonfinite_total=state.nonfinite_total + (~ok),
            nonfinite_run=jnp.where(ok, 0, state.nonfinite_run + 1))
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm)
        return new_state, metrics

    return step


def example_count(batch):
    """Examples (or tokens, with per-token weights) that count in a batch: padding rows carry
    weight 0."""
    if "weights" in batch:
        return jnp.sum(batch["weights"].astype(jnp.float32))
    return jnp.asarray(jax.tree.leaves(batch)[0].shape[0], jnp.float32)


def make_eval_step(loss_fn):
    def step(state: TrainState, batch):
        loss, (metrics, _) = loss_fn(state.params, state.model_state, batch, None)
        return dict(metrics, loss=loss, n=example_count(batch))
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
    schedule: Callable
    abstract: TrainState          # ShapeDtypeStructs of the whole train state
    state_shardings: TrainState
    batch_sharding: NamedSharding
    init: Callable                # rng -> TrainState, sharded
    train_step: Callable          # (state, batch) -> (state, metrics); donates state
    eval_step: Callable           # (state, batch) -> metrics


def _check_freeze(pattern: str, params) -> None:
    if not pattern:
        return
    trainable, frozen = optim.split_frozen(params, pattern)
    names = list(optim.flat(params))
    if not frozen:
        raise ValueError(f"train.freeze {pattern!r} matches no parameter (fully, against paths "
                         f"such as {', '.join(names[:4])})")
    if not trainable:
        raise ValueError(f"train.freeze {pattern!r} matches every parameter: nothing would train")


def build(config, *, init_fn: Callable, loss_fn: Callable, mesh) -> Program:
    """Shapes and shardings of the train state (from the parameters' logical axis names) and
    the jitted init, train and eval steps."""
    t = config.train
    loss_fn = sharding.with_logical_rules(loss_fn)
    batch_sharding = sharding.batch_sharding(mesh)
    repl = sharding.replicated(mesh)
    boxed = jax.eval_shape(init_fn, jax.random.key(config.seed))
    var_shardings = sharding.logical_shardings(boxed, mesh)
    param_shardings = var_shardings["params"]
    model_state_shardings = {k: v for k, v in var_shardings.items() if k != "params"}
    variables = nn.meta.unbox(boxed)
    abstract_params = variables["params"]
    _check_freeze(t.freeze, abstract_params)
    trainable_abs, frozen_abs = optim.split_frozen(abstract_params, t.freeze)
    tx, schedule = optim.make_optimizer(t, trainable_abs)
    state_mask = optim.frozen_state_mask({k: v for k, v in variables.items() if k != "params"},
                                         frozen_abs, t.freeze)

    def init_state(rng):
        variables = nn.meta.unbox(init_fn(rng))
        params = variables.pop("params")
        trainable, _ = optim.split_frozen(params, t.freeze)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(trainable), model_state=variables,
                          nonfinite_total=jnp.zeros((), jnp.int32),
                          nonfinite_run=jnp.zeros((), jnp.int32))

    abstract = jax.eval_shape(init_state, jax.random.key(config.seed))
    trainable_shardings, _ = optim.split_frozen(param_shardings, t.freeze)
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, abstract.opt_state, trainable_shardings,
        transform_non_params=lambda _: repl,
        is_leaf=lambda x: isinstance(x, NamedSharding))
    state_shardings = TrainState(step=repl, params=param_shardings, opt_state=opt_shardings,
                                 model_state=model_state_shardings, nonfinite_total=repl,
                                 nonfinite_run=repl)
    options = compiler_options(mesh.devices.flat[0].platform)
    train_step = jax.jit(make_train_step(loss_fn, tx, t.grad_accum, batch_sharding, config.seed,
                                         t.freeze, state_mask),
                         in_shardings=(state_shardings, batch_sharding),
                         out_shardings=(state_shardings, repl), donate_argnums=0,
                         compiler_options=options)
    eval_step = jax.jit(make_eval_step(loss_fn), in_shardings=(state_shardings, batch_sharding),
                        out_shardings=repl, compiler_options=options)
    # XLA:CPU's oneDNN matmuls return pooled scratch objects just after their result is ready;
    # freeing a program in that window aborts the process (train/perf.py), so the last few
    # programs stay alive until newer ones replace them.
    _RECENT_PROGRAMS.append((train_step, eval_step))
    return Program(mesh=mesh, schedule=schedule, abstract=abstract,
                   state_shardings=state_shardings, batch_sharding=batch_sharding,
                   init=jax.jit(init_state, out_shardings=state_shardings),
                   train_step=train_step, eval_step=eval_step)


_RECENT_PROGRAMS: collections.deque = collections.deque(maxlen=4)


def param_summary(state_or_abstract, freeze: str) -> str:
    n = optim.flat(state_or_abstract.params)
    total = sum(int(np.prod(x.shape)) for x in n.values())
    _, frozen = optim.split_frozen(state_or_abstract.params, freeze)
    n_frozen = sum(int(np.prod(x.shape)) for x in optim.flat(frozen).values())
    text = f"{total:,} parameters"
    return text + (f" ({n_frozen:,} frozen)" if n_frozen else "")


def fit(config, *, init_fn: Callable, loss_fn: Callable, train_data, workdir,
        data: dict[str, Callable] | None = None, predict_fn: Callable | None = None,
        eval_fns: dict[str, Any] | None = None, import_weights: Callable | None = None,
        artifacts: dict[str, Callable] | None = None, mesh=None,
        throughput: Throughput | None = None) -> TrainState:
    """Train until config.train.steps; resume from workdir's newest intact checkpoint if there
    is one, else start from init_fn (or config.init_from).

    init_fn(rng) -> variables ({"params": ..., other collections}), parameters may carry
    logical partitioning. `data` maps names ("val", "test", ...) to factories of one finite
    pass of per-process batches; `predict_fn(params, model_state, batch) -> logits` and
    `eval_fns` serve the evaluators of config.evals. import_weights(path) -> variables reads a
    directory that is not a workdir of ours for config.init_from (e.g. models.hf).
    `artifacts` maps file names to writers(path) of what the workdir must hold besides
    checkpoints (the tokenizer), called once the run owns the workdir."""
    workdir = pathlib.Path(workdir)
    quiet_library_logging()   # orbax logs every checkpoint step at INFO
    mesh = preflight(config, workdir, mesh)
    program = build(config, init_fn=init_fn, loss_fn=loss_fn, mesh=mesh)   # checks freeze
    start_from = (init_from.prepare(config, program, import_weights)
                  if config.get("init_from") else None)
    workdir.mkdir(parents=True, exist_ok=True)
    with WorkdirLock(workdir):
        check_resume(config, workdir)  # again, now no other run writes
        for name, write in (artifacts or {}).items():
            if jax.process_index() == 0 and not (workdir / name).exists():
                write(workdir / name)
        state = _fit(config, workdir, program, train_data, data or {}, predict_fn,
                     eval_fns or {}, start_from, throughput or Throughput())
        write_finished(workdir, state, config.train.steps)   # it reached its end
        return state


def _fit(config, workdir, program, train_data, data, predict_fn, eval_fns, start_from,
         throughput) -> TrainState:
    t = config.train
    mesh = program.mesh
    leader = jax.process_index() == 0
    if leader:
        print(f"mesh {dict(mesh.shape)}: {mesh.size} {mesh.devices.flat[0].platform} devices in "
              f"{jax.process_count()} process(es); {param_summary(program.abstract, t.freeze)}",
              file=sys.stderr)
    writer = MetricWriter(workdir)
    ckpt = Checkpointer(workdir, keep=t.keep_ckpts)
    restored = ckpt.restore_latest(abstract_like(program.abstract, program.state_shardings))
    if restored is None:
        with jax.set_mesh(mesh):
            state = program.init(jax.random.key(config.seed))
            if start_from is not None:
                state = start_from(state)
        start = 0
        writer.truncate_after(-1)    # a run without a checkpoint starts its log afresh
    else:
        start, state, data_state = restored
        train_data.set_state(data_state)
        writer.truncate_after(start)
        if start >= t.steps:
            if leader:
                print(f"{workdir} is finished (step {start} of {t.steps}); nothing to do. "
                      f"`python -m experiments.evaluate --workdir={workdir}` evaluates it "
                      f"again.", file=sys.stderr)
            ckpt.close()
            writer.close()
            return state
        if leader:
            print(f"resumed from {ckpt.directory}/{start}", file=sys.stderr)
    # Only now, the checkpoint restored into this config's state and steps left to run.
    save_config(check_resume(config, workdir, warn=False), workdir, start)

    clear_finished(workdir)   # it trains (or evaluates) again: not finished until it returns
    suite = evaluators.build(config, evaluators.Context(
        program=program, data=data, predict_fn=predict_fn, fns=eval_fns))

    def evaluate(step, final=False):
        with jax.set_mesh(mesh):
            rows = suite.run(state, step, final)
        for split, row in rows.items():
            writer.write(step, split, **row)
        return rows.get("val", {})

    peak = peak_flops(mesh.devices.flatten().tolist()) if throughput.flops_per_example else None
    last_val = evaluate(0, final=t.steps == 0) if start == 0 else {}
    if t.steps == 0:    # evaluation of the initial (or init_from) weights only
        ckpt.save(0, state, train_data.get_state())
        ckpt.close()
        writer.close()
        return state
    window, window_start, window_steps = [], None, 0
    bar = tqdm(total=t.steps, initial=start, desc="train", unit="step", disable=None,
               dynamic_ncols=True)
    plain = not sys.stderr.isatty()
    run_start = time.perf_counter()
    try:
        with _StopSignal() as stop, jax.set_mesh(mesh):
            for step in range(start, t.steps):
                batch = sharding.global_batch(next(train_data), program.batch_sharding)
                state, metrics = program.train_step(state, batch)
                s = step + 1
                window.append(metrics)
                if window_start is None:   # the first step compiles: time from its end
                    jax.block_until_ready(metrics)
                    trim_host_memory()
                    window_start, window_steps = time.perf_counter(), 0
                else:
                    window_steps += 1
                if s % t.log_every == 0 or s == t.steps:
                    row = _log_train(writer, s, window, window_steps, window_start,
                                     throughput, peak, program.schedule, state, t.batch_size)
                    window, window_start, window_steps = [], time.perf_counter(), 0
                    skipped = int(row.get("nonfinite_run", 0))
                    # A run may not end on a skipped update: its weights would be older than
                    # its step, and the final evaluation would score them as trained.
                    if skipped >= t.max_nonfinite or (skipped and s == t.steps):
                        _stop_nonfinite(ckpt, s, skipped, t.max_nonfinite)
                    bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}",
                                    val=f"{last_val.get('loss', float('nan')):.4f}")
                    if plain and leader:
                        print(progress_line(s, t.steps, row, last_val,
                                            time.perf_counter() - run_start, start),
                              file=sys.stderr, flush=True)
                bar.update(1)
                final = s == t.steps
                if suite.due(s) or final:
                    last_val = evaluate(s, final) or last_val
                if s % t.ckpt_every == 0 or final or stop.received:
                    run = int(jax.device_get(state.nonfinite_run))
                    if run == 0:
                        ckpt.save(s, state, train_data.get_state())
                    elif leader:
                        print(f"step {s}: no checkpoint while updates are being skipped "
                              f"({run} in a row)", file=sys.stderr)
                if stop.received:
                    ckpt.wait()
                    print(f"\n{stop.received} at step {s}: checkpoint saved in "
                          f"{ckpt.directory}; run the same command to resume.", file=sys.stderr)
                    raise SystemExit(0)
    finally:
        bar.close()
        ckpt.close()
        writer.close()
    return state


def _stop_nonfinite(ckpt: Checkpointer, step: int, run: int, max_nonfinite: int):
    """Stop a diverged run, or one whose last update was skipped (before its final evaluation:
    no test rows of weights it never reached); the checkpoints of its streak of skipped updates
    go, so the same command with a lower learning rate resumes from before the divergence."""
    streak_start = step - run
    ckpt.delete_after(streak_start)
    last = ckpt.latest_step()
    where = (f"the newest checkpoint is now step {last}, from before the streak began at step "
             f"{streak_start}; the same command resumes from it" if last is not None else
             "no checkpoint from before the streak remains; the same command starts afresh")
    diverged = run >= max_nonfinite
    what = ("the run is stopped" if diverged else
            f"the run ended inside the streak, its weights those of step {streak_start}, so it "
            f"is not evaluated and fails")
    raise NonFiniteError(
        f"{run} updates in a row had a non-finite loss or gradient (step {step}); {what}, and "
        f"{where}. Lower train.lr or check the data"
        + (", or raise train.max_nonfinite." if diverged else "."))


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
    # A loss function whose batches vary in size (translation's token budget) reports each
    # batch's rows and tokens as metrics "examples" and "tokens".
    rows, tokens = row.pop("examples", batch_size), row.pop("tokens", None)
    if window_steps and elapsed > 0:
        examples_per_sec = window_steps * rows / elapsed
        row["examples_per_sec"] = examples_per_sec
        if tokens is not None:
            row["tokens_per_sec"] = window_steps * tokens / elapsed
        elif throughput.tokens_per_example:
            row["tokens_per_sec"] = examples_per_sec * throughput.tokens_per_example
        if throughput.flops_per_example and peak:
            row.update(mfu(examples_per_sec * throughput.flops_per_example, peak))
    writer.write(step, "train", **row)
    return row
