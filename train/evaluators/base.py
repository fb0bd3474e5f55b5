"""The evaluator base class, its registry and the suite of a run's evaluators (the package
docstring, train/evaluators/__init__.py, says how they are configured). Evaluator modules
import this module, never the package or the trainer."""

import abc
import dataclasses
import sys
from typing import Any, Callable

import jax
import ml_collections

REGISTRY: dict[str, type] = {}


def register(name: str):
    def wrap(cls):
        REGISTRY[name] = cls
        cls.type_name = name
        return cls
    return wrap


@dataclasses.dataclass
class Context:
    program: Any                                  # trainer.Program: mesh, shardings, eval step
    data: dict[str, Callable]                     # name -> factory of one pass of local batches
    predict_fn: Callable | None = None            # (params, model_state, batch) -> logits
    fns: dict[str, Any] = dataclasses.field(default_factory=dict)   # experiment-specific


FIELDS = dict(type="loss", split="val", every=-1, data="", steps=-1)


def spec(**fields) -> ml_collections.ConfigDict:
    """One evaluator's config, with every common field present (so it can be overridden from
    the command line) and the type's own fields."""
    unknown = set(fields) - set(FIELDS)
    kind = fields.get("type", FIELDS["type"])
    extra = dict(getattr(REGISTRY.get(kind), "defaults", {}))
    if unknown - set(extra):
        raise ValueError(f"unknown fields {sorted(unknown - set(extra))} for evaluator {kind!r}")
    return ml_collections.ConfigDict({**FIELDS, **extra, **fields})


# The metrics.jsonl splits evaluators log under: "trainset" holds evaluations of training
# examples (training-error curves), apart from the trainer's own "train" rows.
SPLITS = ("val", "test", "trainset")


def validate(config) -> None:
    for name, cfg in (config.get("evals") or {}).items():
        if cfg.type not in REGISTRY:
            raise ValueError(f"config.evals.{name}.type {cfg.type!r} is not an evaluator; "
                             f"choose from {sorted(REGISTRY)}")
        if cfg.split not in SPLITS:
            raise ValueError(f"config.evals.{name}.split must be one of {SPLITS}, got "
                             f"{cfg.split!r}")


class Evaluator(abc.ABC):
    defaults: dict = {}

    def __init__(self, name: str, cfg, train_cfg, ctx: Context):
        self.name, self.cfg, self.ctx = name, cfg, ctx
        self.split = cfg.split
        self.every = train_cfg.eval_every if cfg.every < 0 else cfg.every
        self.steps = train_cfg.eval_steps if cfg.steps < 0 else cfg.steps
        self.source = cfg.data or cfg.split

    def batches(self):
        if self.source not in self.ctx.data:
            # e.g. CLIP trained on hub pairs has no held-out caption batches: say so once.
            if not getattr(self, "_warned", False) and jax.process_index() == 0:
                print(f"evaluator {self.name!r} skipped: this run has no data {self.source!r} "
                      f"(it has {sorted(self.ctx.data)})", file=sys.stderr)
            self._warned = True
            return
        for i, batch in enumerate(self.ctx.data[self.source]()):
            if self.steps and i >= self.steps:
                return
            yield batch

    @abc.abstractmethod
    def run(self, state) -> dict[str, float]:
        """The evaluator's metrics for the train state `state`."""


class Suite:
    """The evaluators of a run, and which are due at a step."""

    def __init__(self, evaluators: list[Evaluator]):
        self.evaluators = evaluators

    def due(self, step: int) -> bool:
        return any(e.every and step % e.every == 0 for e in self.evaluators)

    def run(self, state, step: int, final: bool = False) -> dict[str, dict]:
        """{split: metrics} of the evaluators due at `step` (at step 0 and periodically those
        with a cadence; at the end of training every one)."""
        rows: dict[str, dict] = {}
        for e in self.evaluators:
            if final or (e.every and step % e.every == 0):
                rows.setdefault(e.split, {}).update(e.run(state))
        return rows


def build(config, ctx: Context) -> Suite:
    evals = config.get("evals") or {}
    return Suite([REGISTRY[cfg.type](name, cfg, config.train, ctx)
                  for name, cfg in evals.items()])
