from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
from hub_cache import snapshot, write_parquet

from loralab.data.glue import GLUE_TASKS, Example, load_glue

REAL_GLUE = Path(__file__).resolve().parents[1].parent / "shared/assets/datasets/glue"

MNLI_TRAIN_HEADER = (
    "index promptID pairID genre sentence1_binary_parse sentence2_binary_parse sentence1_parse "
    "sentence2_parse sentence1 sentence2 label1 gold_label"
).split()
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]
STSB_HEADER = "index genre filename year old_index source1 source2 sentence1 sentence2 score".split()


def write_tsv(root: Path, folder: str, split: str, lines: list[str], bom: bool = False) -> Path:
    path = root / folder / f"{split}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(line + "\n" for line in lines)
    path.write_text(text, encoding="utf-8-sig" if bom else "utf-8")
    return path


def table(header: list[str], rows: list[dict[str, str]]) -> list[str]:
    """Header line plus one line per row; columns a row does not name are filled with 'x'."""
    return ["\t".join(header)] + ["\t".join(row.get(col, "x") for col in header) for row in rows]


# task, split, folder, file lines, expected examples
SYNTHETIC = [
    (
        "cola",
        "train",
        "CoLA",
        ["gj04\t1\t\tThe sailors rode the breeze.", "gj04\t0\t*\tRode sailors the breeze the."],
        [Example("The sailors rode the breeze.", None, 1), Example("Rode sailors the breeze the.", None, 0)],
    ),
    (
        "sst2",
        "dev",
        "SST-2",
        ["sentence\tlabel", "a charming journey . \t1", "labored gags \t0"],
        [Example("a charming journey . ", None, 1), Example("labored gags ", None, 0)],
    ),
    (
        "qqp",
        "train",
        "QQP",
        table(
            ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            [
                {"question1": "How do I learn?", "question2": "How can I learn?", "is_duplicate": "1"},
                {"question1": "What is AI?", "question2": "Why is the sky blue?", "is_duplicate": "0"},
            ],
        ),
        [
            Example("How do I learn?", "How can I learn?", 1),
            Example("What is AI?", "Why is the sky blue?", 0),
        ],
    ),
    (
        "stsb",
        "dev",
        "STS-B",
        table(
            STSB_HEADER,
            [
                {"sentence1": "A plane takes off.", "sentence2": "An air plane takes off.", "score": "5.000"},
                {"sentence1": "A man sings.", "sentence2": "A dog runs.", "score": "0.250"},
            ],
        ),
        [
            Example("A plane takes off.", "An air plane takes off.", 5.0),
            Example("A man sings.", "A dog runs.", 0.25),
        ],
    ),
    (
        "mnli",
        "train",
        "MNLI",
        table(
            MNLI_TRAIN_HEADER,
            [
                {"sentence1": "P1", "sentence2": "H1", "label1": "neutral", "gold_label": "neutral"},
                {"sentence1": "P2", "sentence2": "H2", "label1": "entailment", "gold_label": "entailment"},
            ],
        ),
        [Example("P1", "H1", 1), Example("P2", "H2", 0)],
    ),
    (
        "mnli",
        "dev_matched",
        "MNLI",
        table(MNLI_DEV_HEADER, [{"sentence1": "P", "sentence2": "H", "gold_label": "contradiction"}]),
        [Example("P", "H", 2)],
    ),
    (
        "mnli",
        "dev_mismatched",
        "MNLI",
        table(MNLI_DEV_HEADER, [{"sentence1": "P", "sentence2": "H", "gold_label": "entailment"}]),
        [Example("P", "H", 0)],
    ),
    (
        "qnli",
        "train",
        "QNLI",
        table(
            ["index", "question", "sentence", "label"],
            [
                {"question": "Q1?", "sentence": "S1.", "label": "entailment"},
                {"question": "Q2?", "sentence": "S2.", "label": "not_entailment"},
            ],
        ),
        [Example("Q1?", "S1.", 0), Example("Q2?", "S2.", 1)],
    ),
    (
        "rte",
        "dev",
        "RTE",
        table(
            ["index", "sentence1", "sentence2", "label"],
            [{"sentence1": "A.", "sentence2": "B.", "label": "not_entailment"}],
        ),
        [Example("A.", "B.", 1)],
    ),
    (
        "wnli",
        "train",
        "WNLI",
        table(
            ["index", "sentence1", "sentence2", "label"],
            [
                {"sentence1": "It had a hole.", "sentence2": "The carrot had a hole.", "label": "1"},
                {"sentence1": "It is clogged.", "sentence2": "The hair is clogged.", "label": "0"},
            ],
        ),
        [
            Example("It had a hole.", "The carrot had a hole.", 1),
            Example("It is clogged.", "The hair is clogged.", 0),
        ],
    ),
]


