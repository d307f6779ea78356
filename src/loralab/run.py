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
from loralab.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    remove_checkpoints,
    rng_state,
    run_id,
    run_identity,
    save_checkpoint,
    set_rng_state,
)
from loralab.config import PROJECT_ROOT, LoggerConfig, TaskConfig, TrainerConfig
from loralab.data.batching import LengthGroupedBatches, feature_lengths
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
from loralab.tasks import Evaluation, Task, TaskData, build_task
from loralab.tasks.generation import zero_shot_baseline

log = logging.getLogger(__name__)
RESULTS_FILE = "results.json"
RUN_FILE = "run.json"  # the run's identity, written before training starts
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


# --------------------------------------------------------------------------------------------------------------
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
    (tensors or parameter groups) with torch's fused kernel,
    one kernel over all tensors instead of a loop over them. The same update as the per-tensor loop up to float
    rounding (``tests/test_training.py``), ~5x faster on 146 LoRA tensors on a CPU, one point of the step's overhead
    over the frozen backbone (``results/bench/peft_compare_cpu.md``)."""
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


def save_best(plan: Plan, model: nn.Module, output_dir: Path, record: dict, evaluation: Evaluation) -> None:
    """A new best epoch: its adapter (``adapter.safetensors``) and predictions (``predictions_<split>.jsonl``)."""
    if plan.trainer.save_adapter and plan.method.saves_adapter:
        meta = {"phase": str(record["phase"]), "epoch": str(record["epoch"]), **plan.method.adapter_metadata(model)}
        save_adapter(model, output_dir / "adapter.safetensors", meta)
    write_predictions(output_dir, evaluation)


def write_predictions(output_dir: Path, evaluation: Evaluation) -> None:
    """The generated / extracted answers of an evaluation, one ``predictions_<split>.jsonl`` per split."""
    for split, rows in evaluation.outputs.items():
        with open(output_dir / f"predictions_{split}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)


def result_record(
    plan: Plan,
    resolved: dict,
    history: dict,
    model: nn.Module,
    counts: dict[str, int],
    targets: list[str],
    weights_source: str,
    data: TaskData,
    accelerator: Accelerator,
    start: float,
    resumed: int,
) -> dict[str, Any]:
    """The content of ``results.json``: what was run, on what, its metrics, and the run's circumstances."""
    return {
        "status": "finished",
        "config": resolved,
        "run_id": run_id(resolved),
        "model": plan.model.name,
        "task": plan.task.name,
        "method": plan.method.name,
        "main_metric": plan.task.main_metric,
        "metrics": history,
        "method_metrics": plan.method.final_metrics(model),
        "params": counts,
        "adapted_modules": len(targets),
        "weights_source": weights_source,
        "data_source": data.source,
        "data_sources": data.sources,
        "num_train_examples": len(data.train),
        "num_eval_examples": {k: len(v) for k, v in data.evals.items()},
        "data_stats": data.stats,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "resumed": resumed,
        "wall_time_s": round(time.time() - start, 3),
        "peak_memory_bytes": peak_memory_bytes(),
        "versions": versions(),
        "git_commit": git_commit(),
    }


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


