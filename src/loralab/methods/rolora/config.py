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
    triplets keep their trained weights, new ones are "initialized in the same way as LoRA adapters so that their
    product is 0" (Sec. 4): drawn as the method's fresh adapter (AdaLoRA: P column / Q row ~ N(0, 0.02), lambda 0;
    SoRA: A row Kaiming-uniform, gate N(0, 1), B column 0), so the model's outputs are unchanged and the new
    components train. After the last phase the adapters are compacted to their surviving triplets. AdaLoRA never
    holds more than the current allocation, so the budget holds at every step, inside SPARSIFY too.

    Output ranks (Table 4): the mean over adapters of the active components (non-zero lambda or gate) of the run's
    output adapters, which are the best epoch's (``adapter.safetensors``; as the reference SoRA code, which loads
    the best checkpoint before counting its gates). Table 4's means (4.9-8.0, varying by task, all within
    [R/2, R]) fit this reading: an adapter checkpointed in phase t holds between mu_t (after the phase's pruning)
    and R (before it) active components on average. The other readings give one value for every task: the
    survivors of the last SPARSIFY (mu_T = 0.75 R) or Algorithm 1's returned allocation (R). The latter two are
    recorded too: ``mean_final_rank`` (the compacted adapters at the end) and ``rank_history``.

    ``sparsify=sora`` (Table 5's RoLoRA^B) uses SoRA as SPARSIFY instead: a gated adapter whose gates are
    soft-thresholded by ``xi * lr`` (``multiply_lr=false``: ``xi``), with SoRA's L1 term ``sparse_lambda`` (see
    SoraConfig); its survivors are the non-zero gates. SoRA's pruning is set by the threshold, not by ``mu_t``, so
    the mu schedule does not apply to it ("we keep the same threshold across all iterations", Sec. 6.1).

    Choices where the paper is silent: rounding keeps ``r_i >= s_i`` and ``>= 1`` and trims the largest excess
    when the rounded sum exceeds K R; each phase trains ``trainer.epochs`` epochs with a fresh optimizer.
    """

    name: str = "rolora"
    init_r: int = 8
    target_r: int = 8
    iterations: int = 3
    sparsify: str = "adalora"
    xi: float = 3.0e-4
    multiply_lr: bool = True
    sparse_lambda: float = 10.0
