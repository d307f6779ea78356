"""Paper claims as verdicts: each claim a comparison of runs, a statistic and a rule stated before running.

A paper's claims live in ``experiments/<paper>/claims.yaml`` (format in ``experiments/README.md``). Every claim
quotes the sentence it tests and where the paper makes it, names the runs it compares (cells of the table specs
beside it, ``<table>/<row>/<column>``), the statistic and the decision rule. ``python -m loralab.claims
experiments/<paper>/claims.yaml`` trains the missing seeds of those runs through ``loralab.tables`` (same run
folders, same resumption and stale detection as ``make table*``), then writes ``results/claims/<paper>.md``,
``.csv`` and ``.png`` and logs the verdicts to W&B as a ``wandb.Table`` (offline mode unless told otherwise).

Statistics:
- ``difference``: the paired difference a - b of the claimed metric (paper's scale), per seed over the seeds both
  runs finished, with a two-sided Student-t interval over those seeds (``confidence``, Bonferroni-corrected over
  the claim's comparisons). At least ``min_seeds`` pairs, else the claim reads "too few seeds".
- ``params_ratio``: trainable parameters of a over b, on the paper's backbone built here (meta device, no
  weights), beside the same ratio of our stand-in runs: a count, no interval.
- ``ratio``: a over b per seed (e.g. two measurements of one run: RoLoRA's largest allocation over its budget);
  the worst seed decides.

Rules (``rule.kind`` with ``margin`` m >= 0 or ``threshold`` t, on the interval [lo, hi] or the ratio q):
- ``non_inferior``: holds if lo > -m, does not hold if hi < -m, else inconclusive ("a is at most m worse").
- ``superior``: holds if lo > m, does not hold if hi < m, else inconclusive ("a is better by more than m").
- ``equivalent``: holds if -m < lo and hi < m, does not hold if lo > m or hi < -m, else inconclusive.
- ``at_least`` / ``at_most``: holds if q >= t (q <= t), else does not hold.
A claim with several comparisons holds if all hold and does not hold if any does not; else inconclusive.

Trivial baselines: every compared run's mean must be clearly above what a predictor that learned nothing scores
on the same eval set (GLUE: the training split's majority class, or for STS-B a constant score, Pearson 0):
the lower end of the t-interval of the run's mean over seeds must exceed baseline + ``informative_margin``.
A claim resting on a run that is not is rendered "not informative", never as a verdict.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import logging
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loralab import tables
from loralab.config import PROJECT_ROOT

log = logging.getLogger(__name__)

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
NOT_INFORMATIVE, NOT_RUN, TOO_FEW = "not informative", "not run yet", "too few seeds"
NOT_RUNNABLE = "not runnable under this profile"
STATISTICS = ("difference", "params_ratio", "ratio")
RULES = {
    "difference": ("non_inferior", "superior", "equivalent"),
    "params_ratio": ("at_least", "at_most"),
    "ratio": ("at_least", "at_most"),
}


# ---- spec ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRef:
    """A compared run: a cell ``<table>/<row>/<column>`` of a table spec beside the claims file."""

    name: str
    cell: str
    paper_backbone: list[str] | None = None  # overrides building it on the paper's backbone (default: the cell's
    # paper profile)
    metric: str | None = None  # a metric of the same runs other than the column's (e.g. a method_metrics entry)
    # other cells standing for the same run at another setting (the paper tried two learning rates per method and
    # kept the better one): the claims use the cell with the highest mean score over the seeds (see choose)
    alternatives: list[str] | None = None

    @property
    def parts(self) -> tuple[str, str, str]:
        table, row, column = self.cell.split("/")
        return table, row, column


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    paper: float | None = None  # the paper's own value of the statistic, when not computed from the paper's cells
    paper_cells: dict[str, list[str]] | None = None  # {"a": [cells], "b": [cells]}: the paper's value from them


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str  # what is tested, in our words
    quote: str  # the paper's sentence
    where: str  # where the paper makes it
    statistic: str
    rule: dict[str, Any]
    compare: list[Comparison]
    note: str | None = None
    check_baseline: bool = True  # false for measurements that are not scores (a rank, a budget): no baseline rule

    @property
    def rule_text(self) -> str:
        kind, m, t = self.rule["kind"], self.rule.get("margin", 0), self.rule.get("threshold")
        if kind in ("at_least", "at_most"):
            return f"holds if the ratio {'>=' if kind == 'at_least' else '<='} {t:g}, else does not hold"
        text = {
            "non_inferior": f"holds if the interval's lower end > {-m:g}; does not hold if its upper end < {-m:g}",
            "superior": f"holds if the interval's lower end > {m:g}; does not hold if its upper end < {m:g}",
            "equivalent": f"holds if the interval lies within (-{m:g}, {m:g}); does not hold if it lies outside",
        }[kind]
        return f"{text}; else inconclusive"


@dataclass
class ClaimsSpec:
    """A paper's claims file (see ``experiments/README.md``)."""

    path: Path
    title: str
    source: str
    runs: dict[str, RunRef]
    claims: list[Claim]
    seeds: list[int] = field(default_factory=lambda: [42, 43, 44])
    min_seeds: int = 3
    confidence: float = 0.95
    informative_margin: float = 5.0  # above the trivial baseline, on the paper's scale (5 points on a 0-100 scale)
    digits: int = 2  # decimals of differences (3 for a table printed as fractions)
    notes: str | None = None

    @property
    def paper(self) -> str:
        return self.path.parent.name


