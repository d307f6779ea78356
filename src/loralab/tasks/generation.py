"""Text generation tasks: translation, summarisation, maths word problems, SQuAD answers generated, HellaSwag.

One class serves encoder-decoders (``kind: seq2seq_lm``, T5 on WMT16) and decoder-only LMs (``kind: causal_lm``,
Tied-LoRA's tasks on LLaMA-2 / GPT-2B). The prompt and the target are format strings over a record's fields
(``task.prompt``, ``task.target``, set in each task config), so the prompt format is part of the config.

- Training: seq2seq feeds the prompt to the encoder and the target as ``labels``; causal LMs train on
  ``[bos] prompt target eos`` with the prompt tokens masked out of the loss (label -100). The start token is the
  model's setting (``model.bos_token``; none for SmolLM2-Instruct, whose tokenizer calls its chat-turn opener BOS).
- ``task.chat_template`` (instruct models): the user turn (``task.chat_prompt``, the task's instruction and the
  record) and the target become user and assistant turns of the tokenizer's chat template; the loss covers the
  assistant turn up to its end-of-turn token (the tokenizer's EOS), decoding starts after the generation prompt
  and stops at that token. The template is rendered once around placeholders (:class:`Frame`), so a long prompt
  is cut inside the user turn, never through the template's own tokens.
- Truncation never cuts a target silently: prompts are cut first (causal: from the left, so the cue just before
  the answer survives), and every cut prompt or target is counted and reported in ``results.json``
  (``data_stats``) and the log.
- Evaluation: batched greedy decoding (``task.num_beams`` > 1 for beam search), at most ``task.max_new_tokens``
  new tokens (Tied-LoRA: greedy, 500), cut at the first ``task.stop`` string; causal prompts are left-padded.
  Besides the task's metrics, every evaluation reports ``empty_rate`` (nothing generated) and, where the task
  defines one, ``degenerate_rate``: non-empty outputs that miss the task's form (GSM8K: no ``#### <number>`` final
  line; DialogSum: the output writes dialogue turns, ``#Person1#: ...``, instead of a summary (the references name
  speakers ``#Person1#`` too, never as a turn); HellaSwag: no choice letter first).
- Zero-shot baseline (``task.zero_shot``, default on): the eval splits evaluated once before training with every
  adapter bypassed (:func:`zero_shot_baseline`), the same prompts and decoding; recorded as ``zero_shot`` in
  ``results.json`` with its predictions in ``predictions_zero_shot_<split>.jsonl``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from transformers import PreTrainedTokenizerBase

from loralab.adapters import adapter_layers
from loralab.config import TaskConfig
from loralab.tasks.base import Evaluation, Task, TaskData, suffixed
from loralab.text_metrics import corpus_bleu, exact_match, gsm8k_answer, gsm8k_exact_match, rouge, squad_v1

log = logging.getLogger(__name__)
LETTERS = "ABCDEFGH"
# a DialogSum speaker turn; the reference summaries name speakers too ("#Person1# asks ..."), but never as a turn
DIALOGUE_TURN = re.compile(r"#Person\d+#\s*:", re.IGNORECASE)


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
    """How a dataset's records become template variables (with ``references``), its metrics, and which non-empty
    outputs are degenerate for it (None: no such rule, no ``degenerate_rate``)."""

    fields: Callable[[dict, str | None], dict[str, Any]]
    score: Callable[[list[str], list[list[str]]], dict[str, float]]
    metrics: tuple[str, ...]
    degenerate: Callable[[str], bool] | None = None


def output_rates(predictions: list[str], degenerate: Callable[[str], bool] | None) -> dict[str, float]:
    """``empty_rate``: outputs with no text; ``degenerate_rate``: non-empty outputs the task's rule rejects."""
    n = len(predictions)
    rates = {"empty_rate": sum(not p for p in predictions) / n}
    if degenerate is not None:
        rates["degenerate_rate"] = sum(bool(p) and degenerate(p) for p in predictions) / n
    return rates


