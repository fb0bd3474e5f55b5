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

Named sweeps (SWEEPS below), with their time on 2 CPU cores. None is measured as a whole in
the README; each is an estimate from per-run times: the README's 3 min for one run of the
default command (resnet-digits, 200 steps of 64), times the number of runs.
    zoo         three zoo models on the digits and on the colour task, resnet-digits' recipe:
                6 runs, about 18 min
    augment     lenet5 with and without augmentation (data.augment) on both tasks, the `val`
                evaluators pointed at the training examples as they are (never augmented), so
                val/ is the training set and val - test the generalisation gap: 4 runs of a
                smaller model than ResNet-8, under 12 min
    transfer    (on transfer-digits) 1 pretraining run and 12 LeNet-5 runs of 150 steps: 13
                runs, each shorter than the 3 min, under 39 min
    ensemble    (on ensemble-photos) 5 seeds of ResNet-8, 150 steps of 32: under 15 min
    scaling     (on scaling-photos) 5 EfficientNet runs of 150 steps of 32; the README has no
                per-run time for this model, so no estimate is given

Evaluators: `val` (loss, top-1, top-5) during training and `test` (the same) at the end; top-5
is logged where there are more than 5 classes.
"""

import ml_collections

from experiments.configs import defaults
from experiments.configs.common import base_config, check_preset, eval_spec, train_config

EXPERIMENT = "classify_images"

# Transfer learning (LeNet-5): pretrain on digits 0-4, then learn 5-9 from 5, 50 or all training
# examples per class, from scratch or from the pretrained weights (a fresh OUTPUT layer) with
# nothing, the lower half (C1, C3) or all but the OUTPUT layer frozen.
PRETRAINED = "{sweep_dir}/pretrain"
NOT_HEAD = "(?!OUTPUT/).*"
TRANSFER = {
    "before": {"experiment": "classify_images", "config": "convnets.py:transfer-digits",
               "overrides": {"data.classes": (0, 1, 2, 3, 4), "train.steps": 200},
               "workdir": "pretrain"},
    "data.per_class": [5, 50, 0],
    "start": [
        {"label": "scratch", "train.freeze": ""},
        {"label": "fine-tune all", "init_from": PRETRAINED, "init_from_regex": NOT_HEAD},
        {"label": "freeze lower half", "init_from": PRETRAINED, "init_from_regex": NOT_HEAD,
         "train.freeze": "(C1|C3)/.*"},
        {"label": "freeze all but head", "init_from": PRETRAINED,
         "init_from_regex": NOT_HEAD, "train.freeze": NOT_HEAD},
    ],
    "metric": "test/accuracy",
}

# Compound scaling in miniature: a B0-like base (half B0's width, a quarter of its layers, 32x32)
# and four models of about 2.4 times its FLOPs (XLA's count, models/convnets.py `flops`): the
# compound step phi = 0.8 of eq. 3 (nominally 2^0.8 = 1.7x; the rounding of layers up and widths
# to multiples of 8 makes it 2.37x), and depth, width or resolution alone matched to it. Depth
# cannot land closer: ceil(n d) jumps from 1.61x (d = 2) to 2.38x (d = 2.2) of the base's FLOPs;
# nor resolution: 48x48 costs 2.26x, 49x49 3.0x (one more row and column after each stride 2).
SCALING_BASE = dict(width=0.5, depth=0.5, resolution=32)
SCALING_PHI = 0.8
SINGLE_SCALINGS = {"depth": (2.2, 1.0, 1.0), "width": (1.0, 1.64, 1.0),
                   "resolution": (1.0, 1.0, 1.5)}   # (d, w, r) multipliers of the base


def scaling_points() -> list[dict]:
    points = [{"label": "base", "data.image_size": SCALING_BASE["resolution"]}]
    scalings = {**SINGLE_SCALINGS, "compound": defaults.compound_scaling(SCALING_PHI)}
    for label, (d, w, r) in scalings.items():
        points.append({"label": label,
                       "model.overrides.depth_mult": SCALING_BASE["depth"] * d,
                       "model.overrides.width_mult": SCALING_BASE["width"] * w,
                       "data.image_size": round(SCALING_BASE["resolution"] * r)})
    return points


# The zoo's models on both offline tasks with one recipe (resnet-digits': SGD + momentum, step
# decay, 200 steps of 64 at 32x32), those that take minutes on 2 CPU cores at that size:
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
# transfer (on transfer-digits), ensemble (ensemble-photos: five seeds, then
# experiments/ensemble.py), scaling (scaling-photos): the practice experiments.


def data_config(**overrides) -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict(dict(
        source="digits",          # digits | photos | clutter | hf
        image_size=32,
        photo_side=0,             # photos: shorter side of the resized photographs (0: 8 x size)
        eval_crops=64,            # photos: fixed val/test crops per photograph
        scenes=4000,              # clutter: rendered training scenes (data/clutter.py)
        eval_scenes=1000,         # clutter: val and test scenes each
        clutter_digits=2,         # clutter: digits per scene (1-3)
        clutter_label="max",      # clutter: max | sum of the digits
        clutter_fragments=6,      # clutter: fragments of other digits per scene
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
        classes=(),               # digits, photos: the labels kept, relabelled in order (): all
        per_class=0,              # digits, photos: training examples per class (0: all)
        eval_size=0,              # digits, photos: val/test side (> image_size: a crop margin)
        split_seed=-1,            # the split's and subset's seed (-1: config.seed)
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
    """The ConvNet papers' optimiser: SGD with momentum 0.9, lr / 10 at 50% and 75% of
    train.steps (after 5% of warmup), as fractions so that they follow --config.train.steps."""
    return train_config(**{**dict(
        steps=steps, batch_size=batch_size, optimizer="sgd", momentum=0.9, lr=lr,
        schedule="step", step_fractions=(0.5, 0.75), step_factor=0.1,
        warmup_steps=0, warmup_fraction=0.05, weight_decay=1e-4, grad_clip=0.0, log_every=25,
        eval_every=100, eval_steps=0, ckpt_every=1000), **overrides})


# The papers' claims, one preset each (claims_config: error curves against steps, one split for
# every seed), swept with the models' switches (models/convnets.py) by the named sweeps below.
CLAIMS = {
    # He et al. 2016, figures 1 and 6: plain (shortcut "none") against residual networks of
    # 6n + 2 layers; option A (zero-padding) and B (projection) shortcuts.
    "claims-resnet": lambda: (model_config("resnet8", shortcut="A"),
                              data_config(source="digits"), sgd_step(150)),
    # Krizhevsky et al. 2012: ReLU against tanh (figure 1), dropout, LRN, overlapping pooling;
    # the training error every 10 steps for the steps to reach 25%.
    "claims-alexnet": lambda: (model_config("alexnet_small", act="relu", lrn=True, overlap=True,
                                            dropout=0.5),
                               data_config(source="digits"), sgd_step(150, lr=0.05), 10),
    # Szegedy et al. 2015: auxiliary classifiers (weight 0.3), 1x1 reductions.
    "claims-googlenet": lambda: (model_config("googlenet_small", aux_logits=True,
                                              bottleneck=True),
                                 data_config(source="digits"), sgd_step(100)),
    # Sandler et al. 2018, figure 6: linear bottleneck, inverted residuals.
    "claims-mobilenet": lambda: (model_config("mobilenet_v2_tiny", linear_bottleneck=True,
                                              residual="inverted"),
                                 data_config(source="digits"), sgd_step(150)),
    # Tan & Le 2019: a B0-like base (a quarter of B0's width, half its layers, 24x24) on the
    # colour task, scaled by the search (EFFICIENTNET_SEARCH), then by phi.
    "claims-efficientnet": lambda: (
        model_config("efficientnet_tiny", width_mult=EFFICIENTNET_BASE["width"],
                     depth_mult=EFFICIENTNET_BASE["depth"], stem_stride=1),
        data_config(source="photos", image_size=EFFICIENTNET_BASE["resolution"]),
        train_config(steps=100, batch_size=32, optimizer="adamw", lr=2e-3, schedule="cosine",
                     warmup_steps=10, weight_decay=1e-4, log_every=25, eval_every=100,
                     eval_steps=0, ckpt_every=1000)),
}
EFFICIENTNET_BASE = dict(width=0.25, depth=0.5, resolution=24)
# The search at phi = 1 (section 3.3, step 1): (alpha, beta, gamma) with alpha beta^2 gamma^2
# about 2, the paper's (1.2, 1.1, 1.15) among them. The rounding of layers up and of widths to
# multiples of 8 makes each cost 1.85-2.15x the base's FLOPs (tests/test_conv_claims.py).
EFFICIENTNET_SEARCH = ((1.2, 1.1, 1.15), (1.4, 1.1, 1.1), (1.1, 1.15, 1.15), (1.2, 1.2, 1.05),
                       (1.6, 1.05, 1.05), (1.1, 1.3, 1.05))

# Step 2: the search's best by validation top-1 (mean of 3 seeds: docs/papers/convnets.md),
# scaled by phi = 1, 2, 3, against depth, width or resolution alone at the FLOPs the compound
# model reaches (the rounding makes phi = 2 and 3 cost 2.8x and 4.0x the base, not 4x and 8x):
# each single multiplier is the one of a fine grid whose XLA count lands nearest (within 20%:
# depth moves in whole layers, resolution in whole pixels).
EFFICIENTNET_FOUND = (1.2, 1.2, 1.05)
EFFICIENTNET_MATCHED = {1: dict(depth=2.1, width=1.6, resolution=1.375),
                        2: dict(depth=3.1, width=2.2, resolution=1.667),
                        3: dict(depth=4.7, width=2.56, resolution=2.042)}


def efficientnet_scaling() -> list[dict]:
    points = [efficientnet_point("base", 1.0, 1.0, 1.0)]
    for phi, single in EFFICIENTNET_MATCHED.items():
        a, b, g = (c ** phi for c in EFFICIENTNET_FOUND)
        points.append(efficientnet_point(f"compound phi={phi}", a, b, g))
        points += [efficientnet_point(f"{k} phi={phi}", *(m if k == key else 1.0 for key in
                                                           ("depth", "width", "resolution")))
                   for k, m in single.items()]
    return points


def efficientnet_point(label: str, d: float, w: float, r: float) -> dict:
    """The overrides that scale the base's depth, width and resolution by d, w and r."""
    return {"label": label, "model.overrides.depth_mult": round(EFFICIENTNET_BASE["depth"] * d, 4),
            "model.overrides.width_mult": round(EFFICIENTNET_BASE["width"] * w, 4),
            "data.image_size": round(EFFICIENTNET_BASE["resolution"] * r)}


