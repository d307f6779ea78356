"""peft's LoRA format: any factor chain as one LoRA pair, and a peft LoRA adapter folder read into loralab's LoRA.

A peft LoRA folder is ``adapter_config.json`` + ``adapter_model.safetensors`` with tensors named
``base_model.model.<module>.lora_A.weight`` (r x d_in) and ``...lora_B.weight`` (d_out x r), scaled by
``lora_alpha / r`` (per module: ``rank_pattern`` / ``alpha_pattern``), and the fully trained ``modules_to_save``
under ``base_model.model.<module>.<parameter>``. Reading it needs no peft install (safetensors and JSON only).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from loralab.adapters.layer import AdapterLinear, _product
from loralab.adapters.model import adapter_layers

PEFT_PREFIX = "base_model.model."
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def as_lora(layer: AdapterLinear) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The layer's update as one LoRA pair ``(A, B, alpha)`` with ``scaling * chain = (alpha / m) B A`` exactly.

    The chain is cut at its narrowest width m: ``A`` (m x d_in) multiplies out the factors before the cut, ``B``
    (d_out x m) those after it. LoRA's own chain is returned as it is (``alpha = scaling * r``).
    """
    chain = list(layer.chain())
    if len(chain) < 2:
        raise ValueError(f"a LoRA pair needs a chain of at least two factors, got {[f.name for f, _ in chain]}")
    dims = [layer.in_features] + [f.used_out for f, _ in chain]
    cut = min(range(1, len(dims) - 1), key=dims.__getitem__)
    a, b = _product(chain[:cut]).detach(), _product(chain[cut:]).detach()
    return a.float().contiguous(), b.float().contiguous(), layer.scaling * a.shape[0]


def _pattern_value(patterns: dict[str, float], module: str, default: float) -> float:
    """peft's ``rank_pattern`` / ``alpha_pattern`` lookup: a key matches a module name's tail (``(.*\\.)?key$``)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def load_peft_lora(model: nn.Module, folder: str | Path) -> list[str]:
    """Copy a peft LoRA adapter folder into ``model``'s LoRA adapters (and its saved head into the head).

    The folder must adapt exactly the modules adapted here, with the same rank and scaling per module, and be plain
    LoRA (no DoRA, rsLoRA or bias training); anything else is an error naming the module and the settings to use.
    Returns the names of the head tensors loaded.
    """
    folder = Path(folder)
    config_path, weights_path = folder / PEFT_CONFIG, folder / PEFT_WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"method.init_from={folder}: a peft adapter folder holds {PEFT_CONFIG} and "
                                f"{PEFT_WEIGHTS}")  # fmt: skip
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(
            f"method.init_from={folder}: a peft LoRA adapter is needed, this one is {config.get('peft_type')}"
        )
    unsupported = [k for k in ("use_dora", "use_rslora") if config.get(k)] + (
        ["bias"] if config.get("bias", "none") != "none" else []
    )
    if unsupported:
        raise ValueError(
            f"method.init_from={folder}: {unsupported} are not plain LoRA; loralab's lora cannot take them"
        )
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, t in load_file(str(weights_path)).items():
        name = key.removeprefix(PEFT_PREFIX)
        m = re.fullmatch(r"(.+)\.lora_([AB])\.weight", name)
        if m:
            pairs.setdefault(m.group(1), {})[m.group(2)] = t
        else:
            rest[name] = t
    layers = adapter_layers(model)
    if set(pairs) != set(layers):
        raise ValueError(
            f"method.init_from={folder} adapts other modules than this run: only in the file "
            f"{sorted(set(pairs) - set(layers))[:5]}, only here {sorted(set(layers) - set(pairs))[:5]} "
            "(set method.target_modules to the file's target_modules)"
        )
    with torch.no_grad():
        for name, pair in pairs.items():
            layer = layers[name]
            if [f.name for f in layer.specs] != ["A", "B"]:
                raise ValueError(
                    f"method.init_from needs method=lora; {name} has the chain {[f.name for f in layer.specs]}"
                )
            r = pair["A"].shape[0]
            alpha = _pattern_value(config.get("alpha_pattern") or {}, name, config["lora_alpha"])
            if layer.factors["A"].shape != pair["A"].shape or abs(alpha / r - layer.scaling) > 1e-9 * alpha / r:
                raise ValueError(
                    f"method.init_from={folder}: {name} has r={r}, lora_alpha={alpha:g} there, r="
                    f"{layer.factors['A'].shape[0]}, scaling {layer.scaling:g} here; run with method.r={r} "
                    f"method.alpha={alpha:g}"
                )
            layer.factors["A"].copy_(pair["A"])
            layer.factors["B"].copy_(pair["B"])
        params = dict(model.named_parameters())
        for name, t in rest.items():
            if name not in params or params[name].shape != t.shape:
                raise ValueError(f"method.init_from={folder}: {name} {tuple(t.shape)} has no counterpart in this model")
            params[name].copy_(t)
    return sorted(rest)
