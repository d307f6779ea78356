"""Readers for each dataset's official local files, and the Hugging Face hub fallback.

Both sources give ``{split: [record, ...]}`` with split names ``train``, ``validation`` and ``test``, and records
follow the hub dataset's layout (field names, nesting, label types), so the task code is the same for both sources.
"""

from __future__ import annotations

import json
import pickle
import random
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loralab.data.hub import HubDataset, count_rows, read_rows, split_files

SPLITS = ("train", "validation", "test")

Records = dict[str, list[dict]]
Reader = Callable[[Path, str | None], Records]


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of one dataset: where the hub has it and which local files ``read_local`` expects.

    Hub ids are pinned to the canonical repositories (no redirects); ``hub_by_subset`` gives subsets hosted
    elsewhere (SQuAD v2). A repository's folder is named only where it holds several subsets (GLUE tasks, WMT16
    pairs, GSM8K's main / socratic, IWSLT's pairs); single-subset repositories are read whole.
    """

    name: str
    hub: HubDataset
    subsets: tuple[str, ...]  # valid ``subset`` values; () means the dataset takes none
    files: str  # the expected local files, for error messages
    hub_by_subset: tuple[tuple[str, HubDataset], ...] = ()

    def hub_source(self, subset: str | None) -> HubDataset:
        """The hub repository (folder, revision) of this subset."""
        return dict(self.hub_by_subset).get(subset, self.hub)


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo(
            "wmt16",
            HubDataset("wmt/wmt16", "ro-en"),
            ("en-ro", "ro-en"),
            "line-aligned plain-text files {split}.en and {split}.ro for split train, validation and/or test "
            "(the Moses-prepared WMT16 corpora)",
        ),
        DatasetInfo(  # a loading-script repository: its Parquet conversion lives on refs/convert/parquet
            "iwslt2017",
            HubDataset("IWSLT/iwslt2017", "iwslt2017-de-en", "refs/convert/parquet"),
            ("de-en",),
            "the IWSLT 2017 release files train.tags.de-en.{de,en}, IWSLT17.TED.dev2010.de-en.{de,en}.xml "
            "and/or IWSLT17.TED.tst2010.de-en.{de,en}.xml",
        ),
        DatasetInfo(
            "squad",
            HubDataset("rajpurkar/squad"),
            ("v1", "v2"),
            "the official JSON train-v1.1.json and/or dev-v1.1.json (subset v1), train-v2.0.json and/or "
            "dev-v2.0.json (subset v2)",
            hub_by_subset=(("v2", HubDataset("rajpurkar/squad_v2")),),
        ),
        DatasetInfo("gsm8k", HubDataset("openai/gsm8k", "main"), (), "train.jsonl and/or test.jsonl"),
        DatasetInfo(
            "dialogsum",
            HubDataset("knkarthick/dialogsum"),
            (),
            "dialogsum.train.jsonl (or dialogsum.train.early-release.jsonl), dialogsum.dev.jsonl and/or "
            "dialogsum.test.jsonl",
        ),
        DatasetInfo(  # a loading-script repository: its Parquet conversion lives on refs/convert/parquet
            "hellaswag",
            HubDataset("Rowan/hellaswag", revision="refs/convert/parquet"),
            (),
            "hellaswag_train.jsonl, hellaswag_val.jsonl and/or hellaswag_test.jsonl",
        ),
        DatasetInfo(
            "cifar100",
            HubDataset("uoft-cs/cifar100"),
            (),
            "the CIFAR-100 python version: pickles train and/or test in cifar-100-python/ (the folder or its parent)",
        ),
        DatasetInfo(
            "food101",
            HubDataset("ethz/food101"),
            (),
            "the Food-101 layout: meta/classes.txt, meta/train.txt and/or meta/test.txt and images/<class>/<id>.jpg "
            "in food-101/ (the folder or its parent)",
        ),
    )
}
EARLY_RELEASE = {"dialogsum": "dialogsum.train.early-release.jsonl"}  # local files that are not the final release


def read_local(dataset: str, data_dir: str | Path, subset: str | None = None) -> Records:
    """Records of every split found in ``data_dir``, read from the dataset's official files (see ``DATASETS``).

    ``subset`` defaults to the dataset's first subset. Splits missing on disk are left out, but at least one must
    exist. Raises ValueError for an unknown dataset or subset, or malformed files, and FileNotFoundError when
    ``data_dir`` is missing or holds none of the expected files.
    """
    info, subset = _lookup(dataset, subset)
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(_missing(info, folder, "does not exist"))
    splits = _READERS[dataset](folder, subset)
    if not splits:
        raise FileNotFoundError(_missing(info, folder, "holds none of the expected files"))
    return splits


def local_label(dataset: str, folder: str | Path, split: str) -> str:
    """How a split read from a local folder is recorded: the folder, and a flag when the file read is an early
    release (DialogSum's 2021-05-26 train file, which differs slightly from the final release)."""
    early = EARLY_RELEASE.get(dataset)
    if split == "train" and early and not (Path(folder) / "dialogsum.train.jsonl").is_file():
        if (Path(folder) / early).is_file():
            return f"{Path(folder) / early} (EARLY RELEASE 2021-05-26, not the final train set)"
    return str(folder)


def read_hub(dataset: str, subset: str | None, splits: list[str]) -> tuple[Records, str]:
    """Records of the wanted splits of the hub dataset, in the layout ``read_local`` gives, and the source label.

    cifar100 images become uint8 arrays [32, 32, 3] as locally; food101 images become ``PIL.Image`` objects (locally
    they are paths to the jpg files), which the vision task opens the same way. DialogSum's hub test split has one
    row per (dialogue, reference): grouped by dialogue into one record with the 3 references, as the official file.
    """
    info, subset = _lookup(dataset, subset)
    ds = info.hub_source(subset)
    convert = _HUB_RECORD.get(dataset, dict)
    out = {split: [convert(row) for row in read_rows(files)] for split, files in split_files(ds, splits).items()}
    if dataset == "dialogsum" and "test" in out:
        out["test"] = group_references(out["test"])
    return out, f"hub:{ds}"


def group_references(records: list[dict]) -> list[dict]:
    """One record per dialogue (first-seen order), its references the summaries of all its rows."""
    grouped: dict[str, dict] = {}
    for r in records:
        if r["dialogue"] in grouped:
            grouped[r["dialogue"]]["references"].append(r["summary"])
        else:
            grouped[r["dialogue"]] = {**r, "references": [r["summary"]]}
    return list(grouped.values())


def count_hub(dataset: str, subset: str | None, splits: list[str], download: bool = True) -> tuple[dict[str, int], str]:
    """Rows per wanted split of the hub dataset from its files' metadata (preflight: ``download=False``, the local
    cache only), and the source label; DialogSum's test counts dialogues."""
    info, subset = _lookup(dataset, subset)
    ds = info.hub_source(subset)
    files = split_files(ds, splits, download)
    counts = {s: count_rows(f) for s, f in files.items() if not (dataset == "dialogsum" and s == "test")}
    if dataset == "dialogsum" and "test" in files:
        counts["test"] = len({r["dialogue"] for r in read_rows(files["test"])})
    return counts, f"hub:{ds}"


def split_by_article(records: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split records into (train, eval) by ``title`` so no article is in both: SQuAD's offline protocol.

    ``round(eval_fraction * n_titles)`` titles (at least 1, at most all but one), drawn with ``random.Random(seed)``,
    go to eval. Each part keeps the input order.
    """
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    titles = list(dict.fromkeys(r["title"] for r in records))
    if len(titles) < 2:
        raise ValueError(f"split_by_article needs at least 2 titles, got {len(titles)}")
    random.Random(seed).shuffle(titles)
    n_eval = min(max(round(eval_fraction * len(titles)), 1), len(titles) - 1)
    held = set(titles[:n_eval])
    return [r for r in records if r["title"] not in held], [r for r in records if r["title"] in held]


def _lookup(dataset: str, subset: str | None) -> tuple[DatasetInfo, str | None]:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}")
    info = DATASETS[dataset]
    if subset is None:
        return info, info.subsets[0] if info.subsets else None
    if subset not in info.subsets:
        valid = ", ".join(info.subsets) if info.subsets else "none (leave it unset)"
        raise ValueError(f"unknown subset {subset!r} for dataset {dataset!r}; valid subsets: {valid}")
    return info, subset


def _missing(info: DatasetInfo, folder: Path, problem: str) -> str:
    return (
        f"{info.name}: data folder {folder} {problem}; expected {info.files}; "
        "set task.data_dir (or LORALAB_ASSETS) to the folder holding them"
    )


def _present(folder: Path, names: dict[str, str]) -> dict[str, Path]:
    """``{split: path}`` for the files of ``names`` that exist in ``folder``."""
    return {split: folder / name for split, name in names.items() if (folder / name).is_file()}


def _nonempty(path: Path, records: list[dict], what: str = "examples") -> list[dict]:
    """``records``, or a ValueError naming ``path`` when it holds none (no official split is empty)."""
    if not records:
        raise ValueError(
            f"{path} holds no {what}; restore the official file, or delete it if you do not need the split"
        )
    return records


def _jsonl(path: Path, record: Callable[[dict], dict]) -> list[dict]:
    """Each non-blank line of a JSON Lines file as a record, converted by ``record``.

    A line that is not a JSON object, lacks a field ``record`` reads (KeyError) or holds a value it rejects
    (ValueError) is an error naming the file, the 1-based line number and the problem; so is a file without records.
    """
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg}: column {e.colno}); fix or delete the line") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}; fix or delete the line")
            try:
                records.append(record(row))
            except KeyError as e:
                raise ValueError(
                    f"{where}: missing field {e}; the line has fields {sorted(row)}; fix or delete the line"
                ) from None
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
    return _nonempty(path, records)


def _nonblank(path: Path) -> list[str]:
    """The stripped non-blank lines of a text file."""
    return [s for s in (line.strip() for line in path.read_text(encoding="utf-8").splitlines()) if s]


# ---- translation ----------------------------------------------------------------------------------------------
def _text_lines(path: Path) -> list[str]:
    """Every line, without its line ending (only ``\\n`` ends a line, so stray ``\\r`` cannot break alignment)."""
    with path.open(encoding="utf-8", newline="\n") as f:
        return [line.rstrip("\r\n") for line in f]


def _tag_lines(path: Path) -> list[str]:
    """The sentences of an IWSLT ``train.tags`` file: stripped lines, without the ``<...>`` metadata lines."""
    with path.open(encoding="utf-8", newline="\n") as f:
        return [s for s in (line.strip() for line in f) if not s.startswith("<")]


def _xml_segments(path: Path) -> list[str]:
    """The text of every ``<seg>`` of an IWSLT dev/test XML file, in document order, entities unescaped."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise ValueError(f"{path}:{e.position[0]}: malformed XML ({e}); restore the official file") from None
    return ["".join(seg.itertext()).strip() for seg in tree.iter("seg")]


def _read_parallel(
    folder: Path, langs: tuple[str, str], patterns: dict[str, tuple[str, Callable[[Path], list[str]]]]
) -> Records:
    """``{"translation": {lang: text}}`` records from pairs of aligned files; ``patterns`` maps a split to a file
    name pattern with ``{}`` for the language and the function that reads one side."""
    out = {}
    for split, (pattern, read) in patterns.items():
        a, b = (folder / pattern.format(lang) for lang in langs)
        if not a.is_file() and not b.is_file():
            continue
        for path, other in ((a, b), (b, a)):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing but its parallel file {other} exists")
        left, right = read(a), read(b)
        if len(left) != len(right):
            raise ValueError(f"{a} and {b} are not aligned: {len(left)} vs {len(right)} sentences")
        _nonempty(a, left, f"sentences (nor does its parallel file {b})")
        out[split] = [{"translation": {langs[0]: x, langs[1]: y}} for x, y in zip(left, right, strict=True)]
    return out


def _read_wmt16(folder: Path, subset: str | None) -> Records:
    return _read_parallel(folder, ("en", "ro"), {split: (f"{split}.{{}}", _text_lines) for split in SPLITS})


def _read_iwslt2017(folder: Path, subset: str | None) -> Records:
    src, tgt = subset.split("-")
    return _read_parallel(
        folder,
        (src, tgt),
        {
            "train": (f"train.tags.{subset}.{{}}", _tag_lines),
            "validation": (f"IWSLT17.TED.dev2010.{subset}.{{}}.xml", _xml_segments),
            "test": (f"IWSLT17.TED.tst2010.{subset}.{{}}.xml", _xml_segments),
        },
    )


# ---- text -----------------------------------------------------------------------------------------------------
def _squad_records(path: Path) -> list[dict]:
    """One record per question; unanswerable (v2 ``is_impossible``) questions get empty answer lists.

    Invalid JSON names the file, line and column; a missing field names the file and where in ``data`` it is.
    """
    with path.open(encoding="utf-8") as f:
        try:
            squad = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}:{e.lineno}: invalid JSON ({e.msg}: column {e.colno}); restore the official file"
            ) from None
    records, where = [], "the top level"
    try:
        for i, article in enumerate(squad["data"]):
            where = f"data[{i}]"
            title = article["title"]
            for j, paragraph in enumerate(article["paragraphs"]):
                where = f"data[{i}].paragraphs[{j}]"
                context = paragraph["context"]
                for k, qa in enumerate(paragraph["qas"]):
                    where = f"data[{i}].paragraphs[{j}].qas[{k}]"
                    answers = [] if qa.get("is_impossible") else qa["answers"]
                    records.append(
                        {
                            "id": qa["id"],
                            "title": title,
                            "context": context,
                            "question": qa["question"],
                            "answers": {
                                "text": [a["text"] for a in answers],
                                "answer_start": [a["answer_start"] for a in answers],
                            },
                        }
                    )
    except KeyError as e:
        raise ValueError(f"{path}: {where} lacks the field {e}; restore the official file") from None
    return _nonempty(path, records, "questions")


