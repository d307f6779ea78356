"""The training loop of one run, with what it is built from (precision, batches, optimizer, schedule).

The loop is written out in :func:`train` with the method's hook points marked, so a reader can hold it in their
head: extra loss terms, gradient transforms after backward, steps after the optimizer step, epoch ends.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from loralab.config import TrainerConfig
from loralab.data.batching import LengthGroupedBatches, feature_lengths
from loralab.tasks import TaskData

if TYPE_CHECKING:
    from loralab.checkpoint import Checkpoints
    from loralab.run import Plan

log = logging.getLogger(__name__)
SCHEDULES = {"linear": get_linear_schedule_with_warmup, "cosine": get_cosine_schedule_with_warmup}


def precision_mode(trainer: TrainerConfig) -> str:
    """Accelerate's mixed-precision mode; also checks the trainer settings before anything is built."""
    if trainer.schedule not in SCHEDULES:
        raise ValueError(f"trainer.schedule must be one of {sorted(SCHEDULES)}, got {trainer.schedule!r}")
    if trainer.precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"trainer.precision must be auto, bf16 or fp32, got {trainer.precision!r}")
    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if trainer.precision == "bf16" and not gpu_bf16:
        raise ValueError("trainer.precision=bf16 needs a GPU with bf16 support; use auto or fp32")
    return "bf16" if trainer.precision == "bf16" or (trainer.precision == "auto" and gpu_bf16) else "no"


def train_batches(plan: Plan, data: TaskData, tokenizer) -> tuple[DataLoader, torch.Generator]:
    """The training batches in the run's order: shuffled by a generator seeded with ``trainer.seed`` (with
    ``trainer.group_by_length``: batches of similar length, :class:`LengthGroupedBatches`)."""
    gen = torch.Generator().manual_seed(plan.trainer.seed)
    features, collate = plan.runner.train_features(data, tokenizer), plan.runner.collator(tokenizer)
    if plan.trainer.group_by_length:
        batches = LengthGroupedBatches(feature_lengths(features), plan.trainer.batch_size, gen)
        return DataLoader(features, batch_sampler=batches, collate_fn=collate), gen
    return DataLoader(features, plan.trainer.batch_size, shuffle=True, collate_fn=collate, generator=gen), gen


