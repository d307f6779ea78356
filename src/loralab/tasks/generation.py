"""Text generation tasks: translation, summarisation, maths word problems, SQuAD answers generated, HellaSwag.

One class serves encoder-decoders (``kind: seq2seq_lm``, T5 on WMT16) and decoder-only LMs (``kind: causal_lm``,
Tied-LoRA's tasks on LLaMA-2 / GPT-2B). The prompt and the target are format strings over a record's fields
(``task.prompt``, ``task.target``, set in each task config), so the prompt format is part of the config.

- Training: seq2seq feeds the prompt to the encoder and the target as ``labels``; causal LMs train on
  ``[bos] prompt target eos`` with the prompt tokens masked out of the loss (label -100).
- Truncation never cuts a target silently: prompts are cut first (causal: from the left, so the cue just before
  the answer survives), and every cut prompt or target is counted and reported in ``results.json``
  (``data_stats``) and the log.
- Evaluation: batched greedy decoding (``task.num_beams`` > 1 for beam search), at most ``task.max_new_tokens``
  new tokens (Tied-LoRA: greedy, 500), cut at the first ``task.stop`` string; causal prompts are left-padded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from transformers import PreTrainedTokenizerBase

from loralab.config import TaskConfig
from loralab.tasks.base import Evaluation, Task, TaskData, suffixed
from loralab.text_metrics import corpus_bleu, exact_match, gsm8k_exact_match, rouge, squad_v1

log = logging.getLogger(__name__)
LETTERS = "ABCDEFGH"


def _translation(record: dict, subset: str) -> dict[str, Any]:
    src, tgt = subset.split("-")
    pair = record["translation"]
    return {"source": pair[src], "target": pair[tgt], "references": [pair[tgt]]}


def _gsm8k(record: dict, subset: str | None) -> dict[str, Any]:
    return {**record, "references": [record["answer"]]}


def _dialogsum(record: dict, subset: str | None) -> dict[str, Any]:
    return dict(record)  # the reader gives ``references``: 3 summaries on test, else the one


def _squad(record: dict, subset: str | None) -> dict[str, Any]:
    texts = record["answers"]["text"]
    return {**record, "answer": texts[0] if texts else "", "references": list(texts)}


def _hellaswag(record: dict, subset: str | None) -> dict[str, Any]:
    choices = "\n".join(f"{LETTERS[i]}. {e.strip()}" for i, e in enumerate(record["endings"]))
    answer = LETTERS[record["label"]] if record["label"] is not None else ""
    return {**record, "choices": choices, "answer": answer, "references": [answer]}


def _choice_accuracy(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """The first letter of the generated text against the gold letter."""
    hits = [p.strip()[:1].upper() == r[0] for p, r in zip(predictions, references, strict=True)]
    return {"accuracy": sum(hits) / len(hits)}


def _gsm8k_metrics(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """The official answer extraction; ``_flexible`` also reads the last number of answers without "####"."""
    answers = [r[0] for r in references]
    return {
        "exact_match": gsm8k_exact_match(predictions, answers),
        "exact_match_flexible": gsm8k_exact_match(predictions, answers, flexible=True),
    }


def _translation_metrics(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """sacreBLEU, cumulative BLEU-1/2/3 and ROUGE-1/2/L (LoRA-Mini Tables 3-4 and 13-14)."""
    bleu = {f"bleu{n}": corpus_bleu(predictions, references, max_order=n) for n in (1, 2, 3)}
    return {"bleu": corpus_bleu(predictions, references), **bleu, **rouge(predictions, references)}


@dataclass(frozen=True)
class GenerationDataset:
    """How a dataset's records become template variables (with ``references``), and its metrics."""

    fields: Callable[[dict, str | None], dict[str, Any]]
    score: Callable[[list[str], list[list[str]]], dict[str, float]]
    metrics: tuple[str, ...]


GENERATION_DATASETS: dict[str, GenerationDataset] = {
    "wmt16": GenerationDataset(
        _translation, _translation_metrics, ("bleu", "bleu1", "bleu2", "bleu3", "rouge1", "rouge2", "rougeL")
    ),
    "iwslt2017": GenerationDataset(_translation, lambda p, r: {"bleu": corpus_bleu(p, r)}, ("bleu",)),
    "gsm8k": GenerationDataset(_gsm8k, _gsm8k_metrics, ("exact_match", "exact_match_flexible")),
    "dialogsum": GenerationDataset(_dialogsum, rouge, ("rouge1", "rouge2", "rougeL")),
    "squad": GenerationDataset(
        _squad, lambda p, r: {"exact_match": exact_match(p, r), "f1": squad_v1(p, r)["f1"]}, ("exact_match", "f1")
    ),
    "hellaswag": GenerationDataset(_hellaswag, _choice_accuracy, ("accuracy",)),
}