def _fields(cls: type, raw: dict, where: str) -> None:
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(f.name for f in dataclasses.fields(cls))}")


def load_claims(path: str | Path) -> ClaimsSpec:
    """Read and check a claims file: known keys, every run a cell of a table spec beside it, every comparison
    naming declared runs, known statistics and rules. Errors name the file and what to fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"claims file {path} not found; claims live in experiments/<paper>/claims.yaml")
    raw = yaml.safe_load(path.read_text()) or {}
    _fields(ClaimsSpec, {**raw, "runs": 0, "claims": 0}, str(path))
    runs = {}
    for name, value in (raw.pop("runs", None) or {}).items():
        value = {"cell": value} if isinstance(value, str) else value
        _fields(RunRef, {**value, "name": name}, f"{path}: run {name}")
        runs[name] = RunRef(name=name, **value)
        for cell in [runs[name].cell, *(runs[name].alternatives or [])]:
            check_cell(path, dataclasses.replace(runs[name], cell=cell))
    claims = []
    for i, c in enumerate(raw.pop("claims", None) or []):
        where = f"{path}: claim {c.get('id', i)}"
        _fields(Claim, c, where)
        compare = [Comparison(*x) if isinstance(x, list) else Comparison(**x) for x in c.pop("compare", None) or []]
        try:
            claim = Claim(compare=compare, **c)
        except TypeError as e:
            raise ValueError(f"{where}: {e}") from None
        check_claim(where, claim, runs)
        claims.append(claim)
    ids = [c.id for c in claims]
    if not claims or len(set(ids)) != len(ids):
        raise ValueError(f"{path}: needs at least one claim, with unique ids; got {ids}")
    return ClaimsSpec(path=path, runs=runs, claims=claims, **raw)


def check_cell(path: Path, ref: RunRef) -> None:
    """``ref.cell`` is ``<table>/<row>/<column>`` of a spec beside ``path`` that is not a paper-only cell."""
    parts = ref.cell.split("/")
    spec_path = path.parent / f"{parts[0]}.yaml"
    if len(parts) != 3 or not spec_path.is_file():
        raise ValueError(f"{path}: run {ref.name}: cell {ref.cell!r} must be '<table>/<row>/<column>' of a table spec "
                         f"in {path.parent}")  # fmt: skip
    spec = tables.load_spec(spec_path)
    rows, columns = {r.id: r for r in spec.rows}, {c.id: c for c in spec.columns}
    if parts[1] not in rows or parts[2] not in columns:
        raise ValueError(f"{path}: run {ref.name}: {spec_path.name} has no row {parts[1]!r} or no column {parts[2]!r}; "
                         f"rows {sorted(rows)}, columns {sorted(columns)}")  # fmt: skip
    if rows[parts[1]].paper_only or columns[parts[2]].paper_only or not columns[parts[2]].metric:
        raise ValueError(f"{path}: run {ref.name}: cell {ref.cell} is paper-only or has no metric: nothing to compare")


def check_claim(where: str, claim: Claim, runs: dict[str, RunRef]) -> None:
    if claim.statistic not in STATISTICS:
        raise ValueError(f"{where}: statistic {claim.statistic!r} is not one of {STATISTICS}")
    kinds = RULES[claim.statistic]
    if claim.rule.get("kind") not in kinds:
        raise ValueError(f"{where}: rule kind {claim.rule.get('kind')!r} is not one of {kinds} (for {claim.statistic})")
    key = "margin" if claim.statistic == "difference" else "threshold"
    value = claim.rule.get(key, None if key == "threshold" else 0)
    if not isinstance(value, int | float) or (key == "margin" and value < 0):
        raise ValueError(f"{where}: rule needs a number {key}{' >= 0' if key == 'margin' else ''}; got {claim.rule}")
    if not claim.compare:
        raise ValueError(f"{where}: compare lists no comparison; give [a, b] pairs of run names")
    for comp in claim.compare:
        missing = sorted({comp.a, comp.b} - set(runs))
        if missing:
            raise ValueError(f"{where}: compares unknown run(s) {missing}; declared runs: {sorted(runs)}")
        cells = comp.paper_cells
        if cells is not None and (
            set(cells) != {"a", "b"} or any(c.count("/") != 2 for v in cells.values() for c in v)
        ):
            raise ValueError(f"{where}: paper_cells must be {{a: [cells], b: [cells]}} of '<table>/<row>/<column>'")


# ---- runs ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resolved:
    """A compared run as the table that trains it plans it under a profile."""

    ref: RunRef
    spec: tables.Spec  # the owner table (the one that trains it)
    run: tables.Run | None  # None: not run under the profile (paper-only, offline-skipped, profile null)
    column: tables.Column  # the referenced column
    scale: float
    paper_value: str  # the paper's number for the referenced cell, as printed ("" if none)
    paper_params: str

    @property
    def metric(self) -> str:
        return self.ref.metric or self.column.metric


def candidates(ref: RunRef) -> dict[str, RunRef]:
    """A run's cell and its alternatives, each as a run of its own: ``name`` for the cell, ``name@cell`` for an
    alternative (resolved, trained and gathered like any run until :func:`choose` keeps one)."""
    alternatives = {
        f"{ref.name}@{c}": dataclasses.replace(ref, cell=c, alternatives=None) for c in ref.alternatives or []
    }
    return {ref.name: ref, **alternatives}


def resolve(spec: ClaimsSpec, profile: str, results_root: Path) -> dict[str, Resolved]:
    """Each run of the claims (and each alternative cell of a run, :func:`candidates`) as planned by its table
    (following ``runs_of`` to the table that trains it)."""
    out = {}
    for name, ref in ((n, r) for run in spec.runs.values() for n, r in candidates(run).items()):
        table, row, column = ref.parts
        cell_spec = tables.load_spec(spec.path.parent / f"{table}.yaml")
        col = next(c for c in cell_spec.columns if c.id == column)
        printed = tables.paper_numbers(cell_spec).get((row, column), {"value": "", "params": ""})
        owner, run_name = col.owner
        owner_spec = tables.load_spec(spec.path.parent / f"{owner}.yaml") if owner else cell_spec
        planned = [r for r in tables.plan_runs(owner_spec, profile, results_root) if (r.row, r.name) == (row, run_name)]
        run = planned[0] if planned else None
        out[name] = Resolved(ref, owner_spec, run, col, cell_spec.scale, printed["value"], printed["params"])
    return out


def execute(spec: ClaimsSpec, profile: str, results_root: Path, jobs: int = 1) -> int:
    """Train the missing seeds of every compared run as its table would (``loralab.tables``: same folders,
    resumption and stale handling, ``jobs`` lanes); returns how many training commands were run."""
    commands, seen = [], set()
    for res in resolve(spec, profile, results_root).values():
        if res.run is None or res.run.dir in seen:
            continue
        seen.add(res.run.dir)
        row = next(r for r in res.spec.rows if r.id == res.run.row)
        columns = [c for c in res.spec.columns if c.run_name == res.run.name]
        one = dataclasses.replace(res.spec, rows=[row], columns=columns, seeds=spec.seeds)
        commands += tables.pending_commands(one, profile, results_root, [columns[0].id])
    tables.run_lanes(commands, jobs)
    return len(commands)


def gather(spec: ClaimsSpec, resolved: dict[str, Resolved], profile: str) -> dict[str, dict[int, dict]]:
    """Finished results per run and seed; stale run folders and results a table would refuse to render
    (``tables.refusal``: random weights; under the paper profile, data that is not the paper's) are left out."""
    out: dict[str, dict[int, dict]] = {}
    for name, res in resolved.items():
        if res.run is None:
            out[name] = {}
            continue
        if tables.is_stale(res.run):
            log.warning("ignoring %s: trained with other overrides than %s now gives", res.run.dir, res.spec.path)
            out[name] = {}
            continue
        found = {s: r for s in spec.seeds if (r := tables.read_result(res.run.seed_dir(s))) is not None}
        for seed, why in [(s, why) for s, r in found.items() if (why := tables.refusal(r, profile))]:
            log.warning("ignoring %s seed %d: %s", res.run.dir, seed, why)
            del found[seed]
        out[name] = found
    return out


def choose(spec: ClaimsSpec, resolved: dict[str, Resolved], found: dict[str, dict[int, dict]]) -> dict[str, str]:
    """Keep one cell per run with alternatives, in place: the one with the highest mean of its metric over the
    seeds (a score, higher is better; the paper's 'kept the better one', chosen here on the reported split, as a
    paper without a separate validation split does); the run's own cell until every candidate has ``min_seeds``
    seeds. Returns per such run what was chosen, for the report."""
    choices = {}
    for ref in spec.runs.values():
        names = list(candidates(ref))
        if len(names) == 1:
            continue
        means = {}
        for name in names:
            res = resolved[name]
            values = [tables.metric_value(r, res.metric, res.scale) for r in found.get(name, {}).values()]
            means[name] = sum(values) / len(values) if len(values) >= spec.min_seeds else None
        ready = all(m is not None for m in means.values())
        best = max(names, key=lambda n: means[n]) if ready else ref.name
        tried = "; ".join(
            f"{resolved[n].ref.cell}: {'fewer than min_seeds seeds' if means[n] is None else f'mean {means[n]:.2f}'}"
            for n in names
        )
        choices[ref.name] = (
            f"the best of its cells ({tried}): the highest mean over seeds"
            if ready
            else f"its own cell until every alternative has {spec.min_seeds} seeds ({tried})"
        )
        resolved[ref.name], found[ref.name] = resolved[best], found.get(best, {})
        for name in names[1:]:
            del resolved[name]
            found.pop(name, None)
    return choices


def paper_backbone_counts(spec: ClaimsSpec, resolved: dict[str, Resolved], names: set[str]) -> dict[str, int]:
    """Trainable parameters of the named runs on the paper's backbone, built on the meta device by
    ``tables.backbone_counts``: the run's ``paper_backbone`` overrides, else its table cell's paper profile."""
    counts = {}
    for name in sorted(names):
        res = resolved[name]
        if res.ref.paper_backbone is not None:
            one = tables.Spec(
                path=spec.path, title=name, source="", base=res.ref.paper_backbone, profiles={"paper": []},
                rows=[tables.Row("run")], columns=[tables.Column("run")],
            )  # fmt: skip
            counts[name] = tables.backbone_counts(one)[("run", "run")]
            continue
        table, row, column = res.ref.parts
        cell_spec = tables.load_spec(spec.path.parent / f"{table}.yaml")
        one = dataclasses.replace(cell_spec, rows=[r for r in cell_spec.rows if r.id == row],
                                  columns=[c for c in cell_spec.columns if c.id == column])  # fmt: skip
        found = tables.backbone_counts(one)
        if found:
            counts[name] = next(iter(found.values()))
    return counts


# ---- statistics ---------------------------------------------------------------------------------------------------
def t_interval(values: list[float], confidence: float) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval of the mean (n >= 2)."""
    from scipy import stats

    n = len(values)
    if n < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got {n}")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def decide(kind: str, value: float | None = None, lo: float | None = None, hi: float | None = None,
           margin: float = 0.0, threshold: float | None = None) -> str:  # fmt: skip
    """The verdict of one comparison under a rule (see the module docstring)."""
    if kind == "at_least":
        return HOLDS if value >= threshold else FAILS
    if kind == "at_most":
        return HOLDS if value <= threshold else FAILS
    if kind == "non_inferior":
        return HOLDS if lo > -margin else FAILS if hi < -margin else INCONCLUSIVE
    if kind == "superior":
        return HOLDS if lo > margin else FAILS if hi < margin else INCONCLUSIVE
    if kind == "equivalent":
        return HOLDS if -margin < lo and hi < margin else FAILS if lo > margin or hi < -margin else INCONCLUSIVE
    raise ValueError(f"unknown rule kind {kind!r}")


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its comparisons': missing data first, then not informative, then the rules."""
    for first in (NOT_RUNNABLE, NOT_RUN, TOO_FEW, NOT_INFORMATIVE, FAILS, INCONCLUSIVE):
        if first in verdicts:
            return first
    return HOLDS


def trivial_baseline(result: dict, metric: str, scale: float) -> tuple[float | None, str]:
    """What a predictor that learned nothing scores on the run's eval set, on the paper's scale, and what it is:
    GLUE classification: the training split's majority class; STS-B: a constant score (Pearson 0). Other tasks:
    (None, why)."""
    import numpy as np

    from loralab.config import TaskConfig
    from loralab.data.glue import GLUE_TASKS
    from loralab.metrics import glue_metrics
    from loralab.tasks import build_task

    cfg = result["config"]["task"]
    if cfg.get("kind") != "sequence_classification" or cfg.get("dataset") != "glue":
        return None, f"no trivial baseline computed for task {cfg.get('name')}"
    task = build_task(TaskConfig(**cfg))
    data = task.load()
    split = next(iter(data.evals))
    labels = np.array([e.label for e in data.evals[split]])
    glue = GLUE_TASKS[cfg["subset"]]
    if glue.is_regression:
        constant, what = float(np.mean([e.label for e in data.train])), "a constant score (the training mean)"
    else:
        counts = np.bincount([int(e.label) for e in data.train], minlength=glue.num_labels)
        constant, what = int(counts.argmax()), f"the training split's majority class ({int(counts.argmax())})"
    scores = glue_metrics(glue.name, np.full(labels.shape, constant), labels)
    if metric.removesuffix(f"_{split}") not in scores:
        return None, f"{metric} is not one of the task's scores ({sorted(scores)})"
    return scores[metric.removesuffix(f"_{split}")] * scale, f"{what} on {split} ({len(labels)} examples)"


@dataclass
class RunSummary:
    name: str
    cell: str
    values: dict[int, float]  # seed -> metric on the paper's scale
    baseline: float | None = None
    baseline_what: str = ""
    interval: tuple[float, float, float] | None = None  # mean, lo, hi of the run's mean over seeds
    baseline_bar: float = math.inf  # baseline + informative margin

    @property
    def informative(self) -> bool:
        """Clearly above the trivial baseline: the interval of the mean lies above baseline + margin."""
        return self.baseline is not None and self.interval is not None and self.interval[1] > self.baseline_bar


@dataclass
class ComparisonResult:
    a: str
    b: str
    seeds: list[int]
    value: float | None = None  # mean paired difference, or the ratio on the paper's backbone
    lo: float | None = None
    hi: float | None = None
    ours_run: float | None = None  # params_ratio: the same ratio of our stand-in runs
    paper: float | None = None
    paper_note: str = ""
    verdict: str = NOT_RUN
    counts: str = ""  # params_ratio: the trainable parameters behind the ratios


@dataclass
class ClaimResult:
    claim: Claim
    comparisons: list[ComparisonResult]
    runs: dict[str, RunSummary]
    confidence: float  # per comparison (Bonferroni-corrected)

    @property
    def verdict(self) -> str:
        return combine([c.verdict for c in self.comparisons])


def summarize_runs(
    spec: ClaimsSpec,
    resolved: dict[str, Resolved],
    results: dict[str, dict[int, dict]],
) -> dict[str, RunSummary]:
    """Per run: its metric per seed, the interval of its mean, and its trivial baseline."""
    out = {}
    for name, res in resolved.items():
        found = results.get(name, {})
        values = {s: tables.metric_value(r, res.metric, res.scale) for s, r in found.items()}
        summary = RunSummary(name, res.ref.cell, values)
        if found:
            first = next(iter(found.values()))
            summary.baseline, summary.baseline_what = trivial_baseline(first, res.metric, res.scale)
            if summary.baseline is not None:
                summary.baseline_bar = summary.baseline + spec.informative_margin
        if len(values) >= 2:
            summary.interval = t_interval(list(values.values()), spec.confidence)
        out[name] = summary
    return out


def paper_value(
    spec: ClaimsSpec, claim: Claim, comp: Comparison, resolved: dict[str, Resolved]
) -> tuple[float | None, str]:
    """The paper's own value of the statistic for a comparison, and where it comes from."""
    if comp.paper is not None:
        return float(comp.paper), "as given in the claims file"
    if claim.statistic == "params_ratio":
        a, b = (tables.printed_count(resolved[n].paper_params) for n in (comp.a, comp.b))
        return (a / b, "printed counts") if a and b else (None, "")
    if claim.statistic == "ratio":
        return None, ""
    if comp.paper_cells is None:
        a, b = (tables._number(resolved[n].paper_value) for n in (comp.a, comp.b))
        return (a - b, "") if a is not None and b is not None else (None, "")
    means = []
    for side in ("a", "b"):
        values = []
        for cell in comp.paper_cells[side]:
            table, row, column = cell.split("/")
            printed = tables.paper_numbers(tables.load_spec(spec.path.parent / f"{table}.yaml"))
            values.append(tables._number(printed.get((row, column), {}).get("value", "")))
        if not values or None in values:
            return None, ""
        means.append(sum(values) / len(values))
    return means[0] - means[1], f"mean of {len(comp.paper_cells['a'])} vs {len(comp.paper_cells['b'])} paper cells"


def evaluate(
    spec: ClaimsSpec,
    resolved: dict[str, Resolved],
    results: dict[str, dict[int, dict]],
    counts: dict[str, int],
) -> list[ClaimResult]:
    """Every claim's comparisons, statistics and verdicts."""
    summaries = summarize_runs(spec, resolved, results)
    out = []
    for claim in spec.claims:
        confidence = 1 - (1 - spec.confidence) / len(claim.compare)
        comps = []
        for comp in claim.compare:
            paper, note = paper_value(spec, claim, comp, resolved)
            res = ComparisonResult(comp.a, comp.b, [], paper=paper, paper_note=note)
            ra, rb = results.get(comp.a, {}), results.get(comp.b, {})
            if claim.statistic == "params_ratio":
                ours = {
                    n: next(iter(r.values()))["params"]["trainable_params"]
                    for n, r in ((comp.a, ra), (comp.b, rb))
                    if r
                }
                if len(ours) == 2:
                    res.ours_run = ours[comp.a] / ours[comp.b]
                if comp.a in counts and comp.b in counts:
                    res.value = counts[comp.a] / counts[comp.b]
                    res.verdict = decide(claim.rule["kind"], value=res.value, threshold=claim.rule["threshold"])
                res.counts = "; ".join(
                    f"{n}: {counts[n]:,} on the paper's backbone" + (f", {ours[n]:,} in our run" if n in ours else "")
                    for n in (comp.a, comp.b) if n in counts
                )  # fmt: skip
            elif claim.statistic == "ratio":
                sa, sb = summaries[comp.a].values, summaries[comp.b].values
                res.seeds = sorted(set(sa) & set(sb))
                if res.seeds:  # the worst seed decides: the largest ratio for at_most, the smallest for at_least
                    worst = max if claim.rule["kind"] == "at_most" else min
                    res.value = worst(sa[s] / sb[s] for s in res.seeds)
                    res.verdict = decide(claim.rule["kind"], value=res.value, threshold=claim.rule["threshold"])
                elif resolved[comp.a].run is None or resolved[comp.b].run is None:
                    res.verdict = NOT_RUNNABLE
            else:
                sa, sb = summaries[comp.a].values, summaries[comp.b].values
                res.seeds = sorted(set(sa) & set(sb))
                diffs = [sa[s] - sb[s] for s in res.seeds]
                if len(diffs) >= 2:
                    res.value, res.lo, res.hi = t_interval(diffs, confidence)
                if resolved[comp.a].run is None or resolved[comp.b].run is None:
                    res.verdict = NOT_RUNNABLE
                elif not res.seeds:
                    res.verdict = NOT_RUN
                elif len(res.seeds) < spec.min_seeds:
                    res.verdict = TOO_FEW
                elif claim.check_baseline and not (summaries[comp.a].informative and summaries[comp.b].informative):
                    res.verdict = NOT_INFORMATIVE
                else:
                    res.verdict = decide(claim.rule["kind"], lo=res.lo, hi=res.hi, margin=claim.rule.get("margin", 0))
            comps.append(res)
        used = {n for c in claim.compare for n in (c.a, c.b)}
        out.append(ClaimResult(claim, comps, {n: summaries[n] for n in used}, confidence))
    return out


# ---- rendering ----------------------------------------------------------------------------------------------------
HEADER = ("claim", "verdict", "compared (a vs b)", "seeds", "statistic", "ours", "interval", "stand-in ratio", "paper")


def _f(value: float | None, digits: int = 2, sign: bool = False) -> str:
    return "" if value is None else f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def claim_rows(results: list[ClaimResult], digits: int = 2) -> list[list[str]]:
    """One row per comparison (the claim's verdict beside each, with the comparison's own where it differs), for the
    CSV, the summary and W&B."""
    rows = []
    what = {
        "difference": "mean paired difference a - b",
        "params_ratio": "ratio a/b (paper backbone)",
        "ratio": "ratio a/b, worst seed",
    }
    for cr in results:
        ratio = cr.claim.statistic != "difference"
        for c in cr.comparisons:
            interval = "" if c.lo is None else f"[{c.lo:+.{digits}f}, {c.hi:+.{digits}f}]"
            seeds = "" if cr.claim.statistic == "params_ratio" else str(len(c.seeds))
            verdict = cr.verdict if c.verdict in (cr.verdict, "") else f"{cr.verdict} (this comparison: {c.verdict})"
            rows.append([
                cr.claim.id, verdict, f"{c.a} vs {c.b}", seeds, what[cr.claim.statistic],
                _f(c.value, 3 if ratio else digits, sign=not ratio), interval, _f(c.ours_run, 3),
                _f(c.paper, 3 if ratio else digits, sign=not ratio),
            ])  # fmt: skip
    return rows


def render(
    spec: ClaimsSpec, profile: str, results: list[ClaimResult], choices: dict[str, str] | None = None
) -> tuple[str, str]:
    """The Markdown and CSV text of a paper's claims; ``choices``: which cell a run with alternatives uses
    (:func:`choose`)."""
    choices = choices or {}
    pct = f"{spec.confidence:.0%}"
    md = [
        f"# {spec.title}",
        "",
        f"- Source: {spec.source}. Scale profile: **{profile}**; seeds {spec.seeds} (a verdict needs >= "
        f"{spec.min_seeds} seeds finished by both compared runs).",
        f"- Method: per seed the paired difference a - b (both runs trained with the same seed: same data order and "
        f"head initialisation); mean and two-sided Student-t {pct} interval over seeds, Bonferroni-corrected when a "
        "claim makes several comparisons. Parameter ratios are counts on the paper's backbone built here (meta "
        "device), with our stand-in runs' ratio beside them.",
        f"- Not informative: a compared run whose {pct} t-interval of the mean over seeds does not lie above its "
        f"trivial baseline + {spec.informative_margin:g} (paper's scale; the baseline is shown per claim). Such "
        "claims get no verdict.",
    ]
    if spec.notes:
        md.append(f"- Notes: {' '.join(spec.notes.split())}")
    md += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    md += ["| " + " | ".join(r) + " |" for r in claim_rows(results, spec.digits)]
    for cr in results:
        c = cr.claim
        md += ["", f"## {c.id}: {cr.verdict}", "", f"- Claim tested: {c.claim}", f'- Paper ({c.where}): "{c.quote}"']
        md.append(f"- Statistic: {c.statistic}; rule (stated before running): {c.rule_text}.")
        if c.statistic == "difference":
            md.append(f"- Interval: {cr.confidence:.1%} per comparison ({len(c.compare)} comparison(s)).")
        for comp in cr.comparisons:
            if comp.counts:
                md.append(f"- Trainable parameters: {comp.counts}.")
        for s in cr.runs.values() if c.statistic != "params_ratio" else ():
            mean = (
                "" if s.interval is None else f", mean {s.interval[0]:.2f} [{s.interval[1]:.2f}, {s.interval[2]:.2f}]"
            )
            above = "interval needs >= 2 seeds" if s.interval is None else (
                "clearly above" if s.informative else "NOT clearly above"
            )  # fmt: skip
            if not s.values:
                base = "no runs yet"
            elif not c.check_baseline:
                base = "no trivial baseline (a measurement, not a score: the claim sets check_baseline false)"
            else:
                base = f"trivial baseline {_f(s.baseline)} ({s.baseline_what}): {above}"
            values = ", ".join(f"{v:.2f}" for v in s.values.values()) or "none"
            chosen = f" (chosen: {choices[s.name]})" if s.name in choices else ""
            md.append(f"- Run `{s.name}` = {s.cell}{chosen}: seeds {list(s.values)}: {values}{mean}; {base}.")
        for comp in cr.comparisons:
            if comp.paper_note:
                md.append(f"- Paper's value for {comp.a} vs {comp.b}: {_f(comp.paper, 3)} ({comp.paper_note}).")
        if c.note:
            md.append(f"- Note: {' '.join(c.note.split())}")
    buf = io.StringIO()
    csv.writer(buf).writerows([["profile", *HEADER], *([profile, *r] for r in claim_rows(results, spec.digits))])
    return "\n".join(md) + "\n", buf.getvalue()


def plot(spec: ClaimsSpec, results: list[ClaimResult], path: Path) -> None:
    """Paired differences with their intervals, one panel per comparison on its own x scale (scores and measures
    such as a rank or a norm differ by orders of magnitude), the paper's value and the rule's threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [(cr, c) for cr in results if cr.claim.statistic == "difference" for c in cr.comparisons]
    fig, axes = plt.subplots(max(len(items), 1), 1, figsize=(9, 0.62 * len(items) + 1.4), squeeze=False)
    for ax, (cr, c) in zip(axes[:, 0], items, strict=False):
        if c.value is not None and c.lo is not None:
            ax.errorbar(c.value, 0, xerr=[[c.value - c.lo], [c.hi - c.value]], fmt="o", color="C0", capsize=3,
                        label="ours (interval)")  # fmt: skip
        if c.paper is not None:
            ax.plot(c.paper, 0, "x", color="C3", markersize=8, label="paper")
        m = cr.claim.rule.get("margin", 0)
        bounds = {"non_inferior": [-m], "superior": [m], "equivalent": [-m, m]}[cr.claim.rule["kind"]]
        ax.plot(bounds, [0] * len(bounds), "|", color="grey", markersize=14, label="rule's threshold")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks([])
        ax.set_ylabel(f"{cr.claim.id}: {c.a} - {c.b}\n({cr.verdict})", rotation=0, ha="right", va="center",
                      fontsize=7)  # fmt: skip
        ax.tick_params(axis="x", labelsize=7)
    if items:
        axes[0, 0].set_title("\n".join(textwrap.wrap(spec.title, 75)), fontsize=9)
        handles = {label: h for ax in axes[:, 0] for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
        fig.legend(handles.values(), handles.keys(), fontsize=7, loc="lower right", ncol=3)
        axes[-1, 0].set_xlabel("paired difference a - b (paper's scale; each panel its own x scale)", fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_wandb(spec: ClaimsSpec, profile: str, rows: list[list[str]], project: str, mode: str, dir: Path) -> None:
    tables.wandb_table(f"{spec.paper}/claims", HEADER, rows, project, mode, "claims", f"{spec.paper}/claims/{profile}",
                f"claims-{spec.paper}-{profile}", dir)  # fmt: skip


def build_claims(
    path: str | Path,
    profile: str = "offline",
    run: bool = True,
    results_root: str | Path | None = None,
    wandb_mode: str | None = "offline",
    project: str = "loralab",
    jobs: int = 1,
) -> Path:
    """Train what the claims miss (unless ``run`` is false; ``jobs`` runs at once), then render; returns the
    Markdown path."""
    spec = load_claims(path)
    root = Path(results_root) if results_root else PROJECT_ROOT / "results"
    if run:
        execute(spec, profile, root, jobs)
    resolved = resolve(spec, profile, root)
    found = gather(spec, resolved, profile)
    choices = choose(spec, resolved, found)
    names = {n for c in spec.claims if c.statistic == "params_ratio" for comp in c.compare for n in (comp.a, comp.b)}
    results = evaluate(spec, resolved, found, paper_backbone_counts(spec, resolved, names))
    md, text = render(spec, profile, results, choices)
    out = root / "claims"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{spec.paper}.md").write_text(md)
    (out / f"{spec.paper}.csv").write_text(text)
    plot(spec, results, out / f"{spec.paper}.png")
    if wandb_mode:
        log_wandb(spec, profile, claim_rows(results, spec.digits), project, wandb_mode, out)
    return out / f"{spec.paper}.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+", help="experiments/<paper>/claims.yaml")
    parser.add_argument("--profile", default="offline", choices=tables.PROFILES)
    parser.add_argument("--no-run", action="store_true", help="render from the results on disk only")
    parser.add_argument("--results", default=None, help="results root (default: <project>/results)")
    parser.add_argument("--wandb", default="offline", choices=("offline", "online", "none"),
                        help="log the verdicts as a wandb.Table (default offline; wandb sync later)")  # fmt: skip
    parser.add_argument("--project", default="loralab")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one thread each (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for spec in args.specs:
        mode = None if args.wandb == "none" else args.wandb
        print(build_claims(spec, args.profile, not args.no_run, args.results, mode, args.project, args.jobs))


if __name__ == "__main__":
    main()
