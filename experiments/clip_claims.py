"""CLIP's comparative claims in miniature (Radford et al. 2021), from the runs of its sweeps.

    python -m experiments.clip_claims efficiency --sweep_dir=DIR    # the `efficiency` sweep
    python -m experiments.clip_claims temperature --sweep_dir=DIR   # the `temperature` sweep
    python -m experiments.clip_claims prompting --sweep_dir=DIR     # its contrastive runs
    python -m experiments.clip_claims shots --sweep_dir=DIR         # its contrastive runs

efficiency (figure 2): zero-shot top-1 on the validation scenes against images seen, per
objective, mean ± std over seeds; the test accuracies; and how many times fewer images the
better objective needs to reach the worse one's final validation accuracy.
temperature (section 2.5): exp(t) against steps for every run, and learned against fixed t.
prompting (section 3.1.4, figure 4): each test task scored with the bare class name, the single
prompt "a photo of the number {}.", every prompt alone and the ensemble of all (the
re-normalised mean of their embeddings); a template hurts the ensemble when leaving it out
raises the ensemble's accuracy.
shots (figures 6-7): linear probes (logistic regression, C = --probe_C, on the image features
I_f standardised with the shots' statistics) on K = 1, 2, 4, 8, 16 training scenes per class,
--draws draws each, against zero-shot on the same test scenes; the shots zero-shot is worth is
where the probe's mean accuracy crosses it (log-linear between the bracketing K).

Each prints markdown tables, writes them to DIR/clip-NAME.md and the figure to
docs/figures/clip-NAME.png (--out).
"""

import functools
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from data import images
from experiments import clip as experiment
from experiments import figures, launch, zeroshot
from experiments.figures import axes_of, fmt_ms
from experiments.sweeps.results import group, mean_std, read_results, run_dir
from train.evaluators import clip_evals
from train.metrics import read_metrics

FLAGS = flags.FLAGS
SHOTS = (1, 2, 4, 8, 16)
PROBE_TRAIN = 3000   # labelled training scenes the shots are drawn from (the full probe's)
TEST_IMAGES = 1000   # the test evaluator's sets


