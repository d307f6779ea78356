from __future__ import annotations

import torch
from torch import nn

from loralab.adapters import Factor, adapter_layers
from loralab.methods.base import Method, register
from loralab.methods.sora.config import SoraConfig


def soft_threshold_(t: torch.Tensor, threshold: float) -> None:
    """In place: ``sign(t) * max(|t| - threshold, 0)``."""
    t.copy_(t.sign() * (t.abs() - threshold).clamp_min(0.0))


@register("sora", SoraConfig)
class Sora(Method):
    cfg: SoraConfig

    def __init__(self, cfg: SoraConfig) -> None:
        super().__init__(cfg)
        if cfg.r < 1 or cfg.xi < 0:
            raise ValueError(f"sora: need r >= 1 and xi >= 0, got r={cfg.r} xi={cfg.xi}")
        self.optimizer: torch.optim.Optimizer | None = None

    @property
    def scaling(self) -> float:
        return self.cfg.alpha / self.cfg.r

    def factors(self, module_name: str, in_features: int, out_features: int) -> list[Factor]:
        r = self.cfg.r
        return [
            Factor("A", "matrix", in_features, r),
            Factor("gate", "diag", r, r, init="normal"),
            Factor("B", "matrix", r, out_features, init="zeros"),
        ]

    def gates(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return {name: layer.factors["gate"] for name, layer in adapter_layers(model).items()}

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int) -> None:
        self.optimizer = optimizer

    def extra_loss(self, model: nn.Module, step: int) -> torch.Tensor | None:
        if self.cfg.l1_weight == 0:
            return None
        return self.cfg.l1_weight * sum(g.abs().sum() for g in self.gates(model).values())

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """The proximal step on every gate."""
        threshold = self.cfg.xi
        if self.cfg.multiply_lr:
            if self.optimizer is None:
                raise RuntimeError("sora: multiply_lr needs the optimizer (on_train_start was not called)")
            threshold *= self.optimizer.param_groups[0]["lr"]
        for g in self.gates(model).values():
            soft_threshold_(g, threshold)

    @torch.no_grad()
    def final_metrics(self, model: nn.Module) -> dict:
        ranks = {name: int((g != 0).sum()) for name, g in self.gates(model).items()}
        return {"gate_rank": ranks, "mean_gate_rank": sum(ranks.values()) / max(len(ranks), 1)}
