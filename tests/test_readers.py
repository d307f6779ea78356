from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from hub_cache import snapshot, write_parquet
from PIL import Image

from loralab.data.hub import HubDataset
from loralab.data.readers import DATASETS, count_hub, read_hub, read_local, split_by_article

ASSETS = Path(os.environ.get("LORALAB_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
REAL = ASSETS / "datasets"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def needs_real(*parts: str) -> Path:
    path = REAL.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real asset {path} is absent (set LORALAB_ASSETS to the shared assets folder)")
    return path


# ---- translation ----------------------------------------------------------------------------------------------
def test_wmt16_plain_text_pairs(tmp_path: Path) -> None:
    (tmp_path / "train.en").write_text("Hello world.\n  spaced  \n", encoding="utf-8")
    (tmp_path / "train.ro").write_text("Salut lume.\n  spațiat  \n", encoding="utf-8")
    (tmp_path / "validation.en").write_text("One.", encoding="utf-8")  # no final newline
    (tmp_path / "validation.ro").write_text("Unu.", encoding="utf-8")
    expected = {
        "train": [
            {"translation": {"en": "Hello world.", "ro": "Salut lume."}},
            {"translation": {"en": "  spaced  ", "ro": "  spațiat  "}},
        ],
        "validation": [{"translation": {"en": "One.", "ro": "Unu."}}],
    }
    assert read_local("wmt16", tmp_path) == expected
    assert read_local("wmt16", tmp_path, "ro-en") == expected


def test_wmt16_misaligned_and_half_pairs(tmp_path: Path) -> None:
    (tmp_path / "test.en").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "test.ro").write_text("a\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"test\.en and .*test\.ro are not aligned: 2 vs 1"):
        read_local("wmt16", tmp_path, "en-ro")
    (tmp_path / "test.ro").unlink()
    with pytest.raises(FileNotFoundError, match=r"test\.ro is missing"):
        read_local("wmt16", tmp_path)


IWSLT_TRAIN = {
    "de": """<url>http://www.ted.com/talks/a.html</url>
<keywords>talks, science</keywords>
<speaker>Jane Doe</speaker>
<talkid>1</talkid>
<title>Ein Titel</title>
<description>Eine Beschreibung</description>
  Hallo Welt.\t
Wir & ihr.
<reviewer href="x">R</reviewer>
<translator href="y">T</translator>
""",
    "en": """<url>http://www.ted.com/talks/a.html</url>
<keywords>talks, science</keywords>
<speaker>Jane Doe</speaker>
<talkid>1</talkid>
<title>A title</title>
<description>A description</description>
Hello world.
  We & you.
<reviewer href="x">R</reviewer>
<translator href="y">T</translator>
""",
}


def iwslt_xml(lang: str, segs: list[str]) -> str:
    body = "\n".join(f'<seg id="{i}"> {s} </seg>' for i, s in enumerate(segs, 1))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<mteval>
<srcset setid="iwslt2017-dev2010" srclang="{lang}">
<doc docid="535" genre="lectures">
<url>http://www.ted.com/talks/x.html</url>
<description>TED Talk &amp; more</description>
<talkid>535</talkid>
<title>Talk</title>
{body}
</doc>
</srcset>
</mteval>
"""


def test_iwslt2017_tags_and_xml(tmp_path: Path) -> None:
    for lang, text in IWSLT_TRAIN.items():
        (tmp_path / f"train.tags.de-en.{lang}").write_text(text, encoding="utf-8")
    segs = {"de": ["Erster &amp; Satz.", "&lt;b&gt; zwei &quot;x&quot;"], "en": ["First &amp; sentence.", "two"]}
    for lang, s in segs.items():
        (tmp_path / f"IWSLT17.TED.dev2010.de-en.{lang}.xml").write_text(iwslt_xml(lang, s), encoding="utf-8")
    assert read_local("iwslt2017", tmp_path, "de-en") == {
        "train": [
            {"translation": {"de": "Hallo Welt.", "en": "Hello world."}},
            {"translation": {"de": "Wir & ihr.", "en": "We & you."}},
        ],
        "validation": [
            {"translation": {"de": "Erster & Satz.", "en": "First & sentence."}},
            {"translation": {"de": '<b> zwei "x"', "en": "two"}},
        ],
    }


# ---- text -----------------------------------------------------------------------------------------------------
def squad_json(version: str, qas: list[dict]) -> str:
    paragraph = {"context": "Paris is in France.", "qas": qas}
    return json.dumps({"version": version, "data": [{"title": "Paris", "paragraphs": [paragraph]}]})


def test_squad_v1_and_v2(tmp_path: Path) -> None:
    answer = {"text": "France", "answer_start": 12}
    v1 = [{"id": "q1", "question": "Where is Paris?", "answers": [answer, answer]}]
    v2 = [
        {"id": "q2", "question": "Where is Paris?", "answers": [answer], "is_impossible": False},
        {
            "id": "q3",
            "question": "Where is Rome?",
            "answers": [],
            "plausible_answers": [answer],
            "is_impossible": True,
        },
    ]
    (tmp_path / "dev-v1.1.json").write_text(squad_json("1.1", v1), encoding="utf-8")
    (tmp_path / "train-v2.0.json").write_text(squad_json("v2.0", v2), encoding="utf-8")
    base = {"title": "Paris", "context": "Paris is in France."}
    assert read_local("squad", tmp_path) == {
        "validation": [
            {
                "id": "q1",
                **base,
                "question": "Where is Paris?",
                "answers": {"text": ["France", "France"], "answer_start": [12, 12]},
            }
        ]
    }
    assert read_local("squad", tmp_path, "v2") == {
        "train": [
            {"id": "q2", **base, "question": "Where is Paris?", "answers": {"text": ["France"], "answer_start": [12]}},
            {"id": "q3", **base, "question": "Where is Rome?", "answers": {"text": [], "answer_start": []}},
        ]
    }


def test_gsm8k_jsonl(tmp_path: Path) -> None:
    rows = [{"question": "1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"}, {"question": "2*3?", "answer": "#### 6"}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows[:1])
    assert read_local("gsm8k", tmp_path) == {"train": rows, "test": rows[:1]}


def test_dialogsum_splits_and_early_release_fallback(tmp_path: Path) -> None:
    row = {"fname": "train_0", "dialogue": "#Person1#: Hi.", "summary": "They greet.", "topic": "greeting"}
    write_jsonl(tmp_path / "dialogsum.train.early-release.jsonl", [row])
    write_jsonl(tmp_path / "dialogsum.dev.jsonl", [{**row, "fname": "dev_0"}])
    test_row = {"fname": "test_0", "dialogue": "#Person1#: Bye."}
    test_row |= {f"summary{i}": f"s{i}" for i in (1, 2, 3)} | {f"topic{i}": f"t{i}" for i in (1, 2, 3)}
    write_jsonl(tmp_path / "dialogsum.test.jsonl", [test_row])
    record = {"id": "train_0", "dialogue": "#Person1#: Hi.", "summary": "They greet.", "topic": "greeting"}
    assert read_local("dialogsum", tmp_path) == {
        "train": [{**record, "references": ["They greet."]}],
        "validation": [{**record, "id": "dev_0", "references": ["They greet."]}],
        "test": [
            {
                "id": "test_0",
                "dialogue": "#Person1#: Bye.",
                "summary": "s1",
                "topic": "t1",
                "references": ["s1", "s2", "s3"],
            }
        ],
    }
    write_jsonl(tmp_path / "dialogsum.train.jsonl", [{**row, "fname": "train_full"}])
    assert [r["id"] for r in read_local("dialogsum", tmp_path)["train"]] == ["train_full"]


HELLASWAG_ROW = {
    "ind": 4,
    "activity_label": "Removing ice from car",
    "ctx_a": "Then, the man writes over the snow.",
    "ctx_b": "then",
    "ctx": "Then, the man writes over the snow. then",
    "split": "train",
    "split_type": "indomain",
    "label": 3,
    "endings": ["a", "b", "c", "d"],
    "source_id": "activitynet~v_-1IBHYS3L-Y",
}


def test_hellaswag_labels(tmp_path: Path) -> None:
    unlabelled = {k: v for k, v in HELLASWAG_ROW.items() if k != "label"} | {"split": "test"}
    write_jsonl(tmp_path / "hellaswag_val.jsonl", [HELLASWAG_ROW])
    write_jsonl(tmp_path / "hellaswag_test.jsonl", [unlabelled])
    splits = read_local("hellaswag", tmp_path)
    assert splits == {"validation": [HELLASWAG_ROW], "test": [{**unlabelled, "label": None}]}
    assert list(splits["validation"][0]) == [
        "ind",
        "activity_label",
        "ctx_a",
        "ctx_b",
        "ctx",
        "endings",
        "source_id",
        "split",
        "split_type",
        "label",
    ]


# ---- vision ---------------------------------------------------------------------------------------------------
def test_cifar100_pickles(tmp_path: Path) -> None:
    hwc = np.arange(3 * 32 * 32 * 3, dtype=np.uint32).reshape(3, 32, 32, 3).astype(np.uint8)
    batch = {
        b"filenames": [b"a.png", b"b.png", b"c.png"],
        b"data": hwc.transpose(0, 3, 1, 2).reshape(3, 3072),  # official rows: all R, then all G, then all B
        b"fine_labels": [5, 0, 99],
        b"coarse_labels": [1, 0, 19],
    }
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "test").write_bytes(pickle.dumps(batch))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"apple"], b"coarse_label_names": [b"fish"]}))
    for data_dir in (tmp_path, folder):
        records = read_local("cifar100", data_dir)["test"]
        assert [(r["fine_label"], r["coarse_label"]) for r in records] == [(5, 1), (0, 0), (99, 19)]
        for record, image in zip(records, hwc, strict=True):
            assert record["img"].dtype == np.uint8 and record["img"].shape == (32, 32, 3)
            np.testing.assert_array_equal(record["img"], image)


def test_food101_layout(tmp_path: Path) -> None:
    root = tmp_path / "food-101"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "classes.txt").write_text("apple_pie\nbaby_back_ribs\n", encoding="utf-8")
    (root / "meta" / "train.txt").write_text("baby_back_ribs/2\n", encoding="utf-8")
    (root / "meta" / "test.txt").write_text("apple_pie/1005649\n", encoding="utf-8")
    for item, color in (("apple_pie/1005649", "red"), ("baby_back_ribs/2", "blue")):
        (root / "images" / item).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), color).save(root / "images" / f"{item}.jpg")
    expected = {
        "train": [{"image": str(root / "images" / "baby_back_ribs" / "2.jpg"), "label": 1}],
        "validation": [{"image": str(root / "images" / "apple_pie" / "1005649.jpg"), "label": 0}],
    }
    assert read_local("food101", tmp_path) == expected
    assert read_local("food101", root) == expected
    assert Image.open(expected["validation"][0]["image"]).size == (4, 4)


# ---- hub files (a local HF cache under the pinned ids: no network) -----------------------------------------------
def test_hub_rows_get_the_local_layout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    image = np.full((32, 32, 3), 7, dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    # HellaSwag: a loading-script repository, read through its Parquet conversion (split folders, numbered files)
    snap = snapshot(tmp_path, "Rowan/hellaswag", revision="refs/convert/parquet")
    write_parquet(snap / "default" / "test" / "0000.parquet", [{**HELLASWAG_ROW, "label": ""}])
    write_parquet(snap / "default" / "train" / "0000.parquet", [{**HELLASWAG_ROW, "label": "3"}])
    records, source = read_hub("hellaswag", None, ["train", "test"])
    assert records == {"test": [{**HELLASWAG_ROW, "label": None}], "train": [HELLASWAG_ROW]}
    assert source == "hub:Rowan/hellaswag@refs/convert/parquet"
    # DialogSum: CSV files; the test split's rows, one per (dialogue, reference), grouped by dialogue
    snap = snapshot(tmp_path, "knkarthick/dialogsum")
    (snap / "train.csv").write_text("id,dialogue,summary,topic\ntrain_0,d,s,t\n")
    rows = [f'test_{i}_{k},"dia {i}\nline",ref {i}.{k},t{k}' for i in range(2) for k in range(1, 4)]
    (snap / "test.csv").write_text("id,dialogue,summary,topic\n" + "\n".join(rows) + "\n")
    records, _ = read_hub("dialogsum", None, ["train", "test"])
    assert records["train"][0]["references"] == ["s"]
    assert [r["references"] for r in records["test"]] == [
        ["ref 0.1", "ref 0.2", "ref 0.3"],
        ["ref 1.1", "ref 1.2", "ref 1.3"],
    ]
    assert [r["dialogue"] for r in records["test"]] == ["dia 0\nline", "dia 1\nline"]
    assert count_hub("dialogsum", None, ["train", "test"]) == ({"train": 1, "test": 2}, "hub:knkarthick/dialogsum")
    # CIFAR-100: Parquet images as {"bytes", "path"}
    snap = snapshot(tmp_path, "uoft-cs/cifar100")
    write_parquet(snap / "cifar100" / "train-00000-of-00001.parquet",
                  [{"img": {"bytes": png.getvalue(), "path": None}, "fine_label": 1, "coarse_label": 2}])  # fmt: skip
    cifar = read_hub("cifar100", None, ["train"])[0]["train"][0]
    np.testing.assert_array_equal(cifar["img"], image)
    with pytest.raises(FileNotFoundError, match=r"split\(s\) \['test'\] not in the local Hugging Face cache"):
        read_hub("cifar100", None, ["test"])
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        read_hub("gsm8k", None, ["train"])
    assert DATASETS["squad"].hub_source("v2") == HubDataset("rajpurkar/squad_v2")
    assert DATASETS["wmt16"].hub_source("en-ro") == HubDataset("wmt/wmt16", "ro-en")
    assert DATASETS["iwslt2017"].hub_source("de-en").revision == "refs/convert/parquet"


# ---- errors ---------------------------------------------------------------------------------------------------
def test_missing_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        read_local("gsm8k", tmp_path / "nope")
    message = str(err.value)
    assert all(
        s in message for s in ("gsm8k", str(tmp_path / "nope"), "does not exist", "train.jsonl", "task.data_dir")
    )
    (tmp_path / "unrelated.txt").write_text("x")
    with pytest.raises(FileNotFoundError) as err:
        read_local("hellaswag", tmp_path)
    message = str(err.value)
    assert all(s in message for s in ("hellaswag", str(tmp_path), "hellaswag_val.jsonl", "LORALAB_ASSETS"))


def test_unknown_dataset_and_subset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; known datasets: wmt16, iwslt2017, squad"):
        read_local("mnist", tmp_path)
    with pytest.raises(ValueError, match="unknown subset 'v3' for dataset 'squad'; valid subsets: v1, v2"):
        read_local("squad", tmp_path, "v3")
    with pytest.raises(ValueError, match="valid subsets: none"):
        read_hub("gsm8k", "main", ["train"])


# ---- split_by_article -----------------------------------------------------------------------------------------
def test_split_by_article() -> None:
    records = [{"title": f"t{i % 10}", "n": i} for i in range(40)]
    train, held = split_by_article(records, 0.2, seed=3)
    assert {r["title"] for r in train}.isdisjoint({r["title"] for r in held})
    assert len({r["title"] for r in held}) == 2 and len(train) + len(held) == 40
    assert [r["n"] for r in train] == sorted(r["n"] for r in train)
    assert [r["n"] for r in held] == sorted(r["n"] for r in held)
    assert split_by_article(records, 0.2, seed=3) == (train, held)
    assert split_by_article(records, 0.2, seed=4) != (train, held)
    assert len({r["title"] for r in split_by_article(records, 0.01, 0)[1]}) == 1
    assert len({r["title"] for r in split_by_article(records, 0.99, 0)[0]}) == 1
    for fraction in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="eval_fraction"):
            split_by_article(records, fraction, 0)
    with pytest.raises(ValueError, match="at least 2 titles"):
        split_by_article(records[:1], 0.5, 0)


# ---- real assets ----------------------------------------------------------------------------------------------
def test_real_squad_dev() -> None:
    records = read_local("squad", needs_real("squad", "dev-v1.1.json").parent, "v1")["validation"]
    assert len(records) == 10570 and len({r["title"] for r in records}) == 48
    first = records[0]
    assert first["id"] == "56be4db0acb8001400a502ec" and first["title"] == "Super_Bowl_50"
    assert first["question"] == "Which NFL team represented the AFC at Super Bowl 50?"
    assert first["answers"] == {"text": ["Denver Broncos"] * 3, "answer_start": [177] * 3}
    train, held = split_by_article(records, 0.1, 0)
    assert len({r["title"] for r in held}) == 5 and len(train) + len(held) == 10570


def test_real_gsm8k() -> None:
    splits = read_local("gsm8k", needs_real("gsm8k", "train.jsonl").parent)
    assert {k: len(v) for k, v in splits.items()} == {"train": 7473, "test": 1319}
    assert "####" in splits["train"][0]["answer"]


def test_real_dialogsum() -> None:
    splits = read_local("dialogsum", needs_real("dialogsum", "dialogsum.test.jsonl").parent)
    assert {k: len(v) for k, v in splits.items()} == {"train": 12460, "validation": 500, "test": 500}
    assert all(len(r["references"]) == 3 and r["summary"] == r["references"][0] for r in splits["test"])
    assert all(r["references"] == [r["summary"]] for r in splits["validation"])
