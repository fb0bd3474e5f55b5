"""Train CLIP from scratch on captioned digit scenes and evaluate it zero-shot and by linear probe.

    python -m experiments.clip --config=experiments/configs/clip.py:tiny --workdir=DIR \
        [--config.model.learn_temperature=False]

Training pairs are one- or two-digit MNIST scenes with template captions; the digit pairs in
data.images.HELDOUT_PAIRS never appear together in training. After training, on test-split
handwriting and for each task in config.eval.tasks: zero-shot top-1 with the first prompt, with
any one prompt on average and with the prompt ensemble, and a linear probe on the frozen image
features. The first task (held-out pairs by default) is the headline zeroshot_top1 /
linear_probe_top1. Writes DIR/metrics.jsonl and DIR/results.md. --config.data.source=hf reads
an image-caption dataset through HF `datasets` instead of the digit scenes.
"""

import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from data import images
from data.tokenizer import EOT, Tokenizer, train_bpe
from experiments import clip_eval, launch
from models import clip
from models.vit import ViTConfig
from train import objectives
from train.logging import MetricWriter
from train.trainer import Throughput, fit

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
    temperature and in-batch retrieval accuracies. Under jit with the batch sharded over
    devices, logits = I_e T_e^T is over the global batch: every image meets every text."""
    def loss_fn(params, state, batch, rng):
        _, _, logits = model.apply({"params": params}, batch["images"], batch["tokens"])
        labels = jnp.arange(logits.shape[0])
        scale = model.apply({"params": params}, method="logit_scale")
        metrics = {"logit_scale": scale, "temperature": 1.0 / scale,
                   "image_to_text_top1": objectives.accuracy(logits, labels),
                   "text_to_image_top1": objectives.accuracy(logits.T, labels)}
        return objectives.clip_loss(logits), (metrics, state)
    return loss_fn


# --------------------------------------------------------------------------- data
def caption_tokenizer(config, captions, workdir: pathlib.Path) -> Tokenizer:
    """Byte-level BPE on the training captions with start/end-of-text tokens; cached in the
    workdir so a resumed run tokenises identically."""
    path = workdir / "tokenizer.json"
    if path.exists():
        return Tokenizer.load(path)
    tokenizer = train_bpe(captions, config.data.vocab_size, special_tokens=(SOT, EOT))
    if jax.process_index() == 0:
        tokenizer.save(path)
    return tokenizer


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
        images.tokenize, tokenizer, context_length=config.model.text.context_length,
        sot_id=tokenizer.token_id(SOT), eot_id=tokenizer.eot_id)
    if d.source == "mnist_scenes":
        train = images.SceneBatches(scenes, encode, batch, *stats, **kw)
    else:
        size = config.model.vision.image_size
        train = images.HubBatches(ds, encode, batch, d.resize or size * 8 // 7, size, *stats,
                                  image_column=d.image_column, caption_column=d.caption_column,
                                  **kw)
    return train, tokenizer, encode, stats


def val_batches(config, scenes, encode, stats):
    """A fixed few caption batches from val-split handwriting (for the val loss)."""
    n, batch = config.train.eval_steps, config.train.batch_size
    it = images.SceneBatches(scenes, encode, batch, *stats, seed=config.eval.seed, split="val",
                             process_index=jax.process_index(),
                             process_count=jax.process_count())
    return [next(it) for _ in range(n)]


def model_images(x: np.ndarray, cfg: clip.CLIPConfig, stats) -> np.ndarray:
    """uint8 digit scenes -> the model's input: centre crop, then (for a model trained on other
    data) resized and repeated to its size and channels, normalised."""
    v = cfg.vision
    x = images.center_crop(x, min(x.shape[1], v.image_size))
    if x.shape[1] != v.image_size:
        x = np.asarray(jax.image.resize(x.astype(np.float32), (len(x), v.image_size,
                                                               v.image_size), "bilinear"))
        x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    x = np.repeat(x[..., None], v.channels, axis=-1)
    return images.normalize(x, *stats)


# --------------------------------------------------------------------------- evaluation
class Evaluator:
    """Zero-shot and linear-probe evaluation on the digit-scene tasks."""

    def __init__(self, config, cfg: clip.CLIPConfig, scenes, encode, stats):
        self.config, self.cfg, self.scenes = config, cfg, scenes
        self.encode, self.stats = encode, stats
        model = clip.CLIP(cfg)
        self.encode_image = jax.jit(lambda p, x: model.apply({"params": p}, x,
                                                             method="encode_image"))
        self.encode_text = jax.jit(lambda p, t: model.apply({"params": p}, t,
                                                            method="encode_text"))
        self.features = jax.jit(lambda p, x: model.apply(  # I_f, before W_i: for the probe
            {"params": p}, x, method=lambda m, x: m.image_encoder(x)))
        self.tasks = [t for t in config.eval.tasks.split(",") if t]
        self._sets = {}

    def labelled(self, task: str, split: str, n: int):
        """A fixed labelled set of `task` scenes from `split` handwriting, model-ready."""
        key = (task, split, n)
        if key not in self._sets:
            rng = np.random.default_rng((self.config.eval.seed, self.tasks.index(task),
                                         ("train", "val", "test").index(split)))
            x, labels = self.scenes.labelled(task, n, split, rng)
            self._sets[key] = model_images(x, self.cfg, self.stats), labels
        return self._sets[key]

    def prompt_embeds(self, params, task: str) -> np.ndarray:
        """[classes, prompts, d]: the normalised embedding of every prompt of every class."""
        classes, prompts = self.scenes.task(task)
        texts = [p for c in classes for p in images.class_prompts(c, prompts)]
        t_e = np.asarray(self.encode_text(params, self.encode(texts)))
        return t_e.reshape(len(classes), len(prompts), -1)

    def zeroshot(self, params, task: str, split: str, n: int) -> dict:
        x, labels = self.labelled(task, split, n)
        i_e = clip_eval.in_batches(functools.partial(self.encode_image, params), x,
                                   self.config.eval.batch_size)
        t_e = self.prompt_embeds(params, task)
        single = [clip_eval.zeroshot_top1(i_e, t_e[:, j], labels) for j in range(t_e.shape[1])]
        return {"zeroshot_top1": clip_eval.zeroshot_top1(i_e, clip_eval.zeroshot_weights(t_e),
                                                         labels),
                "zeroshot_top1_single_prompt": single[0],       # the first prompt alone
                "zeroshot_top1_prompt_mean": float(np.mean(single))}  # any one prompt, on average

    def probe(self, params, task: str) -> dict:
        e = self.config.eval
        feats = functools.partial(self.features, params)
        splits = [self.labelled(task, s, n) for s, n in (
            ("train", e.probe_train_images), ("val", e.probe_val_images), ("test", e.test_images))]
        data = [(clip_eval.in_batches(feats, x, e.batch_size), y) for x, y in splits]
        r = clip_eval.linear_probe(*data, Cs=list(e.probe_Cs))
        return {"linear_probe_top1": r["test_top1"], "linear_probe_val_top1": r["val_top1"],
                "linear_probe_C": r["C"]}

    def validation(self, params) -> dict:
        """Zero-shot on val handwriting, logged at every evaluation during training."""
        out = {}
        for i, task in enumerate(self.tasks):
            r = self.zeroshot(params, task, "val", self.config.eval.val_images)
            out.update({(k if i == 0 else f"{task}/{k}"): v for k, v in r.items()})
        return out

    def test(self, params) -> dict[str, dict]:
        results = {}
        for task in self.tasks:
            classes, prompts = self.scenes.task(task)
            r = {"classes": len(classes), "prompts": len(prompts), "chance": 1.0 / len(classes)}
            r.update(self.zeroshot(params, task, "test", self.config.eval.test_images))
            r.update(self.probe(params, task))
            results[task] = r
        return results


def results_table(results: dict[str, dict], logit_scale: float) -> str:
    lines = ["| task | classes | chance | zero-shot, first prompt | zero-shot, mean of single "
             "prompts | zero-shot, ensemble | linear probe (C) |", "|---|---|---|---|---|---|---|"]
    for task, r in results.items():
        lines.append(
            f"| {task} | {r['classes']} | {r['chance']:.1%} "
            f"| {r['zeroshot_top1_single_prompt']:.1%} | {r['zeroshot_top1_prompt_mean']:.1%} "
            f"| {r['zeroshot_top1']:.1%} ({r['prompts']} prompts) "
            f"| {r['linear_probe_top1']:.1%} ({r['linear_probe_C']:g}) |")
    lines.append(f"\nFinal logit scale exp(t) = {logit_scale:.2f} "
                 f"(temperature {1 / logit_scale:.4f}).")
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


def main(config, workdir):
    match_channels(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    scenes = images.DigitScenes(scene_config(config))
    train_data, tokenizer, encode, stats = training_data(config, scenes, workdir)
    if tokenizer.vocab_size > config.model.text.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but "
                         f"model.text.vocab_size is {config.model.text.vocab_size}")
    config.model.text.eot_token_id = tokenizer.eot_id
    cfg = model_config(config)
    model = clip.CLIP(cfg)
    eval_stats = stats if config.data.source == "mnist_scenes" else (images.CLIP_MEAN,
                                                                     images.CLIP_STD)
    evaluator = Evaluator(config, cfg, scenes, encode, eval_stats)
    val = val_batches(config, scenes, encode, stats) if config.data.source == "mnist_scenes" \
        else None
    state = fit(config, workdir=workdir, train_data=train_data,
                eval_data=(lambda: val) if val else None,
                init_fn=lambda rng: model.init(rng, *clip.dummy_inputs(cfg)),
                loss_fn=clip_loss_fn(model), d_model=cfg.embed_dim,
                throughput=Throughput(0, clip.flops_per_pair(cfg, config.train.batch_size)),
                on_eval=lambda s: evaluator.validation(s.params))
    results = evaluator.test(state.params)
    scale = float(model.apply({"params": state.params}, method="logit_scale"))
    headline = results[evaluator.tasks[0]]
    row = {k: v for k, v in headline.items() if k not in ("classes", "prompts")}
    for task, r in list(results.items())[1:]:
        row.update({f"{task}/{k}": v for k, v in r.items() if k not in ("classes", "prompts")})
    MetricWriter(workdir).write(int(state.step), "test", task=evaluator.tasks[0],
                                logit_scale=scale, **row)
    table = results_table(results, scale)
    if jax.process_index() == 0:
        (workdir / "results.md").write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    launch.run(main, "clip.py:tiny")
