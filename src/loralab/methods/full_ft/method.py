from __future__ import annotations

from torch import nn

from loralab.methods.base import Method, register
from loralab.methods.full_ft.config import FullFTConfig


@register("full_ft", FullFTConfig)
class FullFT(Method):
    cfg: FullFTConfig
    saves_adapter = False

    def attach(self, model: nn.Module, targets: list[str], head: list[str]) -> list[str]:
        for p in model.parameters():
            p.requires_grad_(True)
        return []
