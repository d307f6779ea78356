"""Paper tables: specs load and are checked, tables render from result files with the right numbers and deltas,
missing runs (and only those) are trained, and the figure and W&B paths work."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import compose_cfg

from loralab import tables
from loralab.config import PROJECT_ROOT
from loralab.run import make_plan

SPEC = {
    "title": "Test table",
    "source": "a test",
    "base": ["model=tiny-bert", "task=glue/rte", "logger.mode=disabled"],
    "profiles": {"paper": [], "offline": ["trainer.max_steps=2"]},
    "seeds": [1, 2],
    "columns": [
        {"id": "acc", "metric": "accuracy", "run": "rte"},
        {"id": "f1", "metric": "f1", "run": "rte", "paper_only": True, "note": "not measured"},
    ],
    "rows": [
        {"id": "lora_r2", "overrides": ["method=lora", "method.r=2"], "x": 2},
        {"id": "lora_r4", "overrides": ["method=lora", "method.r=4"], "x": 4},
    ],
    "figure": {"kind": "line", "x_label": "rank"},
}
PAPER_CSV = "row,column,value,params\nlora_r2,acc,60.00,4162\nlora_r4,acc,61.50,0.01M\nlora_r2,f1,70.0,\n"


def write_spec(root: Path, spec: dict = SPEC, csv_text: str = PAPER_CSV) -> Path:
    path = root / "experiments" / "mypaper" / "tab1.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    path.with_suffix(".csv").write_text(csv_text)
    return path


def fake_result(accuracy: float, trainable: int = 4162, status: str = "finished") -> dict:
    epochs = [{"epoch": 1, "accuracy": accuracy - 0.1}, {"epoch": 2, "accuracy": accuracy}]
    return {
        "status": status,
        "main_metric": "accuracy",
        "metrics": {"best": {"accuracy": accuracy, "f1": 0.5}, "epochs": epochs},
        "params": {"trainable_params": trainable},
        "model": "tiny-bert",
        "weights_source": "/cache/loralab/all_minilm_l6_v2",
        "data_source": "/data",
        "num_train_examples": 24,
        "num_eval_examples": {"dev": 8},
        "config": {"trainer": {"epochs": 3, "max_steps": 2}, "task": {"limit_train": None}},
    }


def put(root: Path, row: str, seed: int, result: dict) -> None:
    path = root / "runs" / "mypaper" / "tab1" / "offline" / row / "rte" / f"seed{seed}" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))


def test_render_from_result_files_numbers_and_delta(tmp_path):
    spec = tables.load_spec(write_spec(tmp_path))
    put(tmp_path, "lora_r2", 1, fake_result(0.60))
    put(tmp_path, "lora_r2", 2, fake_result(0.64))
    put(tmp_path, "lora_r4", 1, fake_result(0.70, trainable=8258))
    put(tmp_path, "lora_r4", 2, fake_result(0.99, status="crashed"))  # not finished: not counted
    results = tables.results_from_disk(spec, "offline", tmp_path)
    counts = {("lora_r2", "rte"): 4162, ("lora_r4", "rte"): 8258}
    cells = {(c.row, c.column): c for c in tables.collect(spec, "offline", results, counts)}

    r2 = cells[("lora_r2", "acc")]
    assert r2.ours == pytest.approx([60.0, 64.0]) and r2.mean == pytest.approx(62.0)
    assert r2.std == pytest.approx(2.8284271, rel=1e-6)  # sample std of 60 and 64
    assert r2.delta == pytest.approx(2.0) and r2.params_match is True
    r4 = cells[("lora_r4", "acc")]
    assert r4.ours == pytest.approx([70.0]) and r4.std is None and r4.delta == pytest.approx(8.5)
    assert r4.params_paper == "0.01M" and r4.params_match is True  # 8,258 prints as 0.01M
    f1 = cells[("lora_r2", "f1")]
    assert f1.ours == [] and f1.note == "not measured" and f1.paper == "70.0"

    md, text = tables.render(spec, "offline", list(cells.values()), results)
    assert "| lora_r2 | acc | 62.00 | 2.83 | 2 | 60.00 | +2.00 | 4,162 | 4,162 | 4162 | yes |" in md
    assert "| lora_r4 | acc | 70.00 |  | 1 | 61.50 | +8.50 |" in md
    assert "not run: not measured" in md
    assert "Scale profile: **offline**" in md and "model **tiny-bert**" in md and "max 2 steps" in md
    assert "Finished runs found: 3 of 4" in md
    lines = text.strip().splitlines()
    assert lines[0].startswith("profile,row,column,ours") and len(lines) == 1 + 4
    assert lines[1].startswith("offline,lora_r2,acc,62.00,2.83,2,60.00,+2.00")


def test_printed_counts():
    assert tables.printed_count_matches(898_562, "0.90M") is True
    assert tables.printed_count_matches(3_594_248, "3.50M") is False  # LoRA-Mini Table 1's LoRA r=32
    assert tables.printed_count_matches(11_010, "11010") is True
    assert tables.printed_count_matches(11_010, "11,011") is False
    assert tables.printed_count_matches(124_647_170, "125M") is True
    assert tables.printed_count_matches(100, "9.4%") is None and tables.printed_count_matches(None, "1M") is None


def test_bad_specs_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        tables.load_spec(write_spec(tmp_path, {**SPEC, "colums": []}))
    with pytest.raises(ValueError, match=r"duplicate row id\(s\) \['lora_r2'\]"):
        tables.load_spec(write_spec(tmp_path, {**SPEC, "rows": [SPEC["rows"][0]] * 2}))
    with pytest.raises(ValueError, match="name rows or columns the spec does not have"):
        tables.paper_numbers(tables.load_spec(write_spec(tmp_path, csv_text="row,column,value,params\nx,acc,1,\n")))
    with pytest.raises(FileNotFoundError, match="experiments/<paper>/<table>.yaml"):
        tables.load_spec(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="unknown profile"):
        tables.plan_runs(tables.load_spec(write_spec(tmp_path)), "gpu", tmp_path)
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['mrpc'\]"):
        tables.execute(tables.load_spec(write_spec(tmp_path)), "offline", tmp_path, columns=["mrpc"])


def test_runs_share_a_run_name_and_skip_paper_only(tmp_path):
    spec = tables.load_spec(write_spec(tmp_path))
    runs = tables.plan_runs(spec, "offline", tmp_path)
    assert [(r.row, r.name) for r in runs] == [("lora_r2", "rte"), ("lora_r4", "rte")]
    assert runs[0].overrides == [*SPEC["base"], "trainer.max_steps=2", "method=lora", "method.r=2"]
    assert (
        tables.plan_runs(tables.load_spec(write_spec(tmp_path, {**SPEC, "kind": "reference"})), "paper", tmp_path) == []
    )


def test_row_offline_overrides_apply_offline_only_and_are_stated(tmp_path):
    rows = [{**SPEC["rows"][0], "offline": ["trainer.lr=5e-3"]}, SPEC["rows"][1]]
    spec = tables.load_spec(write_spec(tmp_path, {**SPEC, "rows": rows}))
    offline = tables.plan_runs(spec, "offline", tmp_path)
    assert offline[0].overrides == [
        *SPEC["base"],
        "trainer.max_steps=2",
        "method=lora",
        "method.r=2",
        "trainer.lr=5e-3",
    ]
    assert "trainer.lr=5e-3" not in offline[1].overrides
    assert all("trainer.lr=5e-3" not in r.overrides for r in tables.plan_runs(spec, "paper", tmp_path))
    header = "\n".join(tables.describe_runs(spec, "offline", {}))
    assert "lora_r2 `trainer.lr=5e-3`" in header
    assert "trainer.lr" not in "\n".join(tables.describe_runs(spec, "paper", {}))


def test_a_column_reads_another_tables_runs_without_training_them(tmp_path, monkeypatch):
    write_spec(tmp_path)  # tab1, whose rte runs the figure reads
    fig = {**SPEC, "base": [SPEC["base"][0], "logger.mode=disabled", "task=glue/rte"], "columns": [
        {"id": "acc", "metric": "accuracy", "runs_of": "tab1/rte"}]}  # fmt: skip
    path = tmp_path / "experiments" / "mypaper" / "fig1.yaml"
    path.write_text(yaml.safe_dump(fig))
    path.with_suffix(".csv").write_text("row,column,value,params\n")
    spec = tables.load_spec(path)
    runs = tables.plan_runs(spec, "offline", tmp_path)
    assert [r.dir for r in runs] == [tmp_path / f"runs/mypaper/tab1/offline/{r}/rte" for r in ("lora_r2", "lora_r4")]
    monkeypatch.setattr(tables.subprocess, "run", lambda cmd, **kw: pytest.fail("trained another table's run"))
    assert tables.execute(spec, "offline", tmp_path) == 0
    put(tmp_path, "lora_r2", 1, fake_result(0.7))
    md = tables.build_table(path, "offline", run=False, results_root=tmp_path).read_text()
    assert "acc = the runs of tab1/rte" in md and "| lora_r2 | acc | 70.00 |" in md
    # the same effective overrides in another order are the same runs; other ones are stale and not shown
    recorded = [*SPEC["base"], "trainer.max_steps=2", "method=lora", "method.r=2", "trainer.seed=1"]
    multirun = tmp_path / "runs/mypaper/tab1/offline/lora_r2/rte/multirun.yaml"
    multirun.write_text(yaml.safe_dump({"hydra": {"overrides": {"task": recorded}}}))
    assert not tables.is_stale(runs[0])
    multirun.write_text(yaml.safe_dump({"hydra": {"overrides": {"task": [*recorded, "trainer.lr=1"]}}}))
    assert tables.is_stale(runs[0]) and tables.results_from_disk(spec, "offline", tmp_path) == {}
    for bad, says in (("tab9/rte", "must be '<table>/<run name>'"), ("tab1/sst2", "has no run 'sst2'")):
        path.write_text(yaml.safe_dump({**fig, "columns": [{"id": "acc", "runs_of": bad}]}))
        with pytest.raises(ValueError, match=says):
            tables.load_spec(path)


def test_execute_trains_only_what_is_missing_then_renders(tmp_path, tiny_glue, monkeypatch):
    spec_path = write_spec(tmp_path, {**SPEC, "base": [*SPEC["base"], f"task.data_dir={tiny_glue}"]})
    spec = tables.load_spec(spec_path)
    put(tmp_path, "lora_r2", 1, fake_result(0.5))  # finished already: skipped
    put(tmp_path, "lora_r2", 2, fake_result(0.5, status="crashed"))  # unfinished: run (resumed) again
    calls = []
    monkeypatch.setattr(tables.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    assert tables.execute(spec, "offline", tmp_path) == 2
    seeds = [next(a for a in c if a.startswith("trainer.seed=")) for c in calls]
    assert seeds == ["trainer.seed=2", "trainer.seed=1,2"]
    assert (tmp_path / "runs/mypaper/tab1/offline/lora_r2/rte/seed2").exists()  # kept: it resumes from its checkpoint

    monkeypatch.undo()  # now for real: Hydra multirun trains the missing runs, a second call trains nothing
    assert tables.execute(spec, "offline", tmp_path) == 2
    assert tables.execute(spec, "offline", tmp_path) == 0
    md_path = tables.build_table(spec_path, "offline", run=False, results_root=tmp_path)
    md = md_path.read_text()
    assert "Finished runs found: 4 of 4" in md and "| lora_r4 | acc |" in md
    assert (md_path.parent / "tab1.png").stat().st_size > 1000
    trained = json.loads((tmp_path / "runs/mypaper/tab1/offline/lora_r4/rte/seed2/results.json").read_text())
    assert trained["config"]["trainer"]["seed"] == 2 and trained["config"]["method"]["r"] == 4
    rerun = json.loads((tmp_path / "runs/mypaper/tab1/offline/lora_r2/rte/seed2/results.json").read_text())
    assert rerun["status"] == "finished" and rerun["config"]["method"]["r"] == 2  # the unfinished one replaced

    # the spec is edited (another offline schedule): the old results are neither rendered nor deleted, and run again
    edited = {
        **SPEC,
        "base": [*SPEC["base"], f"task.data_dir={tiny_glue}"],
        "profiles": {"offline": ["trainer.max_steps=1"]},
    }
    spec = tables.load_spec(write_spec(tmp_path, edited))
    assert all(tables.is_stale(r) for r in tables.plan_runs(spec, "offline", tmp_path))
    assert tables.results_from_disk(spec, "offline", tmp_path) == {}
    calls.clear()
    monkeypatch.setattr(tables.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    assert tables.execute(spec, "offline", tmp_path) == 2
    assert "trainer.max_steps=1" in calls[0]
    aside = list((tmp_path / "runs/mypaper/tab1/offline/lora_r2").glob("rte.stale-*/seed2/results.json"))
    assert len(aside) == 1 and json.loads(aside[0].read_text())["status"] == "finished"


def test_results_from_wandb_runs(tmp_path):
    spec = tables.load_spec(write_spec(tmp_path))
    runs = [
        SimpleNamespace(state="finished", name="lora_r2/rte", summary={"best/accuracy": 0.6, "trainable_params": 4162}),
        SimpleNamespace(state="crashed", name="lora_r4/rte", summary={"best/accuracy": 0.9}),
    ]
    seen = {}

    class Api:
        def runs(self, project, filters):
            seen.update(project=project, **filters)
            return runs

    results = tables.results_from_wandb(spec, "offline", Api(), "proj")
    assert seen == {"project": "proj", "group": "mypaper/tab1/offline"}
    assert list(results) == [("lora_r2", "rte")]
    cells = tables.collect(spec, "offline", results, {})
    assert cells[0].mean == pytest.approx(60.0) and cells[0].params_run == 4162


SPECS = sorted(p for p in (PROJECT_ROOT / "experiments").rglob("*.yaml") if p.name != "claims.yaml")  # tables only


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_every_committed_spec_loads_and_its_runs_compose(path):
    spec = tables.load_spec(path)
    tables.paper_numbers(spec)
    for profile in tables.PROFILES:
        runs = tables.plan_runs(spec, profile, PROJECT_ROOT / "results")
        for run in runs[:1] + runs[-1:]:  # the first and last run of each profile, composed and checked
            cfg = compose_cfg(*run.overrides)
            make_plan(cfg)
            metrics = {c.metric for c in spec.columns if c.run_name == run.name}
            assert cfg.task.name and metrics, run
        for run in runs:  # a column reading another table's runs asks for exactly what that table trains
            if run.owner is not None:
                owner = tables.load_spec(path.parent / f"{run.owner}.yaml")
                trained = {r.dir: r for r in tables.plan_runs(owner, profile, PROJECT_ROOT / "results")}[run.dir]
                assert tables.effective(run.overrides) == tables.effective(trained.overrides), run


def test_table_logged_to_wandb_as_a_table(tmp_path, monkeypatch):
    import wandb

    logged, inits = {}, {}
    run = SimpleNamespace(log=logged.update, finish=lambda: None)
    monkeypatch.setattr(wandb, "init", lambda **kw: inits.update(kw) or run)
    monkeypatch.setattr(wandb, "Table", lambda columns, data: SimpleNamespace(columns=columns, data=data))
    spec = tables.load_spec(write_spec(tmp_path))
    put(tmp_path, "lora_r2", 1, fake_result(0.60))
    cells = tables.collect(spec, "offline", tables.results_from_disk(spec, "offline", tmp_path), {})
    tables.log_wandb(spec, "offline", tables.table_rows(cells), "proj", "offline")
    assert inits["job_type"] == "table" and inits["group"] == "mypaper/tab1/offline" and inits["mode"] == "offline"
    table = logged["mypaper/tab1"]
    assert table.columns == list(tables.HEADER[:-2]) and table.data[0][:3] == ["lora_r2", "acc", "60.00"]


def test_inference_columns_only_when_a_cell_has_a_count(tmp_path):
    spec = tables.load_spec(write_spec(tmp_path))
    put(tmp_path, "lora_r2", 1, fake_result(0.60))
    results = tables.results_from_disk(spec, "offline", tmp_path)
    cells = tables.collect(spec, "offline", results, {})
    md, table_csv = tables.render(spec, "offline", cells, results)
    assert "inference (our run)" not in md and "inference (paper)" not in table_csv
    assert "| trainable (paper) | counts match |" in md
    cells[0].inference_paper = "1.26M"
    header, rows = tables.table_rows(cells)
    assert header == tables.HEADER and rows[0][-1] == "1.26M" and len(rows[1]) == len(header)
