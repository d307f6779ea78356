"""Training-step time and peak memory: loralab against peft, and both against the backbone's floor.

Every comparison is a *group* of configurations on one backbone, built in one process: the **floor** (the same
backbone with no adapter, every weight frozen, gradients flowing to the input embeddings only: a PEFT step cannot be
cheaper), loralab's adapter and peft's (same target modules, same trainable parameters: both asserted), or LoRA and
LoRA-Mini at the same r. Their training steps alternate: after ``--warmup`` rounds, ``--repeats`` repeats of
``--steps`` rounds, each round one step of every configuration, the order rotated every round. Per repeat, each
configuration's median step time; ratios (loralab/peft, LoRA-Mini/LoRA) and overheads over the floor are taken per
repeat, and the report gives their median and their range over the repeats (never a minimum picked per side).
The LoRA group also times two variants of its adapters' forward: ``loralab-unfused`` (loralab's previous forward,
``out += adapter_output(x)``) and ``peft-addmm`` (peft's LoRA with loralab's add, the last product and the scaling
added into the base output by one addmm; patched per instance, the plain ``peft`` configuration keeps peft's forward),
so the report states loralab against peft's default and against peft with the same trick.

Peak memory is a process's own, so it is measured in a fresh process per configuration (``--memory-steps`` steps;
CPU: the resident set's high-water mark, reset once the model is built; CUDA: max allocated). A step is what
``loralab.loop.train`` does: forward, the method's ``extra_loss``, backward, ``after_backward``, the AdamW step (torch's
fused AdamW, :func:`loralab.loop.adamw`, for every library), ``after_optimizer_step`` (no-ops but for AdaLoRA),
``zero_grad``; peft's AdaLoRA adds its orthogonal regulariser inside forward and runs ``update_and_allocate`` after
the optimizer step. Same batch, dtype (fp32 on CPU, bf16 autocast on CUDA) and optimizer for every configuration.
Backbones are architectures with **random weights**: step time and memory do not depend on the weights' values.
FLOPs per step are counted once per configuration with ``torch.utils.flop_counter`` (matmuls of forward and
backward); with ``--peak-tflops`` the report adds model-FLOPs utilisation (the floor's FLOPs, i.e. the backbone's
forward and input gradients, per second of the configuration's step, over the device's peak).

    python bench/peft_compare.py --out results/bench/peft_compare_cpu.md                               # make bench
    python bench/peft_compare.py --device cuda --batch 32 --seq 128 --peak-tflops 989 --out ...        # a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from loralab.methods import Method

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# name: (model config, method config, method overrides); peft's config is built from loralab's
CASES = {
    "roberta-base LoRA r=8 D+A": ("roberta-base", "lora", ["method.r=8", "method.targets=D+A"]),
    "roberta-base VeRA r=256 D+A": ("roberta-base", "vera", ["method.r=256", "method.targets=D+A"]),
    "roberta-base AdaLoRA r=12->8 D+A": (
        "roberta-base", "adalora", ["method.init_r=12", "method.target_r=8", "method.targets=D+A"]
    ),
    "t5-base LoRA r=8 D+A": ("t5-base", "lora", ["method.r=8", "method.targets=D+A"]),
    "roberta-base LoRA-Mini r=8 a=b=64 D+A": ("roberta-base", "lora_mini", ["method.r=8", "method.targets=D+A"]),
    "roberta-base LoRA-Mini r=8 a=b=256 D+A": (
        "roberta-base", "lora_mini", ["method.r=8", "method.a=256", "method.b=256", "method.targets=D+A"]
    ),
}  # fmt: skip
FLOOR = "floor"  # a configuration: the case's backbone, frozen, no adapter
UNFUSED = "loralab-unfused"  # loralab with its previous forward (out += adapter_output(x)): the fused add's effect
PEFT_ADDMM = "peft-addmm"  # peft's LoRA with loralab's add (one addmm into the base output): peft with the same trick
LORA, VERA, T5 = "roberta-base LoRA r=8 D+A", "roberta-base VeRA r=256 D+A", "t5-base LoRA r=8 D+A"
ADALORA = "roberta-base AdaLoRA r=12->8 D+A"
MINI64, MINI256 = "roberta-base LoRA-Mini r=8 a=b=64 D+A", "roberta-base LoRA-Mini r=8 a=b=256 D+A"
# a group: (title, [(case, library)]); every group also times its backbone's floor
GROUPS = {
    "lora": (LORA, [(LORA, "loralab"), (LORA, "peft"), (LORA, UNFUSED), (LORA, PEFT_ADDMM)]),
    "lora_mini": ("LoRA-Mini vs LoRA, r=8 D+A", [(LORA, "loralab"), (MINI64, "loralab"), (MINI256, "loralab")]),
    "vera": (VERA, [(VERA, "loralab"), (VERA, "peft")]),
    "adalora": (ADALORA, [(ADALORA, "loralab"), (ADALORA, "peft")]),
    "t5": (T5, [(T5, "loralab"), (T5, "peft")]),
}  # fmt: skip
TARGETS = {"step": 1.00, "memory": 1.00, "lora_overhead": 0.05, "lora_mini_overhead": 0.07}


def adalora_schedule(steps: int) -> dict[str, int]:
    """AdaLoRA's schedule for a run of ``steps`` steps, the same for both libraries: no initial phase, masking every
    step (peft's default ``deltaT``), and a total of 3x the steps with the final phase the last third, so every
    timed step lies in the budget-reduction phase (the budget shrinks and is re-masked)."""
    return {"t_init": 0, "t_final": steps, "total": 3 * steps, "delta_t": 1}


def _compose(model: str, method: str, overrides: list[str]) -> DictConfig:
    """The case's run config, composed from ``conf/`` as ``train.py`` would."""
    from hydra import compose, initialize_config_dir

    from loralab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        task = "bare" if model.startswith("t5") else "glue/rte"
        return compose("train", [f"model={model}", f"task={task}", f"method={method}", "method.train_head=false",
                                 "model.weights=random", *overrides])  # fmt: skip


def make_model(case: str, library: str, steps: int) -> tuple[nn.Module, Method | None, list[str]]:
    """The backbone with the case's adapter attached by loralab or peft (same target modules, rank, alpha; ``library``
    ``loralab-unfused`` / ``peft-addmm``: with the forward patched, see :data:`UNFUSED`, :data:`PEFT_ADDMM`), or
    the floor (``library="floor"``: no adapter, frozen, the input embeddings' output requiring grad); loralab's
    method (its training hooks; None otherwise); the adapted module names. ``steps``: all steps the model takes."""
    from loralab.adapters import AdapterLinear
    from loralab.models import build_model, model_kind, resolve_targets
    from loralab.run import build, make_plan

    model_name, method, overrides = CASES[case]
    schedule = adalora_schedule(steps)
    if method == "adalora":
        overrides = [*overrides, *(f"method.{k}={v}" for k, v in schedule.items() if k != "total")]
    plan = make_plan(_compose(model_name, method, overrides))
    if library in ("loralab", UNFUSED):
        model = build(plan)[0]
        layers = {n: m for n, m in model.named_modules() if isinstance(m, AdapterLinear)}
        for layer in layers.values() if library == UNFUSED else ():
            layer.forward = types.MethodType(_unfused_forward, layer)
        return model, plan.method, sorted(layers)
    kind = model_kind(plan.model, plan.task.kind)
    model, _ = build_model(plan.model, kind, 2 if kind == "sequence_classification" else None)
    if library == FLOOR:
        model.requires_grad_(False)
        # every embedding sharing the input embeddings' weight (T5's encoder and decoder embed_tokens are modules of
        # their own, tied to `shared`): their outputs require grad, so gradients flow to the inputs only
        weight = model.get_input_embeddings().weight
        for module in model.modules():
            if isinstance(module, nn.Embedding) and module.weight is weight:
                module.register_forward_hook(lambda module, args, out: out.requires_grad_(True))
        return model, None, []
    import peft

    pattern = "|".join(f"(?:{p})" for p in resolve_targets(plan.model, plan.method.cfg.targets, None))
    cfg = plan.method.cfg
    if method == "lora":
        config = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, target_modules=pattern)
    elif method == "adalora":
        config = peft.AdaLoraConfig(
            init_r=cfg.init_r,
            target_r=cfg.target_r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            beta1=cfg.beta1,
            beta2=cfg.beta2,
            orth_reg_weight=cfg.orth_weight,
            tinit=schedule["t_init"],
            tfinal=schedule["t_final"],
            deltaT=schedule["delta_t"],
            total_step=schedule["total"],
            target_modules=pattern,
        )
    elif method == "vera":
        config = peft.VeraConfig(r=cfg.r, d_initial=cfg.d_init, target_modules=pattern)
    else:
        raise ValueError(f"peft has no {method}")
    model = peft.get_peft_model(model, config)
    if library == PEFT_ADDMM:
        if method != "lora" or not use_addmm(model):
            raise ValueError(f"{PEFT_ADDMM}: no peft LoRA layer to patch in {case}")
    return model, None, sorted(n.removeprefix("base_model.model.") for n in model.targeted_module_names)


