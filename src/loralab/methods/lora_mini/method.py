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
        if a > in_features or b > out_features:
            raise ValueError(
                f"lora_mini: impossible shape for {module_name} ({in_features} -> {out_features}): "
                f"a={a} must be <= {in_features} and b={b} <= {out_features}; choose smaller method.a/method.b"
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
