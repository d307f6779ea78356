"""Preflight resolves runs without training: where weights, tokenizer and splits come from, examples, steps,
schedule and memory; it passes with everything in a (simulated) hub cache and fails, naming what is missing, when a
weight, tokenizer or split is missing. For one run (train.py preflight=true) and every run of a table."""

from __future__ import annotations

import huggingface_hub
import pytest
import yaml
from conftest import compose_cfg
from hub_cache import PAPER_RTE, tiny_roberta_hub

from loralab import tables
from loralab.preflight import check
from loralab.run import run


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache, tiny_roberta_hub(cache, n_train=40, n_dev=8)


def rte(tmp_path, *extra: str):
    return compose_cfg(*PAPER_RTE, f"task.data_dir={tmp_path / 'no_glue'}", *extra)


def test_passes_with_everything_in_the_hub_cache(tmp_path, hub):
    report = check(rte(tmp_path, "trainer.epochs=3"), "rte", seeds=[1, 2, 3], profile="paper")
    assert report.ok, report.line()
    f = report.facts
    assert f["weights"] == "hub FacebookAI/roberta-base (local HF cache)"
    assert f["tokenizer"] == "hub FacebookAI/roberta-base (local HF cache)"
    assert f["splits"] == {"train": (40, "hub:nyu-mll/glue/rte"), "dev": (8, "hub:nyu-mll/glue/rte")}
    assert f["steps_per_epoch"] == 5 and f["total_steps"] == "15" and f["seeds"] == [1, 2, 3]
    assert 0.1 < f["memory_gib"] < 10  # roberta-base's shapes (meta build), batch 8 x 32 tokens
    assert report.line().startswith("OK rte: weights hub FacebookAI/roberta-base")


@pytest.mark.parametrize(
    ("missing", "says"),
    [
        ("model.safetensors", "weights: model roberta-base: no pretrained weights"),
        ("tokenizer.json", "tokenizer: model roberta-base: no tokenizer"),
        ("validation-00000-of-00001.parquet", "data: split(s) ['dev'] of glue/rte"),
    ],
)
def test_fails_naming_what_is_missing(tmp_path, hub, missing, says):
    _, files = hub
    if missing == "tokenizer.json":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (files["model"] / name).unlink()
    else:
        next(p for p in (files["model"] / missing, files["glue"] / "rte" / missing) if p.exists()).unlink()
    report = check(rte(tmp_path), "rte", profile="paper")
    assert not report.ok and any(p.startswith(says) for p in report.problems), report.problems
    assert "HF_HUB_OFFLINE" in report.line()  # and how to provide it


def test_train_py_preflight_exit_code(tmp_path, hub):
    facts = run(rte(tmp_path, "preflight=true"), tmp_path / "out")  # passes: returns the facts, trains nothing
    assert facts["steps_per_epoch"] == 5 and not (tmp_path / "out").exists()
    (hub[1]["model"] / "model.safetensors").unlink()
    with pytest.raises(SystemExit) as exit_:
        run(rte(tmp_path, "preflight=true"), tmp_path / "out")
    assert exit_.value.code == 1


def test_schedule_and_substitutes(tmp_path, hub):
    ada = ["method=adalora", "method.t_init=3", "method.t_final=3"]  # 5 steps: t_init must be < 5 - 3
    report = check(rte(tmp_path, *ada), "ada")
    assert not report.ok and "schedule: adalora needs t_init < total steps - t_final" in report.problems[0]
    assert check(rte(tmp_path, *ada, "method.t_init=1"), "ada").ok
    limited = rte(tmp_path, "task.limit_train=16")
    assert check(limited, "x", profile="offline").ok  # the offline profile declares its limits
    paper = check(limited, "x", profile="paper")
    assert not paper.ok and paper.failed_substitutes == ["task.limit_train=16"]
    assert paper.facts["splits"]["train"] == (16, "hub:nyu-mll/glue/rte") and paper.facts["steps_per_epoch"] == 2
    random = check(rte(tmp_path, "model.weights=random"), "r", profile="paper")
    assert random.failed_substitutes == ["random weights"]
    assert check(rte(tmp_path, "model.weights=random"), "r").ok  # a single run that asks for random weights


def test_table_preflight_lists_every_run_and_exits_non_zero(tmp_path, hub, capsys, monkeypatch):
    spec = {
        "title": "T", "source": "s", "base": PAPER_RTE[1:] + [f"task.data_dir={tmp_path / 'no_glue'}"],
        "profiles": {"paper": ["model=roberta-base"], "offline": None}, "seeds": {"paper": [1, 2, 3]},
        "columns": [{"id": "acc", "metric": "accuracy"}],
        "rows": [{"id": "r2", "overrides": ["method.r=2"]}, {"id": "r4", "overrides": ["method.r=4"]}],
    }  # fmt: skip
    path = tmp_path / "experiments" / "p" / "t.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SystemExit) as exit_:
        tables.main(["--preflight", "--profile", "paper", str(path)])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.count("\nOK p/t r") == 2 and "seeds [1, 2, 3]" in out
    with pytest.raises(SystemExit) as exit_:
        tables.main(["--preflight", "--profile", "offline", str(path)])
    assert exit_.value.code == 0 and "not runnable under the offline profile" in capsys.readouterr().out
    (hub[1]["model"] / "model.safetensors").unlink()
    with pytest.raises(SystemExit) as exit_:
        tables.main(["--preflight", "--profile", "paper", str(path)])
    out = capsys.readouterr().out
    assert exit_.value.code == 1 and out.count("FAIL: weights: model roberta-base") == 2
    assert "all tables: preflight: 0 of 2 runs OK, 2 would fail or substitute" in out
