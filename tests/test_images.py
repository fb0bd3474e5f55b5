import json
import re

import numpy as np
import pytest

from data import augment
from data import images as I


@pytest.fixture(scope="module")
def scenes():
    return I.DigitScenes()


def test_mnist_and_splits():
    x, y = I.mnist_digits()
    assert x.shape == (5000, 28, 28) and x.dtype == np.uint8 and set(y) == set(range(10))
    parts = I.split_indices(5000)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [4000, 500, 500]
    assert len(np.unique(np.concatenate(list(parts.values())))) == 5000


def test_heldout_pairs_never_in_training(scenes):
    held = {frozenset(p) for p in I.HELDOUT_PAIRS}
    assert len(scenes.heldout_classes) == 2 * len(I.HELDOUT_PAIRS)
    assert not held & {frozenset(p) for p in scenes.train_pairs}
    _, captions = scenes.captioned(500, np.random.default_rng(0))
    for c in captions:  # no training caption names both digits of a held-out pair
        words = set(re.findall(r"\w+", c))
        named = {d for d in range(10) if {str(d), I.WORDS[d]} & words}
        assert not any(p <= named for p in held), c


def test_scene_rendering(scenes):
    rng = np.random.default_rng(1)
    x, captions = scenes.captioned(16, rng)
    assert x.shape == (16, 36, 36) and x.dtype == np.uint8 and len(captions) == 16
    # A two-digit scene keeps the first digit left of the second, inside the centre crop.
    pair = scenes.render((3, 8), "test", rng)
    cols = np.nonzero(augment.center_crop(pair[None], 32)[0].max(0))[0]
    assert pair.sum() == augment.center_crop(pair[None], 32).sum()
    assert cols.min() < 16 and cols.max() >= 16
    x, labels = scenes.labelled("heldout_pairs", 20, "test", rng)
    assert x.shape == (20, 36, 36) and labels.max() < 10


def test_captions_and_prompts():
    assert I.caption((7,), "a photo of the number {x}.", "word") == "a photo of the number seven."
    assert I.caption((3, 7), "a {x} to the left of a {y}.", "numeral") == "a 3 to the left of a 7."
    prompts = I.class_prompts((2, 5), I.PAIR_PROMPTS)
    assert len(prompts) == len(I.PAIR_PROMPTS) and prompts[0] == "a 2 to the left of a 5."


def test_crops_and_normalize():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 36, 36), dtype=np.uint8)
    crops = I.random_square_crop(x, 32, rng)
    assert crops.shape == (4, 32, 32)
    c = augment.center_crop(x, 32)
    np.testing.assert_array_equal(c, x[:, 2:34, 2:34])
    z = I.normalize(c, I.MNIST_MEAN, I.MNIST_STD)
    assert z.shape == (4, 32, 32, 1) and z.dtype == np.float32
    np.testing.assert_allclose(z[..., 0], (c / 255 - 0.1307) / 0.3081, rtol=1e-5)


@pytest.mark.parametrize("bad", [np.zeros((36, 36)), np.zeros((2, 36, 30)), np.zeros((2, 8, 8))])
def test_wrong_shape_raises(bad):
    with pytest.raises(ValueError):
        I.random_square_crop(bad, 32, np.random.default_rng(0))


def test_normalize_wrong_channels_raises():
    with pytest.raises(ValueError, match="expected images"):
        I.normalize(np.zeros((2, 8, 8, 3), np.uint8), I.MNIST_MEAN, I.MNIST_STD)
    with pytest.raises(ValueError, match="expected an image"):
        I.resize_square(np.zeros((8, 8, 2), np.uint8), 4)


def _write_imagefolder(root, n=5):
    from PIL import Image

    rng = np.random.default_rng(0)
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(n):
            w, h = (40, 30) if i % 2 else (24, 32)  # mixed, non-square sizes
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "caption": f"picture {i}"}) + "\n")


class WordTokenizer:
    """Stand-in with the encode_batch of data.tokenizer.Tokenizer: one id per word."""

    def encode_batch(self, texts):
        return [[10 + len(w) for w in t.split()] for t in texts]


def encode(captions):
    return I.tokenize(WordTokenizer(), captions, context_length=6, sot_id=1, eot_id=2)


def test_tokenize_pads_and_truncates():
    tokens = encode(["a bb", "a b c d e f g"])
    np.testing.assert_array_equal(tokens, [[1, 11, 12, 2, 0, 0], [1, 11, 11, 11, 11, 2]])
    assert tokens.dtype == np.int32


def test_scene_batches_resume(scenes):
    it = I.SceneBatches(scenes, encode, 8, I.MNIST_MEAN, I.MNIST_STD, seed=3)
    first = [next(it) for _ in range(3)]
    assert first[0]["images"].shape == (8, 32, 32, 1) and first[0]["tokens"].shape == (8, 6)
    resumed = I.SceneBatches(scenes, encode, 8, I.MNIST_MEAN, I.MNIST_STD, seed=3)
    resumed.set_state(it.get_state())
    again = I.SceneBatches(scenes, encode, 8, I.MNIST_MEAN, I.MNIST_STD, seed=3)
    [next(again) for _ in range(3)]
    np.testing.assert_array_equal(next(resumed)["images"], next(again)["images"])
    # Two processes see the two halves of the one-process batch.
    halves = [next(I.SceneBatches(scenes, encode, 8, I.MNIST_MEAN, I.MNIST_STD, seed=3,
                                  process_index=p, process_count=2)) for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h["images"] for h in halves]),
                                  first[0]["images"])


def test_hub_loader_imagefolder(tmp_path):
    data = tmp_path / "pairs"
    data.mkdir()
    _write_imagefolder(data)
    ds = I.load_image_captions("imagefolder", data_dir=str(data), cache_dir=str(tmp_path / "cache"))
    it = I.HubBatches(ds, encode, 2, resize=20, crop=16, mean=I.CLIP_MEAN, std=I.CLIP_STD,
                      seed=0)
    assert it.steps_per_epoch == 2
    batches = [next(it) for _ in range(3)]  # the third starts a new epoch
    assert batches[0]["images"].shape == (2, 16, 16, 3) and batches[0]["images"].dtype == np.float32
    assert batches[0]["tokens"].shape == (2, 6) and it.get_state()["epoch"] == 1
    assert I.resize_square(ds[0]["image"], 20).shape == (20, 20, 3)
    with pytest.raises(ValueError, match="lacks column"):
        I.load_image_captions("imagefolder", data_dir=str(data), caption_column="text",
                              cache_dir=str(tmp_path / "cache"))


def test_hub_loader_parquet(tmp_path):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = {"image": [Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8))
                      for _ in range(3)],
            "text": ["a", "b c", "d"]}
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "p.parquet"))
    ds = I.load_image_captions("parquet", data_files=str(tmp_path / "p.parquet"),
                               caption_column="text", cache_dir=str(tmp_path / "cache"))
    batch = next(I.HubBatches(ds, encode, 3, resize=16, crop=16, mean=I.CLIP_MEAN,
                              std=I.CLIP_STD, seed=0, caption_column="text"))
    assert batch["images"].shape == (3, 16, 16, 3)
    assert sorted(batch["tokens"][:, 1].tolist()) == [11, 11, 11]
