"""Binary-classification metrics, computed the same way by the trainer and the deployer."""

from __future__ import annotations

import numpy as np

from .dataset import Dataset
from .flavors import ServableModel


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


PROPER_SCORING_RULES = ("log_loss", "brier")  # per row, lower is better
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
    """``model``'s probability of class 1 for every row of ``ds`` (its features, its order)."""
    return model.predict_proba(ds.X[:, [ds.feature_names.index(n) for n in model.feature_names]])


def evaluate(model: ServableModel, ds: Dataset) -> dict[str, float]:
    """auc, accuracy, log_loss, brier and row count of ``model`` (any family) on ``ds``."""
    score = scores_of(model, ds)
    y = ds.y.astype(np.float64)
    return {
        "auc": roc_auc(ds.y, score),
        "accuracy": float(((score >= getattr(model, "threshold", 0.5)) == (y == 1)).mean()),
        **{rule: float(row_losses(y, score, rule).mean()) for rule in PROPER_SCORING_RULES},
        "rows": float(ds.rows),
    }
