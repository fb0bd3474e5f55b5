"""Running a sweep's runs: a process per run (dying with the sweep), its output teed to
DIR/RUN/output.log, signals passed on, a lock per sweep directory, accelerators split between
parallel runs, and what counts as a finished run.

A run is finished when the trainer wrote DIR/RUN/finished.json (train/metrics.py) and the
sweep's record DIR/RUN/.sweep.json says its process exited 0 under the config asked for now.
The record is written before the process starts, so a directory always tells which config the
sweep launched in it; a later sweep asking for another config there is refused (or, with
--rerun_changed, the directory is emptied and the run made again).
"""

import concurrent.futures
import contextlib
import fcntl
import glob
import itertools
import json
import os
import pathlib
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

from experiments.sweeps.grid import ROOT, Run, SweepError, flat
from train.metrics import read_finished

MARKER = ".sweep.json"
SWEEP_LOCK = ".sweep.lock"
GUARD = pathlib.Path(__file__).with_name("guard.py")
NOT_THE_RESULT = ("provenance",)   # where a run came from, not what it computes


# ----------------------------------------------------------------------------- run state


def read_marker(run_dir: pathlib.Path) -> dict | None:
    try:
        marker = json.loads((run_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def write_marker(run_dir: pathlib.Path, marker: dict) -> None:
    tmp = run_dir / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1) + "\n")
    tmp.replace(run_dir / MARKER)


def config_diff(have: dict, want: dict) -> list[str]:
    """'key: have -> want' for every key whose value differs (provenance aside)."""
    a, b = flat(have), flat(want)
    keys = [k for k in dict.fromkeys([*b, *a])
            if not k.startswith(NOT_THE_RESULT) and a.get(k, "<absent>") != b.get(k, "<absent>")]
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys]


def conflicts(run: Run) -> list[str]:
    """How the config that made the run's directory differs from the one asked for now: the
    config the sweep launched there (its record), else the run's own config.json."""
    if (marker := read_marker(run.workdir)) is not None and "config" in marker:
        return config_diff(marker["config"], run.requested)
    path = run.workdir / "config.json"
    if not path.exists():
        return []
    return config_diff(json.loads(path.read_text()), run.requested)


def is_finished(run: Run) -> bool:
    marker = read_marker(run.workdir)
    return (marker is not None and "done" in marker and marker.get("config") == run.requested
            and read_finished(run.workdir) is not None)


def program(experiment: str) -> list[str]:
    return [sys.executable, "-m", f"experiments.{experiment}"]


def command(run: Run) -> list[str]:
    return [*program(run.experiment), f"--config={run.config}", f"--workdir={run.workdir}",
            *(f"--config.{k}={v}" for k, v in run.overrides.items())]


# ----------------------------------------------------------------------------- locks


def lock_holder(path: pathlib.Path) -> str | None:
    """Who holds the flock on `path` (its text), or None when nobody does."""
    if not path.exists():
        return None
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            return f.read().strip() or "another process"
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


class SweepLock:
    """One sweep per directory: an flock on DIR/.sweep.lock holding the sweep's pid; the kernel
    drops it when the sweep dies, however it dies."""

    def __init__(self, sweep_dir: pathlib.Path):
        self.path = sweep_dir / SWEEP_LOCK
        self.file = None

    def __enter__(self):
        self.file = self.path.open("a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown pid"
            self.file.close()
            raise SweepError(f"{self.path.parent} is in use by another sweep ({holder}); wait "
                             f"for it to end or stop it") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


# ----------------------------------------------------------------------------- accelerators


def accelerators() -> tuple[str, list[str]]:
    """("gpu" | "tpu" | "cpu", the device ids the runs' processes would see), without jax."""
    platforms = os.environ.get("JAX_PLATFORMS", "").lower()
    if platforms and not any(p in platforms for p in ("cuda", "gpu", "rocm", "tpu")):
        return "cpu", []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip() and not d.startswith("-")]
        return ("gpu", ids) if ids else ("cpu", [])
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=60)
            if out.returncode == 0 and out.stdout.split():
                return "gpu", out.stdout.split()
    chips = glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*")
    return ("tpu", sorted(chips)) if chips else ("cpu", [])


def device_slots(parallel: int) -> list[dict[str, str]]:
    """The environment of each of `parallel` run slots: its own GPUs, split evenly."""
    if parallel == 1:
        return [{}]
    kind, ids = accelerators()
    if kind == "cpu":
        return [{} for _ in range(parallel)]
    if kind == "tpu":
        raise SweepError(f"--parallel={parallel}: the runs would share this machine's "
                         f"{len(ids)} TPU chips; run them one at a time (--parallel=1)")
    if len(ids) % parallel:
        raise SweepError(f"--parallel={parallel} does not divide this machine's {len(ids)} GPUs "
                         f"({','.join(ids)}); use a divisor of {len(ids)}")
    per = len(ids) // parallel
    return [{"CUDA_VISIBLE_DEVICES": ",".join(ids[i * per:(i + 1) * per])}
            for i in range(parallel)]


# ----------------------------------------------------------------------------- execution