CLAIM_SWEEPS = {
    "plain-vs-residual": {"model.name": ["resnet8", "resnet20", "resnet32"],
                          "model.overrides.shortcut": ["none", "A", "B"],
                          "seeds": 3, "metric": "test/top1"},
    # Figure 1's protocol: no regularisation, each activation at its best rate of four.
    "relu-vs-tanh": {"model.overrides.act": ["relu", "tanh"],
                     "train.lr": [0.01, 0.02, 0.05, 0.1],
                     "overrides": {"model.overrides.dropout": 0.0, "model.overrides.lrn": False},
                     "seeds": 3, "metric": "trainset/accuracy"},
    "alexnet-tricks": {"variant": [
        {"label": "base", "model.overrides.dropout": 0.5},
        {"label": "no dropout", "model.overrides.dropout": 0.0},
        {"label": "no LRN", "model.overrides.lrn": False},
        {"label": "2x2 pools", "model.overrides.overlap": False}],
        "seeds": 3, "metric": "test/top1"},
    "googlenet-aux": {"variant": [
        {"label": "base", "model.overrides.aux_logits": True},
        {"label": "no auxiliary heads", "model.overrides.aux_logits": False},
        {"label": "no 1x1 reductions", "model.overrides.bottleneck": False}],
        "seeds": 3, "metric": "test/top1"},
    "mobilenet-bottleneck": {"variant": [
        {"label": "linear, inverted", "model.overrides.linear_bottleneck": True},
        {"label": "relu6, inverted", "model.overrides.linear_bottleneck": False},
        {"label": "linear, classic", "model.overrides.residual": "classic"},
        {"label": "linear, none", "model.overrides.residual": "none"}],
        "seeds": 3, "metric": "test/top1"},
    "efficientnet-search": {"coefficients": [
        efficientnet_point(f"{a},{b},{g}", a, b, g) for a, b, g in EFFICIENTNET_SEARCH],
        "seeds": 3, "metric": "val/top1"},
    "efficientnet-scaling": {"scaling": efficientnet_scaling(), "seeds": 3,
                             "metric": "test/top1"},
}

