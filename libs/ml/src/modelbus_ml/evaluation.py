"""Metrics of every task, computed the same way by the trainer, the registry and the deployer.

- binary: auc, accuracy, log_loss, brier;
- multiclass: accuracy, log_loss, brier (summed over classes), macro_auc (one-vs-rest);
- regression: rmse, mae, r2.

Each proper scoring rule (log loss, Brier; squared and absolute error for a regression) also
exists row by row (``row_losses_of``): the deployer's paired test compares two models on the
same rows with them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .dataset import Dataset
from .flavors import ServableModel
from .outputs import Outputs, outputs_of, task_of


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum statistic (ties get average ranks)."""
    y = np.asarray(y)
    pos = int((y == 1).sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return 0.5
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(score.size, dtype=np.float64)
    sorted_scores = score[order]
    i = 0
    while i < score.size:
        j = i
        while j + 1 < score.size and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


PROPER_SCORING_RULES = ("log_loss", "brier")  # per row, lower is better (classification)
REGRESSION_ERRORS = ("rmse", "mae")  # per row: squared / absolute error, lower is better
ROW_METRICS = (*PROPER_SCORING_RULES, *REGRESSION_ERRORS)  # the metrics a paired test takes
LOWER_IS_BETTER = frozenset(ROW_METRICS)
METRICS_BY_TASK = {
    "binary": ("auc", "accuracy", "log_loss", "brier"),
    "multiclass": ("accuracy", "log_loss", "brier", "macro_auc"),
    "regression": ("rmse", "mae", "r2"),
}
DEFAULT_METRIC = {"binary": "log_loss", "multiclass": "log_loss", "regression": "rmse"}
EPS = 1e-12


def row_losses(y: np.ndarray, score: np.ndarray, rule: str) -> np.ndarray:
    """Each row's loss under a proper scoring rule (``log_loss`` or ``brier``) of the predicted
    probability ``score`` of class 1 for the label ``y`` (0/1): their mean is the metric."""
    y = np.asarray(y, dtype=np.float64)
    if rule == "log_loss":
        clipped = np.clip(score, EPS, 1 - EPS)
        return -(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))
    if rule == "brier":
        return (np.asarray(score, dtype=np.float64) - y) ** 2
    raise ValueError(f"not a proper scoring rule: {rule!r}")


def scores_of(model: ServableModel, ds: Dataset) -> np.ndarray:
    """``model``'s probability of class 1 for every row of ``ds`` (a binary model)."""
    return model.predict_proba(ds.select(model.feature_names).X)


def outputs_on(model: Any, ds: Dataset) -> Outputs:
    """``model``'s outputs on every row of ``ds`` (its features, its order)."""
    return outputs_of(model, ds.select(model.feature_names).X)


def class_matrix(out: Outputs, ds: Dataset) -> np.ndarray:
    """A multiclass model's probabilities as columns in ``ds.classes`` order (a class the model
    never saw has probability 0)."""
    P = np.zeros((len(out), len(ds.classes)), dtype=np.float64)
    at = {c: i for i, c in enumerate(ds.classes)}
    for j, c in enumerate(out.classes):
        if c in at:
            P[:, at[c]] = out.proba[:, j]  # type: ignore[index]
    return P


def _check_task(model: Any, ds: Dataset) -> None:
    if task_of(model) != ds.task:
        raise ValueError(f"a {task_of(model)} model cannot be judged on {ds.task} labels")


def row_losses_of(model: Any, ds: Dataset, metric: str) -> np.ndarray:
    """Each row's loss of ``model`` on ``ds`` under ``metric`` (log_loss or brier for a
    classifier; rmse -> squared error, mae -> absolute error for a regression)."""
    _check_task(model, ds)
    return losses_of(outputs_on(model, ds), ds, metric)


def losses_of(out: Outputs, ds: Dataset, metric: str) -> np.ndarray:
    if ds.task == "binary":
        return row_losses(ds.y, out.scores, metric)  # type: ignore[arg-type]
    if ds.task == "multiclass":
        return _multiclass_losses(class_matrix(out, ds), ds.y, metric)
    return _regression_losses(ds.y, out.values, metric)  # type: ignore[arg-type]


