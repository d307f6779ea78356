from __future__ import annotations

from dataclasses import dataclass

from loralab.methods.lora.config import LoraConfig


@dataclass
class RmLoraConfig(LoraConfig):
    """RM-LoRA (Regularized and Masked LoRA): LoRA ``W + (alpha/r) B A`` trained with two switches.

    - ``regularize`` (R-LoRA): adds ``reg_weight * sum over adapters of ||A A^T - I||_F^2 + ||B^T B - I||_F^2``
      (eq. 10) to the loss.
    - ``mask`` (GM-LoRA): Algorithm 1: at every optimizer step each adapter draws ``mask_directions`` (r-hat) of
      its r rank directions at random; only those rows of A and columns of B are updated. Masked entries are left
      exactly as they were, AdamW's moment estimates and weight decay included: the hook snapshots them after
      backward and writes them back after the optimizer step (Adam's per-tensor step counter still advances).
    Both on: RM-LoRA; both off: plain LoRA.

    Choices where the paper is silent (each a setting): ``reg_weight`` 0.1; ``mask_directions`` null = r // 2;
    the directions are drawn from a generator seeded with ``mask_seed`` (the config sets it to ``trainer.seed``:
    every seed draws its own masks, the same seed the same ones).

    Table 5's measures, recorded after training for each adapter's ``Delta W = W_B W_A`` as the paper defines it
    (unscaled: without alpha / r, which at alpha 8, r 32-80 would shrink ``Delta W Delta W^T`` by 16-100x):
    - ``delta_orthogonality_loss``: "the orthogonal loss ||Delta W (Delta W)^T - I||_F^2" (d_out x d_out).
    - ``delta_rank``: the singular values above ``rank_rtol`` times the largest. The paper states no tolerance;
      its ranks (29-30 of R = 32, 52-59 of 64, 59-72 of 80) are below R where a float rank (``matrix_rank``'s
      machine-precision tolerance) is R for a trained LoRA, so it counted small singular values as zero. 0.01 is
      our choice (directions under 1% of the largest: the trailing ones, which the task gradient barely grew from
      B's zero start), not a value the paper gives.
    """

    name: str = "rm_lora"
    targets: str = "D+A"
    regularize: bool = True
    reg_weight: float = 0.1
    mask: bool = True
    mask_directions: int | None = None
    mask_seed: int = 0
    rank_rtol: float = 0.01
