"""The sweep's grid: axes from --sweep flags and named sweeps, the runs they make, and the
config each run will see (parsed here by the experiments' own flags, so a bad key stops the
sweep before anything runs)."""

import dataclasses
import hashlib
import importlib.util
import itertools
import json
import pathlib
import re
from typing import Any

from absl import flags
from ml_collections import config_flags

from experiments import configs

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESERVED = ("before", "seeds", "metric", "overrides")

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
    """Import a config file (experiments/configs/__init__.py: config_module)."""
    if not pathlib.Path(path).resolve().is_file():
        raise SweepError(f"no config file {pathlib.Path(path).resolve()}")
    return configs.config_module(path)


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



def flat(tree: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_distinct(runs: list[Run]) -> None:
    """Two runs with one config: an axis lists a value twice under two spellings (1e-3, 0.001)."""
    seen = {}
    for run in runs:
        other = seen.setdefault(json.dumps(run.requested, sort_keys=True), run)
        if other is not run:
            same = [f"{k}={other.values[k]} and {k}={run.values[k]}" for k in run.values
                    if other.values[k] != run.values[k]]
            raise SweepError(f"{', '.join(same)} are the same setting (one config); list each "
                             f"value once")
