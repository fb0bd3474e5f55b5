"""Run a grid of one experiment's runs, then tabulate and plot what they measured.

    python -m experiments.sweep --config=experiments/configs/FILE.py:PRESET --workdir=DIR \
        --sweep=KEY=V1,V2 [--sweep=KEY2=V1,V2 ...] [--seeds=N] [--parallel=N] \
        [--name=NAMED_SWEEP] [--metric=NAME] [--rerun_changed] [--config.KEY=VALUE ...]

The grid is the product of the --sweep axes, times N seeds: the seeds are config.seed + i for
i in 0..N-1 (config.seed after any --config.seed, so 0..N-1 by default). The experiment is the
one the config file names in `EXPERIMENT = "name"`; each run is that experiment's own command,

    python -m experiments.NAME --config=FILE:PRESET --workdir=DIR/RUN --config.KEY=VALUE ...

in a process of its own, with the sweep's --config.* flags passed through and the run's swept
values and seed added. RUN names the run by its values, e.g. `train.lr=0.001,seed=0`. Every
config is parsed here first, so an unknown key or a value of the wrong type stops the sweep
before anything runs.

Resuming: before a run's process starts, the sweep records the config it asks for in
DIR/RUN/.sweep.json, and marks it done there when the process exits 0. A run is finished when
that record is done for the config asked for now and the trainer wrote DIR/RUN/finished.json
at the end of a successful fit. Running the same command again skips the finished runs and
continues the others (the experiment resumes from its checkpoints). A run directory made under
another config (the record's config, else the run's config.json, compared key by key but for
`provenance`) refuses the whole sweep before anything runs, naming the keys; --rerun_changed
deletes those directories and makes the runs again. A run counts as failed when its process
exits non-zero; the others go on, and the sweep lists the failures and exits non-zero. Ctrl-C
or SIGTERM is passed on to the running runs (they checkpoint and stop) and no new run starts; a
second one kills them. A run dies with its sweep however the sweep dies (SIGKILL too: on Linux
the kernel sends it SIGTERM); a rerun waits for a run's workdir lock left by such a run. One
sweep at a time per DIR (DIR/.sweep.lock): a second one is refused and writes nothing. Each
run's output is kept in DIR/RUN/output.log (and shown live when --parallel=1).

--parallel=N on a machine with GPUs gives each of the N runs at a time its own GPUs
(CUDA_VISIBLE_DEVICES, the GPUs split evenly; N must divide their number); on TPU it refuses
N > 1 (the runs would share the chips); on CPU the runs share the cores.

Writes (experiments/sweeps/results.py says what each column holds)
    DIR/results.csv   a row per finished run: a column per swept key (named as the key), `seed`,
                      the other config keys that vary, `run`, `params`, `wall_s`, then every
                      numeric metric's final value as `<split>/<name>` and, for a val/test
                      metric logged at several steps, `<split>/<name>:best` and `:best_step`
    DIR/summary.md    the command that made the sweep, then mean ± std (sample std) and n over
                      seeds of every metric, a row per setting in the sweep's order
    DIR/summary.png   the main metric (--metric, else the first test metric, else the first val
                      metric) against the first swept key (a log axis when its values span a
                      decade), std as error bars, a line per setting of the others

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

import dataclasses
import pathlib
import shlex
import shutil
import signal
import sys

from absl import flags
from ml_collections import config_flags

from experiments.sweeps.grid import (  # noqa: F401  (the sweep's names, in one place)
    Axis, Run, SweepError, as_json, axes_from_spec, axis_from_flag, check_distinct,
    config_module, experiment_of, format_value, make_grid, parse_config, run_name, safe_name,
    split_config_spec, split_values, substitute)
from experiments.sweeps.results import (  # noqa: F401
    last_metrics, main_metric, read_results, results_table, run_result, write_results,
    write_summary)
from experiments.sweeps.runner import (  # noqa: F401
    MARKER, Launcher, SweepLock, conflicts, device_slots, execute, forwarding_signals,
    is_finished)


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
    flags.DEFINE_integer("parallel", 1, "Runs at a time; on GPUs each gets its own (N must "
                         "divide their number).", lower_bound=1, flag_values=fv)
    flags.DEFINE_string("name", "", "A named sweep of the config file's SWEEPS.", flag_values=fv)
    flags.DEFINE_string("metric", "", "The summary plot's metric, e.g. test/accuracy.",
                        flag_values=fv)
    flags.DEFINE_bool("rerun_changed", False, "Delete the run directories made under another "
                      "config than the one asked for now, and make those runs again.",
                      flag_values=fv)


@dataclasses.dataclass
class Plan:
    runs: list[Run]
    before: Run | None
    sweep_dir: pathlib.Path
    parallel: int
    metric: str
    header: str
    rerun_changed: bool = False


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
    check_distinct(runs)

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
              + "    python -m experiments.sweep " + shlex.join(argv[1:]))
    return Plan(runs, before, sweep_dir, fv.parallel, fv.metric or spec.get("metric", ""),
                header, fv.rerun_changed)


def refuse_changed(p: Plan) -> None:
    """Runs whose directory was made under another config: refused, or emptied on request."""
    runs = ([p.before] if p.before else []) + p.runs
    changed = {r.name: bad for r in runs if (bad := conflicts(r))}
    if changed and not p.rerun_changed:
        raise SweepError(
            "these run directories were made under another config (key: saved -> asked):\n"
            + "\n".join(f"  {n}: " + "; ".join(bad) for n, bad in changed.items())
            + "\nUse a new --workdir, or --rerun_changed to delete them and run them again.")
    for name in changed:
        print(f"[{name}] made under another config: deleted, to run again", flush=True)
        shutil.rmtree(p.sweep_dir / name)


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        from experiments import launch   # here: it defines the experiments' absl flags
        launch.print_config_help(argv)
        fv = flags.FlagValues()
        define_flags(fv, argv[:1])
        print(__doc__ + "\nflags:\n" + fv.get_help())
        return 0
    try:
        p = plan(argv)
        slots = device_slots(p.parallel)
        p.sweep_dir.mkdir(parents=True, exist_ok=True)
        with SweepLock(p.sweep_dir):
            refuse_changed(p)
            return sweep(p, slots)
    except SweepError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 2


def sweep(p: Plan, slots: list[dict]) -> int:
    launcher = Launcher(echo=len(slots) <= 1)
    with forwarding_signals(launcher):
        if p.before is not None:
            s = execute([p.before], launcher, slots[:1])[p.before.name]
            if s != "done":
                print(f"sweep: the preliminary run {p.before.workdir} did not finish ({s}); "
                      f"the grid needs it", file=sys.stderr)
                return 128 + signal.Signals[launcher.stopped] if launcher.stopped else 1
        status = execute(p.runs, launcher, slots)
    results = {r.name: run_result(r.workdir) for r in p.runs if status[r.name] == "done"}
    table = results_table(p.runs, results)
    main_name = main_metric(table.metrics, p.metric)   # a bad --metric: refused, nothing written
    write_results(p.sweep_dir / "results.csv", table)
    write_summary(p.sweep_dir, p.header, table, status, main_name)
    print(f"\n{len(results)} of {len(p.runs)} runs finished; main metric {main_name}\n"
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
