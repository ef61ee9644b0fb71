"""The built-in model family: L2-regularised logistic regression in numpy.

Training is full-batch gradient descent on standardised features, so the same data, params and
seed give bit-identical weights. The artifact is canonical JSON (never pickle): loading it cannot
execute code, and its sha256 is stable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dataset import Dataset
from .params import Limit, bounded_all

FORMAT = "modelbus.logreg.v1"

DEFAULT_PARAMS: dict[str, Any] = {"l2": 1e-3, "learning_rate": 0.5, "epochs": 300, "threshold": 0.5}
# Each epoch is a full pass over the rows: 5,000 converges on anything this model can learn
# (the default is 300); 400,000 took 28 s of CPU on a small dataset and is refused.
LIMITS: dict[str, Limit] = {
    "l2": (float, 0.0, 1e3),
    "learning_rate": (float, 1e-6, 10.0),
    "epochs": (int, 1, 5000),
    "threshold": (float, 0.0, 1.0),
}


class ArtifactError(ValueError):
    pass


@dataclass(frozen=True)
class LogisticModel:
    feature_names: tuple[str, ...]
    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    threshold: float = 0.5

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(label = 1) for each row of ``X`` (shape (n, features)); vectorised."""
        z = ((X - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.predict_proba(X) >= self.threshold).astype(np.int8)

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "feature_names": list(self.feature_names),
            "coef": [float(v) for v in self.coef],
            "intercept": float(self.intercept),
            "mean": [float(v) for v in self.mean],
            "scale": [float(v) for v in self.scale],
            "threshold": float(self.threshold),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LogisticModel:
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise ArtifactError(f"not a {FORMAT} artifact: format={doc.get('format')!r}")
            names = tuple(str(n) for n in doc["feature_names"])
            coef = np.asarray(doc["coef"], dtype=np.float64)
            mean = np.asarray(doc["mean"], dtype=np.float64)
            scale = np.asarray(doc["scale"], dtype=np.float64)
            model = cls(names, coef, float(doc["intercept"]), mean, scale, float(doc["threshold"]))
        except ArtifactError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"unreadable artifact: {exc}") from exc
        if not (len(names) == coef.size == mean.size == scale.size) or not names:
            raise ArtifactError("artifact arrays do not match its feature names")
        if not (np.isfinite(coef).all() and np.isfinite(mean).all() and (scale > 0).all()):
            raise ArtifactError("artifact holds non-finite weights or non-positive scales")
        return model


def train_logreg(ds: Dataset, params: dict[str, Any] | None = None, seed: int = 0) -> LogisticModel:
    """Fit on ``ds``. ``seed`` fixes the initial weights; everything else is deterministic.
    Params outside ``LIMITS`` are a ValueError with the reason, before any epoch runs."""
    p = bounded_all({**DEFAULT_PARAMS, **(params or {})}, LIMITS)
    l2, lr, epochs = p["l2"], p["learning_rate"], p["epochs"]
    if ds.rows < 2 or len(set(ds.y.tolist())) < 2:
        raise ValueError("training needs at least two rows and both classes")
    mean = ds.X.mean(axis=0)
    scale = ds.X.std(axis=0)
    scale[scale == 0] = 1.0
    Xs = (ds.X - mean) / scale
    y = ds.y.astype(np.float64)
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.01, size=Xs.shape[1])
    b = 0.0
    n = float(ds.rows)
    for _ in range(epochs):
        p_hat = 1.0 / (1.0 + np.exp(-np.clip(Xs @ w + b, -500, 500)))
        err = p_hat - y
        w -= lr * (Xs.T @ err / n + l2 * w)
        b -= lr * float(err.sum() / n)
    return LogisticModel(ds.feature_names, w, b, mean, scale, float(p["threshold"]))
