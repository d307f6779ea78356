"""Bad input fails with a clear ValueError before expensive work, and no result is written.

Data is written in each dataset's official format (GLUE ``glue_data`` TSV, JSON Lines, CIFAR-100 pickles), then
broken the way real files break; each run goes through ``loralab.run.run`` (or ``train.py`` where Hydra decides).
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_cfg, write_tiny_glue
from omegaconf import OmegaConf
from test_tasks import (
    write_cifar100,
    write_food101,
    write_gsm8k,
    write_hellaswag,
    write_iwslt2017,
    write_squad,
    write_wmt16,
)

import loralab.run
from loralab.config import PROJECT_ROOT
from loralab.data.readers import read_local
from loralab.models import load_tokenizer
from loralab.records import RESULTS_FILE
from loralab.run import run
from loralab.tasks import build_task

FAST = ["logger.mode=disabled", "trainer.progress=false", "trainer.max_steps=1", "task.source=local"]
DATA = {  # task -> (model, writer of its official files, overrides)
    "glue/rte": ("tiny-bert", write_tiny_glue, ["method=lora"]),
    "glue/stsb": ("tiny-bert", write_tiny_glue, ["method=lora"]),
    "gsm8k": ("tiny-gpt2", write_gsm8k, ["method=lora", "task.max_seq_length=96", "task.max_new_tokens=4"]),
    "hellaswag": ("tiny-gpt2", write_hellaswag, ["method=lora", "task.max_seq_length=96", "task.max_new_tokens=4"]),
    "wmt16/en-ro": ("tiny-t5", write_wmt16, ["method=lora", "task.max_seq_length=48", "task.max_new_tokens=4"]),
    "vision/cifar100": ("tiny-vit", write_cifar100, ["method=lora", "task.image_size=32"]),
}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def write(task: str, root: Path) -> Path:
    """The task's official files in ``root``, as a valid dataset."""
    DATA[task][1](root)
    return root


