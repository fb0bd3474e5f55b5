"""Run a grid of one experiment's runs, then tabulate and plot what they measured.

    python -m experiments.sweep --config=experiments/configs/FILE.py:PRESET --workdir=DIR \
        --sweep=KEY=V1,V2 [--sweep=KEY2=V1,V2 ...] [--seeds=N] [--parallel=N] \
        [--name=NAMED_SWEEP] [--metric=NAME] [--config.KEY=VALUE ...]

The grid is the product of the --sweep axes, times N seeds: the seeds are config.seed + i for
i in 0..N-1 (config.seed after any --config.seed, so 0..N-1 by default). The experiment is the
one the config file names in `EXPERIMENT = "name"`; each run is that experiment's own command,

    python -m experiments.NAME --config=FILE:PRESET --workdir=DIR/RUN --config.KEY=VALUE ...

in a process of its own, with the sweep's --config.* flags passed through and the run's swept
values and seed added. RUN names the run by its values, e.g. `train.lr=0.001,seed=0`. Every
config is parsed here first, so an unknown key or a value of the wrong type stops the sweep
before anything runs.

Resuming: when a run's process exits 0, the sweep writes DIR/RUN/.done holding the config it
asked for. Running the same command again skips the runs whose .done matches and continues the
others (the experiment resumes from its checkpoints). A run directory whose config.json
disagrees with the sweep on a key the sweep sets is reported as a failure and left alone: use a
new --workdir or delete that directory. A run counts as failed when its process exits non-zero;
the others go on, and the sweep lists the failures and exits non-zero. Ctrl-C or SIGTERM is
passed on to the running runs (they checkpoint and stop) and no new run starts; a second one
kills them. Each run's output is kept in DIR/RUN/output.log (and shown live when
--parallel=1).

Writes
    DIR/results.csv   a row per finished run: a column per swept key (named as the key), `seed`,
                      then the last value of every numeric metric as `<split>/<name>`
    DIR/summary.md    mean ± std over seeds of the val and test metrics, per setting
    DIR/summary.png   the main metric (--metric, else the first test metric, else the first val
                      metric) against the first swept key, a line per setting of the others

`tensorboard --logdir DIR` shows every run's curves side by side.

Named sweeps: a config file may define SWEEPS = {"name": SPEC}, run with --name=name. SPEC maps

    KEY: [v1, v2, ...]                 an axis over one config key (column KEY)
    AXIS: [{"label": "a", KEY: v, ...}, ...]
                                       keys that move together (column AXIS, value the label)
    "overrides": {KEY: v, ...}         config values set in every run
    "seeds": N                         seeds per setting (--seeds overrides it)
    "metric": "test/accuracy"          the summary's main metric (--metric overrides it)
    "before": {"experiment": "pretrain_lm", "config": "gpt.py:tiny",
               "overrides": {KEY: v, ...}, "workdir": "pretrain"}
                                       one run made first, in DIR/pretrain, that the grid
                                       depends on (a config path relative to the sweep's config
                                       file's directory, or absolute)

Axes run in the order written (the first is the plot's x). Any string value may name the sweep
directory as "{sweep_dir}", e.g. "{sweep_dir}/pretrain". --sweep flags add axes after the named
ones; --config.* flags apply under the named overrides.
"""

import concurrent.futures
import contextlib
import csv
import dataclasses
import hashlib
import importlib
import importlib.util
import itertools
import json
import math
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from absl import flags
from ml_collections import config_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"
MARKER = ".done"
RESERVED = ("before", "seeds", "metric", "overrides")
SPLIT_ORDER = ("train", "val", "test")


class SweepError(ValueError):
    """A sweep that cannot run as asked; the message names the problem."""


# ----------------------------------------------------------------------------- the grid


@dataclasses.dataclass
class Axis:
    name: str                                  # the results column
    points: list[tuple[str, dict[str, Any]]]   # (label, {config key: value}) per point


