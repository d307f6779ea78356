"""Tasks beyond GLUE: whole runs on tiny models with data written in each dataset's real file format, then the
pieces (training features, generation, extractive QA spans, image pixels) and the errors for bad settings."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import compose_cfg
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from loralab.models import build_model, load_tokenizer
from loralab.run import run
from loralab.tasks import TaskData, build_task
from loralab.tasks.generation import _pad

WORDS = ["cat", "dog", "sun", "moon", "tree", "fish", "bird", "car", "rain", "snow", "hill", "lake"]
N_TRAIN, N_EVAL = 8, 4


def words(i: int, n: int = 4) -> str:
    return " ".join(WORDS[(i + 5 * k) % len(WORDS)] for k in range(n))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write(path, "".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread, and do not slow to a crawl when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- each dataset's official files: N_TRAIN training and N_EVAL examples per evaluation split --------------------
def write_wmt16(root: Path) -> None:
    for split, n in (("train", N_TRAIN), ("validation", N_EVAL), ("test", N_EVAL)):
        write(root / f"{split}.en", "".join(f"the {words(i)}.\n" for i in range(n)))
        write(root / f"{split}.ro", "".join(f"și {words(i + 1)}.\n" for i in range(n)))


def iwslt_xml(lang: str, segs: list[str]) -> str:
    body = "\n".join(f'<seg id="{i}"> {s} </seg>' for i, s in enumerate(segs, 1))
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<mteval>\n<srcset setid="iwslt2017-dev2010" srclang="{lang}">\n'
        f'<doc docid="535" genre="lectures">\n<url>http://www.ted.com/talks/x.html</url>\n<talkid>535</talkid>\n'
        f"<title>Talk</title>\n{body}\n</doc>\n</srcset>\n</mteval>\n"
    )


def write_iwslt2017(root: Path) -> None:
    for lang, prefix in (("de", "der"), ("en", "the")):
        meta = "<url>http://www.ted.com/talks/a.html</url>\n<talkid>1</talkid>\n<title>T</title>\n"
        write(root / f"train.tags.de-en.{lang}", meta + "".join(f"{prefix} {words(i)}\n" for i in range(N_TRAIN)))
        for name in ("dev2010", "tst2010"):
            segs = [f"{prefix} {words(i, 3)} &amp; {words(i + 1, 2)}" for i in range(N_EVAL)]
            write(root / f"IWSLT17.TED.{name}.de-en.{lang}.xml", iwslt_xml(lang, segs))


def write_gsm8k(root: Path) -> None:
    rows = [{"question": f"{i} {words(i, 2)} plus {i}?", "answer": f"{i}+{i}=<<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"}
            for i in range(N_TRAIN + N_EVAL)]  # fmt: skip
    write_jsonl(root / "train.jsonl", rows[:N_TRAIN])
    write_jsonl(root / "test.jsonl", rows[N_TRAIN:])


def write_dialogsum(root: Path) -> None:
    def row(split: str, i: int) -> dict:
        return {"fname": f"{split}_{i}", "dialogue": f"#Person1#: hi {words(i, 2)}.\n#Person2#: bye.", "topic": "x"}

    write_jsonl(root / "dialogsum.train.jsonl", [row("train", i) | {"summary": words(i)} for i in range(N_TRAIN)])
    write_jsonl(root / "dialogsum.dev.jsonl", [row("dev", i) | {"summary": words(i)} for i in range(N_EVAL)])
    test = [row("test", i) | {f"summary{k}": words(i + k) for k in (1, 2, 3)} for i in range(N_EVAL)]
    write_jsonl(root / "dialogsum.test.jsonl", [r | {f"topic{k}": "x" for k in (1, 2, 3)} for r in test])


def hellaswag_row(i: int, split: str) -> dict:
    return {
        "ind": i, "activity_label": "Walking", "ctx_a": f"a {words(i, 2)} walks.", "ctx_b": "then",
        "ctx": f"a {words(i, 2)} walks. then", "endings": [words(i + k, 2) for k in range(4)],
        "source_id": f"activitynet~v_{i}", "split": split, "split_type": "indomain", "label": i % 4,
    }  # fmt: skip


def write_hellaswag(root: Path) -> None:
    write_jsonl(root / "hellaswag_train.jsonl", [hellaswag_row(i, "train") for i in range(N_TRAIN)])
    write_jsonl(root / "hellaswag_val.jsonl", [hellaswag_row(i, "val") for i in range(N_EVAL)])


def squad_json(n_articles: int, per_article: int, v2: bool = False, tag: str = "") -> str:
    """Official SQuAD JSON; v2 makes every third question unanswerable (with a plausible answer)."""
    data, n = [], 0
    for a in range(n_articles):
        seen = [WORDS[a % 12], WORDS[(a + 1) % 12]]
        context, qas = f"on day {a} the {words(a, 2)} saw a {seen[0]} and a {seen[1]}.", []
        for q in range(per_article):
            answer = {"text": seen[q % 2], "answer_start": context.index(f" a {seen[q % 2]}") + 3}
            qa = {"id": f"{tag}{a}_{q}", "question": f"what did they see {q}?", "answers": [answer]}
            if v2:
                qa["is_impossible"] = n % 3 == 2
                if qa["is_impossible"]:
                    qa |= {"answers": [], "plausible_answers": [answer]}
            qas.append(qa)
            n += 1
        data.append({"title": f"Article_{tag}{a}", "paragraphs": [{"context": context, "qas": qas}]})
    return json.dumps({"version": "v2.0" if v2 else "1.1", "data": data})


def write_squad(version: str, n_train: int) -> Callable[[Path], None]:
    def writer(root: Path) -> None:
        v2 = version == "v2.0"
        write(root / f"train-{version}.json", squad_json(n_train // 2, 2, v2, "t"))
        write(root / f"dev-{version}.json", squad_json(N_EVAL // 2, 2, v2, "d"))

    return writer


def write_cifar100(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", N_TRAIN), ("test", N_EVAL)):
        batch = {
            b"filenames": [f"{i}.png".encode() for i in range(n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),  # rows: all R, then all G, then all B
            b"fine_labels": [i % 100 for i in range(n)],
            b"coarse_labels": [i % 20 for i in range(n)],
        }
        path = root / "cifar-100-python" / split
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(batch))


def write_food101(root: Path) -> None:
    classes = ["apple_pie", "baby_back_ribs", "beignets"]
    base = root / "food-101"
    write(base / "meta" / "classes.txt", "".join(c + "\n" for c in classes))
    for split, n in (("train", N_TRAIN), ("test", N_EVAL)):
        items = [f"{classes[i % 3]}/{split}{i}" for i in range(n)]
        write(base / "meta" / f"{split}.txt", "".join(item + "\n" for item in items))
        for i, item in enumerate(items):
            (base / "images" / item).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 16), ("red", "green", "blue")[i % 3]).save(base / "images" / f"{item}.jpg")


# ---- whole runs -----------------------------------------------------------------------------------------------
FAST = ["method=lora", "trainer.epochs=1", "trainer.batch_size=8", "logger.mode=disabled", "trainer.progress=false"]
T5 = ["task.max_seq_length=48", "task.max_target_length=32", "task.max_new_tokens=8"]
CAUSAL = ["task.max_seq_length=96", "task.max_new_tokens=8"]
QA = ["task.max_seq_length=48", "task.doc_stride=16"]
VISION = ["task.image_size=32"]
CASES = {
    "wmt16-en-ro": ("wmt16/en-ro", "tiny-t5", write_wmt16, T5, {"validation": N_EVAL, "test": N_EVAL}),
    "wmt16-ro-en": ("wmt16/ro-en", "tiny-t5", write_wmt16, T5, {"validation": N_EVAL, "test": N_EVAL}),
    "iwslt2017": ("iwslt2017/de-en", "tiny-llama", write_iwslt2017, CAUSAL, {"validation": N_EVAL, "test": N_EVAL}),
    "gsm8k": ("gsm8k", "tiny-gpt2", write_gsm8k, CAUSAL, {"test": N_EVAL}),
    "dialogsum": ("dialogsum", "tiny-llama", write_dialogsum, CAUSAL, {"validation": N_EVAL, "test": N_EVAL}),
    "hellaswag": ("hellaswag", "tiny-gpt2", write_hellaswag, CAUSAL, {"validation": N_EVAL}),
    "squad-gen": (
        "squad/gen", "tiny-llama", write_squad("v1.1", N_TRAIN + 2),
        [*CAUSAL, "task.holdout=2", "task.eval_splits=[holdout,validation]"], {"holdout": 2, "validation": N_EVAL},
    ),
    "squad-v1-bert": ("squad/v1", "tiny-bert", write_squad("v1.1", N_TRAIN), QA, {"validation": N_EVAL}),
    "squad-v1-gpt2": ("squad/v1", "tiny-gpt2", write_squad("v1.1", N_TRAIN), QA, {"validation": N_EVAL}),
    "squad-v2-bert": ("squad/v2", "tiny-bert", write_squad("v2.0", N_TRAIN), QA, {"validation": N_EVAL}),
    "cifar100": ("vision/cifar100", "tiny-vit", write_cifar100, VISION, {"test": N_EVAL}),
    "food101": ("vision/food101", "tiny-vit", write_food101, VISION, {"validation": N_EVAL}),
}  # fmt: skip


def run_task(tmp_path: Path, task: str, model: str, data: Path, *overrides: str) -> tuple[dict, Path]:
    cfg = compose_cfg(f"task={task}", f"model={model}", f"task.data_dir={data}", "task.source=local", *FAST, *overrides)
    out = tmp_path / "run"
    run(cfg, out)
    return json.loads((out / "results.json").read_text()), out


def read_predictions(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"predictions_{split}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("task", "model", "writer", "overrides", "evals"), CASES.values(), ids=list(CASES))
def test_task_runs_end_to_end_on_local_files(tmp_path, task, model, writer, overrides, evals):
    data = tmp_path / "data"
    writer(data)
    result, out = run_task(tmp_path, task, model, data, *overrides)
    assert result["status"] == "finished" and result["task"] == task
    assert 0.0 <= result["metrics"]["best"][result["main_metric"]] <= 1.0
    assert result["num_train_examples"] == N_TRAIN and result["num_eval_examples"] == evals
    assert str(data) in result["data_source"]
    kind = result["config"]["task"]["kind"]
    if kind == "image_classification":
        assert not list(out.glob("predictions_*.jsonl"))
        return
    for split, n in evals.items():
        rows = read_predictions(out, split)
        assert len(rows) == n and all(isinstance(r["prediction"], str) and "references" in r for r in rows)
    if kind == "question_answering":
        assert result["data_stats"]["train_windows"] >= N_TRAIN
    else:
        counts = {"train_truncated_prompts", "train_truncated_targets", *(f"{s}_truncated_prompts" for s in evals)}
        assert set(result["data_stats"]) == counts


def test_squad_dev_only_needs_the_dev_by_article_protocol(tmp_path):
    data = tmp_path / "squad"
    write(data / "dev-v1.1.json", squad_json(5, 2))  # 5 articles: 1 (eval_fraction 0.2) held out for evaluation
    with pytest.raises(FileNotFoundError, match=r"split\(s\) \['train'\] are not in the local .* task.protocol"):
        run_task(tmp_path, "squad/v1", "tiny-bert", data, *QA)
    assert not (tmp_path / "run" / "results.json").exists()
    result, out = run_task(tmp_path, "squad/v1", "tiny-bert", data, *QA, "task.protocol=dev_by_article")
    assert str(data) in result["data_source"] and "dev_by_article" in result["data_source"]
    assert result["num_train_examples"] == 8 and result["num_eval_examples"] == {"validation": 2}
    assert len(read_predictions(out, "validation")) == 2
    write(data / "train-v1.1.json", squad_json(2, 2))
    cfg = compose_cfg("task=squad/v1", f"task.data_dir={data}", "task.protocol=dev_by_article")
    with pytest.raises(ValueError, match="has a train split; remove task.protocol"):
        build_task(OmegaConf.to_object(cfg.task)).load()


# ---- text of each record ----------------------------------------------------------------------------------------
def prepare(task: str, model: str, *overrides: str):
    """The task object, the model's tokenizer and the model config."""
    cfg = compose_cfg(f"task={task}", f"model={model}", *overrides)
    model_cfg = OmegaConf.to_object(cfg.model)
    return build_task(OmegaConf.to_object(cfg.task)), load_tokenizer(model_cfg), model_cfg


