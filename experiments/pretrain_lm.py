"""Pretrain a GPT language model with the unsupervised objective L1 (next-token likelihood).

    python -m experiments.pretrain_lm --config=experiments/configs/gpt.py:tiny --workdir=DIR

Default data: the Python standard library's source files, split by file, with a byte-level BPE
trained on the train split; --config.data.source=hf --config.data.hf_dataset=NAME reads a
dataset through Hugging Face `datasets` instead. The tokenizer is kept in DIR/tokenizer.json,
so the checkpoints can be used anywhere. --config.init_from=DIR2 starts from another run's
weights, or from a transformers GPT-2 / GPT-1 directory. A run ends with a sample (config.sample)
and its last validation and test loss and perplexity, a line each.
"""

import dataclasses
import itertools
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from data import icl_tasks, prompts, text
from experiments import launch
from experiments.built import Built
from models import gpt, hf
from train import checkpoint, objectives
from train.logging import read_metrics
from train.trainer import fit, preflight


def model_config(config) -> gpt.GPTConfig:
    try:
        return gpt.GPTConfig(**config.model.to_dict())
    except TypeError as e:
        raise ValueError(f"config.model: {e}") from e


def lm_loss_fn(model: gpt.GPT):
    """L1 for the trainer: loss_fn(params, state, batch, rng) on {"inputs", "targets"[, "weights"]}."""
    def loss_fn(params, state, batch, rng):
        train = rng is not None
        logits = model.apply({"params": params}, batch["inputs"], deterministic=not train,
                             rngs={"dropout": rng} if train else {})
        loss = objectives.lm_loss(logits, batch["targets"], batch.get("weights"))
        return loss, ({"perplexity": jnp.exp(loss)}, state)
    return loss_fn


def lm_data(config, tokenizer):
    """Train iterator (this process's shard) and factories of one pass over val and test."""
    seq_len, batch = config.data.seq_len, config.train.batch_size
    kw = dict(process_index=jax.process_index(), process_count=jax.process_count())
    train_data = text.PackedWindows(text.token_stream(config.data, "train", tokenizer), seq_len,
                                    batch, seed=config.seed, **kw)

    def one_pass(split):
        tokens = text.token_stream(config.data, split, tokenizer)
        return lambda: text.PackedWindows(tokens, seq_len, batch, seed=0, shuffle=False, **kw)
    splits = {e.data or e.split for e in config.evals.values()}
    return train_data, {split: one_pass(split) for split in splits}


def check_fit(cfg: gpt.GPTConfig, config, tokenizer=None) -> None:
    if config.data.seq_len < 1:
        raise ValueError(f"data.seq_len is {config.data.seq_len}; a window needs at least one "
                         "token")
    if config.data.seq_len > cfg.n_ctx:
        raise ValueError(f"data.seq_len {config.data.seq_len} is longer than the model's "
                         f"context model.n_ctx {cfg.n_ctx}")
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size "
                         f"is {cfg.vocab_size}")


def check_sampling(temperature: float, top_k: int, top_p: float = 1.0,
                   prefix: str = "sample.") -> None:
    """Settings gpt.generate takes (else an error deep inside the compiled decoding)."""
    if temperature < 0:
        raise ValueError(f"{prefix}temperature must be >= 0 (0: greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"{prefix}top_k must be >= 0 (0: every token), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"{prefix}top_p must lie in (0, 1], got {top_p}")


def check_sample(config) -> None:
    """The sample drawn after training, checked before it."""
    s = config.sample
    if s.num_tokens > 0:
        if not s.prompt:
            raise ValueError("sample.prompt is empty: the sample continues a prompt of at least "
                             "one token (sample.num_tokens=0 draws none)")
        check_sampling(s.temperature, s.top_k)


HF_IMPORTERS = {"gpt2": hf.gpt2_from_pretrained, "openai-gpt": hf.gpt1_from_pretrained}


