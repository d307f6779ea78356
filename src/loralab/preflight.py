"""Preflight: resolve a run without training it, and say whether it would run as configured.

For one composed config (``python train.py ... preflight=true``) or every run of a table (``python -m
loralab.tables --preflight``): where the weights, the tokenizer and each split would come from (found, not
loaded: :func:`loralab.models.resolve_weights`; local files counted, hub splits from the cached files' metadata),
examples per split, optimizer steps per epoch and in total, the evaluation cadence, the seeds, whether an
AdaLoRA / RoLoRA budget schedule fits the run, and a peak-memory estimate for the target GPU from the meta-device
build. A run *fails* when something it needs cannot be had, and *substitutes* when it would run on something else
than the paper's setup (random weights, a data file or protocol standing in for the paper's split, limited
examples); which substitutes are allowed depends on the profile (see :func:`check`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from loralab.data.glue import count_glue_hub, hub_dataset
from loralab.data.readers import count_hub, local_label, split_by_article
from loralab.models import hub_available, resolve_tokenizer, resolve_weights

GIB = 2**30
# Official split sizes, used for hub splits not yet downloaded (the preflight never downloads data): from the
# datasets' papers / hub cards. Keyed by (dataset, subset) -> {split: examples}.
OFFICIAL_SIZES: dict[tuple[str, str | None], dict[str, int]] = {
    ("glue", "cola"): {"train": 8551, "dev": 1043},
    ("glue", "sst2"): {"train": 67349, "dev": 872},
    ("glue", "mrpc"): {"train": 3668, "dev": 408},
    ("glue", "qqp"): {"train": 363846, "dev": 40430},
    ("glue", "stsb"): {"train": 5749, "dev": 1500},
    ("glue", "mnli"): {"train": 392702, "dev_matched": 9815, "dev_mismatched": 9832},
    ("glue", "qnli"): {"train": 104743, "dev": 5463},
    ("glue", "rte"): {"train": 2490, "dev": 277},
    ("glue", "wnli"): {"train": 635, "dev": 71},
    ("squad", "v1"): {"train": 87599, "validation": 10570},
    ("squad", "v2"): {"train": 130319, "validation": 11873},
    ("gsm8k", None): {"train": 7473, "test": 1319},
    ("wmt16", "en-ro"): {"train": 610320, "validation": 1999, "test": 1999},
    ("wmt16", "ro-en"): {"train": 610320, "validation": 1999, "test": 1999},
    ("iwslt2017", "de-en"): {"train": 206112, "validation": 888, "test": 8079},
    ("dialogsum", None): {"train": 12460, "validation": 500, "test": 500},
    ("hellaswag", None): {"train": 39905, "validation": 10042, "test": 10003},
    ("cifar100", None): {"train": 50000, "test": 10000},
    ("food101", None): {"train": 75750, "validation": 25250},
}
SUBSTITUTE_MARKS = ("EARLY RELEASE", "dev_by_article")  # in a split's source: not the paper's split


@dataclass
class Report:
    """What one run would do; ``problems`` make it fail, ``substitutes`` are departures from the paper's setup."""

    name: str
    facts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    substitutes: list[str] = field(default_factory=list)
    failed_substitutes: list[str] = field(default_factory=list)  # substitutes the profile does not allow

    @property
    def ok(self) -> bool:
        return not self.problems and not self.failed_substitutes

    def line(self) -> str:
        f = self.facts
        splits = ", ".join(f"{s} {n if n is not None else '?'} ({src})" for s, (n, src) in f.get("splits", {}).items())
        parts = [
            f"weights {f.get('weights', '?')}",
            f"tokenizer {f.get('tokenizer', '?')}",
            f"splits: {splits or '?'}",
            f"steps {f.get('steps_per_epoch', '?')}/epoch, {f.get('total_steps', '?')} total",
            f"eval {f.get('eval', '?')}",
            f"seeds {f.get('seeds', '?')}",
        ]
        if "schedule" in f:
            parts.append(f"schedule {f['schedule']}")
        if "memory_gib" in f:
            parts.append(f"memory est. {f['memory_gib']:.1f} GiB")
        if "gpu_hours" in f:
            parts.append(f"est. {f['gpu_hours']:.2g} GPU h (all seeds)")
        status = "OK" if self.ok else "FAIL"
        notes = [*(f"FAIL: {p}" for p in self.problems), *(f"SUBSTITUTE (not allowed): {s}" for s in
                 self.failed_substitutes), *(f"substitute: {s}" for s in self.substitutes)]  # fmt: skip
        return f"{status} {self.name}: " + "; ".join(parts) + "".join(f"\n    {n}" for n in notes)


# ---- data -----------------------------------------------------------------------------------------------------
_LOCAL: dict[tuple, dict[str, list]] = {}