def _unfused_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """AdapterLinear's forward before the fused multiply-add: the adapter's output as a tensor of its own (the last
    product, then the scaled copy), added in place."""
    out = self.base(x)
    out += self.adapter_output(x).to(out.dtype)
    return out


def use_addmm(model: nn.Module) -> int:
    """Give each of peft's LoRA ``Linear`` layers in ``model`` loralab's add (:func:`_peft_addmm_forward`), per
    instance: other peft models in the process keep peft's forward. The number of layers patched."""
    from peft.tuners.lora.layer import Linear

    layers = [m for m in model.modules() if isinstance(m, Linear)]
    for layer in layers:
        layer.forward = types.MethodType(_peft_addmm_forward, layer)
    return len(layers)


def _peft_addmm_forward(self: nn.Module, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    """peft's LoRA ``Linear.forward`` (one active adapter, unmerged, no variant) with its update added as loralab
    adds it: ``base(x)`` as a 2-D (tokens, out) tensor, then ``out += scaling * lora_A(dropout(x)) @ B^T`` in place
    by one addmm, instead of ``result + lora_B(lora_A(dropout(x))) * scaling``. Any other state (adapters disabled
    or merged, several adapters, a variant such as DoRA, a LoRA bias, extra arguments) runs peft's own forward."""
    active = self.active_adapters
    name = active[0] if len(active) == 1 else None
    plain = name in self.lora_A and name not in self.lora_variant and self.lora_B[name].bias is None
    if args or kwargs or self.disable_adapters or self.merged or not plain:
        return type(self).forward(self, x, *args, **kwargs)
    lora_a, lora_b = self.lora_A[name], self.lora_B[name]
    h = lora_a(self.lora_dropout[name](self._cast_input_dtype(x, lora_a.weight.dtype)))
    out = self.base_layer(x.reshape(-1, x.shape[-1]))
    out.addmm_(h.reshape(-1, h.shape[-1]).to(out.dtype), lora_b.weight.T.to(out.dtype), alpha=self.scaling[name])
    return out.view(*x.shape[:-1], out.shape[-1])


@dataclass
class Stepper:
    """One configuration of a group: its model, optimizer, inputs and hooks; ``step()`` times one training step."""

    label: str
    case: str
    library: str
    device: str
    batch: int
    seq: int
    steps: int  # all steps it will take (AdaLoRA's schedule)
    model: nn.Module = field(init=False)
    method: Method | None = field(init=False)
    modules: list[str] = field(init=False)
    done: int = 0

    def __post_init__(self) -> None:
        from loralab.loop import adamw

        torch.manual_seed(0)
        self.model, self.method, self.modules = make_model(self.case, self.library, self.steps)
        self.model.to(self.device).train()
        # peft's AdaLoRA re-scores and masks its triplets after the optimizer step, before zero_grad
        self.allocate = getattr(getattr(self.model, "base_model", None), "update_and_allocate", None)
        if self.library not in ("peft", PEFT_ADDMM):
            self.allocate = None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = adamw(self.params, lr=1e-4) if self.params else None
        ids = torch.randint(5, 1000, (self.batch, self.seq), generator=torch.Generator().manual_seed(1))
        ids = ids.to(self.device)
        is_t5 = CASES[self.case][0].startswith("t5")
        labels = ids if is_t5 else torch.zeros(self.batch, dtype=torch.long, device=self.device)
        self.inputs = {"input_ids": ids, "labels": labels}
        if self.method is not None:
            self.method.on_train_start(self.model, self.optimizer, adalora_schedule(self.steps)["total"])

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    def step(self) -> float:
        """One training step; its wall time in seconds."""
        cuda = self.device == "cuda"
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type=self.device, dtype=torch.bfloat16, enabled=cuda):
            loss = self.model(**self.inputs).loss
        extra = None if self.method is None else self.method.extra_loss(self.model, self.done)
        if extra is not None:
            loss = loss + extra
        loss.backward()
        if self.method is not None:
            self.method.after_backward(self.model, self.done)
        if self.optimizer is not None:
            self.optimizer.step()
            if self.allocate is not None:
                self.allocate(self.done)
        if self.method is not None:  # before zero_grad, as the loop: AdaLoRA reads the step's gradients
            self.method.after_optimizer_step(self.model, self.done)
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        self.done += 1
        return time.perf_counter() - t0

    def flops(self) -> int:
        """Matmul FLOPs of one step (forward and backward), counted by torch's flop counter (one untimed step)."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.step()
        return counter.get_total_flops()


def time_group(key: str, args: argparse.Namespace) -> dict:
    """Build a group's configurations (floor first) and time their alternating steps; per-repeat medians."""
    title, members = GROUPS[key]
    total = args.warmup + args.repeats * args.steps + 1  # + the step under the flop counter
    floor_case = members[0][0]
    steppers = [Stepper(FLOOR, floor_case, FLOOR, args.device, args.batch, args.seq, total)]
    for case, library in members:
        label = library if key != "lora_mini" else case.removeprefix("roberta-base ")
        steppers.append(Stepper(label, case, library, args.device, args.batch, args.seq, total))
    libraries = {s.library for s in steppers}
    if {"loralab", "peft"} <= libraries:
        ours = steppers[1]
        for theirs in (s for s in steppers if s.library in ("peft", PEFT_ADDMM)):
            assert ours.trainable == theirs.trainable, (
                f"{title}: trainable {ours.trainable:,} vs {theirs.label}'s {theirs.trainable:,}"
            )
            assert ours.modules == theirs.modules, f"{title}: adapted modules differ ({theirs.label})"
    flops = {s.label: s.flops() for s in steppers}
    for _ in range(args.warmup):
        for s in steppers:
            s.step()
    medians: dict[str, list[float]] = {s.label: [] for s in steppers}
    for _ in range(args.repeats):
        times: dict[str, list[float]] = {s.label: [] for s in steppers}
        for i in range(args.steps):
            for s in steppers[i % len(steppers) :] + steppers[: i % len(steppers)]:
                times[s.label].append(s.step())
        for label, ts in times.items():
            medians[label].append(statistics.median(ts))
    out = {
        "group": key,
        "title": title,
        "configs": [
            {"label": s.label, "case": s.case, "library": s.library, "trainable": s.trainable,
             "modules": len(s.modules), "flops": flops[s.label], "medians_s": medians[s.label]}
            for s in steppers
        ],
    }  # fmt: skip
    print(json.dumps(out), flush=True)
    del steppers
    return out


