"""CLIP presets: get_config("PRESET").

    tiny        ViT 3 x 64 (8x8 patches) on 32x32 digit scenes, text 2 x 64; about seven
                minutes on 2 CPU cores
    tiny-rn     tiny with CLIP's modified ResNet as the image encoder (convnets "clip-rn-tiny":
                one bottleneck per stage, width 8, stem stride 1, attention pooling over the
                final 2x2 map, 4 heads), about the tiny ViT's FLOPs per image
    rn50        the paper's RN50 (and rn101, rn50x4, rn50x16, rn50x64): as vit-b-32, with
                the ResNet's resolution
    vit-b-32    the paper's ViT-B/32 (and vit-b-16, vit-l-14, vit-l-14-336): 224 px, batch
                32,768, 32 epochs of 400M pairs, AdamW (0.9, 0.98, 1e-6), decay 0.2, cosine lr
                after 2,000 warmup steps; reads an image-caption dataset through HF `datasets`

Ablations are flags: --config.model.learn_temperature=False keeps t at log(1/0.07);
--config.model.vision.act=gelu --config.model.text.act=gelu swaps QuickGELU for GELU.

    tiny-fast   tiny for 600 steps of 64 pairs, zero-shot on 200 val images every 100 steps:
                the efficiency sweep's runs. Measured on the 2-core AMD EPYC while other jobs
                ran (load average 11-15): 3.2 min (193 s wall, 1m36s of training steps) for
                the contrastive objective, 4.5 min (273 s, 2m16s) for the caption one

--config.model.objective chooses figure 2's objective: contrastive (CLIP), bag_of_words or
caption (models/clip.py).

Named sweeps (SWEEPS below; results on docs/papers/clip.md): `temperature` on tiny-fast (t
learned or fixed, 3 seeds each, 6 runs of 2,000 steps), `image_encoder` on tiny (the tiny ViT or the tiny modified ResNet, 2
seeds each), `efficiency` on tiny-fast (the three objectives, 3 seeds each, 9 runs of 2,000 steps: zero-shot
accuracy against images seen); `prompting` is evaluation only (PROMPTING: experiments.zeroshot
with --templates none, photo, imagenet7 on one trained run).
"""

import ml_collections

from experiments.configs import defaults
from experiments.configs.common import (base_config, check_preset, eval_spec, mesh_config,
                                        train_config)

EXPERIMENT = "clip"

# The temperature ablation: t learned (the paper) or fixed at log(1/0.07), three seeds each:
#   python -m experiments.sweep --config=experiments/configs/clip.py:tiny-fast --name=temperature \
#       --workdir=DIR
# The image encoder: the tiny ViT or the tiny modified ResNet, same text tower and training:
#   python -m experiments.sweep --config=experiments/configs/clip.py:tiny --name=image_encoder \
#       --workdir=DIR
# Figure 2's efficiency comparison: the three objectives, three seeds each, zero-shot on val
# every 100 steps (x batch 64 = images seen), on the tiny-fast preset:
#   python -m experiments.sweep --config=experiments/configs/clip.py:tiny-fast \
#       --name=efficiency --workdir=DIR
# On tiny-fast, 600 steps leave every objective within two points of 20% zero-shot: the
# comparisons train 2,000 steps (128,000 pairs) and score 500 validation scenes every 250.
LONGER = {"train.steps": 2000, "train.eval_every": 250, "train.ckpt_every": 1000,
          "evals.val_zeroshot.images": 500}
SWEEPS = {"temperature": {"model.learn_temperature": [True, False], "seeds": 3,
                          "overrides": LONGER, "metric": "test/zeroshot_top1"},
          "image_encoder": {"model.image_encoder": ["vit", "clip-rn-tiny"], "seeds": 2,
                            "metric": "test/zeroshot_top1"},
          "efficiency": {"model.objective": ["contrastive", "bag_of_words", "caption"],
                         "seeds": 3, "overrides": LONGER, "metric": "test/zeroshot_top1"}}
# Prompting (section 3.1.4) needs no training: one trained model, scored three ways by
#   python -m experiments.zeroshot --workdir=RUN --data=FOLDER --templates=none
#   python -m experiments.zeroshot --workdir=RUN --data=FOLDER --templates=photo
#   python -m experiments.zeroshot --workdir=RUN --data=FOLDER --templates=imagenet7
# (the bare class name, one prompt, an ensemble of seven); the digit runs' own evaluator
# reports the first prompt, the mean single prompt and the ensemble of each task.
PROMPTING = ("none", "photo", "imagenet7")

