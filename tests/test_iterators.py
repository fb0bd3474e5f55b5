"""data/iterators.py: epoch order, per-process rows, bit-exact resume with prefetch, state checks."""

import gc
import json
import threading
import time

import numpy as np
import pytest

from data.iterators import ArrayBatches, EpochBatches


class Noisy(EpochBatches):
    """Each row: its example index and a draw from the example's generator; counts its builds."""

    def __init__(self, n, batch_size, **kw):
        self.built = 0
        super().__init__(n, batch_size, **kw)

    def make_batch(self, indices, rngs):
        self.built += 1
        return {"index": indices.copy(), "noise": np.array([r.random() for r in rngs])}


def take(it, k):
    return [next(it) for _ in range(k)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_each_epoch_is_the_seeded_permutation():
    it = Noisy(10, 3, seed=7)
    assert it.steps_per_epoch == 3  # the tenth example of each epoch is dropped
    for epoch in range(3):
        seen = np.concatenate([b["index"] for b in take(it, 3)])
        order = np.random.default_rng((7, epoch)).permutation(10)
        np.testing.assert_array_equal(seen, order[:9])
    assert it.get_state()["epoch"] == 2 and it.get_state()["index"] == 3


def test_example_randomness_comes_from_seed_epoch_and_index():
    it = Noisy(6, 2, seed=1, prefetch=0)
    take(it, 3)
    b = next(it)  # epoch 1, batch 0
    want = [np.random.default_rng((1, 1, int(i))).random() for i in b["index"]]
    np.testing.assert_array_equal(b["noise"], want)


@pytest.mark.parametrize("kw", [dict(), dict(shuffle=False, drop_remainder=False)])
def test_process_rows_concatenate_to_the_global_batch(kw):
    full = Noisy(11, 4, seed=3, **kw)
    halves = [Noisy(11, 4, seed=3, process_index=p, process_count=2, **kw) for p in (0, 1)]
    for _ in range(full.steps_per_epoch * (1 if kw else 2)):
        g, parts = next(full), [next(h) for h in halves]
        assert all(len(p["index"]) == 2 for p in parts)
        for key in g:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), g[key])


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_is_bit_exact(prefetch):
    make = lambda: Noisy(13, 4, seed=5, prefetch=prefetch)  # noqa: E731
    it = make()
    uninterrupted = take(make(), 12)
    take(it, 5)  # into the second epoch (3 batches each)
    state = json.loads(json.dumps(it.get_state()))
    resumed = make()
    resumed.set_state(state)
    assert_same(take(resumed, 7), uninterrupted[5:])
    # set_state on an iterator that has read ahead moves it back.
    take(it, 4)
    it.set_state(state)
    assert_same(take(it, 7), uninterrupted[5:])


def test_prefetch_gives_the_same_batches_and_state_counts_what_was_taken():
    plain, ahead = Noisy(20, 4, seed=0, prefetch=0), Noisy(20, 4, seed=0, prefetch=3)
    assert_same(take(plain, 2), take(ahead, 2))
    deadline = time.monotonic() + 10
    while ahead.built < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert ahead.built == 6  # 2 taken, 3 queued, 1 waiting for room
    assert ahead.get_state()["index"] == plain.get_state()["index"] == 2


def test_single_pass_pads_the_last_batch_and_weights_it():
    it = Noisy(7, 4, seed=0, shuffle=False, drop_remainder=False)
    batches = list(it)
    assert [b["index"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 0]]
    assert batches[1]["weights"].tolist() == [1, 1, 1, 0]
    assert batches[0]["weights"].dtype == np.float32
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_small_epoch_repeats_to_fill_one_batch_or_errors():
    it = Noisy(3, 8, seed=2, repeat_small=True)
    b = next(it)["index"]
    np.testing.assert_array_equal(b, np.resize(np.random.default_rng((2, 0)).permutation(3), 8))
    assert it.steps_per_epoch == 1
    with pytest.raises(ValueError, match="3 examples are fewer than one global batch of 8"):
        Noisy(3, 8, seed=2)


def test_state_from_other_data_is_refused():
    state = Noisy(10, 2, seed=0).get_state()
    assert set(state) == {"kind", "n", "batch_size", "seed", "epoch", "index"}
    for other, what in [(Noisy(11, 2, seed=0), "n=10"), (Noisy(10, 5, seed=0), "batch_size=2"),
                        (Noisy(10, 2, seed=1), "seed=0"),
                        (ArrayBatches({"x": np.zeros(10)}, 2, seed=0), "kind='Noisy'")]:
        with pytest.raises(ValueError, match=f"not the same data: .*the state has {what}"):
            other.set_state(state)
    with pytest.raises(ValueError, match=r"lacks \['kind', 'n'"):
        Noisy(10, 2, seed=0).set_state({"epoch": 0, "index": 0})
    with pytest.raises(ValueError, match="outside 5 batches per epoch"):
        Noisy(10, 2, seed=0).set_state({**state, "index": 6})


def test_bad_arguments():
    with pytest.raises(ValueError, match="not divisible by 4 processes"):
        Noisy(10, 6, seed=0, process_count=4)
    with pytest.raises(ValueError, match=r"process_index 2 not in \[0, 2\)"):
        Noisy(10, 4, seed=0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="one length"):
        ArrayBatches({"x": np.zeros(4), "y": np.zeros(5)}, 2, seed=0)


class Failing(Noisy):
    def make_batch(self, indices, rngs):
        if 5 in indices:
            raise RuntimeError("example 5 is unreadable")
        return super().make_batch(indices, rngs)


def test_an_error_in_the_prefetch_thread_raises_in_the_consumer():
    it = Failing(8, 2, seed=0, shuffle=False, prefetch=2)
    assert [b["index"].tolist() for b in take(it, 2)] == [[0, 1], [2, 3]]
    with pytest.raises(RuntimeError, match="example 5 is unreadable"):
        next(it)
    assert it.get_state()["index"] == 2  # the failed batch was not taken
    with pytest.raises(RuntimeError, match="example 5"):  # retried, fails again
        next(it)


def _prefetch_threads(name):
    return [t for t in threading.enumerate() if t.name == f"{name}-prefetch"]


class Dropped(Noisy):
    pass


def test_prefetch_thread_ends_when_the_iterator_is_dropped_or_closed():
    it = Dropped(100, 2, seed=0, prefetch=2)
    next(it)
    (thread,) = _prefetch_threads("Dropped")
    assert thread.daemon
    del it
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()
    it = Dropped(100, 2, seed=0, prefetch=2)
    next(it)
    (thread,) = _prefetch_threads("Dropped")
    it.close()
    assert not thread.is_alive()
    next(it)  # iterating again restarts it from where the consumer is
    assert it.get_state()["index"] == 2


def test_array_batches_gather_rows():
    arrays = {"tokens": np.arange(20).reshape(10, 2), "labels": np.arange(10)}
    b = next(ArrayBatches(arrays, 4, seed=0))
    np.testing.assert_array_equal(b["tokens"][:, 0], 2 * b["labels"])
    assert b["labels"].tolist() == np.random.default_rng((0, 0)).permutation(10)[:4].tolist()
