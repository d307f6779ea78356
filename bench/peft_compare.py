"""Training-step time and peak memory: loralab against peft on the same backbone, batch, dtype and adapter.

Each (case, library) runs in its own process, so peak memory is that process's own (CUDA: max allocated; CPU:
peak resident set). Backbones are architectures with random weights (timing does not need pretrained ones).

    python bench/peft_compare.py --out results/bench/peft_compare_cpu.md            # CPU
    python bench/peft_compare.py --device cuda --batch 32 --seq 128 --steps 30 ...  # GPU
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# (name, model config, method overrides for loralab, targets preset)
CASES = {
    "roberta-base LoRA r=8 D+A": ("roberta-base", "lora", ["method.r=8", "method.targets=D+A"]),
    "roberta-base VeRA r=256 D+A": ("roberta-base", "vera", ["method.r=256", "method.targets=D+A"]),
    "t5-base LoRA r=8 D+A": ("t5-base", "lora", ["method.r=8", "method.targets=D+A"]),
    "roberta-base LoRA-Mini r=8 a=b=64 D+A": ("roberta-base", "lora_mini", ["method.r=8", "method.targets=D+A"]),
}
PEFT_CASES = ("roberta-base LoRA r=8 D+A", "roberta-base VeRA r=256 D+A", "t5-base LoRA r=8 D+A")


def _compose(model: str, method: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from loralab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        task = "bare" if model.startswith("t5") else "glue/rte"
        return compose("train", [f"model={model}", f"task={task}", f"method={method}", "method.train_head=false",
                                 "model.weights=random", *overrides])  # fmt: skip


def make_model(case: str, library: str) -> torch.nn.Module:
    """The backbone with the case's adapter attached by loralab or by peft (same target modules, rank, alpha)."""
    from loralab.models import build_model, model_kind, resolve_targets
    from loralab.run import build, make_plan

    model_name, method, overrides = CASES[case]
    plan = make_plan(_compose(model_name, method, overrides))
    if library == "loralab":
        return build(plan)[0]
    import peft

    kind = model_kind(plan.model, plan.task.kind)
    model, _ = build_model(plan.model, kind, 2 if kind == "sequence_classification" else None)
    pattern = "|".join(f"(?:{p})" for p in resolve_targets(plan.model, plan.method.cfg.targets, None))
    if method == "lora":
        config = peft.LoraConfig(r=plan.method.cfg.r, lora_alpha=plan.method.cfg.alpha, target_modules=pattern)
    else:
        config = peft.VeraConfig(r=plan.method.cfg.r, d_initial=plan.method.cfg.d_init, target_modules=pattern)
    return peft.get_peft_model(model, config)


def measure(case: str, library: str, device: str, batch: int, seq: int, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = make_model(case, library).to(device)
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
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
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
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--cases", nargs="*", default=list(CASES), help="a subset of the cases (default: all)")
    ap.add_argument("--one", nargs=2, metavar=("CASE", "LIBRARY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.device, args.batch, args.seq, args.steps, args.warmup)))
        return
    rows = []
    for case in args.cases:
        for library in ("loralab", "peft") if case in PEFT_CASES else ("loralab",):
            sizes = ["--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)]
            cmd = [sys.executable, __file__, "--one", case, library, "--device", args.device, *sizes,
                   "--warmup", str(args.warmup)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"{case} / {library} failed")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    report = render(rows, args)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


def render(rows: list[dict], args: argparse.Namespace) -> str:
    import peft
    import transformers

    dev = (
        torch.cuda.get_device_name(0)
        if args.device == "cuda"
        else f"{platform.processor() or 'CPU'} x{torch.get_num_threads()} threads"
    )
    by = {(r["case"], r["library"]): r for r in rows}
    lines = [
        f"# loralab vs peft: training step ({args.device})",
        "",
        f"Device: {dev}; torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
        f"batch {args.batch} x {args.seq} tokens, {'bf16 autocast' if args.device == 'cuda' else 'fp32'}, AdamW, "
        f"median of {args.steps} steps after {args.warmup} warm-up; random-weight backbones.",
        f"Command: `python bench/peft_compare.py --device {args.device} --batch {args.batch} --seq {args.seq} "
        f"--steps {args.steps} --warmup {args.warmup}`",
        "",
        "| case | library | trainable | step (ms) | tokens/s | peak memory (MiB) | step loralab/peft | memory |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
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
        lines.append(
            f"| {r['case']} | {r['library']} | {r['trainable_params']:,} | {1000 * r['median_step_s']:.1f} | "
            f"{r['tokens_per_s']:,.0f} | {r['peak_memory_bytes'] / 2**20:,.0f} | {ratio[0]} | {ratio[1]} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
