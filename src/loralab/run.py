"""One run: compose config -> backbone + adapter -> train -> evaluate -> ``results.json`` (+ W&B).

The training loop is written out in :func:`train` with the method's hook points marked, so a reader can hold it
in their head: extra loss terms, gradient transforms after backward, steps after the optimizer step, epoch ends.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from loralab.adapters import adapter_state_dict, count_parameters, load_adapter_state, save_adapter
from loralab.config import PROJECT_ROOT, LoggerConfig, TaskConfig, TrainerConfig
from loralab.methods import Method, MethodConfig, build_method
from loralab.models import ModelConfig, build_model, head_modules, load_tokenizer, model_kind, resolve_targets
from loralab.tasks import Evaluation, Task, TaskData, build_task

log = logging.getLogger(__name__)
RESULTS_FILE = "results.json"
SCHEDULES = {"linear": get_linear_schedule_with_warmup, "cosine": get_cosine_schedule_with_warmup}


@dataclass
class Plan:
    """Everything a run needs, checked before any weights or data are loaded."""

    model: ModelConfig
    task: TaskConfig
    method: Method
    trainer: TrainerConfig
    logger: LoggerConfig
    runner: Task | None = None  # the task's data and evaluation code (None for task=bare)
    targets: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)


def make_plan(cfg: DictConfig) -> Plan:
    method_cfg: MethodConfig = OmegaConf.to_object(cfg.method)
    model_cfg: ModelConfig = OmegaConf.to_object(cfg.model)
    task_cfg: TaskConfig = OmegaConf.to_object(cfg.task)
    method = build_method(method_cfg)
    runner = build_task(task_cfg)
    targets = resolve_targets(model_cfg, method_cfg.targets, method_cfg.target_modules)
    heads = head_modules(model_cfg, model_kind(model_cfg, task_cfg.kind))
    trainer, logger = OmegaConf.to_object(cfg.trainer), OmegaConf.to_object(cfg.logger)
    return Plan(model_cfg, task_cfg, method, trainer, logger, runner, targets, heads)


def build(plan: Plan, device: str = "cpu") -> tuple[nn.Module, str, list[str]]:
    """Backbone with the method attached; ``device="meta"`` builds it without weights."""
    kind = model_kind(plan.model, plan.task.kind)
    model, source = build_model(
        plan.model, kind, None if plan.runner is None else plan.runner.num_labels, device=device
    )
    hit = plan.method.attach(model, plan.targets, plan.heads)
    return model, source, hit


def dry_run(plan: Plan) -> dict[str, Any]:
    """Parameter counts on the meta device (no weights, no data)."""
    model, _, hit = build(plan, device="meta")
    return {
        "model": plan.model.name,
        "task": plan.task.name,
        "method": plan.method.name,
        "adapted_modules": len(hit),
        **count_parameters(model),
    }


# --------------------------------------------------------------------------------------------------------------
def _precision(trainer: TrainerConfig) -> str:
    """Accelerate's mixed-precision mode; also checks the trainer settings before anything is built."""
    if trainer.schedule not in SCHEDULES:
        raise ValueError(f"trainer.schedule must be one of {sorted(SCHEDULES)}, got {trainer.schedule!r}")
    if trainer.precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"trainer.precision must be auto, bf16 or fp32, got {trainer.precision!r}")
    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if trainer.precision == "bf16" and not gpu_bf16:
        raise ValueError("trainer.precision=bf16 needs a GPU with bf16 support; use auto or fp32")
    return "bf16" if trainer.precision == "bf16" or (trainer.precision == "auto" and gpu_bf16) else "no"


