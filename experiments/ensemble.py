"""Ensembles and multi-crop evaluation of trained image classifiers (classify_images runs).

    python -m experiments.ensemble --workdir=DIR [--workdir=DIR2 ...] [--split=test] \
        [--crop_size=32]

Each --workdir is a workdir of ours, or a sweep directory whose finished runs (those with .done)
are taken, e.g. the `ensemble` sweep of convnets.py (five seeds of ResNet-8 on the colour
task). Every run's newest checkpoint (parameters and BatchNorm statistics) predicts the split
twice: on the central crop_size window of each image, and on AlexNet's ten patches (Krizhevsky
et al. 2012, section 4.1: four corners, centre, and their mirrors), averaging the ten softmax
outputs. The ensemble of the first k runs averages their probabilities (k = 1 .. N). Reports
each single model's top-1, their mean, the ensemble's top-1 and its gain over the mean single
model, and the evaluation time per image of one model with one and with ten crops (after
compiling, median of --repeats passes). Writes DIR/ensemble.json and DIR/ensemble.md (DIR: the
first --workdir) and prints the table. --runs, the former name of --workdir, works for one
release.

The runs must share their data (data.* equal, and one split: data.split_seed >= 0 or one
config.seed), so that they are scored on the same images.
"""

import json
import pathlib
import statistics
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags

from data import augment
from experiments import classify_images, tool_flags
from train import checkpoint, objectives
from train.evaluators.classification import average_probabilities

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    if "workdir" in flag_values:   # the experiments' single --workdir: an ensemble reads several
        delattr(flag_values, "workdir")
    flags.DEFINE_multi_string("workdir", None, "A workdir, or a sweep directory (its finished "
                              "runs); one or more.", flag_values=flag_values)
    tool_flags.define_renamed("runs", "workdir", flag_values)
    flags.DEFINE_enum("split", "test", ["val", "test"], "The split to score.",
                      flag_values=flag_values)
    flags.DEFINE_integer("crop_size", 0, "The crops' side (default: the runs' "
                         "data.image_size).", flag_values=flag_values)
    flags.DEFINE_integer("batch_size", 128, "Images per forward pass.", flag_values=flag_values)
    flags.DEFINE_integer("repeats", 3, "Timed passes per crop scheme (the median is "
                         "reported).", flag_values=flag_values)
    flags.mark_flag_as_required("workdir", flag_values=flag_values)


def run_dirs(paths) -> list[pathlib.Path]:
    """Workdirs as given, sweep directories expanded to their finished runs, in name order."""
    out = []
    for p in map(pathlib.Path, paths):
        if (p / "config.json").exists():
            out.append(p)
        else:
            found = sorted(d for d in p.iterdir() if (d / ".done").exists()) if p.is_dir() else []
            if not found:
                raise FileNotFoundError(f"{p} is neither a workdir (config.json) nor a sweep "
                                        f"directory with finished runs (.done)")
            out += found
    return out


def load_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
    path = workdir / "config.json"
    saved = json.loads(path.read_text())
    saved.pop("provenance", None)
    return ml_collections.ConfigDict(saved)