def runs_by_setting(sweep_dir: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """{setting label: its runs' directories} of a sweep, in the sweep's order."""
    rows = read_results(sweep_dir)
    axes = axes_of(rows)
    return {", ".join(k): [run_dir(sweep_dir, r, axes) for r in v]
            for k, v in group(rows, axes).items()}


# --------------------------------------------------------------------------- logged curves
def curve(run: pathlib.Path, split: str, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(run) if r.get("split") == split and key in r}


def final(run: pathlib.Path, split: str, key: str) -> float | None:
    c = curve(run, split, key)
    return c[max(c)] if c else None


def mean_curve(curves: list[dict[int, float]]) -> dict[int, tuple[float, float]]:
    """{step: (mean, std)} over the steps every curve has."""
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return {s: mean_std(c[s] for c in curves)[:2] for s in steps}


def images_to_reach(points: dict[int, float], target: float) -> float | None:
    """The first x at which a curve {x: accuracy} reaches `target` (linear between points),
    None if it never does."""
    xs = sorted(points)
    for i, x in enumerate(xs):
        if points[x] >= target:
            if i == 0:
                return float(x)
            x0, y0 = xs[i - 1], points[xs[i - 1]]
            return x0 + (x - x0) * (target - y0) / (points[x] - y0)
    return None


def efficiency(sweep_dir: pathlib.Path) -> tuple[str, dict]:
    settings = runs_by_setting(sweep_dir)
    batch = experiment_batch(next(iter(settings.values()))[0])
    table, curves = [], {}
    for label, runs in settings.items():
        curves[label] = {task: mean_curve([{s * batch: a for s, a in curve(r, "val", key).items()}
                                           for r in runs])
                         for task, key in (("heldout pairs", "zeroshot_top1"),
                                           ("digits", "digits/zeroshot_top1"))}
        table.append(dict(
            label=label, seeds=len(runs),
            pairs=mean_std(final(r, "test", "zeroshot_top1") for r in runs),
            digits=mean_std(final(r, "test", "digits/zeroshot_top1") for r in runs),
            probe=mean_std(final(r, "test", "linear_probe_top1") for r in runs),
            wall=mean_std(run_wall(r) for r in runs)))
    lines = ["| objective | seeds | zero-shot, held-out pairs (%) | zero-shot, digits (%) | "
             "linear probe, held-out pairs (%) | wall (s) / run |", "|---|---|---|---|---|---|"]
    lines += [f"| {t['label']} | {t['seeds']} | {fmt_ms(t['pairs'])} | {fmt_ms(t['digits'])} | "
              f"{fmt_ms(t['probe'])} | {t['wall'][0]:.0f} |" for t in table]
    lines += ["", "| better | worse | task | worse's final val top-1 (%) | images the worse saw | "
              "images the better needed | ratio |", "|---|---|---|---|---|---|---|"]
    labels = list(curves)
    for better, worse in zip(labels, labels[1:]):
        for task in ("heldout pairs", "digits"):
            w = {x: m for x, (m, _) in curves[worse][task].items()}
            b = {x: m for x, (m, _) in curves[better][task].items()}
            seen, target = max(w), w[max(w)]
            need = images_to_reach(b, target)
            ratio = f"{seen / need:.1f}x" if need else "not reached"
            lines.append(f"| {better} | {worse} | {task} | {100 * target:.1f} | {seen:,} | "
                         f"{'' if need is None else f'{need:,.0f}'} | {ratio} |")
    return "\n".join(lines) + "\n", curves


def experiment_batch(run: pathlib.Path) -> int:
    config, _ = launch.load_run(run, named=False)
    return int(config.train.batch_size)


def run_wall(run: pathlib.Path) -> float | None:
    rows = read_metrics(run)
    times = [r["time"] for r in rows if isinstance(r.get("time"), (int, float))]
    return max(times) - min(times) if times else None


def plot_efficiency(path: pathlib.Path, curves: dict) -> None:
    plt = figures.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.8), sharey=True)
    for ax, task in zip(axes, ("heldout pairs", "digits")):
        for label, by_task in curves.items():
            c = by_task[task]
            xs = list(c)
            m = np.array([v[0] for v in c.values()]) * 100
            s = np.array([v[1] for v in c.values()]) * 100
            ax.plot(xs, m, marker="o", markersize=3, label=label)
            ax.fill_between(xs, m - s, m + s, alpha=0.2)
        ax.axhline(10.0, color="grey", lw=0.8, ls=":", label="chance")
        ax.set_title(f"zero-shot on validation {task}", fontsize=9)
        ax.set_xlabel("images seen")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%), mean ± std over seeds")
    axes[0].legend(fontsize=8)
    figures.save(fig, path)


# --------------------------------------------------------------------------- temperature
def temperature(sweep_dir: pathlib.Path) -> tuple[str, dict]:
    settings = runs_by_setting(sweep_dir)
    lines = ["| setting | seeds | final exp(t) | zero-shot, held-out pairs (%) | zero-shot, "
             "digits (%) | retrieval image->text (%) |", "|---|---|---|---|---|---|"]
    scales = {}
    for label, runs in settings.items():
        scales[label] = [curve(r, "train", "logit_scale") for r in runs]
        s = mean_std(c[max(c)] for c in scales[label] if c)
        lines.append(
            f"| {label} | {len(runs)} | {fmt_ms(s, 1.0, 2)} | "
            f"{fmt_ms(mean_std(final(r, 'test', 'zeroshot_top1') for r in runs))} | "
            f"{fmt_ms(mean_std(final(r, 'test', 'digits/zeroshot_top1') for r in runs))} | "
            f"{fmt_ms(mean_std(final(r, 'test', 'image_to_text_top1') for r in runs))} |")
    return "\n".join(lines) + "\n", scales


