from __future__ import annotations

import torch
from torch import nn

from loralab.adapters import Factor, adapter_layers
from loralab.methods.base import Method, register
from loralab.methods.pruned import inference_params
from loralab.methods.sora.config import SoraConfig


def soft_threshold_(t: torch.Tensor, threshold: float) -> None:
    """In place: ``sign(t) * max(|t| - threshold, 0)``."""
    t.copy_(t.sign() * (t.abs() - threshold).clamp_min(0.0))


@register("sora", SoraConfig)
class Sora(Method):
    cfg: SoraConfig

    def __init__(self, cfg: SoraConfig) -> None:
        super().__init__(cfg)
        if cfg.r < 1 or cfg.xi < 0 or cfg.sparse_lambda < 0:
            raise ValueError(
                f"sora: need r >= 1, xi >= 0 and sparse_lambda >= 0, got r={cfg.r} xi={cfg.xi} "
                f"sparse_lambda={cfg.sparse_lambda}"
            )
        self.optimizer: torch.optim.Optimizer | None = None
        self.step_lr: float | None = None  # the learning rate of the optimizer step being taken
        self.best_ranks: dict[str, int] | None = None  # non-zero gates of the best epoch's (the output) adapters

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
        """The reference's L1 term: ``sparse_lambda * sum|g| / p_total`` over all gate entries of the model."""
        gates = list(self.gates(model).values())
        if self.cfg.sparse_lambda == 0 or not gates:
            return None
        p_total = sum(g.numel() for g in gates)
        return self.cfg.sparse_lambda * sum(g.abs().sum() for g in gates) / p_total

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Remember the learning rate the coming optimizer step uses (the scheduler moves it right after)."""
        if self.optimizer is None:
            raise RuntimeError("sora: the optimizer is unknown (on_train_start was not called)")
        self.step_lr = float(self.optimizer.param_groups[0]["lr"])

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """The proximal step on every gate: threshold ``xi * lr`` (``multiply_lr``) or ``xi``."""
        threshold = self.cfg.xi
        if self.cfg.multiply_lr:
            if self.step_lr is None:
                raise RuntimeError("sora: multiply_lr needs the step's learning rate (after_backward was not called)")
            threshold *= self.step_lr
        for g in self.gates(model).values():
            soft_threshold_(g, threshold)

    @torch.no_grad()
    def gate_ranks(self, model: nn.Module) -> dict[str, int]:
        return {name: int((g != 0).sum()) for name, g in self.gates(model).items()}

    def on_best_epoch(self, model: nn.Module) -> None:
        self.best_ranks = self.gate_ranks(model)

    def final_metrics(self, model: nn.Module) -> dict:
        final = self.gate_ranks(model)
        ranks = self.best_ranks if self.best_ranks is not None else final
        total = self.cfg.r * max(len(ranks), 1)
        return {
            "gate_rank": ranks,
            "mean_gate_rank": sum(ranks.values()) / max(len(ranks), 1),
            "gate_sparsity": 1 - sum(ranks.values()) / total,
            "ranks_of": "best_epoch" if self.best_ranks is not None else "end_of_training",
            "mean_final_gate_rank": sum(final.values()) / max(len(final), 1),
            "inference_params": inference_params(model, ranks),
        }

    def state_dict(self) -> dict:
        return {"best_ranks": self.best_ranks}

    def load_state_dict(self, state: dict) -> None:
        self.best_ranks = state["best_ranks"]