PAIR = {"translation": {"en": "the cat", "ro": "pisica"}}
SQUAD = {
    "id": "q",
    "title": "t",
    "context": "c.",
    "question": "q?",
    "answers": {"text": ["a", "b"], "answer_start": [0, 0]},
}
TEXTS = {
    "wmt16/en-ro": (PAIR, "translate English to Romanian: the cat", "pisica", ["pisica"]),
    "wmt16/ro-en": (PAIR, "translate Romanian to English: pisica", "the cat", ["the cat"]),
    "iwslt2017/de-en": (
        {"translation": {"de": "die katze", "en": "the cat"}},
        "Translate German to English.\nGerman: die katze\nEnglish:", " the cat", ["the cat"],
    ),
    "gsm8k": ({"question": "1+1?", "answer": "#### 2"}, "Question: 1+1?\nAnswer:", " #### 2", ["#### 2"]),
    "dialogsum": (
        {"id": "d", "dialogue": "hi.", "summary": "s1", "topic": "t", "references": ["s1", "s2"]},
        "Summarize the following dialogue.\nhi.\nSummary:", " s1", ["s1", "s2"],
    ),
    "hellaswag": (
        hellaswag_row(3, "val"), f"Walking: a {words(3, 2)} walks. then\n"
        + "\n".join(f"{letter}. {words(3 + k, 2)}" for k, letter in enumerate("ABCD")) + "\nAnswer:", " D", ["D"],
    ),
    "squad/gen": (SQUAD, "Context: c.\nQuestion: q?\nAnswer:", " a", ["a", "b"]),
}  # fmt: skip


