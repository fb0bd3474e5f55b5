"""What an experiment's data-free build(config) returns: its model and the functions that
fit(), experiments.benchmark and experiments.evaluate share, with what a unit of work costs."""

import dataclasses
from typing import Any, Callable

from train.trainer import Throughput


@dataclasses.dataclass(frozen=True)
class Built:
    cfg: Any                      # the model's config (GPTConfig, TransformerConfig, ...) or name
    model: Any                    # the Flax module
    init_fn: Callable             # rng -> variables
    loss_fn: Callable             # (params, model_state, batch, rng) -> (loss, (metrics, state))
    predict_fn: Callable | None   # (params, model_state, batch) -> logits; None: not a classifier
    unit: str                     # what flops counts: "token", "image", "pair", "example"
    flops: float                  # training FLOPs (forward + backward) per unit
    units_per_example: float = 1  # tokens per example for "token", else 1
    infer_flops: float = 0.0      # forward FLOPs per unit, where measured (0: not)

    @property
    def throughput(self) -> Throughput:
        """What one example is worth to fit()'s tokens/s and MFU."""
        tokens = round(self.units_per_example) if self.unit == "token" else 0
        return Throughput(tokens, self.flops * self.units_per_example)

    def fit_args(self) -> dict:
        """fit()'s model arguments."""
        return dict(init_fn=self.init_fn, loss_fn=self.loss_fn, predict_fn=self.predict_fn,
                    throughput=self.throughput)