def _read_squad(folder: Path, subset: str | None) -> Records:
    version = {"v1": "v1.1", "v2": "v2.0"}[subset]
    files = _present(folder, {"train": f"train-{version}.json", "validation": f"dev-{version}.json"})
    return {split: _squad_records(path) for split, path in files.items()}


def _gsm8k_record(row: dict) -> dict:
    return {"question": row["question"], "answer": row["answer"]}


def _read_gsm8k(folder: Path, subset: str | None) -> Records:
    files = _present(folder, {"train": "train.jsonl", "test": "test.jsonl"})
    return {split: _jsonl(path, _gsm8k_record) for split, path in files.items()}


def _dialogsum_record(row: dict) -> dict:
    """Train/dev lines (and hub rows) have one summary; test lines have summary1..3 and topic1..3."""
    if "summary1" in row:
        refs = [row["summary1"], row["summary2"], row["summary3"]]
        return {
            "id": row["fname"],
            "dialogue": row["dialogue"],
            "summary": refs[0],
            "topic": row["topic1"],
            "references": refs,
        }
    return {
        "id": row["fname"] if "fname" in row else row["id"],  # the hub calls it id
        "dialogue": row["dialogue"],
        "summary": row["summary"],
        "topic": row["topic"],
        "references": [row["summary"]],
    }