def plot_temperature(path: pathlib.Path, scales: dict) -> None:
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for i, (label, runs) in enumerate(scales.items()):
        for j, c in enumerate(runs):
            ax.plot(list(c), list(c.values()), color=f"C{i}", alpha=0.8,
                    label=label if j == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("logit scale exp(t) = 1 / temperature")
    ax.set_title("CLIP's temperature during training, every seed", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figures.save(fig, path)


# --------------------------------------------------------------------------- a trained run
class Run:
    """A contrastive run of experiments.clip: its model, tokenizer and labelled test scenes."""

    def __init__(self, path: pathlib.Path):
        loaded = zeroshot.load_model(path)     # a run of ours: its checkpoint and tokenizer
        self.cfg, self.variables = loaded.model.cfg, loaded.variables
        if self.cfg.objective != "contrastive":
            raise ValueError(f"{path}: objective {self.cfg.objective!r}; prompting and shots "
                             "compare the contrastive model's prompts and features")
        config, _ = launch.load_run(path, named=False)
        tokenizer = loaded.tokenizer
        self.encode = functools.partial(
            images.tokenize, tokenizer, context_length=self.cfg.text.n_ctx,
            sot_id=tokenizer.token_id(experiment.SOT), eot_id=tokenizer.eot_id)
        self.scenes = images.DigitScenes(experiment.scene_config(config))
        stats = images.MNIST_MEAN, images.MNIST_STD
        self.fns = experiment.eval_functions(config, self.cfg, self.scenes, self.encode, stats)
        model = loaded.model
        self._jit = {m: jax.jit(functools.partial(model.apply, method=m))
                     for m in ("encode_image", "encode_text", "image_features")}

    def apply(self, method: str, x: np.ndarray, batch: int = 500) -> np.ndarray:
        fn = self._jit[method]
        return np.concatenate([np.asarray(fn(self.variables, jnp.asarray(x[i:i + batch])))
                               for i in range(0, len(x), batch)])

    def prompt_embeds(self, task: str, prompts) -> np.ndarray:
        """Normalised text embeddings [classes, prompts, d] of a task's classes."""
        classes, _ = self.scenes.task(task)
        texts = [p for c in classes for p in images.class_prompts(c, prompts)]
        return self.apply("encode_text", self.encode(texts)).reshape(len(classes),
                                                                     len(prompts), -1)


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=-1) == labels))


def ensemble_scores(i_e: np.ndarray, t_e: np.ndarray) -> np.ndarray:
    """<I_e, W_c> with W_c the re-normalised mean of class c's prompt embeddings."""
    w = t_e.mean(axis=1)
    return i_e @ (w / np.linalg.norm(w, axis=-1, keepdims=True)).T


# --------------------------------------------------------------------------- prompting
BARE = {"digits": (("{x}", "word"),), "heldout_pairs": (("{x} {y}", "word"),)}


def prompting_run(run: Run, task: str, n: int = TEST_IMAGES) -> dict:
    """Top-1 of the bare name, the first prompt, each prompt alone, the ensemble, and the
    ensemble without each prompt, on the test evaluator's n scenes."""
    x, labels = run.fns["labelled"](task, "test", n)
    i_e = run.apply("encode_image", x)
    _, prompts = run.scenes.task(task)
    t_e = run.prompt_embeds(task, prompts)
    bare = run.prompt_embeds(task, BARE[task])
    out = {"bare": accuracy(i_e @ bare[:, 0].T, labels),
           "ensemble": accuracy(ensemble_scores(i_e, t_e), labels)}
    for j in range(len(prompts)):
        out[f"alone {j}"] = accuracy(i_e @ t_e[:, j].T, labels)
        rest = np.delete(t_e, j, axis=1)
        out[f"without {j}"] = accuracy(ensemble_scores(i_e, rest), labels)
    return out


