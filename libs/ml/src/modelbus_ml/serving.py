"""A served model: one registry version parsed, checked and warmed, ready to score (no I/O).

``serve_artifact`` turns an artifact's bytes into a ``Served``: the sha256 is checked against the
registry record before anything is parsed or unpickled, the artifact's features must be the ones
on record, and one warm-up prediction must succeed. Anything that stops the version from serving
is a ``LoadFailed``. The online scorer and the batch service both serve through this object;
``modelbus_platform.serving.load_version`` adds the fetch from the object store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .flavors import FORMATS, ServableModel, load_model


class LoadFailed(Exception):
    """The version on record cannot be served (integrity, unreadable, missing, warm-up failed)."""


@dataclass(frozen=True, slots=True)
class Served:
    """One loaded, verified and warmed model version."""

    version: int
    model: ServableModel
    feature_names: tuple[str, ...]
    sha256: str

    def score(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and labels for the rows of ``X`` (columns in ``feature_names`` order)."""
        scores = self.model.predict_proba(X)
        # NaN fails every comparison, so this also refuses non-finite scores
        if len(scores) == 1:
            ok = 0.0 <= scores.item() <= 1.0
        else:
            ok = scores.min() >= 0.0 and scores.max() <= 1.0
        if not ok:
            raise FloatingPointError("model produced scores outside [0, 1] (or NaN)")
        labels = (scores >= self.model.threshold).astype(np.int64)
        return scores, labels

    def same_as(self, version: int, sha256: str) -> bool:
        return self.version == version and self.sha256 == sha256


def check_servable(artifact_format: str) -> None:
    """``LoadFailed`` for a format no model family can load (checked before any fetch)."""
    if artifact_format not in FORMATS:
        raise LoadFailed(f"unsupported artifact format {artifact_format!r}")


def serve_artifact(
    data: bytes,
    *,
    version: int,
    artifact_format: str,
    sha256: str,
    feature_names: Sequence[str],
) -> Served:
    """Parse ``data`` (sha256 verified first), check its features, warm it up; ``LoadFailed``
    if the version cannot serve."""
    check_servable(artifact_format)
    try:
        model = load_model(data, artifact_format, sha256)
        if model.feature_names != tuple(feature_names):
            raise LoadFailed(
                f"artifact features {list(model.feature_names)} differ from the registry "
                f"record {list(feature_names)}"
            )
        served = Served(version, model, model.feature_names, sha256)
        served.score(np.zeros((1, len(model.feature_names))))  # warm-up
    except LoadFailed:
        raise
    except Exception as exc:
        raise LoadFailed(f"{type(exc).__name__}: {exc}") from exc
    return served
