"""Wall time of a LoRA-Mini r/a/b grid trained fused (``loralab.fused.run_fused``, what ``hydra/launcher=fused``
runs) against the same configs trained one after another (``loralab.run.run``, in this same process), and a check
that both give the same results (per-epoch loss and metrics, saved adapter and head).

Each side runs ``--repeats`` times, alternating which goes first; every repeat is recorded. Per repeat the ratio
fused / separate (total wall time and training loops only) is taken, and the report gives its median and its range
[min, max] over the repeats (never a minimum picked per side); per-config times are medians over the repeats.

Dropout is switched off in both (every ``nn.Dropout`` of the backbone set to p=0 when it is built): fused training
equals separate training only without dropout, and pretrained backbones take their dropout from their own config.

    python bench/fused_sweep.py --out results/bench/fused_sweep_cpu.md                 # 14 rab points x D, D+A
    python bench/fused_sweep.py --points r8_a16_b16,r8_a64_b64 --targets D --steps 5   # a quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from peft_compare import fmt_spread  # noqa: E402  (bench/, the script's folder, is on sys.path)
from safetensors.torch import load_file  # noqa: E402
from torch import nn  # noqa: E402

import loralab.run  # noqa: E402
from loralab.config import register_configs  # noqa: E402
from loralab.fused import group_configs, run_fused  # noqa: E402
from loralab.records import versions  # noqa: E402
from loralab.run import run  # noqa: E402


def _without_dropout() -> None:
    """Build every backbone with its dropout off (loralab.run.build_model is what run() and run_fused() call)."""
    build_model = loralab.run.build_model

    def build(*args, **kwargs):
        model, source = build_model(*args, **kwargs)
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        return model, source

    loralab.run.build_model = build


def _grid(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    points = args.points.split(",") if args.points else sorted(p.stem for p in (ROOT / "conf" / "rab").glob("*.yaml"))
    common = [
        f"model={args.model}", f"task={args.task}", "method=lora_mini", "trainer.epochs=1",
        f"trainer.max_steps={args.steps}", f"trainer.batch_size={args.batch}", f"task.max_seq_length={args.seq}",
        f"task.limit_eval={args.limit_eval}", "trainer.progress=false", "logger.mode=disabled",
        "trainer.checkpoint_every=null",
    ]  # fmt: skip
    return [(f"{p} {t}", [*common, f"rab={p}", f"method.targets={t}"]) for p in points for t in args.targets.split(",")]


def _separate(cfgs: list, out: Path) -> tuple[list[dict], list[float]]:
    """Each config trained alone, one after another: results and wall times."""
    results, walls = [], []
    for i, cfg in enumerate(cfgs):
        started = time.perf_counter()
        results.append(run(cfg, out / str(i)))
        walls.append(time.perf_counter() - started)
    return results, walls


def _fused(cfgs: list, groups: list[list[int]], out: Path) -> tuple[list[dict], list[float]]:
    """The configs trained as fused groups: results (in config order) and each group's wall time."""
    results: list[dict] = [{} for _ in cfgs]
    walls = []
    for members in groups:
        started = time.perf_counter()
        trained = run_fused([cfgs[i] for i in members], [out / str(i) for i in members])
        for i, result in zip(members, trained, strict=True):
            results[i] = result
        walls.append(time.perf_counter() - started)
    return results, walls


def _max_diff(a: Path, b: Path) -> float:
    left, right = load_file(str(a)), load_file(str(b))
    if left.keys() != right.keys():
        return float("inf")
    return max((left[k] - right[k]).abs().max().item() for k in left)


def _same(alone: dict, together: dict) -> bool:
    """Per epoch: the same step, the train loss to 1e-4 and exactly the same metrics."""
    for a, b in zip(alone["metrics"]["epochs"], together["metrics"]["epochs"], strict=True):
        metrics = set(a) - {"phase", "epoch", "step", "train_loss", "train_time_s"}
        if a["step"] != b["step"] or abs(a["train_loss"] - b["train_loss"]) > 1e-4:
            return False
        if any(a[k] != b[k] for k in metrics):
            return False
    return True


