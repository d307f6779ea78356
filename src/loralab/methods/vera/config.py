from __future__ import annotations

from dataclasses import dataclass

from loralab.methods.base import MethodConfig


@dataclass
class VeraConfig(MethodConfig):
    """VeRA (Kopiczko et al., 2024, eq. 1): ``h = W x + Lambda_b B Lambda_d A x`` on any target modules.

    ``A`` (r x d_in_max) and ``B`` (d_out_max x r) are frozen random matrices shared by all adapted modules, each
    module using the top-left block that fits it (``A[:, :d_in]``, ``B[:d_out]``); they are Kaiming-uniform, drawn
    from a generator seeded with ``seed``, so they can be regenerated. Per module only the scaling vectors train:
    ``d`` (r, initialised to ``d_init``, the paper's default 0.1) and ``b`` (d_out, initialised to zero, so the
    update is zero at step 0): ``r + d_out`` trainable parameters per module.
    """

    name: str = "vera"
    targets: str = "D+A"
    r: int = 256
    d_init: float = 0.1
    dropout: float = 0.0
    seed: int = 0