def edit_line(path: Path, number: int, new: str) -> None:
    """Replace the 1-based line ``number`` of a text file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[number - 1] = new
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def compose(task: str, data: Path, *overrides: str):
    model, _, extra = DATA[task]
    return compose_cfg(f"task={task}", f"model={model}", f"task.data_dir={data}", *FAST, *extra, *overrides)


def fails(tmp_path: Path, task: str, data: Path, *overrides: str, match: str) -> str:
    """Run and expect a ValueError matching ``match``; no result file may appear. Returns the message."""
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match) as err:
        run(compose(task, data, *overrides), out)
    assert not (out / RESULTS_FILE).exists()
    return str(err.value)


# ---- 1. a malformed row names the file and the 1-based line ----------------------------------------------------
@pytest.mark.parametrize(
    ("task", "file", "line", "new", "match"),
    [
        ("glue/rte", "RTE/train.tsv", 5, "4\tthe cat sat here.\tthe cat sat.\tentailment\textra",
         "expected 4 tab-separated columns, got 5; fix or delete the line"),
        ("glue/rte", "RTE/dev.tsv", 3, "1\tonly two columns", "expected 4 tab-separated columns, got 2"),
        ("glue/stsb", "STS-B/train.tsv", 4, "2\tmain\tx\t2012\t0002\tnone\tnone\ta b.\ta b.\thigh",
         "label 'high' is not a number"),
        ("gsm8k", "train.jsonl", 3, '{"question": "1+1?", "answer": "#### 2"',
         "invalid JSON .*; fix or delete the line"),
        ("gsm8k", "test.jsonl", 2, '{"question": "1+1?"}',
         r"missing field 'answer'; the line has fields \['question'\]"),
        ("gsm8k", "train.jsonl", 1, '["1+1?", "#### 2"]', "expected a JSON object, got list"),
    ],
)  # fmt: skip
def test_malformed_row_names_file_and_line(tmp_path, data, task, file, line, new, match):
    edit_line(write(task, data) / file, line, new)
    message = fails(tmp_path, task, data, match=match)
    assert message.startswith(f"{data / file}:{line}: ")


def squad_without_context(path: Path) -> None:
    squad = json.loads(path.read_text())
    del squad["data"][1]["paragraphs"][0]["context"]
    path.write_text(json.dumps(squad))


@pytest.mark.parametrize(
    ("dataset", "writer", "file", "breaks", "match"),
    [
        ("squad", write_squad("v1.1", 8), "dev-v1.1.json", lambda p: p.write_text('{"data": [\n{"title": }'),
         r"dev-v1\.1\.json:2: invalid JSON \(Expecting value: column 11\); restore the official file"),
        ("squad", write_squad("v1.1", 8), "train-v1.1.json", squad_without_context,
         r"train-v1\.1\.json: data\[1\]\.paragraphs\[0\] lacks the field 'context'"),
        ("iwslt2017", write_iwslt2017, "IWSLT17.TED.dev2010.de-en.de.xml",
         lambda p: p.write_text(p.read_text().replace("</seg>", "</sg>", 1)), r"de\.xml:8: malformed XML"),
        ("food101", write_food101, "food-101/meta/test.txt", lambda p: edit_line(p, 2, "pizza/1"),
         r"test\.txt:2: class 'pizza' of 'pizza/1' is not one of the 3 classes in .*classes\.txt"),
        ("wmt16", write_wmt16, "test.en", lambda p: [p.write_text(""), p.with_suffix(".ro").write_text("")],
         r"test\.en holds no sentences \(nor does its parallel file .*test\.ro\)"),
    ],
)  # fmt: skip
def test_other_official_formats_name_the_file_and_place(tmp_path, dataset, writer, file, breaks, match):
    writer(tmp_path)
    breaks(tmp_path / file)
    with pytest.raises(ValueError, match=match):
        read_local(dataset, tmp_path)


# ---- 2. a label outside the task's label set: file and line, the value and the allowed set -----------------------
@pytest.mark.parametrize(
    ("task", "file", "line", "new", "match"),
    [
        ("glue/rte", "RTE/train.tsv", 2, "0\tA b.\tA.\t7", r"invalid label '7'; expected one of \['entailment', "
         r"'not_entailment'\]"),
        ("glue/rte", "RTE/dev.tsv", 4, "2\tA b.\tA.\tmaybe", "invalid label 'maybe'"),
        # STS-B scores are similarities in [0, 5] (the official range; the benchmark's data stays inside it)
        ("glue/stsb", "STS-B/dev.tsv", 2, "0\tmain\tx\t2012\t0000\tnone\tnone\ta b.\ta b.\t5.2",
         r"score 5.2 outside \[0.0, 5.0\], the STS-B similarity range"),
        ("hellaswag", "hellaswag_train.jsonl", 3, None, r"label 7 is not the index of one of the 4 endings "
         r"\['0', '1', '2', '3'\]"),
    ],
)  # fmt: skip
def test_label_outside_the_label_set(tmp_path, data, task, file, line, new, match):
    path = write(task, data) / file
    if new is None:  # HellaSwag: the same row with a label past its endings
        row = json.loads(path.read_text().splitlines()[line - 1])
        new = json.dumps(row | {"label": 7})
    edit_line(path, line, new)
    assert fails(tmp_path, task, data, match=match).startswith(f"{path}:{line}: ")


def test_image_label_outside_the_classes(tmp_path, data):
    path = write("vision/cifar100", data) / "cifar-100-python" / "train"
    batch = pickle.loads(path.read_bytes())
    batch[b"fine_labels"][3] = 100
    path.write_bytes(pickle.dumps(batch))
    message = fails(tmp_path, "vision/cifar100", data, match=r"fine_label 100 is not one of the 100 classes 0\.\.99")
    assert f"split 'train' of {data}, example 3" in message


# ---- 3. an empty split names the split and the file ----------------------------------------------------------
def test_empty_split(tmp_path, data):
    dev = write("glue/rte", data / "glue") / "RTE" / "dev.tsv"
    dev.write_text("index\tsentence1\tsentence2\tlabel\n")  # the header only
    fails(tmp_path, "glue/rte", data / "glue", match=f"{re.escape(str(dev))} has no data rows; an empty split cannot")

    gsm8k = write("gsm8k", data / "gsm8k")
    (gsm8k / "test.jsonl").write_text("\n")
    fails(tmp_path, "gsm8k", gsm8k, match=f"{re.escape(str(gsm8k / 'test.jsonl'))} holds no examples; restore")


@pytest.mark.parametrize(
    ("task", "overrides", "match"),
    [
        ("glue/rte", ["task.limit_eval=0"], "split 'dev' of {data} is empty: task.limit_eval=0 keeps none of its 8 "
         "examples; raise task.limit_eval or set it to null"),
        ("gsm8k", ["task.limit_train=0"], "split 'train' of {data} is empty: task.limit_train=0 keeps none of its 8"),
        ("gsm8k", ["task.holdout=8", "task.eval_splits=[holdout,test]"], "task.holdout=8 leaves split 'train' empty: "
         "{data} has 8 examples in it; lower task.holdout"),
        ("gsm8k", ["task.limit_train=-1"], "task.limit_train must be >= 0 or null, got -1"),
    ],
)  # fmt: skip
def test_split_emptied_by_limit_or_holdout(tmp_path, data, task, overrides, match):
    write(task, data)
    fails(tmp_path, task, data, *overrides, match=match.replace("{data}", re.escape(str(data))))


# ---- 4. truncation that leaves nothing to train on: counts, and "raise task.max_seq_length" ----------------------
@pytest.mark.parametrize(
    ("task", "key", "limit", "match"),
    [  # the tiny tokenizer adds [CLS] and [SEP]; a sentence pair gets 3 special tokens, GPT-2 here no BOS
        ("glue/rte", "max_seq_length", 3, "task.max_seq_length=3 leaves no room for text after the 3 special tokens of "
         "a sentence pair: all 24 training examples would be truncated to nothing; raise task.max_seq_length above 3"),
        ("gsm8k", "max_seq_length", 1, "task.max_seq_length=1 leaves no room for the target: all 8 training targets "
         "would be cut to zero tokens .*raise task.max_seq_length to at least 2"),
        ("wmt16/en-ro", "max_target_length", 2, "task.max_target_length=2 leaves no room for the target after the "
         "tokenizer's 2 special token.*all 8 training targets would be truncated to nothing; raise task.max_target"),
        ("wmt16/en-ro", "max_seq_length", 2, "task.max_seq_length=2 leaves no room for the prompt .*all 8 training "
         "prompts"),
    ],
)  # fmt: skip
def test_everything_truncated_away(tmp_path, data, task, key, limit, match):
    write(task, data)
    fails(tmp_path, task, data, f"task.{key}={limit}", match=match)
    # the check needs the tokenizer only (no weights), and one more token is enough to pass it
    cfg = compose(task, data, f"task.{key}={limit}")
    runner, tokenizer = build_task(OmegaConf.to_object(cfg.task)), load_tokenizer(OmegaConf.to_object(cfg.model))
    loaded = runner.load()
    with pytest.raises(ValueError, match=match):
        runner.check_lengths(loaded, tokenizer)
    runner = build_task(OmegaConf.to_object(compose(task, data, f"task.{key}={limit + 1}").task))
    runner.check_lengths(loaded, tokenizer)


# ---- 5. adapter shapes the model cannot take: the module and sizes, before any weights or data ------------------
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["method.a=64", "method.b=16"], r"a=64 must be <= 32; choose smaller method.a/method.b"),
        (["method.a=16", "method.b=64"], r"b=64 must be <= 32; choose smaller"),
        (["rab=r32_a64_b64"], r"a=64 must be <= 32 and b=64 must be <= 32"),
    ],
)
def test_impossible_adapter_shape_fails_before_weights(tmp_path, data, monkeypatch, overrides, match):
    built = []
    meta_only = loralab.run.build

    def build(plan, device="cpu"):
        built.append(device)
        return meta_only(plan, device)

    monkeypatch.setattr(loralab.run, "build", build)
    message = fails(tmp_path, "glue/rte", write("glue/rte", data), "method=lora_mini", *overrides, match=match)
    assert re.search(r"lora_mini: impossible shape for bert\.encoder\.layer\.\d\.\S+ \(32 -> 32\)", message)
    assert built == ["meta"]  # the meta-device build raised; no weights were loaded


# ---- 6. a sweep that expands to zero runs: exit status 1, the sweep parameter named, nothing launched -------------
@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["rab=glob(nomatch*)"], "rab=glob(nomatch*) (options of rab: r16_a32_b32,"),
        (["method=lora", "method.r=range(8,2)", "method.alpha=1,2"], "method.r=range(8,2)."),
        (["sweep=lora_mini_grid", "rab=glob(r99*)"], "rab=glob(r99*)"),  # the command line replaces the grid's rab
    ],
)
def test_sweep_expanding_to_zero_runs_exits_nonzero(tmp_path, overrides, named):
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "model=tiny-bert", *overrides, "dry_run=true",
           f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "the sweep expands to zero runs, so nothing was launched: no value for " in proc.stderr
    assert named in proc.stderr
    assert not sweep_dir.exists()
