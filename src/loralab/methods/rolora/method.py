from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from loralab.adapters import AdapterLinear, Factor
from loralab.methods.adalora.method import AdaLora
from loralab.methods.base import register
from loralab.methods.rolora.config import RoloraConfig
from loralab.methods.sora import Sora, SoraConfig


def move_ranks(current: list[int], survived: list[int], average: int, gamma: float) -> list[int]:
    """Rescale ``survived`` to the average rank, step ``gamma`` towards it, round within the budget K * average."""
    k, total = len(current), max(sum(survived), 1)
    scaled = [s * average * k / total for s in survived]
    new = [
        max(round((1 - gamma) * r + gamma * s), s_min, 1) for r, s, s_min in zip(current, scaled, survived, strict=True)
    ]
    while sum(new) > average * k:  # rounding overshoot: trim the largest rank that has room above its survivors
        i = max((j for j in range(k) if new[j] > max(survived[j], 1)), key=lambda j: new[j])
        new[i] -= 1
    return new


@torch.no_grad()
def resize_triplets(layer: AdapterLinear, new_rank: int) -> None:
    """EXTEND (or compact) a ``[in matrix, diagonal, out matrix]`` chain (AdaLoRA's Q, lambda, P; SoRA's A, gate, B).

    Components whose diagonal entry is non-zero keep their trained weights; new ones get an input row and an output
    column ~ N(0, 0.02) and a zero diagonal entry, so the adapter's output is unchanged.
    """
    first, diag, last = layer.specs
    a, d, b = (layer.factors[f.name] for f in layer.specs)
    keep = torch.nonzero(d != 0).flatten()
    if len(keep) > new_rank:
        raise ValueError(f"cannot resize to rank {new_rank}: {len(keep)} components are active")
    extra = new_rank - len(keep)
    new = {
        first.name: torch.cat([a[keep], torch.randn(extra, a.shape[1], device=a.device) * 0.02]),
        diag.name: torch.cat([d[keep], torch.zeros(extra, device=d.device)]),
        last.name: torch.cat([b[:, keep], torch.randn(b.shape[0], extra, device=b.device) * 0.02], dim=1),
    }
    for name, t in new.items():
        layer.factors[name] = nn.Parameter(t)
    layer.specs = (
        replace(first, out_dim=new_rank),
        replace(diag, in_dim=new_rank, out_dim=new_rank),
        replace(last, in_dim=new_rank),
    )
    layer._split = layer._plan_split()


def _diagonal(layer: AdapterLinear) -> torch.Tensor:
    """The middle (rank-selecting) factor of a ``[in, diagonal, out]`` chain: AdaLoRA's lambda, SoRA's gate."""
    return layer.factors[layer.specs[1].name]


@register("rolora", RoloraConfig)
class Rolora(AdaLora):
    """RoLoRA around a SPARSIFY operator: AdaLoRA (inherited) or SoRA (delegated to a :class:`Sora`)."""

    cfg: RoloraConfig

    def __init__(self, cfg: RoloraConfig) -> None:
        if cfg.init_r != cfg.target_r:
            raise ValueError(f"rolora: init_r and target_r are both the target average rank R, got {cfg.init_r} and "
                             f"{cfg.target_r}")  # fmt: skip
        if cfg.iterations < 1:
            raise ValueError(f"rolora: iterations must be >= 1, got {cfg.iterations}")
        if cfg.sparsify not in ("adalora", "sora"):
            raise ValueError(f"rolora: sparsify must be adalora or sora, got {cfg.sparsify!r}")
        super().__init__(cfg)
        self.sora = None
        if cfg.sparsify == "sora":
            self.sora = Sora(SoraConfig(r=cfg.init_r, alpha=cfg.alpha, dropout=cfg.dropout, xi=cfg.xi,
                                        multiply_lr=cfg.multiply_lr))  # fmt: skip
        self.mu = cfg.target_r / 2
        self.rank_history: list[dict[str, int]] = []
        self.allocated_max = 0  # the largest sum of allocated ranks seen at any step

    @property
    def phases(self) -> int:
        return self.cfg.iterations

    # --- SPARSIFY: AdaLoRA's hooks, or SoRA's --------------------------------------------------------------
    def factors(self, module_name: str, in_features: int, out_features: int) -> list[Factor]:
        return (self.sora or super()).factors(module_name, in_features, out_features)

    def extra_loss(self, model: nn.Module, step: int) -> torch.Tensor | None:
        return (self.sora or super()).extra_loss(model, step)

    def after_backward(self, model: nn.Module, step: int) -> None:
        (self.sora or super()).after_backward(model, step)

    def allocated(self, model: nn.Module) -> dict[str, int]:
        return {n: _diagonal(layer).numel() for n, layer in self.layers(model).items()}

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int) -> None:
        if self.sora is not None:
            self.sora.on_train_start(model, optimizer, total_steps)
        else:
            super().on_train_start(model, optimizer, total_steps)
            ranks = self.allocated(model)
            self.totals = (sum(ranks.values()), round(self.mu * len(ranks)))  # SPARSIFY from the current ranks

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        (self.sora or super()).after_optimizer_step(model, step)
        self.allocated_max = max(self.allocated_max, sum(self.allocated(model).values()))

    # --- RoLoRA's own step ---------------------------------------------------------------------------------
    def on_phase_end(self, model: nn.Module, phase: int) -> None:
        layers = self.layers(model)
        survived = self.active_ranks(model)
        current = self.allocated(model)
        names = list(layers)
        t = phase + 1
        if t == self.cfg.iterations:
            new = [max(survived[n], 1) for n in names]  # output: the surviving components
        else:
            new = move_ranks([current[n] for n in names], [survived[n] for n in names], self.cfg.target_r, 1 / t)
            self.mu *= 1 + 1 / (self.cfg.iterations + t)
        for n, r in zip(names, new, strict=True):
            resize_triplets(layers[n], r)
        self.rank_history.append(dict(zip(names, new, strict=True)))

    @torch.no_grad()
    def active_ranks(self, model: nn.Module) -> dict[str, int]:
        """Per adapter: the components whose diagonal entry (lambda or gate) is non-zero."""
        return {n: int((_diagonal(layer) != 0).sum()) for n, layer in self.layers(model).items()}

    def final_metrics(self, model: nn.Module) -> dict:
        return {
            **super().final_metrics(model),
            "rank_history": self.rank_history,
            "max_allocated": self.allocated_max,
            "budget": self.cfg.target_r * len(self.layers(model)),
        }

    def state_dict(self) -> dict:
        return {**super().state_dict(), "mu": self.mu, "rank_history": self.rank_history,
                "allocated_max": self.allocated_max}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.mu, self.rank_history, self.allocated_max = state["mu"], state["rank_history"], state["allocated_max"]

    @torch.no_grad()
    def on_resume(self, model: nn.Module) -> None:
        """The ranks of the last re-allocation (the checkpoint's values are loaded into them afterwards)."""
        if not self.rank_history:
            return
        for name, layer in self.layers(model).items():
            _diagonal(layer).zero_()  # no active component: the resize only sets shapes
            resize_triplets(layer, self.rank_history[-1][name])
