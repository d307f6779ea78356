"""The paper profile never substitutes silently: no weights is an error before any data is read (random weights only
when asked for), the papers' hub ids are read from a local Hugging Face cache exactly as after a download
(``tests/hub_cache.py``: no network), every split's source is recorded, and a table never renders a cell from a
random-weight run or, under the paper profile, from data that is not the paper's split."""

from __future__ import annotations

import json

import huggingface_hub
import pytest
import torch
from conftest import compose_cfg
from hub_cache import PAPER_RTE, tiny_roberta_hub
from safetensors.torch import load_file
from test_tables import fake_result, write_spec

from loralab import tables
from loralab.models import ModelConfig, build_model, resolve_weights
from loralab.run import run
from loralab.tasks.base import Task


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_no_weights_stops_before_any_data(tmp_path, hub, monkeypatch):
    monkeypatch.setattr(Task, "load", lambda self: pytest.fail("data read before the weights were found"))
    cfg = compose_cfg("model=roberta-base", "task=glue/rte", "method=lora_mini", "logger.mode=disabled")
    with pytest.raises(FileNotFoundError) as err:
        run(cfg, tmp_path / "out")
    message = str(err.value)
    for part in (
        "roberta-base",
        "FacebookAI/roberta-base",
        "HF_HUB_OFFLINE",
        "model.local_path",
        "model.weights=random",
    ):
        assert part in message
    assert not (tmp_path / "out" / "results.json").exists()


def test_random_weights_only_when_asked_for(tmp_path):
    arch = {"model_type": "bert", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 32}  # fmt: skip
    for weights in ("auto", "pretrained"):
        cfg = ModelConfig(name="x", family="bert", weights=weights, local_path=str(tmp_path / "none"), arch=arch)
        with pytest.raises(FileNotFoundError, match=r"local_path .*none does not exist.*model.weights=random"):
            build_model(cfg, "sequence_classification", 2)
    model, source = build_model(ModelConfig(name="x", family="bert", weights="random", arch=arch), "base")
    assert source == "random" and isinstance(model, torch.nn.Module)


def test_paper_ids_from_the_hub_cache_are_pretrained_and_hub_data(tmp_path, hub):
    files = tiny_roberta_hub(hub)
    source = resolve_weights(compose_cfg("model=roberta-base").model)
    assert (source.kind, source.location, source.cached) == ("hub", "FacebookAI/roberta-base", True)
    result = run(compose_cfg(*PAPER_RTE, f"task.data_dir={tmp_path / 'no_glue'}"), tmp_path / "out")
    assert result["status"] == "finished" and result["weights_source"] == "hub:FacebookAI/roberta-base"
    assert result["data_sources"] == {"train": "hub:nyu-mll/glue/rte", "dev": "hub:nyu-mll/glue/rte"}
    assert result["num_train_examples"] == 24 and result["num_eval_examples"] == {"dev": 8}
    # the cached weights are what is loaded (not a fresh random build)
    model, label = build_model(compose_cfg(*PAPER_RTE).model, "sequence_classification", 2)
    stored = load_file(files["model"] / "model.safetensors")
    assert label == "hub:FacebookAI/roberta-base"
    torch.testing.assert_close(
        model.roberta.embeddings.word_embeddings.weight,
        stored[next(k for k in stored if k.endswith("word_embeddings.weight"))],
    )


def test_local_splits_first_then_the_hub_for_the_missing_ones(tmp_path, hub, tiny_glue):
    tiny_roberta_hub(hub)
    (tiny_glue / "RTE" / "dev.tsv").unlink()  # the local copy lacks the dev split
    result = run(compose_cfg(*PAPER_RTE, f"task.data_dir={tiny_glue}"), tmp_path / "out")
    assert result["data_sources"] == {"train": str(tiny_glue), "dev": "hub:nyu-mll/glue/rte"}
    assert "train: " in result["data_source"] and "dev: hub:nyu-mll/glue/rte" in result["data_source"]


