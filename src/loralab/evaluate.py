"""Evaluate a saved adapter without training: the run's own overrides plus ``eval_only=true adapter=<path>``.

    python train.py experiment=rte_minilm eval_only=true adapter=outputs/minilm-l6/glue/rte/lora_mini/<run id>

builds the backbone and the method exactly as training did, loads ``adapter.safetensors`` (the file, or the one in a
run folder) and evaluates the task's eval splits once. The run folder gets a ``results.json`` in the training
run's schema (one "epoch" 0 with the metrics; ``eval_only`` says which file was evaluated, its SHA-256 and the
epoch it was saved at) and ``predictions_<split>.jsonl`` for tasks with generated or extracted answers. The file's
metadata reshapes the adapters first where a fresh build differs (RoLoRA's per-module ranks) and is checked
against the method config (frozen seeded factors, VeRA's and Tied-LoRA's A/B, are regenerated from it).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from omegaconf import DictConfig
from torch import nn

from loralab.adapters import count_parameters, load_adapter, read_adapter_metadata
from loralab.checkpoint import sha256_file
from loralab.loop import precision_mode
from loralab.methods import Method
from loralab.models import load_tokenizer
from loralab.records import RESULTS_FILE, identify, result_record, write_json_atomic, write_predictions
from loralab.run import Plan, build, build_seeded

log = logging.getLogger(__name__)
ADAPTER_FILE = "adapter.safetensors"


def adapter_path(path: str | Path | None) -> Path:
    """``path`` itself (a ``.safetensors`` file) or ``<path>/adapter.safetensors`` (a run folder); checked to exist."""
    if not path:
        raise ValueError("eval_only=true needs adapter=<adapter.safetensors or the run folder holding it>")
    path = Path(path)
    file = path / ADAPTER_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"adapter {file} does not exist (adapter= takes an adapter.safetensors file or a run folder holding one; "
            "a run writes it at its best epoch unless trainer.save_adapter=false)"
        )
    return file


def load_method_adapter(method: Method, model: nn.Module, path: str | Path) -> dict[str, str]:
    """Load an adapter file written by a run of ``method`` into ``model`` (built with ``method`` attached): the
    method checks and applies the file's metadata first (RoLoRA's ranks). Returns the metadata."""
    metadata = read_adapter_metadata(path)
    method.prepare_adapter(model, metadata)
    load_adapter(model, path)
    return metadata


def build_with_adapter(plan: Plan, path: Path, tokenizer: Any) -> tuple[nn.Module, str, list[str], dict[str, str]]:
    """The run's model as training built it (same seed: same random head and random-weight backbone) with the
    adapter file loaded; returns it with its weights source, adapted modules and the file's metadata."""
    model, weights_source, targets = build_seeded(plan, tokenizer)
    return model, weights_source, targets, load_method_adapter(plan.method, model, path)


def evaluate(cfg: DictConfig, plan: Plan, output_dir: str | Path) -> dict[str, Any]:
    """Evaluate ``cfg.adapter`` on the task's eval splits; writes and returns ``results.json``'s content."""
    if plan.task.kind == "bare":
        raise ValueError("task=bare has no eval splits; eval_only needs a task with data")
    if not plan.method.saves_adapter:
        raise ValueError(f"method {plan.method.name} saves no adapter file, so there is nothing to evaluate")
    path = adapter_path(cfg.get("adapter"))
    output_dir, resolved, _, done = identify(cfg, output_dir)
    if done is not None:
        return done

    mixed_precision = precision_mode(plan.trainer)
    build(plan, device="meta")  # adapter shapes and target patterns checked before loading anything
    data = plan.runner.load()
    tokenizer = None if plan.runner.model_kind == "image_classification" else load_tokenizer(plan.model)
    plan.runner.check_lengths(data, tokenizer)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision)
    start = time.time()
    model, weights_source, targets, metadata = build_with_adapter(plan, path, tokenizer)
    counts = count_parameters(model)
    model = accelerator.prepare(model)
    model.eval()
    eval_sets = plan.runner.eval_sets(data, tokenizer)
    evaluation = plan.runner.evaluate(model, eval_sets, tokenizer, accelerator, plan.trainer.eval_batch_size)
    record = {"phase": 0, "epoch": 0, "step": 0, **evaluation.metrics}
    history = {"epochs": [record], "best": record, "steps": 0}
    unwrapped = accelerator.unwrap_model(model)
    result = result_record(plan, resolved, history, unwrapped, counts, targets, weights_source, data, accelerator,
                           start, 0)  # fmt: skip
    result["eval_only"] = {
        "adapter": str(path.resolve()),
        "adapter_sha256": sha256_file(path),
        "saved_at": {k: metadata[k] for k in ("phase", "epoch") if k in metadata},
    }
    log.info("eval_only %s: %s", path, evaluation.metrics)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_predictions(output_dir, evaluation)
        write_json_atomic(output_dir / RESULTS_FILE, result)
    return result
