"""Zero-, one- and few-shot evaluation through EleutherAI's lm-evaluation-harness (GPT-3 section 3).

    python -m experiments.evaluate_lm --workdir=PATH --tasks=T1,T2 [--num_fewshot=K] \
        [--include_path=DIR [--noinclude_defaults]] [--batch_size=N] [--limit=N] [--out=DIR]

PATH, the model, is a pretrain_lm workdir (config.json + checkpoints/<step>/; its tokenizer is a
tokenizer.json at the workdir root, else the one its config's data section names or trains) or
a Hugging Face GPT-2 directory (config.json with model_type gpt2, model.safetensors,
tokenizer.json or vocab.json + merges.txt). --include_path adds a directory of task YAMLs.
Writes OUT/results.json (lm_eval's results, without per-sample logs) and OUT/results.md (its
tables), and prints the tables. OUT is --out; by default PATH/lm_eval/ when PATH is a run of
ours (it has checkpoints/), while a Hugging Face directory needs --out: it is someone else's
download, often a read-only cache, and a second evaluation in it would be mistaken for the
model's own files.

--pretrained, the former name of --workdir, works for one release: `--pretrained=PATH` alone,
or `--pretrained=PATH --workdir=OUT` with --workdir in its former meaning, the results.

The model is an lm_eval LM, `FlaxpapersLM(pretrained=PATH, batch_size=N)` (lm_eval's own name
for the model argument), also registered as "flaxpapers", so
`lm_eval.simple_evaluate(model="flaxpapers", model_args="pretrained=PATH")` works once this
module is imported. It scores and generates exactly as lm_eval's HFLM backend does: the same
context/continuation split and left truncation, the same rolling windows for perplexity, the
same stop sequences.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (Collator, handle_stop_sequences, normalize_gen_kwargs,
                                  postprocess_generated_text)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from data.tokenizer import Tokenizer
from experiments import tool_flags
from models import gpt

REGISTRY_NAME = "flaxpapers"


# ----------------------------------------------------------------------------- loading


def load_model(path) -> tuple[gpt.GPTConfig, dict, Tokenizer]:
    """A Hugging Face GPT-2 / GPT-1 directory or a pretrain_lm workdir -> (config, params,
    tokenizer)."""
    from experiments.pretrain_lm import load_lm   # orbax, the trainer: only here
    path = pathlib.Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path / 'config.json'} not found: expected a Hugging Face "
                                "GPT-2 directory or a pretrain_lm workdir")
    cfg, params, tokenizer = load_lm(path)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"the tokenizer of {path} has {tokenizer.vocab_size} tokens, more than "
                         f"the model's {cfg.vocab_size}")
    return cfg, params, tokenizer


def _jax_device(device: str | None):
    """lm_eval's device string ("cpu", "cuda", "cuda:1", "gpu", "tpu:0") -> a JAX device."""
    if device is None:
        return jax.devices()[0]
    platform, _, index = str(device).partition(":")
    platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
    try:
        devices = jax.devices(platform)
    except RuntimeError as e:
        raise ValueError(f"device {device!r}: JAX has no {platform!r} devices") from e
    i = int(index or 0)
    if i >= len(devices):
        raise ValueError(f"device {device!r}: only {len(devices)} {platform} devices")
    return devices[i]


def _bucket(length: int, limit: int) -> int:
    """Padded sequence length: the next power of two from 16, at most `limit`, so a whole
    evaluation compiles each program for a handful of shapes."""
    return min(limit, max(16, 1 << (length - 1).bit_length()))


# log p(target_t | inputs_<=t) and whether target_t is the argmax, per position (models/gpt.py).
token_scores = gpt.token_scores


# ----------------------------------------------------------------------------- the LM


