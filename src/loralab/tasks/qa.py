"""Extractive question answering (SQuAD v1.1 / v2.0): a start/end span head on an encoder (DeBERTa-v3) or GPT-2.

Features follow the standard recipe: question and context tokenised together, the context cut into windows of
``task.max_seq_length`` tokens overlapping by ``task.doc_stride``, offsets kept to map spans back to the text.
Prediction: over each question's windows, the best-scoring span (start logit + end logit) among the
``n_best = 20`` top starts and ends, at most ``task.max_answer_length`` tokens. SQuAD v2.0 (``subset: v2``):
predict no answer when the best null score (start and end on the first token) exceeds the best span's score by
more than ``task.null_threshold``. Scored by the official v1.1 / v2.0 rules (``loralab.text_metrics``).

Offline only SQuAD v1.1 dev exists: ``task.protocol=dev_by_article`` splits it by article into train and eval
(recorded in the result's ``data_source``); it is never the default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from transformers import PreTrainedTokenizerBase

from loralab.config import TaskConfig
from loralab.tasks.base import Evaluation, Task, TaskData, suffixed
from loralab.tasks.generation import _pad
from loralab.text_metrics import squad_v1, squad_v2

N_BEST = 20


class ExtractiveQA(Task):
    """SQuAD with a span head (see the module docstring)."""

    model_kind = "question_answering"

    def __init__(self, cfg: TaskConfig) -> None:
        if cfg.subset not in ("v1", "v2"):
            raise ValueError(f"task {cfg.name}: SQuAD subset must be v1 or v2, got {cfg.subset!r}")
        self.metrics = ("exact_match", "f1") if cfg.subset == "v1" else ("exact", "f1")
        if cfg.doc_stride >= cfg.max_seq_length:
            raise ValueError(
                f"task {cfg.name}: doc_stride {cfg.doc_stride} must be smaller than max_seq_length {cfg.max_seq_length}"
            )
        super().__init__(cfg)

    def check_lengths(self, data: TaskData, tokenizer: PreTrainedTokenizerBase) -> None:
        """Fail when the longest question of any split leaves a window no room for context."""
        for records in (data.train, *data.evals.values()):
            self._check_room(records, tokenizer)

    def _check_room(self, records: list[dict], tokenizer: PreTrainedTokenizerBase) -> None:
        if not tokenizer.is_fast:
            raise ValueError(f"task {self.cfg.name}: extractive QA needs a fast tokenizer (offset mappings)")
        longest = max(len(tokenizer(r["question"].lstrip(), add_special_tokens=False)["input_ids"]) for r in records)
        longest += tokenizer.num_special_tokens_to_add(pair=True)
        if longest + self.cfg.doc_stride >= self.cfg.max_seq_length:
            raise ValueError(
                f"task {self.cfg.name}: a question of {longest} tokens plus doc_stride {self.cfg.doc_stride} leaves "
                f"no room for context in max_seq_length {self.cfg.max_seq_length}; raise task.max_seq_length or "
                "lower task.doc_stride"
            )

    def _windows(self, records: list[dict], tokenizer: PreTrainedTokenizerBase) -> Any:
        self._check_room(records, tokenizer)
        return tokenizer(  # question first, then the context (sequence id 1), cut into overlapping windows
            [r["question"].lstrip() for r in records],
            [r["context"] for r in records],
            truncation="only_second",
            max_length=self.cfg.max_seq_length,
            stride=self.cfg.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )

    def train_features(self, data: TaskData, tokenizer: PreTrainedTokenizerBase) -> list[dict]:
        enc = self._windows(data.train, tokenizer)
        features = []
        for i, offsets in enumerate(enc["offset_mapping"]):
            ids, seq = enc["input_ids"][i], enc.sequence_ids(i)
            cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
            answers = data.train[enc["overflow_to_sample_mapping"][i]]["answers"]
            start = end = cls
            if answers["text"]:
                first, last = answers["answer_start"][0], answers["answer_start"][0] + len(answers["text"][0])
                context = [k for k, s in enumerate(seq) if s == 1]
                if offsets[context[0]][0] <= first and offsets[context[-1]][1] >= last:  # answer inside window
                    start = next(k for k in context if offsets[k][1] > first)
                    end = max(k for k in context if offsets[k][0] < last)
            features.append({**_segments(enc, i), "input_ids": ids, "start_positions": start, "end_positions": end})
        data.stats["train_windows"] = len(features)
        return features

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        def collate(features: list[dict]) -> dict[str, torch.Tensor]:
            batch = _batch(features, tokenizer)
            for key in ("start_positions", "end_positions"):
                batch[key] = torch.tensor([f[key] for f in features])
            return batch

        return collate

    def eval_sets(self, data: TaskData, tokenizer: PreTrainedTokenizerBase) -> dict[str, dict]:
        sets = {}
        for split, records in data.evals.items():
            enc = self._windows(records, tokenizer)
            windows = [
                {
                    **_segments(enc, i),
                    "input_ids": enc["input_ids"][i],
                    "example": enc["overflow_to_sample_mapping"][i],
                    "offsets": [o if s == 1 else None for o, s in zip(offsets, enc.sequence_ids(i), strict=True)],
                }
                for i, offsets in enumerate(enc["offset_mapping"])
            ]
            sets[split] = {"records": records, "windows": windows}
        return sets

    def predict(self, records: list[dict], windows: list[dict], starts: list, ends: list) -> tuple[list[str], list]:
        """The best answer text of each question, and (v2) its null-minus-best score difference."""
        best: list[tuple[float, str]] = [(-np.inf, "")] * len(records)
        null = [np.inf] * len(records)
        for w, s_logits, e_logits in zip(windows, starts, ends, strict=True):
            k, offsets = w["example"], w["offsets"]
            null[k] = min(null[k], float(s_logits[0] + e_logits[0]))
            for s in np.argsort(s_logits)[-N_BEST:][::-1]:
                for e in np.argsort(e_logits)[-N_BEST:][::-1]:
                    if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > self.cfg.max_answer_length:
                        continue
                    score = float(s_logits[s] + e_logits[e])
                    if score > best[k][0]:
                        best[k] = (score, records[k]["context"][offsets[s][0] : offsets[e][1]])
        texts = [text for _, text in best]
        diffs = [n - b for n, (b, _) in zip(null, best, strict=True)]
        return texts, diffs

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        eval_sets: dict[str, dict],
        tokenizer: PreTrainedTokenizerBase,
        accelerator: Accelerator,
        batch_size: int,
    ) -> Evaluation:
        model.eval()
        metrics, outputs = {}, {}
        for i, (split, sets) in enumerate(eval_sets.items()):
            records, windows, starts, ends = sets["records"], sets["windows"], [], []
            for start in range(0, len(windows), batch_size):
                chunk = windows[start : start + batch_size]
                batch = _batch(chunk, tokenizer)
                out = model(**{k: v.to(accelerator.device) for k, v in batch.items()})
                for j, w in enumerate(chunk):
                    n = len(w["input_ids"])
                    starts.append(out.start_logits[j, :n].float().cpu().numpy())
                    ends.append(out.end_logits[j, :n].float().cpu().numpy())
            texts, diffs = self.predict(records, windows, starts, ends)
            references = [list(r["answers"]["text"]) for r in records]
            if self.cfg.subset == "v1":
                scores = squad_v1(texts, references)
            else:
                texts = ["" if d > self.cfg.null_threshold else t for t, d in zip(texts, diffs, strict=True)]
                scores = squad_v2(texts, references)
            metrics.update(suffixed(i, split, scores))
            outputs[split] = [
                {"id": r["id"], "prediction": t, "references": ref}
                for r, t, ref in zip(records, texts, references, strict=True)
            ]
        model.train()
        return Evaluation(metrics, outputs)


def _segments(enc: Any, i: int) -> dict[str, list[int]]:
    """The window's token type ids (question 0, context 1) where the tokenizer makes them (BERT)."""
    return {"token_type_ids": enc["token_type_ids"][i]} if "token_type_ids" in enc else {}


def _batch(features: list[dict], tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and (if present) token type ids."""
    batch = _pad([f["input_ids"] for f in features], tokenizer.pad_token_id, left=False)
    if "token_type_ids" in features[0]:
        batch["token_type_ids"] = _pad([f["token_type_ids"] for f in features], 0, left=False)["input_ids"]
    return batch
