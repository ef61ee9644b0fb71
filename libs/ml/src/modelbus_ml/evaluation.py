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


def evaluate(model: ServableModel, ds: Dataset) -> dict[str, float]:
    """auc, accuracy, log_loss, brier and row count of ``model`` (any family) on ``ds``."""
    X = ds.X[:, [ds.feature_names.index(n) for n in model.feature_names]]
    score = model.predict_proba(X)
    y = ds.y.astype(np.float64)
    eps = 1e-12
    clipped = np.clip(score, eps, 1 - eps)
    return {
        "auc": roc_auc(ds.y, score),
        "accuracy": float(((score >= getattr(model, "threshold", 0.5)) == (y == 1)).mean()),
        "log_loss": float(-(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)).mean()),
        "brier": float(((score - y) ** 2).mean()),
        "rows": float(ds.rows),
    }