def hf_gpt(path) -> tuple[gpt.GPTConfig, dict]:
    """(config, params) of a transformers GPT-2 or GPT-1 directory."""
    kind = hf.read_config(path).get("model_type")
    if kind not in HF_IMPORTERS:
        raise ValueError(f"{path} holds a {kind!r} model, not one of {sorted(HF_IMPORTERS)}")
    return HF_IMPORTERS[kind](path)


def import_gpt(path) -> dict:
    """A transformers GPT-2 or GPT-1 directory, as variables for init_from."""
    return {"params": hf_gpt(path)[1]}


def load_lm(path) -> tuple[gpt.GPTConfig, dict, object]:
    """(config, params, tokenizer) of a trained language model: a pretrain_lm workdir (its
    newest intact checkpoint and its tokenizer.json) or a transformers GPT-2 / GPT-1 directory
    (its vocab.json + merges.txt or tokenizer.json)."""
    path = pathlib.Path(path).expanduser()
    if (path / "checkpoints").is_dir():
        check_lm_workdir(path)
        saved, params = checkpoint.load_params(path)
        saved = ml_collections.ConfigDict(saved)
        return (gpt.GPTConfig(**saved.model.to_dict()), params,
                text.load_tokenizer(path))
    cfg, params = hf_gpt(path)
    return cfg, params, text.load_tokenizer(path)


def check_lm_workdir(path: pathlib.Path) -> None:
    """A workdir of another family (a ConvNet, CLIP, a translation model) is named by the
    experiment its config.json's provenance records, before any checkpoint is read."""
    saved = json.loads((path / "config.json").read_text())
    model = saved.get("model") or {}
    fields = {f.name for f in dataclasses.fields(gpt.GPTConfig)}
    if model and set(model) <= fields:
        return
    experiment = (saved.get("provenance") or {}).get("experiment") or "another experiment"
    name = f" (model {model['name']!r})" if isinstance(model.get("name"), str) else ""
    raise ValueError(f"{path} is a workdir of {experiment}{name}, not a GPT language model "
                     f"(model settings {sorted(set(model) - fields)[:4]} are not GPT's)")


