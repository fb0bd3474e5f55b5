"""Train CLIP from scratch on captioned digit scenes and evaluate it zero-shot and by linear probe.

    python -m experiments.clip --config=experiments/configs/clip.py:tiny --workdir=DIR \
        [--config.model.learn_temperature=False] [--config.model.image_encoder=clip-rn-tiny] \
        [--config.model.objective=bag_of_words|caption]

Training pairs are one- or two-digit MNIST scenes with template captions; the digit pairs in
data.images.HELDOUT_PAIRS never appear together in training. After training, on test-split
handwriting and for each task in config.eval.tasks: zero-shot top-1 with the first prompt, with
any one prompt on average and with the prompt ensemble, and a linear probe on the frozen image
features. The first task (held-out pairs by default) is the headline zeroshot_top1 /
linear_probe_top1. Writes DIR/metrics.jsonl and DIR/results.md. --config.data.source=hf reads
an image-caption dataset through HF `datasets` instead of the digit scenes. The objective is
CLIP's contrastive one or a figure 2 baseline (models/clip.py); experiments.zeroshot scores a
finished run on any image folder.
"""

import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from data import augment, images, text
from data.tokenizer import EOT, Tokenizer, train_bpe
from experiments import launch
from experiments.built import Built
from models import clip, hf
from models.vit import ViTConfig
from train import objectives
from train.logging import read_metrics
from train.trainer import fit, preflight

SOT = "<|startoftext|>"


# --------------------------------------------------------------------------- model and loss
def model_config(config) -> clip.CLIPConfig:
    m = config.model.to_dict()
    try:
        return clip.CLIPConfig(**{**m, "vision": ViTConfig(**m["vision"]),
                                  "text": clip.TextConfig(**m["text"])})
    except TypeError as e:
        raise ValueError(f"config.model: {e}") from e


def clip_loss_fn(model: clip.CLIP):
    """The trainer's loss_fn on {"images", "tokens"}: CLIP's symmetric cross-entropy, plus the
    temperature and in-batch retrieval accuracies, or the loss of a predictive objective
    (model.cfg.objective). Under jit with the batch sharded over devices, logits = I_e T_e^T
    is over the global batch: every image meets every text. A ResNet tower's BatchNorm (state:
    batch_stats) normalises with the batch's statistics in training and updates its running
    averages; in evaluation (rng None) it uses them."""
    cfg = model.cfg

    def loss_fn(params, state, batch, rng):
        variables = {"params": params, **state}
        images, tokens = batch["images"], batch["tokens"]
        if rng is not None and state:
            out, updates = model.apply(variables, images, tokens, train=True,
                                       mutable=list(state))
            state = {**state, **updates}
        else:
            out = model.apply(variables, images, tokens)
        if cfg.objective == "bag_of_words":
            words = clip.caption_mask(tokens, cfg.text.eot_token_id)
            return objectives.bag_of_words_loss(out, tokens, words), ({}, state)
        if cfg.objective == "caption":
            predicted = clip.caption_mask(tokens, cfg.text.eot_token_id, with_eot=True)
            metrics = {"token_top1": objectives.accuracy(out[:, :-1], tokens[:, 1:],
                                                         predicted[:, 1:])}
            return objectives.caption_loss(out, tokens, predicted), (metrics, state)
        logits = out[2]
        labels = jnp.arange(logits.shape[0])
        scale = model.apply({"params": params}, method="logit_scale")
        metrics = {"logit_scale": scale, "temperature": 1.0 / scale,
                   "image_to_text_top1": objectives.accuracy(logits, labels),
                   "text_to_image_top1": objectives.accuracy(logits.T, labels)}
        return objectives.clip_loss(logits), (metrics, state)
    return loss_fn


def build(config) -> Built:
    """CLIP of config.model, without loading data (setup first sets model.text.eot_token_id
    from the tokenizer). FLOPs per image-text pair in a batch of train.batch_size
    (clip.flops_per_pair). No predict_fn: its evaluators use the encoders (eval_functions)."""
    cfg = model_config(config)
    model = clip.CLIP(cfg)
    return Built(cfg, model, lambda rng: model.init(rng, *clip.dummy_inputs(cfg)),
                 clip_loss_fn(model), None, "pair",
                 clip.flops_per_pair(cfg, config.train.batch_size))


