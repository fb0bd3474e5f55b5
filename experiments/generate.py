"""Continue a prompt with a trained GPT, decoding with the key/value cache.

    python -m experiments.generate --workdir=PATH --prompt=TEXT [--max_new_tokens=64 \
        --temperature=0.8 --top_k=40 --top_p=0.95 --seed=0 --stop=STRING --dtype=bfloat16]

PATH is a pretrain_lm workdir (config.json + checkpoints/<step>/: its newest checkpoint; the
tokenizer is the workdir's tokenizer.json when it has one, else the one its data config names
or trains) or a transformers GPT-2 directory (config.json with model_type gpt2,
model.safetensors, vocab.json + merges.txt). Generation stops at <|endoftext|> and at the first
--stop string. Prints the continuation, then the compile time and the tokens per second of the
prefill (the prompt at once) and of the decoding (one token per step), each timed on its
compiled program. Settings the decoding cannot take (an empty prompt, --max_new_tokens < 1,
--temperature < 0, --top_k < 0, --top_p outside (0, 1]) stop it before anything is loaded;
--init_from, the former name of --workdir, works for one release.
"""

import dataclasses
import pathlib
import sys
import time

import jax
import numpy as np
from absl import app, flags

from experiments import launch, tool_flags  # noqa: F401  (launch defines --workdir)
from experiments.pretrain_lm import check_sampling, load_lm
from models import decode, gpt

flags.declare_key_flag("workdir")   # listed by --help
tool_flags.define_renamed("init_from", "workdir")
flags.DEFINE_string("prompt", None, "Text to continue.")
flags.DEFINE_integer("max_new_tokens", 64, "Most tokens to generate.")
flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 decodes greedily.")
flags.DEFINE_integer("top_k", 0, "Sample among the k most probable tokens (0: all).")
flags.DEFINE_float("top_p", 1.0, "Sample within the top-p nucleus (1: all).")
flags.DEFINE_integer("seed", 0, "Random seed of the sampling.")
flags.DEFINE_multi_string("stop", [], "Cut the continuation at the first of these strings.")
flags.DEFINE_string("dtype", "", "Compute dtype (float32 | bfloat16); empty: as trained.")
FLAGS = flags.FLAGS


def load_model(path) -> tuple[gpt.GPTConfig, dict, object]:
    """(GPTConfig, params, tokenizer) of a pretrain_lm workdir or a transformers GPT-2 / GPT-1
    directory."""
    path = pathlib.Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path / 'config.json'} not found: expected a pretrain_lm "
                                "workdir or a transformers GPT-2 directory")
    return load_lm(path)


def generate(cfg: gpt.GPTConfig, params, prompt: list[int], *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             stop_tokens: tuple = (), seed: int = 0) -> tuple[list[int], dict]:
    """gpt.generate_batch for one prompt, with the prefill and the decoding loop compiled
    ahead of time and timed apart: -> (new tokens, timings)."""
    tokens, pad_mask = gpt.left_pad([prompt])
    max_len = tokens.shape[1] + max_new_tokens
    gpt.check_context(cfg, tokens.shape[1], max_new_tokens)
    rng = jax.random.key(seed)
    sampling = (float(temperature), int(top_k), float(top_p), np.asarray(stop_tokens, np.int32))
    clock = time.perf_counter
    start = clock()
    prefill = gpt.prefill.lower(cfg, params, tokens, pad_mask, max_len).compile()
    compile_s = clock() - start
    start = clock()
    logits, cache = jax.block_until_ready(prefill(params, tokens, pad_mask))
    prefill_s = clock() - start
    start = clock()
    steps = gpt.decode_steps.lower(cfg, params, logits, cache, rng, *sampling,
                                   num_steps=max_new_tokens).compile()
    compile_s += clock() - start
    start = clock()
    out, lengths = jax.block_until_ready(steps(params, logits, cache, rng, *sampling))
    decode_s = clock() - start
    new = np.asarray(out)[0, :int(lengths[0])].tolist()
    if new and new[-1] in stop_tokens:
        new = new[:-1]
    return new, {"compile_s": compile_s, "prefill_s": prefill_s, "decode_s": decode_s,
                 "prompt_tokens": len(prompt), "new_tokens": int(lengths[0])}


def report(timings: dict) -> str:
    t = timings
    return (f"{t['prompt_tokens']} prompt tokens, {t['new_tokens']} new tokens; compile "
            f"{t['compile_s']:.2f} s; prefill {t['prompt_tokens'] / t['prefill_s']:.1f} "
            f"tokens/s ({t['prefill_s'] * 1e3:.1f} ms); decode "
            f"{t['new_tokens'] / t['decode_s']:.1f} tokens/s ({t['decode_s'] * 1e3:.1f} ms)")


def check_flags() -> None:
    if not FLAGS.prompt:
        raise ValueError("--prompt is empty: generation continues a prompt of at least one token")
    if FLAGS.max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens must be positive, got {FLAGS.max_new_tokens}")
    check_sampling(FLAGS.temperature, FLAGS.top_k, FLAGS.top_p, prefix="--")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        check_flags()
    except ValueError as e:
        sys.exit(f"error: {e}")
    tool_flags.quiet_libraries()
    cfg, params, tokenizer = load_model(FLAGS.workdir)
    if FLAGS.dtype:
        cfg = dataclasses.replace(cfg, dtype=FLAGS.dtype)
    prompt = tokenizer.encode(FLAGS.prompt)
    new, timings = generate(cfg, params, prompt, max_new_tokens=FLAGS.max_new_tokens,
                            temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
                            stop_tokens=(tokenizer.eot_id,), seed=FLAGS.seed)
    print(FLAGS.prompt + decode.truncate_at_stop(tokenizer.decode(new), FLAGS.stop))
    print(report(timings), file=sys.stderr)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "prompt"])
    app.run(main)