@dataclasses.dataclass
class Run:
    name: str                     # DIR/<name>
    values: dict[str, str]        # column -> value: one per axis, then "seed"
    overrides: dict[str, str]     # config key -> command-line value, in command order
    experiment: str
    config: str                   # FILE.py:PRESET
    workdir: pathlib.Path = None
    requested: dict = None        # the parsed config, as config.json would hold it


def format_value(value) -> str:
    """A Python value as config_flags parses it back from --config.KEY=VALUE."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        inner = ", ".join(format_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return str(value)


def split_values(text: str) -> list[str]:
    """"1e-3,3e-3" -> ["1e-3", "3e-3"]; commas inside (), [] or quotes do not split."""
    out, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    out.append(cur.strip())
    return out


def axis_from_flag(spec: str) -> Axis:
    """--sweep=KEY=V1,V2 -> an Axis over KEY."""
    key, eq, values = spec.partition("=")
    key = key.strip()
    if not eq or not key:
        raise SweepError(f"--sweep={spec}: expected KEY=V1,V2,...")
    vals = split_values(values)
    if not values.strip() or any(v == "" for v in vals):
        raise SweepError(f"--sweep={spec}: an empty value; expected KEY=V1,V2,...")
    return Axis(key, [(v, {key: v}) for v in vals])


def axes_from_spec(spec: dict, where: str) -> list[Axis]:
    """The axes of a named sweep (every entry but the reserved ones)."""
    axes = []
    for name, values in spec.items():
        if name in RESERVED:
            continue
        if not isinstance(values, (list, tuple)) or not values:
            raise SweepError(f"{where}: {name!r} must map to a non-empty list of values")
        if all(isinstance(v, dict) for v in values):
            points = []
            for v in values:
                keys = {k: x for k, x in v.items() if k != "label"}
                if not keys:
                    raise SweepError(f"{where}: a point of {name!r} sets no config key: {v}")
                label = v.get("label") or ",".join(f"{k}={format_value(x)}"
                                                   for k, x in keys.items())
                points.append((str(label), keys))
            labels = [p[0] for p in points]
            if len(set(labels)) != len(labels):
                raise SweepError(f"{where}: the labels of {name!r} repeat: {labels}")
            axes.append(Axis(name, points))
        elif any(isinstance(v, dict) for v in values):
            raise SweepError(f"{where}: {name!r} mixes dicts and plain values")
        else:
            axes.append(Axis(name, [(format_value(v), {name: v}) for v in values]))
    return axes


def substitute(value, sweep_dir: pathlib.Path):
    """"{sweep_dir}/pretrain" -> the sweep directory's path + "/pretrain"."""
    return value.replace("{sweep_dir}", str(sweep_dir)) if isinstance(value, str) else value


def run_name(values: dict[str, str]) -> str:
    """{"train.lr": "0.001", "seed": "0"} -> "train.lr=0.001,seed=0", safe as a file name."""
    return safe_name(",".join(f"{k}={v}" for k, v in values.items()))


def safe_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._,=+-]", "_", name)
    if name.startswith((".", "-")):
        name = "_" + name
    if len(name) > 200:   # file names stop at 255 bytes
        name = name[:180] + "-" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return name


def make_grid(axes: list[Axis], seeds: list[int], fixed: dict[str, str], experiment: str,
              config: str, sweep_dir: pathlib.Path) -> list[Run]:
    """Every combination of the axes' points, for each seed (the seed varies fastest)."""
    runs = []
    for combo in itertools.product(*(a.points for a in axes)):
        for seed in seeds:
            values = {a.name: label for a, (label, _) in zip(axes, combo)}
            values["seed"] = str(seed)
            overrides = dict(fixed)
            for _, keys in combo:
                overrides.update({k: format_value(substitute(v, sweep_dir))
                                  for k, v in keys.items()})
            overrides["seed"] = str(seed)
            runs.append(Run(run_name(values), values, overrides, experiment, config))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise SweepError(f"two runs would share a directory: {dup}; use distinct values/labels")
    return runs


