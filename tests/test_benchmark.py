"""The benchmark runs end to end (numbers are not checked: speed is measured, never tested)."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_trainer import ROOT

from train import perf

SMALL = ["--config.model.n_layer=1", "--config.model.d_model=64", "--config.model.n_head=2",
         "--config.model.vocab_size=512", "--config.model.n_ctx=32", "--config.data.seq_len=32",
         "--config.train.batch_size=4", "--rounds=1", "--steps=1", "--warmup=1",
         "--input_batches=5", "--peak_repeats=1"]
# ResNet-18, the smallest ResNet torchvision has, on 40x40 images (2x2 after its five halvings).
CONVNET = ["--config.model.name=resnet18", "--config.data.image_size=40",
           "--config.train.batch_size=4", "--rounds=1", "--steps=1", "--warmup=1",
           "--input_batches=2", "--peak_repeats=1"]


def benchmark(preset, *flags, config="gpt.py"):
    """The benchmark's JSON line; the subprocess inherits the tests' fast-compiling XLA flags
    (tests/conftest.py): the test reads the report, not the speed."""
    small = SMALL if config == "gpt.py" else CONVNET
    out = subprocess.run([sys.executable, "-m", "experiments.benchmark",
                          f"--config=experiments/configs/{config}:{preset}", *small, *flags],
                         cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cpu_benchmark_against_pytorch():
    r = benchmark("bench-cpu", "--peer", "--rounds=2")
    for key in ("tokens_per_sec", "mfu", "compile_s", "step_s", "peak_flops", "input_batch_ms",
                "peer_tokens_per_sec", "ratio"):
        assert r[key] > 0, key
    assert r["ratio"] == r["tokens_per_sec"] / r["peer_tokens_per_sec"]
    assert len(r["ratio_rounds"]) == 2 and min(r["ratio_rounds"]) > 0
    assert r["peer_logits_dtype"] == "float32"
    for side in ("", "peer_"):   # resident memory during the steps, at most the lifetime peak
        # (up to the kernel's batched RSS counters, which VmRSS and ru_maxrss read apart)
        assert 0 < r[f"{side}step_rss_bytes"] <= 1.01 * r[f"{side}max_rss_bytes"], side


def test_gpu_preset_runs_on_cpu():
    r = benchmark("bench-gpu")
    assert r["dtype"] == "bfloat16" and r["tokens_per_sec"] > 0 and "peer_tokens_per_sec" not in r


def test_bfloat16_peer_runs_under_autocast():
    """The peer follows our compute dtype (bfloat16 autocast), here on the CPU."""
    r = benchmark("bench-gpu", "--peer")
    assert r["dtype"] == "bfloat16" and r["peer_logits_dtype"] == "bfloat16"
    assert r["peer_tokens_per_sec"] > 0 and r["ratio"] > 0


def test_convnet_benchmark_against_torchvision():
    """Training step and eval-mode forward, each against torchvision's model in PyTorch."""
    r = benchmark("bench-cpu", "--peer", config="convnets.py")
    assert r["config"]["name"] == "resnet18" and r["resolution"] == 40 and r["batch"] == 4
    for key in ("images_per_sec", "mfu", "step_s", "compile_s", "peer_images_per_sec", "ratio",
                "infer_images_per_sec", "infer_mfu", "infer_compile_s",
                "peer_infer_images_per_sec", "infer_ratio", "peak_flops", "input_batch_ms",
                "flops_per_image", "first_loss"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["ratio"] == r["images_per_sec"] / r["peer_images_per_sec"]
    assert r["infer_ratio"] == r["infer_images_per_sec"] / r["peer_infer_images_per_sec"]
    assert len(r["ratio_rounds"]) == len(r["infer_ratio_rounds"]) == 1
    assert r["flops_per_image"] == 3 * r["infer_flops_per_image"]   # training: 3x forward
    assert r["peak_source"] in ("xla", "pytorch") and r["load_average"] >= 0
    assert r["peer_memory_format"] == "contiguous_format"


def conv_dtypes(jaxpr) -> set[str]:
    """Dtypes of every convolution's operands in a jaxpr, nested ones included."""
    found = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            found |= {str(v.aval.dtype) for v in eqn.invars}
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                if hasattr(sub, "jaxpr"):
                    found |= conv_dtypes(getattr(sub.jaxpr, "jaxpr", sub.jaxpr))
    return found


def test_gpu_preset_trains_in_bfloat16_on_float32_parameters():
    """bench-gpu's settings (on ResNet-18): every convolution, forward and backward, in
    bfloat16; parameters, gradients and BatchNorm statistics float32 (traced, not compiled)."""
    from experiments.classify_images import build_model, classify_loss_fn
    from experiments.configs import convnets
    config = convnets.get_config("bench-gpu")
    config.model.name = "resnet18"
    model = build_model(config, 1000)
    images = jnp.zeros((2, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
    batch = {"images": images, "labels": jnp.zeros((2,), jnp.int32)}
    loss_fn = classify_loss_fn(model)
    step = jax.value_and_grad(lambda p, s: loss_fn(p, s, batch, jax.random.key(1)),
                              has_aux=True)
    args = variables["params"], {"batch_stats": variables["batch_stats"]}
    jaxpr, ((_, (_, new_state)), grads) = jax.make_jaxpr(step, return_shape=True)(*args)
    assert conv_dtypes(jaxpr.jaxpr) == {"bfloat16"}
    assert {x.dtype for x in jax.tree.leaves((new_state, grads))} == {jnp.dtype("float32")}


# GPT-2's decoding workload on a one-layer model: a 5-token prompt, 7 new tokens, batch 1 and 3.
DECODE = ["--config.model.n_layer=1", "--config.model.d_model=32", "--config.model.n_head=2",
          "--config.model.vocab_size=101", "--config.model.n_ctx=16",
          "--config.bench.prompt_len=5", "--config.bench.new_tokens=7",
          "--config.bench.batches=(1,3)", "--rounds=1", "--steps=1", "--warmup=1",
          "--peak_repeats=1"]


def test_decode_benchmark_against_transformers_generate():
    """bench-decode times whole greedy generate calls, ours and transformers', batch by batch;
    batch 1 is the headline."""
    out = subprocess.run([sys.executable, "-m", "experiments.benchmark",
                          "--config=experiments/configs/gpt.py:bench-decode", *DECODE, "--peer"],
                         cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["batches"] == [1, 3] and r["prompt_len"] == 5 and r["new_tokens"] == 7
    for key in ("tokens_per_sec", "peer_tokens_per_sec", "ratio", "ms_per_token",
                "peer_ms_per_token", "mfu", "compile_s", "batch3_tokens_per_sec",
                "peer_batch3_tokens_per_sec", "batch3_ratio", "batch3_compile_s"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["ratio"] == r["tokens_per_sec"] / r["peer_tokens_per_sec"]
    assert r["batch3_ratio"] == r["batch3_tokens_per_sec"] / r["peer_batch3_tokens_per_sec"]
    # Tokens per second count batch x new tokens per call; ms per token, a call over 7 tokens.
    assert r["tokens_per_sec"] * r["step_s"] == pytest.approx(7)
    assert r["batch3_tokens_per_sec"] * r["batch3_step_s"] == pytest.approx(21)
    assert r["ms_per_token"] == pytest.approx(r["step_s"] / 7 * 1e3)
    # 2 N + attention per generated token (N: one block, the final LayerNorm, the output
    # projection); 4 L d t over the mean of the 5..11 keys the steps attend to.
    n = (12 * 32 * 32 + 13 * 32) + 2 * 32 + 101 * 32
    assert r["flops_per_token"] == 2 * n + 4 * 32 * 8
    assert "first_loss" not in r and "input_batch_ms" not in r
    assert "batch3: " in out.stdout and "not compared" in out.stdout
    # Each of the 7 steps reads every matmul weight (float32) and each row's cached keys and
    # values over the mean 8 positions; bandwidth_use is that traffic over the measured rate.
    assert r["memory_bandwidth"] > 0
    for batch, key in ((1, ""), (3, "batch3_")):
        traffic = 7 * (4 * n + 2 * 1 * 32 * 8 * batch * 4)
        assert r[f"{key}bandwidth_use"] == pytest.approx(
            traffic / r[f"{key}step_s"] / r["memory_bandwidth"])
        assert r[f"peer_{key}bandwidth_use"] > 0
    assert " BW " in out.stdout


def test_workload_follows_the_config_files_experiment():
    from experiments import benchmark as bench
    configs = ROOT / "experiments" / "configs"
    assert bench.workload_of(f"{configs}/convnets.py:bench-cpu")[0] == "classify_images"
    assert bench.workload_of(f"{configs}/gpt.py:bench-cpu")[0] == "pretrain_lm"
    with pytest.raises(ValueError, match="no benchmark workload for EXPERIMENT 'clip'"):
        bench.workload_of(f"{configs}/clip.py:tiny")


def test_config_can_pick_the_decode_workload():
    """config.bench.workload overrides the experiment's training workload; a wrong name says
    which there are."""
    from experiments import benchmark as bench
    from experiments.configs import gpt as gpt_configs
    spec = f"{ROOT}/experiments/configs/gpt.py:bench-decode"
    config = gpt_configs.get_config("bench-decode")
    assert bench.workload_of(spec, config)[0] == "decode"
    assert bench.workload_of(spec, gpt_configs.get_config("bench-cpu"))[0] == "pretrain_lm"
    config.bench.workload = "decoding"
    with pytest.raises(ValueError, match="bench.workload is 'decoding'.*'decode'"):
        bench.workload_of(spec, config)


def test_decode_workload_checks_its_shapes():
    from experiments.bench_workloads import DecodeWorkload
    from experiments.configs import gpt as gpt_configs
    config = gpt_configs.get_config("bench-decode")
    config.bench.new_tokens = 1000
    with pytest.raises(ValueError, match="do not fit the context of 1024"):
        DecodeWorkload(config)
    config.bench.new_tokens, config.bench.batches = 8, (1, 1)
    with pytest.raises(ValueError, match="repeats a batch size"):
        DecodeWorkload(config)


def test_peer_needs_a_torchvision_model():
    from experiments.bench_workloads import ConvNetWorkload
    from experiments.configs import convnets
    config = convnets.get_config("bench-cpu")
    config.model.name, config.data.image_size = "resnet8", 32
    with pytest.raises(ValueError, match="resnet8 has no counterpart"):
        ConvNetWorkload(config).peer_spec(on_gpu=False, compiled=False)


def test_convnet_input_pipeline_runs_the_configs_augmentation():
    """The digits' one channel and ten classes; the input batches pass through data.augment."""
    from experiments.bench_workloads import ConvNetWorkload
    from experiments.configs import convnets
    config = convnets.get_config("lenet5")
    plain = ConvNetWorkload(config)
    assert plain.channels == 1 and plain.num_classes == 10
    images = next(plain.input_batches())["images"]
    assert images.shape == (64, 32, 32, 1)
    config.data.augment = "flip_lr(p=1.0)"
    flipped = next(ConvNetWorkload(config).input_batches())["images"]
    np.testing.assert_allclose(flipped, images[:, :, ::-1], atol=1e-6)


FAULTS = """
import ctypes, resource, sys
if sys.argv[1] == "keep":
    from train import perf
    assert perf.keep_host_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
def touch_and_free(size):
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
touch_and_free(256 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch_and_free(256 << 20)                   # the same size again
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_host_allocator_keeps_freed_memory():
    """After keep_host_memory a freed 256 MB buffer is reused without faulting its pages in again
    (glibc otherwise unmaps it on free, and each step pays for zeroing fresh pages)."""
    run = lambda mode: int(subprocess.run(  # noqa: E731
        [sys.executable, "-c", FAULTS, mode], cwd=ROOT, check=True, capture_output=True,
        text=True).stdout)
    pages = (256 << 20) // 4096
    assert run("default") > pages / 2
    assert run("keep") < pages / 20


TRIM = """
import ctypes
from train import perf, hostmem
from experiments.bench_peers import rss_bytes
assert perf.keep_host_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
p = libc.malloc(256 << 20)
ctypes.memset(p, 1, 256 << 20)
libc.free(p)
held = rss_bytes()
assert hostmem.trim_host_memory()
print(held - rss_bytes())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_trimming_returns_freed_memory_that_keep_host_memory_holds():
    """keep_host_memory holds a freed 256 MB buffer resident (what compiling frees stays in the
    step's RSS); trim_host_memory, called once the programs are built, gives it back."""
    released = int(subprocess.run([sys.executable, "-c", TRIM], cwd=ROOT, check=True,
                                  capture_output=True, text=True).stdout)
    assert released > 200 << 20


def test_memory_bandwidth_probe_counts_a_read_and_a_write_per_byte():
    rate = perf.measure_memory_bandwidth(nbytes=16 << 20, repeats=3)
    assert 1e8 < rate < 1e14     # bytes/s: any real machine's memory, not a unit slip


# The Transformer against Marian: one layer each side, 64 wide, a 301-token vocabulary.
TRANSLATE = ["--config.model.n_layer=1", "--config.model.d_model=64", "--config.model.n_head=2",
             "--config.model.d_ff=96", "--config.model.vocab_size=301", "--rounds=1",
             "--steps=1", "--warmup=1", "--peak_repeats=1", "--peer"]


def run_transformer_benchmark(preset, *flags):
    out = subprocess.run([sys.executable, "-m", "experiments.benchmark",
                          f"--config=experiments/configs/transformer.py:{preset}", *TRANSLATE,
                          *flags], cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, json.loads(out.stdout.strip().splitlines()[-1])


def test_transformer_training_step_against_marian():
    _, r = run_transformer_benchmark("bench-cpu", "--config.bench.src_len=7",
                                     "--config.bench.tgt_len=5", "--config.train.batch_size=3")
    for key in ("tokens_per_sec", "peer_tokens_per_sec", "ratio", "mfu", "step_s", "compile_s",
                "first_loss"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["ratio"] == r["tokens_per_sec"] / r["peer_tokens_per_sec"]
    assert r["tokens_per_sec"] * r["step_s"] == pytest.approx(3 * 5)   # target tokens
    assert r["label_smoothing"] == 0.1 and r["peer_logits_dtype"] == "float32"
    # 6 N + 12 L d T per token of each stack: N_enc = 1 layer (4 d^2 + 2 d d_ff + biases, 2
    # LayerNorms) over 7 source tokens, N_dec (+ cross-attention, the tied output projection)
    # over 5 target tokens, and the attention over the source.
    d, ff, v = 64, 96, 301
    enc = 4 * d * d + 4 * d + 2 * d * ff + ff + d + 4 * d
    dec = enc + 4 * d * d + 4 * d + 2 * d + v * d
    expected = (7 * (6 * enc + 12 * d * 7) + 5 * (6 * dec + 12 * d * 5 + 12 * d * 7)) / 5
    assert r["flops_per_token"] == pytest.approx(expected)


def test_transformer_decoding_against_marian_generate():
    stdout, r = run_transformer_benchmark("bench-decode", "--config.bench.src_len=6",
                                          "--config.bench.new_tokens=4",
                                          "--config.bench.batches=(1,3)")
    for key in ("tokens_per_sec", "peer_tokens_per_sec", "ratio", "ms_per_token",
                "batch3_tokens_per_sec", "peer_batch3_tokens_per_sec", "batch3_ratio"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["batch3_ratio"] == r["batch3_tokens_per_sec"] / r["peer_batch3_tokens_per_sec"]
    assert r["batch3_tokens_per_sec"] * r["batch3_step_s"] == pytest.approx(12)
    assert r["greedy"] and "first_loss" not in r and "not compared" in stdout


def test_beam_search_decoding_workload_on_both_sides():
    """bench.beam_size 2: our beam search and the peer's generate(num_beams=2) each return
    exactly new_tokens per row (no stop token); the FLOPs count every hypothesis."""
    torch = pytest.importorskip("torch")
    from experiments import bench_peers
    from experiments.bench_workloads import TranslationDecodeWorkload
    from experiments.configs import transformer as transformer_configs
    config = transformer_configs.get_config("bench-decode")
    config.model.update(n_layer=1, d_model=16, n_head=2, d_ff=24, vocab_size=53)
    config.bench.update(src_len=5, new_tokens=3, batches=(2,))
    greedy = TranslationDecodeWorkload(config)
    config.bench.beam_size = 2
    beam = TranslationDecodeWorkload(config)
    assert beam.flops["batch2"] == 2 * greedy.flops["batch2"]
    assert "beam-2 translation" in beam.describe() and not beam.info()["greedy"]
    assert beam.ours(None)["batch2"]().shape == (2, 3)
    spec = beam.peer_spec(on_gpu=False, compiled=False)
    steps, _ = bench_peers.translate_decode_steps(spec, torch.device("cpu"), torch)
    steps["batch2"]()            # raises unless generate returned 3 new tokens per row
    config.bench.beam_size = 0
    with pytest.raises(ValueError, match="beam_size must be >= 1"):
        TranslationDecodeWorkload(config)


def test_marian_peer_loss_equals_ours_on_the_same_weights(tmp_path):
    """The peer's model and loss, imported into ours (models/hf.py), give our loss: the two
    sides compute the same function (Marian's sinusoid layout and logits bias are imported)."""
    torch = pytest.importorskip("torch")
    from experiments import bench_peers
    from experiments.bench_workloads import translation_batch
    from experiments.translate import translation_loss_fn
    from models import hf, transformer
    spec = dict(vocab_size=53, d_model=16, n_layer=2, n_head=2, d_ff=24, max_len=32, pad_id=0)
    torch.manual_seed(0)
    model = bench_peers.marian(spec, torch.device("cpu")).train()
    with torch.no_grad():
        model.final_logits_bias.normal_(0, 0.5)
    model.save_pretrained(tmp_path, safe_serialization=True)
    cfg, params = hf.marian_from_pretrained(tmp_path)
    batch = translation_batch(cfg, 3, 6, 5, seed=0)
    batch["tgt_out"][2, 3:] = 0                   # padding the loss leaves out
    batch["weights"][2, 3:] = 0
    as_torch = {k: torch.tensor(batch[k], dtype=torch.long) for k in ("src", "tgt_in", "tgt_out")}
    logits = model(input_ids=as_torch["src"], attention_mask=torch.ones_like(as_torch["src"]),
                   decoder_input_ids=as_torch["tgt_in"]).logits
    theirs = bench_peers.marian_loss(torch, logits, as_torch["tgt_out"], 0, 0.1).item()
    ours, _ = translation_loss_fn(transformer.Transformer(cfg), 0.1)(params, {}, batch, None)
    assert float(ours) == pytest.approx(theirs, rel=1e-5)


def test_transformer_workloads_check_their_shapes():
    from experiments.bench_workloads import TranslationDecodeWorkload, TranslationWorkload
    from experiments.configs import transformer as transformer_configs
    config = transformer_configs.get_config("bench-cpu")
    config.bench.tgt_len = 300
    with pytest.raises(ValueError, match="must be between 1 and the model's max_len 256"):
        TranslationWorkload(config)
    config = transformer_configs.get_config("bench-decode")
    config.bench.batches = (2, 2)
    with pytest.raises(ValueError, match="repeats a batch size"):
        TranslationDecodeWorkload(config)
    config = transformer_configs.get_config("bench-cpu")
    config.model.norm = "pre"
    with pytest.raises(ValueError, match="the Marian peer is the paper's Transformer"):
        TranslationWorkload(config).peer_spec(on_gpu=False, compiled=False)
