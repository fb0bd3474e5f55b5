"""Run a finished (or interrupted) run's evaluators on its newest checkpoint.

    python -m experiments.evaluate --workdir=DIR [--split=test] [--average_last=N]

The run's experiment, config and tokenizer come from DIR (config.json records which experiment
wrote it); every evaluator of config.evals logging to --split runs as it does at the end of
training. Prints one JSON object, then writes it to DIR/evaluate-SPLIT-STEP.json (a workdir that
cannot be written, read-only or full, gets a warning instead); metrics.jsonl is left as the run
wrote it. --average_last=N evaluates the mean of the parameters (and BatchNorm statistics) of
the newest N intact checkpoints instead (Vaswani et al. 2017, section 6.1: the last 5 for the
base models, 20 for the big ones); the result then names them in "averaged_steps" and is
written to DIR/evaluate-SPLIT-avgN-STEP.json.
"""

import importlib
import json
import pathlib
import sys

import jax
from absl import app, flags

from data.tokenizer import loading_only
from experiments import launch, tool_flags  # noqa: F401  (launch defines --workdir)
from experiments.launch import load_run
from train import evaluators, sharding
from train.checkpoint import Checkpointer, abstract_like, average_newest
from train.trainer import build

flags.declare_key_flag("workdir")   # listed by --help
flags.DEFINE_enum("split", "test", ["val", "test"], "Which evaluators to run.")
flags.DEFINE_integer("average_last", 0, "Evaluate the mean of the newest N intact checkpoints "
                     "(0 or 1: the newest alone).", lower_bound=0)
FLAGS = flags.FLAGS


def evaluate(workdir, split: str = "test", average_last: int = 0) -> dict:
    workdir = pathlib.Path(workdir)
    if average_last < 0:
        raise ValueError(f"--average_last must be 0 or more, got {average_last}")
    config, experiment = load_run(workdir)
    if not (workdir / "checkpoints").is_dir():
        raise FileNotFoundError(f"{workdir}/checkpoints not found: the run has not been trained")
    with loading_only(workdir / "tokenizer.json"):   # setup may not train what it should load
        run = importlib.import_module(experiment).setup(config, workdir)
    mesh = sharding.make_mesh(config.mesh)
    program = build(config, init_fn=run["init_fn"], loss_fn=run["loss_fn"], mesh=mesh)
    ckpt = Checkpointer(workdir, keep=config.train.keep_ckpts)
    restored = ckpt.restore_latest(abstract_like(program.abstract, program.state_shardings))
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"{workdir}/checkpoints holds no intact checkpoint")
    step, state, _ = restored
    averaged = {}
    if average_last > 1:
        state, averaged = averaged_state(workdir, state, program, average_last)
    config.evals = {k: v for k, v in config.evals.items() if v.split == split}
    if not config.evals:
        raise ValueError(f"the run has no evaluator for split {split!r}")
    suite = evaluators.build(config, evaluators.Context(
        program=program, data=run.get("data", {}), predict_fn=run.get("predict_fn"),
        fns=run.get("eval_fns", {})))
    with jax.set_mesh(mesh):
        results = suite.run(state, int(step), final=True).get(split, {})
    return {"step": int(step), "split": split, **results, **averaged}


def averaged_state(workdir: pathlib.Path, state, program, n: int):
    """`state` with the parameters and model state averaged over the newest n intact steps,
    placed as the trainer places them; and {"averaged_steps": [...]}, oldest first."""
    steps, mean = average_newest(workdir / "checkpoints", n)
    shardings = program.state_shardings
    state = state.replace(**{k: jax.device_put(v, getattr(shardings, k)) for k, v in mean.items()})
    return state, {"averaged_steps": sorted(steps)}


def save(workdir, result: dict) -> None:
    """result -> workdir/evaluate-SPLIT-STEP.json (evaluate-SPLIT-avgN-STEP.json for an average
    of N, beside the newest checkpoint's own); a warning when it cannot be written."""
    n = len(result.get("averaged_steps", ()))
    name = f"evaluate-{result['split']}-{f'avg{n}-' if n else ''}{result['step']}.json"
    path = pathlib.Path(workdir) / name
    try:
        path.write_text(json.dumps(result, indent=2))
    except OSError as e:
        print(f"warning: the result was not saved to {path}: {e.strerror or e}", file=sys.stderr)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    tool_flags.quiet_libraries()
    result = evaluate(FLAGS.workdir, FLAGS.split, FLAGS.average_last)
    print(json.dumps(result), flush=True)   # first: nothing computed is lost if saving fails
    if jax.process_index() == 0:
        save(FLAGS.workdir, result)


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    app.run(main)