def _batches(lengths: list[int], batch: int, quantum: int, limit: int):
    """Row indices in batches of `batch` of similar length (sorted by length), each with its
    width: the longest length rounded up to a multiple of `quantum`, at most `limit`. Few
    shapes to compile, little padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        longest = max(lengths[i] for i in rows)
        yield rows, max(longest, min(-(-longest // quantum) * quantum, limit))


def completer(cfg: gpt.GPTConfig, tokenizer, max_new_tokens: int, batch: int = 64,
              quantum: int = 128):
    """complete(params, prompts) -> the line each prompt's continuation writes: greedy cached
    generation (gpt.generate_batch) to the end of the line, `batch` prompts of similar length
    at a time, left padded to a multiple of `quantum` tokens."""
    cfg = dataclasses.replace(cfg, dtype="float32", dropout=0.0, attn_dropout=0.0)
    stop = [i for i in range(tokenizer.vocab_size) if "\n" in tokenizer.decode([i])]
    stop.append(tokenizer.eot_id)

    def complete(params, prompts: list[str]) -> list[str]:
        encoded = tokenizer.encode_batch(prompts)
        gpt.check_context(cfg, max(len(e) for e in encoded), max_new_tokens)
        answers = [None] * len(prompts)
        for rows, width in _batches([len(e) for e in encoded], batch, quantum,
                                    cfg.n_ctx - max_new_tokens):
            padded = [encoded[i] for i in rows]
            padded += [padded[-1]] * (batch - len(rows))   # one shape for every batch
            out = gpt.generate_batch(cfg, params, padded, max_new_tokens, jax.random.key(0),
                                     temperature=0.0, stop_tokens=stop, width=width)
            for i, o in zip(rows, out):
                answers[i] = icl_tasks.answer_of(tokenizer.decode(o))
        return answers
    return complete


def answer_scorer(cfg: gpt.GPTConfig, tokenizer, batch: int = 64, quantum: int = 128):
    """answer_logp(params, prompts, answers) -> the mean log-likelihood per token of each
    " answer\n" after its prompt (gpt.token_scores, right padded, batched by length)."""
    cfg = dataclasses.replace(cfg, dtype="float32", dropout=0.0, attn_dropout=0.0)

    def answer_logp(params, prompts: list[str], answers: list[str]) -> list[float]:
        heads = tokenizer.encode_batch(prompts)
        tails = tokenizer.encode_batch([f"{icl_tasks.TARGET_DELIMITER}{a}"
                                        f"{icl_tasks.FEWSHOT_DELIMITER}" for a in answers])
        lengths = [len(h) + len(t) - 1 for h, t in zip(heads, tails)]
        gpt.check_context(cfg, max(lengths), 0)
        out = [None] * len(prompts)
        for rows, width in _batches(lengths, batch, quantum, cfg.n_ctx):
            ids = np.zeros((batch, width + 1), np.int32)
            for r, i in enumerate(rows):
                ids[r, :lengths[i] + 1] = heads[i] + tails[i]
            logp = np.asarray(gpt.token_scores(cfg, params, ids[:, :-1], ids[:, 1:])[0])
            for r, i in enumerate(rows):
                out[i] = float(logp[r, len(heads[i]) - 1:lengths[i]].mean())
        return out
    return answer_logp


def position_losses(cfg: gpt.GPTConfig, tokenizer, texts: list[str], windows: int = 128,
                    batch: int = 8):
    """losses(params) -> the mean loss of the prediction at each context position 0 ..
    n_ctx - 1 over the first n_ctx + 1 tokens of the first `windows` texts that hold that
    many: each window starts at its document's start, so position p has p tokens of the same
    document before it (Olsson et al. 2022), never the tail of another."""
    cfg = dataclasses.replace(cfg, dtype="float32", dropout=0.0, attn_dropout=0.0)
    width, rows = cfg.n_ctx + 1, []
    for ids in tokenizer.encode_batch(texts):
        if len(ids) >= width:
            rows.append(ids[:width])
        if len(rows) == windows:
            break
    if not rows:
        raise ValueError(f"none of the {len(texts)} natural texts holds a window of "
                         f"{width} tokens")
    rows = np.asarray(rows, np.int32)

    def losses(params) -> np.ndarray:
        logp = [np.asarray(gpt.token_scores(cfg, params, rows[s:s + batch, :-1],
                                            rows[s:s + batch, 1:])[0])
                for s in range(0, len(rows), batch)]
        return -np.concatenate(logp).mean(0)
    return losses


def icl_eval_fns(cfg: gpt.GPTConfig, config, tokenizer, must_fit: int = 16) -> dict:
    """What the fewshot evaluator needs: the task family's episodes, greedy completion with
    room for the longest answer in any layout and its newline, the answers' log-likelihood
    and the losses per position on natural text (the test split's).

    Episodes whose prompts the context cannot hold are left out, a task at a time: at K up
    to `must_fit` that is an error, said now."""
    icl = config.data.get("icl")
    specs = {name: e for name, e in config.evals.items() if e.type == "fewshot"}
    layouts = {None, *(layout for e in specs.values() for layout in e.layouts)}
    answers = {f"{icl_tasks.TARGET_DELIMITER}{prompts.layout_answer(x.answer, x.layout, x.kind)}"
               for e in specs.values() for layout in layouts
               for x in icl_tasks.episodes(icl, 0, True, e.queries, layout)}
    new_tokens = max([len(ids) for ids in tokenizer.encode_batch(sorted(answers))] or [0]) + 1

    def fitting(eps: list) -> list:
        widths = tokenizer.encode_batch([x.prompt for x in eps])
        too_long = {x.task for x, ids in zip(eps, widths) if len(ids) + new_tokens > cfg.n_ctx}
        return [x for x in eps if x.task not in too_long]

    def make(k, described, queries, layout=None, order=0, seen=False):
        return fitting(icl_tasks.episodes(icl, k, described, queries, layout, order, seen))

    for name, e in specs.items():   # the prompts that must fit: say so now
        settings = [(k, True, None) for k in e.shots if k <= must_fit]
        settings += [(e.variant_k, False, layout) for layout in e.layouts]
        for k, described, layout in settings:
            eps = icl_tasks.episodes(icl, k, described, e.queries, layout)
            left = {x.task for x in fitting(eps)}
            if dropped := sorted({x.task for x in eps} - left):
                raise ValueError(f"config.evals.{name}: {k}-shot prompts of {dropped} and "
                                 f"their answers ({new_tokens} tokens) exceed the context "
                                 f"model.n_ctx {cfg.n_ctx}")
    texts = [d["text"] for d in itertools.islice(icl_tasks.text_documents(icl, "test"), 1000)]
    return {"fewshot_episodes": make,
            "complete": completer(cfg, tokenizer, new_tokens),
            "answer_logp": answer_scorer(cfg, tokenizer),
            "position_losses": position_losses(cfg, tokenizer, texts)}


def build(config) -> Built:
    """The GPT of config.model on windows of data.seq_len tokens, without loading data.
    FLOPs per token: 6 N + 12 L d_attn T (gpt.flops_per_token)."""
    cfg = model_config(config)
    check_fit(cfg, config)
    model = gpt.GPT(cfg)
    seq_len = config.data.seq_len

    def predict_fn(params, model_state, batch):
        return model.apply({"params": params}, batch["inputs"])

    return Built(cfg, model, lambda rng: model.init(rng, jnp.zeros((1, seq_len), jnp.int32)),
                 lm_loss_fn(model), predict_fn, "token", gpt.flops_per_token(cfg, seq_len),
                 units_per_example=seq_len)


def setup(config, workdir) -> dict:
    """What fit() needs for this experiment (also used by experiments.evaluate)."""
    built = build(config)                   # cheap checks before any data work
    cfg = built.cfg
    tokenizer = text.workdir_tokenizer(config.data, workdir, config.get("init_from", ""))
    check_fit(cfg, config, tokenizer)
    train_data, data = lm_data(config, tokenizer)
    return dict(
        **built.fit_args(), train_data=train_data, data=data, import_weights=import_gpt,
        artifacts={"tokenizer.json": lambda path: text.save_tokenizer(tokenizer, path)},
        eval_fns=(icl_eval_fns(cfg, config, tokenizer)
                  if any(e.type == "fewshot" for e in config.evals.values()) else {}))


def main(config, workdir):
    check_sample(config)
    preflight(config, workdir)
    run = setup(config, workdir)
    state = fit(config, workdir=workdir, **run)
    tokenizer = text.workdir_tokenizer(config.data, workdir)
    if config.sample.num_tokens > 0:
        # Every process takes part in gathering parameters that span processes.
        params = multihost_utils.process_allgather(state.params, tiled=True)
    if jax.process_index() == 0 and config.sample.num_tokens > 0:
        cfg = model_config(config)
        prompt = tokenizer.encode(config.sample.prompt)
        out = gpt.generate(dataclasses.replace(cfg, dtype="float32"), params, prompt,
                           config.sample.num_tokens, jax.random.key(config.seed),
                           config.sample.temperature, config.sample.top_k)
        print("\n--- sample ---\n" + config.sample.prompt + tokenizer.decode(out), flush=True)
    if jax.process_index() == 0:
        rows = read_metrics(workdir)
        for split in ("val", "test"):
            found = [r for r in rows if r["split"] == split]
            if found:
                print(final_line(split, found[-1]), file=sys.stderr)


def final_line(split: str, row: dict) -> str:
    shown = ", ".join(f"{k} {row[k]:.4f}" for k in ("loss", "perplexity") if k in row)
    return f"final {split} (step {row['step']}): {shown}"


if __name__ == "__main__":
    launch.run(main, "gpt.py:tiny")