GENERATION_DATASETS: dict[str, GenerationDataset] = {
    "wmt16": GenerationDataset(
        _translation, _translation_metrics, ("bleu", "bleu1", "bleu2", "bleu3", "rouge1", "rouge2", "rougeL")
    ),
    "iwslt2017": GenerationDataset(_translation, lambda p, r: {"bleu": corpus_bleu(p, r)}, ("bleu",)),
    "gsm8k": GenerationDataset(  # degenerate: no final-answer line the official rule can read
        _gsm8k, _gsm8k_metrics, ("exact_match", "exact_match_flexible"), lambda p: gsm8k_answer(p) is None
    ),
    "dialogsum": GenerationDataset(  # degenerate: writes dialogue turns ("#Person1#: ...") instead of a summary
        _dialogsum, rouge, ("rouge1", "rouge2", "rougeL"), lambda p: DIALOGUE_TURN.search(p) is not None
    ),
    "squad": GenerationDataset(
        _squad, lambda p, r: {"exact_match": exact_match(p, r), "f1": squad_v1(p, r)["f1"]}, ("exact_match", "f1")
    ),
    "hellaswag": GenerationDataset(  # degenerate: does not start with one of the choice letters
        _hellaswag, _choice_accuracy, ("accuracy",), lambda p: p[:1].upper() not in LETTERS[:4]
    ),
}

CHAT_SLOT = "LORALABCHATSLOT"  # stands for the user turn and for the answer when a chat template is rendered


@dataclass(frozen=True)
class Frame:
    """The token ids a causal prompt and target are framed with: ``head`` + prompt + ``tail`` is the model's input,
    ``answer_head`` + target + ``end`` what it learns to generate. Plain: ``[bos]``, nothing, nothing, ``[eos]``;
    chat: the template's text before and after the user turn (with the generation prompt), before the assistant's
    text, and after it up to its end-of-turn token."""

    head: list[int]
    tail: list[int]
    answer_head: list[int]
    end: list[int]

    @property
    def fixed(self) -> int:
        """Tokens every training sequence holds besides the prompt and the target text."""
        return len(self.head) + len(self.tail) + len(self.answer_head)