@pytest.mark.parametrize("task", TEXTS)
def test_prompt_target_and_references_of_a_record(task):
    record, prompt, target, references = TEXTS[task]
    assert prepare(task, "tiny-llama")[0].texts(record) == (prompt, target, references)


# ---- training features ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bos", [None, "[CLS]"])
def test_causal_features_mask_the_prompt_and_count_every_cut(bos):
    task, tok, _ = prepare("gsm8k", "tiny-llama", "task.max_seq_length=40")
    if bos:
        tok.bos_token = bos
    start, eos = ([tok.bos_token_id] if bos else []), [tok.eos_token_id]

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    records = [
        {"question": "1+1?", "answer": "#### 2"},
        {"question": "x" * 60 + " so 2+2?", "answer": "#### 4"},  # the prompt does not fit
        {"question": "3+3?", "answer": "y" * 60},  # the target alone is longer than max_seq_length
    ]
    data = TaskData(records, {}, "test")
    fits, long_prompt, long_target = task.train_features(data, tok)
    prompt, target = ids("Question: 1+1?\nAnswer:"), ids(" #### 2") + eos
    assert fits == {"input_ids": start + prompt + target, "labels": [-100] * len(start + prompt) + target}

    long, target = ids(task.texts(records[1])[0]), ids(" #### 4") + eos
    kept = long[-(40 - len(start) - len(target)) :]  # cut from the left: the cue before the answer survives
    assert kept[-len(ids("so 2+2?\nAnswer:")) :] == ids("so 2+2?\nAnswer:")
    assert long_prompt == {"input_ids": start + kept + target, "labels": [-100] * len(start + kept) + target}

    prompt, target = ids(task.texts(records[2])[0]), ids("y" * 60)[: 40 - len(start) - 1]
    assert long_target == {"input_ids": start + prompt[-1:] + target, "labels": [-100] * (len(start) + 1) + target}
    assert data.stats == {"train_truncated_prompts": 2, "train_truncated_targets": 1}
    evals = TaskData([], {"test": records[1:2]}, "test")  # evaluation prompts get the whole length, cut the same way
    assert task.eval_sets(evals, tok)["test"][0]["input_ids"] == start + long[-(40 - len(start)) :]
    assert evals.stats == {"test_truncated_prompts": 1}

    batch = task.collator(tok)([fits, long_prompt])
    n = len(fits["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 40)
    assert batch["attention_mask"].sum(1).tolist() == [n, 40] and (batch["input_ids"][0, n:] == tok.pad_token_id).all()
    assert batch["labels"][0].tolist() == fits["labels"] + [-100] * (40 - n)


def test_seq2seq_features_keep_the_target_as_labels_and_count_every_cut():
    task, tok, _ = prepare("wmt16/en-ro", "tiny-t5", "task.max_seq_length=48", "task.max_target_length=12")
    records = [
        {"translation": {"en": "the cat", "ro": "pisica"}},
        {"translation": {"en": "the cat " * 10, "ro": "pisica"}},  # the prompt does not fit
        {"translation": {"en": "dog", "ro": "cainele este foarte mare"}},  # the target is too long
    ]
    data = TaskData(records, {}, "test")
    fits, long_prompt, long_target = task.train_features(data, tok)
    assert fits == {"input_ids": tok("translate English to Romanian: the cat")["input_ids"],
                    "labels": tok("pisica")["input_ids"]}  # fmt: skip
    prompt = tok(task.texts(records[1])[0])["input_ids"]
    assert long_prompt["input_ids"] == prompt[:47] + prompt[-1:] and long_prompt["labels"] == fits["labels"]
    target = tok("cainele este foarte mare")["input_ids"]
    assert long_target["labels"] == target[:11] + [tok.sep_token_id] and len(target) > 12
    assert data.stats == {"train_truncated_prompts": 1, "train_truncated_targets": 1}


# ---- generation -------------------------------------------------------------------------------------------------
def test_pad_left_and_right():
    left, right = _pad([[5, 6, 7], [8]], 0, left=True), _pad([[5, 6, 7], [8]], 0, left=False)
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]] and left["attention_mask"][1].tolist() == [0, 0, 1]
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]] and right["attention_mask"][1].tolist() == [1, 0, 0]


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2"])
def test_batched_left_padded_generation_matches_one_prompt_at_a_time(model_name):
    task, tok, model_cfg = prepare("gsm8k", model_name, "task.max_seq_length=64", "task.max_new_tokens=12")
    torch.manual_seed(0)
    model = build_model(model_cfg, "causal_lm")[0].eval()
    records = [{"question": "x" * n + " what?", "answer": "#### 1"} for n in (1, 9, 30, 4)]
    rows = task.eval_sets(TaskData([], {"test": records}, "test"), tok)["test"]
    assert len({len(r["input_ids"]) for r in rows}) == 4
    accelerator = Accelerator(cpu=True)
    batched = task.generate(model, rows, tok, accelerator, batch_size=4)
    assert batched == [task.generate(model, [r], tok, accelerator, batch_size=1)[0] for r in rows]
    text = max(batched, key=len).replace(" ", "")
    assert len(text) > 2
    stop = text[len(text) // 2]  # a character the output holds: it and everything after it go
    cut = build_task(replace(task.cfg, stop=["\n", stop])).generate(model, rows, tok, accelerator, batch_size=4)
    assert cut == [t.split(stop)[0].strip() for t in batched] and cut != batched


def test_leading_newline_is_not_a_stop(monkeypatch):
    # a model that starts its answer on a new line (DialogSum after "Summary:") must not be cut to ""
    task, tok, model_cfg = prepare("dialogsum", "tiny-llama", "task.max_seq_length=64", "task.max_new_tokens=2")
    model = build_model(model_cfg, "causal_lm")[0].eval()
    rows = [{"input_ids": [5, 6, 7], "references": ["x"]}, {"input_ids": [5, 6], "references": ["y"]}]
    monkeypatch.setattr(tok, "batch_decode", lambda ids, **kw: ["\nHello there.\nNext line", "  short "])
    assert task.generate(model, rows, tok, Accelerator(cpu=True), batch_size=2) == ["Hello there.", "short"]


# ---- extractive QA ----------------------------------------------------------------------------------------------
def qa_record(context: str, answer: str, question: str = "who waved?") -> dict:
    starts = [context.index(answer)] if answer else []
    return {"id": "q", "title": "t", "context": context, "question": question,
            "answers": {"text": [answer] if answer else [], "answer_start": starts}}  # fmt: skip


def squash(text: str) -> str:
    """Lower-cased, without spaces and WordPiece '##' marks: the tiny tokenizer's decoding compared to the text."""
    return "".join(text.replace("##", "").lower().split())


CONTEXT = (
    "Zebras graze at dawn near the river. The old ferryman, named Bob Smith, waved twice. Then all went home, late."
)


@pytest.mark.parametrize(
    ("subset", "answer"), [("v1", "Zebras"), ("v1", "Bob Smith"), ("v1", "home, late."), ("v2", "")]
)
def test_qa_training_windows_point_at_the_answer_or_at_cls(subset, answer):
    task, tok, _ = prepare(f"squad/{subset}", "tiny-bert", "task.max_seq_length=48", "task.doc_stride=16")
    data = TaskData([qa_record(CONTEXT, answer)], {}, "test")
    features = task.train_features(data, tok)
    assert len(features) > 2 and data.stats["train_windows"] == len(features)
    inside = 0
    for f in features:
        ids, start, end = f["input_ids"], f["start_positions"], f["end_positions"]
        if start == 0:
            assert end == 0 and ids[0] == tok.cls_token_id
            assert not answer or squash(answer) not in squash(tok.decode(ids, skip_special_tokens=True))
        else:
            assert start <= end and squash(tok.decode(ids[start : end + 1])) == squash(answer)
            inside += 1
    assert 0 < inside < len(features) if answer else inside == 0


def test_qa_predict_picks_the_best_valid_span():
    task = prepare("squad/v1", "tiny-bert", "task.max_answer_length=3")[0]
    records = [{"context": "the cat sat on the mat"}]
    offsets = [None, None, (0, 3), (4, 7), (8, 11), (12, 14), (15, 18), (19, 22), None]  # [CLS] q [SEP] 6 words [SEP]
    window = {"example": 0, "offsets": offsets}

    def logits(peaks: dict[int, float], offs: list = offsets) -> np.ndarray:
        out = np.zeros(len(offs))
        out[list(peaks)] = list(peaks.values())
        return out

    def best(starts: dict, ends: dict) -> str:
        return task.predict(records, [window], [logits(starts)], [logits(ends)])[0][0]

    assert best({3: 5}, {4: 5}) == "cat sat"
    assert best({6: 9, 3: 5}, {4: 9, 7: 1}) == "cat sat"  # the top pair ends before it starts
    assert best({1: 20, 2: 1}, {1: 20, 2: 1}) == "the"  # question tokens are never part of an answer
    assert best({2: 10, 5: 4}, {7: 10, 6: 4}) == "on the mat"  # "the cat sat on the mat" is over 3 tokens
    task.cfg.max_answer_length = 30
    assert best({2: 10, 5: 4}, {7: 10, 6: 4}) == "the cat sat on the mat"
    # two windows of one question: the best span over both, the null score the lowest of the windows'
    second = {"example": 0, "offsets": [None, None, (12, 14), (15, 18), (19, 22), None]}
    texts, diffs = task.predict(
        records, [window, second],
        [logits({0: 3, 3: 2}), logits({0: 1, 4: 4}, second["offsets"])],
        [logits({0: 3, 3: 2}), logits({0: 1, 4: 4}, second["offsets"])],
    )  # fmt: skip
    assert texts == ["mat"] and diffs == [pytest.approx(2 - 8)]


class FixedLogits(nn.Module):
    """A span head giving the same start/end logits to every window (cut to the window's length)."""

    def __init__(self, starts: torch.Tensor, ends: torch.Tensor) -> None:
        super().__init__()
        self.starts, self.ends = starts, ends

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        batch, n = input_ids.shape
        return SimpleNamespace(start_logits=self.starts[:n].expand(batch, n), end_logits=self.ends[:n].expand(batch, n))


@pytest.mark.parametrize(("subset", "threshold", "expected"), [("v2", 0.0, ""), ("v2", 2.5, "cat"), ("v1", 0.0, "cat")])
def test_qa_evaluate_applies_the_v2_null_threshold(subset, threshold, expected):
    task, tok, _ = prepare(f"squad/{subset}", "tiny-bert", f"task.null_threshold={threshold}")
    context = "the cat sat on the mat"
    sets = task.eval_sets(TaskData([], {"validation": [qa_record(context, "cat")]}, "test"), tok)
    (window,) = sets["validation"]["windows"]
    k_start = window["offsets"].index((4, 5))  # "cat" is the tokens c ##a ##t
    k_end = window["offsets"].index((6, 7))
    starts, ends = torch.zeros(len(window["input_ids"])), torch.zeros(len(window["input_ids"]))
    starts[0], ends[0], starts[k_start], ends[k_end] = 3.0, 3.0, 2.0, 2.0  # null 6 beats the span's 4 by 2
    evaluation = task.evaluate(FixedLogits(starts, ends), sets, tok, Accelerator(cpu=True), batch_size=8)
    assert evaluation.outputs["validation"] == [{"id": "q", "prediction": expected, "references": ["cat"]}]
    assert evaluation.metrics["f1"] == float(expected == "cat")
    assert evaluation.metrics["exact" if subset == "v2" else "exact_match"] == float(expected == "cat")


# ---- vision -----------------------------------------------------------------------------------------------------
def test_image_pixels_from_arrays_images_and_paths(tmp_path):
    task = build_task(OmegaConf.to_object(compose_cfg("task=vision/cifar100", "task.image_size=8").task))
    for color, value in (("white", 1.0), ("black", -1.0)):
        for image in (Image.new("RGB", (5, 7), color), Image.new("L", (5, 7), color)):
            assert torch.equal(task.pixels(image), torch.full((3, 8, 8), value))
    red = Image.new("RGB", (32, 32), "red")
    red.save(tmp_path / "red.png")
    expected = torch.stack([torch.ones(8, 8), -torch.ones(8, 8), -torch.ones(8, 8)])
    for image in (red, np.asarray(red), str(tmp_path / "red.png")):  # PIL image, CIFAR array, Food-101 path
        assert torch.equal(task.pixels(image), expected)
    batch = task.collator(None)(
        [{"image": np.asarray(red), "labels": 3}, {"image": str(tmp_path / "red.png"), "labels": 7}]
    )
    assert torch.equal(batch["pixel_values"], torch.stack([expected, expected]))
    assert batch["labels"].tolist() == [3, 7]


# ---- errors -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["task=gsm8k", "task.dataset=mnist"], r"unknown dataset 'mnist'; known: .*gsm8k"),
        (["task=wmt16/en-ro", "task.subset=enro"], r"translation needs task.subset '<source>-<target>', got 'enro'"),
        (["task=iwslt2017/de-en", "task.subset=null"], r"translation needs task.subset .*got None"),
        (
            ["task=gsm8k", "task.main_metric=rougeL"],
            r"main_metric 'rougeL' is not one of \('exact_match', 'exact_match_flexible'\)",
        ),
        (
            ["task=squad/v2", "task.main_metric=exact_match"],
            r"main_metric 'exact_match' is not one of \('exact', 'f1'\)",
        ),
        (["task=gsm8k", "task.kind=question_answering"], "generation tasks need kind seq2seq_lm or causal_lm"),
        (["task=gsm8k", "task.prompt=null"], "need task.prompt and task.target"),
        (["task=squad/v1", "task.subset=v3"], "SQuAD subset must be v1 or v2, got 'v3'"),
        (["task=squad/v1", "task.doc_stride=384"], "doc_stride 384 must be smaller than max_seq_length 384"),
        (["task=gsm8k", "task.source=disk"], "task.source must be auto, local or hub"),
    ],
)
def test_bad_task_settings_fail_when_the_task_is_built(overrides, match):
    with pytest.raises(ValueError, match=match):
        build_task(OmegaConf.to_object(compose_cfg(*overrides).task))


