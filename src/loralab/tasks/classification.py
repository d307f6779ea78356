"""Sequence classification (GLUE): a classifier head on the encoder; metrics per GLUE task."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from loralab.config import TaskConfig
from loralab.data.batching import length_order
from loralab.data.glue import GLUE_TASKS, Example, hub_dataset, load_glue
from loralab.metrics import glue_metrics
from loralab.tasks.base import Evaluation, Task, TaskData, suffixed


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


class GlueClassification(Task):
    """GLUE tasks from the ``glue_data`` layout (``task.data_dir``) or the hub dataset ``nyu-mll/glue``."""

    model_kind = "sequence_classification"

    def __init__(self, cfg: TaskConfig) -> None:
        if cfg.subset not in GLUE_TASKS:
            raise ValueError(f"task {cfg.name}: unknown GLUE task {cfg.subset!r}; known: {sorted(GLUE_TASKS)}")
        self.spec = GLUE_TASKS[cfg.subset]
        self.metrics, self.num_labels = self.spec.metrics, self.spec.num_labels
        super().__init__(cfg)

    def read_local_splits(self, folder: Path, wanted: list[str]) -> dict[str, list[Any]]:
        """The wanted splits whose TSV file is in the ``glue_data`` folder."""
        return {
            s: load_glue(self.spec.name, s, folder)
            for s in wanted
            if (folder / self.spec.folder / f"{s}.tsv").is_file()
        }

    def read_hub_splits(self, wanted: list[str]) -> tuple[dict[str, list[Any]], str]:
        return {s: load_glue(self.spec.name, s, None) for s in wanted}, f"hub:{hub_dataset(self.spec.name)}"

    def check_lengths(self, data: TaskData, tokenizer: PreTrainedTokenizerBase) -> None:
        """Fail when ``max_seq_length`` leaves no room beyond the special tokens: no input token would survive."""
        pair = data.train[0].text_b is not None
        specials = tokenizer.num_special_tokens_to_add(pair=pair)
        if self.cfg.max_seq_length <= specials:
            raise ValueError(
                f"task {self.cfg.name}: task.max_seq_length={self.cfg.max_seq_length} leaves no room for text after "
                f"the {specials} special tokens of a {'sentence pair' if pair else 'sentence'}: all "
                f"{len(data.train)} training examples would be truncated to nothing; raise task.max_seq_length "
                f"above {specials}"
            )

    def train_features(self, data: TaskData, tokenizer: PreTrainedTokenizerBase) -> list[dict]:
        self.check_lengths(data, tokenizer)
        return encode(data.train, tokenizer, self.cfg.max_seq_length)

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Collator:
        return Collator(tokenizer, self.spec.is_regression)

    def eval_sets(self, data: TaskData, tokenizer: PreTrainedTokenizerBase) -> dict[str, list[dict]]:
        return {s: encode(ex, tokenizer, self.cfg.max_seq_length) for s, ex in data.evals.items()}

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        eval_sets: dict[str, list[dict]],
        tokenizer: PreTrainedTokenizerBase,
        accelerator: Accelerator,
        batch_size: int,
    ) -> Evaluation:
        out: dict[str, float] = {}
        for i, (split, features) in enumerate(eval_sets.items()):
            preds, labels = [], []
            ordered = [features[j] for j in length_order(features)]  # less padding; metrics ignore the order
            for batch in DataLoader(ordered, batch_size, collate_fn=self.collator(tokenizer)):
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                logits = model(**batch).logits.float()
                preds.append(logits.squeeze(-1) if self.spec.is_regression else logits.argmax(-1))
                labels.append(batch["labels"])
            metrics = glue_metrics(self.spec.name, torch.cat(preds).cpu().numpy(), torch.cat(labels).cpu().numpy())
            out.update(suffixed(i, split, metrics))
        return Evaluation(out)
