"""What a run writes and reads back: ``results.json`` (:func:`result_record`), ``run.json`` (the run's identity,
written before training starts), the best epoch's predictions and adapter (:func:`save_best`), and whether a folder
already holds this run's finished result (:func:`finished_result`).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from omegaconf import DictConfig, OmegaConf
from torch import nn

from loralab.adapters import save_adapter
from loralab.checkpoint import run_id
from loralab.config import PROJECT_ROOT
from loralab.tasks import Evaluation, TaskData

if TYPE_CHECKING:
    from loralab.run import Plan

log = logging.getLogger(__name__)
RESULTS_FILE = "results.json"
RUN_FILE = "run.json"  # the run's identity, written before training starts


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
