"""Paper tables side by side: run what a table needs (resumably), then render ours beside the paper's numbers.

A table is a spec (``experiments/<paper>/<table>.yaml``) and the paper's numbers beside it (``<table>.csv``); the
format is in ``experiments/README.md``. ``python -m loralab.tables <spec> --profile offline`` runs every run whose
``results.json`` is missing or unfinished (Hydra multirun over the missing seeds, one call per row and run) into
``results/runs/<paper>/<table>/<profile>/<row>/<run>/seed<k>/``, then writes ``results/tables/<paper>/<table>.md``
and ``.csv`` (and a PNG for figures): ours as mean +/- std over seeds, the paper's value, the difference, and the
trainable parameters three ways: of our run, of the paper's backbone built by us (meta device, no weights), and as
the paper prints them. ``--no-run`` renders from the results on disk; ``--wandb`` also logs the table as a
``wandb.Table`` (job_type ``table``); ``--from-wandb`` reads the results from W&B runs instead of the disk.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loralab.config import PROJECT_ROOT

log = logging.getLogger(__name__)
PROFILES = ("paper", "offline")
FIGURE_KINDS = ("line", "learning_curve", "rank_distribution")


@dataclass(frozen=True)
class Column:
    id: str
    overrides: list[str] = field(default_factory=list)
    metric: str | None = None
    run: str | None = None  # columns sharing a run name share one training run (e.g. MRPC accuracy and F1)
    runs_of: str | None = None  # "<table>/<run name>": read that table's runs (same paper), never train them here
    paper_only: bool = False
    offline_skip: bool = False
    note: str | None = None

    @property
    def run_name(self) -> str:
        return self.run or self.id

    @property
    def owner(self) -> tuple[str | None, str]:
        """Which table trains this column's runs and under which run name: (None, run name) for its own table."""
        if not self.runs_of:
            return None, self.run_name
        table, _, name = self.runs_of.partition("/")
        return table, name


@dataclass(frozen=True)
class Row:
    id: str
    overrides: list[str] = field(default_factory=list)
    x: float | None = None
    paper_only: bool = False
    offline_skip: bool = False  # e.g. a second backbone whose offline stand-in is the same as another row's
    offline: list[str] = field(default_factory=list)  # after the row's overrides, offline profile only (e.g. an lr)
    note: str | None = None


@dataclass
class Spec:
    """One paper table or figure (see ``experiments/README.md``)."""

    path: Path
    title: str
    source: str
    base: list[str]
    profiles: dict[str, list[str] | None]
    rows: list[Row]
    columns: list[Column]
    seeds: list[int] | dict[str, list[int]] = field(default_factory=lambda: [42])  # or per profile
    scale: float = 100.0
    kind: str = "table"  # "reference": the paper's numbers only (hyper-parameter tables, unmeasured figures)
    notes: str | None = None
    figure: dict[str, Any] | None = None

    @property
    def paper(self) -> str:
        return self.path.parent.name

    def seeds_for(self, profile: str) -> list[int]:
        """The seeds of a profile: ``seeds`` as a list (every profile) or ``{profile: [...]}`` (default [42])."""
        return self.seeds.get(profile, [42]) if isinstance(self.seeds, dict) else self.seeds

    @property
    def name(self) -> str:
        return self.path.stem