SWEEPS = {"zoo": {"model.name": ["lenet5", "resnet8", "mobilenet_v2"],
                  "data.source": ["digits", "photos"], "metric": "test/top1"},
          "augment": {"task": [
              {"label": "digits", "data.source": "digits", "data.augment": ""},
              {"label": "digits+augment", "data.source": "digits", "data.augment": DIGIT_AUGMENT},
              {"label": "photos", "data.source": "photos", "data.augment": ""},
              {"label": "photos+augment", "data.source": "photos", "data.augment": PHOTO_AUGMENT}],
              "overrides": {"evals.val.data": "train", "evals.val_loss.data": "train"},
              "metric": "test/accuracy"},
          "transfer": TRANSFER,
          "ensemble": {"seeds": 5, "metric": "test/top1"},
          "scaling": {"scaling": scaling_points(), "metric": "test/top1"},
          **CLAIM_SWEEPS}

PRESETS = ("resnet-digits", "lenet5", "resnet-photos", "resnet20-hf", "bench-cpu", "bench-gpu",
           "transfer-digits", "ensemble-photos", "scaling-photos", *CLAIMS)


def claims_config(model, data, train, every: int = 25) -> ml_collections.ConfigDict:
    """A claims run: one split for every seed (data.split_seed 0), error curves against steps
    (`trainset`: the error on 512 fixed training examples in evaluation mode, `val`: held-out,
    `every` steps) and the test error at the end."""
    config = classify_config(model, data, train)
    config.data.split_seed = 0
    config.evals.trainset = eval_spec(type="accuracy", split="trainset", data="train", every=every,
                                   steps=8)
    config.evals.val.every = config.evals.val_loss.every = every
    return config


