"""ConvNet practice: AlexNet's ten test crops, ensembles, label subsets for transfer, freezing
half a network, and the equal-FLOPs scalings of the compound-scaling sweep."""

import json

import numpy as np
import pytest

from data import images
from data.augment import ten_crop
from experiments import classify_images, ensemble
from experiments.configs import convnets as configs
from models import convnets
from train.checkpoint import load_params
from train.evaluators.classification import average_probabilities


def test_ten_crop_is_the_corners_centre_and_mirrors():
    x = np.arange(20, dtype=np.float32).reshape(1, 4, 5, 1)   # rows 0-4, 5-9, 10-14, 15-19
    crops = np.asarray(ten_crop(x, 3))
    assert crops.shape == (10, 1, 3, 3, 1)
    expected = [  # top-left, top-right, bottom-left, bottom-right, centre (top 0, left 1)
        [[0, 1, 2], [5, 6, 7], [10, 11, 12]],
        [[2, 3, 4], [7, 8, 9], [12, 13, 14]],
        [[5, 6, 7], [10, 11, 12], [15, 16, 17]],
        [[7, 8, 9], [12, 13, 14], [17, 18, 19]],
        [[1, 2, 3], [6, 7, 8], [11, 12, 13]],
    ]
    for i, e in enumerate(expected):
        np.testing.assert_array_equal(crops[i, 0, :, :, 0], e)
        np.testing.assert_array_equal(crops[5 + i, 0, :, :, 0], np.asarray(e)[:, ::-1])
    with pytest.raises(ValueError, match="does not fit"):
        ten_crop(x, 5)


def test_ensemble_averages_probabilities_not_votes():
    # one confident member for class 0 outweighs two that lean slightly to class 1
    logits = np.array([[[8.0, 0.0]], [[0.0, 0.5]], [[0.0, 0.5]]])
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    avg = np.asarray(average_probabilities(logits))
    np.testing.assert_allclose(avg, p.mean(0), rtol=1e-6)
    assert avg.argmax() == 0 and np.bincount(logits.argmax(-1)[:, 0]).argmax() == 1

    labels = np.array([0, 1, 1])
    probs = np.array([[[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]],    # 2 of 3 right
                      [[0.4, 0.6], [0.3, 0.7], [0.45, 0.55]],  # 2 of 3 right
                      [[0.6, 0.4], [0.55, 0.45], [0.1, 0.9]]])  # 2 of 3 right
    t = ensemble.ensemble_table(probs, labels)
    assert t["single"] == pytest.approx([2 / 3] * 3)
    # the first two average to [.65 .35], [.45 .55], [.325 .675]: all three right
    assert t["ensemble_first_k"] == pytest.approx([2 / 3, 1.0, 1.0])
    assert t["gain"] == pytest.approx(1 / 3)