def test_prompt_with_a_field_the_records_lack(tmp_path):
    data = tmp_path / "gsm8k"
    write_gsm8k(data)
    with pytest.raises(ValueError, match=r"field 'nope', which gsm8k .*fields: \['answer', 'question', 'references'\]"):
        run_task(tmp_path, "gsm8k", "tiny-llama", data, *CAUSAL, "task.prompt='Q: {nope}'")
    assert not (tmp_path / "run" / "results.json").exists()


def test_question_too_long_for_the_window():
    task, tok, _ = prepare("squad/v1", "tiny-bert", "task.max_seq_length=40", "task.doc_stride=10")
    with pytest.raises(ValueError, match="leaves no room for context"):
        task.train_features(TaskData([qa_record(CONTEXT, "Bob Smith", "q" * 30)], {}, "test"), tok)


# ---- early, exact errors and decoding --------------------------------------------------------------------------------
def test_question_plus_stride_check_counts_the_pair_special_tokens():
    task, tok, _ = prepare("squad/v1", "tiny-bert", "task.max_seq_length=40", "task.doc_stride=10")
    # 27 question tokens + 3 special tokens of a pair = 30: the context's room is 10 tokens, not more than the stride
    with pytest.raises(ValueError, match="leaves no room for context"):
        task.train_features(TaskData([qa_record(CONTEXT, "Bob Smith", "q" * 27)], {}, "test"), tok)


@pytest.mark.parametrize("task", ["vision/cifar100", "glue/rte"])
def test_kind_must_fit_the_dataset(task):
    with pytest.raises(ValueError, match="kind"):
        build_task(OmegaConf.to_object(compose_cfg(f"task={task}", "task.kind=causal_lm").task))


def test_prompt_fields_are_checked_when_the_data_is_loaded(tmp_path):
    write_gsm8k(tmp_path)
    cfg = compose_cfg("task=gsm8k", f"task.data_dir={tmp_path}", "task.prompt='Q: {nope}'")
    with pytest.raises(ValueError, match="field 'nope'"):
        build_task(OmegaConf.to_object(cfg.task)).load()


def test_tiny_tokenizer_decodes_back_to_text():
    tok = prepare("gsm8k", "tiny-llama")[1]
    assert tok.decode(tok("hello world, 42")["input_ids"], skip_special_tokens=True) == "hello world, 42"
