"""Checkpoints on orbax's CheckpointManager: the train state plus the data iterator position,
each step verified before it is trusted.

Layout: workdir/checkpoints/<step>/ as orbax writes it, plus `manifest.json` (size and SHA-256 of
every file of the step), written once the asynchronous save has finished. Restoring checks the
manifest first; a damaged step is named, moved to workdir/checkpoints_damaged/ (nothing is
deleted) and the next older intact step is used. Old steps are pruned only after a newer step
is known to be intact, so the newest intact checkpoint is never deleted.
"""

import fcntl
import hashlib
import itertools
import json
import os
import pathlib
import shutil
import socket
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

MANIFEST = "manifest.json"


def _files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(step_dir: pathlib.Path) -> None:
    files = {p.relative_to(step_dir).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in _files(step_dir)}
    tmp = step_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"files": files}, indent=1))
    os.replace(tmp, step_dir / MANIFEST)


def verify(step_dir: pathlib.Path) -> str | None:
    """None when every file of the step matches its manifest, else what is wrong. A step
    without a manifest (written before manifests existed, or killed between orbax's commit and
    the manifest) is 'unverified': the caller may still try it."""
    path = step_dir / MANIFEST
    if not path.exists():
        return "unverified"
    try:
        want = json.loads(path.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"its manifest is unreadable ({e})"
    have = {p.relative_to(step_dir).as_posix(): p for p in _files(step_dir)}
    missing = sorted(set(want) - set(have))
    if missing:
        return f"{len(missing)} file(s) missing: {', '.join(missing[:3])}"
    for name, info in want.items():
        p = have[name]
        if p.stat().st_size != info["size"]:
            return f"{name} has {p.stat().st_size} bytes, {info['size']} were written"
        if _sha256(p) != info["sha256"]:
            return f"{name} does not match its checksum"
    return None


class Checkpointer:
    """Saves {state, data} under workdir/checkpoints/<step>; keeps the newest `keep` intact ones."""

    def __init__(self, workdir, keep: int = 2):
        if keep < 1:
            raise ValueError(f"train.keep_ckpts must be at least 1, got {keep}")
        self.workdir = pathlib.Path(workdir).absolute()
        self.directory = self.workdir / "checkpoints"
        self.keep = keep
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True),
            item_names=("state", "data"))
        self._pending = None   # step saved asynchronously, its manifest not yet written
        self._leader = jax.process_index() == 0

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state, data_state: dict):
        if step in self.manager.all_steps():
            return
        self._finalize()
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))
        self._pending = step

    def _finalize(self):
        """Wait for the pending save, write its manifest, then prune older steps."""
        if self._pending is None:
            return
        self.manager.wait_until_finished()
        step, self._pending = self._pending, None
        if self._leader:
            write_manifest(self.directory / str(step))
            for old in [s for s in self.steps() if s < step][:-(self.keep - 1) or None]:
                self.manager.delete(old)

    def delete_after(self, step: int) -> list[int]:
        """Remove every checkpoint newer than `step` (a diverged stretch); returns them."""
        self._finalize()
        gone = [s for s in self.steps() if s > step]
        if self._leader:
            for s in gone:
                self.manager.delete(s)
        self.manager.reload()
        return gone

    def _quarantine(self, step: int, why: str):
        print(f"checkpoint {self.directory}/{step} is damaged ({why}); it is moved to "
              f"{self.workdir}/checkpoints_damaged/ and an older one is used", file=sys.stderr)
        if self._leader:
            dest = self.workdir / "checkpoints_damaged" / f"{step}-{int(time.time())}"
            dest.parent.mkdir(exist_ok=True)
            shutil.move(str(self.directory / str(step)), dest)

    def restore_latest(self, abstract_state):
        """(step, state, data_state) of the newest intact checkpoint, restored into the shapes,
        dtypes and shardings of `abstract_state`; None when there is none. Damaged steps are
        moved aside (_quarantine); an unverified step that restores gets its manifest."""
        def restore(step):
            state, data = self.restore(step, abstract_state)
            if verify(self.directory / str(step)) == "unverified" and self._leader:
                write_manifest(self.directory / str(step))
            return state, data
        found = newest_readable(self.directory, restore, self._quarantine)
        self.manager.reload()
        return None if found is None else (found[0], *found[1])

    def restore(self, step: int, abstract_state):
        """Restore into the shapes, dtypes and shardings of `abstract_state`."""
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as e:
            if "metadata tree structures do not match" in str(e) or "shape" in str(e):
                raise _DoesNotFit(
                    f"the checkpoint at {self.directory}/{step} does not fit this model and "
                    f"optimiser (was it written by another model or with another train.freeze?)"
                    f": {str(e)[:1500]}") from e
            raise
        return restored["state"], restored["data"]

    def wait(self):
        self._finalize()

    def close(self):
        self._finalize()
        self.manager.close()


