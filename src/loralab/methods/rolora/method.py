from __future__ import annotations

import torch
from torch import nn

from loralab.adapters import AdapterLinear, Factor
from loralab.methods.adalora.method import AdaLora
from loralab.methods.base import register
from loralab.methods.rolora.config import RoloraConfig


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
    """EXTEND (or compact): keep the triplets whose lambda is non-zero, add new ones with lambda = 0."""
    q, e, p = layer.factors["Q"], layer.factors["E"], layer.factors["P"]
    keep = torch.nonzero(e != 0).flatten()
    if len(keep) > new_rank:
        raise ValueError(f"cannot resize to rank {new_rank}: {len(keep)} triplets are active")
    extra = new_rank - len(keep)
    new_q = torch.cat([q[keep], torch.randn(extra, q.shape[1], device=q.device) * 0.02])
    new_e = torch.cat([e[keep], torch.zeros(extra, device=e.device)])
    new_p = torch.cat([p[:, keep], torch.randn(p.shape[0], extra, device=p.device) * 0.02], dim=1)
    layer.factors["Q"], layer.factors["E"], layer.factors["P"] = (nn.Parameter(t) for t in (new_q, new_e, new_p))
    layer.specs = (
        Factor("Q", "matrix", q.shape[1], new_rank, init="normal:0.02"),
        Factor("E", "diag", new_rank, new_rank, init="zeros"),
        Factor("P", "matrix", new_rank, p.shape[0], init="normal:0.02"),
    )
    layer._split = layer._plan_split()


@register("rolora", RoloraConfig)
class Rolora(AdaLora):
    cfg: RoloraConfig

    def __init__(self, cfg: RoloraConfig) -> None:
        if cfg.init_r != cfg.target_r:
            raise ValueError(f"rolora: init_r and target_r are both the target average rank R, got {cfg.init_r} and "
                             f"{cfg.target_r}")  # fmt: skip
        if cfg.iterations < 1:
            raise ValueError(f"rolora: iterations must be >= 1, got {cfg.iterations}")
        super().__init__(cfg)
        self.mu = cfg.target_r / 2
        self.rank_history: list[dict[str, int]] = []
        self.allocated_max = 0  # the largest sum of allocated ranks seen at any step

    @property
    def phases(self) -> int:
        return self.cfg.iterations

    def allocated(self, model: nn.Module) -> dict[str, int]:
        return {n: layer.factors["E"].numel() for n, layer in self.layers(model).items()}

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int) -> None:
        super().on_train_start(model, optimizer, total_steps)
        ranks = self.allocated(model)
        self.totals = (sum(ranks.values()), round(self.mu * len(ranks)))  # SPARSIFY from the current ranks

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        super().after_optimizer_step(model, step)
        self.allocated_max = max(self.allocated_max, sum(self.allocated(model).values()))

    def on_phase_end(self, model: nn.Module, phase: int) -> None:
        layers = self.layers(model)
        survived = {n: int((layer.factors["E"] != 0).sum()) for n, layer in layers.items()}
        current = self.allocated(model)
        names = list(layers)
        t = phase + 1
        if t == self.cfg.iterations:
            new = [max(survived[n], 1) for n in names]  # output: the surviving triplets
        else:
            new = move_ranks([current[n] for n in names], [survived[n] for n in names], self.cfg.target_r, 1 / t)
            self.mu *= 1 + 1 / (self.cfg.iterations + t)
        for n, r in zip(names, new, strict=True):
            resize_triplets(layers[n], r)
        self.rank_history.append(dict(zip(names, new, strict=True)))

    def final_metrics(self, model: nn.Module) -> dict:
        return {
            **super().final_metrics(model),
            "rank_history": self.rank_history,
            "max_allocated": self.allocated_max,
            "budget": self.cfg.target_r * len(self.layers(model)),
        }

    def state_dict(self) -> dict:
        return {**super().state_dict(), "mu": self.mu, "rank_history": self.rank_history}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.mu, self.rank_history = state["mu"], state["rank_history"]
