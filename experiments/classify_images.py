"""Train a ConvNet of the zoo (models/convnets.py) to classify images, BatchNorm and all.

    python -m experiments.classify_images --workdir=DIR      # convnets.py:resnet-digits
    python -m experiments.classify_images --config=experiments/configs/convnets.py:lenet5 \
        --workdir=DIR [--config.model.name=resnet20 --config.train.steps=100 ...]

Data (config.data.source): the offline MNIST digits padded to 32x32, the offline colour task
(which photograph a crop comes from, val/test from held-out bands), the cluttered digit scenes
(data/clutter.py: harder, with room for the papers' ablations to separate), or a Hugging Face
image-classification dataset (data/images.py). Training batches (only) go through
config.data.augment, a pipeline of augmentation ops such as "flip_lr|random_crop(32, pad=4)"
(data/augment.py; "" = none). The loss is softmax cross-entropy; models with
BatchNorm train on the batch's statistics (over the global batch: under jit the batch is one
array however it is sharded) and update their running averages in model_state, which
evaluation uses. GoogLeNet adds its auxiliary classifiers' losses (weight 0.3 each).
Logs loss, top-1 (`accuracy`, `top1`) and top-5 (more than 5 classes) of `val` during training
and `test` at the end to metrics.jsonl.
"""

import pathlib
import sys

import jax
import jax.numpy as jnp
from flax import linen as nn

from data import augment, clutter, images, sources
from data.iterators import ArrayBatches
from experiments import launch
from experiments.built import Built
from models import convnets, inception
from train import objectives, optim
from train.logging import read_metrics
from train.trainer import fit, preflight


def load_data(config) -> images.Classification:
    """The task of config.data; its split (and few-shot subset) drawn with data.split_seed, or
    config.seed when that is -1."""
    d = config.data
    seed = config.seed if d.split_seed < 0 else d.split_seed
    if d.source == "digits":
        return images.subset(images.digit_classification(d.image_size, seed, d.eval_size),
                             d.classes, d.per_class, seed)
    if d.source == "photos":
        return images.photo_classification(d.image_size, d.photo_side, d.eval_crops, seed,
                                           d.classes, d.per_class, d.eval_size)
    if d.source == "clutter":
        return images.subset(
            clutter.classification(d.scenes, d.eval_scenes, seed, d.image_size,
                                   digits=d.clutter_digits, label=d.clutter_label,
                                   clutter=d.clutter_fragments, split_seed=seed),
            d.classes, d.per_class, seed)
    if d.classes or d.per_class or d.eval_size:
        raise ValueError("data.classes, data.per_class and data.eval_size apply to the "
                         "offline sources (digits, photos, clutter)")
    if d.source == "hf":
        if not d.hf_dataset:
            raise ValueError("data.source 'hf' needs data.hf_dataset (a hub name, or "
                             "'imagefolder' / 'parquet' with data.hf_data_dir / hf_data_files)")
        kwargs = {}
        if d.hf_data_dir:
            kwargs["data_dir"] = d.hf_data_dir
        if d.hf_data_files:
            kwargs["data_files"] = sources.parse_data_files(d.hf_data_files)
        return images.hf_classification(
            d.hf_dataset, d.image_size, d.image_column, d.label_column, d.val_split,
            d.test_split, d.channels, d.max_examples, seed=config.seed, **kwargs)
    raise ValueError(f"unknown data.source {d.source!r}; choose digits, photos, clutter or hf")


def build_model(config, num_classes: int):
    n = config.model.num_classes or num_classes
    if n != num_classes:
        raise ValueError(f"model.num_classes {n} but the data has {num_classes} classes")
    return convnets.create(config.model.name, n, **config.model.overrides.to_dict())


def classify_loss_fn(model, size: int = 0):
    """Softmax cross-entropy; in training BatchNorm normalises with the batch's statistics and
    returns its new running averages, in evaluation (rng None) it uses them, on the central
    size x size window of evaluation images with a margin (data.eval_size)."""
    def loss_fn(params, model_state, batch, rng):
        variables = {"params": params, **model_state}
        mask = batch.get("weights")
        xent = lambda logits: objectives.cross_entropy(logits, batch["labels"], mask)  # noqa
        if rng is None:
            logits = model.apply(variables, augment.center_crop(batch["images"], size),
                                 train=False)
            return xent(logits), ({"accuracy": objectives.accuracy(
                logits, batch["labels"], mask)}, model_state)
        outputs, updates = model.apply(variables, batch["images"], train=True,
                                       mutable=list(model_state), rngs={"dropout": rng})
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs
        loss = inception.training_loss(outputs, xent)   # GoogLeNet: + 0.3 x each auxiliary
        metrics = {"accuracy": objectives.accuracy(logits, batch["labels"], mask)}
        return loss, (metrics, {**model_state, **updates})
    return loss_fn


def rows(seed: int) -> dict:
    """This process's share of every global batch."""
    return dict(seed=seed, process_index=jax.process_index(), process_count=jax.process_count())


def default_classes(config) -> int:
    """model.num_classes; 0 means the data's: the offline tasks' counts, else ImageNet's."""
    d = config.data
    if config.model.num_classes:
        return config.model.num_classes
    if d.source in ("digits", "clutter"):
        return len(d.classes) or 10
    return len(d.classes or images.sample_photos()) if d.source == "photos" else 1000


