from __future__ import annotations

from dataclasses import dataclass

from loralab.methods.base import MethodConfig


@dataclass
class FullFTConfig(MethodConfig):
    """Full fine-tuning: every parameter of the backbone and head trains (the papers' FFT rows).

    ``targets`` is ignored (no adapters are attached).
    """

    name: str = "full_ft"
    targets: str = ""