# --------------------------------------------------------------------------- data
def caption_tokenizer(config, captions, workdir: pathlib.Path) -> Tokenizer:
    """Byte-level BPE on the training captions with start/end-of-text tokens; kept in the
    workdir (by the trainer) so a resumed run tokenises identically."""
    path = workdir / "tokenizer.json"
    if path.exists():
        return Tokenizer.load(path)
    return train_bpe(captions, config.data.vocab_size, special_tokens=(SOT, EOT))


def scene_config(config) -> images.SceneConfig:
    d = config.data
    return images.SceneConfig(canvas=d.canvas, crop=config.model.vision.image_size,
                              digit_size=d.digit_size, single_fraction=d.single_fraction,
                              seed=config.seed)


def hub_dataset(config):
    d = config.data
    kwargs = {k: v for k, v in (("data_dir", d.hf_data_dir), ("data_files", d.hf_data_files))
              if v}
    return images.load_image_captions(d.hf_dataset, d.hf_split, d.image_column, d.caption_column,
                                      **kwargs)


def training_data(config, scenes, workdir):
    """(train iterator, tokenizer, encode, (mean, std)) for config.data.source."""
    d, batch = config.data, config.train.batch_size
    kw = dict(seed=config.seed, process_index=jax.process_index(),
              process_count=jax.process_count())
    if d.source == "mnist_scenes":
        # A caption sample for the tokenizer, from a stream apart from the batches' (seed, k).
        _, captions = scenes.captioned(20_000, np.random.default_rng((config.seed, 0, 1)))
        stats = images.MNIST_MEAN, images.MNIST_STD
    elif d.source == "hf":
        ds = hub_dataset(config)
        sample = ds.select(range(min(len(ds), 100_000)))
        captions = [str(c) for c in sample[d.caption_column]]
        stats = images.CLIP_MEAN, images.CLIP_STD
    else:
        raise ValueError(f"unknown data.source {d.source!r}; choose mnist_scenes or hf")
    tokenizer = caption_tokenizer(config, captions, workdir)
    encode = functools.partial(
        images.tokenize, tokenizer, context_length=config.model.text.n_ctx,
        sot_id=tokenizer.token_id(SOT), eot_id=tokenizer.eot_id)
    if d.source == "mnist_scenes":
        train = images.SceneBatches(scenes, encode, batch, *stats, **kw)
    else:
        size = config.model.vision.image_size
        train = images.HubBatches(ds, encode, batch, d.resize or size * 8 // 7, size, *stats,
                                  image_column=d.image_column, caption_column=d.caption_column,
                                  **kw)
    return train, tokenizer, encode, stats


def caption_batches(config, scenes, encode, stats, split: str):
    """A fixed few caption batches from `split` handwriting (for the val and test loss)."""
    n, batch = max(config.train.eval_steps, 1), config.train.batch_size
    it = images.SceneBatches(scenes, encode, batch, *stats, seed=config.eval.seed, split=split,
                             process_index=jax.process_index(),
                             process_count=jax.process_count(), prefetch=0)
    return [next(it) for _ in range(n)]


def model_images(x: np.ndarray, cfg: clip.CLIPConfig, stats) -> np.ndarray:
    """uint8 digit scenes -> the model's input: centre crop, then (for a model trained on other
    data) resized and repeated to its size and channels, normalised."""
    v = cfg.vision
    x = augment.center_crop(x, v.image_size)   # as they are when no larger
    if x.shape[1] != v.image_size:
        x = np.asarray(jax.image.resize(x.astype(np.float32), (len(x), v.image_size,
                                                               v.image_size), "bilinear"))
        x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    x = np.repeat(x[..., None], v.channels, axis=-1)
    return images.normalize(x, *stats)


# --------------------------------------------------------------------------- evaluation
def eval_functions(config, cfg: clip.CLIPConfig, scenes, encode, stats) -> dict:
    """What the zeroshot and linear_probe evaluators (train/evaluators/clip_evals.py) read:
    fixed labelled scene sets of each task in config.eval.tasks and the model's encoders."""
    model = clip.CLIP(cfg)
    tasks = [t for t in config.eval.tasks.split(",") if t]
    sets = {}

    def labelled(task: str, split: str, n: int):
        """A fixed labelled set of `task` scenes from `split` handwriting, model-ready."""
        if (task, split, n) not in sets:
            rng = np.random.default_rng((config.eval.seed, tasks.index(task),
                                         ("train", "val", "test").index(split)))
            x, labels = scenes.labelled(task, n, split, rng)
            sets[task, split, n] = model_images(x, cfg, stats), labels
        return sets[task, split, n]

    def prompt_tokens(task: str) -> np.ndarray:
        classes, prompts = scenes.task(task)
        texts = [p for c in classes for p in images.class_prompts(c, prompts)]
        return encode(texts).reshape(len(classes), len(prompts), -1)

    fns = dict(
        tasks=tasks, labelled=labelled, prompt_tokens=prompt_tokens, objective=cfg.objective,
        # I_f, before W_i: the probe's features
        image_features=lambda v, x: model.apply(v, x, method="image_features"))
    if cfg.objective == "contrastive":
        fns.update(image_embeds=lambda v, x: model.apply(v, x, method="encode_image"),
                   text_embeds=lambda v, t: model.apply(v, t, method="encode_text"))
    else:
        fns["log_likelihood"] = functools.partial(clip.log_likelihood, model)
    return fns