def _local_records(task: Any, folder: Path, wanted: list[str]) -> dict[str, list]:
    """A local folder's splits, read once per process (local copies are small; a table reads them for every run)."""
    key = (type(task), task.cfg.dataset, task.cfg.subset, str(folder), tuple(wanted))
    if key not in _LOCAL:
        _LOCAL[key] = task.read_local_splits(folder, wanted)
    return _LOCAL[key]


def split_counts(task: Any, report: Report) -> dict[str, tuple[int | None, str]]:
    """Examples and source of every split the run uses (after protocol, holdout and limits), without downloading."""
    cfg = task.cfg
    wanted = task.needed_splits()
    folder = task.local_folder()
    found: dict[str, tuple[int | None, str]] = {}
    local: dict[str, list] = {}
    if folder is not None:
        local = _local_records(task, folder, wanted)
        found = {s: (len(local[s]), local_label(cfg.dataset, folder, s)) for s in wanted if s in local}
    missing = [s for s in wanted if s not in found]
    if missing and cfg.source == "local":
        report.problems.append(f"data: split(s) {missing} not in task.data_dir {cfg.data_dir} (task.source=local)")
        return found
    unavailable, why = [], ""
    for split in missing:
        try:
            if cfg.dataset == "glue":
                counts = {split: count_glue_hub(cfg.subset, split, download=False)}
                label = f"hub:{hub_dataset(cfg.subset)}"
            else:
                counts, label = count_hub(cfg.dataset, cfg.subset, [split], download=False)
            found[split] = (counts[split], label)
        except FileNotFoundError as e:
            if hub_available():  # downloaded at run time; the official size stands in for the count
                size = OFFICIAL_SIZES.get((cfg.dataset, cfg.subset), {}).get(split)
                found[split] = (size, "hub (to download; official size)")
            else:  # an error; the official size still gives the steps and GPU hours the run would take
                unavailable.append(split)
                why = str(e)
                found[split] = (OFFICIAL_SIZES.get((cfg.dataset, cfg.subset), {}).get(split), "MISSING")
    if unavailable:
        report.problems.append(
            f"data: split(s) {unavailable} of {cfg.dataset}{'/' + cfg.subset if cfg.subset else ''} are not in "
            f"{cfg.data_dir or 'a local folder'} and {why}; provide them: hub access (network, HF_HUB_OFFLINE unset), "
            "the dataset in the Hugging Face cache, or task.data_dir=/path/to/a/local/copy"
        )
    if cfg.protocol == "dev_by_article" and "validation" in found:
        n, src = found["validation"]
        src += " (dev_by_article)"
        if "validation" in local:
            train, held = split_by_article(local["validation"], cfg.eval_fraction, 0)
            found = {"train": (len(train), src), "validation": (len(held), src)}
        else:
            found = {"train": (None, src), "validation": (None, src)}
    if cfg.holdout and cfg.train_split in found:
        n, src = found[cfg.train_split]
        found[cfg.train_split] = (None if n is None else n - cfg.holdout, src)
        found["holdout"] = (cfg.holdout, f"{src} (holdout)")
    limits = {cfg.train_split: cfg.limit_train, **{s: cfg.limit_eval for s in cfg.eval_splits}}
    out = {}
    for split in [cfg.train_split, *cfg.eval_splits]:
        if split not in found:
            report.problems.append(f"data: split {split!r} is not a split of {cfg.dataset} ({sorted(found)})")
            continue
        n, src = found[split]
        limit = limits.get(split)
        out[split] = (n if limit is None or n is None else min(n, limit), src)
    return out


# ---- memory ---------------------------------------------------------------------------------------------------
def memory_estimate(model: Any, counts: dict[str, int], batch: int, seq: int, bf16: bool) -> float:
    """Peak training memory in GiB, estimated from the meta-device build: fp32 weights (mixed precision keeps
    them), gradients and AdamW's two moments of the trainable parameters, and activations per layer of
    ``s b h (34 + 5 a s / h)`` bytes at 16 bits (Korthikanti et al. 2022, "Reducing Activation Recomputation in
    Large Transformer Models", eq. 1; doubled in fp32), plus the fp32 logits over the vocabulary. An estimate, not
    a measurement: allocator overhead, fused kernels (flash attention drops the ``5 a s / h`` term) and the
    generation cache at evaluation are not counted."""
    hf = model.config
    text = getattr(hf, "text_config", None) or hf
    h = getattr(text, "hidden_size", None) or getattr(text, "d_model", 0)
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "num_layers", 0)
    layers += getattr(text, "num_decoder_layers", 0) or 0
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "num_heads", 1)
    vocab = getattr(text, "vocab_size", 0) or 0
    activations = layers * seq * batch * h * (34 + 5 * heads * seq / max(h, 1)) * (1 if bf16 else 2)
    logits = batch * seq * vocab * 4 if hasattr(model, "lm_head") else 0
    state = 4 * counts["total_params"] + 12 * counts["trainable_params"]
    return (state + activations + logits) / GIB


