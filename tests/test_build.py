"""Each experiment's data-free build(config): a model whose loss runs on a random batch, and the
FLOPs that fit()'s MFU and the benchmark share (the numbers experiments/bench_workloads.py
computed itself before it used build)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import classify_images, clip, finetune_gpt, pretrain_lm, translate
from experiments.bench_workloads import translation_batch
from experiments.configs import clip as clip_configs
from experiments.configs import convnets as convnet_configs
from experiments.configs import gpt as gpt_configs
from experiments.configs import gpt1 as gpt1_configs
from experiments.configs import transformer as transformer_configs
from models import gpt

RNG = np.random.default_rng(0)


def loss_of(built, batch, train: bool = True):
    """The loss function's loss and metrics on a batch, from fresh parameters."""
    variables = built.init_fn(jax.random.key(0))
    params = variables.pop("params")
    loss, (metrics, _) = built.loss_fn(params, variables, jax.tree.map(jnp.asarray, batch),
                                       jax.random.key(1) if train else None)
    assert np.isfinite(float(loss)), float(loss)
    return float(loss), metrics, params, variables


def test_gpt_build_gives_6n_plus_attention_flops_per_token():
    config = gpt_configs.get_config("tiny")
    built = pretrain_lm.build(config)
    t = config.data.seq_len
    tokens = RNG.integers(0, built.cfg.vocab_size, (2, t + 1)).astype(np.int32)
    loss, _, params, state = loss_of(built, {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]})
    assert loss == pytest.approx(np.log(built.cfg.vocab_size), rel=0.1)   # chance at init
    assert built.predict_fn(params, state, {"inputs": tokens[:, :-1]}).shape == (
        2, t, built.cfg.vocab_size)
    assert (built.unit, built.units_per_example) == ("token", t)
    assert built.flops == 5939712.0        # bench_workloads' GPTWorkload before build
    c = built.cfg
    n = gpt.count_params(c, non_embedding=True) + c.vocab_size * c.d_model
    assert built.flops == 6 * n + 12 * c.n_layer * c.n_head * c.d_head * t
    assert built.throughput.tokens_per_example == t
    assert built.throughput.flops_per_example == built.flops * t


def test_transformer_build_counts_flops_per_target_token():
    config = transformer_configs.get_config("tiny")
    built = translate.build(config, 12, 9)
    loss, metrics, params, state = loss_of(built, translation_batch(built.cfg, 2, 12, 9, 0))
    assert {"nll", "accuracy", "examples", "tokens"} <= set(metrics)
    assert float(metrics["tokens"]) == 2 * (12 + 9)
    assert built.flops == 1854208.0        # bench_workloads' translation count before build
    assert translate.build(config, 32, 32).flops == 1744896.0
    assert built.throughput.flops_per_example == built.flops * 9
    # unset lengths: the model's longest pairs
    assert translate.build(config).flops == translate.build(
        config, built.cfg.max_len, built.cfg.max_len).flops


def test_resnet_build_counts_xla_flops_and_crops_evaluation_images():
    config = convnet_configs.get_config("resnet-digits")
    built = classify_images.build(config)
    size = config.data.image_size
    batch = {"images": RNG.standard_normal((2, size, size, 1)).astype(np.float32),
             "labels": np.array([3, 7], np.int32)}
    loss, _, params, state = loss_of(built, batch)
    assert loss == pytest.approx(np.log(10), rel=0.5)
    # bench_workloads' ConvNetWorkload before build: 3x the forward, and the forward
    assert (built.flops, built.infer_flops) == (67162686.0, 22387562.0)
    assert built.throughput.flops_per_example == built.flops
    # evaluation images with a margin: predict_fn scores their central window
    wide = np.pad(batch["images"], ((0, 0), (2, 2), (2, 2), (0, 0)))
    np.testing.assert_allclose(built.predict_fn(params, state, {"images": wide}),
                               built.predict_fn(params, state, batch), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="model.num_classes 10 but the data has 7"):
        config.model.num_classes = 10
        classify_images.build(config, num_classes=7)


def test_clip_build_runs_the_symmetric_loss():
    config = clip_configs.get_config("tiny")
    built = clip.build(config)
    v, t = built.cfg.vision, built.cfg.text
    batch = {"images": RNG.standard_normal((4, v.image_size, v.image_size, v.channels)
                                           ).astype(np.float32),
             "tokens": RNG.integers(1, t.vocab_size, (4, t.n_ctx)).astype(np.int32)}
    loss, metrics, _, _ = loss_of(built, batch)
    assert loss == pytest.approx(np.log(4), rel=0.5)
    assert "temperature" in metrics and built.unit == "pair" and built.flops > 0
    assert built.predict_fn is None


@pytest.mark.parametrize("kind,classes,n_seq", [("classification", 3, 1), ("similarity", 2, 2),
                                                ("multiple_choice", 4, 4)])
def test_finetune_build_reads_the_tasks_sequences(kind, classes, n_seq):
    config = gpt1_configs.get_config("finetune")
    built = finetune_gpt.build(config, kind, classes, length=16)
    tokens = RNG.integers(0, built.cfg.vocab_size, (2, n_seq, 16)).astype(np.int32)
    batch = {"tokens": tokens, "lengths": np.full((2, n_seq), 16, np.int32),
             "labels": np.array([0, 1], np.int32)}
    _, _, params, state = loss_of(built, batch)
    assert built.predict_fn(params, state, batch).shape == (2, classes)
    assert built.flops == gpt.flops_per_token(built.cfg, 16)
    assert built.throughput.tokens_per_example == n_seq * 16