def test_label_subsets_are_disjoint_and_relabelled():
    split = {"images": np.arange(12, dtype=np.float32)[:, None],
             "labels": np.array([0, 5, 1, 6, 0, 5, 9, 1, 6, 9, 5, 0])}
    low, high = images.select_classes(split, [0, 1]), images.select_classes(split, [5, 6, 9])
    np.testing.assert_array_equal(low["labels"], [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(high["images"][:, 0], [1, 3, 5, 6, 8, 9, 10])
    np.testing.assert_array_equal(high["labels"], [0, 1, 0, 2, 1, 2, 0])
    assert not set(low["images"][:, 0]) & set(high["images"][:, 0])
    few = images.take_per_class(high, 2, seed=0)
    assert np.bincount(few["labels"]).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="fewer than per_class=3"):
        images.take_per_class(high, 3)

    config = configs.get_config("transfer-digits")
    config.data.per_class = 5
    target = classify_images.load_data(config)
    full = images.digit_classification(32, seed=0)
    source = images.subset(full, (0, 1, 2, 3, 4))
    assert target.classes == ["5", "6", "7", "8", "9"] and source.classes[:2] == ["0", "1"]
    assert np.bincount(target.splits["train"]["labels"]).tolist() == [5] * 5
    for s in ("val", "test"):   # every test digit of the classes, none of the others
        assert len(target.splits[s]["labels"]) + len(source.splits[s]["labels"]) == \
            len(full.splits[s]["labels"])
    rows = lambda a: {x.tobytes() for x in a["images"]}   # noqa: E731
    assert not rows(target.splits["train"]) & rows(source.splits["train"])
    assert not rows(target.splits["train"]) & rows(target.splits["test"])


def test_photo_subsets_hold_fixed_crops_of_the_chosen_photographs():
    task = images.photo_classification(32, classes=(3, 0), per_class=4, eval_crops=2,
                                       eval_size=36)
    names = sorted(images.sample_photos())
    assert task.classes == [names[3], names[0]] and task.train_batches is None
    assert task.splits["train"]["images"].shape == (8, 32, 32, 3)
    assert task.splits["test"]["images"].shape == (4, 36, 36, 3)
    np.testing.assert_array_equal(task.splits["train"]["labels"], [0] * 4 + [1] * 4)


def tiny_transfer(tmp_path, name, steps, **data):
    config = configs.get_config("transfer-digits")
    config.train.update(steps=steps, batch_size=16, warmup_steps=0, log_every=1)
    config.data.update(**data)
    config.evals.val.steps = config.evals.val_loss.steps = 1
    config.evals.test.steps = config.evals.test_loss.steps = 1
    workdir = tmp_path / name
    classify_images.fit(config, workdir=workdir, **classify_images.setup(config, workdir))
    return config, workdir


def test_fine_tuning_with_the_lower_half_frozen_keeps_it_unchanged(tmp_path):
    _, pretrain = tiny_transfer(tmp_path, "pretrain", 2, classes=(0, 1, 2, 3, 4))
    config = configs.get_config("transfer-digits")
    config.train.update(steps=3, batch_size=16, warmup_steps=0, log_every=1,
                        freeze="(C1|C3)/.*")
    config.update(init_from=str(pretrain), init_from_regex=configs.NOT_HEAD)
    for name in config.evals:
        config.evals[name].steps = 1
    workdir = tmp_path / "finetune"
    classify_images.fit(config, workdir=workdir, **classify_images.setup(config, workdir))
    _, before = load_params(pretrain)
    _, after = load_params(workdir)
    for layer in ("C1", "C3"):
        for k in ("kernel", "bias"):
            np.testing.assert_array_equal(after[layer][k], before[layer][k])
    for layer in ("C5", "F6", "OUTPUT"):
        assert not np.array_equal(after[layer]["kernel"], before[layer]["kernel"])


def test_scaled_models_cost_about_twice_the_base():
    flops = {}
    for point in configs.scaling_points():
        config = configs.get_config("scaling-photos")
        for k, v in point.items():
            if k != "label":
                section, *rest = k.split(".")
                target = config[section]
                for part in rest[:-1]:
                    target = target[part]
                target[rest[-1]] = v
        m = config.model
        flops[point["label"]] = convnets.flops(m.name, config.data.image_size, 11, 3,
                                               **m.overrides.to_dict())
    ratio = {k: f / flops["base"] for k, f in flops.items()}
    assert list(ratio) == ["base", "depth", "width", "resolution", "compound"]
    assert 2.0 < ratio["compound"] < 2.6, ratio   # phi = 0.8, inflated by rounding
    for label in ("depth", "width", "resolution"):   # each alone costs what the compound does
        assert abs(ratio[label] / ratio["compound"] - 1) < 0.06, ratio


def test_ten_crop_evaluator_and_ensemble_command_agree(tmp_path):
    config = configs.get_config("ensemble-photos")
    config.model.name = "lenet5"
    config.data.eval_crops = 4
    config.train.update(steps=2, batch_size=16, warmup_fraction=0.0, step_fractions=(), log_every=1)
    workdir = tmp_path / "run"
    classify_images.fit(config, workdir=workdir, **classify_images.setup(config, workdir))
    (test,) = [r for r in map(json.loads,
                              (workdir / "metrics.jsonl").read_text().splitlines())
               if r["split"] == "test"]
    assert {"accuracy", "top5", "accuracy_10crop", "top5_10crop"} <= set(test)
    r = ensemble.evaluate([str(workdir), str(workdir)], repeats=1)
    assert r["examples"] == 44 and r["image_side"] == 36 and r["crop_size"] == 32
    assert r["one_crop"]["single"] == pytest.approx([test["accuracy"]] * 2)
    assert r["ten_crops"]["single"] == pytest.approx([test["accuracy_10crop"]] * 2)
    assert r["one_crop"]["gain"] == pytest.approx(0.0)   # two copies of one model