def shared_data_config(configs: list[ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
    """The runs' common data config; an error when their images would differ."""
    first = configs[0]
    for c in configs[1:]:
        if c.data.to_dict() != first.data.to_dict():
            raise ValueError("the runs' data configs differ; an ensemble needs one test set")
    if first.data.split_seed < 0 and len({c.seed for c in configs}) > 1:
        raise ValueError("the runs draw their splits from their own seeds (data.split_seed "
                         "-1): their test sets differ; train them with data.split_seed >= 0")
    return first.data


def load_variables(workdir: pathlib.Path) -> dict:
    """{"params", *model_state} of the newest intact checkpoint, as host arrays."""
    got = checkpoint.read_newest(workdir / "checkpoints", ("params", "model_state"))
    return {"params": got["params"], **(got.get("model_state") or {})}


CROP_OPS = {1: "center_crop", 10: "ten_crop"}   # data/augment.py's evaluation views


def predictor(model, crop_size: int, crops: int):
    """jit(variables, images) -> logits [crops, n, classes] (crops 1: the central window)."""
    views = augment.parse_eval(f"{CROP_OPS[crops]}({crop_size})")

    def forward(variables, images):
        x = views(images)
        logits = model.apply(variables, x.reshape(-1, *x.shape[2:]), train=False)
        return logits.reshape(crops, -1, logits.shape[-1])
    return jax.jit(forward)


def predict(fn, variables, images: np.ndarray, batch_size: int) -> np.ndarray:
    """fn over the images in fixed-size batches (the last padded): [crops, n, classes]."""
    out = []
    for start in range(0, len(images), batch_size):
        rows = np.resize(np.arange(start, min(start + batch_size, len(images))), batch_size)
        out.append(np.asarray(fn(variables, images[rows]))[:, :min(batch_size,
                                                                   len(images) - start)])
    return np.concatenate(out, axis=1)


def top1(probs, labels) -> float:
    """Ties and non-finite probabilities count as wrong (objectives.true_class_rank)."""
    return float(objectives.accuracy(probs, np.asarray(labels)))


def ensemble_table(probs: np.ndarray, labels: np.ndarray) -> dict:
    """probs [runs, n, classes] -> single-model top-1s, their mean, and the ensemble of the
    first k runs (k = 1 .. N) with its gain over the mean single model."""
    singles = [top1(p, labels) for p in probs]
    ensembles = [top1(np.mean(probs[:k], axis=0), labels) for k in range(1, len(probs) + 1)]
    mean = statistics.fmean(singles)
    return {"single": singles, "single_mean": mean,
            "single_std": statistics.stdev(singles) if len(singles) > 1 else 0.0,
            "ensemble_first_k": ensembles, "ensemble": ensembles[-1],
            "gain": ensembles[-1] - mean}


def timed(fn, repeats: int) -> float:
    fn()   # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def evaluate(paths, split: str = "test", crop_size: int = 0, batch_size: int = 128,
             repeats: int = 3) -> dict:
    dirs = run_dirs(paths)
    configs = [load_config(d) for d in dirs]
    data = shared_data_config(configs)
    task = classify_images.load_data(configs[0])
    images, labels = task.splits[split]["images"], task.splits[split]["labels"]
    size = crop_size or data.image_size
    probs = {1: [], 10: []}
    seconds = {1: [], 10: []}
    compiled = {}   # runs of one architecture (seeds) share their compiled predictors
    for d, config in zip(dirs, configs):
        model = classify_images.build_model(config, len(task.classes))
        variables = jax.device_put(load_variables(d))
        for crops in (1, 10):
            key = (config.model.to_json(), crops)
            fn = compiled[key] = compiled.get(key) or predictor(model, size, crops)
            logits = predict(fn, variables, images, batch_size)
            probs[crops].append(np.asarray(average_probabilities(logits)))
            if d == dirs[0]:
                seconds[crops] = timed(lambda: predict(fn, variables, images, batch_size),
                                       repeats)
    out = {"runs": [d.name for d in dirs], "split": split, "examples": len(labels),
           "image_side": int(images.shape[1]), "crop_size": size,
           "one_crop": ensemble_table(np.stack(probs[1]), labels),
           "ten_crops": ensemble_table(np.stack(probs[10]), labels),
           "ms_per_image": {"one_crop": 1e3 * seconds[1] / len(labels),
                            "ten_crops": 1e3 * seconds[10] / len(labels)}}
    return out


def markdown(r: dict) -> str:
    pct = lambda x: f"{100 * x:.1f}%"   # noqa: E731
    n = len(r["runs"])
    lines = [f"{r['split']} top-1 on {r['examples']} images ({r['image_side']}x{r['image_side']}, "
             f"crops {r['crop_size']}x{r['crop_size']}), {n} models:", "",
             "| evaluation | single model (mean ± std) | ensemble of " + str(n)
             + " | gain | ms per image (one model) |", "|---|---|---|---|---|"]
    for key, name in (("one_crop", "centre crop"), ("ten_crops", "10 crops (AlexNet)")):
        t = r[key]
        lines.append(f"| {name} | {pct(t['single_mean'])} ± {100 * t['single_std']:.1f} | "
                     f"{pct(t['ensemble'])} | {100 * t['gain']:+.1f} points | "
                     f"{r['ms_per_image'][key]:.2f} |")
    lines += ["", "| models k | " + " | ".join(str(k) for k in range(1, n + 1)) + " |",
              "|---|" + "---|" * n]
    for key, name in (("one_crop", "ensemble of the first k, centre crop"),
                      ("ten_crops", "ensemble of the first k, 10 crops")):
        lines.append(f"| {name} | "
                     + " | ".join(pct(x) for x in r[key]["ensemble_first_k"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    tool_flags.quiet_libraries()
    result = evaluate(FLAGS.workdir, FLAGS.split, FLAGS.crop_size, FLAGS.batch_size,
                      FLAGS.repeats)
    first = pathlib.Path(FLAGS.workdir[0])
    (first / "ensemble.json").write_text(json.dumps(result, indent=2))
    (first / "ensemble.md").write_text(markdown(result))
    print(markdown(result))
    sys.stdout.flush()


if __name__ == "__main__":
    define_flags()
    app.run(main)