MATMULS = ("aten::mm", "aten::addmm", "aten::addmm_")


def breakdown(args: argparse.Namespace, steps: int = 4) -> dict:
    """Where loralab's LoRA step (:data:`LORA`) spends its time beyond the floor's: torch.profiler's self CPU times
    over ``steps`` steps of each (after 2 warm-up steps), per step, split into the matmuls (the adapters' own, by
    difference with the floor's), the optimizer (``Optimizer.step`` and ``zero_grad``, with everything they call)
    and the rest; with each side's matmul FLOPs (``torch.utils.flop_counter``, one step)."""
    from torch.profiler import ProfilerActivity, profile

    sides = {}
    for library in (FLOOR, "loralab"):
        stepper = Stepper(library, LORA, library, args.device, args.batch, args.seq, steps + 3)
        for _ in range(2):
            stepper.step()
        flops = stepper.flops()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                stepper.step()
        events = prof.key_averages()
        sides[library] = {
            "total_ms": sum(e.self_cpu_time_total for e in events) / steps / 1e3,
            "matmul_ms": sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / steps / 1e3,
            "matmul_calls": sum(e.count for e in events if e.key in MATMULS) // steps,
            "optimizer_ms": sum(e.cpu_time_total for e in events if e.key.startswith("Optimizer.")) / steps / 1e3,
            "flops": flops,
        }
        del stepper
    out = {"breakdown": {"steps": steps, **sides}}
    print(json.dumps(out), flush=True)
    return out["breakdown"]