class _DoesNotFit(ValueError):
    pass


def _step_dirs(directory: pathlib.Path) -> list[int]:
    return sorted((int(p.name) for p in pathlib.Path(directory).glob("*") if p.name.isdigit()),
                  reverse=True)


def _name_damaged(directory: pathlib.Path):
    def name(step: int, why: str):
        print(f"checkpoint {directory}/{step} is damaged ({why}); an older one is used",
              file=sys.stderr)
    return name


def newest_readable(directory: pathlib.Path, read, on_damaged=None):
    """(step, read(step)) of the newest step under a checkpoints directory whose files match
    their manifest (or that has none) and that `read` can read; None when there is none. Each
    newer step is damaged: on_damaged(step, why) (default: one line naming it). The one rule by
    which the trainer resumes and every reader of a workdir (init_from, generation, evaluation)
    chooses its step; a checkpoint of another model (_DoesNotFit) is an error, not damage."""
    return next(readable_steps(directory, read, on_damaged or _name_damaged(directory)), None)


def readable_steps(directory: pathlib.Path, read, on_damaged):
    """(step, read(step)) of each readable step, newest first, by newest_readable's rule; each
    damaged step met on the way: on_damaged(step, why)."""
    for step in _step_dirs(directory):
        problem = verify(pathlib.Path(directory) / str(step))
        if problem not in (None, "unverified"):
            on_damaged(step, problem)
            continue
        try:
            value = read(step)
        except _DoesNotFit:
            raise
        except Exception as e:   # unreadable files of an unverified step
            first = (str(e).strip().splitlines() or [""])[0]
            on_damaged(step, f"{type(e).__name__}: {first[:200]}")
            continue
        yield step, value


def restore_subtree(directory: pathlib.Path, step: int, target: dict) -> dict:
    """Only the leaves of `target` (a nested dict of ShapeDtypeStructs with shardings, a subset
    of the saved train state, e.g. {"params": ...}) from a step: for init_from."""
    manager = _reader(directory, ocp.PyTreeCheckpointHandler())
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True)))
    finally:
        manager.close()
    return restored["state"]


def saved_shapes(directory: pathlib.Path, step: int) -> dict:
    """The saved train state's tree of shapes (from metadata; nothing is read)."""
    manager = _reader(directory, ocp.StandardCheckpointHandler())
    try:
        meta = manager.item_metadata(step)["state"]
    finally:
        manager.close()
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), meta.tree)


def _reader(directory, state_handler):
    return ocp.CheckpointManager(
        pathlib.Path(directory).absolute(), item_names=("state", "data"),
        item_handlers={"state": state_handler, "data": ocp.JsonCheckpointHandler()})