def get_config(preset: str = "resnet-digits") -> ml_collections.ConfigDict:
    check_preset(preset, PRESETS)
    if preset in CLAIMS:
        return claims_config(*CLAIMS[preset]())
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
    if preset == "transfer-digits":   # the transfer task: digits 5-9, one split for all runs
        return classify_config(
            model_config("lenet5", act="tanh"),
            data_config(source="digits", classes=(5, 6, 7, 8, 9), split_seed=0),
            train_config(steps=150, batch_size=64, optimizer="adamw", lr=2e-3,
                         schedule="cosine", warmup_steps=10, weight_decay=1e-4,
                         log_every=25, eval_every=150, eval_steps=0, ckpt_every=1000))
    # The practice sweeps' runs: 150 steps of 32 (a minute or two each on 2 CPU cores).
    if preset == "ensemble-photos":   # one split for every seed; AlexNet's ten test patches
        config = classify_config(model_config("resnet8"),
                                 data_config(source="photos", split_seed=0, eval_size=36),
                                 sgd_step(150, batch_size=32))
        config.evals.test_10crop = eval_spec(type="accuracy", split="test", every=0, steps=0,
                                             topk=(1, 5), crops=10, crop_size=32)
        return config
    if preset == "scaling-photos":    # a small B0-like base: a quarter of B0's layers, half wide
        return classify_config(
            model_config("efficientnet_tiny", width_mult=SCALING_BASE["width"],
                         depth_mult=SCALING_BASE["depth"], stem_stride=1),
            data_config(source="photos", image_size=SCALING_BASE["resolution"], split_seed=0),
            # AdamW: SGD at 0.1 diverged on this EfficientNet (loss above chance's 2.4)
            train_config(steps=150, batch_size=32, optimizer="adamw", lr=2e-3,
                         schedule="cosine", warmup_steps=10, weight_decay=1e-4,
                         log_every=25, eval_every=150, eval_steps=0, ckpt_every=1000))
