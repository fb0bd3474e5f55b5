"""The config fields every experiment shares: run identity, init_from, mesh, training, evals.

    seed              the model's initialisation, dropout and data order
    init_from         "" | a workdir of ours | a directory the experiment's importer reads
    init_from_regex   which parameters init_from loads (full match on '/'-joined paths)
    mesh              data / fsdp / tensor sizes; -1 takes the rest of the devices
    train             optimiser, schedule, freezing, cadences (train/optim.py, train/trainer.py)
    evals             NAME -> evaluator (train/evaluators/), built by eval_spec

Lengths that should follow the run are fractions of train.steps, resolved when the schedule is
built: train.warmup_fraction (instead of warmup_steps, which must then be 0) and
train.step_fractions (the step schedule's boundaries, instead of step_boundaries, which must
then be empty). So `--config.train.steps=2000` on a ConvNet preset still divides the lr by 10
at 50% and 75% of the 2000 steps. Values derived from the model (data.seq_len and
data.vocab_size, train.noam_width) follow a --config.model.* override the same way, through
ml_collections references, unless set themselves (not in gpt1.py, whose model is replaced by
init_from's at run time).

Loading a config imports nothing heavy (no jax, train, data or models): the evaluators' fields
are the plain table below, the model presets and data defaults experiments/configs/defaults.py.
`describe(config)` is --help's list of every key with its default and description.
"""

import pathlib
import re

import ml_collections