def abstract_like(tree, shardings):
    """ShapeDtypeStructs carrying the target shardings, for restoring."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


class WorkdirLock:
    """One run per workdir: an exclusive flock on workdir/.lock, taken by process 0 and released
    when the process exits, however it exits (the kernel drops a dead holder's lock)."""

    def __init__(self, workdir):
        self.path = pathlib.Path(workdir) / ".lock"
        self.file = None

    def __enter__(self):
        if jax.process_index() != 0:
            return self
        self.file = self.path.open("a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RuntimeError(f"{self.path.parent} is in use by another run ({holder}); wait "
                               f"for it to finish or use another --workdir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc):
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


def load_params(workdir) -> tuple[dict, dict]:
    """(config.json as a dict, the parameters of the newest intact checkpoint as host arrays)
    of a workdir of ours: for using a trained model elsewhere (generation, evaluation)."""
    workdir = pathlib.Path(workdir).expanduser()
    if not (workdir / "config.json").exists():
        raise FileNotFoundError(f"{workdir} holds no config.json: not a workdir of ours")
    params = read_newest(workdir / "checkpoints")["params"]
    return json.loads((workdir / "config.json").read_text()), params


def read_newest(directory: pathlib.Path, keys=("params",)) -> dict:
    """{key: host arrays} for those of `keys` the saved train state has ("params",
    "model_state", ...), from the step newest_readable chooses."""
    found = newest_readable(directory, lambda step: read_step(directory, step, keys))
    if found is None:
        raise FileNotFoundError(f"{directory} holds no intact checkpoint")
    return found[1]


def read_step(directory: pathlib.Path, step: int, keys=("params",)) -> dict:
    """{key: host arrays} for those of `keys` the train state saved at `step` has (empty
    collections, such as a model without BatchNorm's model_state, are left out)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = saved_shapes(directory, step)
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          {k: shapes[k] for k in keys if shapes.get(k)})
    return jax.device_get(restore_subtree(directory, step, target))


def average_newest(directory: pathlib.Path, n: int, keys=("params", "model_state")):
    """(steps, {key: host arrays}): the mean of `keys` over the newest `n` intact steps, newest
    first (checkpoint averaging, Vaswani et al. 2017, section 6.1), by mean_tree's rule. The
    optimiser state is not read: evaluation does not need it. Damaged steps are skipped and
    named in one line; fewer than `n` intact steps is an error naming those there are (an
    average of fewer would not be the one asked for)."""
    if n < 1:
        raise ValueError(f"the number of checkpoints to average must be at least 1, got {n}")
    damaged, steps = [], []

    def trees():
        for step, tree in itertools.islice(readable_steps(
                directory, lambda s: read_step(directory, s, keys),
                lambda s, why: damaged.append(f"{s} ({why})")), n):
            steps.append(step)
            yield tree
    try:
        mean = mean_tree(trees())
    except _NoTrees:
        mean = None
    if damaged:
        print(f"damaged checkpoints left out of the average in {directory}: {'; '.join(damaged)}",
              file=sys.stderr)
    if len(steps) < n:
        raise ValueError(f"cannot average the last {n} checkpoints: {directory} holds "
                         f"{len(steps)} intact one(s){': steps ' if steps else ''}"
                         f"{', '.join(map(str, steps))}")
    return steps, mean


class _NoTrees(ValueError):
    pass


def mean_tree(trees):
    """The leafwise arithmetic mean of pytrees of one structure, read one at a time (one tree
    and the running sum in memory). Floating leaves (weights, BatchNorm statistics) are summed
    in at least float32 and cast back to their dtype; other leaves (integer counters) are not
    averaged: the first tree's are kept."""
    first, total, count = None, None, 0
    for tree in trees:
        if first is None:
            first, total = tree, jax.tree.map(_widen, tree)
        elif jax.tree.structure(tree) != jax.tree.structure(first):
            raise ValueError(f"tree {count + 1} of those averaged does not have the first "
                             f"one's structure: {jax.tree.structure(tree)}")
        else:
            total = jax.tree.map(lambda t, x: t + _widen(x) if _floating(x) else t, total, tree)
        count += 1
    if first is None:
        raise _NoTrees("no trees to average")
    return jax.tree.map(
        lambda t, x: (t / count).astype(x.dtype) if _floating(x) else x, total, first)


def _floating(x) -> bool:
    return jnp.issubdtype(np.asarray(x).dtype, jnp.floating)


def _widen(x):
    x = np.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32)) if _floating(x) else x
