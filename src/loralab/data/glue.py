"""GLUE task registry and loaders for the classic ``glue_data`` layout or the ``nyu-mll/glue`` hub dataset."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from loralab.data.hub import HubDataset, count_rows, read_rows, split_files


@dataclass(frozen=True)
class GlueTask:
    """Static description of one GLUE task."""

    name: str
    folder: str
    num_labels: int
    eval_splits: tuple[str, ...] = ("dev",)
    metrics: tuple[str, ...] = ("accuracy",)

    @property
    def is_regression(self) -> bool:
        """True for STS-B, whose single output is a similarity score."""
        return self.num_labels == 1


GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask("cola", "CoLA", 2, metrics=("mcc", "accuracy")),
        GlueTask("sst2", "SST-2", 2),
        GlueTask("mrpc", "MRPC", 2, metrics=("accuracy", "f1")),
        GlueTask("qqp", "QQP", 2, metrics=("accuracy", "f1")),
        GlueTask("stsb", "STS-B", 1, metrics=("pearson", "spearman")),
        GlueTask("mnli", "MNLI", 3, eval_splits=("dev_matched", "dev_mismatched")),
        GlueTask("qnli", "QNLI", 2),
        GlueTask("rte", "RTE", 2),
        GlueTask("wnli", "WNLI", 2),
    )
}


@dataclass(frozen=True)
class Example:
    """One labelled sentence or sentence pair."""

    text_a: str
    text_b: str | None
    label: int | float


@dataclass(frozen=True)
class _TsvFormat:
    """Column names of a glue_data TSV file; ``labels=None`` means a float score in ``_STSB_RANGE``."""

    text_a: str
    text_b: str | None
    label: str
    labels: dict[str, int] | None
    header: tuple[str, ...] | None = None  # column names for files without a header row (CoLA)


_BINARY = {"0": 0, "1": 1}
_NLI2 = {"entailment": 0, "not_entailment": 1}
_NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}
_STSB_RANGE = (0.0, 5.0)

_TSV: dict[str, _TsvFormat] = {
    "cola": _TsvFormat("sentence", None, "label", _BINARY, ("source", "label", "original_judgement", "sentence")),
    "sst2": _TsvFormat("sentence", None, "label", _BINARY),
    "mrpc": _TsvFormat("#1 String", "#2 String", "Quality", _BINARY),
    "qqp": _TsvFormat("question1", "question2", "is_duplicate", _BINARY),
    "stsb": _TsvFormat("sentence1", "sentence2", "score", None),
    "mnli": _TsvFormat("sentence1", "sentence2", "gold_label", _NLI3),
    "qnli": _TsvFormat("question", "sentence", "label", _NLI2),
    "rte": _TsvFormat("sentence1", "sentence2", "label", _NLI2),
    "wnli": _TsvFormat("sentence1", "sentence2", "label", _BINARY),
}

_HUB_TEXT: dict[str, tuple[str, str | None]] = {
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
_HUB_SPLITS = {
    "train": "train",
    "dev": "validation",
    "dev_matched": "validation_matched",
    "dev_mismatched": "validation_mismatched",
}
_DATA_DIR_HINT = "set task.data_dir or the LORALAB_GLUE_DIR environment variable to your glue_data folder"
_FIX_ROW = "fix or delete the line (or restore the official glue_data file)"


def load_glue(task: str, split: str, data_dir: str | Path | None) -> list[Example]:
    """Load a labelled split from ``<data_dir>/<folder>/<split>.tsv``, or the hub if ``data_dir`` is None."""
    if task not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; valid tasks: {', '.join(GLUE_TASKS)}")
    spec = GLUE_TASKS[task]
    splits = ("train", *spec.eval_splits)
    if split not in splits:
        raise ValueError(
            f"unknown split {split!r} for GLUE task {task!r}; valid splits: {', '.join(splits)} "
            "(test splits have no labels and are not supported)"
        )
    if data_dir is None:
        return _load_hub(spec, split)
    folder = Path(data_dir) / spec.folder
    if not folder.is_dir():
        raise FileNotFoundError(f"GLUE folder for task {task!r} not found: {folder}; {_DATA_DIR_HINT}")
    path = folder / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"GLUE file not found: {path}; {_DATA_DIR_HINT}")
    return _read_tsv(path, _TSV[task])


def _read_tsv(path: Path, fmt: _TsvFormat) -> list[Example]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = fmt.header or next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty (expected a header row); restore the official glue_data file")
        wanted = [c for c in (fmt.text_a, fmt.text_b, fmt.label) if c is not None]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise ValueError(f"{path}:1: header lacks column(s) {missing}; found {header}")
        a, label = header.index(fmt.text_a), header.index(fmt.label)
        b = None if fmt.text_b is None else header.index(fmt.text_b)
        examples = []
        for row in reader:
            where = f"{path}:{reader.line_num}"  # QUOTE_NONE: one record per physical line
            if len(row) != len(header):
                raise ValueError(f"{where}: expected {len(header)} tab-separated columns, got {len(row)}; {_FIX_ROW}")
            value = _parse_label(row[label], fmt.labels, where)
            examples.append(Example(row[a], None if b is None else row[b], value))
    if not examples:
        raise ValueError(f"{path} has no data rows; an empty split cannot be used: restore the official glue_data file")
    return examples


def _parse_label(raw: str, labels: dict[str, int] | None, where: str) -> int | float:
    if labels is not None:
        if raw not in labels:
            raise ValueError(f"{where}: invalid label {raw!r}; expected one of {sorted(labels)}; {_FIX_ROW}")
        return labels[raw]
    lo, hi = _STSB_RANGE
    try:
        score = float(raw)
    except ValueError:
        raise ValueError(f"{where}: label {raw!r} is not a number; {_FIX_ROW}") from None
    if not lo <= score <= hi:  # also rejects nan
        raise ValueError(f"{where}: score {score} outside [{lo}, {hi}], the STS-B similarity range; {_FIX_ROW}")
    return score


GLUE_HUB = "nyu-mll/glue"


def hub_dataset(task: str) -> HubDataset:
    """GLUE on the hub: one folder per task (``rte/train-00000-of-00001.parquet``)."""
    return HubDataset(GLUE_HUB, task)


def _load_hub(spec: GlueTask, split: str) -> list[Example]:
    files = split_files(hub_dataset(spec.name), [_HUB_SPLITS[split]])[_HUB_SPLITS[split]]
    a, b = _HUB_TEXT[spec.name]
    cast = float if spec.is_regression else int
    return [Example(r[a], None if b is None else r[b], cast(r["label"])) for r in read_rows(files)]


def count_glue_hub(task: str, split: str, download: bool = True) -> int:
    """Labelled examples of a split on the hub, from its files' metadata (``download=False``: the local cache
    only)."""
    return count_rows(split_files(hub_dataset(task), [_HUB_SPLITS[split]], download)[_HUB_SPLITS[split]])
