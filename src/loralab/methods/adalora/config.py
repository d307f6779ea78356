from __future__ import annotations

from dataclasses import dataclass

from loralab.methods.base import MethodConfig


@dataclass
class AdaLoraConfig(MethodConfig):
    """AdaLoRA (Zhang et al., 2023): ``h = W x + (alpha / r) P diag(lambda) Q x`` with a rank budget.

    Each module starts with ``init_r`` triplets (P column i, lambda_i, Q row i); Q and P are N(0, 0.02), lambda zero
    (so the update is zero at step 0). Importance of a parameter: ``I_bar * U_bar``, with ``I_bar`` the EMA (beta1)
    of the sensitivity ``|w * grad|`` and ``U_bar`` the EMA (beta2) of ``|I - I_bar|`` (eq. 8-9); a triplet's score
    adds lambda_i's to the means over its P column and Q row (eq. 10). The total budget follows the cubic schedule
    (eq. 12): ``init_r * K`` for ``t < t_init``, then down to ``target_r * K`` at ``T - t_final``, then constant;
    every ``delta_t`` steps the lambdas outside the global top-b(t) scores are set to zero. The orthogonality
    regulariser ``orth_weight * (||P^T P - I||^2 + ||Q Q^T - I||^2)`` is added to the loss (eq. 7).

    Where the reference code and peft differ, a setting (default: the paper):
    - ``orth_squared``: squared Frobenius norms as eq. 7 (true) or plain norms as the code (false).
    - ``final_remask``: in the final phase keep the pruned lambdas at zero after every step (true), or mask once.
    With gradient accumulation the regulariser enters each micro-batch's loss, which the loop divides by the
    number of micro-batches: once per optimizer step in total.
    """

    name: str = "adalora"
    targets: str = "D+A"
    init_r: int = 12
    target_r: int = 8
    alpha: float = 32.0
    dropout: float = 0.0
    beta1: float = 0.85
    beta2: float = 0.85
    t_init: int = 200
    t_final: int = 1000
    delta_t: int = 10
    orth_weight: float = 0.1
    orth_squared: bool = True
    final_remask: bool = True
