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
    the directions are drawn from a generator seeded with ``mask_seed``. After training the run records, per
    adapter, rank(dW) and the orthogonality loss ||dW dW^T - I||_F^2 of Table 5.
    """

    name: str = "rm_lora"
    targets: str = "D+A"
    regularize: bool = True
    reg_weight: float = 0.1
    mask: bool = True
    mask_directions: int | None = None
    mask_seed: int = 0
