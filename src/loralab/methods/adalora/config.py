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
    every ``delta_t`` steps the lambdas outside the global top-b(t) scores are set to zero.

    As the reference code (QingruZhang/AdaLoRA ``RankAllocator.update_and_mask``, peft ``update_and_allocate``),
    the EMAs are updated after the optimizer step, from the post-step weights and the clipped gradients, and not in
    the final ``t_final`` steps ("do not update ipt during final fine-tuning").

    Orthogonal regulariser, weight ``orth_weight`` (gamma), where the paper and its code differ (``orth_squared``):
    - false (default, the code): ``compute_orth_regu`` "regu_loss += torch.norm(para_cov-I, p="fro") ... return
      regu_weight*regu_loss/num_param": ``gamma * (1 / 2K) * sum_k (||P_k^T P_k - I||_F + ||Q_k Q_k^T - I||_F)``,
      plain norms averaged over the 2K matrices (peft's AdaLoRA adds the same term). The gamma values the papers
      use (RoLoRA Table 9: 0.1-0.5) come from AdaLoRA's scripts, tuned for this form.
    - true (the paper, eq. 7): "R(P, Q) = ||P^T P - I||_F^2 + ||Q Q^T - I||_F^2", added as ``gamma * sum_k R(P_k,
      Q_k)``: squared norms, summed (115x the code's value at initialisation on RoBERTa's query/value, init_r 12).

    ``final_remask``: in the final phase keep the pruned lambdas at zero after every step (true, as the code's fixed
    mask), or mask once. With gradient accumulation the regulariser enters each micro-batch's loss, which the loop
    divides by the number of micro-batches: once per optimizer step in total.

    Output: the run's adapter is the best epoch's (``adapter.safetensors``), so ``rank`` / ``mean_rank`` and
    ``inference_params`` (the kept triplets' P columns and Q rows, lambda folded in, plus the trained head) are
    measured on the best epoch's adapters; ``mean_final_rank`` on the adapters at the end of training.
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
    orth_squared: bool = False
    final_remask: bool = True