def render_breakdown(b: dict) -> list[str]:
    """The breakdown's section of the report."""
    floor, ours = b[FLOOR], b["loralab"]
    extra = {k: ours[k] - floor[k] for k in ("total_ms", "matmul_ms", "matmul_calls", "flops")}
    rest = extra["total_ms"] - extra["matmul_ms"] - ours["optimizer_ms"]
    pct = lambda v: f"{100 * v / floor['total_ms']:.1f}%"  # noqa: E731
    rate = lambda flops, t: f"{flops / t / 1e6:,.0f}"  # noqa: E731  (FLOPs per ms -> GFLOP/s)
    return [
        "",
        f"## Where {LORA}'s overhead goes (torch.profiler, CPU self times, {b['steps']} steps of each)",
        "",
        "| part | ms per step | of the floor's step | calls | GFLOP | GFLOP/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| floor: the whole step | {floor['total_ms']:.1f} | 100% | | {floor['flops'] / 1e9:,.1f} | |",
        f"| floor: its matmuls | {floor['matmul_ms']:.1f} | {pct(floor['matmul_ms'])} | {floor['matmul_calls']} | "
        f"{floor['flops'] / 1e9:,.1f} | {rate(floor['flops'], floor['matmul_ms'])} |",
        f"| loralab over the floor | {extra['total_ms']:.1f} | {pct(extra['total_ms'])} | | | |",
        f"| - the adapters' matmuls | {extra['matmul_ms']:.1f} | {pct(extra['matmul_ms'])} | {extra['matmul_calls']} | "
        f"{extra['flops'] / 1e9:,.2f} | {rate(extra['flops'], extra['matmul_ms'])} |",
        f"| - the optimizer (AdamW step, zero_grad) | {ours['optimizer_ms']:.1f} | {pct(ours['optimizer_ms'])} | | | |",
        f"| - the rest (adds, views, autograd, Python) | {rest:.1f} | {pct(rest)} | | | |",
        "",
        "The adapters' matmuls are skinny (one side r = 8): each streams a whole (tokens x 768..3072) activation for "
        "a few FLOPs per element, so they run far below the backbone's matmul rate; their time alone bounds what any "
        "implementation made of separate library matmuls can reach. Profiler times are approximate (it adds a few "
        "microseconds per op) and taken on one run; the table above is the measurement.",
    ]


