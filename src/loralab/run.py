"""One run: compose config -> backbone + adapter -> train -> evaluate -> ``results.json`` (+ W&B).

The pieces live in their own modules: the training loop in :mod:`loralab.loop`, checkpoints in
:mod:`loralab.checkpoint`, what a run writes and reads back in :mod:`loralab.records`, W&B in :mod:`loralab.wandb_log`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf
from torch import nn

from loralab.adapters import adapter_state_dict, count_parameters, load_adapter_state
from loralab.checkpoint import Checkpoints, remove_checkpoints, run_identity
from loralab.config import LoggerConfig, TaskConfig, TrainerConfig
from loralab.loop import Progress, precision_mode, train
from loralab.methods import Method, MethodConfig, build_method
from loralab.models import (
    ModelConfig,
    build_model,
    head_modules,
    load_tokenizer,
    model_kind,
    resolve_targets,
    resolve_weights,
)
from loralab.records import RESULTS_FILE, RUN_FILE, identify, result_record, save_best, write_json_atomic
from loralab.tasks import Evaluation, Task, build_task
from loralab.tasks.generation import zero_shot_baseline
from loralab.wandb_log import wandb_init

log = logging.getLogger(__name__)


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


def build_seeded(plan: Plan, tokenizer) -> tuple[nn.Module, str, list[str]]:
    """The run's model as every entry point builds it: seeded with ``trainer.seed`` (same adapters and head), the
    tokenizer's pad token set where the model config has none."""
    set_seed(plan.trainer.seed)
    model, weights_source, targets = build(plan)
    if tokenizer is not None and getattr(model.config, "pad_token_id", 0) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, weights_source, targets


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


def run(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Run the composed config; writes ``results.json`` (and ``adapter.safetensors``) into ``output_dir``.

    A run that finds its own checkpoint in ``output_dir`` continues from it (``trainer.resume``); a finished run
    is not run again (its result is returned).
    """
    if cfg.get("preflight", False):  # resolve everything, train nothing (loralab.preflight)
        from loralab.preflight import run_preflight

        return run_preflight(cfg).facts
    plan = make_plan(cfg)
    if cfg.get("dry_run", False):
        info = dry_run(plan)
        print(json.dumps(info))
        return info
    if cfg.get("eval_only", False):  # evaluate a saved adapter, train nothing
        from loralab.evaluate import evaluate

        return evaluate(cfg, plan, output_dir)
    if plan.task.kind == "bare":
        raise ValueError("task=bare has no data to train on; it only serves dry_run=true parameter counts")
    output_dir, resolved, rid, done = identify(cfg, output_dir)
    if done is not None:
        return done

    mixed_precision = precision_mode(plan.trainer)
    if plan.trainer.iterations > 1 and plan.method.phases > 1:
        raise ValueError(
            f"{plan.method.name} runs {plan.method.phases} phases of its own: leave trainer.iterations at 1"
        )
    build(plan, device="meta")  # adapter shapes and target patterns checked before loading anything
    resolve_weights(plan.model)  # no weights to be had: an error before any data is read
    data = plan.runner.load()  # data errors before any weights are loaded
    tokenizer = None if plan.runner.model_kind == "image_classification" else load_tokenizer(plan.model)
    plan.runner.check_lengths(data, tokenizer)  # truncation that leaves nothing to train on, before weights
    accelerator = Accelerator(  # one process, or one of `accelerate launch`'s data-parallel processes
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=plan.trainer.grad_accum,
    )
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output_dir / RUN_FILE, {"run_id": rid, "identity": run_identity(resolved)})
        if not plan.trainer.resume:
            remove_checkpoints(output_dir)
    accelerator.wait_for_everyone()
    start = time.time()
    model, weights_source, targets = build_seeded(plan, tokenizer)
    counts = count_parameters(model)
    checkpoints = Checkpoints(output_dir, rid, plan.trainer.checkpoint_every, plan.method, accelerator)
    progress = Progress()
    checkpoints.resume(model, progress)
    wandb_run = wandb_init(plan, resolved, output_dir, checkpoints.wandb_id) if accelerator.is_main_process else None
    checkpoints.wandb_id = None if wandb_run is None else wandb_run.id
    log.info("%s on %s with %s: %s", plan.model.name, plan.task.name, plan.method.name, counts)
    zero_shot = zero_shot_baseline(plan.runner, model, data, tokenizer, accelerator, plan.trainer.eval_batch_size,
                                   output_dir, rid)  # fmt: skip

    restarts = plan.trainer.iterations > 1  # LoRA* / AdaLoRA*: each run starts from the best checkpoint so far

    def on_epoch(record: dict, evaluation: Evaluation) -> None:
        if wandb_run is not None:
            wandb_run.log(record, step=progress.steps_before + record["step"])
        if progress.best is None or record[plan.task.main_metric] > progress.best[plan.task.main_metric]:
            progress.best = record
            unwrapped = accelerator.unwrap_model(model)
            if restarts:
                checkpoints.best_adapter = {k: t.clone() for k, t in adapter_state_dict(unwrapped).items()}
            if accelerator.is_main_process:  # data-parallel: every process evaluates, the first one writes
                save_best(plan, unwrapped, output_dir, record, evaluation)
            plan.method.on_best_epoch(unwrapped)  # hook: the output adapters

    for phase in range(progress.phase, max(plan.method.phases, plan.trainer.iterations)):
        if not progress.phase_done:
            train(plan, model, data, tokenizer, accelerator, on_epoch, progress, checkpoints)
        checkpoints.restore_rng()  # a run resumed at the end of a phase continues with the phase's random state
        plan.method.on_phase_end(accelerator.unwrap_model(model), phase)  # hook: between phases
        if restarts:
            load_adapter_state(accelerator.unwrap_model(model), checkpoints.best_adapter)
        steps = progress.steps_before + progress.step
        progress = Progress(phase=phase + 1, steps_before=steps, history=progress.history, best=progress.best,
                            resumes=progress.resumes)  # fmt: skip
    history = {"epochs": progress.history, "best": progress.best, "steps": progress.steps_before}
    unwrapped = accelerator.unwrap_model(model)
    result = result_record(plan, resolved, history, unwrapped, counts, targets, weights_source, data, accelerator,
                           start, progress.resumes)  # fmt: skip
    if zero_shot is not None:
        result["zero_shot"] = zero_shot
    if accelerator.is_main_process:
        write_json_atomic(output_dir / RESULTS_FILE, result)
        if not plan.trainer.keep_checkpoint:
            remove_checkpoints(output_dir)
    if wandb_run is not None:
        wandb_run.summary.update({f"best/{k}": v for k, v in history["best"].items()} | counts)
        wandb_run.finish()
    return result
