"""Weights & Biases logging of a run (``wandb`` is imported only when logging is on)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loralab.run import Plan


def wandb_init(plan: Plan, resolved: dict, output_dir: Path, wandb_id: str | None = None):
    """A W&B run for this config (None with ``logger.mode=disabled``); ``wandb_id`` continues an earlier one."""
    if plan.logger.mode == "disabled":
        return None
    import wandb

    return wandb.init(
        project=plan.logger.project,
        group=plan.logger.group or plan.task.name,
        job_type=plan.logger.job_type or plan.method.name,
        config=resolved,
        mode=plan.logger.mode,
        dir=str(output_dir),
        name=plan.logger.name or f"{plan.model.name}-{plan.task.name}-{plan.method.name}",
        id=wandb_id,  # a resumed run continues its W&B run
        resume="allow" if wandb_id else None,
    )