class FlaxpapersLM(TemplateLM):
    """Our GPT as an lm_eval language model (loglikelihood, loglikelihood_rolling,
    generate_until), batched by length in fixed padded shapes."""

    def __init__(self, pretrained: str, batch_size: int | str = 8, max_batch_size=None,
                 device: str | None = None, max_length: int | None = None,
                 max_gen_toks: int = 256, dtype: str = "float32", seed: int = 0, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"FlaxpapersLM got unknown arguments {sorted(kwargs)}")
        try:
            self._batch_size = int(batch_size)
        except ValueError as e:
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}") from e
        if self._batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
        cfg, params, self.tokenizer = load_model(pretrained)
        # Evaluation is deterministic: no dropout, and the compute dtype chosen here.
        self.cfg = gpt.GPTConfig(**{**cfg.__dict__, "dtype": dtype, "dropout": 0.0,
                                    "attn_dropout": 0.0})
        self._device = _jax_device(device)
        self.params = jax.device_put(params, self._device)
        self._max_length = int(max_length or cfg.n_ctx)
        if not 1 < self._max_length <= cfg.n_ctx:
            raise ValueError(f"max_length {max_length} must lie in (1, {cfg.n_ctx}], the "
                             "model's context")
        self._max_gen_toks = int(max_gen_toks)
        self._rng = jax.random.key(seed)
        self.pretrained = str(pretrained)

    # -- what lm_eval asks of a model

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return self.pretrained

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs):
        return self.tokenizer.encode(string)  # GPT-2 adds no BOS

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    def get_model_info(self) -> dict:
        n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.params))
        return {"model_num_parameters": n, "model_dtype": self.cfg.dtype,
                "model_name": self.pretrained}

    # -- scoring

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """(key, context tokens, continuation tokens) -> (sum log p(continuation), is greedy).

        As HFLM: the model reads (context + continuation)[-(L+1):][:-1] and the last
        len(continuation) positions are scored. Requests run longest first, batch_size at a
        time, each batch right-padded to a bucketed length."""
        def longest_first(req):
            toks = req[1] + req[2]
            return -len(toks), tuple(toks)

        order = Collator(requests, sort_fn=longest_first)
        results = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood")
        for chunk in order.get_batched(n=self.batch_size):
            results += self._score_batch([(ctx, cont) for _, ctx, cont in chunk])
            bar.update(len(chunk))
        bar.close()
        return order.get_original(results)

    def _score_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        L = self.max_length
        rows = []
        for ctx, cont in pairs:
            if not cont:
                raise ValueError("a continuation must have at least one token")
            if len(cont) > L:
                raise ValueError(f"a continuation of {len(cont)} tokens does not fit the "
                                 f"context of {L}")
            rows.append((ctx + cont)[-(L + 1):])
        width = _bucket(max(len(r) - 1 for r in rows), L)
        inputs = np.zeros((self.batch_size, width), np.int32)
        targets = np.zeros((self.batch_size, width), np.int32)
        for i, row in enumerate(rows):
            inputs[i, :len(row) - 1], targets[i, :len(row) - 1] = row[:-1], row[1:]
        logp, greedy = jax.device_get(token_scores(self.cfg, self.params,
                                                   jax.device_put(inputs, self._device),
                                                   jax.device_put(targets, self._device)))
        out = []
        for i, (row, (_, cont)) in enumerate(zip(rows, pairs)):
            end = len(row) - 1
            span = slice(end - len(cont), end)
            out.append((float(logp[i, span].astype(np.float64).sum()), bool(greedy[i, span].all())))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents: maximal-context windows that predict every token
        exactly once, the first conditioned on <|endoftext|> (lm_eval's rolling windows)."""
        windows, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append(((None, None), ctx, cont))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[i] += logp
        return totals

    # -- generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continuations cut at the first stop sequence (the request's `until`, plus
        <|endoftext|>), after at most max_gen_toks tokens; the context is left-truncated to
        leave room for them, as HFLM does. Requests run longest first, batch_size at a time,
        each batch sharing its generation settings."""
        eos = self.tok_decode([self.eot_token_id])

        def longest_first(req):
            return -len(self.tok_encode(req[0])), req[0]

        order = Collator([req.args for req in requests], sort_fn=longest_first,
                         group_by="gen_kwargs", group_fn=lambda req: req[1])
        results = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
        for chunk in order.get_batched(n=self.batch_size):
            contexts, all_kwargs = zip(*chunk)
            results += self._generate_batch(list(contexts), all_kwargs[0], eos)
            bar.update(len(chunk))
        bar.close()
        return order.get_original(results)

    def _generate_batch(self, contexts: list[str], gen_kwargs: dict, eos: str) -> list[str]:
        """One batch through one gpt.generate_batch: left padded to a bucketed width and
        filled to batch_size rows (copies of its last prompt), so that a whole evaluation
        compiles the prefill and the decoding loop for a handful of shapes."""
        kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
        num_tokens = kwargs.pop("max_gen_toks")
        sampling = sampling_settings(kwargs)
        room = self.max_length - num_tokens
        if room <= 0:
            raise ValueError(f"max_gen_toks {num_tokens} leaves no room for a context in "
                             f"{self.max_length} tokens")
        # An empty context is conditioned on <|endoftext|>, as loglikelihood does.
        prompts = [self.tok_encode(c)[-room:] or [self.eot_token_id] for c in contexts]
        rows = prompts + [prompts[-1]] * (self.batch_size - len(prompts))
        self._rng, key = jax.random.split(self._rng)
        out = gpt.generate_batch(self.cfg, self.params, rows, num_tokens, key,
                                 **sampling, stop_tokens=(self.eot_token_id,),
                                 width=_bucket(max(map(len, prompts)), room))
        return [postprocess_generated_text(self.tok_decode(tokens), until, None)
                for tokens in out[:len(prompts)]]


def sampling_settings(gen_kwargs: dict) -> dict:
    """lm_eval's normalised generation settings (less until and max_gen_toks) -> temperature,
    top_k and top_p of gpt.generate_batch: greedy unless do_sample."""
    kwargs = dict(gen_kwargs)
    do_sample = kwargs.pop("do_sample", False)
    temperature = float(kwargs.pop("temperature", None) or 0.0)
    top_k = int(kwargs.pop("top_k", None) or 0)
    top_p = kwargs.pop("top_p", None)
    top_p = 1.0 if top_p is None else float(top_p)
    if kwargs.get("num_beams", 1) == 1:
        kwargs.pop("num_beams", None)   # a beam of one is greedy or sampling already
    if kwargs:
        raise ValueError(f"generation settings {sorted(kwargs)} are not supported; "
                         "FlaxpapersLM takes do_sample, temperature, top_k and top_p")
    if not do_sample:
        return {"temperature": 0.0, "top_k": 0, "top_p": 1.0}
    return {"temperature": temperature, "top_k": top_k, "top_p": top_p}


def register() -> None:
    """Makes lm_eval resolve model="flaxpapers" to FlaxpapersLM (lazily, by module path, so
    running this file as a script and importing it do not collide)."""
    import lm_eval.models  # noqa: F401  (fills the registry with lm_eval's own models first)
    from lm_eval.api.registry import model_registry
    if REGISTRY_NAME not in model_registry:
        model_registry.register(REGISTRY_NAME, target="experiments.evaluate_lm:FlaxpapersLM")


register()


# ----------------------------------------------------------------------------- command line


def evaluate(pretrained: str, tasks: list[str], out, *, num_fewshot: int | None = None,
             include_path: str | None = None, include_defaults: bool = True,
             batch_size: int = 8, limit: float | None = None, log_samples: bool = False) -> dict:
    """lm_eval.simple_evaluate on our model; writes out/results.json and results.md."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable, make_table
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Indexing lm_eval's own few thousand task files takes a while; local tasks alone do not.
    manager = TaskManager(include_path=include_path, include_defaults=include_defaults)
    results = lm_eval.simple_evaluate(
        model=FlaxpapersLM(pretrained=pretrained, batch_size=batch_size), tasks=tasks,
        num_fewshot=num_fewshot, limit=limit, task_manager=manager, log_samples=log_samples)
    samples = results.pop("samples", None)
    (out / "results.json").write_text(
        json.dumps(results, indent=2, default=handle_non_serializable) + "\n")
    table = make_table(results)
    if results.get("groups"):
        table += "\n" + make_table(results, "groups")
    (out / "results.md").write_text(table)
    if samples is not None:
        results["samples"] = samples
    return results


