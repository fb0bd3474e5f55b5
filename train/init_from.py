"""config.init_from: start a run from another run's weights, or from imported ones.

`config.init_from` is a workdir of ours (its newest intact checkpoint) or a directory that the
experiment's importer reads (models/hf.py: a transformers directory). `config.init_from_regex`
(default: everything) selects, by full match on the '/'-joined path, which of the new model's
parameters and model-state entries (BatchNorm statistics, path without the collection) are
loaded; the rest keep their fresh initialisation (a new task head, say). Every selected entry
must exist in the source with its shape, except that an embedding table may grow (tokens added
for a task keep their fresh rows). Anything else is one error naming every missing, unexpected
and mis-shaped entry. The weights are loaded straight into the sharded train state at step 0.
"""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from train import checkpoint, optim


def _grows(path: str, want, have) -> bool:
    """An embedding table with rows added at the end (GPT-1's start/delimiter/extract tokens)."""
    return (path.endswith("embedding") and len(want) == len(have) == 2
            and want[0] > have[0] and want[1:] == have[1:])


def _source(config, import_weights):
    """(flat params, flat model state (with collection names), description, reader) where
    reader(flat target) -> flat arrays (the source restores into the target's shardings)."""
    path = pathlib.Path(config.init_from).expanduser()
    if (path / "checkpoints").is_dir():
        found = checkpoint.newest_readable(
            path / "checkpoints", lambda step: checkpoint.saved_shapes(path / "checkpoints", step))
        if found is None:
            raise FileNotFoundError(f"config.init_from: {path} has no intact checkpoint")
        step, saved = found
        params, state = optim.flat(saved["params"]), optim.flat(saved.get("model_state") or {})

        def read(wanted: dict):
            tree = {"params": optim.nest({k: v for k, v in wanted.items() if k in params})}
            states = {k: v for k, v in wanted.items() if k in state}
            if states:
                tree["model_state"] = optim.nest(states)
            got = checkpoint.restore_subtree(path / "checkpoints", step, tree)
            return {**optim.flat(got["params"]), **optim.flat(got.get("model_state") or {})}
        return params, state, f"{path}/checkpoints/{step}", read
    if not path.exists():
        raise FileNotFoundError(f"config.init_from: {path} does not exist")
    if import_weights is None:
        raise ValueError(f"config.init_from: {path} is not a workdir (no checkpoints/) and this "
                         f"experiment imports no other format")
    variables = import_weights(path)
    params = optim.flat(variables["params"])
    state = optim.flat({k: v for k, v in variables.items() if k != "params"})
    arrays = {**params, **state}

    def read(wanted: dict):
        return {k: _put(np.asarray(arrays[k]), s.sharding) for k, s in wanted.items()}
    shapes = lambda d: {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype)  # noqa: E731
                        for k, v in d.items()}
    return shapes(params), shapes(state), str(path), read


def _put(x: np.ndarray, sharding):
    """A host array (the same on every process) as a global array with `sharding`."""
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def plan(target: dict, source: dict, regex: str) -> tuple[dict, list[str]]:
    """{target path: source shape} to load, and the problems (missing, mis-shaped, unexpected).
    Both trees are flat {path: ShapeDtypeStruct}."""
    pattern = optim.compile_regex(regex or ".*", "config.init_from_regex")
    selected = {k: v for k, v in target.items() if pattern.fullmatch(_inner(k))}
    problems, load = [], {}
    for k, want in selected.items():
        if k not in source:
            problems.append(f"missing {k} {tuple(want.shape)}")
        elif tuple(source[k].shape) == tuple(want.shape) or _grows(k, want.shape,
                                                                   source[k].shape):
            load[k] = source[k]
        else:
            problems.append(f"mis-shaped {k}: source {tuple(source[k].shape)}, model "
                            f"{tuple(want.shape)}")
    problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in source.items()
                 if k not in target and pattern.fullmatch(_inner(k))]
    return load, problems


def _inner(path: str) -> str:
    """Model-state paths are matched without their collection: 'batch_stats/bn/mean' ->
    'bn/mean'; parameter paths as they are."""
    head, _, rest = path.partition("/")
    return rest if head in _COLLECTIONS and rest else path


_COLLECTIONS = ("batch_stats",)


def prepare(config, program, import_weights=None):
    """Check that config.init_from fits the program's model (one error naming every misfit)
    and return apply(state) -> `state` (fresh, sharded) with the selected entries replaced by
    the source's."""
    src_params, src_state, where, read = _source(config, import_weights)
    target_params = optim.flat(program.abstract.params)
    target_state = optim.flat(program.abstract.model_state)
    shardings = {**optim.flat(program.state_shardings.params),
                 **optim.flat(program.state_shardings.model_state)}
    regex = config.get("init_from_regex", "")
    load, problems = plan({**target_params, **target_state}, {**src_params, **src_state}, regex)
    if not load and not problems:
        raise ValueError(f"config.init_from_regex {regex!r} matches no parameter of this model "
                         f"(full match against '/'-joined paths such as "
                         f"{', '.join(list(target_params)[:4])})")
    if problems:
        raise ValueError(f"config.init_from {where} does not fit this model "
                         f"(init_from_regex {config.get('init_from_regex', '')!r}):\n  "
                         + "\n  ".join(problems))
    target = {**target_params, **target_state}
    grown = [k for k, v in load.items() if tuple(v.shape) != tuple(target[k].shape)]
    repl = jax.sharding.NamedSharding(program.mesh, jax.sharding.PartitionSpec())

    def merge(fresh: dict, loaded: dict):
        out = dict(fresh)
        for k, x in loaded.items():
            x = x.astype(fresh[k].dtype)
            out[k] = x if k not in grown else jnp.concatenate([x, fresh[k][x.shape[0]:]])
        return out

    def apply(state):
        arrays = read({k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                               sharding=repl if k in grown else shardings[k])
                       for k, v in load.items()})
        fresh = {**optim.flat(state.params), **optim.flat(state.model_state)}
        out_shardings = {k: shardings[k] for k in fresh}
        merged = jax.jit(merge, out_shardings=out_shardings)(fresh, arrays)
        params = optim.nest({k: merged[k] for k in target_params})
        model_state = optim.nest({k: merged[k] for k in target_state}) if target_state else \
            state.model_state
        if jax.process_index() == 0:
            kept = len(target) - len(load)
            note = f"; rows added to {', '.join(grown)}" if grown else ""
            print(f"initialised {len(load)} of {len(target)} entries from {where} ({kept} keep "
                  f"their fresh initialisation{note})", file=sys.stderr)
        return state.replace(params=params, model_state=model_state)
    return apply
