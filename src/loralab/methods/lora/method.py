from __future__ import annotations

from loralab.adapters import Factor
from loralab.methods.base import Method, register
from loralab.methods.lora.config import LoraConfig


@register("lora", LoraConfig)
class Lora(Method):
    cfg: LoraConfig

    def factors(self, module_name: str, in_features: int, out_features: int) -> list[Factor]:
        r = self.cfg.r
        if r < 1:
            raise ValueError(f"lora: rank r must be >= 1, got {r}")
        return [
            Factor("A", "matrix", in_features, r, init="kaiming_uniform"),
            Factor("B", "matrix", r, out_features, init="zeros"),
        ]

    @property
    def scaling(self) -> float:
        return self.cfg.alpha / self.cfg.r
