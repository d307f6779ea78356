from __future__ import annotations

from torch import nn

from loralab.adapters import Factor, find_targets
from loralab.adapters.layer import base_dims
from loralab.methods.base import Method, register
from loralab.methods.vera.config import VeraConfig


@register("vera", VeraConfig)
class Vera(Method):
    cfg: VeraConfig

    def attach(self, model: nn.Module, targets: list[str], head: list[str]) -> list[str]:
        if self.cfg.r < 1:
            raise ValueError(f"vera: rank r must be >= 1, got {self.cfg.r}")
        dims = [base_dims(model.get_submodule(n)) for n in find_targets(model, targets)] if targets else []
        self.max_in, self.max_out = max(d for d, _ in dims or [(1, 1)]), max(k for _, k in dims or [(1, 1)])
        return super().attach(model, targets, head)

    def factors(self, module_name: str, in_features: int, out_features: int) -> list[Factor]:
        r, seed, init = self.cfg.r, self.cfg.seed * 1000, self.cfg.projection_init
        return [
            Factor("A", "matrix", self.max_in, r, init, False, "vera_A", cols=(0, in_features), seed=seed),
            Factor("d", "diag", r, r, init=f"const:{self.cfg.d_init}"),
            Factor("B", "matrix", r, self.max_out, init, False, "vera_B", rows=(0, out_features), seed=seed + 1),
            Factor("b", "diag", out_features, out_features, init="zeros"),
        ]
