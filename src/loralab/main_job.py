"""The main job (``make run``): a small side-by-side reproduction on real data, ending with a table that shows it.

``python -m loralab.main_job`` trains the runs of ``experiments/main/stsb.yaml`` that are missing under
``outputs/main`` (through :mod:`loralab.tables`: resumable, stale-aware), renders the spec's table there, and
prints a summary: per run the trainable parameters, the score after every epoch and the best, the trivial
baseline of the eval set (what a predictor that learned nothing scores: :func:`loralab.claims.trivial_baseline`)
and the run's wall time (from its ``results.json``: model, data and training, without the Python start-up).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from loralab import tables
from loralab.claims import trivial_baseline
from loralab.config import PROJECT_ROOT

SPEC = PROJECT_ROOT / "experiments" / "main" / "stsb.yaml"
RESULTS = PROJECT_ROOT / "outputs" / "main"


def summary(spec_path: Path, results_root: Path, total_s: float | None = None) -> str:
    """The side-by-side table of a spec's runs (first column, first seed) as Markdown."""
    spec = tables.load_spec(spec_path)
    column = spec.columns[0]
    results = tables.results_from_disk(spec, "offline", results_root)
    found = [(row, results[(row.id, column.run_name)][0]) for row in spec.rows if (row.id, column.run_name) in results]
    if not found:
        raise FileNotFoundError(f"no finished runs of {spec_path} under {results_root}; run it first")
    first = found[0][1]
    baseline, what = trivial_baseline(first, column.metric, spec.scale)
    epochs = max(len(r["metrics"]["epochs"]) for _, r in found)
    lines = [
        f"# {spec.title}",
        "",
        f"Model {first['model']} (weights: {first['weights_source']}), {first['num_train_examples']} training "
        f"examples, eval {first['num_eval_examples']}, device {first['device']}; metric {column.metric} x "
        f"{spec.scale:g}. Trivial baseline: {what}.",
        "",
        "| run | method | trainable params | % of model | "
        + " | ".join(f"epoch {e + 1}" for e in range(epochs))
        + " | best | trivial baseline | time per run |",
        "|" + " --- |" * 4 + " ---: |" * (epochs + 3),
    ]
    for row, r in found:
        params = r["params"]
        per_epoch = [f"{e[column.metric] * spec.scale:.1f}" for e in r["metrics"]["epochs"]]
        per_epoch += [""] * (epochs - len(per_epoch))
        lines.append(
            f"| {row.id} | {r['method']} | {params['trainable_params']:,} | "
            f"{100 * params['trainable_params'] / params['total_params']:.2f} | {' | '.join(per_epoch)} | "
            f"**{tables.metric_value(r, column.metric, spec.scale):.1f}** | "
            f"{'' if baseline is None else f'{baseline:.1f}'} | {r['wall_time_s'] / 60:.1f} min |"
        )
    if total_s is not None:
        lines += ["", f"This command took {total_s / 60:.1f} min (training the missing runs, rendering)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"results root (default {RESULTS})")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one thread each")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.time()
    tables.build_table(args.spec, "offline", results_root=args.results, jobs=args.jobs)
    text = summary(args.spec, args.results, time.time() - start)
    out = args.results / f"{args.spec.stem}_summary.md"
    out.write_text(text)
    print(f"\n{text}\n(written to {out})")


if __name__ == "__main__":
    main()
