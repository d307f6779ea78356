"""What a method is: a config dataclass, the factor chain it puts on each target module, and training hooks.

Adding a method means one small package under ``loralab/methods/<name>/`` with a ``config.py`` (a dataclass
extending :class:`MethodConfig`, whose docstring cites the paper) and a ``method.py`` (a :class:`Method`
subclass registered with :func:`register`), plus ``conf/method/<name>.yaml``. The training loop calls the
hooks below at fixed points; the adapter layer itself never changes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
from omegaconf import MISSING
from torch import nn

from loralab.adapters import Factor, freeze_base, inject_adapters


@dataclass
class MethodConfig:
    """Fields every method has.

    ``targets``: preset names of the model config joined by ``+`` (LoRA-Mini's ``D``, ``D+A``);
    ``target_modules``: explicit full-name regexes, which replace ``targets`` when given;
    ``train_head``: train the task head (the papers do, and count it as trainable);
    ``extra_trainable``: more modules (full-name regexes) trained in full, e.g. RM-LoRA's DeBERTa pooler.
    """

    name: str = MISSING
    targets: str = "D"
    target_modules: list[str] | None = None
    train_head: bool = True
    extra_trainable: list[str] = field(default_factory=list)


class Method:
    """Base class: an adapter method and its hook points in the training loop."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]
    saves_adapter: ClassVar[bool] = True  # False: nothing adapter-sized to save (full fine-tuning)

    @property
    def phases(self) -> int:
        """Training phases, each with a fresh optimizer and schedule (iterative methods: RoLoRA)."""
        return 1

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg

    # --- building -----------------------------------------------------------------------------------------
    def factors(self, module_name: str, in_features: int, out_features: int) -> list[Factor]:
        """The factor chain (input to output) for one target module."""
        raise NotImplementedError

    @property
    def scaling(self) -> float:
        return 1.0

    @property
    def dropout(self) -> float:
        return float(getattr(self.cfg, "dropout", 0.0))

    def attach(self, model: nn.Module, targets: list[str], head: list[str]) -> list[str]:
        """Put adapters on the modules matching ``targets``, freeze the rest but ``head``; returns targets hit."""
        if not targets:
            raise ValueError(f"method {self.name} needs target modules: set method.targets or method.target_modules")
        names = inject_adapters(model, targets, self.factors, self.scaling, self.dropout)
        freeze_base(model, self.trainable_modules(head))
        return names

    def trainable_modules(self, head: list[str]) -> list[str]:
        """Modules trained in full besides the adapters: the task head and ``extra_trainable``."""
        return (head if self.cfg.train_head else []) + list(self.cfg.extra_trainable)

    # --- hook points of the training loop (defaults do nothing) ---------------------------------------------
    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int) -> None:
        """Runs at the start of each training phase, after its optimizer is built (methods that manage optimizer
        state keep a reference); ``total_steps``: the optimizer steps the phase will take (for schedules)."""

    def extra_loss(self, model: nn.Module, step: int) -> torch.Tensor | None:
        """A term added to the task loss before backward (e.g. an orthogonality regulariser)."""
        return None

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Runs after backward, before clipping and the optimizer step (e.g. gradient masking)."""

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Runs after each optimizer step, before the gradients are cleared: the step's (clipped) gradients are
        still in ``.grad`` (e.g. proximal updates, importance scores, rank pruning)."""

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        """Runs after each epoch's evaluation."""

    def on_best_epoch(self, model: nn.Module) -> None:
        """Runs when an epoch becomes the run's best, whose adapters are the run's output (``adapter.safetensors``):
        methods that report on the output adapters (ranks kept after pruning) take their measurements here."""

    def on_phase_end(self, model: nn.Module, phase: int) -> None:
        """Runs after each training phase (RoLoRA re-allocates ranks here)."""

    def final_metrics(self, model: nn.Module) -> dict:
        """Method-specific measurements recorded in the result after training (ranks, orthogonality, ...)."""
        return {}

    def state_dict(self) -> dict:
        """Method state to checkpoint with the model (allocators, masks, schedules)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""

    def adapter_metadata(self, model: nn.Module) -> dict[str, str]:
        """Metadata written into ``adapter.safetensors``: what a fresh build needs to load the file. Here the method's
        config (frozen seeded factors are regenerated from it, not saved); RoLoRA adds its per-module ranks."""
        return {"loralab_method": json.dumps(asdict(self.cfg), sort_keys=True)}

    def prepare_adapter(self, model: nn.Module, metadata: dict[str, str]) -> None:
        """Before an adapter file is loaded into a fresh build: check the file was written by this method config
        (else regenerated frozen factors would silently differ) and re-shape adapters as its metadata says."""
        saved = json.loads(metadata.get("loralab_method", "null"))
        ours = json.loads(self.adapter_metadata(model)["loralab_method"])
        if saved is not None and saved != ours:
            diff = sorted(k for k in saved.keys() | ours.keys() if saved.get(k) != ours.get(k))
            raise ValueError(
                f"the adapter was saved by another method config: {', '.join(f'{k}={saved.get(k)!r}' for k in diff)} "
                f"(this run: {', '.join(f'{k}={ours.get(k)!r}' for k in diff)}); use the overrides it was trained with"
            )

    def on_resume(self, model: nn.Module) -> None:
        """Runs when a run resumes, after :meth:`load_state_dict` and before the checkpoint's tensors are loaded
        into ``model``: methods that change the adapters' shapes during training (RoLoRA) re-shape them here."""


METHODS: dict[str, type[Method]] = {}


def register(name: str, config_class: type[MethodConfig]):
    """Class decorator: make a :class:`Method` available as ``method=<name>``."""

    def wrap(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        cls.name, cls.config_class = name, config_class
        METHODS[name] = cls
        return cls

    return wrap


def build_method(cfg: MethodConfig) -> Method:
    if cfg.name not in METHODS:
        raise ValueError(f"unknown method {cfg.name!r}; available: {sorted(METHODS)}")
    return METHODS[cfg.name](cfg)
