"""An example ``python``-family training entry point (and the tests' user model):
``modelbus_ml.examples:train_gaussian_nb``, a Gaussian naive Bayes in numpy.

It shows the interface a user entry point implements (see ``modelbus_ml.families``) and is
importable wherever modelbus_ml is installed, so its pickled models can be served anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class GaussianNB:
    """Per-class feature means and variances; P(y=1 | x) from the class log-likelihoods."""

    prior: np.ndarray  # (2,)
    mean: np.ndarray  # (2, features)
    var: np.ndarray  # (2, features)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        ll = np.stack(
            [
                np.log(self.prior[c])
                - 0.5
                * (np.log(2 * np.pi * self.var[c]) + (X - self.mean[c]) ** 2 / self.var[c]).sum(
                    axis=1
                )
                for c in (0, 1)
            ],
            axis=1,
        )
        ll -= ll.max(axis=1, keepdims=True)
        p = np.exp(ll)
        return p / p.sum(axis=1, keepdims=True)  # (n, 2)


def train_gaussian_nb(
    X: np.ndarray, y: np.ndarray, feature_names: list[str], params: dict[str, Any], seed: int
) -> GaussianNB:
    """Fit; ``params["var_smoothing"]`` (default 1e-9, relative to the largest variance)."""
    smoothing = float(params.get("var_smoothing", 1e-9)) * float(X.var(axis=0).max() or 1.0)
    classes = [X[y == c] for c in (0, 1)]
    if any(len(part) == 0 for part in classes):
        raise ValueError("training needs both classes")
    prior = np.array([len(part) / len(X) for part in classes])
    mean = np.stack([part.mean(axis=0) for part in classes])
    var = np.stack([part.var(axis=0) for part in classes]) + smoothing
    return GaussianNB(prior, mean, var)
