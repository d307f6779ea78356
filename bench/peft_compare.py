"""Training-step time and peak memory: loralab against peft on the same backbone, batch, dtype and adapter.

Each (case, library) runs in its own process, so peak memory is that process's own (CUDA: max allocated; CPU:
peak resident set); with ``--repeats N`` every process runs N times, interleaved (all cases, then all again, the
library order alternating), and the table keeps the smallest median step time and the largest peak. Backbones are
architectures with random weights (timing does not need pretrained ones). A step is what ``loralab.run.train``
does: forward, the method's ``extra_loss``, backward, ``after_backward``, the optimizer step, ``zero_grad`` and
``after_optimizer_step`` (no-ops but for AdaLoRA); peft's AdaLoRA adds its orthogonal regulariser inside forward
and runs ``update_and_allocate`` after the optimizer step.

    python bench/peft_compare.py --out results/bench/peft_compare_cpu.md                       # CPU
    python bench/peft_compare.py --device cuda --batch 32 --seq 128 --steps 20 --warmup 5 ...  # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from loralab.methods import Method

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# name: (model config, method config, method overrides; loralab's, peft's config is built from them)
CASES = {
    "roberta-base LoRA r=8 D+A": ("roberta-base", "lora", ["method.r=8", "method.targets=D+A"]),
    "roberta-base VeRA r=256 D+A": ("roberta-base", "vera", ["method.r=256", "method.targets=D+A"]),
    "t5-base LoRA r=8 D+A": ("t5-base", "lora", ["method.r=8", "method.targets=D+A"]),
    "roberta-base AdaLoRA r=12->8 D+A": (
        "roberta-base", "adalora", ["method.init_r=12", "method.target_r=8", "method.targets=D+A"]
    ),
    "roberta-base LoRA-Mini r=8 a=b=64 D+A": ("roberta-base", "lora_mini", ["method.r=8", "method.targets=D+A"]),
    "roberta-base LoRA-Mini r=8 a=b=256 D+A": (
        "roberta-base", "lora_mini", ["method.r=8", "method.a=256", "method.b=256", "method.targets=D+A"]
    ),
}  # fmt: skip
PEFT_CASES = (
    "roberta-base LoRA r=8 D+A",
    "roberta-base VeRA r=256 D+A",
    "t5-base LoRA r=8 D+A",
    "roberta-base AdaLoRA r=12->8 D+A",
)
LORA_MINI_REFERENCE = "roberta-base LoRA r=8 D+A"  # LoRA at the same r: LoRA-Mini's step time is compared with it


def adalora_schedule(steps: int) -> dict[str, int]:
    """AdaLoRA's schedule for a run of ``steps`` steps (warm-up included), the same for both libraries: no initial
    phase, masking every step (peft's default ``deltaT``), and a total of 3x the steps with the final phase the last
    third, so every timed step lies in the budget-reduction phase (the budget shrinks and is re-masked; peft counts
    step 0, a warm-up step, as its initial phase)."""
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


def make_model(case: str, library: str, steps: int) -> tuple[torch.nn.Module, Method | None]:
    """The backbone with the case's adapter attached by loralab or by peft (same target modules, rank, alpha), and
    loralab's method (its training hooks; None for peft). ``steps``: the steps the run takes (AdaLoRA's schedule)."""
    from loralab.models import build_model, model_kind, resolve_targets
    from loralab.run import build, make_plan

    model_name, method, overrides = CASES[case]
    schedule = adalora_schedule(steps)
    if method == "adalora":
        overrides = [*overrides, *(f"method.{k}={v}" for k, v in schedule.items() if k != "total")]
    plan = make_plan(_compose(model_name, method, overrides))
    if library == "loralab":
        return build(plan)[0], plan.method
    import peft

    kind = model_kind(plan.model, plan.task.kind)
    model, _ = build_model(plan.model, kind, 2 if kind == "sequence_classification" else None)
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
    else:
        config = peft.VeraConfig(r=cfg.r, d_initial=cfg.d_init, target_modules=pattern)
    return peft.get_peft_model(model, config), None


def measure(case: str, library: str, device: str, batch: int, seq: int, steps: int, warmup: int) -> dict:
    """Median step time (over ``steps`` after ``warmup``), peak memory, trainable parameters of one (case, library)."""
    torch.manual_seed(0)
    model, method = make_model(case, library, warmup + steps)
    model.to(device).train()
    # peft's AdaLoRA re-scores and masks its triplets after the optimizer step, before zero_grad (it reads the grads)
    allocate = getattr(model.base_model, "update_and_allocate", None) if method is None else None
    bf16 = device == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(5, 1000, (batch, seq), device=device)
    is_t5 = CASES[case][0].startswith("t5")
    inputs = (
        {"input_ids": ids, "labels": ids}
        if is_t5
        else {"input_ids": ids, "labels": torch.zeros(batch, dtype=torch.long, device=device)}
    )
    if method is not None:
        method.on_train_start(model, optimizer, adalora_schedule(warmup + steps)["total"])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs).loss
        extra = None if method is None else method.extra_loss(model, i)
        if extra is not None:
            loss = loss + extra
        loss.backward()
        if method is not None:
            method.after_backward(model, i)
        optimizer.step()
        if allocate is not None:
            allocate(i)
        optimizer.zero_grad(set_to_none=True)
        if method is not None:
            method.after_optimizer_step(model, i)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = (
        torch.cuda.max_memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "case": case,
        "library": library,
        "median_step_s": statistics.median(times),
        "peak_memory_bytes": int(peak),
        "trainable_params": sum(p.numel() for p in params),
        "tokens_per_s": batch * seq / statistics.median(times),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="processes per (case, library), interleaved")
    ap.add_argument("--out", type=Path, help="the report (a '## Findings' section already there is kept)")
    ap.add_argument("--cases", nargs="*", default=list(CASES), help="a subset of the cases (default: all)")
    ap.add_argument("--one", nargs=2, metavar=("CASE", "LIBRARY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.device, args.batch, args.seq, args.steps, args.warmup)))
        return
    runs: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(args.repeats):
        for case in args.cases:
            libraries = ("loralab", "peft") if case in PEFT_CASES else ("loralab",)
            for library in libraries if repeat % 2 == 0 else libraries[::-1]:
                sizes = ["--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)]
                cmd = [sys.executable, __file__, "--one", case, library, "--device", args.device, *sizes,
                       "--warmup", str(args.warmup)]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
                if out.returncode != 0:
                    print(out.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"{case} / {library} failed")
                runs.setdefault((case, library), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(runs[case, library][-1], flush=True)
    rows = [combine(r) for r in runs.values()]
    report = render(rows, args)
    if args.out and args.out.exists():
        kept = args.out.read_text().partition("\n## Findings")
        report += kept[1] + kept[2] if kept[1] else ""
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


def combine(runs: list[dict]) -> dict:
    """One row from the repeated runs of a (case, library): the smallest median step time, the largest peak."""
    best = min(runs, key=lambda r: r["median_step_s"])
    return {
        **best,
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in runs),
        "medians_s": [r["median_step_s"] for r in runs],
    }


def render(rows: list[dict], args: argparse.Namespace) -> str:
    """The report: setup, command and one table row per (case, library) with the ratios against the references."""
    import peft
    import transformers

    dev = (
        torch.cuda.get_device_name(0)
        if args.device == "cuda"
        else f"{platform.processor() or 'CPU'} x{torch.get_num_threads()} threads"
    )
    n = args.warmup + args.steps
    schedule = adalora_schedule(n)
    by = {(r["case"], r["library"]): r for r in rows}
    adalora = (
        [
            f"AdaLoRA (both libraries): t_init {schedule['t_init']}, t_final {schedule['t_final']}, total "
            f"{schedule['total']} steps, delta_t {schedule['delta_t']} (peft: tinit, tfinal, total_step, deltaT), "
            f"orthogonality weight of conf/method/adalora.yaml: every timed step (of {n}) lies in the "
            "budget-reduction phase, the importance EMAs are updated and the triplets re-masked after every step; the "
            "step includes the hooks (loralab: extra_loss, after_backward, after_optimizer_step; peft: the "
            "regulariser in forward and update_and_allocate)."
        ]
        if any(CASES[r["case"]][1] == "adalora" for r in rows)
        else []
    )
    lines = [
        f"# loralab vs peft: training step ({args.device})",
        "",
        f"Device: {dev}; torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
        f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d')}.",
        f"Batch {args.batch} x {args.seq} tokens, {'bf16 autocast' if args.device == 'cuda' else 'fp32'}, AdamW, "
        f"train mode; step time: median of {args.steps} steps after {args.warmup} warm-up, in its own process, "
        f"{args.repeats} process(es) per row run interleaved: the smallest median is shown (all medians in the last "
        "column), and the largest peak; random-weight backbones.",
        *adalora,
        f"Command: `python bench/peft_compare.py --device {args.device} --batch {args.batch} --seq {args.seq} "
        f"--steps {args.steps} --warmup {args.warmup} --repeats {args.repeats}`",
        "",
        "| case | library | trainable | step (ms) | tokens/s | peak memory (MiB) | step loralab/peft | memory "
        "| LoRA-Mini/LoRA step | medians (ms) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ref = by.get((r["case"], "peft"))
        ratio = (
            (
                f"{r['median_step_s'] / ref['median_step_s']:.3f}",
                f"{r['peak_memory_bytes'] / ref['peak_memory_bytes']:.3f}",
            )
            if ref and r["library"] == "loralab"
            else ("", "")
        )
        lora = by.get((LORA_MINI_REFERENCE, "loralab"))
        mini = (
            f"{r['median_step_s'] / lora['median_step_s']:.3f}" if lora and CASES[r["case"]][1] == "lora_mini" else ""
        )
        medians = " / ".join(f"{1000 * m:.0f}" for m in r["medians_s"])
        lines.append(
            f"| {r['case']} | {r['library']} | {r['trainable_params']:,} | {1000 * r['median_step_s']:.1f} | "
            f"{r['tokens_per_s']:,.0f} | {r['peak_memory_bytes'] / 2**20:,.0f} | {ratio[0]} | {ratio[1]} | {mini} | "
            f"{medians} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