def peak_memory(case: str, library: str, args: argparse.Namespace) -> int:
    """Peak memory of a fresh process running ``--memory-steps`` steps of one configuration."""
    cmd = [sys.executable, __file__, "--memory-of", case, library, "--device", args.device, "--batch",
           str(args.batch), "--seq", str(args.seq), "--memory-steps", str(args.memory_steps)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        raise SystemExit(f"memory of {case} / {library} failed:\n{out.stderr[-2000:]}")
    return int(out.stdout.strip().splitlines()[-1])


def _memory_of(case: str, library: str, args: argparse.Namespace) -> int:
    """Peak memory of the training steps, after the model is built (building it has transient peaks of its own):
    CUDA: max allocated; CPU: the resident set's high-water mark, reset after building (Linux /proc/self/clear_refs)."""
    stepper = Stepper(library, case, library, args.device, args.batch, args.seq, args.memory_steps)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    for _ in range(args.memory_steps):
        stepper.step()
    if args.device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["VmHWM"].split()[0]) * 1024  # kB


def ms(seconds: list[float]) -> str:
    """The median of per-repeat step times, in milliseconds."""
    return f"{1000 * statistics.median(seconds):.1f}"


def spread(values: list[float]) -> tuple[float, float, float]:
    """Median, min and max."""
    return statistics.median(values), min(values), max(values)