# ----------------------------------------------------------------------------- configs


def split_config_spec(spec: str) -> tuple[pathlib.Path, str]:
    """"experiments/configs/gpt.py:tiny" -> (path, "tiny")."""
    path, sep, preset = spec.partition(".py:")
    return pathlib.Path(path + ".py" if sep else path), preset


def config_module(path: pathlib.Path):
    """Import a config file: as experiments.configs.NAME when it is one of ours."""
    path = path.resolve()
    if not path.is_file():
        raise SweepError(f"no config file {path}")
    if path.parent == CONFIGS:
        return importlib.import_module(f"experiments.configs.{path.stem}")
    spec = importlib.util.spec_from_file_location(f"_sweep_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def experiment_of(module, path) -> str:
    name = getattr(module, "EXPERIMENT", None)
    if not isinstance(name, str) or not name:
        raise SweepError(f"{path} defines no EXPERIMENT = \"name\" (the experiments module "
                         f"that runs its configs, e.g. \"pretrain_lm\")")
    if importlib.util.find_spec(f"experiments.{name}") is None:
        raise SweepError(f"{path}: EXPERIMENT = {name!r}, but there is no experiments/{name}.py")
    return name


def parse_config(config: str, overrides: dict[str, str]):
    """The ConfigDict the experiment will see: its flags parse the same strings."""
    argv = ["sweep", f"--config={config}", *(f"--config.{k}={v}" for k, v in overrides.items())]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    try:
        fv(argv)
        return fv.config
    except Exception as e:   # absl and ml_collections raise many kinds; all mean a bad flag
        raise SweepError(f"{config} with {argv[2:]}: {e}") from e


def as_json(config) -> dict:
    return json.loads(config.to_json_best_effort())


_MISSING = object()


def lookup(tree: dict, key: str):
    """tree["a"]["b"] for "a.b"; _MISSING when there is no such key."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


# ----------------------------------------------------------------------------- run state


def read_marker(run_dir: pathlib.Path) -> dict | None:
    path = run_dir / MARKER
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def conflicts(run: Run) -> list[str]:
    """Keys the sweep sets whose value in the run's config.json is another one."""
    path = run.workdir / "config.json"
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    out = []
    for key in run.overrides:
        want, have = lookup(run.requested, key), lookup(saved, key)
        if have is not _MISSING and have != want:
            out.append(f"{key}={have!r} (the sweep asks for {want!r})")
    return out


def is_finished(run: Run) -> bool:
    marker = read_marker(run.workdir)
    if marker is not None:
        return marker.get("config") == run.requested
    return any(r.get("split") == "test" for r in read_rows(run.workdir))


def read_rows(run_dir: pathlib.Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):   # a line cut short by a killed run
            rows.append(json.loads(line))
    return rows


def program(experiment: str) -> list[str]:
    return [sys.executable, "-m", f"experiments.{experiment}"]


def command(run: Run) -> list[str]:
    return [*program(run.experiment), f"--config={run.config}", f"--workdir={run.workdir}",
            *(f"--config.{k}={v}" for k, v in run.overrides.items())]


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

    def launch(self, run: Run) -> int | None:
        """Run to completion; the exit status, or None when the sweep was stopped first."""
        if self.stopped:
            return None
        run.workdir.mkdir(parents=True, exist_ok=True)
        (run.workdir / MARKER).unlink(missing_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        cmd = command(run)
        with (run.workdir / "output.log").open("a") as log:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            # A session of its own: a terminal's Ctrl-C reaches the sweep, which passes it on
            # once (the trainer checkpoints on the first signal).
            with self.lock:
                if self.stopped:   # a signal came while this run was being set up
                    return None
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
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
        if rc == 0 and not self.stopped:
            marker = {"command": cmd, "config": run.requested, "finished": time.time()}
            (run.workdir / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        return rc


def log_tail(run_dir: pathlib.Path, n: int = 15) -> str:
    lines = (run_dir / "output.log").read_text(errors="replace").splitlines()
    return "\n".join("    " + line for line in lines[-n:])


def execute(runs: list[Run], launcher: Launcher, parallel: int) -> dict[str, str]:
    """Run the unfinished runs; {run name: "done" | "failed: why" | "stopped"} for all."""
    status, todo = {}, []
    for run in runs:
        if bad := conflicts(run):
            status[run.name] = ("failed: " + run.workdir.name + " holds another run: "
                                + "; ".join(bad) + ". Use a new --workdir, or delete "
                                "that directory to run it again.")
            launcher.say(f"[{run.name}] {status[run.name]}")
        elif is_finished(run):
            status[run.name] = "done"
        else:
            todo.append(run)
    skipped = len(runs) - len(todo)
    launcher.say(f"{len(runs)} runs: {skipped} finished earlier or refused, {len(todo)} to run"
                 + (f", {parallel} at a time" if parallel > 1 and todo else ""))

    counter = itertools.count(1)

    def one(run: Run) -> tuple[str, str]:
        start = time.time()
        if not launcher.stopped:
            launcher.say(f"[{run.name}] started: {' '.join(command(run))}")
        rc = launcher.launch(run)
        i = next(counter)
        if rc is None or launcher.stopped:
            return run.name, "stopped" if rc in (None, 0) else f"stopped (exit {rc})"
        took = time.time() - start
        if rc == 0:
            launcher.say(f"[{i}/{len(todo)}] {run.name}: done in {took:.0f} s")
            return run.name, "done"
        launcher.say(f"[{i}/{len(todo)}] {run.name}: FAILED (exit {rc}) after {took:.0f} s; "
                     f"{run.workdir / 'output.log'} ends:\n{log_tail(run.workdir)}")
        return run.name, f"failed: exit {rc}, see {run.workdir / 'output.log'}"

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


# ----------------------------------------------------------------------------- results


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def last_metrics(run_dir: pathlib.Path) -> dict[str, float | None]:
    """{"<split>/<name>": the last value logged} for every numeric metric of a run; a metric
    whose last value was non-finite (logged as null) maps to None."""
    out = {}
    for row in read_rows(run_dir):
        split = row.get("split")
        for k, v in row.items():
            if k in ("step", "split", "time"):
                continue
            if v is None or _is_number(v):
                out[f"{split}/{k}"] = v
    return out


def metric_columns(per_run: list[dict]) -> list[str]:
    """Splits in the order train, val, test, then the others; names by first appearance."""
    seen = list(dict.fromkeys(k for m in per_run for k in m))
    rank = lambda c: (SPLIT_ORDER.index(s) if (s := c.split("/", 1)[0]) in SPLIT_ORDER  # noqa: E731
                      else len(SPLIT_ORDER), "" if s in SPLIT_ORDER else s)
    return sorted(seen, key=rank)   # stable: first appearance within a split


def write_results(path: pathlib.Path, runs: list[Run], metrics: dict[str, dict]) -> list[str]:
    """results.csv: one row per run in `metrics`; returns the metric columns."""
    columns = metric_columns([metrics[r.name] for r in runs if r.name in metrics])
    keys = list(runs[0].values) if runs else ["seed"]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys + columns)
        for r in runs:
            if r.name in metrics:
                m = metrics[r.name]
                w.writerow([r.values[k] for k in keys]
                           + ["" if m.get(c) is None else m[c] for c in columns])
    os.replace(tmp, path)
    return columns


def read_results(path: pathlib.Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def settings_of(axes: list[str], rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows grouped by their values of the axes (every seed of a setting together)."""
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row[a] for a in axes), []).append(row)
    return groups


def mean_std(values: list[str]) -> tuple[float, float, int] | None:
    xs = [float(v) for v in values if v not in ("", None)]
    if not xs:
        return None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0), len(xs)


def _fmt(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}g}" if math.isfinite(x) else str(x)


def summary_table(fieldnames: list[str], rows: list[dict]) -> str:
    """Markdown: a row per setting, `n` seeds, mean ± std of every test and val metric."""
    axes = fieldnames[:fieldnames.index("seed")]
    metrics = [c for c in fieldnames if c.startswith("test/")]
    metrics += [c for c in fieldnames if c.startswith("val/")]
    lines = ["| " + " | ".join(axes + ["n"] + metrics) + " |",
             "|" + "---|" * (len(axes) + 1 + len(metrics))]
    for setting, group in settings_of(axes, rows).items():
        cells = []
        for m in metrics:
            s = mean_std([r[m] for r in group])
            cells.append("" if s is None else
                         _fmt(s[0]) if s[2] == 1 else f"{_fmt(s[0])} ± {_fmt(s[1], 2)}")
        lines.append("| " + " | ".join([*setting, str(len(group)), *cells]) + " |")
    return "\n".join(lines) + "\n"


def main_metric(fieldnames: list[str], wanted: str = "") -> str | None:
    """--metric (as `split/name`, or a bare name looked up in test, val, train), else the first
    test metric, else the first val metric."""
    metrics = fieldnames[fieldnames.index("seed") + 1:]
    if wanted:
        for c in ([wanted] if "/" in wanted else []) + [f"{s}/{wanted}" for s in
                                                        ("test", "val", "train")]:
            if c in metrics:
                return c
        raise SweepError(f"--metric={wanted}: no such metric in results.csv; there are "
                         f"{metrics}")
    for prefix in ("test/", "val/"):
        if first := next((c for c in metrics if c.startswith(prefix)), None):
            return first
    return metrics[0] if metrics else None


def write_summary(sweep_dir: pathlib.Path, header: str, status: dict[str, str],
                  metric: str = "") -> str | None:
    """summary.md and summary.png from results.csv; returns the main metric."""
    fieldnames, rows = read_results(sweep_dir / "results.csv")
    main = main_metric(fieldnames, metric)
    failed = {n: s for n, s in status.items() if s != "done"}
    text = [header, "",
            f"{len(rows)} finished runs of {len(status)}. Mean ± std over seeds (n = seeds "
            f"per setting; std of a sample). Main metric: {main or 'none'}.", "",
            summary_table(fieldnames, rows)]
    if failed:
        text += ["Not finished:", ""] + [f"- `{n}`: {s}" for n, s in failed.items()] + [""]
    (sweep_dir / "summary.md").write_text("\n".join(text))
    plot_summary(sweep_dir / "summary.png", fieldnames, rows, main)
    return main


def _numeric(labels: list[str]) -> list[float] | None:
    try:
        return [float(x) for x in labels]
    except ValueError:
        return None


def plot_summary(path: pathlib.Path, fieldnames: list[str], rows: list[dict],
                 metric: str | None) -> None:
    """The metric (mean over seeds, std as error bars) against the first axis; a line per
    setting of the other axes. With no axes, the metric per seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = fieldnames[:fieldnames.index("seed")]
    x_key, others = (axes[0], axes[1:]) if axes else ("seed", [])
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    xs_all = list(dict.fromkeys(r[x_key] for r in rows))
    numeric = _numeric(xs_all)
    pos = dict(zip(xs_all, numeric if numeric is not None else range(len(xs_all))))
    lines = settings_of(others, rows) if metric else {}
    for setting, group in lines.items():
        points = []
        for x, g in settings_of([x_key], group).items():
            if (s := mean_std([r[metric] for r in g])) is not None:
                points.append((pos[x[0]], s[0], s[1]))
        if not points:
            continue
        points.sort()
        label = ", ".join(f"{k}={v}" for k, v in zip(others, setting)) or None
        ax.errorbar([p[0] for p in points], [p[1] for p in points],
                    yerr=[p[2] for p in points], marker="o", capsize=3, label=label)
    if numeric is None:
        ax.set_xticks(range(len(xs_all)), xs_all, fontsize=8)
    elif len(numeric) > 1 and min(numeric) > 0 and max(numeric) / min(numeric) >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric or "no metric")
    if not ax.lines:
        ax.text(0.5, 0.5, "no finished run reported this metric", ha="center",
                transform=ax.transAxes)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=8)
    n = max((len(g) for g in settings_of(axes, rows).values()), default=0)
    ax.set_title(f"mean ± std over {n} seeds" if n > 1 else "", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line


def define_flags(fv: flags.FlagValues, argv: list[str]):
    config_flags.DEFINE_config_file("config", None, "FILE.py:PRESET of the experiment to sweep.",
                                    flag_values=fv, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "The sweep directory: a sub-directory per run, "
                        "results.csv, summary.md, summary.png.", flag_values=fv)
    flags.DEFINE_multi_string("sweep", [], "KEY=V1,V2,...: an axis of the grid (repeatable).",
                              flag_values=fv)
    flags.DEFINE_integer("seeds", None, "Seeds per setting: config.seed + 0..N-1 (default 1, "
                         "or the named sweep's).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("parallel", 1, "Runs at a time.", lower_bound=1, flag_values=fv)
    flags.DEFINE_string("name", "", "A named sweep of the config file's SWEEPS.", flag_values=fv)
    flags.DEFINE_string("metric", "", "The summary plot's metric, e.g. test/accuracy.",
                        flag_values=fv)


@dataclasses.dataclass
class Plan:
    runs: list[Run]
    before: Run | None
    sweep_dir: pathlib.Path
    parallel: int
    metric: str
    header: str


def plan(argv: list[str]) -> Plan:
    """Parse the command line and every run's config; nothing runs yet."""
    fv = flags.FlagValues()
    define_flags(fv, argv)
    try:
        fv(argv)
    except Exception as e:   # bad flags or a bad --config.* override
        raise SweepError(str(e)) from e
    if fv["config"].value is None or not fv.workdir:
        raise SweepError("--config=FILE.py:PRESET and --workdir=DIR are required")
    config_spec = config_flags.get_config_filename(fv["config"])
    if ":" not in config_spec:
        raise SweepError(f"--config={config_spec}: name a preset, FILE.py:PRESET")
    path, _ = split_config_spec(config_spec)
    module = config_module(path)
    experiment = experiment_of(module, path)
    sweep_dir = pathlib.Path(fv.workdir).resolve()
    passed = {k: format_value(v) for k, v in config_flags.get_override_values(fv["config"]).items()}

    spec, where = {}, str(path)
    if fv.name:
        sweeps = getattr(module, "SWEEPS", {})
        if fv.name not in sweeps:
            raise SweepError(f"{path} has no sweep named {fv.name!r}; it has "
                             f"{sorted(sweeps) or 'none (no SWEEPS)'}")
        spec, where = sweeps[fv.name], f"{path}: SWEEPS[{fv.name!r}]"
        unknown = set(spec.get("before", {})) - {"experiment", "config", "overrides", "workdir"}
        if unknown:
            raise SweepError(f"{where}: 'before' has unknown entries {sorted(unknown)}")
    axes = axes_from_spec(spec, where) + [axis_from_flag(s) for s in fv.sweep]
    names = [a.name for a in axes]
    if len(set(names)) != len(names):
        raise SweepError(f"an axis is given twice: {names}")
    swept = [k for a in axes for _, keys in a.points for k in keys]
    if "seed" in swept or "seed" in names:
        raise SweepError("the seed is not swept as a key; use --seeds=N")
    for key in dict.fromkeys(swept):
        if key in passed:
            raise SweepError(f"{key} is both swept and set by --config.{key}")

    fixed = {k: format_value(substitute(v, sweep_dir))
             for k, v in spec.get("overrides", {}).items()}
    fixed.update(passed)
    n_seeds = fv.seeds or spec.get("seeds", 1)
    base = parse_config(config_spec, fixed)
    if "seed" not in base:
        raise SweepError(f"{config_spec} has no `seed` key to vary")
    seeds = [int(base.seed) + i for i in range(n_seeds)]
    runs = make_grid(axes, seeds, fixed, experiment, config_spec, sweep_dir)
    for run in runs:
        run.workdir = sweep_dir / run.name
        run.requested = as_json(parse_config(run.config, run.overrides))

    before = None
    if b := spec.get("before"):
        b_path, preset = split_config_spec(b["config"])
        b_path = b_path if b_path.is_absolute() else path.parent / b_path
        b_spec = f"{b_path}:{preset}" if preset else str(b_path)
        b_over = {k: format_value(substitute(v, sweep_dir))
                  for k, v in b.get("overrides", {}).items()}
        name = b.get("workdir", "before")
        if experiment_of(config_module(b_path), b_path) != b["experiment"]:
            raise SweepError(f"{where}: 'before' runs {b['experiment']}, but {b_path} names "
                             f"another experiment")
        if safe_name(name) != name or name in [r.name for r in runs]:
            raise SweepError(f"{where}: 'before' workdir {name!r} must be a plain directory "
                             f"name that no run of the grid takes")
        before = Run(name, {}, b_over, b["experiment"], b_spec,
                     workdir=sweep_dir / name)
        before.requested = as_json(parse_config(b_spec, b_over))

    header = (f"# Sweep of {experiment}: {config_spec}"
              + (f" (named sweep {fv.name})" if fv.name else "") + "\n\n"
              + "    python -m experiments.sweep " + " ".join(argv[1:]))
    return Plan(runs, before, sweep_dir, fv.parallel, fv.metric or spec.get("metric", ""),
                header)


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        importlib.import_module("experiments.launch").print_config_help(argv)
        fv = flags.FlagValues()
        define_flags(fv, argv[:1])
        print(__doc__ + "\nflags:\n" + fv.get_help())
        return 0
    try:
        p = plan(argv)
    except SweepError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 2
    p.sweep_dir.mkdir(parents=True, exist_ok=True)
    launcher = Launcher(echo=p.parallel <= 1)
    with forwarding_signals(launcher):
        if p.before is not None:
            s = execute([p.before], launcher, 1)[p.before.name]
            if s != "done":
                print(f"sweep: the preliminary run {p.before.workdir} did not finish ({s}); "
                      f"the grid needs it", file=sys.stderr)
                return 128 + signal.Signals[launcher.stopped] if launcher.stopped else 1
        status = execute(p.runs, launcher, p.parallel)
    metrics = {r.name: last_metrics(r.workdir) for r in p.runs if status[r.name] == "done"}
    write_results(p.sweep_dir / "results.csv", p.runs, metrics)
    try:
        main_name = write_summary(p.sweep_dir, p.header, status, p.metric)
    except SweepError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 2
    print(f"\n{len(metrics)} of {len(p.runs)} runs finished; main metric {main_name}\n"
          f"written: {p.sweep_dir / 'results.csv'}, summary.md, summary.png")
    failed = {n: s for n, s in status.items() if s.startswith("failed")}
    if failed:
        print(f"\n{len(failed)} failed:\n" + "\n".join(f"  {n}: {s}" for n, s in failed.items()),
              file=sys.stderr)
    if launcher.stopped:
        print(f"\nstopped by {launcher.stopped}: run the same command to continue",
              file=sys.stderr)
        return 128 + signal.Signals[launcher.stopped]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