def _read_dialogsum(folder: Path, subset: str | None) -> Records:
    train = "dialogsum.train.jsonl"
    if not (folder / train).is_file():
        train = "dialogsum.train.early-release.jsonl"
    files = _present(folder, {"train": train, "validation": "dialogsum.dev.jsonl", "test": "dialogsum.test.jsonl"})
    return {split: _jsonl(path, _dialogsum_record) for split, path in files.items()}


_HELLASWAG_FIELDS = ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split", "split_type")


def _hellaswag_record(row: dict) -> dict:
    """The official fields, with ``label`` an int, or None where unlabelled (absent locally, "" on the hub).

    A label that is not the index of one of the record's endings is a ValueError naming the value and the set.
    """
    record, label = {k: row[k] for k in _HELLASWAG_FIELDS}, row.get("label")
    allowed = [str(i) for i in range(len(record["endings"]))]
    if label not in (None, "") and str(label) not in allowed:
        raise ValueError(
            f"label {label!r} is not the index of one of the {len(allowed)} endings {allowed}; fix the label, or "
            "leave it out for an unlabelled row"
        )
    return {**record, "label": None if label in (None, "") else int(label)}


def _read_hellaswag(folder: Path, subset: str | None) -> Records:
    names = {"train": "hellaswag_train.jsonl", "validation": "hellaswag_val.jsonl", "test": "hellaswag_test.jsonl"}
    return {split: _jsonl(path, _hellaswag_record) for split, path in _present(folder, names).items()}


