"""Data, FSDP and tensor parallelism give the losses of one device, with parameters sharded as
train/sharding.py's rules say. Runs in a subprocess with 8 simulated CPU devices."""

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import simulated_devices_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
MESHES = [(8, 1, 1), (2, 2, 2), (1, 8, 1), (1, 2, 4)]
STEPS = 4
# A tiny GPT whose every sharded dimension divides by 8: d_model 32, 4 heads x 8, FFN 128,
# vocabulary 256.
MODEL = dict(vocab_size=256, n_ctx=16, n_layer=2, n_head=4, d_model=32, dropout=0.0,
             attn_dropout=0.0)


def run_worker(workdir, devices=8, timeout=600) -> dict:
    env = simulated_devices_env(devices)
    out = subprocess.run([sys.executable, __file__, str(workdir)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return run_worker(tmp_path_factory.mktemp("sharding"))


def test_meshes_match_one_device_and_shard_parameters(result):
    want = result["1x1x1"]["losses"]
    assert len(want) == STEPS and all(np.isfinite(want))
    assert want[-1] < want[0]
    for name in ["x".join(map(str, m)) for m in MESHES] + ["2x2x2/accum2", "1x2x4/xla_custom"]:
        got = result[name]["losses"]
        np.testing.assert_allclose(got, want, rtol=1e-4, err_msg=f"mesh {name}")

    d, heads, hd, ff, vocab = 32, 4, 8, 128, 256
    specs = result["1x2x4"]["params"]    # fsdp 2, tensor 4
    assert specs["h_0/attn/qkv/kernel"] == [["fsdp", "tensor", None, None], [d // 2, 1, 3, hd]]
    assert specs["h_0/attn/qkv/bias"] == [["tensor", None, None], [1, 3, hd]]
    assert specs["h_0/attn/out/kernel"] == [["tensor", None, "fsdp"], [1, hd, d // 2]]
    assert specs["h_0/ffn/fc/kernel"] == [["fsdp", "tensor"], [d // 2, ff // 4]]
    assert specs["h_0/ffn/proj/kernel"] == [["tensor", "fsdp"], [ff // 4, d // 2]]
    assert specs["wte/embedding"] == [["tensor", "fsdp"], [vocab // 4, d // 2]]
    assert specs["wpe/embedding"] == [[None, "fsdp"], [16, d // 2]]
    assert specs["ln_f/scale"] == [["fsdp"], [d // 2]]
    specs = result["1x8x1"]["params"]    # FSDP alone: every weight split 8 ways on its width
    assert specs["h_1/ffn/fc/kernel"] == [["fsdp", "tensor"], [d // 8, ff]]
    assert specs["wte/embedding"] == [["tensor", "fsdp"], [vocab, d // 8]]
    specs = result["8x1x1"]["params"]    # data parallelism alone: replicated
    assert specs["h_1/ffn/fc/kernel"][1] == [d, ff]
    for name, r in result.items():       # Adam's moments are sharded like their parameters
        assert r["adam_mu_matches_params"], name


def test_tensor_parallel_never_gathers_all_heads(result):
    # Heads split over 4 tensor shards: each shard computes q, k, v for its own head, so no
    # all-gather in the compiled step (the FSDP ones gather the width) yields all 4 heads'
    # q|k|v columns (96 = 4 x 3 x 8), of the kernel or of its activations.
    shapes = result["1x2x4"]["all_gathers"]
    assert shapes, "expected FSDP's all-gathers of the weights"
    assert not [x for x in shapes if 96 in x or x[-3:] == [4, 3, 8]], shapes


def test_indivisible_dimension_is_replicated_not_an_error(result):
    # vocabulary 250 over 4 tensor shards: that dimension stays whole, the width is still split
    r = result["indivisible"]
    assert r["params"]["wte/embedding"] == [[None, "fsdp"], [250, 16]]
    assert np.isfinite(r["losses"]).all()


# ------------------------------------------------------------------ the subprocess

def _worker(tmp: pathlib.Path):
    import jax
    import jax.numpy as jnp

    from data.text import PackedWindows
    from experiments.bench_workloads import GPTWorkload
    from experiments.configs import gpt as gpt_configs
    from experiments.pretrain_lm import lm_loss_fn
    from models import gpt
    from train import sharding
    from train.logging import read_metrics
    from train.trainer import fit

    def config_for(mesh, grad_accum=1, **model):
        config = gpt_configs.get_config("tiny")
        config.model.update({**MODEL, **model})
        config.data.seq_len = MODEL["n_ctx"]
        config.mesh = gpt_configs.mesh_config(*mesh)
        config.train.update(steps=STEPS, batch_size=16, grad_accum=grad_accum, lr=1e-2,
                            warmup_steps=1, log_every=1, eval_every=1000, ckpt_every=1000)
        return config

    def train(config, mesh, workdir):
        cfg = gpt.GPTConfig(**config.model.to_dict())
        model = gpt.GPT(cfg)
        phrase = np.random.default_rng(0).integers(0, cfg.vocab_size, 61)   # learnable
        tokens = np.tile(phrase, 70).astype(np.int32)
        data = PackedWindows(tokens, cfg.n_ctx, config.train.batch_size, seed=0)
        state = fit(config, init_fn=lambda rng: model.init(rng, jnp.zeros((1, cfg.n_ctx),
                                                                           jnp.int32)),
                    loss_fn=lm_loss_fn(model), train_data=data, workdir=workdir, mesh=mesh)
        losses = [r["loss"] for r in read_metrics(workdir) if r["split"] == "train"]
        params = {jax.tree_util.keystr(path, simple=True, separator="/"):
                  [list(x.sharding.spec) + [None] * (x.ndim - len(x.sharding.spec)),
                   list(x.addressable_shards[0].data.shape)]
                  for path, x in jax.tree_util.tree_leaves_with_path(state.params)}
        mu = state.opt_state[1].mu   # chain(clip, scale_by_adam, ...): Adam's moments
        same = all(m.sharding == p.sharding for m, p in zip(jax.tree.leaves(mu),
                                                            jax.tree.leaves(state.params)))
        return {"losses": losses, "params": params, "adam_mu_matches_params": same}

    result = {}
    for mesh in [(1, 1, 1)] + MESHES:
        config = config_for(mesh)
        devices = jax.devices()[:int(np.prod(mesh))]
        name = "x".join(map(str, mesh))
        result[name] = train(config, sharding.make_mesh(config.mesh, devices), tmp / name)
    config = config_for((2, 2, 2), grad_accum=2)   # microbatches of 8 over 4 batch shards
    result["2x2x2/accum2"] = train(config, sharding.make_mesh(config.mesh), tmp / "accum")
    config = config_for((1, 2, 4), attention_impl="xla_custom")   # heads split over tensor
    result["1x2x4/xla_custom"] = train(config, sharding.make_mesh(config.mesh), tmp / "custom")
    config = config_for((1, 2, 4))     # the collectives of its compiled step
    ours = GPTWorkload(config).ours(sharding.make_mesh(config.mesh))["train"]
    result["1x2x4"]["all_gathers"] = [
        [int(n) for n in dims.split(",") if n]
        for dims in re.findall(r"= f32\[([\d,]*)\][^ ]* all-gather", ours.step.as_text())]
    config = config_for((1, 2, 4), vocab_size=250)
    config.train.steps = 1
    result["indivisible"] = train(config, sharding.make_mesh(config.mesh), tmp / "indivisible")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(_worker(pathlib.Path(sys.argv[1]))))