def results_table(row: dict, tasks: list[str], scenes) -> str:
    """The test row of metrics.jsonl as a table, one line per task."""
    lines = ["| task | classes | chance | zero-shot, first prompt | zero-shot, mean of single "
             "prompts | zero-shot, ensemble | linear probe (C) |", "|---|---|---|---|---|---|---|"]
    for i, task in enumerate(tasks):
        r = {k.split("/", 1)[-1]: v for k, v in row.items()
             if (i == 0 and "/" not in k) or k.startswith(f"{task}/")}
        classes, prompts = scenes.task(task)
        lines.append(
            f"| {task} | {len(classes)} | {1 / len(classes):.1%} "
            f"| {r['zeroshot_top1_single_prompt']:.1%} | {r['zeroshot_top1_prompt_mean']:.1%} "
            f"| {r['zeroshot_top1']:.1%} ({len(prompts)} prompts) "
            f"| {r['linear_probe_top1']:.1%} ({r['linear_probe_C']:g}) |")
    if "logit_scale" in row:
        scale = row["logit_scale"]
        lines.append(f"\nFinal logit scale exp(t) = {scale:.2f} (temperature {1 / scale:.4f}).")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def match_channels(config) -> None:
    """Hub images are decoded to RGB (data.images.resize_square) whatever the preset's
    channels (the tiny preset's digit scenes have one); the digit-scene evaluation then repeats
    its grey to three channels too."""
    vision = config.model.vision
    if config.data.source == "hf" and vision.channels != 3:
        print(f"model.vision.channels {vision.channels} -> 3: hub images are RGB",
              file=sys.stderr)
        vision.channels = 3


def import_clip(path) -> dict:
    """A transformers CLIP directory, as variables for init_from."""
    return {"params": hf.clip_from_pretrained(path)[1]}


def setup(config, workdir) -> dict:
    match_channels(config)
    workdir = pathlib.Path(workdir)
    scenes = images.DigitScenes(scene_config(config))
    train_data, tokenizer, encode, stats = training_data(config, scenes, workdir)
    if tokenizer.vocab_size > config.model.text.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but "
                         f"model.text.vocab_size is {config.model.text.vocab_size}")
    config.model.text.eot_token_id = tokenizer.eot_id
    built = build(config)
    eval_stats = stats if config.data.source == "mnist_scenes" else (images.CLIP_MEAN,
                                                                     images.CLIP_STD)
    data = {}
    if config.data.source == "mnist_scenes":
        for split in ("val", "test"):
            fixed = caption_batches(config, scenes, encode, stats, split)
            data[split] = lambda fixed=fixed: iter(fixed)
    return dict(
        **built.fit_args(), train_data=train_data, data=data, import_weights=import_clip,
        eval_fns=eval_functions(config, built.cfg, scenes, encode, eval_stats),
        artifacts={"tokenizer.json": lambda path: text.save_tokenizer(tokenizer, path)},
        scenes=scenes)


def main(config, workdir):
    match_channels(config)
    preflight(config, workdir, resume=False)   # setup sets the tokenizer's EOT id; fit then checks
    run = setup(config, workdir)
    scenes = run.pop("scenes")
    fit(config, workdir=workdir, **run)
    rows = [r for r in read_metrics(workdir) if r["split"] == "test"]
    row = rows[-1] if rows else {}
    tasks = [t for t in config.eval.tasks.split(",") if t]
    if jax.process_index() == 0 and {"zeroshot_top1", "linear_probe_top1"} <= row.keys():
        table = results_table(row, tasks, scenes)
        (pathlib.Path(workdir) / "results.md").write_text(table)
        print(table)


if __name__ == "__main__":
    launch.run(main, "clip.py:tiny")
