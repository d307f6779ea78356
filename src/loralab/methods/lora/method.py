from __future__ import annotations

from torch import nn

from loralab.adapters import Factor
from loralab.adapters.peft_io import load_peft_lora
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

    def attach(self, model: nn.Module, targets: list[str], head: list[str]) -> list[str]:
        names = super().attach(model, targets, head)
        on_meta = any(p.is_meta for p in model.parameters())  # planning and dry runs: no values to load
        if self.cfg.init_from and not on_meta:
            load_peft_lora(model, self.cfg.init_from)
        return names