def prompting(sweep_dir: pathlib.Path) -> tuple[str, dict]:
    runs = contrastive_runs(sweep_dir)
    loaded = [Run(r) for r in runs]
    lines, data = [], {}
    for task in ("heldout_pairs", "digits"):
        results = [prompting_run(r, task) for r in loaded]
        _, prompts = loaded[0].scenes.task(task)
        example = images.caption((3, 5) if task == "heldout_pairs" else (3,), *BARE[task][0])
        ms = {k: mean_std(r[k] for r in results) for k in results[0]}
        data[task] = ms
        lines += [f"**{task}** ({len(runs)} runs, {TEST_IMAGES} test scenes, chance 10%)", "",
                  "| prompts | top-1 (%) | ensemble without it (%) | runs where leaving it "
                  "out helps |", "|---|---|---|---|",
                  f"| bare class name (e.g. \"{example}\") | {fmt_ms(ms['bare'])} | | |",
                  f"| ensemble of all {len(prompts)} | **{fmt_ms(ms['ensemble'])}** | | |"]
        for j, (t, form) in enumerate(prompts):
            helps = sum(r[f"without {j}"] > r["ensemble"] for r in results)
            single = " (the single prompt)" if j == 0 else ""
            lines.append(f"| \"{t}\", {form}{single} | {fmt_ms(ms[f'alone {j}'])} | "
                         f"{fmt_ms(ms[f'without {j}'])} | {helps} of {len(results)} |")
        lines.append("")
    return "\n".join(lines), data


def contrastive_runs(sweep_dir: pathlib.Path) -> list[pathlib.Path]:
    rows = read_results(sweep_dir)
    axes = axes_of(rows)
    runs = [run_dir(sweep_dir, r, axes) for r in rows
            if r.get("model.objective", "contrastive") == "contrastive"
            and r.get("model.learn_temperature", "True") == "True"]
    if not runs:
        raise ValueError(f"{sweep_dir} has no contrastive run with a learned temperature")
    return runs


