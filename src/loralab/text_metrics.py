"""Generation and QA metrics (BLEU, ROUGE, SQuAD v1.1/v2.0, GSM8K), all as fractions in [0, 1].

BLEU and ROUGE delegate to the reference packages (``sacrebleu``, ``rouge_score``); the SQuAD and GSM8K rules
follow the official evaluation scripts (``evaluate-v1.1.py``, ``evaluate-v2.0.py`` and openai/grade-school-math
``dataset.py``), with scores divided by 100 where those scripts report percentages.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from itertools import zip_longest

import numpy as np
from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU

GSM8K_ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
_PUNCTUATION = frozenset(string.punctuation)


def _check_lengths(predictions: list[str], references: list, *, need_refs: bool = True) -> None:
    """Raise ValueError for empty or mismatched inputs, or (when ``need_refs``) an item without references."""
    if not predictions or len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must be non-empty and of equal length, "
            f"got {len(predictions)} predictions and {len(references)} references"
        )
    if need_refs and any(len(refs) == 0 for refs in references):
        raise ValueError("every prediction needs at least one reference")


def corpus_bleu(predictions: list[str], references: list[list[str]], max_order: int = 4) -> float:
    """sacreBLEU corpus BLEU (13a tokenisation, 'exp' smoothing) as a fraction in [0, 1].

    ``references[i]`` holds the references of ``predictions[i]``; items may have different numbers of references
    (the reference streams are padded with ``None``, which sacrebleu ignores). ``max_order=n`` gives cumulative
    BLEU-n (geometric mean of the 1..n-gram precisions times the brevity penalty); the LoRA-Mini paper's
    "bleu-1/2/3" (Tables 13-14) are read as cumulative BLEU-1/2/3.
    """
    _check_lengths(predictions, references)
    streams = [list(stream) for stream in zip_longest(*references, fillvalue=None)]
    return BLEU(max_ngram_order=max_order).corpus_score(predictions, streams).score / 100


def rouge(
    predictions: list[str],
    references: list[list[str]],
    types: tuple[str, ...] = ("rouge1", "rouge2", "rougeL"),
    use_stemmer: bool = True,
    multi_ref: str = "max",
) -> dict[str, float]:
    """Mean over examples of the rouge-score F-measure of each ROUGE type, keyed by type name.

    With several references an example scores the max over them (``multi_ref="max"``, rouge-score's own
    ``score_multi``) or their mean (``multi_ref="mean"``).
    """
    if multi_ref not in ("max", "mean"):
        raise ValueError(f"multi_ref must be 'max' or 'mean', got {multi_ref!r}")
    _check_lengths(predictions, references)
    scorer = RougeScorer(list(types), use_stemmer=use_stemmer)
    per_example: dict[str, list[float]] = {t: [] for t in types}
    for pred, refs in zip(predictions, references, strict=True):
        if multi_ref == "max":
            scores = scorer.score_multi(refs, pred)
            for t in types:
                per_example[t].append(scores[t].fmeasure)
        else:
            all_scores = [scorer.score(ref, pred) for ref in refs]
            for t in types:
                per_example[t].append(float(np.mean([s[t].fmeasure for s in all_scores])))
    return {t: float(np.mean(v)) for t, v in per_example.items()}


def normalize_answer(s: str) -> str:
    """Official SQuAD normalisation: lower-case, drop punctuation, drop articles (a/an/the), collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def _squad_f1(gold: str, pred: str, v2: bool) -> float:
    """Token F1: v1.1 ``f1_score``, or v2.0 ``compute_f1`` where an empty token list scores int(both equal)."""
    gold_toks, pred_toks = normalize_answer(gold).split(), normalize_answer(pred).split()
    if v2 and (not gold_toks or not pred_toks):
        return float(gold_toks == pred_toks)
    num_same = sum((Counter(gold_toks) & Counter(pred_toks)).values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred_toks), num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def _exact(gold: str, pred: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(pred))