USAGE = ("usage: python -m experiments.evaluate_lm --workdir=PATH --tasks=T1,T2 [--out=DIR] "
         "[--num_fewshot=K] [--include_path=DIR] [--batch_size=N] [--limit=N]")


def parse_flags(argv: list[str]):
    """The command line, parsed into its own FlagValues (no global flags are defined, so this
    module imports alongside the other experiments, whose --workdir is a global flag)."""
    from absl import flags
    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "The model: a pretrain_lm workdir or a Hugging Face "
                        "GPT-2 directory.", flag_values=fv)
    flags.DEFINE_list("tasks", None, "Comma-separated lm_eval task names.", flag_values=fv)
    flags.DEFINE_string("out", None, "Where results.json and results.md are written (default: "
                        "WORKDIR/lm_eval for a pretrain_lm workdir).", flag_values=fv)
    flags.DEFINE_integer("num_fewshot", None, "Examples in each prompt (default: the task's).",
                         flag_values=fv)
    flags.DEFINE_string("include_path", None, "Directory of extra task YAMLs.", flag_values=fv)
    flags.DEFINE_bool("include_defaults", True, "Also index lm_eval's own tasks.",
                      flag_values=fv)
    flags.DEFINE_integer("batch_size", 8, "Sequences per forward pass.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_float("limit", None, "Documents per task (a fraction when below 1).",
                       flag_values=fv)
    flags.DEFINE_string("pretrained", None, "Deprecated name of --workdir.", flag_values=fv)
    flags.DEFINE_bool("help", False, "Show this help.", short_name="h", flag_values=fv)
    rest = fv(argv)
    if fv.help:
        print(f"{USAGE}\n\n{fv.get_help()}")
        raise SystemExit(0)
    if len(rest) > 1:
        raise flags.Error(f"unexpected arguments: {rest[1:]}")
    if not fv.tasks:
        raise flags.Error("--tasks is required: the lm_eval tasks to run")
    return fv


