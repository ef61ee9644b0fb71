"""A served model: one registry version parsed, checked and warmed, ready to score (no I/O).

``serve_artifact`` turns an artifact's bytes into a ``Served``: the sha256 is checked against the
registry record before anything is parsed or unpickled, the artifact's features must be the ones
on record, and one warm-up prediction must succeed. Anything that stops the version from serving
is a ``LoadFailed``. The online scorer and the batch service both serve through this object;
``modelbus_platform.serving.load_version`` adds the fetch from the object store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .flavors import FORMATS, ServableModel, load_model
from .outputs import Outputs, classes_of, outputs_of, task_of


class LoadFailed(Exception):
    """The version on record cannot be served (integrity, unreadable, missing, warm-up failed)."""


@dataclass(frozen=True, slots=True)
class Served:
    """One loaded, verified and warmed model version. ``kinds`` gives each feature's kind
    (number | category) and ``nullable`` whether it may be missing: the scorer parses requests
    by them (all numbers, none missing: the float fast path)."""

    version: int
    model: ServableModel
    feature_names: tuple[str, ...]
    sha256: str
    kinds: tuple[str, ...] = ()
    nullable: tuple[bool, ...] = ()
    task: str = "binary"
    classes: tuple[str, ...] = ()
    # every feature a number that may not be missing: requests are float matrices (computed
    # once: the scorer asks on every request)
    numeric: bool = field(init=False)

    def __post_init__(self) -> None:
        numeric = all(k == "number" for k in self.kinds) and not any(self.nullable)
        object.__setattr__(self, "numeric", numeric)

    def score(self, X: np.ndarray) -> Outputs:
        """The model's outputs for the rows of ``X`` (columns in ``feature_names`` order)."""
        return outputs_of(self.model, X)

    def same_as(self, version: int, sha256: str) -> bool:
        return self.version == version and self.sha256 == sha256


def warm_rows(kinds: tuple[str, ...], rows: int = 1) -> np.ndarray:
    """A batch of neutral rows (0.0 for a number, "" for a category) to warm a model up."""
    if all(k == "number" for k in kinds):
        return np.zeros((rows, len(kinds)))
    X = np.empty((rows, len(kinds)), dtype=object)
    for j, kind in enumerate(kinds):
        X[:, j] = "" if kind == "category" else 0.0
    return X


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
    signature: Any = None,
) -> Served:
    """Parse ``data`` (sha256 verified first), check its features (and, with the registry's
    ``signature``, their kinds and the task), warm it up; ``LoadFailed`` if the version cannot
    serve."""
    check_servable(artifact_format)
    try:
        model = load_model(data, artifact_format, sha256)
        if model.feature_names != tuple(feature_names):
            raise LoadFailed(
                f"artifact features {list(model.feature_names)} differ from the registry "
                f"record {list(feature_names)}"
            )
        kinds = tuple(getattr(model, "kinds", ()) or ("number",) * len(model.feature_names))
        nullable = (False,) * len(kinds)
        task, classes = task_of(model), classes_of(model)
        if signature is not None:
            recorded = tuple(f.kind for f in signature.features)
            if recorded != kinds:
                raise LoadFailed(f"artifact feature kinds {list(kinds)} differ from the "
                                 f"registry's signature {list(recorded)}")  # fmt: skip
            if signature.task != task:
                raise LoadFailed(f"artifact is a {task} model, the signature says {signature.task}")
            nullable = tuple(f.nullable for f in signature.features)
        served = Served(version, model, model.feature_names, sha256, kinds, nullable, task, classes)
        served.score(warm_rows(kinds))  # warm-up
    except LoadFailed:
        raise
    except Exception as exc:
        raise LoadFailed(f"{type(exc).__name__}: {exc}") from exc
    return served
