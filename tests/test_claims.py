"""Paper claims: claims files load and are checked, the statistics and verdict rules are right on made-up numbers,
claims render (Markdown, CSV, PNG, W&B) from result files, only missing seeds are trained, stale results are not
used, and a claim resting on a run at its trivial baseline is "not informative"."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import compose_cfg, write_tiny_glue
from omegaconf import OmegaConf

from loralab import claims, tables
from loralab.config import PROJECT_ROOT

TABLE = {
    "title": "Test table",
    "source": "a test",
    "base": ["model=tiny-bert", "task=glue/rte", "logger.mode=disabled"],
    "profiles": {"paper": [], "offline": ["trainer.max_steps=2"]},
    "seeds": [1],
    "columns": [{"id": "rte", "metric": "accuracy"}],
    "rows": [
        {"id": "lora", "overrides": ["method=lora", "method.r=2"]},
        {"id": "mini", "overrides": ["method=lora_mini", "method.r=2", "method.a=4", "method.b=4"]},
    ],
}
PAPER_CSV = "row,column,value,params\nlora,rte,70.0,20K\nmini,rte,71.5,1K\n"
CLAIMS = {
    "title": "Test claims",
    "source": "a test paper",
    "seeds": [1, 2, 3],
    "informative_margin": 5,
    "runs": {"lora": "tab1/lora/rte", "mini": "tab1/mini/rte"},
    "claims": [
        {
            "id": "close",
            "claim": "mini within 1 point of lora",
            "quote": "comparable to LoRA",
            "where": "Abstract",
            "statistic": "difference",
            "rule": {"kind": "non_inferior", "margin": 1},
            "compare": [["mini", "lora"]],
        },
        {
            "id": "fewer",
            "claim": "lora has >= 2x the parameters of mini",
            "quote": "fewer parameters",
            "where": "Abstract",
            "statistic": "params_ratio",
            "rule": {"kind": "at_least", "threshold": 2},
            "compare": [["lora", "mini"]],
        },
    ],
}


def write(root: Path, claims_spec: dict = CLAIMS, table: dict = TABLE) -> Path:
    folder = root / "experiments" / "mypaper"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tab1.yaml").write_text(yaml.safe_dump(table))
    (folder / "tab1.csv").write_text(PAPER_CSV)
    (folder / "claims.yaml").write_text(yaml.safe_dump(claims_spec))
    return folder / "claims.yaml"


def task_config(glue_dir: Path) -> dict:
    return OmegaConf.to_container(compose_cfg("task=glue/rte", f"task.data_dir={glue_dir}").task, resolve=True)


def put(
    root: Path, row: str, seed: int, accuracy: float, task: dict, trainable: int = 1000, weights: str = "/w"
) -> None:
    result = {
        "status": "finished",
        "weights_source": weights,
        "main_metric": "accuracy",
        "metrics": {"best": {"accuracy": accuracy}, "epochs": []},
        "params": {"trainable_params": trainable},
        "config": {"task": task},
    }
    path = root / "runs" / "mypaper" / "tab1" / "offline" / row / "rte" / f"seed{seed}" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))


def test_t_interval_and_rules():
    mean, lo, hi = claims.t_interval([1.0, 2.0, 3.0], 0.95)
    assert mean == pytest.approx(2.0) and hi - mean == pytest.approx(
        4.302653 / 3**0.5, rel=1e-5
    )  # t(0.975, 2) sd/sqrt n
    with pytest.raises(ValueError, match="at least 2"):
        claims.t_interval([1.0], 0.95)
    d = claims.decide
    assert d("non_inferior", lo=-0.5, hi=2, margin=1) == claims.HOLDS
    assert d("non_inferior", lo=-3, hi=-1.5, margin=1) == claims.FAILS
    assert d("non_inferior", lo=-3, hi=0.5, margin=1) == claims.INCONCLUSIVE
    assert d("superior", lo=0.1, hi=1) == claims.HOLDS and d("superior", lo=-1, hi=-0.1) == claims.FAILS
    assert d("superior", lo=-1, hi=1) == claims.INCONCLUSIVE
    assert d("equivalent", lo=-0.5, hi=0.5, margin=1) == claims.HOLDS
    assert d("equivalent", lo=1.5, hi=3, margin=1) == claims.FAILS
    assert d("equivalent", lo=0.5, hi=1.5, margin=1) == claims.INCONCLUSIVE
    assert (
        d("at_least", value=20.0, threshold=20) == claims.HOLDS
        and d("at_most", value=0.2, threshold=0.1) == claims.FAILS
    )
    assert claims.combine([claims.HOLDS, claims.INCONCLUSIVE]) == claims.INCONCLUSIVE
    assert claims.combine([claims.HOLDS, claims.FAILS, claims.INCONCLUSIVE]) == claims.FAILS
    assert claims.combine([claims.FAILS, claims.NOT_INFORMATIVE]) == claims.NOT_INFORMATIVE
    assert claims.combine([claims.HOLDS, claims.HOLDS]) == claims.HOLDS


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["runs"].update(lora="tab1/nope/rte"), "has no row 'nope'"),
        (lambda c: c["runs"].update(lora="tab9/lora/rte"), "must be '<table>/<row>/<column>'"),
        (lambda c: c["runs"].update(lora="tab1/lora"), "must be '<table>/<row>/<column>'"),
        (lambda c: c["claims"][0].update(compare=[["mini", "ghost"]]), r"unknown run\(s\) \['ghost'\]"),
        (lambda c: c["claims"][0].update(statistic="median"), "statistic 'median'"),
        (lambda c: c["claims"][0].update(rule={"kind": "at_least", "threshold": 1}), "rule kind 'at_least'"),
        (lambda c: c["claims"][1].update(rule={"kind": "at_least"}), "needs a number threshold"),
        (lambda c: c["claims"][0].update(rule={"kind": "non_inferior", "margin": -1}), "margin >= 0"),
        (lambda c: c["claims"][0].update(verdict="holds"), r"unknown key\(s\) \['verdict'\]"),
        (lambda c: c["claims"][1].update(id="close"), "unique ids"),
        (lambda c: c.update(seed=[1]), r"unknown key\(s\) \['seed'\]"),
        (
            lambda c: c["claims"][0].update(compare=[{"a": "mini", "b": "lora", "paper_cells": {"a": ["x"]}}]),
            "paper_cells",
        ),
    ],
)
def test_bad_claims_files_are_named(tmp_path, edit, message):
    spec = json.loads(json.dumps(CLAIMS))
    edit(spec)
    with pytest.raises(ValueError, match=message):
        claims.load_claims(write(tmp_path, spec))


def test_verdicts_rendered_from_result_files(tmp_path):
    path = write(tmp_path)
    task = task_config(write_tiny_glue(tmp_path / "glue", n_train=25, n_dev=9))  # 13 vs 12 training labels; dev 5 vs 4
    for seed, (lora, mini) in enumerate([(0.80, 0.81), (0.84, 0.85), (0.78, 0.785)], start=1):
        put(tmp_path, "lora", seed, lora, task, trainable=20000)
        put(tmp_path, "mini", seed, mini, task, trainable=1000)
    md_path = claims.build_claims(path, run=False, results_root=tmp_path, wandb_mode=None)
    md = md_path.read_text()
    assert md_path == tmp_path / "claims" / "mypaper.md"
    # paired differences +1, +1, +0.5 points: mean 0.833, t-interval [0.12, 1.55] > -1 -> holds
    assert (
        "| close | holds | mini vs lora | 3 | mean paired difference a - b | +0.83 | [+0.12, +1.55] |  | +1.50 |" in md
    )
    # the trivial baseline of tiny RTE's dev set: the training split's majority class scores 5/9
    assert "trivial baseline 55.56 (the training split's majority class (0) on dev (9 examples)): clearly above" in md
    # parameter ratio on the paper's backbone (built here on the meta device), our runs' ratio (20.0), the paper's
    fewer = next(line for line in md.splitlines() if line.startswith("| fewer |"))
    assert "| fewer | holds | lora vs mini |" in fewer and "| 20.000 | 20.000 |" in fewer
    assert 'Paper (Abstract): "comparable to LoRA"' in md
    rows = (tmp_path / "claims" / "mypaper.csv").read_text().splitlines()
    assert rows[0].startswith("profile,claim,verdict") and len(rows) == 3
    assert (tmp_path / "claims" / "mypaper.png").stat().st_size > 1000


def test_a_run_at_its_trivial_baseline_gives_no_verdict(tmp_path, tiny_glue):
    path = write(tmp_path)
    task = task_config(tiny_glue)
    for seed in (1, 2, 3):  # lora learned; mini sits at the majority class (50%) whatever the seed
        put(tmp_path, "lora", seed, 0.75 + 0.01 * seed, task)
        put(tmp_path, "mini", seed, 0.50 + 0.01 * (seed == 2), task)
    spec = claims.load_claims(path)
    resolved = claims.resolve(spec, "offline", tmp_path)
    results = claims.evaluate(spec, resolved, claims.gather(spec, resolved, "offline"), {})
    close = results[0]
    assert close.verdict == claims.NOT_INFORMATIVE
    assert close.runs["lora"].informative and not close.runs["mini"].informative
    assert close.comparisons[0].value == pytest.approx(50.333 - 77.0, abs=1e-2)  # the difference is still shown


def test_too_few_seeds_and_not_run(tmp_path, tiny_glue):
    path = write(tmp_path)
    task = task_config(tiny_glue)
    put(tmp_path, "lora", 1, 0.8, task)
    spec = claims.load_claims(path)
    resolved = claims.resolve(spec, "offline", tmp_path)
    assert claims.evaluate(spec, resolved, claims.gather(spec, resolved, "offline"), {})[0].verdict == claims.NOT_RUN
    for seed in (1, 2):
        put(tmp_path, "mini", seed, 0.8, task)
    put(tmp_path, "lora", 2, 0.8, task)
    put(tmp_path, "mini", 3, 0.8, task, weights="random")  # a table would not render it: neither does a claim
    put(tmp_path, "lora", 3, 0.8, task)
    results = claims.evaluate(spec, resolved, claims.gather(spec, resolved, "offline"), {})
    assert results[0].verdict == claims.TOO_FEW and results[0].comparisons[0].seeds == [1, 2]


def test_only_missing_seeds_are_trained_and_stale_results_are_not_used(tmp_path, tiny_glue, monkeypatch):
    path = write(tmp_path)
    task = task_config(tiny_glue)
    put(tmp_path, "lora", 1, 0.8, task)  # seed 1 of lora done: lora needs 2,3; mini needs all three
    calls = []
    monkeypatch.setattr(tables.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    spec = claims.load_claims(path)
    assert claims.execute(spec, "offline", tmp_path) == 2
    seeds = {
        next(a for a in c if a.startswith("logger.name=")): next(a for a in c if a.startswith("trainer.seed="))
        for c in calls
    }
    assert seeds == {"logger.name=lora/rte": "trainer.seed=2,3", "logger.name=mini/rte": "trainer.seed=1,2,3"}
    assert all(
        "trainer.max_steps=2" in c and "hydra.sweep.dir=" + str(tmp_path / "runs/mypaper/tab1/offline") in " ".join(c)
        for c in calls
    )

    # the table's spec changes after lora's seed 1 was trained: its old result is stale, not used, moved aside
    run_dir = tmp_path / "runs/mypaper/tab1/offline/lora/rte"
    old = [*TABLE["base"], *TABLE["profiles"]["offline"], "method=lora", "method.r=4"]
    (run_dir / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": old}}}))
    resolved = claims.resolve(spec, "offline", tmp_path)
    assert claims.gather(spec, resolved, "offline")["lora"] == {}
    calls.clear()
    assert claims.execute(spec, "offline", tmp_path) == 2
    assert {next(a for a in c if a.startswith("trainer.seed=")) for c in calls} == {"trainer.seed=1,2,3"}
    assert len(list(run_dir.parent.glob("rte.stale-*/seed1/results.json"))) == 1


def test_claims_logged_to_wandb_as_a_table(tmp_path, tiny_glue, monkeypatch):
    import wandb

    logged, inits = {}, {}
    monkeypatch.setattr(
        wandb, "init", lambda **kw: inits.update(kw) or SimpleNamespace(log=logged.update, finish=lambda: None)
    )
    monkeypatch.setattr(wandb, "Table", lambda columns, data: SimpleNamespace(columns=columns, data=data))
    claims.build_claims(write(tmp_path), run=False, results_root=tmp_path, wandb_mode="offline")
    assert inits["job_type"] == "claims" and inits["group"] == "mypaper/claims/offline" and inits["mode"] == "offline"
    table = logged["mypaper/claims"]
    assert table.columns == list(claims.HEADER) and [r[:2] for r in table.data] == [
        ["close", "not run yet"],
        ["fewer", "holds"],
    ]


@pytest.mark.parametrize(
    "path", sorted((PROJECT_ROOT / "experiments").glob("*/claims.yaml")), ids=lambda p: p.parent.name
)
def test_every_committed_claims_file_loads_and_resolves(path):
    spec = claims.load_claims(path)
    resolved = claims.resolve(spec, "offline", PROJECT_ROOT / "results")
    assert set(resolved) == {n for ref in spec.runs.values() for n in claims.candidates(ref)} and len(spec.claims) >= 3
    for claim in spec.claims:  # every difference has the paper's own value beside ours
        for comp in claim.compare if claim.statistic == "difference" else ():
            assert claims.paper_value(spec, claim, comp, resolved)[0] is not None, (claim.id, comp)


def test_a_ratio_of_two_metrics_and_a_cell_not_run_under_the_profile(tmp_path, tiny_glue):
    table = {
        **TABLE,
        "rows": [*TABLE["rows"], {"id": "big", "overrides": ["method=lora", "method.r=8"], "offline_skip": True}],
    }
    spec_dict = {
        **CLAIMS,
        "runs": {
            "mini": "tab1/mini/rte",
            "used": {"cell": "tab1/mini/rte", "metric": "allocated"},
            "budget": {"cell": "tab1/mini/rte", "metric": "budget"},
            "big": "tab1/big/rte",
        },
        "claims": [
            {**CLAIMS["claims"][0], "compare": [["mini", "big"]]},
            {
                **CLAIMS["claims"][1],
                "id": "budget",
                "statistic": "ratio",
                "rule": {"kind": "at_most", "threshold": 1},
                "compare": [["used", "budget"]],
                "check_baseline": False,
            },
        ],
    }
    path = write(tmp_path, spec_dict, table)
    task = task_config(tiny_glue)
    for seed, allocated in ((1, 90), (2, 96)):
        put(tmp_path, "mini", seed, 0.8, task)
        result_path = tmp_path / f"runs/mypaper/tab1/offline/mini/rte/seed{seed}/results.json"
        result = json.loads(result_path.read_text())
        result_path.write_text(json.dumps({**result, "method_metrics": {"allocated": allocated, "budget": 96}}))
    spec = claims.load_claims(path)
    resolved = claims.resolve(spec, "offline", tmp_path)
    assert resolved["big"].run is None  # offline-skipped: planned by nobody, trained by nobody
    close, budget = claims.evaluate(spec, resolved, claims.gather(spec, resolved, "offline"), {})
    assert close.verdict == claims.NOT_RUNNABLE
    assert budget.verdict == claims.HOLDS and budget.comparisons[0].value == pytest.approx(1.0)  # the worst seed


def test_each_comparison_verdict_shown_and_measurements_have_no_baseline(tmp_path, tiny_glue):
    table = {**TABLE, "rows": [*TABLE["rows"], {"id": "big", "overrides": ["method=lora", "method.r=4"]}]}
    spec_dict = {
        **CLAIMS,
        "runs": {
            **CLAIMS["runs"],
            "big": "tab1/big/rte",
            "mini_rank": {"cell": "tab1/mini/rte", "metric": "rank"},
            "lora_rank": {"cell": "tab1/lora/rte", "metric": "rank"},
        },  # fmt: skip
        "claims": [
            {**CLAIMS["claims"][0], "id": "two", "compare": [["mini", "lora"], ["mini", "big"]]},
            {
                **CLAIMS["claims"][0],
                "id": "rank",
                "rule": {"kind": "superior", "margin": 0},
                "compare": [["mini_rank", "lora_rank"]],
                "check_baseline": False,
            },  # fmt: skip
        ],
    }
    path = write(tmp_path, spec_dict, table)
    task = task_config(tiny_glue)
    # mini vs lora: +1, +1.5, +0.5 points (holds); mini vs big: -0.5, +2, -1 (inconclusive): the claim is inconclusive
    for seed, (lora, mini, big) in enumerate([(0.80, 0.81, 0.815), (0.84, 0.855, 0.835), (0.78, 0.785, 0.795)], 1):
        for row, acc, rank in (("lora", lora, 7.5), ("mini", mini, 8.0 - 0.1 * seed), ("big", big, 4.0)):
            put(tmp_path, row, seed, acc, task)
            result_path = tmp_path / f"runs/mypaper/tab1/offline/{row}/rte/seed{seed}/results.json"
            result = json.loads(result_path.read_text())
            result_path.write_text(json.dumps({**result, "method_metrics": {"rank": rank}}))
    md = claims.build_claims(path, run=False, results_root=tmp_path, wandb_mode=None).read_text()
    assert "| two | inconclusive (this comparison: holds) | mini vs lora |" in md
    assert "| two | inconclusive | mini vs big |" in md
    rank_section = md[md.index("## rank:") :]
    assert "no trivial baseline (a measurement, not a score" in rank_section
    assert "NOT clearly above" not in rank_section


def test_a_run_with_alternative_cells_uses_the_one_with_the_higher_mean(tmp_path, tiny_glue):
    # the paper's "tried two learning rates per method, kept the better one": mini at another rate (row mini_low)
    table = json.loads(json.dumps(TABLE))
    table["rows"].append({"id": "mini_low", "overrides": ["method=lora_mini", "method.r=2", "method.a=4", "method.b=4"],
                          "offline": ["trainer.lr=1e-4"]})  # fmt: skip
    spec = json.loads(json.dumps(CLAIMS))
    spec["runs"]["mini"] = {"cell": "tab1/mini/rte", "alternatives": ["tab1/mini_low/rte"]}
    path = write(tmp_path, spec, table)
    task = task_config(tiny_glue)
    for seed in (1, 2, 3):
        put(tmp_path, "lora", seed, 0.80, task)
        put(tmp_path, "mini", seed, 0.70 + 0.01 * seed, task)
    for seed in (1, 2):
        put(tmp_path, "mini_low", seed, 0.80 + 0.01 * seed, task)
    loaded = claims.load_claims(path)
    # until the alternative has min_seeds seeds the run's own cell is used, and the report says so
    md = claims.build_claims(path, run=False, results_root=tmp_path, wandb_mode=None).read_text()
    assert "Run `mini` = tab1/mini/rte (chosen: its own cell until every alternative has 3 seeds" in md
    assert "| close | does not hold | mini vs lora | 3 |" in md
    put(tmp_path, "mini_low", 3, 0.83, task)
    resolved = claims.resolve(loaded, "offline", tmp_path)
    assert set(resolved) == {"lora", "mini", "mini@tab1/mini_low/rte"}  # an alternative is planned (and trained)
    found = claims.gather(loaded, resolved, "offline")
    choices = claims.choose(loaded, resolved, found)
    assert set(resolved) == {"lora", "mini"} and resolved["mini"].ref.cell == "tab1/mini_low/rte"
    assert "tab1/mini/rte: mean 72.00; tab1/mini_low/rte: mean 82.00" in choices["mini"]
    md = claims.build_claims(path, run=False, results_root=tmp_path, wandb_mode=None).read_text()
    assert "Run `mini` = tab1/mini_low/rte (chosen: the best of its cells" in md
    assert "| close | holds | mini vs lora | 3 | mean paired difference a - b | +2.00 |" in md
    spec["runs"]["mini"]["alternatives"] = ["tab1/nope/rte"]
    with pytest.raises(ValueError, match="has no row 'nope'"):
        claims.load_claims(write(tmp_path, spec, table))