# ---- vision ---------------------------------------------------------------------------------------------------
def _inner(folder: Path, name: str) -> Path:
    """``folder/name`` when it exists, else ``folder`` itself (data_dir may be the dataset folder or its parent)."""
    return folder / name if (folder / name).is_dir() else folder


def _read_cifar100(folder: Path, subset: str | None) -> Records:
    """The official pickles (trusted files: ``pickle`` runs code from untrusted ones); images stored CHW."""
    out = {}
    for split, path in _present(_inner(folder, "cifar-100-python"), {"train": "train", "test": "test"}).items():
        with path.open("rb") as f:
            batch: dict[bytes, Any] = pickle.load(f, encoding="bytes")
        images = np.ascontiguousarray(
            np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        )
        out[split] = _nonempty(
            path,
            [
                {"img": img, "fine_label": int(fine), "coarse_label": int(coarse)}
                for img, fine, coarse in zip(images, batch[b"fine_labels"], batch[b"coarse_labels"], strict=True)
            ],
            "images",
        )
    return out


def _image(value: Any) -> Any:
    """A hub image: Parquet stores ``{"bytes", "path"}``; opened as a ``PIL.Image``."""
    if isinstance(value, dict):
        import io

        from PIL import Image

        return Image.open(io.BytesIO(value["bytes"]))
    return value


