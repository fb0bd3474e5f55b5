"""ConvNet image classification presets (experiments.classify_images): get_config("PRESET").

    resnet-digits   the CIFAR ResNet-8 (He et al. 2016, section 4.2: 6n + 2 layers, n = 1) on
                    the 5,000 offline MNIST digits padded to 32x32; SGD, momentum 0.9, lr 0.1
                    divided by 10 at 50% and 75% of training, weight decay 1e-4 (the paper's
                    optimiser, shortened to 200 steps of 64): minutes on 2 CPU cores
    lenet5          LeNet-5 (LeCun et al. 1998) on the same digits: tanh, average pooling, AdamW
    resnet-photos   ResNet-8 on the offline colour task: 32x32 crops labelled by which of the
                    installed photographs they come from, val/test crops from held-out bands
    resnet20-hf     ResNet-20 on a Hugging Face image-classification dataset (data.hf_dataset,
                    e.g. "cifar10", or "imagefolder" / "parquet" with data.hf_data_dir /
                    data.hf_data_files)
    bench-cpu       the ConvNet speed benchmark (experiments/benchmark.py): torchvision's
                    ResNet-50, 1000 classes, 128x128 images, batch 16, float32, SGD with
                    momentum 0.9 and weight decay 1e-4
    bench-gpu       the same at 224x224, batch 128, bfloat16 compute on float32 parameters

Named sweeps (SWEEPS below): `zoo`, three zoo models on the digits and on the colour task;
`augment`, training with and without augmentation (data.augment) on both tasks, the `val`
evaluators pointed at the training examples as they are (never augmented), so val/ is the
training set and val - test the generalisation gap.

Evaluators: `val` (loss, top-1, top-5) during training and `test` (the same) at the end; top-5
is logged where there are more than 5 classes.
"""

import ml_collections

from experiments.configs.common import base_config, eval_spec, train_config

EXPERIMENT = "classify_images"

# Zoo models on both offline tasks with one recipe (resnet-digits': SGD + momentum, step decay,
# 200 steps of 64 at 32x32), those that take minutes on 2 CPU cores at that size:
#   python -m experiments.sweep --config=experiments/configs/convnets.py:resnet-digits \
#       --name=zoo --workdir=DIR
# With and without augmentation, the same steps, on both offline tasks:
#   python -m experiments.sweep --config=experiments/configs/convnets.py:lenet5 \
#       --name=augment --workdir=DIR
# Digits are not mirror-symmetric: shifts, small rotations and Simard's elastic warping. Crops
# of photographs are already flipped and placed at random: scale, rotation and colour.
DIGIT_AUGMENT = "random_crop(32, pad=2)|rotate(10)|elastic(34, 4)"
PHOTO_AUGMENT = ("inception_crop(min_area=0.25)|rotate(10)|color_jitter(0.2, 0.2, 0.2, 0.02)"
                 "|pca_color(0.1)")
SWEEPS = {"zoo": {"model.name": ["lenet5", "resnet8", "mobilenet_v2"],
                  "data.source": ["digits", "photos"], "metric": "test/top1"},
          "augment": {"task": [
              {"label": "digits", "data.source": "digits", "data.augment": ""},
              {"label": "digits+augment", "data.source": "digits", "data.augment": DIGIT_AUGMENT},
              {"label": "photos", "data.source": "photos", "data.augment": ""},
              {"label": "photos+augment", "data.source": "photos", "data.augment": PHOTO_AUGMENT}],
              "overrides": {"evals.val.data": "train", "evals.val_loss.data": "train"},
              "metric": "test/accuracy"}}


def data_config(**overrides) -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict(dict(
        source="digits",          # digits | photos | hf
        image_size=32,
        photo_side=0,             # photos: shorter side of the resized photographs (0: 8 x size)
        eval_crops=64,            # photos: fixed val/test crops per photograph
        hf_dataset="",            # hf: a hub name or a builder ("imagefolder", "parquet")
        hf_data_dir="",
        hf_data_files="",         # "train=a.parquet,test=b.parquet"
        image_column="image",
        label_column="label",
        val_split="validation",   # hf: missing val / test splits are carved from train
        test_split="test",
        channels=3,               # hf: 1 converts to grey
        max_examples=0,           # hf: 0 = every example of each split
        augment="",               # training augmentation, e.g. "flip_lr|random_crop(32, pad=4)"
                                  # (data/augment.py); "" = none
    ))
    d.update(overrides)
    return d


def model_config(name: str, num_classes: int = 0, **overrides) -> ml_collections.ConfigDict:
    """num_classes 0: the data's number of classes; overrides: fields of the zoo's module."""
    return ml_collections.ConfigDict(dict(name=name, num_classes=num_classes,
                                          overrides=ml_collections.ConfigDict(overrides)))


def classify_config(model, data, train, seed: int = 0) -> ml_collections.ConfigDict:
    config = base_config(seed)
    config.model, config.data, config.train = model, data, train
    config.evals.val_loss = eval_spec(type="loss", split="val")
    config.evals.val = eval_spec(type="accuracy", split="val", topk=(1, 5))
    config.evals.test_loss = eval_spec(type="loss", split="test", every=0, steps=0)
    config.evals.test = eval_spec(type="accuracy", split="test", every=0, steps=0, topk=(1, 5))
    return config


def sgd_step(steps: int, lr: float = 0.1, batch_size: int = 64, **overrides):
    """The ConvNet papers' optimiser: SGD with momentum 0.9, lr / 10 at 50% and 75%."""
    return train_config(**{**dict(
        steps=steps, batch_size=batch_size, optimizer="sgd", momentum=0.9, lr=lr,
        schedule="step", step_boundaries=(steps // 2, 3 * steps // 4), step_factor=0.1,
        warmup_steps=steps // 20, weight_decay=1e-4, grad_clip=0.0, log_every=25,
        eval_every=100, eval_steps=0, ckpt_every=1000), **overrides})


def get_config(preset: str = "resnet-digits") -> ml_collections.ConfigDict:
    if preset == "resnet-digits":
        return classify_config(model_config("resnet8"), data_config(source="digits"),
                               sgd_step(200))
    if preset == "lenet5":
        return classify_config(
            model_config("lenet5", act="tanh"), data_config(source="digits"),
            train_config(steps=200, batch_size=64, optimizer="adamw", lr=2e-3,
                         schedule="cosine", warmup_steps=10, weight_decay=1e-4,
                         log_every=25, eval_every=100, eval_steps=0, ckpt_every=1000))
    if preset == "resnet-photos":
        return classify_config(model_config("resnet8"), data_config(source="photos"),
                               sgd_step(200))
    if preset == "resnet20-hf":
        return classify_config(model_config("resnet20"),
                               data_config(source="hf", hf_dataset="cifar10",
                                           image_column="img"),
                               sgd_step(2000, batch_size=128))
    if preset == "bench-cpu":   # random images: the data section sets only their size
        return classify_config(model_config("resnet50", 1000),
                               data_config(source="photos", image_size=128),
                               sgd_step(50, batch_size=16))
    if preset == "bench-gpu":
        return classify_config(model_config("resnet50", 1000, dtype="bfloat16"),
                               data_config(source="photos", image_size=224),
                               sgd_step(50, batch_size=128))
    raise ValueError(f"unknown preset {preset!r}; choose resnet-digits, lenet5, resnet-photos, "
                     f"resnet20-hf, bench-cpu or bench-gpu")