def load_spec(path: str | Path) -> Spec:
    """Read and check a spec: known keys, unique ids, a known figure kind."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table spec {path} not found; specs live in experiments/<paper>/<table>.yaml")
    raw = yaml.safe_load(path.read_text()) or {}
    known = set(Spec.__dataclass_fields__) - {"path"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    try:
        rows = [Row(**r) for r in raw.pop("rows", None) or []]
        columns = [Column(**c) for c in raw.pop("columns", None) or []]
    except TypeError as e:
        raise ValueError(f"{path}: bad row or column: {e}") from None
    spec = Spec(path=path, rows=rows, columns=columns, **{"base": [], "profiles": {}, **raw})
    for what, ids in (("row", [r.id for r in rows]), ("column", [c.id for c in columns])):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"{path}: duplicate {what} id(s) {dup}")
    if spec.figure and spec.figure.get("kind", "line") not in FIGURE_KINDS:
        raise ValueError(f"{path}: figure kind {spec.figure.get('kind')!r} is not one of {FIGURE_KINDS}")
    for col in columns:
        if col.runs_of:
            check_runs_of(path, col)
    if isinstance(spec.seeds, dict) and not set(spec.seeds) <= set(PROFILES):
        raise ValueError(f"{path}: seeds per profile must name profiles of {PROFILES}, got {sorted(spec.seeds)}")
    if spec.kind not in ("table", "reference"):
        raise ValueError(f"{path}: kind must be table or reference, got {spec.kind!r}")
    return spec


def check_runs_of(path: Path, col: Column) -> None:
    """A column's ``runs_of`` names a spec beside this one and one of its run names."""
    table, name = col.owner
    other = path.parent / f"{table}.yaml"
    if not name or not other.is_file():
        raise ValueError(f"{path}: column {col.id}: runs_of {col.runs_of!r} must be '<table>/<run name>' of a spec in "
                         f"{path.parent}")  # fmt: skip
    names = {c.get("run") or c["id"] for c in yaml.safe_load(other.read_text()).get("columns", [])}
    if name not in names:
        raise ValueError(f"{path}: column {col.id}: {other} has no run {name!r}; its runs: {sorted(names)}")


def paper_numbers(spec: Spec) -> dict[tuple[str, str], dict[str, str]]:
    """The paper's cells from the CSV beside the spec: (row, column) -> {"value", "params"} as printed."""
    path = spec.path.with_suffix(".csv")
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"row", "column", "value"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: header must be row,column,value,params; got {reader.fieldnames}")
        cells = {
            (r["row"], r["column"]): {
                "value": r["value"], "params": r.get("params") or "", "inference": r.get("inference_params") or ""
            }
            for r in reader
        }  # fmt: skip
    rows, columns = {r.id for r in spec.rows}, {c.id for c in spec.columns}
    stray = sorted(k for k in cells if spec.kind == "table" and (k[0] not in rows or k[1] not in columns))
    if stray:
        raise ValueError(f"{path}: cells {stray[:5]} name rows or columns the spec does not have")
    return cells


# ---- runs ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One training configuration of a table (a row and a run name), over the spec's seeds."""

    row: str
    name: str
    overrides: list[str]
    dir: Path
    owner: str | None = None  # the table that trains this run when it is another table's (a column's runs_of)

    def seed_dir(self, seed: int) -> Path:
        return self.dir / f"seed{seed}"


def profile_overrides(spec: Spec, profile: str) -> list[str] | None:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {PROFILES}")
    return spec.profiles.get(profile, [])


def skipped(row: Row, col: Column, profile: str) -> bool:
    """Cells shown with the paper's numbers only: paper-only rows or columns, offline-skipped ones offline."""
    offline_skip = profile == "offline" and (row.offline_skip or col.offline_skip)
    return row.paper_only or col.paper_only or offline_skip


def plan_runs(spec: Spec, profile: str, results_root: Path) -> list[Run]:
    """The runs of a table under a profile (none for ``reference`` specs or a profile set to null)."""
    extra = profile_overrides(spec, profile)
    if spec.kind == "reference" or extra is None:
        return []
    runs: dict[tuple[str, str], Run] = {}
    for row in spec.rows:
        for col in spec.columns:
            if skipped(row, col, profile):
                continue
            key = (row.id, col.run_name)
            if key not in runs:
                owner, name = col.owner
                where = results_root / "runs" / spec.paper / (owner or spec.name) / profile / row.id / name
                own = [*row.overrides, *(row.offline if profile == "offline" else [])]
                runs[key] = Run(row.id, col.run_name, [*spec.base, *extra, *own, *col.overrides], where, owner)
    return list(runs.values())


def read_result(seed_dir: Path) -> dict | None:
    """A finished run's results.json, else None (missing, half-written or crashed)."""
    path = seed_dir / "results.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return result if result.get("status") == "finished" else None


# what execute() adds to a run's overrides; not part of what the spec asks for
_EXECUTE_ADDS = ("trainer.seed=", "trainer.progress=", "logger.group=", "logger.name=")


