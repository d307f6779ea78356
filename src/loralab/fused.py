"""Fused sweeps: many adapter configurations of one backbone trained together, in one process.

A sweep over adapter settings (LoRA-Mini's r/a/b grid x targets D, D+A: 28 runs) trains the same frozen backbone
28 times on the same batches. :func:`run_fused` trains K such configurations at once: each batch is replicated K
times along the batch dimension, copy k goes through config k's adapters and head, and the frozen backbone's
matmuls run once on the K*B rows.

Each configuration gets exactly the updates it would get alone:

- *init*: config k's model is built exactly as :func:`loralab.run.run` builds it (:func:`loralab.run.build_seeded`), so
  its adapter factors and random head are those of its separate run. Its frozen backbone tensors are then replaced
  by config 0's (checked equal first), so K models cost one backbone plus K adapters and heads; each model stays a
  complete single-run model (``models[k]``), used for evaluation, saving and parameter counts.
- *forward*: a targeted linear becomes a :class:`FusedLinear`, ``cat_k(base(x)_k + adapter_k(x_k))`` with one
  ``base(x)`` on all rows; a head (modules trained in full) becomes a :class:`RoutedModule` applying config k's
  copy to slice k. Tied factors stay in each config's own ``AdapterBank``.
- *loss*: the replicas are the same batch, so the model's mean loss over K*B examples (or tokens) is
  ``(1/K) sum_k loss_k``; backpropagating ``K`` times it gives config k's parameters ``grad(loss_k)``, as the
  parameter sets are disjoint. Gradients are clipped per config (its own global norm); one AdamW with one
  parameter group per config equals K optimizers (AdamW is elementwise); one schedule; the data order is
  :func:`loralab.loop.train`'s (same generator and seed).
- *evaluation*: each config's own model, through the task's usual ``evaluate``; best epoch, predictions and
  ``adapter.safetensors`` as in a single run; one ``results.json`` per config in its own directory, with the
  single-run schema plus a ``fused`` entry (group size, what the timings mean).
- *checkpoints*: as a single run's (``trainer.checkpoint_every`` steps and every epoch), one per group,
  ``fused_checkpoint.pt`` in its first config's directory, named by the group's run ids; the same sweep run again
  resumes the group to the results of an uninterrupted one.

Equality holds up to float rounding (matmuls over K*B rows instead of B), and only **without dropout**: the fused
backbone draws dropout masks for K*B rows, so with dropout each config trains on different (equally valid) masks
than alone. Methods with training hooks (AdaLoRA, RoLoRA, RM-LoRA, SoRA), several phases or
``trainer.iterations`` > 1, and full fine-tuning (no adapter, nothing shared) cannot be fused: they are rejected
before any weights are loaded. The models must be batch-first (every targeted linear sees the batch rows first);
a model feeding a batch-independent tensor through a targeted linear (DeBERTa's relative positions through
``key_proj`` with targets A) fails with a clear error at the first step. With early stopping, a stopped config
is frozen (no gradient, no optimizer step) while the rest of its group trains on. A diverging config (non-finite
loss) stops its whole group.

Training losses: for sequence classification each config's ``train_loss`` is computed from its slice of the
logits, as transformers' heads compute it; for other task kinds the recorded ``train_loss`` is the group's mean
(``fused.train_loss`` says which). ``wall_time_s`` and ``train_time_s`` are the group's.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from loralab.adapters import AdapterLinear, adapter_layers, adapter_state_dict, count_parameters, load_adapter_state
from loralab.adapters.layer import LinearWrapper
from loralab.adapters.model import BANK_NAME
from loralab.checkpoint import (
    load_checkpoint,
    remove_checkpoints,
    rng_state,
    run_id,
    run_identity,
    save_checkpoint,
    set_rng_state,
)
from loralab.loop import adamw, lr_schedule, precision_mode, train_batches
from loralab.methods import Method
from loralab.models import load_tokenizer
from loralab.records import RESULTS_FILE, RUN_FILE, finished_result, result_record, save_best, write_json_atomic
from loralab.run import Plan, build, build_seeded, make_plan
from loralab.tasks import Evaluation, TaskData
from loralab.wandb_log import wandb_init

log = logging.getLogger(__name__)
FUSED_CHECKPOINT = "fused_checkpoint"  # a group's checkpoint (fused_checkpoint.pt), in its first config's directory
HOOKS = (
    "on_train_start", "extra_loss", "after_backward", "after_optimizer_step", "on_epoch_end", "on_best_epoch",
    "on_phase_end",
)  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# which configurations can be fused, and with which
def fusable_plan(cfg: DictConfig) -> Plan:
    """The run plan of ``cfg``, or a ValueError saying why it cannot be trained fused (no weights loaded)."""
    plan = make_plan(cfg)
    name = plan.method.name
    advice = "run it without hydra/launcher=fused"
    if cfg.get("dry_run", False) or cfg.get("eval_only", False):
        raise ValueError(f"dry_run=true and eval_only=true train nothing: {advice}")
    if plan.task.kind == "bare":
        raise ValueError("task=bare has no data to train on; it only serves dry_run=true parameter counts")
    hooks = [h for h in HOOKS if getattr(type(plan.method), h) is not getattr(Method, h)]
    if hooks or plan.method.phases != 1:
        raise ValueError(
            f"method {name} cannot be trained fused: it has training hooks ({', '.join(hooks) or 'phases'}) that "
            f"act on one model at a time; {advice}"
        )
    if plan.trainer.iterations != 1:
        raise ValueError(f"trainer.iterations={plan.trainer.iterations} restarts training: {advice}")
    if plan.trainer.eval_every:
        raise ValueError(
            f"trainer.eval_every={plan.trainer.eval_every}: fused groups evaluate once per epoch; {advice}"
        )
    precision_mode(plan.trainer)
    _, _, hit = build(plan, device="meta")  # adapter shapes and target patterns checked before loading anything
    if not hit:
        raise ValueError(
            f"method {name} adapts no module (it trains the backbone itself), so nothing is shared; {advice}"
        )
    return plan


def fusion_key(cfg: DictConfig) -> str:
    """Configs with the same key can be fused: everything but the ``method`` node (where ``rab`` lands) is equal."""
    rest = OmegaConf.to_container(cfg, resolve=True)
    rest.pop("method", None)
    return json.dumps(rest, sort_keys=True, default=str)


def group_configs(cfgs: Sequence[DictConfig], max_group: int | None = None) -> list[list[int]]:
    """Indices of ``cfgs`` in fusable groups (same :func:`fusion_key`), in order, at most ``max_group`` per group.

    Every config is checked with :func:`fusable_plan` first, so an unsupported one fails before anything runs. A
    config that matches no other forms a group of one (trained through the same code).
    """
    if max_group is not None and max_group < 1:
        raise ValueError(f"max_group must be >= 1 or null, got {max_group}")
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        fusable_plan(cfg)
        groups.setdefault(fusion_key(cfg), []).append(i)
    size = max_group or max(1, len(cfgs))
    return [members[s : s + size] for members in groups.values() for s in range(0, len(members), size)]


# --------------------------------------------------------------------------------------------------------------
# the fused model
@dataclass
class Routing:
    """What the fused modules need to know: the number of configs and the row count of the replicated batch."""

    groups: int
    rows: int = 0

    def check(self, where: str, x: torch.Tensor) -> None:
        if x.dim() == 0 or x.shape[0] != self.rows:
            raise RuntimeError(
                f"{where} received an input whose first dimension ({tuple(x.shape)}) is not the replicated batch "
                f"({self.rows} rows): this model feeds a batch-independent tensor through it, so configurations "
                "cannot be fused on it; run without hydra/launcher=fused, or choose other targets"
            )


class FusedLinear(LinearWrapper):
    """One frozen linear layer shared by K configs: ``base(x)`` on all rows, plus adapter k on slice k.

    ``adapters[k]`` is config k's :class:`AdapterLinear` (the module of its own model, trained in place), or None
    where config k does not adapt this layer.
    """

    def __init__(self, name: str, base: nn.Module, adapters: Sequence[AdapterLinear | None], routing: Routing) -> None:
        super().__init__()
        self.name, self.base, self.routing = name, base, routing
        self.slots = [None if a is None else str(k) for k, a in enumerate(adapters)]
        self.adapters = nn.ModuleDict({s: a for s, a in zip(self.slots, adapters, strict=True) if s is not None})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.routing.check(self.name, x)
        out = self.base(x)
        parts = zip(self.slots, x.chunk(self.routing.groups), out.chunk(self.routing.groups), strict=True)
        return torch.cat(
            [o if s is None else o + self.adapters[s].adapter_output(xk).to(o.dtype) for s, xk, o in parts]
        )


class RoutedModule(nn.Module):
    """K copies of a module trained in full (a task head): copy k gets slice k of every batch-sized argument."""

    def __init__(self, name: str, copies: Sequence[nn.Module], routing: Routing) -> None:
        super().__init__()
        self.name, self.copies, self.routing = name, nn.ModuleList(copies), routing

    def _split(self, value: Any) -> list[Any]:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == self.routing.rows:
            return list(value.chunk(self.routing.groups))
        return [value] * self.routing.groups

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        split_args = [self._split(a) for a in args]
        split_kwargs = {k: self._split(v) for k, v in kwargs.items()}
        tensors = [a for a in itertools.chain(args, kwargs.values()) if isinstance(a, torch.Tensor)]
        if tensors:
            self.routing.check(self.name, tensors[0])
        outs = [
            module(*(a[k] for a in split_args), **{n: v[k] for n, v in split_kwargs.items()})
            for k, module in enumerate(self.copies)
        ]
        return _concat(self.name, outs)


def _concat(name: str, outs: list[Any]) -> Any:
    first = outs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outs)
    if isinstance(first, tuple | list):
        return type(first)(_concat(name, list(parts)) for parts in zip(*outs, strict=True))
    if first is None:
        return None
    raise TypeError(f"{name}: cannot route a module returning {type(first).__name__}")


class FusedModel(nn.Module):
    """The shared backbone with fused layers and routed heads; ``forward(**batch)`` replicates the batch K times."""

    def __init__(self, backbone: nn.Module, banks: Sequence[nn.Module], routing: Routing) -> None:
        super().__init__()
        self.backbone, self.banks, self.routing = backbone, nn.ModuleList(banks), routing

    def forward(self, **batch: Any) -> Any:
        rows = {v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0}
        if len(rows) != 1:
            raise ValueError(f"batch tensors must share one batch size, got {sorted(rows)}")
        self.routing.rows = rows.pop() * self.routing.groups
        reps = self.routing.groups
        replicated = {
            k: v.repeat(reps, *[1] * (v.dim() - 1)) if isinstance(v, torch.Tensor) and v.dim() > 0 else v
            for k, v in batch.items()
        }
        return self.backbone(**replicated)


def _outermost(names: Sequence[str]) -> list[str]:
    return [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]


def _inside(name: str, roots: Sequence[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def _routed_names(model: nn.Module, plans: Sequence[Plan]) -> list[str]:
    """Modules trained in full by any config (heads, ``extra_trainable``), outermost only: routed per config."""
    patterns = {p for plan in plans for p in plan.method.trainable_modules(plan.heads)}
    names = [n for n, _ in model.named_modules() if n and any(re.fullmatch(p, n) for p in patterns)]
    return _outermost(names)


def _backbone_slots(model: nn.Module, routed: Sequence[str]) -> dict[str, tuple[nn.Module, str, bool]]:
    """The frozen backbone's tensors: name (an adapter's ``.base`` left out) -> (owner, attribute, is parameter).

    Adapter factors, tied banks and the routed modules are not backbone.
    """
    layers = adapter_layers(model)
    factor_ids = {id(p) for layer in layers.values() for p in layer.factors.values()}
    factor_ids |= {id(p) for p in getattr(model, BANK_NAME, nn.Module()).parameters()}
    slots = {}
    for mname, module in model.named_modules():
        if _inside(mname, routed):
            continue
        canonical = mname[: -len(".base")] if mname.endswith(".base") and mname[: -len(".base")] in layers else mname
        for attr, t in itertools.chain(module._parameters.items(), module._buffers.items()):
            if t is not None and id(t) not in factor_ids:
                slots[f"{canonical}.{attr}" if canonical else attr] = (module, attr, attr in module._parameters)
    return slots


def _share_backbone(model: nn.Module, reference: dict[str, torch.Tensor], routed: Sequence[str]) -> None:
    """Point ``model``'s frozen backbone tensors at ``reference``'s (config 0's), after checking they are equal."""
    slots = _backbone_slots(model, routed)
    if set(slots) != set(reference):
        diff = sorted(set(slots) ^ set(reference))[:5]
        raise ValueError(f"fused configs must build the same backbone; tensors differ in name: {diff}")
    for name, (module, attr, is_param) in slots.items():
        own, shared = getattr(module, attr), reference[name]
        if is_param and own.requires_grad:
            raise ValueError(f"{name} is trained in full outside the heads: it cannot be shared between configs")
        if own.shape != shared.shape or not torch.equal(own, shared):
            raise ValueError(
                f"fused configs must build the same frozen backbone, but {name} differs (same model, task and seed "
                "give the same backbone; does a method change the base weights?)"
            )
        (module._parameters if is_param else module._buffers)[attr] = shared


def _structural_clone(model: nn.Module) -> nn.Module:
    """A copy of the module tree that shares every parameter and buffer with ``model`` (no tensor is copied)."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def share_backbones(models: Sequence[nn.Module], plans: Sequence[Plan]) -> list[str]:
    """Point every model's frozen backbone tensors at ``models[0]``'s (checked equal first); returns the names of
    the routed modules (heads), which stay each model's own. Adapter factors and tied banks stay each model's own.
    """
    routed = _routed_names(models[0], plans)
    reference = {n: getattr(m, a) for n, (m, a, _) in _backbone_slots(models[0], routed).items()}
    for model in models[1:]:
        _share_backbone(model, reference, routed)
    return routed


def fuse(models: Sequence[nn.Module], targets: Sequence[Sequence[str]], routed: Sequence[str]) -> FusedModel:
    """The fused training model of ``models`` (single-run models after :func:`share_backbones`).

    Each model's adapters and heads are its own modules, shared with the fused model, so training the fused model
    trains every ``models[k]`` in place.
    """
    routing = Routing(len(models))
    skeleton = _structural_clone(models[0])
    for name in routed:
        _replace(skeleton, name, RoutedModule(name, [m.get_submodule(name) for m in models], routing))
    hits = [set(t) for t in targets]
    for name in dict.fromkeys(itertools.chain(*targets)):
        if _inside(name, routed):
            continue  # a targeted layer inside a head: each config's copy holds its own
        current = skeleton.get_submodule(name)
        base = current.base if isinstance(current, AdapterLinear) else current
        adapters = [m.get_submodule(name) if name in hit else None for m, hit in zip(models, hits, strict=True)]
        _replace(skeleton, name, FusedLinear(name, base, adapters, routing))
    if hasattr(skeleton, BANK_NAME):
        delattr(skeleton, BANK_NAME)
    fused = FusedModel(skeleton, [getattr(m, BANK_NAME) for m in models if hasattr(m, BANK_NAME)], routing)
    own = [{id(p) for p in m.parameters() if p.requires_grad} for m in models]
    trained = {id(p) for p in fused.parameters() if p.requires_grad}
    if sum(map(len, own)) != len(set().union(*own)) or trained != set().union(*own):
        raise ValueError(
            "these configs' trainable parameters are not each config's own adapters and heads (modules trained in "
            "full must be matched by the heads / extra_trainable patterns); run without hydra/launcher=fused"
        )
    return fused


# --------------------------------------------------------------------------------------------------------------
# training
@dataclass
class Member:
    """One configuration of a fused group: its plan, its own single-run model and its bookkeeping."""

    plan: Plan
    resolved: dict
    output_dir: Path
    model: nn.Module
    targets: list[str]
    weights_source: str
    counts: dict[str, int]
    params: list[nn.Parameter] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    best: dict | None = None
    stale: int = 0
    steps: int = 0
    running: bool = True


def _replica_losses(logits: torch.Tensor, labels: torch.Tensor, problem_type: str, groups: int) -> torch.Tensor:
    """Each replica's loss, as transformers' sequence-classification heads compute it (``problem_type`` is set
    by the model's forward)."""
    losses = []
    for z in logits.detach().float().chunk(groups):
        if problem_type == "regression":
            losses.append(F.mse_loss(z.squeeze(), labels.squeeze()) if z.shape[-1] == 1 else F.mse_loss(z, labels))
        elif problem_type == "single_label_classification":
            losses.append(F.cross_entropy(z.view(-1, z.shape[-1]), labels.view(-1)))
        else:
            losses.append(F.binary_cross_entropy_with_logits(z, labels))
    return torch.stack(losses)


def _on_epoch(member: Member, record: dict, evaluation: Evaluation) -> None:
    """Keep the best epoch (adapter file and predictions), as :func:`loralab.run.run` does."""
    member.epochs.append(record)
    if member.best is None or record[member.plan.task.main_metric] > member.best[member.plan.task.main_metric]:
        member.best = record
        save_best(member.plan, member.model, member.output_dir, record, evaluation)


def _group_id(members: Sequence[Member]) -> str:
    """A fused group's identity: its configs' run ids, in order (a checkpoint of another group is not resumed)."""
    return "fused:" + ",".join(run_id(m.resolved) for m in members)


def _save_group(members: Sequence[Member], progress: dict, optimizer, scheduler, epoch_generator: torch.Tensor) -> None:
    """A group checkpoint (``fused_checkpoint.pt`` in the first config's directory): every config's adapter, head
    and bookkeeping, the one optimizer and schedule, the data position and the random states."""
    state = {
        "run_id": _group_id(members),
        "progress": progress,
        "members": [
            {
                "model": adapter_state_dict(m.model),
                "epochs": m.epochs,
                "best": m.best,
                "stale": m.stale,
                "steps": m.steps,
                "running": m.running,
            }
            for m in members
        ],
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch_generator": epoch_generator,
        "rng": rng_state(),
    }
    save_checkpoint(members[0].output_dir, state, {"epoch": progress["epoch"], "step": progress["step"]},
                    stem=FUSED_CHECKPOINT)  # fmt: skip


def _resume_group(members: Sequence[Member]) -> dict[str, Any] | None:
    """Load the group's newest intact checkpoint into its members (None: there is none, or it is another group's)."""
    directory = members[0].output_dir
    state = load_checkpoint(directory, stem=FUSED_CHECKPOINT)
    if state is None:
        return None
    if state["run_id"] != _group_id(members):
        log.warning("ignoring %s: it belongs to another fused group", directory / f"{FUSED_CHECKPOINT}.pt")
        return None
    for m, saved in zip(members, state["members"], strict=True):
        load_adapter_state(m.model, saved["model"], f"fused checkpoint in {directory}")
        m.epochs, m.best, m.stale, m.steps, m.running = (saved[k] for k in ("epochs", "best", "stale", "steps",
                                                                             "running"))  # fmt: skip
    log.info("resuming fused group from %s: epoch %d, step %d", directory, state["progress"]["epoch"],
             state["progress"]["step"])  # fmt: skip
    return state


def train_fused(
    members: Sequence[Member], fused: FusedModel, data: TaskData, tokenizer: Any, accelerator: Accelerator
) -> int:
    """The training loop of :func:`loralab.loop.train` for K configs at once (one phase, no method hooks), with its
    checkpoints: every ``trainer.checkpoint_every`` optimizer steps and after every epoch, resumed from when the
    group is run again. Returns how many times it resumed (0 or 1)."""
    plan = members[0].plan
    tr, task, groups = plan.trainer, plan.runner, len(members)
    train_loader, gen = train_batches(plan, data, tokenizer)
    eval_sets = task.eval_sets(data, tokenizer)
    if not tr.resume:
        remove_checkpoints(members[0].output_dir, stem=FUSED_CHECKPOINT)
    state = _resume_group(members)
    for m in members:
        m.params = [p for p in m.model.parameters() if p.requires_grad]
    torch_optimizer = adamw([{"params": m.params} for m in members], tr.lr, tr.weight_decay)
    fused, optimizer, train_loader = accelerator.prepare(fused, torch_optimizer, train_loader)
    scheduler, total = lr_schedule(tr, torch_optimizer, len(train_loader))
    for m in members:
        m.model.to(accelerator.device)  # its own buffers (the shared tensors moved with the fused model)
    per_config = plan.task.kind == "sequence_classification"
    hf_config = accelerator.unwrap_model(fused).backbone.config
    progress = {"epoch": 1, "batches": 0, "step": 0, "losses": [], "train_time": 0.0}
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        gen.set_state(state["epoch_generator"])
        progress = state["progress"]
    resumed = int(state is not None)

    step = progress["step"]
    bar = tqdm(total=total, initial=step, desc=f"train x{groups}",
               disable=not tr.progress or not accelerator.is_main_process)  # fmt: skip
    fused.train()
    for epoch in range(progress["epoch"], tr.epochs + 1):
        epoch_generator, consumed = gen.get_state(), progress["batches"]
        batches = iter(train_loader)
        for _ in range(consumed):  # a resumed epoch: the same order, without the batches already trained on
            next(batches)
        if state is not None:
            set_rng_state(state["rng"])
            state = None
        losses, started = progress["losses"], time.time() - progress["train_time"]
        for batch in batches:
            with accelerator.accumulate(fused):
                out = fused(**batch)
                loss = out.loss
                replicas = (
                    _replica_losses(out.logits, batch["labels"], hf_config.problem_type, groups)
                    if per_config
                    else loss.detach().expand(groups)
                )
                if not torch.isfinite(loss):
                    bad = [str(m.output_dir) for m, v in zip(members, replicas, strict=True) if not torch.isfinite(v)]
                    raise FloatingPointError(
                        f"loss became {loss.item()} at step {step} (epoch {epoch}) in a fused group; diverged: "
                        f"{bad or 'unknown (the group mean)'}; stopping the group"
                    )
                accelerator.backward(loss * groups)
                if accelerator.sync_gradients:
                    for m in members:
                        if not m.running:  # early-stopped: frozen (AdamW skips parameters without a gradient)
                            for p in m.params:
                                p.grad = None
                        elif tr.max_grad_norm:
                            accelerator.clip_grad_norm_(m.params, tr.max_grad_norm)
                optimizer.step()  # accelerate's optimizer only steps when gradients are synchronised
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(replicas.tolist())
            consumed += 1
            if accelerator.sync_gradients:
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
                if step >= total:
                    break
                if tr.checkpoint_every and step % tr.checkpoint_every == 0:
                    progress = {"epoch": epoch, "batches": consumed, "step": step, "losses": losses,
                                "train_time": time.time() - started}  # fmt: skip
                    _save_group(members, progress, optimizer, scheduler, epoch_generator)
        train_time = time.time() - started
        fused.eval()
        for k, m in enumerate(members):
            if not m.running:
                continue
            m.model.eval()
            with accelerator.autocast():
                evaluation = task.evaluate(m.model, eval_sets, tokenizer, accelerator, tr.eval_batch_size)
            metrics = evaluation.metrics
            train_loss = float(np.mean([row[k] for row in losses]))
            record = {"phase": 0, "epoch": epoch, "step": step, "train_loss": train_loss, "train_time_s": train_time}
            record.update(metrics)
            improved = m.best is None or metrics[plan.task.main_metric] > m.best[plan.task.main_metric]
            m.stale = 0 if improved else m.stale + 1
            log.info("%s epoch %d: %s", m.output_dir.name, epoch, json.dumps(record))
            _on_epoch(m, record, evaluation)
            m.steps = step
            if tr.early_stopping_patience and m.stale >= tr.early_stopping_patience:
                m.running = False
        fused.train()
        progress = {"epoch": epoch + 1, "batches": 0, "step": step, "losses": [], "train_time": 0.0}
        finished = step >= total or not any(m.running for m in members)
        if finished:  # nothing left to train: a resumed group goes straight to its results
            progress["epoch"] = tr.epochs + 1
        _save_group(members, progress, optimizer, scheduler, gen.get_state())
        if finished:
            break
    bar.close()
    return resumed


def _log_wandb(member: Member) -> None:
    """W&B, after the fact: one run per config with its epochs (concurrent runs in one process are not used)."""
    wandb_run = wandb_init(member.plan, member.resolved, member.output_dir)
    if wandb_run is None:
        return
    for record in member.epochs:
        wandb_run.log(record, step=record["step"])
    wandb_run.summary.update({f"best/{k}": v for k, v in member.best.items()} | member.counts)
    wandb_run.finish()


def run_fused(cfgs: Sequence[DictConfig], output_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Train the configs as one fused group; writes each one's ``results.json`` (+ adapter) into its directory.

    The configs must differ only in their ``method`` node (:func:`fusion_key`). As :func:`loralab.run.run`, a
    config whose directory holds its finished result is not trained again (its result is returned), and a
    directory holding another run is an error. Returns the results in order.
    """
    if len(cfgs) != len(output_dirs) or not cfgs:
        raise ValueError(f"run_fused needs one output directory per config, got {len(cfgs)} and {len(output_dirs)}")
    plans = [fusable_plan(cfg) for cfg in cfgs]
    if len({fusion_key(cfg) for cfg in cfgs}) > 1:
        raise ValueError("run_fused trains configs that differ only in their method node; group them first")
    resolved = [OmegaConf.to_container(cfg, resolve=True) for cfg in cfgs]
    dirs = [Path(d) for d in output_dirs]
    results = [finished_result(d, run_id(r)) for d, r in zip(dirs, resolved, strict=True)]
    pending = [i for i, done in enumerate(results) if done is None]
    for i, done in enumerate(results):
        if done is not None:
            log.info("%s: already finished, not run again", dirs[i] / RESULTS_FILE)
    if pending:
        trained = _train_group([plans[i] for i in pending], [resolved[i] for i in pending], [dirs[i] for i in pending])
        for i, result in zip(pending, trained, strict=True):
            results[i] = result
    return results


def _train_group(plans: Sequence[Plan], resolved: Sequence[dict], dirs: Sequence[Path]) -> list[dict[str, Any]]:
    first = plans[0]
    mixed_precision = precision_mode(first.trainer)
    data = first.runner.load()  # data errors before any weights are loaded
    for r, d in zip(resolved, dirs, strict=True):
        d.mkdir(parents=True, exist_ok=True)
        write_json_atomic(d / RUN_FILE, {"run_id": run_id(r), "identity": run_identity(r)})
    start = time.time()
    tokenizer = None if first.runner.model_kind == "image_classification" else load_tokenizer(first.model)
    members: list[Member] = []
    routed: list[str] = []
    for plan, r, d in zip(plans, resolved, dirs, strict=True):
        model, weights_source, targets = build_seeded(plan, tokenizer)  # adapters and head as in its separate run
        counts = count_parameters(model)
        # the backbone is shared at once, so that at most two full backbones are held while building
        routed = share_backbones([members[0].model, model] if members else [model], plans)
        members.append(Member(plan, r, d, model, targets, weights_source, counts))
    fused = fuse([m.model for m in members], [m.targets for m in members], routed)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=first.trainer.grad_accum,
    )
    log.info("fused group of %d configs: %s", len(members), [str(m.output_dir) for m in members])
    resumed = train_fused(members, fused, data, tokenizer, accelerator)

    results = []
    for k, m in enumerate(members):
        history = {"epochs": m.epochs, "best": m.best, "steps": m.steps}
        result = result_record(m.plan, m.resolved, history, m.model, m.counts, m.targets, m.weights_source, data,
                               accelerator, start, resumed)  # fmt: skip
        result["fused"] = {
            "group_size": len(members),
            "index": k,
            "group": [str(x.output_dir) for x in members],
            "train_loss": "per_config" if m.plan.task.kind == "sequence_classification" else "group_mean",
            "timing": "wall_time_s and train_time_s are the whole group's",
        }
        write_json_atomic(m.output_dir / RESULTS_FILE, result)
        if not m.plan.trainer.keep_checkpoint:
            remove_checkpoints(m.output_dir)  # a single run's checkpoint left there
        _log_wandb(m)
        results.append(result)
    if not first.trainer.keep_checkpoint:  # only now: a group killed while writing its results resumes complete
        remove_checkpoints(members[0].output_dir, stem=FUSED_CHECKPOINT)
    return results
