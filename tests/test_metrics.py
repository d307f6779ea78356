from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

from loralab.data.glue import GLUE_TASKS
from loralab.metrics import glue_metrics


def test_cola_mcc_and_accuracy():
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    preds = np.array([1, 1, 0, 0, 0, 1, 1, 0])
    # tp=3 (idx 0,1,6), fn=1 (idx 2), tn=3 (idx 3,4,7), fp=1 (idx 5)
    # mcc = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (9 - 1) / sqrt(4*4*4*4) = 8/16
    assert glue_metrics("cola", preds, labels) == pytest.approx({"mcc": 0.5, "accuracy": 6 / 8})


def test_mrpc_f1_is_positive_class():
    labels = np.array([1, 1, 1, 1, 0, 0])
    preds = np.array([1, 1, 0, 0, 1, 0])
    # tp=2, fp=1, fn=2: precision 2/3, recall 1/2, f1 = 2pr/(p+r) = (2/3)/(7/6) = 4/7
    # (the class-0 F1 would be 2/5, so this also pins pos_label=1)
    assert glue_metrics("mrpc", preds, labels) == pytest.approx({"accuracy": 0.5, "f1": 4 / 7})


def test_f1_without_positive_predictions_is_zero():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = glue_metrics("qqp", np.array([0, 0, 0]), np.array([1, 0, 0]))
    assert result == pytest.approx({"accuracy": 2 / 3, "f1": 0.0})


def test_mnli_accuracy():
    result = glue_metrics("mnli", np.array([0, 1, 2, 2, 1]), np.array([0, 1, 2, 0, 0]))
    assert result == pytest.approx({"accuracy": 0.6})


def test_stsb_pearson_by_hand():
    # deviations from the mean 2: (-1, 0, 1) and (-1, 1, 0); r = 1 / sqrt(2 * 2) = 0.5.
    # No ties, so spearman (pearson of the ranks, which equal the values here) is 0.5 too.
    result = glue_metrics("stsb", np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0]))
    assert result == pytest.approx({"pearson": 0.5, "spearman": 0.5})


def test_stsb_spearman_with_ties():
    preds = np.array([0.1, 0.7, 0.7, 2.0])
    labels = np.array([1.0, 2.0, 3.0, 4.0])
    # average ranks: preds (1, 2.5, 2.5, 4), labels (1, 2, 3, 4); deviations from 2.5:
    # (-1.5, 0, 0, 1.5) and (-1.5, -0.5, 0.5, 1.5) -> rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert glue_metrics("stsb", preds, labels)["spearman"] == pytest.approx(math.sqrt(0.9))


def test_stsb_constant_predictions_score_zero():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = glue_metrics("stsb", np.full(4, 2.5), np.array([0.0, 1.0, 4.0, 5.0]))
    assert result == {"pearson": 0.0, "spearman": 0.0}


@pytest.mark.parametrize("task", list(GLUE_TASKS))
def test_keys_match_task_metrics_and_values_are_floats(task):
    labels = np.array([0.5, 4.0, 2.0, 3.5]) if task == "stsb" else np.array([0, 1, 1, 0])
    result = glue_metrics(task, labels.copy(), labels)
    assert tuple(result) == GLUE_TASKS[task].metrics
    assert all(type(v) is float for v in result.values())
    assert all(v == pytest.approx(1.0) for v in result.values())


@pytest.mark.parametrize(
    ("preds", "labels"),
    [
        (np.zeros(3), np.zeros(2)),
        (np.zeros(0), np.zeros(0)),
        (np.zeros((2, 3)), np.zeros((2, 3))),
    ],
)
def test_bad_shapes(preds, labels):
    with pytest.raises(ValueError, match=re.escape(f"predictions {preds.shape} and labels {labels.shape}")):
        glue_metrics("sst2", preds, labels)


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown GLUE task 'squad'"):
        glue_metrics("squad", np.zeros(2), np.zeros(2))