def trained_overrides(run: Run) -> list[str] | None:
    """The spec overrides the results in ``run.dir`` were trained with (from Hydra's ``multirun.yaml``), or None
    when the folder does not say (no multirun.yaml: nothing trained there yet, or results put there by hand)."""
    try:
        recorded = yaml.safe_load((run.dir / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return [o for o in recorded if not o.startswith(_EXECUTE_ADDS)]


def effective(overrides: list[str]) -> dict[str, str]:
    """Overrides by key, the last of a key winning (``model=roberta-base model=minilm-l6`` is minilm-l6): two lists
    with the same effective overrides compose the same config, whatever their order."""
    return {o.partition("=")[0].lstrip("+~"): o for o in overrides}


def is_stale(run: Run) -> bool:
    """Whether ``run.dir`` holds results of other overrides than the spec now gives (the spec was edited since)."""
    trained = trained_overrides(run)
    return trained is not None and effective(trained) != effective(run.overrides)


def execute(
    spec: Spec,
    profile: str,
    results_root: Path,
    columns: list[str] | None = None,
    python: str = sys.executable,
    jobs: int = 1,
) -> int:
    """Train every missing or unfinished (run, seed), of the given columns only if ``columns`` is set; returns how
    many runs were started. Finished ones are skipped; an interrupted one resumes from its checkpoint. ``jobs`` > 1
    trains that many runs at once, each process on one thread (see :func:`run_lanes`)."""
    commands = pending_commands(spec, profile, results_root, columns, python)
    run_lanes(commands, jobs)
    return len(commands)


def pending_commands(
    spec: Spec, profile: str, results_root: Path, columns: list[str] | None = None, python: str = sys.executable
) -> list[list[str]]:
    """The training commands of every missing or unfinished (run, seed) (one Hydra multirun per run over its
    missing seeds); stale run folders are moved aside first (see :func:`execute`)."""
    wanted = None if columns is None else {c.run_name for c in spec.columns if c.id in columns}
    unknown = sorted(set(columns or ()) - {c.id for c in spec.columns})
    if unknown:
        raise ValueError(f"{spec.path}: unknown column(s) {unknown}; columns: {[c.id for c in spec.columns]}")
    commands = []
    for run in plan_runs(spec, profile, results_root):
        if wanted is not None and run.name not in wanted:
            continue
        if run.owner is not None:  # another table's run: read, never trained or moved from here
            if any(read_result(run.seed_dir(s)) is None for s in spec.seeds_for(profile)):
                log.info("%s/%s: runs of %s, not trained from here (make that table)", run.row, run.name, run.owner)
            continue
        if is_stale(run):  # kept, not deleted: renamed out of the way, the run is trained again
            aside = run.dir.with_name(f"{run.dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
            log.warning("%s was trained with other overrides than %s now gives; moved to %s", run.dir, spec.path, aside)
            run.dir.rename(aside)
        missing = [s for s in spec.seeds_for(profile) if read_result(run.seed_dir(s)) is None]
        if not missing:
            continue
        cmd = [
            python, str(PROJECT_ROOT / "train.py"), "-m", *run.overrides,
            f"trainer.seed={','.join(map(str, missing))}", "trainer.progress=false",
            f"logger.group={spec.paper}/{spec.name}/{profile}", f"logger.name={run.row}/{run.name}",
            f"hydra.sweep.dir={run.dir}", "hydra.sweep.subdir=seed${trainer.seed}",
        ]  # fmt: skip
        log.info("running %s/%s seeds %s: %s", run.row, run.name, missing, " ".join(cmd[2:]))
        commands.append(cmd)
    return commands


def run_lanes(commands: list[list[str]], jobs: int = 1) -> None:
    """Run the commands one after another (``jobs`` = 1, each with the machine's default threads) or in ``jobs``
    parallel lanes of one thread each (``OMP_NUM_THREADS=1``: small models use one thread better than two; see
    ``results/bench/throughput_cpu.md``). A failed command is raised after the running ones end."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if jobs == 1:
        for cmd in commands:
            subprocess.run(cmd, check=True, cwd=PROJECT_ROOT)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(subprocess.run, cmd, check=True, cwd=PROJECT_ROOT, env=env) for cmd in commands]
    for future in futures:
        future.result()


# ---- cells --------------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    row: str
    column: str
    ours: list[float]  # the metric over the finished seeds, on the paper's scale
    paper: str  # as printed
    params_run: int | None = None  # trainable parameters of our run
    params_backbone: int | None = None  # trainable parameters on the paper's backbone, built by us (meta device)
    params_paper: str = ""  # as printed
    note: str = ""
    inference_run: int | None = None  # parameters our run's output needs at inference (pruning methods)
    inference_paper: str = ""  # as printed ("# I - Params"), optional CSV column inference_params
    refused: str = ""  # why finished results are not rendered (see refusal)

    @property
    def mean(self) -> float | None:
        return sum(self.ours) / len(self.ours) if self.ours else None

    @property
    def std(self) -> float | None:
        if len(self.ours) < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.ours) / (len(self.ours) - 1))

    @property
    def delta(self) -> float | None:
        paper = _number(self.paper)
        return None if self.mean is None or paper is None else self.mean - paper

    @property
    def params_match(self) -> bool | None:
        """Whether our count on the paper's backbone prints as the paper's (to the paper's precision)."""
        return printed_count_matches(self.params_backbone, self.params_paper)


def _number(text: str) -> float | None:
    try:
        return float(text.strip().rstrip("%").replace(",", ""))
    except (ValueError, AttributeError):
        return None


_UNITS = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9}
_COUNT = re.compile(r"\s*([0-9][0-9,]*)(?:\.([0-9]+))?\s*([KMB]?)\s*")


def printed_count_matches(count: int | None, printed: str) -> bool | None:
    """``count`` against a printed count (``11010``, ``0.90M``, ``125M``): equal, or equal once rounded to the
    printed precision. None when there is nothing to compare (no count, nothing printed, or a percentage)."""
    m = _COUNT.fullmatch(printed or "")
    if count is None or m is None:
        return None
    digits = len(m.group(2) or "")
    value = float(m.group(1).replace(",", "") + ("." + m.group(2) if m.group(2) else ""))
    return round(count / _UNITS[m.group(3)], digits) == round(value, digits)


def printed_count(printed: str) -> float | None:
    """A printed parameter count as a number (``0.90M`` -> 900000.0); None for anything else (a percentage)."""
    m = _COUNT.fullmatch(printed or "")
    return None if m is None else float(m.group(1).replace(",", "") + "." + (m.group(2) or "0")) * _UNITS[m.group(3)]


def metric_value(result: dict, metric: str, scale: float) -> float:
    best = result["metrics"]["best"]
    if metric in best:
        return float(best[metric]) * scale
    value = result.get("method_metrics", {}).get(metric)
    if isinstance(value, int | float):
        return float(value)
    raise KeyError(f"metric {metric!r} is in neither metrics.best ({sorted(best)}) nor method_metrics")


def backbone_counts(spec: Spec) -> dict[tuple[str, str], int]:
    """Trainable parameters of every (row, run) on the paper's backbone (paper profile), built on the meta device."""
    from hydra import compose, initialize_config_dir

    from loralab.config import register_configs
    from loralab.run import dry_run, make_plan

    register_configs()
    counts = {}
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        for run in plan_runs(spec, "paper", PROJECT_ROOT / "results"):
            info = dry_run(make_plan(compose("train", overrides=run.overrides)))
            counts[(run.row, run.name)] = info["trainable_params"]
    return counts


def collect(
    spec: Spec, profile: str, results: dict[tuple[str, str], list[dict]], counts: dict[tuple[str, str], int]
) -> list[Cell]:
    """Cells of the table from finished results ((row, run) -> results.json dicts, one per seed)."""
    paper = paper_numbers(spec)
    cells = []
    for row in spec.rows:
        for col in spec.columns:
            printed = paper.get((row.id, col.id), {"value": "", "params": ""})
            skip = skipped(row, col, profile)
            found = [] if skip else results.get((row.id, col.run_name), [])
            refused = next((why for r in found if (why := refusal(r, profile))), "")
            ours = [metric_value(r, col.metric, spec.scale) for r in found] if col.metric and not refused else []
            note = "; ".join(n for n in (row.note, col.note) if n) if skip else ""
            cells.append(
                Cell(
                    row.id, col.id, ours, printed["value"],
                    params_run=found[0]["params"]["trainable_params"] if found else None,
                    params_backbone=counts.get((row.id, col.run_name)),
                    params_paper=printed["params"], note=note, refused=refused,
                    inference_run=inference_count(found[0], printed.get("inference", "")) if found else None,
                    inference_paper=printed.get("inference", ""),
                )
            )  # fmt: skip
    return cells


def refusal(result: dict, profile: str) -> str:
    """Why a finished run may not stand beside the paper's number ("" when it may): random weights under any
    profile; under the paper profile also data that is not the paper's split (no per-split sources recorded, an
    early-release file, the dev_by_article protocol) or limited examples."""
    from loralab.preflight import SUBSTITUTE_MARKS

    if result.get("weights_source") == "random":
        return "weights were random (weights_source: random)"
    if profile != "paper":
        return ""
    sources = result.get("data_sources")
    if not sources:
        return "no per-split data sources recorded in results.json"
    odd = [f"{split}: {src}" for split, src in sources.items() if any(m in src for m in SUBSTITUTE_MARKS)]
    if odd:
        return f"data not the paper's split ({'; '.join(odd)})"
    task = result.get("config", {}).get("task", {})
    limits = [f"task.{k}={task[k]}" for k in ("limit_train", "limit_eval") if task.get(k) is not None]
    return f"limited data ({', '.join(limits)})" if limits else ""


def inference_count(result: dict, printed: str) -> int | None:
    """Parameters a run's output needs at inference: what a pruning method (AdaLoRA, SoRA, RoLoRA) records in
    ``method_metrics.inference_params``; for the others, where the paper prints an inference count, the trainable
    count (nothing is pruned); else None (not shown)."""
    if "method_metrics" not in result:  # a W&B summary: no method measurements to read
        return None
    value = result["method_metrics"].get("inference_params")
    return value if value is not None or not printed else result["params"]["trainable_params"]


def results_from_disk(spec: Spec, profile: str, results_root: Path) -> dict[tuple[str, str], list[dict]]:
    out = {}
    for run in plan_runs(spec, profile, results_root):
        if is_stale(run):
            log.warning("ignoring %s: trained with other overrides than %s now gives (make runs it again)", run.dir,
                        spec.path)  # fmt: skip
            continue
        found = [r for s in spec.seeds_for(profile) if (r := read_result(run.seed_dir(s))) is not None]
        if found:
            out[(run.row, run.name)] = found
    return out


def results_from_wandb(spec: Spec, profile: str, api: Any, project: str) -> dict[tuple[str, str], list[dict]]:
    """The same results from W&B runs (group ``<paper>/<table>/<profile>``, name ``<row>/<run>``): their config
    and summary stand in for results.json (``best/<metric>`` and the parameter counts)."""
    out: dict[tuple[str, str], list[dict]] = {}
    for wb in api.runs(project, filters={"group": f"{spec.paper}/{spec.name}/{profile}"}):
        if wb.state != "finished":
            continue
        row, _, name = wb.name.partition("/")
        summary = dict(wb.summary)
        best = {k.removeprefix("best/"): v for k, v in summary.items() if k.startswith("best/")}
        result = {"metrics": {"best": best}, "params": {"trainable_params": summary.get("trainable_params")}}
        out.setdefault((row, name), []).append(result)
    return out


# ---- rendering ----------------------------------------------------------------------------------------------------
HEADER = (
    "row", "column", "ours", "std", "seeds", "paper", "delta",
    "trainable (our run)", "trainable (paper backbone, built here)", "trainable (paper)", "counts match",
    "inference (our run)", "inference (paper)",
)  # fmt: skip


def _fmt(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return ""
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def table_rows(cells: list[Cell]) -> tuple[tuple[str, ...], list[list[str]]]:
    """The header and rows of a table; the two inference columns only when a cell has an inference count (ours or
    the paper's: the pruning methods' tables)."""
    match = {True: "yes", False: "NO", None: ""}
    rows = [
        [
            c.row, c.column,
            _fmt(c.mean) or (c.refused and f"not rendered: {c.refused}") or (c.note and f"not run: {c.note}")
            or "missing", _fmt(c.std),
            str(len(c.ours)), c.paper, "" if c.delta is None else f"{c.delta:+.2f}",
            _fmt(c.params_run), _fmt(c.params_backbone), c.params_paper, match[c.params_match],
            _fmt(c.inference_run), c.inference_paper,
        ]
        for c in cells
    ]  # fmt: skip
    if any(c.inference_run is not None or c.inference_paper for c in cells):
        return HEADER, rows
    return HEADER[:-2], [r[:-2] for r in rows]


def describe_runs(spec: Spec, profile: str, results: dict[tuple[str, str], list[dict]]) -> list[str]:
    """What was run, for the table header: profile, overrides, and the model, data and scale read off a result."""
    extra = profile_overrides(spec, profile)
    lines = [f"- Source: {spec.source}.", f"- Scale profile: **{profile}**."]
    if spec.kind == "reference":
        return [*lines, "- Reference only: the paper's numbers; nothing is run for this table."]
    if extra is None:
        return [*lines, f"- Not runnable under the {profile} profile (see notes); only the paper's numbers."]
    seeds = spec.seeds_for(profile)
    lines.append(f"- Overrides of all runs: `{' '.join([*spec.base, *extra]) or '(none)'}`; seeds {seeds}.")
    shared = [f"{c.id} = the runs of {c.runs_of} (`make` trains them there)" for c in spec.columns if c.runs_of]
    if shared:
        lines.append(f"- Columns read from other tables: {'; '.join(shared)}.")
    per_row = [f"{r.id} `{' '.join(r.offline)}`" for r in spec.rows if r.offline and profile == "offline"]
    if per_row:
        lines.append(f"- Offline overrides of single rows (after the row's own): {'; '.join(per_row)}.")
    if results:
        r = next(iter(results.values()))[0]
        trainer, task = r.get("config", {}).get("trainer", {}), r.get("config", {}).get("task", {})
        schedule = (
            f"max {trainer['max_steps']} steps" if trainer.get("max_steps") else f"{trainer.get('epochs')} epochs"
        )
        lines.append(
            f"- Our runs (from results.json): model **{r.get('model')}** (weights: {r.get('weights_source')}), "
            f"data {r.get('data_source')}, {r.get('num_train_examples')} training examples "
            f"(limit_train={task.get('limit_train')}), eval {r.get('num_eval_examples')}, {schedule}, "
            f"device {r.get('device')}."
        )
    done = sum(len(v) for v in results.values())
    lines.append(f"- Finished runs found: {done} of {len(plan_runs(spec, profile, Path('.'))) * len(seeds)}.")
    return lines


def render(spec: Spec, profile: str, cells: list[Cell], results: dict[tuple[str, str], list[dict]]) -> tuple[str, str]:
    """The Markdown and CSV text of a table."""
    header, rows = table_rows(cells)
    md = [f"# {spec.title}", "", *describe_runs(spec, profile, results)]
    if spec.notes:
        md += [f"- Notes: {' '.join(spec.notes.split())}"]
    md += [
        f"- `ours` and `paper` are on the paper's scale (ours x {spec.scale:g}); delta = ours - paper. Trainable "
        "parameters: of our run, of the paper's backbone as built here (meta device), and as the paper prints them"
        + (
            "; inference parameters (after pruning: AdaLoRA, SoRA, RoLoRA) of our run's output adapters and as printed."
            if len(header) == len(HEADER)
            else "."
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["profile", *header])
    writer.writerows([profile, *r] for r in rows)
    return "\n".join(md), buf.getvalue()


def plot(spec: Spec, cells: list[Cell], results: dict[tuple[str, str], list[dict]], path: Path) -> None:
    """The spec's figure as a PNG (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    kind = spec.figure.get("kind", "line")
    if kind == "line":
        xs = {r.id: r.x for r in spec.rows}
        for col in spec.columns:
            for label, pick in (("ours", lambda c: c.mean), ("paper", lambda c: _number(c.paper))):
                by_x: dict[float, list[float]] = {}
                for c in cells:
                    if c.column == col.id and xs.get(c.row) is not None and pick(c) is not None:
                        by_x.setdefault(xs[c.row], []).append(pick(c))
                if by_x:
                    points = sorted((x, sum(v) / len(v)) for x, v in by_x.items())
                    style = "-o" if label == "ours" else "--s"
                    ax.plot(*zip(*points, strict=True), style, label=f"{col.id} ({label})")
    elif kind == "learning_curve":
        for (row, name), found in results.items():
            epochs = found[0]["metrics"]["epochs"]
            metric = found[0]["main_metric"]
            ax.plot([e["epoch"] for e in epochs], [e[metric] * spec.scale for e in epochs], "-o", label=f"{row}/{name}")
    else:  # rank_distribution
        for (row, name), found in results.items():
            ranks = found[0].get("method_metrics", {}).get("rank", {})
            ax.plot(range(len(ranks)), list(ranks.values()), "-o", label=f"{row}/{name}")
    ax.set_xlabel(spec.figure.get("x_label", "")), ax.set_ylabel(spec.figure.get("y_label", ""))
    ax.set_title(spec.figure.get("title", spec.title), fontsize=9)
    if ax.has_data():
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def wandb_table(
    key: str, header: tuple[str, ...], rows: list[list[str]], project: str, mode: str, job_type: str, group: str,
    name: str, dir: Path | None = None,
) -> None:  # fmt: skip
    """Log ``rows`` under ``key`` as a ``wandb.Table`` in a run of its own (tables and claims)."""
    import wandb

    run = wandb.init(project=project, job_type=job_type, group=group, mode=mode, name=name,
                     dir=None if dir is None else str(dir))  # fmt: skip
    run.log({key: wandb.Table(columns=list(header), data=rows)})
    run.finish()


def log_wandb(
    spec: Spec, profile: str, table: tuple[tuple[str, ...], list[list[str]]], project: str, mode: str
) -> None:
    """Log a table (``table_rows``' header and rows) to W&B as a ``wandb.Table``."""
    key = f"{spec.paper}/{spec.name}"
    header, rows = table
    wandb_table(
        key, header, rows, project, mode, "table", f"{key}/{profile}", f"table-{spec.paper}-{spec.name}-{profile}"
    )


def build_table(
    spec_path: str | Path,
    profile: str = "offline",
    run: bool = True,
    results_root: str | Path | None = None,
    wandb_mode: str | None = None,
    from_wandb: bool = False,
    project: str = "loralab",
    columns: list[str] | None = None,
    jobs: int = 1,
) -> Path:
    """Run what is missing (unless ``run`` is false; only ``columns`` if given; ``jobs`` runs at once), then render;
    returns the Markdown path."""
    spec = load_spec(spec_path)
    root = Path(results_root) if results_root else PROJECT_ROOT / "results"
    if run and not from_wandb:
        execute(spec, profile, root, columns, jobs=jobs)
    if from_wandb:
        import wandb

        results = results_from_wandb(spec, profile, wandb.Api(), project)
    else:
        results = results_from_disk(spec, profile, root)
    cells = collect(spec, profile, results, backbone_counts(spec) if spec.kind == "table" else {})
    md, table_csv = render(spec, profile, cells, results)
    out = root / "tables" / spec.paper
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{spec.name}.md").write_text(md)
    (out / f"{spec.name}.csv").write_text(table_csv)
    if spec.figure:
        plot(spec, cells, results, out / f"{spec.name}.png")
    if wandb_mode:
        log_wandb(spec, profile, table_rows(cells), project, wandb_mode)
    return out / f"{spec.name}.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+", help="experiments/<paper>/<table>.yaml")
    parser.add_argument("--profile", default="offline", choices=PROFILES)
    parser.add_argument("--no-run", action="store_true", help="render from the results on disk only")
    parser.add_argument("--results", default=None, help="results root (default: <project>/results)")
    parser.add_argument("--wandb", default=None, choices=("offline", "online"), help="also log a wandb.Table")
    parser.add_argument("--from-wandb", action="store_true", help="read results from W&B runs (wandb.Api)")
    parser.add_argument("--project", default="loralab")
    parser.add_argument("--columns", default=None, help="comma-separated column ids: run only these (render all)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one thread each (default 1)")
    parser.add_argument("--preflight", action="store_true", help="resolve every run, train nothing (loralab.preflight)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="target GPU memory in GiB (preflight)")
    parser.add_argument("--gpu-tflops", type=float, default=125.0, help="achieved TFLOP/s of the GPU (preflight)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.preflight:
        from loralab.preflight import preflight_tables

        sys.exit(preflight_tables(args.specs, args.profile, args.gpu_memory, args.gpu_tflops))
    for spec in args.specs:
        columns = args.columns.split(",") if args.columns else None
        path = build_table(
            spec,
            args.profile,
            not args.no_run,
            args.results,
            args.wandb,
            args.from_wandb,
            args.project,
            columns,
            args.jobs,
        )
        print(path)


if __name__ == "__main__":
    main()
