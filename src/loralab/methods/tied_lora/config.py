from __future__ import annotations

from dataclasses import dataclass

from loralab.methods.base import MethodConfig


@dataclass
class TiedLoraConfig(MethodConfig):
    """Tied-LoRA (Renduchintala et al., 2024, eq. 1): ``z = W x + (alpha / r) diag(v) B diag(u) A x`` with alpha = r.

    ``A`` (r x d) and ``B`` (r -> 3d) act on the attention's q, k and v jointly, as the paper's fused QKV projection:
    on models with separate q/k/v modules one ``A`` feeds the three and ``B``'s row blocks (and ``v``'s) produce q,
    k and v; on a fused module (GPT-2's ``c_attn``) the chain is applied as is. ``A`` and ``B`` are tied (one tensor
    for all layers) except in the ``lora`` variant; ``u`` (r) and ``v`` (3d) are per layer. ``variant`` selects a
    row of the paper's Table 1 (which factors train; trainable parameters with L layers, hidden size d):

    ======= ==================== ==================
    variant trainable            parameters
    ======= ==================== ==================
    lora    B, A (per layer)     4 L d r
    vera    v, u                 L (3d + r)
    tl1     A                    d r
    tl2     v, u, A              3 d L + L r + d r
    tl3     B                    3 d r
    tl4     B, u                 3 d r + L r
    tl5     B, A                 4 d r
    tl6     v, B, u, A           4 d r + L (3d + r)
    ======= ==================== ==================

    Choices where the paper is silent (documented, each a setting where it matters):
    - Initialisation makes the update zero at step 0 while every trainable factor can receive gradient: the first
      trainable of (v, B, A) starts at zero; other trainable matrices are Kaiming-uniform, a trainable ``u`` starts
      at ``u_init``, a trainable ``v`` at zero. Frozen ``u``/``v`` are 1 and left out of the computation.
    - Frozen ``A``/``B`` (the paper: "randomly initializing A and B") are Kaiming-uniform with a = sqrt 5,
      U(+-1/sqrt(fan_in)), drawn from a generator seeded with ``seed`` (regenerable): the distribution a trainable A
      or B starts from here (LoRA's A), so a variant that freezes a factor differs from one that trains it only in
      the training, as Table 1 compares them. Its ``vera`` variant therefore does not use peft's VeRA projections
      (U(+-sqrt(6/fan_in)); ``method=vera`` does): its frozen update is smaller for the same u and v.
    - ``alpha: null`` means alpha = r (scaling 1), as the paper sets it.
    """

    name: str = "tied_lora"
    targets: str = "A"
    variant: str = "tl5"
    r: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    u_init: float = 1.0
    seed: int = 0
