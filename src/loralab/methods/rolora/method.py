from __future__ import annotations

import json
from dataclasses import replace

import torch
from torch import nn

from loralab.adapters import AdapterLinear, Factor
from loralab.adapters.layer import new_factor_tensor
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

    Components whose diagonal entry is non-zero keep their trained weights; new ones are drawn as a fresh adapter
    of the method (each factor's own init: AdaLoRA's Q, P ~ N(0, 0.02) and lambda 0; SoRA's A Kaiming-uniform, gate
    N(0, 1) and B 0), "initialized in the same way as LoRA adapters so that their product is 0" (RoLoRA, Sec. 4):
    a chain with a zero-initialised factor adds nothing, so the adapter's output is unchanged.
    """
    first, diag, last = layer.specs
    if "zeros" not in (first.init, diag.init, last.init):
        raise ValueError(f"EXTEND needs a zero-initialised factor (new components must add nothing), got inits "
                         f"{first.init}, {diag.init}, {last.init}")  # fmt: skip
    a, d, b = (layer.factors[f.name] for f in layer.specs)
    keep = torch.nonzero(d != 0).flatten()
    if len(keep) > new_rank:
        raise ValueError(f"cannot resize to rank {new_rank}: {len(keep)} components are active")
    extra = new_rank - len(keep)
    kept = [a[keep], d[keep], b[:, keep]]
    if extra:
        specs = (replace(first, out_dim=extra), replace(diag, in_dim=extra, out_dim=extra), replace(last, in_dim=extra))
        fresh = [new_factor_tensor(f, a.device).detach() for f in specs]
        kept = [torch.cat([kept[0], fresh[0]]), torch.cat([kept[1], fresh[1]]), torch.cat([kept[2], fresh[2]], dim=1)]
    for f, t in zip(layer.specs, kept, strict=True):
        layer.factors[f.name] = nn.Parameter(t)
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
                                        multiply_lr=cfg.multiply_lr, sparse_lambda=cfg.sparse_lambda))  # fmt: skip
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

    def on_resume(self, model: nn.Module) -> None:
        """The ranks of the last re-allocation (the checkpoint's values are loaded into them afterwards)."""
        if self.rank_history:
            self._reshape(model, self.rank_history[-1])

    def adapter_metadata(self, model: nn.Module) -> dict[str, str]:
        """Adds ``ranks``: each module's allocated rank, the shapes a fresh build must take to load the file."""
        return {**super().adapter_metadata(model), "ranks": json.dumps(self.allocated(model))}

    def prepare_adapter(self, model: nn.Module, metadata: dict[str, str]) -> None:
        super().prepare_adapter(model, metadata)
        if "ranks" not in metadata:
            raise ValueError("a RoLoRA adapter file needs its per-module ranks (metadata 'ranks'); this one has none")
        self._reshape(model, json.loads(metadata["ranks"]))

    @torch.no_grad()
    def _reshape(self, model: nn.Module, ranks: dict[str, int]) -> None:
        layers = self.layers(model)
        if set(ranks) != set(layers):
            raise ValueError(f"the recorded ranks name other modules than this model's adapters: "
                             f"{sorted(set(ranks) ^ set(layers))[:5]}")  # fmt: skip
        for name, layer in layers.items():
            _diagonal(layer).zero_()  # no active component: the resize only sets shapes
            resize_triplets(layer, ranks[name])