class Launcher:
    """Starts runs as processes, tees their output to DIR/RUN/output.log, passes signals on."""

    def __init__(self, echo: bool):
        self.echo = echo
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.RLock()
        self.stopped = None   # the signal that asked the sweep to stop

    def handle(self, signum, frame):
        second = self.stopped is not None
        self.stopped = signal.Signals(signum).name
        # Straight to the file descriptor: the handler may interrupt a print.
        os.write(2, (f"\n{self.stopped}: " + (
            "killing the running runs\n" if second else "the running runs checkpoint and "
            "stop; no new run starts (again to kill them)\n")).encode())
        with self.lock:   # re-entrant: this thread may hold it already
            for p in list(self.procs):
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGKILL if second else signum)

    def say(self, msg: str):
        with self.lock:
            print(msg, flush=True)

    def wait_for_lock(self, run: Run) -> bool:
        """A run left by a sweep that died may still be saving its checkpoint: wait for its
        workdir lock rather than fail on it. False when the sweep was stopped meanwhile."""
        told = False
        while (holder := lock_holder(run.workdir / ".lock")) is not None:
            if self.stopped:
                return False
            if not told:
                self.say(f"[{run.name}] waiting for the process that holds its workdir "
                         f"({holder}) to stop")
                told = True
            time.sleep(0.5)
        return True

    def launch(self, run: Run, env_extra: dict[str, str] | None = None) -> int | None:
        """Run to completion; the exit status, or None when the sweep was stopped first."""
        if self.stopped:
            return None
        run.workdir.mkdir(parents=True, exist_ok=True)
        if not self.wait_for_lock(run):
            return None
        cmd = command(run)
        marker = {"command": cmd, "config": run.requested, "launched": time.time()}
        write_marker(run.workdir, marker)   # not done: the run is under way
        env = dict(os.environ, **(env_extra or {}))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        with (run.workdir / "output.log").open("a") as log:
            log.write("".join(f"{k}={v} " for k, v in (env_extra or {}).items())
                      + f"$ {' '.join(cmd)}\n")
            log.flush()
            # A session of its own: a terminal's Ctrl-C reaches the sweep, which passes it on
            # once (the trainer checkpoints on the first signal).
            with self.lock:
                if self.stopped:   # a signal came while this run was being set up
                    return None
                proc = subprocess.Popen([sys.executable, str(GUARD), str(os.getpid()), *cmd],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True, text=True,
                                        errors="replace", bufsize=1)
                self.procs.add(proc)
            try:
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    if self.echo:
                        sys.stdout.write(line)
                        sys.stdout.flush()
                rc = proc.wait()
            finally:
                with self.lock:
                    self.procs.discard(proc)
        if rc == 0 and not self.stopped and read_finished(run.workdir) is not None:
            write_marker(run.workdir, dict(marker, done=time.time()))
        return rc


def log_tail(run_dir: pathlib.Path, n: int = 15) -> str:
    lines = (run_dir / "output.log").read_text(errors="replace").splitlines()
    return "\n".join("    " + line for line in lines[-n:])


def execute(runs: list[Run], launcher: Launcher, slots: list[dict]) -> dict[str, str]:
    """Run the unfinished runs, len(slots) at a time, each with its slot's environment;
    {run name: "done" | "failed: why" | "stopped"} for all."""
    status = {r.name: "done" for r in runs if is_finished(r)}
    todo = [r for r in runs if r.name not in status]
    parallel = min(len(slots), max(len(todo), 1))
    launcher.say(f"{len(runs)} runs: {len(status)} finished earlier, {len(todo)} to run"
                 + (f", {parallel} at a time" if parallel > 1 else ""))
    free = queue.Queue()
    for slot in slots:
        free.put(slot)
    counter = itertools.count(1)

    def one(run: Run) -> tuple[str, str]:
        start = time.time()
        if not launcher.stopped:
            launcher.say(f"[{run.name}] started: {' '.join(command(run))}")
        slot = free.get()
        try:
            rc = launcher.launch(run, slot)
        finally:
            free.put(slot)
        i = next(counter)
        if rc is None or launcher.stopped:
            return run.name, "stopped" if rc in (None, 0) else f"stopped (exit {rc})"
        took = time.time() - start
        if rc == 0 and read_finished(run.workdir) is not None:
            launcher.say(f"[{i}/{len(todo)}] {run.name}: done in {took:.0f} s")
            return run.name, "done"
        why = f"exit {rc}" if rc else "exit 0 without the trainer's finished.json"
        launcher.say(f"[{i}/{len(todo)}] {run.name}: FAILED ({why}) after {took:.0f} s; "
                     f"{run.workdir / 'output.log'} ends:\n{log_tail(run.workdir)}")
        return run.name, f"failed: {why}, see {run.workdir / 'output.log'}"

    if parallel <= 1:
        for run in todo:
            name, s = one(run)
            status[name] = s
    else:
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            pending = {pool.submit(one, run) for run in todo}
            while pending:   # short waits: signal handlers run in this thread
                done, pending = concurrent.futures.wait(pending, timeout=0.5)
                for f in done:
                    name, s = f.result()
                    status[name] = s
    return {r.name: status[r.name] for r in runs}


@contextlib.contextmanager
def forwarding_signals(launcher: Launcher):
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):   # not the main thread
            previous[sig] = signal.signal(sig, launcher.handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