class Generation(Task):
    """Prompt -> generated text, scored against the references (see the module docstring)."""

    def __init__(self, cfg: TaskConfig) -> None:
        if cfg.kind not in ("seq2seq_lm", "causal_lm"):
            raise ValueError(f"task {cfg.name}: generation tasks need kind seq2seq_lm or causal_lm, got {cfg.kind!r}")
        if cfg.prompt is None or cfg.target is None:
            raise ValueError(f"task {cfg.name}: generation tasks need task.prompt and task.target format strings")
        if cfg.dataset in ("wmt16", "iwslt2017") and (cfg.subset or "").count("-") != 1:
            raise ValueError(f"task {cfg.name}: translation needs task.subset '<source>-<target>', got {cfg.subset!r}")
        self.model_kind, self.spec = cfg.kind, GENERATION_DATASETS[cfg.dataset]
        self.metrics = self.spec.metrics
        super().__init__(cfg)

    # ---- text ------------------------------------------------------------------------------------------------
    def texts(self, record: dict) -> tuple[str, str, list[str]]:
        """The prompt, the training target and the references of one record."""
        fields = self.spec.fields(record, self.cfg.subset)
        try:
            return self.cfg.prompt.format(**fields), self.cfg.target.format(**fields), fields["references"]
        except (KeyError, IndexError, AttributeError) as e:
            raise ValueError(
                f"task {self.cfg.name}: task.prompt / task.target use the field {e}, which {self.cfg.dataset} "
                f"records do not have (use named fields): fields: {sorted(fields)}"
            ) from None

    def load(self) -> TaskData:
        """The records, with the prompt and target templates checked on the first record of each split."""
        data = super().load()
        for records in (data.train, *data.evals.values()):
            if records:
                self.texts(records[0])
        return data

    def _ids(self, tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
        """Token ids; seq2seq keeps the tokenizer's special tokens (T5's ``</s>``), causal LMs add their own."""
        return tokenizer(text, add_special_tokens=self.model_kind == "seq2seq_lm")["input_ids"]

    def _prompt(self, tokenizer: PreTrainedTokenizerBase, prompt: str, room: int) -> tuple[list[int], bool]:
        """Prompt ids cut to ``room`` tokens (seq2seq: the end cut, keeping the final special token; causal: the
        start cut), and whether anything was cut."""
        ids = self._ids(tokenizer, prompt)
        if len(ids) <= room:
            return ids, False
        if self.model_kind == "seq2seq_lm":
            return ids[: room - 1] + ids[-1:], True
        return ids[len(ids) - room :], True

    def _bos(self, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        return [tokenizer.bos_token_id] if self.model_kind == "causal_lm" and tokenizer.bos_token_id is not None else []

    # ---- training --------------------------------------------------------------------------------------------
    def check_lengths(self, data: TaskData, tokenizer: PreTrainedTokenizerBase) -> None:
        """Fail when the length limits cut every training prompt (seq2seq) or target to zero tokens; partial cuts
        are counted by ``train_features`` instead."""
        cfg, n = self.cfg, len(data.train)
        if self.model_kind == "seq2seq_lm":
            specials = tokenizer.num_special_tokens_to_add(pair=False)
            for key, part in (("max_seq_length", "prompt"), ("max_target_length", "target")):
                if getattr(cfg, key) <= specials:
                    raise ValueError(
                        f"task {cfg.name}: task.{key}={getattr(cfg, key)} leaves no room for the {part} after the "
                        f"tokenizer's {specials} special token(s): all {n} training {part}s would be truncated to "
                        f"nothing; raise task.{key} above {specials}"
                    )
            return
        bos = len(self._bos(tokenizer))
        if cfg.max_seq_length < bos + 2:
            raise ValueError(
                f"task {cfg.name}: task.max_seq_length={cfg.max_seq_length} leaves no room for the target: all {n} "
                f"training targets would be cut to zero tokens (a sequence holds {'1 BOS, ' if bos else ''}1 prompt "
                f"and at least 1 target token); raise task.max_seq_length to at least {bos + 2}"
            )

    def train_features(self, data: TaskData, tokenizer: PreTrainedTokenizerBase) -> list[dict]:
        self.check_lengths(data, tokenizer)
        cfg, features, cut_prompts, cut_targets = self.cfg, [], 0, 0
        bos = self._bos(tokenizer)
        for record in data.train:
            prompt, target, _ = self.texts(record)
            if self.model_kind == "seq2seq_lm":
                labels = self._ids(tokenizer, target)
                if len(labels) > cfg.max_target_length:
                    labels, cut_targets = labels[: cfg.max_target_length - 1] + labels[-1:], cut_targets + 1
                ids, cut = self._prompt(tokenizer, prompt, cfg.max_seq_length)
                features.append({"input_ids": ids, "labels": labels})
            else:
                answer = self._ids(tokenizer, target) + [tokenizer.eos_token_id]
                room = cfg.max_seq_length - len(bos) - len(answer)
                if room < 1:  # the target alone does not fit: keep one prompt token, cut the target's end
                    answer, room, cut_targets = answer[: cfg.max_seq_length - len(bos) - 1], 1, cut_targets + 1
                ids, cut = self._prompt(tokenizer, prompt, room)
                ids = bos + ids
                features.append({"input_ids": ids + answer, "labels": [-100] * len(ids) + answer})
            cut_prompts += cut
        self._report(data, "train", cut_prompts, cut_targets, len(features))
        return features

    def _report(self, data: TaskData, split: str, cut_prompts: int, cut_targets: int, total: int) -> None:
        data.stats[f"{split}_truncated_prompts"] = cut_prompts
        if split == "train":
            data.stats["train_truncated_targets"] = cut_targets
        if cut_prompts or cut_targets:
            log.warning(
                "task %s, split %s: %d of %d prompts and %d targets truncated (max_seq_length %d, max_target_length "
                "%d)", self.cfg.name, split, cut_prompts, total, cut_targets, self.cfg.max_seq_length,
                self.cfg.max_target_length,
            )  # fmt: skip

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        def collate(features: list[dict]) -> dict[str, torch.Tensor]:
            batch = _pad([f["input_ids"] for f in features], tokenizer.pad_token_id, left=False)
            labels = _pad([f["labels"] for f in features], -100, left=False)["input_ids"]
            return {**batch, "labels": labels}

        return collate

    # ---- evaluation ------------------------------------------------------------------------------------------
    def eval_sets(self, data: TaskData, tokenizer: PreTrainedTokenizerBase) -> dict[str, list[dict]]:
        bos = self._bos(tokenizer)
        room = self.cfg.max_seq_length - len(bos)
        sets = {}
        for split, records in data.evals.items():
            rows, cut_prompts = [], 0
            for record in records:
                prompt, _, references = self.texts(record)
                ids, cut = self._prompt(tokenizer, prompt, room)
                rows.append({"input_ids": bos + ids, "references": references})
                cut_prompts += cut
            self._report(data, split, cut_prompts, 0, len(rows))
            sets[split] = rows
        return sets

    @torch.no_grad()
    def generate(
        self, model: nn.Module, rows: list[dict], tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator,
        batch_size: int,
    ) -> list[str]:  # fmt: skip
        """Greedy (or beam) continuations of the prompts, decoded, stripped and cut at the first stop string."""
        cfg, out = self.cfg, []
        causal = self.model_kind == "causal_lm"
        for start in range(0, len(rows), batch_size):
            batch = _pad([r["input_ids"] for r in rows[start : start + batch_size]], tokenizer.pad_token_id, causal)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                generated = model.generate(
                    **batch,
                    max_new_tokens=cfg.max_new_tokens,
                    num_beams=cfg.num_beams,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            if causal:
                generated = generated[:, batch["input_ids"].shape[1] :]
            for text in tokenizer.batch_decode(generated, skip_special_tokens=True):
                text = text.lstrip()  # a stop string (e.g. a newline) ends the answer, it does not precede it
                for stop in cfg.stop:
                    text = text.split(stop)[0]
                out.append(text.strip())
        return out

    def evaluate(
        self,
        model: nn.Module,
        eval_sets: dict[str, list[dict]],
        tokenizer: PreTrainedTokenizerBase,
        accelerator: Accelerator,
        batch_size: int,
    ) -> Evaluation:
        model = accelerator.unwrap_model(model)
        model.eval()
        metrics, outputs = {}, {}
        for i, (split, rows) in enumerate(eval_sets.items()):
            predictions = self.generate(model, rows, tokenizer, accelerator, batch_size)
            references = [r["references"] for r in rows]
            metrics.update(suffixed(i, split, self.spec.score(predictions, references)))
            outputs[split] = [{"prediction": p, "references": r} for p, r in zip(predictions, references, strict=True)]
        model.train()
        return Evaluation(metrics, outputs)


def _pad(sequences: list[list[int]], value: int, left: bool) -> dict[str, torch.Tensor]:
    """Pad to the longest (on the left for decoder-only generation), with the attention mask."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, s in enumerate(sequences):
        where = slice(longest - len(s), longest) if left else slice(0, len(s))
        ids[i, where], mask[i, where] = torch.tensor(s, dtype=torch.long), 1
    return {"input_ids": ids, "attention_mask": mask}