# Paper section 2.5 / tables 19 and 20: learning rate per model (batch 32,768, 32 epochs).
PAPER_LR = {"vit-b-32": 5e-4, "vit-b-16": 5e-4, "vit-l-14": 4e-4, "vit-l-14-336": 2e-5,
            "rn50": 5e-4, "rn101": 5e-4, "rn50x4": 5e-4, "rn50x16": 4e-4, "rn50x64": 3.6e-4}
PAPER_STEPS = 32 * 400_000_000 // 32_768  # 32 epochs over the 400M-pair WIT dataset


def clip_train_config(**overrides) -> ml_collections.ConfigDict:
    """The shared training fields with CLIP's optimiser: AdamW (0.9, 0.98, 1e-6), decay 0.2 on
    every weight but gains and biases: W_i, W_t and the class token too (a vector, which the
    default rule would leave undecayed)."""
    return train_config(**{
        **dict(batch_size=256, lr=5e-4, min_lr_ratio=0.0, b2=0.98, eps=1e-6, weight_decay=0.2,
               eval_steps=4, wd_mults=((".*class_embedding", 1.0),)), **overrides})


def data_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        source="mnist_scenes",   # mnist_scenes | hf
        canvas=36,               # digit scenes: rendered side, cropped to model.vision.image_size
        digit_size=14,
        single_fraction=0.4,     # share of one-digit scenes
        vocab_size=0,            # byte-level BPE trained on the training captions (the
                                 # preset: model.text.vocab_size)
        hf_dataset="",           # source=hf: a hub name or a builder ("imagefolder", "parquet")
        hf_data_dir="",
        hf_data_files="",
        hf_split="train",
        image_column="image",
        caption_column="caption",
        resize=0,                # source=hf: shorter side before the random crop; 0 = 8/7 x image
    ))


def eval_config() -> ml_collections.ConfigDict:
    """Which labelled scene tasks the zeroshot / linear_probe evaluators use; the first is
    reported as zeroshot_top1 / linear_probe_top1."""
    return ml_collections.ConfigDict(dict(tasks="heldout_pairs,digits", seed=1234))


def evals_config() -> ml_collections.ConfigDict:
    """Loss (and exp(t), retrieval accuracy) and zero-shot on val handwriting during training;
    the same and the linear probe on test handwriting at the end."""
    return ml_collections.ConfigDict(dict(
        val=eval_spec(type="loss", split="val"),
        test=eval_spec(type="loss", split="test", every=0),
        val_zeroshot=eval_spec(type="zeroshot", split="val", images=500),
        test_zeroshot=eval_spec(type="zeroshot", split="test", every=0, images=1000),
        test_probe=eval_spec(type="linear_probe", split="test", every=0, images=1000,
                             train_images=3000, val_images=500)))


PRESETS = ("tiny", "tiny-rn", "tiny-fast", *PAPER_LR)


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    check_preset(arg, PRESETS)
    config = base_config()
    config.data = data_config()
    config.eval = eval_config()
    config.evals = evals_config()
    if arg in ("tiny", "tiny-rn", "tiny-fast"):
        model = defaults.clip("tiny")
        if arg == "tiny-rn":
            model.image_encoder = "clip-rn-tiny"
        config.train = clip_train_config(steps=2500, batch_size=128, lr=5e-3, warmup_steps=100,
                                    eval_every=500, ckpt_every=500)
        if arg == "tiny-fast":
            config.train.update(steps=600, batch_size=64, warmup_steps=50, eval_every=100,
                                ckpt_every=200)
            config.evals.val_zeroshot.images = 200
    elif arg in PAPER_LR:
        model = defaults.clip(arg)
        # Mixed precision, as the paper trains; parameters stay float32.
        model.vision.dtype = model.text.dtype = "bfloat16"
        config.data.source = "hf"
        config.train = clip_train_config(steps=PAPER_STEPS, batch_size=32_768, lr=PAPER_LR[arg],
                                    warmup_steps=2000, eval_every=5000, ckpt_every=5000)
        config.mesh = mesh_config(data=1, fsdp=-1)
    config.model = model
    # the captions' BPE follows --config.model.text.vocab_size
    config.data.vocab_size = config.model.text.get_ref("vocab_size").identity()
    return config