def check_preset(preset: str, presets) -> None:
    """Each config file names its presets in PRESETS; any other name is an error that lists
    them."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(presets)}")


def train_config(**overrides) -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict(dict(
        steps=1000, batch_size=32, grad_accum=1,
        optimizer="adamw",           # adamw | adam | sgd
        lr=6e-4,
        schedule="cosine",           # constant | cosine | linear | step | rsqrt | noam
        warmup_steps=100,            # linear warmup from 0 to lr, in steps
        warmup_fraction=0.0,         # > 0: the warmup as this fraction of steps (then
                                     # warmup_steps must be 0); follows a train.steps override
        min_lr_ratio=0.1,            # cosine / linear: final lr = lr * min_lr_ratio
        step_boundaries=(),          # step: steps at which lr is multiplied by step_factor
        step_fractions=(),           # step: the same as fractions of steps (0.5, 0.75): they
                                     # follow a train.steps override; one of the two is empty
        step_factor=0.1,
        noam_width=0,                # noam: d_model of Vaswani et al. eq. (3)
        b1=0.9, b2=0.95, eps=1e-8,   # adam / adamw
        momentum=0.9, nesterov=False,  # sgd
        weight_decay=0.1,
        wd_mults=(),                 # ((regex, multiplier), ...); default: ndim >= 2 decayed
        lr_mults=(),                 # ((regex, multiplier), ...); default 1
        grad_clip=1.0,
        freeze="",                   # regex over parameter paths; "" = nothing frozen
        log_every=10, eval_every=100, eval_steps=20, ckpt_every=500, keep_ckpts=2,
        max_nonfinite=10))
    unknown = set(overrides) - set(t)
    if unknown:
        raise ValueError(f"unknown train fields {sorted(unknown)}")
    t.update(overrides)
    return t


def mesh_config(data=-1, fsdp=1, tensor=1) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def base_config(seed: int = 0) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = seed
    config.init_from = ""
    config.init_from_regex = ""
    config.mesh = mesh_config()
    config.evals = ml_collections.ConfigDict()
    return config


# Every evaluator's fields (train/evaluators/__init__.py), then each type's own, with their
# defaults: a plain table, so that loading a config imports no train/ (tests/test_cli.py checks
# it against the evaluators' `defaults`).
EVAL_FIELDS = dict(type="loss", split="val", every=-1, data="", steps=-1)
EVAL_TYPE_FIELDS = {
    "loss": {},
    "perplexity": {},
    "accuracy": dict(topk=(1,), crops=1, crop_size=0, pp=""),
    "zeroshot": dict(images=500, batch_size=512, seed=1234),
    "linear_probe": dict(images=1000, batch_size=512, seed=1234, train_images=3000,
                         val_images=500, Cs=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
                         iters=100),
    "fewshot": dict(shots=(0, 1, 2, 4, 8, 16), queries=16, per_task=True,
                    families=("scramble", "arithmetic"), orders=0, layouts=(), variant_k=8,
                    seen_k=-1, score_positions=(50, 500)),
    "bleu": dict(beam_size=4, alpha=0.6, extra_len=50, show=3, key="bleu"),
}


def eval_spec(**fields) -> ml_collections.ConfigDict:
    """One evaluator's config with every common field and the type's own fields present, so
    that each can be overridden from the command line (--config.evals.NAME.FIELD=v)."""
    kind = fields.get("type", EVAL_FIELDS["type"])
    if kind not in EVAL_TYPE_FIELDS:
        raise ValueError(f"unknown evaluator type {kind!r}; choose from {sorted(EVAL_TYPE_FIELDS)}")
    extra = EVAL_TYPE_FIELDS[kind]
    unknown = set(fields) - set(EVAL_FIELDS) - set(extra)
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)} for evaluator {kind!r}")
    return ml_collections.ConfigDict({**EVAL_FIELDS, **extra, **fields})


# ----------------------------------------------------------------------------- --help

# Keys whose meaning no comment in the config files gives; "*" stands for any evaluator's name.
DESCRIPTIONS = {
    "seed": "the model's initialisation, dropout and data order",
    "init_from": "start from these weights: \"\" | a workdir of ours | an imported directory",
    "init_from_regex": "which parameters init_from loads (full match on '/'-joined paths)",
    "mesh.data": "devices along the data axis (-1: the rest)",
    "mesh.fsdp": "devices the parameters are sharded over (-1: the rest)",
    "mesh.tensor": "devices each matmul is split over (-1: the rest)",
    "train.steps": "optimiser updates in the run",
    "train.batch_size": "examples per update (all devices together)",
    "train.grad_accum": "micro-batches accumulated into each update",
    "train.lr": "peak learning rate",
    "train.b1": "adam / adamw: first-moment decay",
    "train.b2": "adam / adamw: second-moment decay",
    "train.eps": "adam / adamw: epsilon",
    "train.momentum": "sgd: momentum",
    "train.nesterov": "sgd: Nesterov momentum",
    "train.step_factor": "step: lr multiplier at each boundary",
    "train.weight_decay": "decay coefficient (multiplied by the lr)",
    "train.grad_clip": "clip the global gradient norm at this (0: no clipping)",
    "train.log_every": "steps between train rows in metrics.jsonl",
    "train.eval_every": "steps between evaluations (evaluators with every=-1)",
    "train.eval_steps": "batches per evaluation (evaluators with steps=-1; 0: all)",
    "train.ckpt_every": "steps between checkpoints",
    "train.keep_ckpts": "checkpoints kept",
    "train.max_nonfinite": "non-finite updates in a row that stop the run",
    "evals.*.type": "the evaluator (loss, accuracy, perplexity, bleu, zeroshot, ...)",
    "evals.*.split": "the metrics.jsonl split its numbers are logged under (val | test | trainset)",
    "evals.*.every": "cadence in steps (-1: train.eval_every; 0: only at the end)",
    "evals.*.data": "the data it reads (\"\": its split)",
    "evals.*.steps": "batches per evaluation (-1: train.eval_steps; 0: all)",
    "evals.*.topk": "accuracy: the top-k accuracies logged",
    "evals.*.crops": "accuracy: crops per image (10: AlexNet's ten patches)",
    "evals.*.crop_size": "accuracy: side of each crop",
    "evals.*.pp": "accuracy: evaluation views, e.g. ten_crop(32) (data/augment.py)",
    "evals.*.images": "zeroshot / linear_probe: images scored",
    "evals.*.shots": "fewshot: the numbers of examples K in the prompt",
    "evals.*.queries": "fewshot: episodes per task",
    "evals.*.per_task": "fewshot: metrics of every task too",
    "evals.*.families": "fewshot: the task families of the headline exact_match_k{K}",
    "evals.*.orders": "fewshot: orders of the same variant_k examples scored (0: none)",
    "evals.*.layouts": "fewshot: line layouts scored at variant_k (data/prompts.py: LAYOUTS)",
    "evals.*.variant_k": "fewshot: examples in the prompt variants",
    "evals.*.seen_k": "fewshot: K of the headline on pretraining items too (-1: not scored)",
    "evals.*.score_positions": "fewshot: early and late position of the in-context score "
                               "(each +- 10, from a document's start)",
    "evals.*.beam_size": "bleu: beam width (1: greedy)",
    "evals.*.alpha": "bleu: length penalty of the beam search",
    "evals.*.show": "bleu: translations printed",
    "data.seq_len": "tokens per training sequence (at most model.n_ctx)",
    "sample.prompt": "the text sampled from after training",
    "sample.num_tokens": "tokens sampled after training (0: no sample)",
    "sample.temperature": "sampling temperature",
    "sample.top_k": "sample from the k most likely tokens",
}

HERE = pathlib.Path(__file__).resolve().parent
FIELD = re.compile(r"""(?:^|[(,\s])(?:(\w+)=(?!=)|"(\w+)":)""")


def field_comments(path) -> list[dict[str, str]]:
    """{field: comment} per top-level statement of a config source: the comments written after
    `name=value,` or `"name": value,` (continued on the comment-only lines below)."""
    lines = pathlib.Path(path).read_text().splitlines()
    blocks, block, last, indent = [], {}, None, 0
    for line in lines:
        code, _, comment = line.partition("  #")
        depth = len(line) - len(line.lstrip())
        if line and not depth and not line.startswith((")", "}", "]")):
            blocks.append(block := {})
            last = None
        names = [a or b for a, b in FIELD.findall(code.split("#")[0])]
        if names and comment:
            for name in names:
                block[name] = comment.strip()
            last, indent = names, depth
        elif not code.strip() and comment and last and depth > indent + 4:
            for name in last:   # a comment continued under the one above
                block[name] += " " + comment.strip()
        else:
            last = None
            for name in names:
                block.setdefault(name, "")
    return blocks


def _section_comments(keys, blocks) -> dict[str, str]:
    """The comments of the source block whose fields best match a section's keys."""
    best = max(blocks, key=lambda b: len(set(keys) & set(b)), default={})
    return best if set(keys) & set(best) else {}


def describe(config, sources=()) -> str:
    """Every key of `config` with its value and a short description, grouped by section:
    --help's list. Descriptions come from DESCRIPTIONS and the comments of `sources` (the
    config file), common.py and defaults.py."""
    blocks = [b for path in (*sources, HERE / "common.py", HERE / "defaults.py")
              for b in field_comments(path) if b]
    out = []

    def walk(node, prefix, depth):
        leaves = [(k, v) for k, v in node.items() if not hasattr(v, "items")]
        comments = _section_comments([k for k, _ in leaves], blocks)
        for key, value in leaves:
            path = prefix + key
            generic = re.sub(r"^evals\.\w+\.", "evals.*.", path)
            text = (DESCRIPTIONS.get(path) or DESCRIPTIONS.get(generic) or comments.get(key)
                    or "")
            out.append(f"{'  ' * depth}{path} = {value!r}" + (f"    # {text}" if text else ""))
        for key, value in node.items():
            if hasattr(value, "items"):
                out.append(f"{'  ' * depth}{prefix}{key}:")
                walk(value, f"{prefix}{key}.", depth + 1)

    walk(config, "", 0)
    return "\n".join(out)