def _median(per_repeat: list[list[float]]) -> list[float]:
    """Per item (config or group), the median over the repeats of ``per_repeat[repeat][item]``."""
    return [statistics.median(values) for values in zip(*per_repeat, strict=True)]


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--task", default="glue/rte")
    parser.add_argument("--points", default="", help="rab grid points (conf/rab), comma-separated; default: all")
    parser.add_argument("--targets", default="D,D+A")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--limit-eval", type=int, default=64, help="dev examples evaluated (the same in both)")
    parser.add_argument("--max-group", type=int, default=14, help="configs per fused group (bounds memory)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="each side this often, alternating; median [min, max] over the repeats"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "fused_sweep_cpu.md")
    args = parser.parse_args()

    register_configs()
    _without_dropout()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        grid = [(label, compose("train", overrides)) for label, overrides in _grid(args)]
    labels, cfgs = [g[0] for g in grid], [g[1] for g in grid]
    groups = group_configs(cfgs, args.max_group)
    sizes = [len(g) for g in groups]
    load_before = os.getloadavg()
    # every repeat's times: [repeat][config] (separate) and [repeat][group] (fused), each repeat's sides back to back
    separate_s: list[list[float]] = []
    train_s: list[list[float]] = []
    group_s: list[list[float]] = []
    group_train_s: list[list[float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run(cfgs[0], work / "warm-up")  # weights unpacked, files cached: neither side pays for that
        for rep in range(args.repeats):
            for side in ("separate", "fused") if rep % 2 == 0 else ("fused", "separate"):
                if side == "separate":
                    separate, walls = _separate(cfgs, work / str(rep) / side)
                    separate_s.append(walls)
                    train_s.append([r["metrics"]["epochs"][-1]["train_time_s"] for r in separate])
                else:
                    fused, walls = _fused(cfgs, groups, work / str(rep) / side)
                    group_s.append(walls)
                    group_train_s.append(
                        [fused[members[0]]["metrics"]["epochs"][-1]["train_time_s"] for members in groups]
                    )
                print(f"repeat {rep}: {side} {sum(walls):.1f} s", flush=True)
        last = work / str(args.repeats - 1)
        diffs = [
            _max_diff(
                last / "separate" / str(i) / "adapter.safetensors", last / "fused" / str(i) / "adapter.safetensors"
            )
            for i in range(len(cfgs))
        ]
    load_after = os.getloadavg()
    group_of = {i: g for g, members in enumerate(groups) for i in members}

    wall_ratio = [sum(f) / sum(s) for f, s in zip(group_s, separate_s, strict=True)]
    train_ratio = [sum(f) / sum(s) for f, s in zip(group_train_s, train_s, strict=True)]
    sep_med, train_med, group_med = _median(separate_s), _median(train_s), _median(group_s)
    rows = []
    for i, label in enumerate(labels):
        a, b = separate[i]["metrics"], fused[i]["metrics"]
        loss_a, loss_b = a["epochs"][-1]["train_loss"], b["epochs"][-1]["train_loss"]
        main = separate[i]["main_metric"]
        share = group_med[group_of[i]] / sizes[group_of[i]]
        rows.append(
            f"| {label} | {separate[i]['params']['trainable_params']:,} | {sep_med[i]:.1f} | {train_med[i]:.1f} | "
            f"{share:.1f} | {loss_a:.5f} | {loss_b:.5f} | {a['best'][main]:.4f} | {b['best'][main]:.4f} | "
            f"{diffs[i]:.1e} |"
        )
    total_sep, total_fused = [sum(r) for r in separate_s], [sum(r) for r in group_s]
    train_sep, train_fused = [sum(r) for r in train_s], [sum(r) for r in group_train_s]
    same = all(_same(s, f) for s, f in zip(separate, fused, strict=True)) and max(diffs) < 1e-4
    ver = versions()
    command = "python bench/fused_sweep.py " + " ".join(sys.argv[1:])
    lines = [
        f"# Fused sweep vs separate runs ({'cuda' if torch.cuda.is_available() else 'cpu'})",
        "",
        f"Machine: {_cpu()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; python "
        f"{ver['python']}, torch {ver['torch']}, transformers {ver['transformers']}, accelerate {ver['accelerate']}.",
        f"Command: `{command}`",
        "",
        f"Grid: LoRA-Mini, {len(cfgs)} configs ({args.points or 'all 14 rab points'} x targets {args.targets}) on "
        f"{args.model} (real pretrained weights), {args.task} (real GLUE data), {args.steps} steps of batch "
        f"{args.batch} x max {args.seq} tokens, fp32, one evaluation on the first {args.limit_eval} dev examples; "
        f"dropout off in both. Separate: `loralab.run.run` per config, one after another in one process (after one "
        f"untimed warm-up run). Fused: `loralab.fused.run_fused`, {len(groups)} group(s) of "
        f"{'/'.join(map(str, sizes))} configs (`--max-group {args.max_group}`). Each side ran {args.repeats} times, "
        "alternating which went first, every repeat recorded: the ratios fused / separate are taken per repeat "
        "(the two sides of a repeat ran back to back) and given as median [min, max] over the repeats; the table's "
        "times are each config's (group's) median over the repeats.",
        f"Load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} cores "
        f"(this process's own {torch.get_num_threads()} threads count in it)"
        + (
            " -- other jobs shared the cores, so timings are contended."
            if load_before[0] > 1.0 or load_after[0] > torch.get_num_threads() + 1.0
            else "."
        ),  # fmt: skip
        "",
        "| config | trainable | separate wall (s) | separate train (s) | fused wall share (s) | train loss sep | "
        "train loss fused | best metric sep | best metric fused | max abs diff adapter+head |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"Total wall (s, median [min, max] over the repeats): separate {fmt_spread(total_sep, 1)}, fused "
        f"{fmt_spread(total_fused, 1)} (groups' medians: {', '.join(f'{s:.1f}' for s in group_med)} s); "
        f"fused / separate per repeat = {fmt_spread(wall_ratio)}.",
        f"Training loops only (train_time_s summed, s): separate {fmt_spread(train_sep, 1)}, fused "
        f"{fmt_spread(train_fused, 1)}; fused / separate per repeat = {fmt_spread(train_ratio)}.",
        f"Per-repeat totals (s), separate / fused: "
        f"{'; '.join(f'{a:.1f} / {b:.1f}' for a, b in zip(total_sep, total_fused, strict=True))}.",
        f"Fused results equal separate ones (loss to 1e-4, metrics exactly, adapter and head to 1e-4): "
        f"{'yes' if same else 'NO'}; largest parameter difference {max(diffs):.1e}.",
        "",
        "The fused wall time includes building every config's model (K backbone loads, as the separate runs do) "
        "and evaluating each config on its own (the same cost as alone). Fused training does the same multiply-adds "
        "as the separate runs: the frozen backbone runs once on K x batch rows instead of K times on batch rows, and "
        "its backward still computes input gradients for every row. It can only pay off where one run leaves the "
        "hardware idle (an accelerator with a small batch; not measured here), not where a batch of "
        f"{args.batch} x {args.seq} tokens already keeps the cores busy: on a CPU the K times larger activations "
        "also fall out of the caches, and every fused layer concatenates its K slices.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
