from __future__ import annotations

from loralab.adapters import Factor
from loralab.methods.base import Method, register
from loralab.methods.lora_mini.config import LoraMiniConfig


@register("lora_mini", LoraMiniConfig)
class LoraMini(Method):
    cfg: LoraMiniConfig

    def factors(self, module_name: str, in_features: int, out_features: int) -> list[Factor]:
        r, a, b = self.cfg.r, self.cfg.a, self.cfg.b
        if min(r, a, b) < 1:
            raise ValueError(f"lora_mini: r, a and b must be >= 1, got r={r} a={a} b={b}")
        too_big = [f"{k}={v} must be <= {d}" for k, v, d in (("a", a, in_features), ("b", b, out_features)) if v > d]
        if too_big:
            raise ValueError(
                f"lora_mini: impossible shape for {module_name} ({in_features} -> {out_features}): "
                f"{' and '.join(too_big)}; choose smaller method.a/method.b (or a rab= grid point that fits)"
            )
        return [
            Factor("A_aux", "matrix", in_features, a, trainable=False),
            Factor("A_train", "matrix", a, r),
            Factor("B_train", "matrix", r, b, init="zeros" if self.cfg.zero_init else "kaiming_uniform"),
            Factor("B_aux", "matrix", b, out_features, trainable=False),
        ]

    @property
    def scaling(self) -> float:
        return 1.0 if self.cfg.alpha is None else self.cfg.alpha / self.cfg.r
