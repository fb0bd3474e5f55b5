"""CLIP's figure 2 objectives: the bag-of-words and caption losses on hand-computed inputs, the
zero-shot log-likelihood agreeing with them, and a few steps lowering each loss."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from conftest import digit_folder
from models import clip
from train import objectives

EOT = 1   # token ids below: 0 start of text (and padding), 1 end of text


def tiny(objective: str) -> clip.CLIPConfig:
    cfg = clip.preset("tiny")
    return dataclasses.replace(cfg, objective=objective,
                               text=dataclasses.replace(cfg.text, eot_token_id=EOT))


def test_caption_mask_by_position():
    tokens = jnp.array([[0, 7, 7, 5, 1, 0, 0], [0, 1, 0, 0, 0, 0, 0]])
    words = clip.caption_mask(tokens, EOT)
    np.testing.assert_array_equal(words, [[0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(clip.caption_mask(tokens, EOT, with_eot=True),
                                  [[0, 1, 1, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0, 0]])


def test_bag_of_words_loss_hand_computed():
    # P(w | I) over 4 words; caption "2 2 3": counts {2: 2, 3: 1} -> q = (0, 0, 2/3, 1/3).
    p = jnp.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    tokens = jnp.array([[0, 2, 2, 3, 1, 0], [0, 3, 1, 0, 0, 0]])
    words = clip.caption_mask(tokens, EOT)
    loss = objectives.bag_of_words_loss(jnp.log(p), tokens, words)
    first = -(2 / 3 * math.log(0.3) + 1 / 3 * math.log(0.4))
    second = -math.log(0.25)
    assert float(loss) == pytest.approx((first + second) / 2, rel=1e-6)


def test_caption_loss_hand_computed():
    # [SOT] 2 [EOT] pad: position 0 predicts 2, position 1 predicts EOT; the rest is not scored.
    p = np.full((1, 4, 3), 1 / 3)
    p[0, 0] = [0.2, 0.3, 0.5]
    p[0, 1] = [0.1, 0.6, 0.3]
    tokens = jnp.array([[0, 2, 1, 0]])
    predicted = clip.caption_mask(tokens, EOT, with_eot=True)
    loss = objectives.caption_loss(jnp.log(jnp.asarray(p)), tokens, predicted)
    assert float(loss) == pytest.approx(-(math.log(0.5) + math.log(0.6)) / 2, rel=1e-6)


@pytest.mark.parametrize("objective", ["bag_of_words", "caption"])
def test_log_likelihood_is_the_loss_summed(objective):
    """log P(text_j | image_i) of every pair equals minus the loss of that pair alone times
    the number of tokens it scores, and the contrastive parts are absent."""
    cfg = tiny(objective)
    model = clip.CLIP(cfg)
    variables = nn.meta.unbox(model.init(jax.random.key(0), *clip.dummy_inputs(cfg)))
    assert "text_encoder" not in variables["params"] and "t" not in variables["params"]
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 1))
    tokens = jnp.array([[0, 9, 40, 11, 1, 0, 0], [0, 300, 1, 0, 0, 0, 0]])
    scores = clip.log_likelihood(model, variables, x, tokens)
    assert scores.shape == (3, 2)
    with_eot = objective == "caption"
    loss = objectives.caption_loss if with_eot else objectives.bag_of_words_loss

    @jax.jit
    def pair_loss(image, text):   # one image with one text: the mean over its scored tokens
        mask = clip.caption_mask(text, EOT, with_eot)
        return loss(model.apply(variables, image, text), text, mask), mask.sum()

    for i in range(3):
        for j in range(2):
            value, n = pair_loss(x[i:i + 1], tokens[j:j + 1])
            assert float(scores[i, j]) == pytest.approx(-float(value) * int(n), rel=1e-4)


@pytest.mark.parametrize("objective", ["bag_of_words", "caption"])
def test_a_few_steps_lower_each_loss(objective):
    from data import images
    from experiments import clip as experiment
    from experiments.configs import clip as configs
    from data.tokenizer import train_bpe
    config = configs.get_config("tiny")
    config.model.objective = objective
    scenes = images.DigitScenes(experiment.scene_config(config))
    _, captions = scenes.captioned(200, np.random.default_rng(0))
    tok = train_bpe(captions, 300, special_tokens=(experiment.SOT, "<|endoftext|>"))
    config.model.text.eot_token_id = tok.eot_id
    encode = lambda c: images.tokenize(tok, c, 16, tok.token_id(experiment.SOT),  # noqa: E731
                                       tok.eot_id)
    batch = next(iter(images.SceneBatches(scenes, encode, 24, images.MNIST_MEAN,
                                          images.MNIST_STD, seed=0, prefetch=0)))
    built = experiment.build(config)
    params = nn.meta.unbox(built.init_fn(jax.random.key(0)))["params"]
    opt = optax.adam(1e-3)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: built.loss_fn(p, {}, batch, None)[0])(params)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = opt.init(params)
    losses = []
    for _ in range(8):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.9 * losses[0], losses


def test_zeroshot_evaluator_scores_by_likelihood(tmp_path, tmp_path_factory):
    """A run trained with the caption objective reports zero-shot accuracy (by the prompts'
    log-likelihoods) and the probe, and no temperature; experiments.zeroshot scores an image
    folder with it the same way."""
    from experiments import clip as experiment
    from experiments.configs import clip as configs
    config = configs.get_config("tiny")
    config.model.objective = "caption"
    config.train.steps, config.train.batch_size = 2, 8
    config.train.eval_every, config.train.log_every, config.train.eval_steps = 2, 1, 1
    config.train.warmup_steps = 1
    e = config.evals
    e.val_zeroshot.images, e.test_zeroshot.images = 12, 12
    e.test_probe.update(images=20, train_images=30, val_images=20, Cs=(1.0,))
    config.eval.tasks = "digits"
    experiment.main(config, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    test = [r for r in rows if r["split"] == "test"][-1]
    assert 0.0 <= test["zeroshot_top1"] <= 1.0 and 0.0 <= test["linear_probe_top1"] <= 1.0
    assert "logit_scale" not in test
    assert any("token_top1" in r for r in rows if r["split"] == "train")
    from experiments import zeroshot
    r = zeroshot.zeroshot(tmp_path, str(digit_folder(tmp_path_factory.mktemp("digits"))),
                          "photo")
    assert r["images"] == 6 and 0.0 <= r["top1"] <= 1.0