@pytest.mark.parametrize(("task", "split", "folder", "lines", "expected"), SYNTHETIC)
def test_load_synthetic(tmp_path, task, split, folder, lines, expected):
    write_tsv(tmp_path, folder, split, lines)
    assert load_glue(task, split, tmp_path) == expected
    assert load_glue(task, split, str(tmp_path)) == expected


def test_mrpc_bom_and_stray_quote(tmp_path):
    lines = [
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
        '1\t1355540\t1355592\tHe said the pie "business fits.\t"The pie business fits.',
        "0\t1\t2\tFirst.\tSecond.",
    ]
    write_tsv(tmp_path, "MRPC", "train", lines, bom=True)
    assert load_glue("mrpc", "train", tmp_path) == [
        Example('He said the pie "business fits.', '"The pie business fits.', 1),
        Example("First.", "Second.", 0),
    ]


def test_header_columns_found_by_name(tmp_path):
    # Same SST-2 data with the columns swapped: parsed by header name, not position.
    write_tsv(tmp_path, "SST-2", "train", ["label\tsentence", "1\tgood"])
    assert load_glue("sst2", "train", tmp_path) == [Example("good", None, 1)]


def test_task_registry():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    assert [t.name for t in GLUE_TASKS.values() if t.is_regression] == ["stsb"]
    assert GLUE_TASKS["mnli"].num_labels == 3 and GLUE_TASKS["stsb"].num_labels == 1
    assert GLUE_TASKS["mnli"].eval_splits == ("dev_matched", "dev_mismatched")
    assert GLUE_TASKS["stsb"].folder == "STS-B" and GLUE_TASKS["sst2"].folder == "SST-2"


def test_wrong_column_count_names_file_and_line(tmp_path):
    path = write_tsv(tmp_path, "SST-2", "train", ["sentence\tlabel", "fine\t1", "broken\t1\textra"])
    with pytest.raises(ValueError, match="expected 2 tab-separated columns, got 3") as err:
        load_glue("sst2", "train", tmp_path)
    assert f"{path}:3" in str(err.value)


def test_cola_wrong_column_count(tmp_path):
    path = write_tsv(tmp_path, "CoLA", "dev", ["gj04\t1\t\tok", "gj04\t1\tno judgement column"])
    with pytest.raises(ValueError, match="expected 4 tab-separated columns, got 3") as err:
        load_glue("cola", "dev", tmp_path)
    assert f"{path}:2" in str(err.value)


def test_missing_header_column(tmp_path):
    path = write_tsv(tmp_path, "QQP", "train", ["id\tqid1\tqid2\tquestion1\tquestion2", "0\t1\t2\tA?\tB?"])
    with pytest.raises(ValueError, match="is_duplicate") as err:
        load_glue("qqp", "train", tmp_path)
    assert f"{path}:1" in str(err.value)


@pytest.mark.parametrize(
    ("task", "folder", "lines", "message"),
    [
        ("rte", "RTE", ["index\tsentence1\tsentence2\tlabel", "0\tA\tB\tmaybe"], "invalid label 'maybe'"),
        ("wnli", "WNLI", ["index\tsentence1\tsentence2\tlabel", "0\tA\tB\t3"], "invalid label '3'"),
        ("cola", "CoLA", ["gj04\t1\t\tok", "gj04\tyes\t\tbad"], "invalid label 'yes'"),
        ("mnli", "MNLI", table(MNLI_TRAIN_HEADER, [{"gold_label": "-"}]), "invalid label '-'"),
        ("stsb", "STS-B", table(STSB_HEADER, [{"score": "high"}]), "'high' is not a number"),
        ("stsb", "STS-B", table(STSB_HEADER, [{"score": "7.5"}]), r"outside \[0.0, 5.0\]"),
        ("stsb", "STS-B", table(STSB_HEADER, [{"score": "nan"}]), "outside"),
    ],
)
def test_bad_label(tmp_path, task, folder, lines, message):
    path = write_tsv(tmp_path, folder, "train", lines)
    with pytest.raises(ValueError, match=message) as err:
        load_glue(task, "train", tmp_path)
    assert f"{path}:2" in str(err.value)