class Checkpoints:
    """Saves and restores a run's state in its output directory (see :mod:`loralab.checkpoint`)."""

    def __init__(self, directory: Path, run_id: str, every: int | None, method: Method, accelerator: Accelerator):
        self.directory, self.run_id, self.every, self.method = directory, run_id, every, method
        self.accelerator = accelerator
        self.loaded: dict[str, Any] | None = None  # the checkpoint this process resumed from
        self.best_adapter: dict[str, torch.Tensor] | None = None  # iterated runs restart from it
        self.wandb_id: str | None = None

    def resume(self, model: nn.Module, progress: Progress) -> bool:
        """Load the newest intact checkpoint into ``model``, the method and ``progress``; False when there is none."""
        state = load_checkpoint(self.directory)
        if state is None:
            return False
        if state["run_id"] != self.run_id:
            raise ValueError(
                f"{self.directory / CHECKPOINT} belongs to run {state['run_id']}, not to this config ({self.run_id}); "
                "choose another output directory (hydra.run.dir=...)"
            )
        self.method.load_state_dict(state["method"])
        self.method.on_resume(model)
        load_adapter_state(model, state["model"], f"checkpoint {self.directory / CHECKPOINT}")
        for key, value in state["progress"].items():
            setattr(progress, key, value)
        progress.resumes += 1
        self.loaded, self.best_adapter, self.wandb_id = state, state["best_adapter"], state["wandb_id"]
        log.info("resuming %s: phase %d, epoch %d, step %d", self.directory, progress.phase, progress.epoch,
                 progress.step)  # fmt: skip
        return True

    def restore_loop(self, optimizer, scheduler, generator: torch.Generator) -> None:
        """Inside a phase: the optimizer, schedule, method and data order of the checkpoint resumed from."""
        state = self.loaded
        if state is None or state["progress"]["phase_done"]:
            return
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])  # after on_train_start, which starts a phase's state afresh
        generator.set_state(state["epoch_generator"])

    def restore_rng(self) -> None:
        """The random state at the moment of the checkpoint (dropout masks, RoLoRA's new components); once."""
        if self.loaded is not None:
            set_rng_state(self.loaded["rng"])
            self.loaded = None

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def save(self, model: nn.Module, progress: Progress, optimizer, scheduler, epoch_generator: torch.Tensor) -> None:
        if not self.accelerator.is_main_process:
            return
        state = {
            "run_id": self.run_id,
            "progress": vars(progress),
            "model": adapter_state_dict(self.accelerator.unwrap_model(model)),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "method": self.method.state_dict(),
            "epoch_generator": epoch_generator,  # the data order's generator at the start of the epoch
            "rng": rng_state(),
            "best_adapter": self.best_adapter,
            "wandb_id": self.wandb_id,
        }
        save_checkpoint(
            self.directory, state, {"phase": progress.phase, "epoch": progress.epoch, "step": progress.step}
        )


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


# --------------------------------------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    names = ("torch", "transformers", "accelerate", "hydra-core", "wandb", "datasets", "loralab")
    out = {"python": sys.version.split()[0]}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=PROJECT_ROOT, capture_output=True, text=True)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def peak_memory_bytes() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write then rename, so a reader never sees a half-written file (the temporary goes if writing fails)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2, default=str))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def identify(cfg: DictConfig, output_dir: str | Path) -> tuple[Path, dict, str, dict[str, Any] | None]:
    """The run's folder, resolved config, run id and, when the folder already holds this run's finished result,
    that result (see :func:`finished_result`)."""
    output_dir = Path(output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    rid = run_id(resolved)
    done = finished_result(output_dir, rid)
    if done is not None:
        log.info("%s: already finished, not run again", output_dir / RESULTS_FILE)
    return output_dir, resolved, rid, done


def finished_result(output_dir: Path, rid: str) -> dict[str, Any] | None:
    """This run's finished result in ``output_dir``, or None; another run's result or run there is an error.

    Only a finished ``results.json`` counts as a result (loralab writes no other; anything else is overwritten).
    """
    for name in (RESULTS_FILE, RUN_FILE):
        path = output_dir / name
        if not path.exists():
            continue
        try:
            found = json.loads(path.read_text())
            if name == RESULTS_FILE and found.get("status") != "finished":
                continue
            other = run_id(found["config"]) if name == RESULTS_FILE else found["run_id"]
        except (ValueError, KeyError, AttributeError) as e:
            raise ValueError(f"{path} is unreadable ({e!r}); move it away or choose another output directory") from e
        if other != rid:
            raise ValueError(
                f"{output_dir} already holds another run ({name}: run {other}, this config is run {rid}); "
                "choose another output directory (hydra.run.dir=...) or remove that one"
            )
        if name == RESULTS_FILE:
            return found
    return None


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


def wandb_init(plan: Plan, resolved: dict, output_dir: Path, wandb_id: str | None = None):
    """A W&B run for this config (None with ``logger.mode=disabled``); ``wandb_id`` continues an earlier one."""
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
        id=wandb_id,  # a resumed run continues its W&B run
        resume="allow" if wandb_id else None,
    )
