"""What a model gives for a batch of rows, for every task, in one shape: ``Outputs``.

- binary: ``scores`` (P(class 1)) and ``labels`` (0/1 at the model's threshold);
- multiclass: ``proba`` (n, classes), ``labels`` (the most probable class, a string) and
  ``scores`` (its probability);
- regression: ``values``.

``outputs_of(model, X)`` runs any ``ServableModel`` and checks what comes back (probabilities
within [0, 1], finite values): a model that answers nonsense raises ``FloatingPointError``.
``record(i)`` is row ``i`` as the fields of a ``PredictionMade`` event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PROBABILITY_SLACK = 1e-3  # float32 rounding: a probability of 1.0000001, a row summing to 0.9999


def task_of(model: Any) -> str:
    return str(getattr(model, "task", "binary"))


def classes_of(model: Any) -> tuple[str, ...]:
    return tuple(getattr(model, "classes", ()) or ())


@dataclass(slots=True)  # per request: not frozen (a frozen init costs ~2x)
class Outputs:
    task: str
    classes: tuple[str, ...]
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    proba: np.ndarray | None = None
    values: np.ndarray | None = None

    def __len__(self) -> int:
        held = self.values if self.values is not None else self.scores
        return 0 if held is None else len(held)

    def take(self, index: Any) -> Outputs:
        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return Outputs(
            self.task,
            self.classes,
            cut(self.scores),
            cut(self.labels),
            cut(self.proba),
            cut(self.values),
        )

    def record(self, i: int) -> dict[str, Any]:
        """Row ``i`` as ``PredictionMade`` fields: score, label, probabilities, value."""
        if self.task == "regression":
            return {
                "score": None,
                "label": None,
                "probabilities": None,
                "value": float(self.values[i]),
            }  # type: ignore[index]
        fields: dict[str, Any] = {
            "score": float(self.scores[i]),  # type: ignore[index]
            "label": self.labels[i].item() if self.task == "binary" else self.labels[i],  # type: ignore[index]
            "probabilities": None,
            "value": None,
        }
        if self.proba is not None:
            fields["probabilities"] = dict(zip(self.classes, self.proba[i].tolist(), strict=True))
        return fields

    def records(self) -> list[dict[str, Any]]:
        return [self.record(i) for i in range(len(self))]

    def label_list(self) -> list[Any]:
        """Each row's predicted class (binary 0/1, multiclass the class) or value."""
        if self.task == "regression":
            return self.values.tolist()  # type: ignore[union-attr]
        return self.labels.tolist()  # type: ignore[union-attr]


def outputs_of(model: Any, X: np.ndarray) -> Outputs:
    """Run ``model`` on the rows of ``X`` (its features, in its order) and check the answer."""
    task = task_of(model)
    if task == "regression":
        values = np.asarray(model.predict_values(X), dtype=np.float64).reshape(-1)
        if values.shape != (len(X),) or not np.isfinite(values).all():
            raise FloatingPointError("model produced non-finite values (or the wrong shape)")
        return Outputs(task, (), values=values)
    p = np.asarray(model.predict_proba(X), dtype=np.float64)
    low, high = -PROBABILITY_SLACK, 1.0 + PROBABILITY_SLACK
    if task == "binary":
        # NaN fails every comparison, so this also refuses non-finite scores
        lo, hi = (v := p.item(), v) if len(p) == 1 else (p.min(), p.max())
        if not (lo >= low and hi <= high):
            raise FloatingPointError("model produced scores outside [0, 1] (or NaN)")
        if lo < 0.0 or hi > 1.0:
            p = np.clip(p, 0.0, 1.0)  # float32 rounding (a forest's 1.0000001)
        labels = (p >= model.threshold).astype(np.int64)
        return Outputs(task, (), scores=p, labels=labels)
    classes = classes_of(model)
    if p.ndim != 2 or p.shape != (len(X), len(classes)):
        raise FloatingPointError(f"model gave probabilities of shape {p.shape}")
    if not (p.min() >= low and p.max() <= high):
        raise FloatingPointError("model produced probabilities outside [0, 1] (or NaN)")
    p = np.clip(p, 0.0, 1.0)
    if np.abs(p.sum(axis=1) - 1.0).max() > PROBABILITY_SLACK:
        raise FloatingPointError("model's class probabilities do not sum to 1")
    best = p.argmax(axis=1)
    labels = np.asarray(classes, dtype=object)[best]
    return Outputs(task, classes, scores=p[np.arange(len(best)), best], labels=labels, proba=p)
