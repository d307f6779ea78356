"""GLUE evaluation metrics."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from loralab.data.glue import GLUE_TASKS


def _correlation(fn: Callable) -> Callable[[np.ndarray, np.ndarray], float]:
    """Wrap a scipy correlation; constant input (undefined correlation, nan in scipy) scores 0.0."""

    def metric(predictions: np.ndarray, labels: np.ndarray) -> float:
        if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
            return 0.0
        return float(fn(predictions, labels).statistic)

    return metric


_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda p, y: float(np.mean(p == y)),
    "mcc": lambda p, y: float(matthews_corrcoef(y, p)),
    "f1": lambda p, y: float(f1_score(y, p, pos_label=1, zero_division=0.0)),
    "pearson": _correlation(pearsonr),
    "spearman": _correlation(spearmanr),
}


def glue_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Compute ``GLUE_TASKS[task].metrics`` as plain floats (fractions, not percentages).

    ``predictions`` are class ids, or float scores for stsb; ``labels`` has the same 1-D shape.
    For stsb, a constant prediction (or label) vector gives 0.0 for pearson and spearman instead of nan.
    """
    if task not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; valid tasks: {', '.join(GLUE_TASKS)}")
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim != 1 or predictions.shape != labels.shape or predictions.size == 0:
        raise ValueError(
            "expected non-empty 1-D predictions and labels of equal shape, "
            f"got predictions {predictions.shape} and labels {labels.shape}"
        )
    return {name: _METRICS[name](predictions, labels) for name in GLUE_TASKS[task].metrics}