def adamw(params: list, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """The optimizer of every loop (and of bench/peft_compare.py's steps, for every library): AdamW over ``params``
    (tensors or parameter groups) with torch's fused kernel, one kernel over all tensors instead of a loop over them.
    The same update as the per-tensor loop up to float rounding (``tests/test_speed.py``); its share of a LoRA step
    is in ``results/bench/peft_compare_cpu.md`` (the overhead's breakdown)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def lr_schedule(tr: TrainerConfig, optimizer: torch.optim.Optimizer, batches_per_epoch: int) -> tuple[Any, int]:
    """The learning-rate schedule and the number of optimizer steps it spans.

    ``batches_per_epoch`` is what this process sees (after ``accelerator.prepare``: with N data-parallel processes
    each takes every N-th batch), so the schedule covers the steps that happen. It is stepped once per optimizer
    step by the loop, not handed to accelerate (which would step it N times per step).
    """
    steps_per_epoch = math.ceil(batches_per_epoch / tr.grad_accum)
    total = min(tr.max_steps or sys.maxsize, steps_per_epoch * tr.epochs)
    warmup = tr.warmup_steps if tr.warmup_steps is not None else int(tr.warmup_ratio * total)
    return SCHEDULES[tr.schedule](optimizer, warmup, total), total


@dataclass
class Progress:
    """Where a run stands: everything besides tensors that a checkpoint must hold to continue exactly."""

    phase: int = 0
    epoch: int = 1  # the epoch in progress (1-based)
    batches: int = 0  # batches of that epoch already consumed
    step: int = 0  # optimizer steps of this phase
    losses: list[float] = field(default_factory=list)  # of the epoch in progress
    train_time: float = 0.0  # of the epoch in progress
    best_value: float = -math.inf  # of this phase (early stopping)
    stale: int = 0
    phase_done: bool = False
    steps_before: int = 0  # optimizer steps of the finished phases (W&B needs one increasing step)
    history: list[dict] = field(default_factory=list)  # epoch records of all phases
    best: dict | None = None  # the best epoch record over all phases
    resumes: int = 0


def train(
    plan: Plan,
    model: nn.Module,
    data: TaskData,
    tokenizer,
    accelerator: Accelerator,
    on_epoch,
    progress: Progress,
    checkpoints: Checkpoints,
) -> None:
    """The training loop of one phase, from wherever ``progress`` stands (a resumed run skips the batches already
    consumed). ``on_epoch(record, evaluation)`` is called after each epoch's evaluation; a checkpoint is written
    every ``trainer.checkpoint_every`` optimizer steps and after every epoch."""
    tr, method, task = plan.trainer, plan.method, plan.runner
    train_loader, gen = train_batches(plan, data, tokenizer)
    eval_sets = task.eval_sets(data, tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    torch_optimizer = adamw(params, tr.lr, tr.weight_decay)
    model, optimizer, train_loader = accelerator.prepare(model, torch_optimizer, train_loader)
    scheduler, total = lr_schedule(tr, torch_optimizer, len(train_loader))
    method.on_train_start(model, optimizer, total)  # hook: before the first step
    checkpoints.restore_loop(optimizer, scheduler, gen)

    p = progress
    bar = tqdm(total=total, initial=p.step, desc="train", disable=not tr.progress or not accelerator.is_main_process)

    def evaluate(train_time: float) -> bool:
        """Evaluate now, record it (``on_epoch``) and count it for early stopping; returns whether to stop."""
        model.eval()
        evaluation = task.evaluate(model, eval_sets, tokenizer, accelerator, tr.eval_batch_size)
        model.train()
        metrics = evaluation.metrics
        record = {
            "phase": p.phase,
            "epoch": p.epoch,
            "step": p.step,
            "train_loss": accelerator.reduce(torch.tensor(np.mean(p.losses)), "mean").item(),  # over processes
            "train_time_s": train_time,
            **metrics,
        }
        p.history.append(record)
        value = metrics[plan.task.main_metric]
        p.best_value, p.stale = (value, 0) if value > p.best_value else (p.best_value, p.stale + 1)  # early stopping
        log.info("epoch %d, step %d: %s", p.epoch, p.step, json.dumps(record))
        on_epoch(record, evaluation)
        return bool(tr.early_stopping_patience and p.stale >= tr.early_stopping_patience)

    model.train()
    for epoch in range(p.epoch, tr.epochs + 1):
        p.epoch, epoch_generator = epoch, gen.get_state()
        stop, evaluated_at = False, None
        batches = iter(train_loader)
        for _ in range(p.batches):  # a resumed epoch: the same order, without the batches already trained on
            next(batches)
        checkpoints.restore_rng()
        started = time.time() - p.train_time
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                extra = method.extra_loss(model, p.step)  # hook: extra loss terms
                if extra is not None:
                    loss = loss + extra
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss became {loss.item()} at step {p.step} (epoch {epoch}); stopping. The last good "
                        f"checkpoint stays in {checkpoints.directory} (lower trainer.lr or check the data)"
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    method.after_backward(model, p.step)  # hook: gradient transforms
                    if tr.max_grad_norm:
                        accelerator.clip_grad_norm_(params, tr.max_grad_norm)
                optimizer.step()  # accelerate's optimizer only steps when gradients are synchronised
                if accelerator.sync_gradients:
                    scheduler.step()
            p.losses.append(loss.item())
            p.batches += 1
            if accelerator.sync_gradients:
                method.after_optimizer_step(model, p.step)  # hook: after the optimizer step, gradients still there
                optimizer.zero_grad(set_to_none=True)
                p.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(p.losses[-20:]):.4f}")
                if p.step >= total:
                    break
                if tr.eval_every and p.step % tr.eval_every == 0:  # step-based cadence (else once per epoch)
                    stop, evaluated_at = evaluate(time.time() - started), p.step
                    p.losses = []
                    if stop:
                        break
                if checkpoints.due(p.step):
                    p.train_time = time.time() - started
                    checkpoints.save(model, p, optimizer, scheduler, epoch_generator)
        last = p.step >= total or epoch == tr.epochs
        if not stop and (not tr.eval_every or (last and evaluated_at != p.step)):  # each epoch, or the final one
            stop = evaluate(time.time() - started)
        method.on_epoch_end(model, epoch)  # hook: epoch boundary
        p.phase_done = bool(last or stop)
        p.epoch, p.batches, p.losses, p.train_time = epoch + 1, 0, [], 0.0
        checkpoints.save(model, p, optimizer, scheduler, gen.get_state())
        if p.phase_done:
            break
    bar.close()
