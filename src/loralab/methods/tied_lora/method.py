from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from loralab.adapters import Factor, find_targets, freeze_base, inject_adapters
from loralab.adapters.layer import base_dims
from loralab.methods.base import Method, register
from loralab.methods.tied_lora.config import TiedLoraConfig

# Table 1 of the paper: which of v, B, u, A train, and whether A and B are tied across layers.
VARIANTS: dict[str, tuple[frozenset[str], bool]] = {
    "lora": (frozenset("BA"), False),
    "vera": (frozenset("vu"), True),
    "tl1": (frozenset("A"), True),
    "tl2": (frozenset("vuA"), True),
    "tl3": (frozenset("B"), True),
    "tl4": (frozenset("Bu"), True),
    "tl5": (frozenset("BA"), True),
    "tl6": (frozenset("vBuA"), True),
}


@dataclass(frozen=True)
class _Slot:
    """Where one target module sits: its attention block (a layer) and its row block of the fused output."""

    group: str
    rows: tuple[int, int]
    fused_out: int
    d_in: int


@register("tied_lora", TiedLoraConfig)
class TiedLora(Method):
    cfg: TiedLoraConfig

    def __init__(self, cfg: TiedLoraConfig) -> None:
        super().__init__(cfg)
        if cfg.variant not in VARIANTS:
            raise ValueError(f"tied_lora: unknown variant {cfg.variant!r}; choose from {sorted(VARIANTS)}")
        if cfg.r < 1:
            raise ValueError(f"tied_lora: rank r must be >= 1, got {cfg.r}")
        self.trainable, self.tied = VARIANTS[cfg.variant]
        self.zero = next(f for f in "vBA" if f in self.trainable)  # the factor that starts at zero
        self.slots: dict[str, _Slot] = {}

    @property
    def scaling(self) -> float:
        return 1.0 if self.cfg.alpha is None else self.cfg.alpha / self.cfg.r

    def attach(self, model: nn.Module, targets: list[str], head: list[str]) -> list[str]:
        """Group the targets by attention block (q, k, v of one layer share A, u, B and v), then inject."""
        names = find_targets(model, targets)
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(n.rpartition(".")[0], []).append(n)
        shapes = set()
        for group, members in groups.items():
            offset, dims = 0, [base_dims(model.get_submodule(n)) for n in members]
            for n, (d_in, d_out) in zip(members, dims, strict=True):
                self.slots[n] = _Slot(group, (offset, offset + d_out), sum(o for _, o in dims), d_in)
                offset += d_out
            shapes.add((dims[0][0], offset, len({i for i, _ in dims})))
        if (self.tied and len(shapes) != 1) or any(k != 1 for *_, k in shapes):
            raise ValueError(
                f"tied_lora ties A and B across layers: every attention block must have one input size and the same "
                f"fused output size, got (d_in, fused_out) {sorted(s[:2] for s in shapes)}; check method.targets"
            )
        inject_adapters(model, [re.escape(n) for n in names], self.factors, self.scaling, self.dropout)
        freeze_base(model, self.trainable_modules(head))
        return names

    def factors(self, module_name: str, in_features: int, out_features: int) -> list[Factor]:
        slot, r, train = self.slots[module_name], self.cfg.r, self.trainable
        rows = None if slot.rows == (0, slot.fused_out) else slot.rows
        scope = "" if self.tied else f"@{slot.group}"

        def init(name: str, default: str) -> str:
            return "zeros" if name == self.zero else default

        def seed(name: str) -> int | None:
            return None if name in train else self.cfg.seed * 1000 + "AB".index(name)

        chain = [Factor("A", "matrix", slot.d_in, r, init("A", "kaiming_uniform"), "A" in train, "A" + scope,
                        seed=seed("A"))]  # fmt: skip
        if "u" in train:
            chain.append(Factor("u", "diag", r, r, f"const:{self.cfg.u_init}", True, f"u@{slot.group}"))
        chain.append(Factor("B", "matrix", r, slot.fused_out, init("B", "kaiming_uniform"), "B" in train, "B" + scope,
                            rows=rows, seed=seed("B")))  # fmt: skip
        if "v" in train:
            chain.append(Factor("v", "diag", slot.fused_out, slot.fused_out, "zeros", True, f"v@{slot.group}", rows))
        return chain