@pytest.mark.parametrize(
    ("task", "folder", "lines", "message"),
    [
        ("sst2", "SST-2", [], "is empty"),
        ("sst2", "SST-2", ["sentence\tlabel"], "has no data rows"),
        ("cola", "CoLA", [], "has no data rows"),
    ],
)
def test_empty_split(tmp_path, task, folder, lines, message):
    path = write_tsv(tmp_path, folder, "train", lines)
    with pytest.raises(ValueError, match=message) as err:
        load_glue(task, "train", tmp_path)
    assert str(path) in str(err.value)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_glue("rte", "train", tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "RTE") in message
    assert "LORALAB_GLUE_DIR" in message and "task.data_dir" in message


def test_missing_file(tmp_path):
    write_tsv(tmp_path, "MNLI", "train", table(MNLI_TRAIN_HEADER, [{"gold_label": "neutral"}]))
    with pytest.raises(FileNotFoundError) as err:
        load_glue("mnli", "dev_matched", tmp_path)
    assert str(tmp_path / "MNLI" / "dev_matched.tsv") in str(err.value)
    assert "LORALAB_GLUE_DIR" in str(err.value)


def test_unknown_task(tmp_path):
    with pytest.raises(ValueError, match="unknown GLUE task 'sst-2'.*sst2"):
        load_glue("sst-2", "train", tmp_path)


@pytest.mark.parametrize(("task", "split", "valid"), [("rte", "test", "train, dev"), ("mnli", "dev", "dev_matched")])
def test_unknown_split(tmp_path, task, split, valid):
    with pytest.raises(ValueError, match=f"unknown split '{split}'.*{valid}"):
        load_glue(task, split, tmp_path)


HUB_COLUMNS = {
    "cola": ("sentence", None),
    "sst2": ("sentence", None),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}
HUB_SPLITS = {
    "train": "train",
    "dev": "validation",
    "dev_matched": "validation_matched",
    "dev_mismatched": "validation_mismatched",
}


@pytest.mark.parametrize(
    ("task", "split"),
    [(task, split) for task, spec in GLUE_TASKS.items() for split in ("train", *spec.eval_splits)],
)
def test_load_from_hub(monkeypatch, tmp_path, task, split):
    """The hub's Parquet files (here in a local HF cache under nyu-mll/glue) give the same examples."""
    a, b = HUB_COLUMNS[task]
    rows = [{"idx": 0, a: "first", "label": 1}, {"idx": 1, a: "second", "label": 0}]
    if b is not None:
        for i, row in enumerate(rows):
            row[b] = f"pair {i}"
    snap = snapshot(tmp_path, "nyu-mll/glue")
    write_parquet(snap / task / f"{HUB_SPLITS[split]}-00000-of-00001.parquet", rows)
    write_parquet(snap / "other" / f"{HUB_SPLITS[split]}-00000-of-00001.parquet", rows[:1])  # another task's folder
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    examples = load_glue(task, split, None)
    assert examples == [
        Example("first", None if b is None else "pair 0", 1),
        Example("second", None if b is None else "pair 1", 0),
    ]
    assert all(type(ex.label) is (float if task == "stsb" else int) for ex in examples)


def real_glue() -> Path:
    if not REAL_GLUE.is_dir():
        pytest.skip(f"real GLUE data not found at {REAL_GLUE}")
    return REAL_GLUE


@pytest.mark.parametrize(
    ("task", "n_train", "n_dev", "label_set"),
    [
        ("cola", 8551, 1043, {0, 1}),
        ("sst2", 67349, 872, {0, 1}),
        ("mrpc", 3668, 408, {0, 1}),
        ("rte", 2490, 277, {0, 1}),
        ("wnli", 635, 71, {0, 1}),
    ],
)
def test_real_classification_data(task, n_train, n_dev, label_set):
    root = real_glue()
    for split, count in (("train", n_train), ("dev", n_dev)):
        examples = load_glue(task, split, root)
        assert len(examples) == count
        assert {ex.label for ex in examples} == label_set
        assert all(ex.text_a for ex in examples)
        assert all((ex.text_b is None) == (task in ("cola", "sst2")) for ex in examples)


def test_real_stsb_data():
    root = real_glue()
    for split, count in (("train", 5749), ("dev", 1500)):
        scores = [ex.label for ex in load_glue("stsb", split, root)]
        assert len(scores) == count
        assert all(isinstance(s, float) and 0.0 <= s <= 5.0 for s in scores)
        assert min(scores) == 0.0 and max(scores) == 5.0


def test_real_rows_parsed_verbatim():
    root = real_glue()
    assert load_glue("rte", "train", root)[0] == Example(
        "No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.", 1
    )
    # The MRPC dev file has a BOM and unbalanced quote characters that must be kept as-is.
    first = load_glue("mrpc", "dev", root)[0]
    assert first.label == 1
    assert first.text_b == '"The foodservice pie business does not fit our long-term growth strategy.'