def plot_prompting(path: pathlib.Path, data: dict) -> None:
    plt = figures.pyplot()
    fig, axes = plt.subplots(1, len(data), figsize=(5.0 * len(data), 3.6), sharey=True)
    for ax, (task, ms) in zip(np.atleast_1d(axes), data.items()):
        keys = ["bare", *sorted(k for k in ms if k.startswith("alone")), "ensemble"]
        labels = ["bare", *[k.split()[1] for k in keys[1:-1]], "ens."]
        ax.bar(range(len(keys)), [100 * ms[k][0] for k in keys],
               yerr=[100 * ms[k][1] for k in keys], capsize=3,
               color=["C7"] + ["C0"] * (len(keys) - 2) + ["C3"])
        ax.set_xticks(range(len(keys)), labels, fontsize=8)
        ax.axhline(10.0, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{task}: each prompt alone and the ensemble", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    np.atleast_1d(axes)[0].set_ylabel("test zero-shot top-1 (%)")
    figures.save(fig, path)


# --------------------------------------------------------------------------- shots
def probe_accuracy(features, labels, test_features, test_labels, C: float) -> float:
    sets = [(jnp.asarray(f), jnp.asarray(y, jnp.int32))
            for f, y in ((features, labels), (test_features, test_labels))]
    _, test = clip_evals.probe_path(sets[0], sets[0], sets[1], [C], int(test_labels.max()) + 1)
    return float(test[0])


def shots_run(run: Run, task: str, draws: int, C: float, n: int = TEST_IMAGES,
              n_train: int = PROBE_TRAIN, shots: tuple[int, ...] = SHOTS) -> dict:
    """Zero-shot (ensemble) and K-shot probe top-1 on the test evaluator's n scenes; the shots
    are drawn from n_train scenes of the training split."""
    x, labels = run.fns["labelled"](task, "test", n)
    xt, yt = run.fns["labelled"](task, "train", n_train)
    _, prompts = run.scenes.task(task)
    out = {"zero-shot": accuracy(ensemble_scores(run.apply("encode_image", x),
                                                 run.prompt_embeds(task, prompts)), labels)}
    f_test, f_train = run.apply("image_features", x), run.apply("image_features", xt)
    for k in shots:
        accs = [probe_accuracy(f_train[i], yt[i], f_test, labels, C)
                for i in (images.per_class_indices(yt, k, seed) for seed in range(draws))]
        out[k] = float(np.mean(accs))
    return out


def shots_worth(probe: dict[int, float], zero_shot: float) -> str:
    """The K at which the probe's accuracy reaches zero-shot's (log-linear between K's)."""
    ks = sorted(probe)
    if probe[ks[0]] >= zero_shot:
        return f"< {ks[0]}"
    for a, b in zip(ks, ks[1:]):
        if probe[b] >= zero_shot:
            t = (zero_shot - probe[a]) / (probe[b] - probe[a])
            return f"{math.exp(math.log(a) + t * (math.log(b) - math.log(a))):.1f}"
    return f"> {ks[-1]}"


def shots(sweep_dir: pathlib.Path, draws: int, C: float) -> tuple[str, dict]:
    loaded = [Run(r) for r in contrastive_runs(sweep_dir)]
    lines = [f"| task | runs | zero-shot (%) | " + " | ".join(f"{k}-shot probe (%)"
                                                            for k in SHOTS)
             + " | shots zero-shot is worth |", "|" + "---|" * (len(SHOTS) + 4)]
    data = {}
    for task in ("heldout_pairs", "digits"):
        results = [shots_run(r, task, draws, C) for r in loaded]
        ms = {k: mean_std(r[k] for r in results) for k in results[0]}
        data[task] = ms
        worth = shots_worth({k: ms[k][0] for k in SHOTS}, ms["zero-shot"][0])
        lines.append(f"| {task} | {len(loaded)} | {fmt_ms(ms['zero-shot'])} | "
                     + " | ".join(fmt_ms(ms[k]) for k in SHOTS) + f" | {worth} |")
    return "\n".join(lines) + "\n", data


def plot_shots(path: pathlib.Path, data: dict) -> None:
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for i, (task, ms) in enumerate(data.items()):
        ax.errorbar(SHOTS, [100 * ms[k][0] for k in SHOTS], yerr=[100 * ms[k][1] for k in SHOTS],
                    marker="o", capsize=3, color=f"C{i}", label=f"{task}: linear probe")
        ax.axhline(100 * ms["zero-shot"][0], color=f"C{i}", ls="--",
                   label=f"{task}: zero-shot")
    ax.set_xscale("log", base=2)
    ax.set_xticks(SHOTS, [str(k) for k in SHOTS])
    ax.set_xlabel("labelled training scenes per class")
    ax.set_ylabel("test top-1 (%), mean ± std over runs")
    ax.set_title("Zero-shot CLIP against few-shot linear probes on its features", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figures.save(fig, path)


# --------------------------------------------------------------------------- main
COMMANDS = ("efficiency", "temperature", "prompting", "shots")


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: clip_claims {'|'.join(COMMANDS)} --sweep_dir=DIR")
    name, sweep_dir = argv[1], pathlib.Path(FLAGS.sweep_dir)
    out = pathlib.Path(FLAGS.out or f"docs/figures/clip-{name}.png")
    report, plot = {"efficiency": (efficiency, plot_efficiency),
                    "temperature": (temperature, plot_temperature),
                    "prompting": (prompting, plot_prompting),
                    "shots": (lambda d: shots(d, FLAGS.draws, FLAGS.probe_C), plot_shots)}[name]
    try:
        text, data = report(sweep_dir)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    plot(out, data)
    table = sweep_dir / f"clip-{name}.md"
    table.write_text(text)
    print(text)
    print(f"written: {out}, {table}", file=sys.stderr)


if __name__ == "__main__":
    flags.DEFINE_string("sweep_dir", None, "The sweep's --workdir (results.csv, its runs).")
    flags.DEFINE_string("out", "", "The figure (default docs/figures/clip-NAME.png).")
    flags.DEFINE_integer("draws", 5, "shots: draws of the K training scenes per class.",
                         lower_bound=1)
    flags.mark_flag_as_required("sweep_dir")
    app.run(main)
