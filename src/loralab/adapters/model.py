"""Attaching adapters to a model by module-name patterns, and whole-model adapter operations.

Injection replaces every targeted ``nn.Linear``/``Conv1D`` by an :class:`AdapterLinear`; everything else is
frozen except the modules named as trainable (the task head). Parameter counts, merge/unmerge and
adapter-only save/load work on the resulting model.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from loralab.adapters.layer import AdapterBank, AdapterLinear, Factor, base_dims

BANK_NAME = "loralab_tied"
LINEAR_TYPES = (nn.Linear, Conv1D)

FactorFn = Callable[[str, int, int], Sequence[Factor]]


def _matching(names: Iterable[str], patterns: Sequence[str]) -> dict[str, list[str]]:
    compiled = [(p, re.compile(p)) for p in patterns]
    hits: dict[str, list[str]] = {p: [] for p in patterns}
    for name in names:
        for p, rx in compiled:
            if rx.fullmatch(name):
                hits[p].append(name)
    return hits


def find_targets(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the linear modules whose full name matches one of the regexes (``re.fullmatch``).

    A pattern that matches no linear module is an error: it names the pattern and shows some module names.
    """
    linear = [n for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES)]
    hits = _matching(linear, patterns)
    empty = [p for p, names in hits.items() if not names]
    if empty:
        sample = ", ".join(linear[:12]) + (" ..." if len(linear) > 12 else "")
        raise ValueError(
            f"target pattern(s) {empty} match no linear module of {type(model).__name__} "
            f"(patterns are full-name regexes; linear modules include: {sample})"
        )
    return sorted({n for names in hits.values() for n in names}, key=linear.index)


def inject_adapters(
    model: nn.Module, patterns: Sequence[str], factors: FactorFn, scaling: float, dropout: float = 0.0
) -> list[str]:
    """Wrap every linear module matching ``patterns`` in an :class:`AdapterLinear`.

    ``factors(name, in_features, out_features)`` returns the chain for one module. Returns the wrapped names.
    """
    targets = find_targets(model, patterns)
    bank = getattr(model, BANK_NAME, None) or AdapterBank()
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        layer = AdapterLinear(base, factors(name, *base_dims(base)), scaling, dropout, bank)
        setattr(parent, child, layer)
    if bank.tensors and not hasattr(model, BANK_NAME):
        model.add_module(BANK_NAME, bank)
    return targets


def adapter_layers(model: nn.Module) -> dict[str, AdapterLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLinear)}


def _adapter_param_ids(model: nn.Module) -> set[int]:
    ids = {id(p) for layer in adapter_layers(model).values() for p in layer.factors.values()}
    bank = getattr(model, BANK_NAME, None)
    if bank is not None:
        ids |= {id(p) for p in bank.parameters()}
    return ids


def freeze_base(model: nn.Module, trainable_modules: Sequence[str] = ()) -> list[str]:
    """Freeze every non-adapter parameter, then unfreeze the modules matching ``trainable_modules`` (regexes).

    Adapter factors keep the ``requires_grad`` their :class:`Factor` spec gave them. Returns the names of the
    modules made trainable; a pattern matching no module is an error.
    """
    adapter_ids = _adapter_param_ids(model)
    for p in model.parameters():
        if id(p) not in adapter_ids:
            p.requires_grad_(False)
    if not trainable_modules:
        return []
    names = [n for n, _ in model.named_modules() if n]
    hits = _matching(names, trainable_modules)
    empty = [p for p, found in hits.items() if not found]
    if empty:
        raise ValueError(f"trainable-module pattern(s) {empty} match no module of {type(model).__name__}")
    chosen = sorted({n for found in hits.values() for n in found})
    for n in chosen:
        for p in model.get_submodule(n).parameters():
            if id(p) not in adapter_ids:  # a frozen factor inside a trainable module stays frozen
                p.requires_grad_(True)
    return chosen


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts, each tensor counted once (tied factors and tied embeddings included).

    ``trainable_params``: everything the optimizer updates (adapter + head); ``adapter_params``: trainable
    adapter factors (what the papers call the adapter's parameters); ``adapter_frozen_params``: frozen factors
    (e.g. LoRA-Mini's A_aux/B_aux); ``head_params``: trainable parameters outside adapters.
    """
    adapter_ids = _adapter_param_ids(model)
    counts = dict.fromkeys(
        ("total_params", "trainable_params", "adapter_params", "adapter_frozen_params", "head_params"), 0
    )
    for p in model.parameters():  # nn.Module.parameters() already yields each tensor once
        n = p.numel()
        counts["total_params"] += n
        counts["trainable_params"] += n * p.requires_grad
        if id(p) in adapter_ids:
            counts["adapter_params" if p.requires_grad else "adapter_frozen_params"] += n
        elif p.requires_grad:
            counts["head_params"] += n
    return counts


def shared_parameter_ids(model: nn.Module) -> set[int]:
    """Parameters registered under more than one name (tied weights: T5's ``shared`` and ``lm_head``, tied input and
    output embeddings)."""
    counts = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    return {i for i, n in counts.items() if n > 1}


def merge_adapters(model: nn.Module) -> None:
    """Merge every adapter into its base weight; a base weight shared with another module is merged into a copy,
    so the other module (e.g. the tied input embeddings) keeps the original."""
    shared = shared_parameter_ids(model)
    for layer in adapter_layers(model).values():
        layer.merge(shared=id(layer.base.weight) in shared)


def unmerge_adapters(model: nn.Module) -> None:
    for layer in adapter_layers(model).values():
        layer.unmerge()


def _regenerable_ids(model: nn.Module) -> set[int]:
    """Frozen tied factors drawn from a seeded generator: attaching the same method regenerates them exactly."""
    bank = getattr(model, BANK_NAME, None)
    if bank is None:
        return set()
    return {id(bank.tensors[k]) for k, f in bank.specs.items() if f.seed is not None and not f.trainable}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter factors (tied ones once) plus every other trainable tensor (the head).

    Frozen seeded factors (VeRA's and Tied-LoRA's random A/B) are left out: they are regenerated from their seed.
    """
    adapter_ids = _adapter_param_ids(model) - _regenerable_ids(model)
    keep = {id(p) for p in model.parameters() if p.requires_grad} | adapter_ids
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in keep and id(p) not in seen:
            seen.add(id(p))
            out[name] = p.detach().cpu().contiguous()
    return out


def save_adapter(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write :func:`adapter_state_dict` as safetensors (written to a temporary name, then renamed)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(adapter_state_dict(model), str(tmp), metadata=metadata)
    tmp.replace(path)


def read_adapter_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of an adapter file (:func:`save_adapter`'s ``metadata``), without reading its tensors."""
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def load_adapter(model: nn.Module, path: str | Path) -> None:
    """Load a file written by :func:`save_adapter` into a model with the same adapters attached (unmerged)."""
    load_adapter_state(model, load_file(str(path)), f"adapter file {path}")


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "adapter state") -> None:
    """Copy an :func:`adapter_state_dict` into the model's adapters (same method, targets and shapes; unmerged)."""
    if any(layer.merged for layer in adapter_layers(model).values()):
        raise ValueError("load_adapter needs unmerged adapters: call unmerge_adapters(model) first")
    expected = adapter_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]} "
            "(was it saved with the same method, targets and model?)"
        )
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, t in state.items():
            if params[name].shape != t.shape:
                raise ValueError(f"{source}: {name} has shape {tuple(t.shape)}, model has {tuple(params[name].shape)}")
            params[name].copy_(t)
