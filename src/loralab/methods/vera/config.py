from __future__ import annotations

from dataclasses import dataclass

from loralab.methods.base import MethodConfig


@dataclass
class VeraConfig(MethodConfig):
    """VeRA (Kopiczko et al., 2024, eq. 1): ``h = W x + Lambda_b B Lambda_d A x`` on any target modules.

    ``A`` (r x d_in_max) and ``B`` (d_out_max x r) are frozen random matrices shared by all adapted modules, each
    module using the top-left block that fits it (``A[:, :d_in]``, ``B[:d_out]``); they are drawn from generators
    seeded with ``seed``, so they can be regenerated (not saved). Per module only the scaling vectors train:
    ``d`` (r, initialised to ``d_init``, the paper's default 0.1) and ``b`` (d_out, initialised to zero, so the
    update is zero at step 0): ``r + d_out`` trainable parameters per module.

    ``projection_init``: the distribution of the frozen A and B. The VeRA paper (not in ``../shared/papers``) names
    Kaiming initialisation without its gain; ``kaiming_uniform_relu`` (default) is the Kaiming-uniform of peft's VeRA
    (``peft/tuners/vera/model.py``, ``_kaiming_init``: gain sqrt(2), U(+-sqrt(6 / fan_in)), fan_in = d_in_max for A,
    r for B), the implementation VeRA users compare with. ``kaiming_uniform`` is nn.Linear's (a = sqrt 5,
    U(+-1 / sqrt(fan_in))), loralab's default before 2026-11-30: with the same d and b its update is 6x smaller.
    Same seed, same distribution as peft, but not the same numbers (peft draws A and B from one generator; here each
    has its own seed).
    """

    name: str = "vera"
    targets: str = "D+A"
    r: int = 256
    d_init: float = 0.1
    dropout: float = 0.0
    seed: int = 0
    projection_init: str = "kaiming_uniform_relu"