def _cifar_hub_record(row: dict) -> dict:
    return {
        "img": np.asarray(_image(row["img"]).convert("RGB"), dtype=np.uint8),
        "fine_label": row["fine_label"],
        "coarse_label": row["coarse_label"],
    }


def _read_food101(folder: Path, subset: str | None) -> Records:
    """Records ``{"image": path of the jpg, "label": index in meta/classes.txt}``; the hub calls test validation."""
    root = _inner(folder, "food-101")
    classes_file = root / "meta" / "classes.txt"
    if not classes_file.is_file():
        return {}
    label = {name: i for i, name in enumerate(_nonblank(classes_file))}
    files = _present(root / "meta", {"train": "train.txt", "validation": "test.txt"})
    out = {}
    for split, path in files.items():
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            item = line.strip()
            if not item:
                continue
            name = item.split("/")[0]
            if name not in label:
                raise ValueError(
                    f"{path}:{number}: class {name!r} of {item!r} is not one of the {len(label)} classes in "
                    f"{classes_file}; fix the line or the class list"
                )
            records.append({"image": str(root / "images" / f"{item}.jpg"), "label": label[name]})
        out[split] = _nonempty(path, records, "images")
    return out


_READERS: dict[str, Reader] = {
    "wmt16": _read_wmt16,
    "iwslt2017": _read_iwslt2017,
    "squad": _read_squad,
    "gsm8k": _read_gsm8k,
    "dialogsum": _read_dialogsum,
    "hellaswag": _read_hellaswag,
    "cifar100": _read_cifar100,
    "food101": _read_food101,
}
_HUB_RECORD: dict[str, Callable[[dict], dict]] = {
    "dialogsum": _dialogsum_record,
    "hellaswag": _hellaswag_record,
    "cifar100": _cifar_hub_record,
    "food101": lambda row: {"image": _image(row["image"]), "label": row["label"]},
}