def exact_match(predictions: list[str], references: list[list[str]]) -> float:
    """SQuAD-normalised exact match, max over each item's references, averaged (Tied-LoRA's generation EM)."""
    _check_lengths(predictions, references)
    return float(np.mean([max(_exact(g, p) for g in refs) for p, refs in zip(predictions, references, strict=True)]))


def squad_v1(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Official SQuAD v1.1 ``exact_match`` and ``f1`` (max over ground truths, averaged), as fractions."""
    _check_lengths(predictions, references)
    f1 = [max(_squad_f1(g, p, v2=False) for g in refs) for p, refs in zip(predictions, references, strict=True)]
    return {"exact_match": exact_match(predictions, references), "f1": float(np.mean(f1))}


def squad_v2(
    predictions: list[str],
    references: list[list[str]],
    no_answer_probs: list[float] | None = None,
    threshold: float = 1.0,
) -> dict[str, float]:
    """Official SQuAD v2.0 scores (``evaluate-v2.0.py``) as fractions.

    An empty reference list marks an unanswerable question (gold answers whose normalisation is empty are dropped,
    and an empty gold list becomes ``[""]``). With ``no_answer_probs``, a question whose probability exceeds
    ``threshold`` is scored as if the prediction were "no answer" (``apply_no_ans_threshold``). Returns ``exact`` and
    ``f1`` plus ``HasAns_*`` / ``NoAns_*`` breakdowns for the question kinds present.
    """
    _check_lengths(predictions, references, need_refs=False)
    if no_answer_probs is not None and len(no_answer_probs) != len(predictions):
        raise ValueError(f"got {len(no_answer_probs)} no_answer_probs for {len(predictions)} predictions")
    probs = no_answer_probs if no_answer_probs is not None else [0.0] * len(predictions)
    has_ans = np.array([bool(refs) for refs in references])
    exact, f1 = [], []
    for pred, refs, prob in zip(predictions, references, probs, strict=True):
        gold = [g for g in refs if normalize_answer(g)] or [""]
        if prob > threshold:
            exact.append(float(not refs))
            f1.append(float(not refs))
        else:
            exact.append(max(_exact(g, pred) for g in gold))
            f1.append(max(_squad_f1(g, pred, v2=True) for g in gold))
    exact_arr, f1_arr = np.array(exact), np.array(f1)
    out = {"exact": float(exact_arr.mean()), "f1": float(f1_arr.mean())}
    for prefix, mask in (("HasAns", has_ans), ("NoAns", ~has_ans)):
        if mask.any():
            out[f"{prefix}_exact"] = float(exact_arr[mask].mean())
            out[f"{prefix}_f1"] = float(f1_arr[mask].mean())
    return out


def gsm8k_answer(text: str) -> str | None:
    """Official GSM8K answer extraction: the number after "#### ", commas removed; None when absent (invalid)."""
    match = GSM8K_ANSWER_RE.search(text)
    return match.group(1).strip().replace(",", "") if match else None


def gsm8k_exact_match(predictions: list[str], answers: list[str], flexible: bool = False) -> float:
    """Fraction of predictions whose extracted answer is valid (not None) and equals the reference worked answer's.

    As in the official ``is_correct`` (which asserts it), every reference must contain a "#### " answer.
    ``flexible``: a prediction without "#### " is read by its last number instead (lm-evaluation-harness's
    "flexible-extract"; a diagnostic for models that have not learned the answer format, not the official rule).
    """
    _check_lengths(predictions, answers, need_refs=False)
    gold = [gsm8k_answer(a) for a in answers]
    if None in gold:
        raise ValueError(f"reference answer {gold.index(None)} has no '#### <number>' final answer")
    read = (lambda p: gsm8k_answer(p) or _last_number(p)) if flexible else gsm8k_answer
    return float(np.mean([read(pred) == g for pred, g in zip(predictions, gold, strict=True)]))


def _last_number(text: str) -> str | None:
    numbers = re.findall(r"-?[0-9][0-9,]*(?:\.[0-9]+)?", text)
    return numbers[-1].replace(",", "") if numbers else None
