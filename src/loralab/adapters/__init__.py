"""The adapter core: one layer (a chain of factors on a frozen linear map) and whole-model operations."""

from loralab.adapters.layer import AdapterBank, AdapterLinear, Factor
from loralab.adapters.model import (
    adapter_layers,
    adapter_state_dict,
    count_parameters,
    find_targets,
    freeze_base,
    inject_adapters,
    load_adapter,
    load_adapter_state,
    merge_adapters,
    read_adapter_metadata,
    save_adapter,
    unmerge_adapters,
)

__all__ = [
    "AdapterBank",
    "AdapterLinear",
    "Factor",
    "adapter_layers",
    "adapter_state_dict",
    "count_parameters",
    "find_targets",
    "freeze_base",
    "inject_adapters",
    "load_adapter",
    "load_adapter_state",
    "merge_adapters",
    "read_adapter_metadata",
    "save_adapter",
    "unmerge_adapters",
]
