"""What a rank-pruning method (AdaLoRA, SoRA, RoLoRA) keeps for inference."""

from __future__ import annotations

from torch import nn

from loralab.adapters import adapter_layers, count_parameters


def inference_params(model: nn.Module, ranks: dict[str, int]) -> int:
    """Parameters the pruned model needs at inference: per adapter, ``ranks[name]`` kept components of its input
    and output matrices (``rank * (in + out)``: the diagonal, AdaLoRA's lambda or SoRA's gate, folded into the
    output matrix), plus the trainable parameters outside adapters (task head, ``extra_trainable``)."""
    layers = adapter_layers(model)
    kept = sum(r * (layers[n].in_features + layers[n].out_features) for n, r in ranks.items())
    return kept + count_parameters(model)["head_params"]
