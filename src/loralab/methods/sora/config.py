from __future__ import annotations

from dataclasses import dataclass

from loralab.methods.base import MethodConfig


@dataclass
class SoraConfig(MethodConfig):
    """SoRA (Ding et al., 2023): a gated LoRA ``h = W x + (alpha / r) B (g * (A x))`` whose gate ``g`` (size r per
    module) is made sparse by a proximal step after each optimizer step:
    ``g <- sign(g) * max(|g| - xi, 0)`` (soft threshold; entries within ``xi`` of zero become exactly zero).

    As in the reference code: A Kaiming-uniform, B zero, g standard normal; the threshold is ``xi`` itself
    (``multiply_lr=false``); ``multiply_lr=true`` uses ``xi * lr`` (the reference's other optimizer variant).
    ``l1_weight`` optionally adds ``l1_weight * sum |g|`` to the loss. After training the run records each
    adapter's number of non-zero gates (its effective rank).
    """

    name: str = "sora"
    targets: str = "D+A"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    xi: float = 1.0e-3
    multiply_lr: bool = False
    l1_weight: float = 0.0
