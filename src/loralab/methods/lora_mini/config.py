from __future__ import annotations

from dataclasses import dataclass

from loralab.methods.base import MethodConfig


@dataclass
class LoraMiniConfig(MethodConfig):
    """LoRA-Mini (Singh et al., 2025, eq. 1): ``h = (W + A_aux A_train B_train B_aux) x``.

    In the paper's notation ``A_aux`` is d x a and ``B_aux`` is b x k (frozen), ``A_train`` a x r and
    ``B_train`` r x b (trainable): ``r (a + b)`` trainable parameters per module, independent of the layer
    size (Tables 5-14). All four are Kaiming-initialised with coefficient sqrt(5), as the paper says, so the
    update is *not* zero at step 0.

    Choices where the paper is silent (each a setting):
    - ``alpha``: eq. 1 has no scaling, so the default ``None`` means scaling 1; a number gives ``alpha / r``.
    - ``zero_init``: start ``B_train`` at zero so the update is zero at step 0 (a deviation from the paper).
    - ``dropout`` on the adapter input: the paper does not mention one; default 0.
    - ``a`` and ``b`` may not exceed the layer's input and output sizes (the outer factors are projections).
    """

    name: str = "lora_mini"
    r: int = 8
    a: int = 64
    b: int = 64
    alpha: float | None = None
    dropout: float = 0.0
    zero_init: bool = False