def train(
    plan: Plan, model: nn.Module, data: TaskData, tokenizer, accelerator: Accelerator, on_epoch, phase: int = 0
) -> dict:
    """The training loop (one phase). ``on_epoch(record, evaluation)`` is called after each epoch's evaluation."""
    tr, method, task = plan.trainer, plan.method, plan.runner
    gen = torch.Generator().manual_seed(tr.seed)
    train_loader = DataLoader(
        task.train_features(data, tokenizer),
        tr.batch_size,
        shuffle=True,
        collate_fn=task.collator(tokenizer),
        generator=gen,
    )
    eval_sets = task.eval_sets(data, tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tr.lr, weight_decay=tr.weight_decay)
    steps_per_epoch = math.ceil(len(train_loader) / tr.grad_accum)
    total = min(tr.max_steps or sys.maxsize, steps_per_epoch * tr.epochs)
    warmup = tr.warmup_steps if tr.warmup_steps is not None else int(tr.warmup_ratio * total)
    scheduler = SCHEDULES[tr.schedule](optimizer, warmup, total)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    method.on_train_start(model, optimizer, total)  # hook: before the first step

    step, best_value, stale, history = 0, -math.inf, 0, []
    bar = tqdm(total=total, desc="train", disable=not tr.progress or not accelerator.is_main_process)
    model.train()
    for epoch in range(1, tr.epochs + 1):
        losses, started = [], time.time()
        for batch in train_loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                extra = method.extra_loss(model, step)  # hook: extra loss terms
                if extra is not None:
                    loss = loss + extra
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at step {step} (epoch {epoch}); stopping")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    method.after_backward(model, step)  # hook: gradient transforms
                    if tr.max_grad_norm:
                        accelerator.clip_grad_norm_(params, tr.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if accelerator.sync_gradients:
                method.after_optimizer_step(model, step)  # hook: after the optimizer step
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
                if step >= total:
                    break
        train_time = time.time() - started
        model.eval()
        evaluation = task.evaluate(model, eval_sets, tokenizer, accelerator, tr.eval_batch_size)
        model.train()
        metrics = evaluation.metrics
        record = {
            "phase": phase,
            "epoch": epoch,
            "step": step,
            "train_loss": float(np.mean(losses)),
            "train_time_s": train_time,
            **metrics,
        }
        history.append(record)
        value = metrics[plan.task.main_metric]
        best_value, stale = (value, 0) if value > best_value else (best_value, stale + 1)  # for early stopping
        log.info("epoch %d: %s", epoch, json.dumps(record))
        on_epoch(record, evaluation)
        method.on_epoch_end(model, epoch)  # hook: epoch boundary
        if step >= total or (tr.early_stopping_patience and stale >= tr.early_stopping_patience):
            break
    bar.close()
    return {"epochs": history, "steps": step}


# --------------------------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    names = ("torch", "transformers", "accelerate", "hydra-core", "wandb", "datasets", "loralab")
    out = {"python": sys.version.split()[0]}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def _git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=PROJECT_ROOT, capture_output=True, text=True)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _peak_memory_bytes() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write then rename, so a reader never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def run(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Run the composed config; writes ``results.json`` (and ``adapter.safetensors``) into ``output_dir``."""
    plan = make_plan(cfg)
    if cfg.get("dry_run", False):
        info = dry_run(plan)
        print(json.dumps(info))
        return info
    if plan.task.kind == "bare":
        raise ValueError("task=bare has no data to train on; it only serves dry_run=true parameter counts")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)

    mixed_precision = _precision(plan.trainer)
    if plan.trainer.iterations > 1 and plan.method.phases > 1:
        raise ValueError(
            f"{plan.method.name} runs {plan.method.phases} phases of its own: leave trainer.iterations at 1"
        )
    build(plan, device="meta")  # adapter shapes and target patterns checked before loading anything
    data = plan.runner.load()  # data errors before any weights are loaded
    start = time.time()
    set_seed(plan.trainer.seed)
    tokenizer = None if plan.runner.model_kind == "image_classification" else load_tokenizer(plan.model)
    model, weights_source, targets = build(plan)
    if tokenizer is not None and getattr(model.config, "pad_token_id", 0) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    counts = count_parameters(model)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=plan.trainer.grad_accum,
    )
    wandb_run = _wandb_init(plan, resolved, output_dir)
    log.info("%s on %s with %s: %s", plan.model.name, plan.task.name, plan.method.name, counts)

    restarts = plan.trainer.iterations > 1  # LoRA* / AdaLoRA*: each run starts from the best checkpoint so far
    best: dict[str, Any] = {"record": None, "adapter": None}  # the best epoch over all phases
    steps_before = 0  # optimizer steps of the finished phases (W&B needs one increasing step)

    def on_epoch(record: dict, evaluation: Evaluation) -> None:
        if wandb_run is not None:
            wandb_run.log(record, step=steps_before + record["step"])
        if best["record"] is None or record[plan.task.main_metric] > best["record"][plan.task.main_metric]:
            best["record"] = record
            unwrapped = accelerator.unwrap_model(model)
            if restarts:
                best["adapter"] = {k: t.clone() for k, t in adapter_state_dict(unwrapped).items()}
            if plan.trainer.save_adapter and plan.method.saves_adapter:
                meta = {"phase": str(record["phase"]), "epoch": str(record["epoch"])}
                save_adapter(unwrapped, output_dir / "adapter.safetensors", meta)
            for split, rows in evaluation.outputs.items():  # generated / extracted answers of the best epoch
                with open(output_dir / f"predictions_{split}.jsonl", "w") as f:
                    f.writelines(json.dumps(row) + "\n" for row in rows)

    epochs = []
    for phase in range(max(plan.method.phases, plan.trainer.iterations)):
        finished = train(plan, model, data, tokenizer, accelerator, on_epoch, phase)
        epochs += finished["epochs"]
        steps_before += finished["steps"]
        plan.method.on_phase_end(accelerator.unwrap_model(model), phase)  # hook: between phases
        if restarts:
            load_adapter_state(accelerator.unwrap_model(model), best["adapter"])
    history = {"epochs": epochs, "best": best["record"], "steps": steps_before}
    method_metrics = plan.method.final_metrics(accelerator.unwrap_model(model))
    result = {
        "status": "finished",
        "config": resolved,
        "model": plan.model.name,
        "task": plan.task.name,
        "method": plan.method.name,
        "main_metric": plan.task.main_metric,
        "metrics": history,
        "method_metrics": method_metrics,
        "params": counts,
        "adapted_modules": len(targets),
        "weights_source": weights_source,
        "data_source": data.source,
        "num_train_examples": len(data.train),
        "num_eval_examples": {k: len(v) for k, v in data.evals.items()},
        "data_stats": data.stats,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "wall_time_s": round(time.time() - start, 3),
        "peak_memory_bytes": _peak_memory_bytes(),
        "versions": _versions(),
        "git_commit": _git_commit(),
    }
    write_json_atomic(output_dir / RESULTS_FILE, result)
    if wandb_run is not None:
        wandb_run.summary.update({f"best/{k}": v for k, v in history["best"].items()} | counts)
        wandb_run.finish()
    return result


def _wandb_init(plan: Plan, resolved: dict, output_dir: Path):
    if plan.logger.mode == "disabled":
        return None
    import wandb

    return wandb.init(
        project=plan.logger.project,
        group=plan.logger.group or plan.task.name,
        job_type=plan.logger.job_type or plan.method.name,
        config=resolved,
        mode=plan.logger.mode,
        dir=str(output_dir),
        name=plan.logger.name or f"{plan.model.name}-{plan.task.name}-{plan.method.name}",
    )