def fmt_spread(values: list[float], digits: int = 3, pct: bool = False) -> str:
    """``median [min, max]`` of ``values`` (``pct``: as signed percentages); also bench/fused_sweep.py's."""
    med, lo, hi = spread([100 * v for v in values] if pct else values)
    unit = "%" if pct else ""
    return (
        f"{med:+.{digits}f}{unit} [{lo:+.{digits}f}, {hi:+.{digits}f}]"
        if pct
        else f"{med:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    )


def render(
    groups: list[dict],
    memory: dict[tuple[str, str], int],
    args: argparse.Namespace,
    load: tuple | None,
    breakdowns: Sequence[dict] = (),
) -> str:
    """The report: setup, command, the loralab-vs-peft table, the LoRA-Mini-vs-LoRA table and the LoRA overhead's
    breakdown (:func:`breakdown`)."""
    import peft
    import transformers

    dev = (
        torch.cuda.get_device_name(0)
        if args.device == "cuda"
        else f"{platform.processor() or 'CPU'} x{torch.get_num_threads()} threads ({os.cpu_count()} cores)"
    )
    tokens = args.batch * args.seq
    argv = sys.argv[1:]
    if "--from-log" in argv:  # the command that measured, not the one that rendered its log
        i = argv.index("--from-log")
        argv = argv[:i] + argv[i + 2 :]
    cmd = " ".join(argv)
    lines = [
        f"# loralab vs peft: training step ({args.device})",
        "",
        f"Device: {dev}; torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
        f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        + (
            f"1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end"
            if load
            else "rendered from the run's log (--from-log)"
        )
        + " (on a shared machine other processes' load slows every configuration alike: ratios of alternating steps "
        "are robust to it, absolute times are not).",
        f"Batch {args.batch} x {args.seq} tokens, {'bf16 autocast' if args.device == 'cuda' else 'fp32'}, "
        "torch's fused AdamW for every library (loralab's loop's, `loralab.loop.adamw`), "
        f"train mode, random-weight backbones. Steps of a group's configurations alternate in one process: "
        f"{args.warmup} warm-up rounds, then {args.repeats} repeats of {args.steps} rounds (one step of each "
        "configuration per round, the order rotated every round); per repeat the median step of each configuration. "
        "Ratios and overheads are computed per repeat: median [min, max] over the repeats. Floor: the same backbone, "
        "no adapter, all weights frozen, gradients to the input embeddings only. Peak memory: a fresh process per "
        f"configuration, {args.memory_steps} steps ({'max allocated' if args.device == 'cuda' else 'resident set'} "
        "peak of the steps, measured from after the model is built: weights, activations, gradients, optimizer state).",
        "AdaLoRA (both libraries): t_init 0, every step re-scored and masked (delta_t 1), all timed steps in the "
        "budget-reduction phase; the step includes the hooks (loralab: extra_loss, after_backward, "
        "after_optimizer_step; peft: the regulariser in forward and update_and_allocate).",
        f"Command: `python bench/peft_compare.py {cmd}`",
        "",
        "## loralab vs peft",
        "",
        "| case | trainable (both) | modules | floor (ms) | loralab (ms) | peft (ms) | step loralab/peft | overhead "
        "over floor: loralab | peft | peak MiB loralab / peft / floor | memory loralab/peft | tokens/s loralab | "
        f"{'MFU loralab | ' if args.peak_tflops else ''}targets met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- | ---: | ---: | "
        f"{'---: | ' if args.peak_tflops else ''}--- |",
    ]
    lora_mini_rows = []
    for g in groups:
        by = {c["library"] if g["group"] != "lora_mini" else c["label"]: c for c in g["configs"]}
        floor = by[FLOOR]
        over = {k: [a / b - 1 for a, b in zip(c["medians_s"], floor["medians_s"], strict=True)] for k, c in by.items()}
        if g["group"] == "lora_mini":
            lora = g["configs"][1]
            for c in g["configs"][1:]:
                ratio = [a / b for a, b in zip(c["medians_s"], lora["medians_s"], strict=True)]
                target = TARGETS["lora_mini_overhead"] if "LoRA-Mini" in c["label"] else TARGETS["lora_overhead"]
                met = statistics.median(over[c["label"]]) <= target
                lora_mini_rows.append(
                    f"| {c['label']} | {c['trainable']:,} | {c['modules']} | {ms(floor['medians_s'])} | "
                    f"{ms(c['medians_s'])} | {fmt_spread(over[c['label']], 1, pct=True)} | "
                    f"{fmt_spread(ratio)} | {'yes' if met else 'NO'} (overhead <= {100 * target:.0f}%) |"
                )
            continue
        ours, theirs = by["loralab"], by["peft"]
        ratio = [a / b for a, b in zip(ours["medians_s"], theirs["medians_s"], strict=True)]
        mem = {lib: memory.get((ours["case"], lib)) for lib in ("loralab", "peft", FLOOR)}
        mem_ratio = mem["loralab"] / mem["peft"] if mem["loralab"] and mem["peft"] else None
        checks = [statistics.median(ratio) <= TARGETS["step"]]
        if mem_ratio is not None:
            checks.append(mem_ratio <= TARGETS["memory"])
        met = "yes" if all(checks) else "NO"
        if g["group"] == "lora":
            lora_ok = statistics.median(over["loralab"]) <= TARGETS["lora_overhead"]
            met += f"; overhead <= 5%: {'yes' if lora_ok else 'NO'}"
        step_s = statistics.median(ours["medians_s"])
        mfu = f"{100 * floor['flops'] / step_s / (args.peak_tflops * 1e12):.1f}% | " if args.peak_tflops else ""
        mib = " / ".join("" if v is None else f"{v / 2**20:,.0f}" for v in mem.values())
        lines.append(
            f"| {g['title']} | {ours['trainable']:,} | {ours['modules']} | {ms(floor['medians_s'])} | "
            f"{1000 * step_s:.1f} | {ms(theirs['medians_s'])} | {fmt_spread(ratio)} | "
            f"{fmt_spread(over['loralab'], 1, pct=True)} | {fmt_spread(over['peft'], 1, pct=True)} | {mib} | "
            f"{'' if mem_ratio is None else f'{mem_ratio:.3f}'} | {tokens / step_s:,.0f} | {mfu}{met} |"
        )
    for g in groups:
        by = {c["library"]: c for c in g["configs"]}
        if UNFUSED in by:
            fused, unfused, floor = by["loralab"], by[UNFUSED], by[FLOOR]
            ratio = [a / b for a, b in zip(fused["medians_s"], unfused["medians_s"], strict=True)]
            over = [a / b - 1 for a, b in zip(unfused["medians_s"], floor["medians_s"], strict=True)]
            lines += [
                "",
                f"{g['title']}: loralab's forward (last product and scaling added into the base output by one addmm) "
                f"vs its previous forward (`out += adapter_output(x)`), alternating in the same group: step "
                f"{fmt_spread(ratio)}; the previous forward's overhead over the floor "
                f"{fmt_spread(over, 1, pct=True)} ({ms(unfused['medians_s'])} ms). Exact: same outputs and gradients "
                "(tests/test_speed.py).",
            ]
        if PEFT_ADDMM in by:
            ours, theirs, patched, floor = by["loralab"], by["peft"], by[PEFT_ADDMM], by[FLOOR]
            vs_peft = [a / b for a, b in zip(ours["medians_s"], theirs["medians_s"], strict=True)]
            vs_patched = [a / b for a, b in zip(ours["medians_s"], patched["medians_s"], strict=True)]
            trick = [a / b for a, b in zip(patched["medians_s"], theirs["medians_s"], strict=True)]
            over = [a / b - 1 for a, b in zip(patched["medians_s"], floor["medians_s"], strict=True)]
            lines += [
                "",
                f"{g['title']}: loralab vs peft with loralab's add (`{PEFT_ADDMM}`: peft's LoRA layers' forward "
                "patched, per instance, to add the last product and the scaling into the base output by one addmm), "
                f"alternating in the same group: step loralab/peft {fmt_spread(vs_peft)}, loralab/{PEFT_ADDMM} "
                f"{fmt_spread(vs_patched)}; {PEFT_ADDMM}/peft {fmt_spread(trick)}; {PEFT_ADDMM}'s overhead over the "
                f"floor {fmt_spread(over, 1, pct=True)} ({ms(patched['medians_s'])} ms). Exact: same outputs and "
                "gradients as peft's forward (tests/test_bench_peft_addmm.py).",
            ]
    if lora_mini_rows:
        lines += [
            "",
            "## LoRA-Mini vs LoRA (loralab, same r, same modules)",
            "",
            "| configuration | trainable | modules | floor (ms) | step (ms) | overhead over floor | step / LoRA | "
            "target |",
            "| --- | ---: | ---: | ---: | ---: | --- | --- | --- |",
            *lora_mini_rows,
        ]
    if breakdowns:
        lines += render_breakdown(breakdowns[0])
    lines += ["", "Per-repeat medians (ms):", ""]
    for g in groups:
        for c in g["configs"]:
            lines.append(f"- {g['title']} / {c['label']}: {' / '.join(f'{1000 * m:.1f}' for m in c['medians_s'])}; "
                         f"{c['flops'] / 1e9:,.1f} GFLOP per step")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8, help="rounds per repeat")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-steps", type=int, default=3, help="steps of each peak-memory process")
    ap.add_argument("--groups", nargs="*", default=list(GROUPS), choices=list(GROUPS), help="default: all")
    ap.add_argument("--peak-tflops", type=float, help="the device's peak (dense, this dtype): adds MFU")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the profile of the LoRA overhead (CPU)")
    ap.add_argument("--out", type=Path, help="the report (a '## Findings' section already there is kept)")
    ap.add_argument("--from-log", type=Path, help="render the groups a (possibly unfinished) run printed to this log")
    ap.add_argument("--memory-of", nargs=2, metavar=("CASE", "LIBRARY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_of:
        print(_memory_of(*args.memory_of, args))
        return
    if args.from_log:  # the same arguments as the logged run, so the report states its setup
        lines = [json.loads(x) for x in args.from_log.read_text().splitlines() if x.startswith("{")]
        groups = [x for x in lines if "group" in x]
        memory = {(x["memory"][0], x["memory"][1]): x["memory"][2] for x in lines if "memory" in x}
        print(render(groups, memory, args, None, [x["breakdown"] for x in lines if "breakdown" in x]))
        return
    if args.repeats < 3:
        raise SystemExit(f"--repeats must be >= 3 (median and spread over repeats), got {args.repeats}")
    load0 = os.getloadavg()[0]
    groups, memory = [], {}
    for key in args.groups:  # each group's timing, then its memory processes (printed as they finish)
        groups.append(time_group(key, args))
        if args.no_memory or key == "lora_mini":
            continue
        case = groups[-1]["configs"][1]["case"]
        for library in ("loralab", "peft", FLOOR):
            memory[case, library] = peak_memory(case, library, args)
            print(json.dumps({"memory": [case, library, memory[case, library]]}), flush=True)
    parts = [breakdown(args)] if "lora" in args.groups and args.device == "cpu" and not args.no_breakdown else []
    report = render(groups, memory, args, (load0, os.getloadavg()[0]), parts)
    if args.out and args.out.exists():
        kept = args.out.read_text().partition("\n## Findings")
        report += kept[1] + kept[2] if kept[1] else ""
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