def model_and_out(f) -> tuple[pathlib.Path, pathlib.Path]:
    """(the model to load, the results directory) named by the parsed flags."""
    from absl import flags
    model, out = f.workdir, f.out
    if f.pretrained is not None:   # the former spelling: --pretrained=MODEL [--workdir=OUT]
        if model is not None and out is not None:
            raise flags.Error("--pretrained is --workdir's former name: give one of them")
        tool_flags.deprecated("pretrained", "workdir" if model is None else
                              "workdir=MODEL --out=RESULTS")
        model, out = f.pretrained, out or model
    if model is None:
        raise flags.Error("--workdir is required: the pretrain_lm workdir or Hugging Face "
                          "directory to evaluate")
    model = pathlib.Path(model).expanduser()
    if not model.is_dir():
        raise flags.Error(f"--workdir {model}: no such directory")
    if out is None:
        if not (model / "checkpoints").is_dir():
            raise flags.Error(f"--workdir {model} is not a pretrain_lm workdir (no checkpoints/): "
                              "give --out=DIR for the results")
        out = model / "lm_eval"
    return model, pathlib.Path(out).expanduser()


def main(argv: list[str]) -> dict:
    f = parse_flags(argv)
    model, out = model_and_out(f)
    limit = None if f.limit is None else int(f.limit) if f.limit >= 1 else f.limit
    results = evaluate(str(model), f.tasks, out, num_fewshot=f.num_fewshot,
                       include_path=f.include_path, include_defaults=f.include_defaults,
                       batch_size=f.batch_size, limit=limit)
    print((out / "results.md").read_text())
    return results


if __name__ == "__main__":
    import sys
    from absl import flags
    try:
        main(sys.argv)
    except flags.Error as e:
        sys.exit(f"error: {e} (--help lists the flags)")
