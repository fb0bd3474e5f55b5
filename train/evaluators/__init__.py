"""Evaluators: what a run measures besides its training loss, configured as

    config.evals.NAME = ConfigDict(type=TYPE, split="val" | "test" | "trainset", every=N, ...)

`type` names a registered evaluator (loss, accuracy, zeroshot, linear_probe, ...); `split` is the
metrics.jsonl split its numbers are logged under; `every` is the cadence in steps (-1:
train.eval_every; 0: only at the end of training); `data` names the data source the experiment
gives fit() (default: the split); `steps` caps the batches of one evaluation (-1:
train.eval_steps; 0: the whole source). Each evaluator computes on device with the program's
shardings, over global batches that every process feeds its own rows of, so its numbers do not
depend on the mesh or the number of processes.
"""

from train.evaluators.base import (FIELDS, REGISTRY, Context, Evaluator, Suite,  # noqa: F401
                                   build, register, spec, validate)
from train.evaluators import (classification, clip_evals, fewshot,  # noqa: E402,F401
                              translation)  # (registers their types)