def chat_frame(tokenizer: PreTrainedTokenizerBase, task: str) -> Frame:
    """The :class:`Frame` of the tokenizer's chat template: rendered once with placeholders for the user turn and
    the assistant's answer; the assistant turn must end with the tokenizer's EOS (where decoding stops)."""
    if not tokenizer.chat_template:
        raise ValueError(
            f"task {task}: task.chat_template=true needs a tokenizer with a chat template, and this model's has none; "
            "set task.chat_template=false (plain prompts) or use an instruct model's tokenizer"
        )
    user = [{"role": "user", "content": CHAT_SLOT}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": CHAT_SLOT}], tokenize=False)
    if prompt.count(CHAT_SLOT) != 1 or full.count(CHAT_SLOT) != 2 or not full.startswith(prompt):
        raise ValueError(
            f"task {task}: the tokenizer's chat template does not render a user turn followed by the generation "
            f"prompt as the start of the same conversation with an answer ({prompt!r} / {full!r}); it cannot frame "
            "prompts and targets here: set task.chat_template=false"
        )
    head, tail = prompt.split(CHAT_SLOT)
    answer_head, after = full[len(prompt) :].split(CHAT_SLOT)

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    end = ids(after)
    if tokenizer.eos_token_id not in end:
        raise ValueError(
            f"task {task}: the chat template ends the assistant turn with {after!r}, without the tokenizer's EOS "
            f"token {tokenizer.eos_token!r}, so decoding would not stop at the end of the turn; set "
            "task.chat_template=false"
        )
    return Frame(ids(head), ids(tail), ids(answer_head), end[: end.index(tokenizer.eos_token_id) + 1])


class Generation(Task):
    """Prompt -> generated text, scored against the references (see the module docstring)."""

    def __init__(self, cfg: TaskConfig) -> None:
        if cfg.kind not in ("seq2seq_lm", "causal_lm"):
            raise ValueError(f"task {cfg.name}: generation tasks need kind seq2seq_lm or causal_lm, got {cfg.kind!r}")
        if cfg.prompt is None or cfg.target is None:
            raise ValueError(f"task {cfg.name}: generation tasks need task.prompt and task.target format strings")
        if cfg.dataset in ("wmt16", "iwslt2017") and (cfg.subset or "").count("-") != 1:
            raise ValueError(f"task {cfg.name}: translation needs task.subset '<source>-<target>', got {cfg.subset!r}")
        if cfg.chat_template and cfg.kind != "causal_lm":
            raise ValueError(
                f"task {cfg.name}: task.chat_template=true is for causal LMs (instruct models), not {cfg.kind}"
            )
        self.model_kind, self.spec = cfg.kind, GENERATION_DATASETS[cfg.dataset]
        self.metrics = self.spec.metrics
        super().__init__(cfg)

    # ---- text ------------------------------------------------------------------------------------------------
    def texts(self, record: dict) -> tuple[str, str, list[str]]:
        """The prompt (chat: the user turn), the training target and the references of one record."""
        cfg, fields = self.cfg, self.spec.fields(record, self.cfg.subset)
        chat = cfg.chat_template
        template = cfg.chat_prompt if chat and cfg.chat_prompt is not None else cfg.prompt
        try:
            prompt, target = template.format(**fields), cfg.target.format(**fields)
        except (KeyError, IndexError, AttributeError) as e:
            keys = "task.chat_prompt" if chat and cfg.chat_prompt is not None else "task.prompt"
            raise ValueError(
                f"task {cfg.name}: {keys} / task.target use the field {e}, which {cfg.dataset} records do not have "
                f"(use named fields): fields: {sorted(fields)}"
            ) from None
        return prompt, target.strip() if chat else target, fields["references"]

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

    def frame(self, tokenizer: PreTrainedTokenizerBase) -> Frame:
        """How causal prompts and targets are framed: the chat template's turns, else the start token (the model's
        ``bos_token`` setting, applied to the tokenizer) and EOS."""
        if self.cfg.chat_template:
            return chat_frame(tokenizer, self.cfg.name)
        bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
        return Frame(bos, [], [], [tokenizer.eos_token_id])

    def _causal_prompt(
        self, frame: Frame, tokenizer: PreTrainedTokenizerBase, prompt: str, room: int
    ) -> tuple[list[int], bool]:
        """The framed prompt in ``room`` tokens (the prompt text cut from its start), and whether it was cut."""
        ids, cut = self._prompt(tokenizer, prompt, room - len(frame.head) - len(frame.tail))
        return frame.head + ids + frame.tail, cut

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
        fixed = self.frame(tokenizer).fixed
        if cfg.max_seq_length < fixed + 2:
            framing = f"{fixed} token(s) of the start token or chat template, " if fixed else ""
            raise ValueError(
                f"task {cfg.name}: task.max_seq_length={cfg.max_seq_length} leaves no room for the target: all {n} "
                f"training targets would be cut to zero tokens (a sequence holds {framing}1 prompt and at least 1 "
                f"target token); raise task.max_seq_length to at least {fixed + 2}"
            )

    def train_features(self, data: TaskData, tokenizer: PreTrainedTokenizerBase) -> list[dict]:
        self.check_lengths(data, tokenizer)
        cfg, features, cut_prompts, cut_targets = self.cfg, [], 0, 0
        frame = self.frame(tokenizer) if self.model_kind == "causal_lm" else None
        for record in data.train:
            prompt, target, _ = self.texts(record)
            if self.model_kind == "seq2seq_lm":
                labels = self._ids(tokenizer, target)
                if len(labels) > cfg.max_target_length:
                    labels, cut_targets = labels[: cfg.max_target_length - 1] + labels[-1:], cut_targets + 1
                ids, cut = self._prompt(tokenizer, prompt, cfg.max_seq_length)
                features.append({"input_ids": ids, "labels": labels})
            else:
                answer = frame.answer_head + self._ids(tokenizer, target) + frame.end
                framing = len(frame.head) + len(frame.tail)
                room = cfg.max_seq_length - len(answer)
                if room < framing + 1:  # the target alone does not fit: keep one prompt token, cut the target's end
                    answer, room, cut_targets = answer[: cfg.max_seq_length - framing - 1], framing + 1, cut_targets + 1
                ids, cut = self._causal_prompt(frame, tokenizer, prompt, room)
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
        frame = self.frame(tokenizer) if self.model_kind == "causal_lm" else None
        sets = {}
        for split, records in data.evals.items():
            rows, cut_prompts = [], 0
            for record in records:
                prompt, _, references = self.texts(record)
                if frame is None:
                    ids, cut = self._prompt(tokenizer, prompt, self.cfg.max_seq_length)
                else:
                    ids, cut = self._causal_prompt(frame, tokenizer, prompt, self.cfg.max_seq_length)
                rows.append({"input_ids": ids, "references": references})
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
            scores = {**self.spec.score(predictions, references), **output_rates(predictions, self.spec.degenerate)}
            metrics.update(suffixed(i, split, scores))
            outputs[split] = [{"prediction": p, "references": r} for p, r in zip(predictions, references, strict=True)]
        model.train()
        return Evaluation(metrics, outputs)


@contextmanager
def adapters_bypassed(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as its backbone alone: every adapter layer returns its base layer's output (the ``merged``
    path, without adding anything to the base weight) and is restored afterwards."""
    layers = list(adapter_layers(model).values())
    if any(layer.merged for layer in layers):
        raise ValueError("adapters_bypassed needs unmerged adapters: call unmerge_adapters(model) first")
    try:
        for layer in layers:
            layer.merged = True
        yield
    finally:
        for layer in layers:
            layer.merged = False


ZERO_SHOT_FILE = "zero_shot.json"


def zero_shot_baseline(
    task: Task, model: nn.Module, data: TaskData, tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator,
    batch_size: int, output_dir: Path, run_id: str,
) -> dict[str, Any] | None:  # fmt: skip
    """The eval splits scored by the backbone without its adapters (``task.zero_shot``; generation tasks only):
    ``{"metrics": ..., "model": ...}``, kept in ``zero_shot.json`` (a resumed run reads it back) with the
    predictions in ``predictions_zero_shot_<split>.jsonl``. None when off or not a generation task."""
    if not isinstance(task, Generation) or not task.cfg.zero_shot:
        return None
    path = output_dir / ZERO_SHOT_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or cut short by a crash while writing: evaluated (again)
        saved = {}
    if saved.get("run_id") == run_id:
        return saved["zero_shot"]
    with adapters_bypassed(accelerator.unwrap_model(model)):
        evaluation = task.evaluate(model, task.eval_sets(data, tokenizer), tokenizer, accelerator, batch_size)
    result = {"model": "the backbone with every adapter bypassed, before training", "metrics": evaluation.metrics}
    log.info("zero-shot (before training): %s", json.dumps(evaluation.metrics))
    if accelerator.is_main_process:
        for split, rows in evaluation.outputs.items():
            with open(output_dir / f"predictions_zero_shot_{split}.jsonl", "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
        path.write_text(json.dumps({"run_id": run_id, "zero_shot": result}, indent=2))
    return result


def _pad(sequences: list[list[int]], value: int, left: bool) -> dict[str, torch.Tensor]:
    """Pad to the longest (on the left for decoder-only generation), with the attention mask."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, s in enumerate(sequences):
        where = slice(longest - len(s), longest) if left else slice(0, len(s))
        ids[i, where], mask[i, where] = torch.tensor(s, dtype=torch.long), 1
    return {"input_ids": ids, "attention_mask": mask}
