from __future__ import annotations

from dataclasses import dataclass

from loralab.methods.base import MethodConfig


@dataclass
class LoraConfig(MethodConfig):
    """LoRA (Hu et al., 2021, eq. 3): ``h = W x + (alpha / r) B A x``.

    ``A`` (r x d_in) is Kaiming-uniform initialised (a = sqrt 5, as in the reference code and peft) and ``B``
    (d_out x r) is zero, so the update is zero at step 0; ``r (d_in + d_out)`` trainable parameters per module.
    LoRA-Mini Tables 1-2's LoRA rows are this method on the ``D`` targets (0.90M at r=8 on RoBERTa-base).

    ``init_from``: a peft LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, e.g. from
    ``python -m loralab.export --format peft``) whose A and B (and saved head, ``modules_to_save``) replace the
    initial values; it must adapt the same modules with the same r and alpha (else an error says which).
    """

    name: str = "lora"
    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    init_from: str | None = None