def gpu_hours(total_params: int, full: bool, tokens: int, tflops: float) -> float:
    """Training compute in GPU hours: ``6 N`` FLOPs per token for full fine-tuning, ``4 N`` for a frozen backbone
    (forward, and the backward pass's activation gradients without the weight gradients; Kaplan et al. 2020's
    ``6 N`` rule), at ``tflops`` TFLOP/s achieved. ``tokens`` counts every sequence at its maximum length, so this
    is an upper bound for padded-to-batch training; evaluation (generation above all) is not counted."""
    return (6 if full else 4) * total_params * tokens / (tflops * 1e12) / 3600


def sequence_length(task_cfg: Any) -> int:
    """Tokens per training example: the task's maximum (ViT: image patches of 16 px + the class token)."""
    if task_cfg.kind == "image_classification":
        return (task_cfg.image_size // 16) ** 2 + 1
    return task_cfg.max_seq_length


# ---- one run --------------------------------------------------------------------------------------------------
def check(
    cfg: DictConfig,
    name: str,
    seeds: list[int] | None = None,
    profile: str | None = None,
    gpu_gib: float = 80.0,
    tflops: float = 125.0,
) -> Report:
    """Resolve one composed run. ``profile``: None (a single run: only failures count), ``offline`` (a table's
    offline profile: its stand-ins are declared, random weights are not allowed) or ``paper`` (random weights,
    stand-in data files or protocols and limited examples are substitutes the profile does not allow).
    ``gpu_gib`` and ``tflops`` describe the target GPU (default: an 80 GiB GPU achieving 125 TFLOP/s, 40% of an
    A100's bf16 peak) for the memory check and the GPU-hour estimate."""
    from loralab.adapters import count_parameters
    from loralab.run import build, make_plan

    report = Report(name)
    try:
        plan = make_plan(cfg)
    except Exception as e:  # noqa: BLE001 - any config error is this run's failure, reported with the others
        report.problems.append(f"config: {e}")
        return report
    f = report.facts
    try:
        weights = resolve_weights(plan.model)
        f["weights"] = weights.describe()
        if weights.kind == "random":
            (report.substitutes if profile is None else report.failed_substitutes).append("random weights")
    except (FileNotFoundError, ValueError) as e:
        f["weights"] = f"MISSING ({plan.model.hub_id or plan.model.name})"
        report.problems.append(f"weights: {e}")
    if plan.runner is None or plan.runner.model_kind == "image_classification":
        f["tokenizer"] = "none"
    else:
        try:
            f["tokenizer"] = resolve_tokenizer(plan.model).describe()
        except FileNotFoundError as e:
            f["tokenizer"] = "MISSING"
            report.problems.append(f"tokenizer: {e}")
    tr, task = plan.trainer, plan.task
    f["seeds"] = seeds if seeds is not None else [tr.seed]
    if plan.runner is None:
        report.problems.append("task=bare has no data: it only serves dry_run=true")
        return report
    splits = split_counts(plan.runner, report)
    f["splits"] = splits
    for split, (_, src) in splits.items():
        marks = [m for m in SUBSTITUTE_MARKS if m in src]
        if marks:
            report.substitutes.append(f"{split}: {src}")
    for key in ("limit_train", "limit_eval"):
        if getattr(task, key) is not None:
            report.substitutes.append(f"task.{key}={getattr(task, key)}")
    if profile == "paper":
        report.failed_substitutes += report.substitutes
        report.substitutes = []
    n_train = splits.get(task.train_split, (None, ""))[0]
    phases = max(plan.method.phases, tr.iterations)
    if n_train is not None:
        steps = math.ceil(math.ceil(n_train / tr.batch_size) / tr.grad_accum)
        total = min(tr.max_steps or math.inf, steps * tr.epochs)
        f["steps_per_epoch"], f["total_steps"] = steps, f"{total}" + (f" x {phases} phases" if phases > 1 else "")
        f["steps"] = int(total) * phases  # optimizer steps of the whole run
        if tr.eval_every:
            f["eval"] = f"every {tr.eval_every} steps (up to {math.ceil(total / tr.eval_every)})"
        else:
            f["eval"] = f"every epoch (up to {min(tr.epochs, math.ceil(total / steps))})"
        if tr.early_stopping_patience:
            f["eval"] += f", patience {tr.early_stopping_patience}"
        method_cfg = plan.method.cfg
        if hasattr(method_cfg, "t_init") and getattr(method_cfg, "sparsify", "adalora") == "adalora":
            ti, tf = method_cfg.t_init, method_cfg.t_final
            fits = total - tf > ti
            f["schedule"] = f"t_init {ti} + t_final {tf} vs {total} steps{'' if fits else ' (does not fit)'}"
            if not fits:
                report.problems.append(
                    f"schedule: {plan.method.name} needs t_init < total steps - t_final: t_init={ti}, t_final={tf}, "
                    f"{total} steps per phase; lower method.t_init / method.t_final"
                )
    try:
        model, _, _ = build(plan, device="meta")
        counts = count_parameters(model)
        f["trainable"] = counts["trainable_params"]
        seq = sequence_length(task)
        f["memory_gib"] = memory_estimate(model, counts, tr.batch_size, seq, tr.precision != "fp32")
        if isinstance(f.get("steps"), int):
            tokens = f["steps"] * tr.batch_size * tr.grad_accum * seq * len(f["seeds"])
            full = counts["trainable_params"] == counts["total_params"]
            f["gpu_hours"] = gpu_hours(counts["total_params"], full, tokens, tflops)
        if f["memory_gib"] > gpu_gib:
            report.problems.append(
                f"memory: estimated {f['memory_gib']:.0f} GiB > the target GPU's {gpu_gib:g} GiB; lower "
                "trainer.batch_size and raise trainer.grad_accum (same effective batch)"
            )
    except Exception as e:  # noqa: BLE001 - reported as this run's failure
        report.problems.append(f"build: {e}")
    return report


def summary(reports: list[Report]) -> str:
    failed = [r for r in reports if not r.ok]
    memory = max((r.facts.get("memory_gib", 0.0) for r in reports), default=0.0)
    hours = sum(r.facts.get("gpu_hours", 0.0) for r in reports)
    return (
        f"preflight: {len(reports) - len(failed)} of {len(reports)} runs OK, {len(failed)} would fail or substitute; "
        f"peak memory est. {memory:.1f} GiB, training est. {hours:.3g} GPU h"
    )


def run_preflight(cfg: DictConfig) -> Report:
    """``python train.py ... preflight=true``: print the report of this run and exit non-zero when it would fail."""
    report = check(cfg, f"{cfg.model.name} {cfg.task.name} {cfg.method.name}")
    print(report.line())
    print(summary([report]))
    if not report.ok:
        raise SystemExit(1)
    return report


# ---- tables ---------------------------------------------------------------------------------------------------
def table_reports(
    spec_path: str | Path, profile: str, gpu_gib: float = 80.0, tflops: float = 125.0
) -> tuple[list[str], list[Report]]:
    """The header lines and one report per run of a table spec under a profile (composed as ``make`` would)."""
    from hydra import compose, initialize_config_dir

    from loralab.config import PROJECT_ROOT, register_configs
    from loralab.tables import load_spec, plan_runs, profile_overrides

    spec = load_spec(spec_path)
    title = f"== {spec.paper}/{spec.name} ({profile}): {spec.title}"
    if spec.kind == "reference":
        return [title, "   reference only: the paper's numbers, nothing to run"], []
    if profile_overrides(spec, profile) is None:
        return [title, f"   not runnable under the {profile} profile (see the spec's notes)"], []
    register_configs()
    reports = []
    seeds = spec.seeds_for(profile)
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        for run in plan_runs(spec, profile, PROJECT_ROOT / "results"):
            name = f"{spec.paper}/{spec.name} {run.row}/{run.name}"
            try:
                cfg = compose("train", overrides=run.overrides)
            except Exception as e:  # noqa: BLE001 - a config that does not compose is this run's failure
                reports.append(Report(name, problems=[f"config: {e}"]))
                continue
            reports.append(check(cfg, name, seeds, profile, gpu_gib, tflops))
    return [title], reports


def preflight_tables(specs: list[str], profile: str, gpu_gib: float = 80.0, tflops: float = 125.0) -> int:
    """``python -m loralab.tables --preflight``: print every table's runs, one line each, and a summary; returns
    the exit code (1 when any run would fail or substitute)."""
    import yaml

    everything = []
    for spec_path in specs:
        if "claims" in (yaml.safe_load(Path(spec_path).read_text()) or {}):
            print(f"== {spec_path}: a claims file, not a table (skipped)")
            continue
        header, reports = table_reports(spec_path, profile, gpu_gib, tflops)
        print("\n".join(header))
        for report in reports:
            print(report.line())
        if reports:
            print(f"   {summary(reports)}")
        everything += reports
    print(f"all tables: {summary(everything)}")
    return 1 if any(not r.ok for r in everything) else 0
