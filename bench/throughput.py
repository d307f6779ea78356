"""Runs per hour of one fixed table cell, code before vs after, measured back to back on this machine.

The cell: LoRA-Mini D+A r=8 (a = b = 64) on real GLUE STS-B with the real all-MiniLM-L6-v2, the offline profile of
LoRA-Mini Table 1 (2 epochs on the first 2,000 training examples, batch 16, lr 5e-3): exactly the command
``make table1`` runs for that cell, one run per seed. An *arm* is a code tree (``before``: a commit, unpacked with
``git archive`` into a temporary folder; ``after``: this working tree), a number of lanes (runs trained at once, as
``loralab.tables --jobs``) and threads per run (``before:1:0`` = one run at a time with torch's default threads;
``after:2:1`` = two one-thread runs side by side, what ``JOBS=2`` does). Every arm trains the same seeds; the arms
alternate (``--repeats``, the order reversed every repeat). Reported per arm: the wall time of all its runs, runs
per hour, each run's own CPU time, the load average around it (the machine may be shared), and the runs' STS-B
Pearson (quality must not change).

    python bench/throughput.py --before 3f7fa85 --arms before:1:0 after:2:1 --out results/bench/throughput_cpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CELL = [
    "model=roberta-base", "model=minilm-l6", "trainer.epochs=2", "task.limit_train=2000", "trainer.batch_size=16",
    "trainer.lr=5e-3", "method=lora_mini", "method.targets=D+A", "rab=r8_a64_b64", "task=glue/stsb",
    "trainer.progress=false", "logger.mode=disabled",
]  # fmt: skip


def one_run(tree: Path, out: Path, seed: int, threads: int | None, extra: list[str]) -> dict:
    """Train the cell with ``seed`` using the code in ``tree`` (``threads``: OMP threads, None: torch's default;
    ``extra``: overrides added to the cell's); its results.json, with the process's own CPU time (user + system, from
    wait4) added as ``cpu_s``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(tree / "src")}
    env.setdefault("LORALAB_ASSETS", str(ROOT.parent / "shared" / "assets"))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(tree / "train.py"), *CELL, *extra, f"trainer.seed={seed}", f"hydra.run.dir={out}"]
    log = out.with_name(out.name + ".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run failed ({tree}, seed {seed}):\n{log.read_text()[-3000:]}")
    return {**json.loads((out / "results.json").read_text()), "cpu_s": usage.ru_utime + usage.ru_stime}


def arm(name: str, tree: Path, lanes: int, threads: int | None, extra: list[str], seeds: list[int], work: Path) -> dict:
    """All seeds of the cell with one arm's code, lanes and threads: wall time, CPU time per run, load, metrics."""
    load0, start = os.getloadavg()[0], time.time()
    outs = [work / f"{name.replace(':', '-')}-{time.time_ns()}-seed{s}" for s in seeds]
    with ThreadPoolExecutor(lanes) as pool:
        results = list(pool.map(lambda a: one_run(tree, a[0], a[1], threads, extra), zip(outs, seeds, strict=True)))
    wall = time.time() - start
    row = {
        "arm": name,
        "lanes": lanes,
        "threads": threads or torch_threads(),
        "runs": len(seeds),
        "wall_s": wall,
        "runs_per_hour": 3600 * len(seeds) / wall,
        "cpu_s": [r["cpu_s"] for r in results],
        "load": (load0, os.getloadavg()[0]),
        "pearson": {r["config"]["trainer"]["seed"]: r["metrics"]["best"]["pearson"] for r in results},
        "run_wall_s": [r["wall_time_s"] for r in results],
    }
    print(json.dumps(row), flush=True)
    return row


def unpack(commit: str, into: Path) -> Path:
    """The tree of ``commit`` (git archive: read-only for the repository)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def torch_threads() -> int:
    """The threads a run uses when OMP_NUM_THREADS is not set (torch's default: the cores)."""
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def render(rows: list[dict], args: argparse.Namespace) -> str:
    first = rows[0]["arm"]
    base = statistics.median(r["runs_per_hour"] for r in rows if r["arm"] == first)
    base_cpu = statistics.median(c for r in rows if r["arm"] == first for c in r["cpu_s"])
    lines = [
        "# Runs per hour: one table cell, code before vs after",
        "",
        f"Cell: `train.py {' '.join(CELL)}` (LoRA-Mini Table 1, offline profile), seeds {args.seeds}; "
        f"{os.cpu_count()} CPU cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"`before` = commit {args.before}, `after` = the working tree.",
        f"Command: `python bench/throughput.py --before {args.before} --arms {' '.join(args.arms)} --runs "
        f"{args.runs} --repeats {args.repeats}`. An arm `<code>:<lanes>:<threads>[:<override>...]` trains the seeds "
        "in <lanes> parallel processes of <threads> threads each (0: torch's default), with the overrides added; "
        "arms run one after another (order "
        "reversed every repeat). `load`: the 1-minute load average at the arm's start and end. CPU (s): each run's "
        "own user + system time (wait4), which depends little on other processes' load when a run has one thread; "
        "wall time and runs per hour depend on it fully (this machine is shared).",
        "",
        f"| arm | lanes x threads | runs | wall (s) | runs/hour | x {first} | CPU per run (s) | CPU x {first} | load | "
        "STS-B Pearson per seed | run wall (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | --- | --- | --- |",
    ]
    for r in rows:
        pearson = ", ".join(f"{s}: {v:.4f}" for s, v in sorted(r["pearson"].items()))
        cpu = statistics.median(r["cpu_s"])
        lines.append(
            f"| {r['arm']} | {r['lanes']} x {r['threads']} | {r['runs']} | {r['wall_s']:.0f} | "
            f"{r['runs_per_hour']:.1f} | {r['runs_per_hour'] / base:.2f} | {', '.join(f'{c:.0f}' for c in r['cpu_s'])} "
            f"| {base_cpu / cpu:.2f} | {r['load'][0]:.1f} -> {r['load'][1]:.1f} | {pearson} | "
            f"{', '.join(f'{w:.0f}' for w in r['run_wall_s'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="HEAD", help="commit of the 'before' code (default HEAD)")
    ap.add_argument(
        "--arms",
        nargs="+",
        default=["before:1:0", "after:2:1"],
        help="<before|after>:<lanes>:<threads, 0: default>[:<override>...] (overrides added to the cell's)",
    )
    ap.add_argument("--runs", type=int, default=2, help="runs (seeds 42, 43, ...) per arm")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.seeds = list(range(42, 42 + args.runs))
    arms = []
    for spec in args.arms:
        code, lanes, threads, *extra = spec.split(":")
        if code not in ("before", "after"):
            raise SystemExit(f"arm {spec!r}: the code must be before or after")
        arms.append((spec, code, int(lanes), int(threads) or None, extra))
    with tempfile.TemporaryDirectory(prefix="loralab-throughput-") as tmp:
        trees = {"before": unpack(args.before, Path(tmp) / "before"), "after": ROOT}
        rows = []
        for repeat in range(args.repeats):
            for spec, code, lanes, threads, extra in arms if repeat % 2 == 0 else arms[::-1]:
                rows.append(arm(spec, trees[code], lanes, threads, extra, args.seeds, Path(tmp) / "runs"))
    report = render(rows, args)
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
