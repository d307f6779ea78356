from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import sacrebleu
from rouge_score.rouge_scorer import RougeScorer

from loralab.text_metrics import (
    corpus_bleu,
    exact_match,
    gsm8k_answer,
    gsm8k_exact_match,
    normalize_answer,
    rouge,
    squad_v1,
    squad_v2,
)

ASSETS = Path(os.environ.get("LORALAB_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
GSM8K_DIR = ASSETS / "datasets" / "gsm8k"

PREDS = [
    "the cat sat on the mat",
    "a quick brown fox jumps over the dog",
    "hello there , general kenobi",
    "it is raining cats and dogs today",
    "the meeting was moved to friday afternoon",
]
REFS = [
    ["the cat is sitting on the mat", "a cat sat on the mat"],
    ["the quick brown fox jumped over the lazy dog"],
    ["hello there general kenobi !", "well hello there", "greetings , general kenobi"],
    ["it rains heavily today"],
    ["the meeting has been moved to friday", "they moved the meeting to friday afternoon"],
]


# --- BLEU ---------------------------------------------------------------------------------------------------------


def test_bleu_matches_sacrebleu_with_variable_reference_counts():
    streams = [[refs[k] if k < len(refs) else None for refs in REFS] for k in range(3)]
    for n in (1, 2, 4):
        expected = sacrebleu.metrics.BLEU(max_ngram_order=n).corpus_score(PREDS, streams).score / 100
        assert corpus_bleu(PREDS, REFS, max_order=n) == pytest.approx(expected)
    assert corpus_bleu(PREDS, REFS) == pytest.approx(sacrebleu.corpus_bleu(PREDS, streams).score / 100)
    # with one reference each, sacrebleu's plain single-stream call agrees too
    single = [refs[0] for refs in REFS]
    assert corpus_bleu(PREDS, [[r] for r in single]) == pytest.approx(
        sacrebleu.corpus_bleu(PREDS, [single]).score / 100
    )


def test_bleu_perfect_match_is_one():
    assert corpus_bleu(PREDS, [[p] for p in PREDS]) == pytest.approx(1.0)


def test_bleu_orders_are_non_increasing():
    scores = [corpus_bleu(PREDS, REFS, max_order=n) for n in (1, 2, 3, 4)]
    assert 0 < scores[3] <= scores[2] <= scores[1] <= scores[0] < 1
    assert scores[3] < scores[0]


def test_bleu1_by_hand():
    # hypothesis 6 tokens, reference 7: unigram matches the, cat, on, mat = 4/6; BP = exp(1 - 7/6)
    value = corpus_bleu(["the cat sat on a mat"], [["the cat is on the mat there"]], max_order=1)
    assert value == pytest.approx(4 / 6 * math.exp(1 - 7 / 6))


# --- ROUGE --------------------------------------------------------------------------------------------------------


def test_rouge_matches_rouge_score():
    types = ("rouge1", "rouge2", "rougeL")
    scorer = RougeScorer(list(types), use_stemmer=True)
    max_scores = [scorer.score_multi(refs, p) for p, refs in zip(PREDS, REFS, strict=True)]
    mean_scores = [[scorer.score(r, p) for r in refs] for p, refs in zip(PREDS, REFS, strict=True)]
    got_max, got_mean = rouge(PREDS, REFS), rouge(PREDS, REFS, multi_ref="mean")
    assert set(got_max) == set(got_mean) == set(types)
    for t in types:
        assert got_max[t] == pytest.approx(sum(s[t].fmeasure for s in max_scores) / len(PREDS))
        expected_mean = sum(sum(s[t].fmeasure for s in ex) / len(ex) for ex in mean_scores) / len(PREDS)
        assert got_mean[t] == pytest.approx(expected_mean)
        assert got_mean[t] <= got_max[t]
    assert got_mean["rouge1"] < got_max["rouge1"]


def test_rouge_types_and_stemmer_are_passed_through():
    got = rouge(["the cats were running"], [["the cat was running"]], types=("rouge1",), use_stemmer=False)
    assert got == {"rouge1": pytest.approx(0.5)}  # the, running of 4 / 4
    assert rouge(["the cats were running"], [["the cat was running"]], types=("rouge1",))["rouge1"] > 0.5


def test_rouge_l_by_hand():
    # LCS(pred, ref) = "cat on the mat" = 4; P = 4/7, R = 4/6, F = 2PR / (P + R) = 8/13
    got = rouge(["a cat sat on the mat today"], [["the cat was on the mat"]], types=("rougeL",))
    assert got["rougeL"] == pytest.approx(8 / 13)


def test_rouge_mean_vs_max_by_hand():
    # rouge1 F vs "a b c d" = 1, vs "x y z w" = 0
    got_max = rouge(["a b c d"], [["a b c d", "x y z w"]], types=("rouge1",), use_stemmer=False)
    got_mean = rouge(["a b c d"], [["a b c d", "x y z w"]], types=("rouge1",), use_stemmer=False, multi_ref="mean")
    assert got_max["rouge1"] == pytest.approx(1.0)
    assert got_mean["rouge1"] == pytest.approx(0.5)


def test_rouge_unknown_multi_ref():
    with pytest.raises(ValueError, match="multi_ref"):
        rouge(PREDS, REFS, multi_ref="min")


# --- SQuAD --------------------------------------------------------------------------------------------------------


def test_normalize_answer():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("An apple, a day.") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_squad_v1_official_cases():
    assert squad_v1(["The Denver Broncos"], [["Denver Broncos"]]) == {"exact_match": 1.0, "f1": 1.0}
    assert squad_v1(["denver   BRONCOS."], [["Denver Broncos"]]) == {"exact_match": 1.0, "f1": 1.0}
    # pred tokens [denver, broncos], gold [broncos, team, colors]: P = 1/2, R = 1/3, F1 = 0.4
    assert squad_v1(["Denver Broncos"], [["Broncos team colors"]]) == pytest.approx({"exact_match": 0.0, "f1": 0.4})
    # max over the ground truths
    assert squad_v1(["Denver Broncos"], [["Broncos team colors", "the Denver Broncos"]])["exact_match"] == 1.0


def test_squad_v1_averages_over_questions():
    preds = ["Denver Broncos", "Carolina", "Santa Clara"]
    refs = [["Broncos team colors"], ["Carolina Panthers"], ["Levi's Stadium"]]
    # f1: 0.4, (P 1, R 1/2 -> 2/3), 0
    assert squad_v1(preds, refs) == pytest.approx({"exact_match": 0.0, "f1": (0.4 + 2 / 3) / 3})
    assert exact_match(["Denver Broncos", "x", "Santa Clara!"], [["denver broncos"], ["y"], ["z", "santa clara"]]) == (
        pytest.approx(2 / 3)
    )


def test_squad_v1_and_v2_differ_on_empty_normalised_tokens():
    # "the" and "a" both normalise to "": v1.1 f1_score has no common tokens (0), v2.0 drops the empty gold,
    # falls back to [""] and compute_f1 gives int(both empty) = 1
    assert squad_v1(["the"], [["a"]]) == {"exact_match": 1.0, "f1": 0.0}
    assert squad_v2(["the"], [["a"]]) == {"exact": 1.0, "f1": 1.0, "HasAns_exact": 1.0, "HasAns_f1": 1.0}


def test_squad_v2_no_answer():
    assert squad_v2([""], [[]]) == {"exact": 1.0, "f1": 1.0, "NoAns_exact": 1.0, "NoAns_f1": 1.0}
    assert squad_v2(["Denver"], [[]]) == {"exact": 0.0, "f1": 0.0, "NoAns_exact": 0.0, "NoAns_f1": 0.0}
    assert squad_v2([""], [["Denver"]]) == {"exact": 0.0, "f1": 0.0, "HasAns_exact": 0.0, "HasAns_f1": 0.0}


def test_squad_v2_breakdown():
    preds = ["Denver Broncos", "Denver Broncos", "", "something"]
    refs = [["Denver Broncos"], ["Broncos team colors"], [], []]
    got = squad_v2(preds, refs)
    assert got == pytest.approx(
        {
            "exact": 2 / 4,
            "f1": (1 + 0.4 + 1 + 0) / 4,
            "HasAns_exact": 1 / 2,
            "HasAns_f1": 1.4 / 2,
            "NoAns_exact": 1 / 2,
            "NoAns_f1": 1 / 2,
        }
    )


def test_squad_v2_no_answer_threshold():
    preds = ["Denver Broncos", "something", "Denver Broncos"]
    refs = [["Denver Broncos"], [], ["Denver Broncos"]]
    probs = [0.9, 0.9, 0.5]
    # threshold 0.5: questions 0 and 1 count as "no answer" (prob > threshold, strictly); question 2 is kept
    got = squad_v2(preds, refs, no_answer_probs=probs, threshold=0.5)
    assert got == pytest.approx(
        {"exact": 2 / 3, "f1": 2 / 3, "HasAns_exact": 0.5, "HasAns_f1": 0.5, "NoAns_exact": 1.0, "NoAns_f1": 1.0}
    )
    # the default threshold 1.0 never fires, which equals passing no probabilities
    assert squad_v2(preds, refs, no_answer_probs=probs) == squad_v2(preds, refs)
    with pytest.raises(ValueError, match="no_answer_probs"):
        squad_v2(preds, refs, no_answer_probs=[0.1])


# --- GSM8K --------------------------------------------------------------------------------------------------------


def _gsm8k_lines(split: str) -> list[dict]:
    path = GSM8K_DIR / f"{split}.jsonl"
    if not path.is_file():
        pytest.skip(f"GSM8K assets not found at {path} (set LORALAB_ASSETS)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("split", ["train", "test"])
def test_gsm8k_real_answers_extract(split):
    answers = [ex["answer"] for ex in _gsm8k_lines(split)]
    extracted = [gsm8k_answer(a) for a in answers]
    assert None not in extracted
    assert all("," not in a for a in extracted)
    for raw, ans in zip(answers, extracted, strict=True):
        assert raw.rsplit("#### ", 1)[1].strip().replace(",", "") == ans
    assert gsm8k_exact_match(answers, answers) == 1.0
    if split == "train":
        assert extracted[0] == "72"
    else:
        assert any(a.startswith("-") for a in extracted)


def test_gsm8k_extraction_rules():
    assert gsm8k_answer("so 1,000 in all.\n#### 1,000") == "1000"
    assert gsm8k_answer("#### -12") == "-12"
    assert gsm8k_answer("He pays 0.5 each\n#### 2.5") == "2.5"
    assert gsm8k_answer("The answer is 72.") is None
    assert gsm8k_answer("Therefore the total is #72") is None
    assert gsm8k_answer("####72") is None  # the official pattern needs the space


def test_gsm8k_exact_match_counts():
    answers = ["... #### 72", "... #### 1,000", "... #### 5", "... #### -3"]
    preds = ["She sold 72 clips.\n#### 72", "#### 1000", "The answer is 5", "#### 3"]
    assert gsm8k_exact_match(preds, answers) == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="reference answer 1"):
        gsm8k_exact_match(["#### 1", "#### 2"], ["#### 1", "2"])


# --- input validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn", [corpus_bleu, rouge, squad_v1, squad_v2, exact_match, lambda p, r: gsm8k_exact_match(p, [x[0] for x in r])]
)
def test_length_mismatch_and_empty_inputs(fn):
    with pytest.raises(ValueError, match="2 predictions and 1 references"):
        fn(["a", "b"], [["#### 1"]])
    with pytest.raises(ValueError, match="0 predictions and 0 references"):
        fn([], [])


@pytest.mark.parametrize("fn", [corpus_bleu, rouge, squad_v1, exact_match])
def test_missing_references(fn):
    with pytest.raises(ValueError, match="at least one reference"):
        fn(["a", "b"], [["a"], []])


def test_gsm8k_flexible_reads_the_last_number_when_there_is_no_answer_marker():
    answers = ["so 6 * 8 = <<6*8=48>>48\n#### 48", "#### 1,000", "#### 5"]
    predictions = ["16 x 3 = 48\n\nThe answer is 48.", "It costs $1,000.", "#### 6 then 5"]
    assert gsm8k_exact_match(predictions, answers) == 0.0  # the official rule needs '#### '
    assert gsm8k_exact_match(predictions, answers, flexible=True) == pytest.approx(2 / 3)  # '####' wins when present