def prior_row_losses(ds: Dataset, metric: str) -> tuple[np.ndarray, str]:
    """The losses of the model that knows nothing but the labels' distribution on ``ds``
    (the base rate, the class frequencies, the mean), and how to name it: what a first model
    must beat."""
    if ds.task == "binary":
        rate = float(np.mean(ds.y)) if ds.rows else 0.5
        return row_losses(ds.y, np.full(ds.rows, rate), metric), f"the base rate {rate:.3f}"
    if ds.task == "multiclass":
        freq = np.bincount(ds.y, minlength=len(ds.classes)) / max(ds.rows, 1)
        P = np.tile(freq, (ds.rows, 1))
        return _multiclass_losses(P, ds.y, metric), "the class frequencies"
    mean = float(ds.y.mean()) if ds.rows else 0.0
    return _regression_losses(ds.y, np.full(ds.rows, mean), metric), f"the mean {mean:.4g}"


def _multiclass_losses(P: np.ndarray, y: np.ndarray, rule: str) -> np.ndarray:
    rows = np.arange(len(y))
    if rule == "log_loss":
        return -np.log(np.clip(P[rows, y], EPS, 1.0))
    if rule == "brier":
        onehot = np.zeros_like(P)
        onehot[rows, y] = 1.0
        return ((P - onehot) ** 2).sum(axis=1)
    raise ValueError(f"not a proper scoring rule: {rule!r}")


def _regression_losses(y: np.ndarray, v: np.ndarray, metric: str) -> np.ndarray:
    if metric == "rmse":
        return (v - y) ** 2
    if metric == "mae":
        return np.abs(v - y)
    raise ValueError(f"not a regression error: {metric!r}")


def summarise(metric: str, losses: np.ndarray) -> float:
    """The metric from its row losses (the root of the mean for rmse, else the mean)."""
    mean = float(losses.mean()) if losses.size else float("nan")
    return math.sqrt(mean) if metric == "rmse" else mean


def evaluate(model: Any, ds: Dataset) -> dict[str, float]:
    """The metrics of ``model`` (any family) on ``ds`` for its task, and the row count."""
    _check_task(model, ds)
    return evaluate_outputs(outputs_on(model, ds), ds, getattr(model, "threshold", 0.5))


def evaluate_outputs(out: Outputs, ds: Dataset, threshold: float = 0.5) -> dict[str, float]:
    if ds.task == "binary":
        score = out.scores
        y = ds.y.astype(np.float64)
        return {
            "auc": roc_auc(ds.y, score),  # type: ignore[arg-type]
            "accuracy": float(((score >= threshold) == (y == 1)).mean()),  # type: ignore[operator]
            **{r: float(row_losses(y, score, r).mean()) for r in PROPER_SCORING_RULES},  # type: ignore[arg-type]
            "rows": float(ds.rows),
        }
    if ds.task == "multiclass":
        P = class_matrix(out, ds)
        aucs = [
            roc_auc((ds.y == k).astype(np.int8), P[:, k])
            for k in range(len(ds.classes))
            if 0 < int((ds.y == k).sum()) < ds.rows
        ]
        return {
            "accuracy": float((P.argmax(axis=1) == ds.y).mean()) if ds.rows else float("nan"),
            **{r: float(_multiclass_losses(P, ds.y, r).mean()) for r in PROPER_SCORING_RULES},
            "macro_auc": float(np.mean(aucs)) if aucs else float("nan"),
            "rows": float(ds.rows),
        }
    v = out.values
    sq = _regression_losses(ds.y, v, "rmse")  # type: ignore[arg-type]
    variance = float(ds.y.var()) if ds.rows else 0.0
    return {
        "rmse": summarise("rmse", sq),
        "mae": float(np.abs(v - ds.y).mean()),  # type: ignore[operator]
        "r2": 1.0 - float(sq.mean()) / variance if variance > 0 else float("nan"),
        "rows": float(ds.rows),
    }