def test_a_missing_split_names_it_and_how_to_provide_it(tmp_path, hub):
    files = tiny_roberta_hub(hub)
    (files["glue"] / "rte" / "validation-00000-of-00001.parquet").unlink()
    with pytest.raises(FileNotFoundError) as err:
        run(compose_cfg(*PAPER_RTE, f"task.data_dir={tmp_path / 'no_glue'}"), tmp_path / "out")
    message = str(err.value)
    for part in (
        "['train', 'dev']",
        "split(s) ['validation'] not in",
        "nyu-mll/glue",
        "HF_HUB_OFFLINE",
        "task.data_dir",
    ):
        assert part in message


# ---- tables: refused cells --------------------------------------------------------------------------------------
def put_profile(root, profile, row, seed, result):
    path = root / "runs" / "mypaper" / "tab1" / profile / row / "rte" / f"seed{seed}" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))


@pytest.mark.parametrize("profile", ["paper", "offline"])
def test_a_cell_is_never_rendered_from_random_weights(tmp_path, profile):
    spec = tables.load_spec(write_spec(tmp_path))
    good = {**fake_result(0.6), "data_sources": {"train": "hub:nyu-mll/glue/rte", "dev": "hub:nyu-mll/glue/rte"}}
    put_profile(tmp_path, profile, "lora_r2", 1, {**good, "weights_source": "random"})
    put_profile(tmp_path, profile, "lora_r2", 2, good)  # one random seed is enough to refuse the cell
    put_profile(tmp_path, profile, "lora_r4", 1, good)
    put_profile(tmp_path, profile, "lora_r4", 2, good)
    results = tables.results_from_disk(spec, profile, tmp_path)
    cells = {(c.row, c.column): c for c in tables.collect(spec, profile, results, {})}
    refused = cells[("lora_r2", "acc")]
    assert refused.ours == [] and refused.mean is None and "random" in refused.refused
    assert cells[("lora_r4", "acc")].mean == pytest.approx(60.0)
    md, _ = tables.render(spec, profile, list(cells.values()), results)
    assert "| lora_r2 | acc | not rendered: weights were random" in md


def test_paper_cells_need_the_papers_data(tmp_path):
    spec = tables.load_spec(write_spec(tmp_path))
    early = {**fake_result(0.6), "data_sources": {"train": "/d/x.jsonl (EARLY RELEASE 2021-05-26, ...)", "dev": "/d"}}
    put_profile(tmp_path, "paper", "lora_r2", 1, early)
    put_profile(tmp_path, "paper", "lora_r4", 1, fake_result(0.6))  # older result: no per-split sources
    results = tables.results_from_disk(spec, "paper", tmp_path)
    cells = {(c.row, c.column): c for c in tables.collect(spec, "paper", results, {})}
    assert "EARLY RELEASE" in cells[("lora_r2", "acc")].refused
    assert "no per-split data sources" in cells[("lora_r4", "acc")].refused
    limited = {**fake_result(0.6), "data_sources": {"train": "/d", "dev": "/d"}}
    limited["config"]["task"]["limit_train"] = 100
    assert tables.refusal(limited, "paper") == "limited data (task.limit_train=100)"
    assert tables.refusal(limited, "offline") == ""  # the offline profile declares its limits


# ---- paper settings: a step-based evaluation cadence (Tied-LoRA: "validation check interval of 30 steps") -------
def test_eval_every_steps_with_patience(tmp_path, tiny_glue):
    base = ["model=tiny-bert", "task=glue/rte", f"task.data_dir={tiny_glue}", "method=lora", "logger.mode=disabled",
            "trainer.batch_size=4", "trainer.epochs=2", "trainer.eval_every=4", "trainer.progress=false"]  # fmt: skip
    result = run(compose_cfg(*base), tmp_path / "a")  # 24 examples: 6 steps per epoch, 12 in all
    assert [(e["epoch"], e["step"]) for e in result["metrics"]["epochs"]] == [(1, 4), (2, 8), (2, 12)]
    # a constant metric (lr 0) stops after `patience` evaluations without improvement, mid-epoch
    result = run(compose_cfg(*base, "trainer.lr=0", "trainer.early_stopping_patience=1"), tmp_path / "b")
    assert [e["step"] for e in result["metrics"]["epochs"]] == [4, 8] and result["metrics"]["steps"] == 8
