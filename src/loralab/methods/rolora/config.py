from __future__ import annotations

from dataclasses import dataclass

from loralab.methods.adalora.config import AdaLoraConfig


@dataclass
class RoloraConfig(AdaLoraConfig):
    """RoLoRA (Algorithm 1): rank re-allocation under a strict budget ``sum_i r_i <= K R``, as Frank-Wolfe steps.

    Every adapter starts at rank R (``init_r`` = ``target_r`` = R). Each of ``iterations`` (T) training phases runs
    SPARSIFY = AdaLoRA (its importance scores, cubic schedule and masking; the settings inherited here) from the
    current ranks down to an average of ``mu_t`` (``mu_1 = R / 2``, then ``mu_{t+1} = mu_t (1 + 1 / (T + t))``),
    giving ranks s_i = the surviving triplets. Then s is rescaled to average R and rounded, the ranks move
    ``r_i <- (1 - gamma) r_i + gamma s_i`` with ``gamma = 1 / t``, and EXTEND resizes every adapter: surviving
    triplets keep their trained weights, new ones get P column / Q row ~ N(0, 0.02) and lambda = 0, so the model's
    outputs are unchanged. After the last phase the adapters are compacted to their surviving triplets (the
    output ranks of Table 4). AdaLoRA never holds more than the current allocation, so the budget holds at every
    step, inside SPARSIFY too.

    ``sparsify=sora`` (Table 5's RoLoRA^B) uses SoRA as SPARSIFY instead: a gated adapter whose gates are
    soft-thresholded by ``xi`` (or ``xi * lr`` with ``multiply_lr``); its survivors are the non-zero gates. SoRA's
    pruning is set by the threshold, not by ``mu_t``, so the mu schedule does not apply to it.

    Choices where the paper is silent: rounding keeps ``r_i >= s_i`` and ``>= 1`` and trims the largest excess
    when the rounded sum exceeds K R; each phase trains ``trainer.epochs`` epochs with a fresh optimizer; new
    components start with input row and output column ~ N(0, 0.02) and a zero diagonal entry.
    """

    name: str = "rolora"
    init_r: int = 8
    target_r: int = 8
    iterations: int = 3
    sparsify: str = "adalora"
    xi: float = 1.0e-3
    multiply_lr: bool = False