def default_channels(config) -> int:
    """The data source's image channels: 1 for the digits, 3 for the photographs, data.channels
    for a hub dataset."""
    d = config.data
    return {"digits": 1, "photos": 3, "clutter": 3}.get(d.source, d.channels)


def build(config, num_classes: int = 0, channels: int = 0) -> Built:
    """The ConvNet of config.model for data.image_size images of `channels` channels (0: the
    data source's: default_channels) and `num_classes` classes (0: default_classes),
    without loading data. FLOPs per image: XLA's count of the eval-mode forward
    (convnets.flops), training 3x that (the backward costs about twice the forward)."""
    num_classes = num_classes or default_classes(config)
    channels = channels or default_channels(config)
    model = build_model(config, num_classes)
    size = config.data.image_size
    example = jnp.zeros((1, size, size, channels), jnp.float32)

    def init_fn(rng):
        return model.init(rng, example, train=False)

    def predict_fn(params, model_state, batch):
        return model.apply({"params": params, **model_state},
                           augment.center_crop(batch["images"], size), train=False)

    forward = convnets.flops(config.model.name, size, num_classes, channels,
                             **config.model.overrides.to_dict())
    return Built(config.model.name, model, init_fn, classify_loss_fn(model, size), predict_fn,
                 "image", 3 * forward, infer_flops=forward)


def read_state_dict(path) -> dict:
    """A torch state dict saved with torch.save (.pt, .pth: needs torch) or safetensors
    (.safetensors: no torch), as name -> array."""
    path = pathlib.Path(path)
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file
        return load_file(path)
    try:
        import torch
    except ImportError:
        raise ImportError(f"config.init_from {path}: reading a torch state dict needs torch "
                          f"(pip install torch), or save it as .safetensors") from None
    return torch.load(path, map_location="cpu", weights_only=True)


def import_torchvision(config, built: Built):
    """import_weights for fit(): path -> our variables from a torchvision state dict of
    config.model.name (models.convnets.from_torchvision). When the task's classes differ from
    the state dict's, the classifier (every tensor whose last axis is the class count, and only
    those) takes the fresh initialisation of config.seed; everything else is loaded."""
    def import_weights(path):
        _, loaded = convnets.from_torchvision(config.model.name, read_state_dict(path),
                                              **config.model.overrides.to_dict())
        fresh = optim.flat(nn.meta.unbox(built.init_fn(jax.random.key(config.seed))))
        flat = optim.flat(loaded)
        for k, v in flat.items():
            want = tuple(fresh[k].shape) if k in fresh else None
            if want and want != v.shape and want[:-1] == v.shape[:-1]:
                flat[k] = fresh[k]    # a new head for the task's classes
        return optim.nest(flat)
    return import_weights


def setup(config, workdir) -> dict:
    """What fit() needs for this experiment (also used by experiments.evaluate)."""
    task = load_data(config)
    built = build(config, len(task.classes), task.channels)
    t, size = config.train, config.data.image_size
    example = augment.center_crop(task.splits["val"]["images"][:1], size)
    if task.train_batches is not None:
        train_data = task.train_batches(t.batch_size, **rows(config.seed))
    else:
        train_data = ArrayBatches(task.splits["train"], t.batch_size, repeat_small=True,
                                  **rows(config.seed))
    pipeline = augment.parse(config.data.augment, mean=task.mean, std=task.std,
                             train_pixels=task.train_pixels)
    shapes = pipeline.shapes(example.shape[1:])
    if shapes[-1] != shapes[0]:
        raise ValueError(f"data.augment {config.data.augment!r} turns {shapes[0]} images into "
                         f"{shapes[-1]}; training and evaluation images must be the same size")
    augment.augment_batches(train_data, pipeline)
    return dict(
        **built.fit_args(), train_data=train_data,
        import_weights=import_torchvision(config, built),
        eval_fns={"eval_views": augment.parse_eval},   # the accuracy evaluator's `pp` views
        # One ordered pass over each split, the last batch padded with weight-0 rows; "train"
        # (the training examples as they are, never augmented) for evaluators that name it.
        data={s: lambda a=task.splits[s]: ArrayBatches(
            a, t.batch_size, shuffle=False, drop_remainder=False, prefetch=0, **rows(0))
              for s in ("train", "val", "test") if s in task.splits})


def last_metrics(workdir, split: str) -> dict:
    found = [r for r in read_metrics(workdir) if r["split"] == split]
    return found[-1] if found else {}


def main(config, workdir):
    preflight(config, workdir)
    fit(config, workdir=workdir, **setup(config, workdir))
    if jax.process_index() == 0:
        val, test = last_metrics(workdir, "val"), last_metrics(workdir, "test")
        top5 = f", top-5 {test['top5']:.4f}" if "top5" in test else ""
        print(f"{config.model.name} on {config.data.source}: val top-1 "
              f"{val.get('accuracy', float('nan')):.4f}, test top-1 "
              f"{test.get('accuracy', float('nan')):.4f}{top5}", file=sys.stderr)


if __name__ == "__main__":
    launch.run(main, "convnets.py:resnet-digits")
