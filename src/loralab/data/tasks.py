"""From a task config to tokenised training and evaluation sets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from loralab.data.glue import GLUE_TASKS, Example, GlueTask, load_glue
from loralab.models import hub_offline


@dataclass
class TaskData:
    spec: GlueTask
    train: list[Example]
    evals: dict[str, list[Example]]
    source: str


def _data_dir(task) -> str | None:
    """The glue_data folder to read, or None for the hub (``task.source``: auto, local or hub)."""
    if task.source not in ("auto", "local", "hub"):
        raise ValueError(f"task.source must be auto, local or hub, got {task.source!r}")
    exists = task.data_dir is not None and Path(task.data_dir).is_dir()
    if task.source == "hub" or (task.source == "auto" and not exists):
        if hub_offline():
            raise FileNotFoundError(
                f"task {task.name}: data folder {task.data_dir!r} does not exist and HF_HUB_OFFLINE is set, so the "
                "hub dataset cannot be used; set task.data_dir or LORALAB_GLUE_DIR to a glue_data folder"
            )
        return None
    return task.data_dir


def glue_spec(task) -> GlueTask:
    if task.glue_task not in GLUE_TASKS:
        raise ValueError(f"task {task.name}: unknown glue_task {task.glue_task!r}; known: {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[task.glue_task]


def load_task_data(task) -> TaskData:
    """Read (and check) every split the run needs, before any model is built."""
    spec = glue_spec(task)
    if task.main_metric not in spec.metrics:
        raise ValueError(f"task {task.name}: main_metric {task.main_metric!r} is not one of {spec.metrics}")
    data_dir = _data_dir(task)
    train = load_glue(spec.name, "train", data_dir)[: task.limit_train]
    evals = {s: load_glue(spec.name, s, data_dir)[: task.limit_eval] for s in spec.eval_splits}
    return TaskData(spec, train, evals, source=str(data_dir) if data_dir else "hub:nyu-mll/glue")


def encode(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[dict]:
    """Tokenise examples (truncating to ``max_length``) into feature dicts with a ``labels`` entry."""
    a = [e.text_a for e in examples]
    b = [e.text_b for e in examples] if examples and examples[0].text_b is not None else None
    enc = tokenizer(a, b, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{**{k: enc[k][i] for k in keys}, "labels": e.label} for i, e in enumerate(examples)]


class Collator:
    """Pads a list of features to the longest in the batch."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, regression: bool) -> None:
        self.tokenizer, self.label_dtype = tokenizer, torch.float32 if regression else torch.long

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        labels = torch.tensor([f["labels"] for f in features], dtype=self.label_dtype)
        batch = self.tokenizer.pad(
            [{k: v for k, v in f.items() if k != "labels"} for f in features], return_tensors="pt"
        )
        return {**batch, "labels": labels}
