"""Loading any modelbus artifact behind one interface: ``load_model(data, format, sha256)``.

Formats (recorded in ``ArtifactRef.format``):

- ``modelbus.logreg.v1``: canonical JSON (the built-in family); loading cannot execute code.
- ``modelbus.river.v1``: a River online model, pickled.
- ``modelbus.pickle.v1``: a user model from a ``python`` training entry point, pickled.
- ``modelbus.onnx.v1``: an ONNX graph (scikit-learn estimators and pipelines, converted by
  skl2onnx) run by ONNX Runtime; loading it cannot execute Python code.

A pickled artifact is ``MAGIC`` + one canonical JSON header line (format, family, feature names,
threshold, library versions) + the pickle. Unpickling runs code, so ``load_model`` ALWAYS checks
the artifact's sha256 against the expected one (the registry record) first, and
``describe_artifact`` reads a pickled artifact's header without unpickling it (the registry uses
it, so the source of truth never runs model code).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .logreg import FORMAT as LOGREG_FORMAT
from .logreg import ArtifactError, LogisticModel
from .onnx import ONNX_FORMAT, load_onnx

RIVER_FORMAT = "modelbus.river.v1"
PICKLE_FORMAT = "modelbus.pickle.v1"
PICKLED_FORMATS = (RIVER_FORMAT, PICKLE_FORMAT)
FORMATS = (LOGREG_FORMAT, ONNX_FORMAT, *PICKLED_FORMATS)
# Formats whose loading runs no Python code from the artifact (no unpickling).
CODE_FREE_FORMATS = (LOGREG_FORMAT, ONNX_FORMAT)
MAGIC = b"MODELBUS-PICKLE-1\n"
PICKLE_PROTOCOL = 5


class ArtifactIntegrityError(ArtifactError):
    """The artifact's bytes do not hash to the expected sha256: never parsed, never unpickled."""


@runtime_checkable
class ServableModel(Protocol):
    """What serving and evaluation need from any model family."""

    feature_names: tuple[str, ...]
    threshold: float

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(label = 1) per row of ``X`` (shape (n, len(feature_names))) -> shape (n,)."""
        ...


@dataclass(frozen=True)
class ArtifactInfo:
    """What an artifact says about itself, read without running model code."""

    format: str
    family: str
    feature_names: tuple[str, ...]
    header: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PickledModel:
    """A River or user estimator behind the ``ServableModel`` interface."""

    feature_names: tuple[str, ...]
    estimator: Any
    family: str
    threshold: float = 0.5

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64).reshape(-1, len(self.feature_names))
        if self.family == "river":
            return self._river_proba(X)
        return self._user_proba(X)

    def _river_proba(self, X: np.ndarray) -> np.ndarray:
        # River vectorises only through ``predict_proba_many`` on a pandas DataFrame, and
        # modelbus does not install pandas: one ``predict_proba_one`` per row (a plain loop).
        names, predict = self.feature_names, self.estimator.predict_proba_one
        out = [predict(dict(zip(names, row, strict=True))).get(True, 0.0) for row in X.tolist()]
        return np.asarray(out, dtype=np.float64)

    def _user_proba(self, X: np.ndarray) -> np.ndarray:
        p = np.asarray(self.estimator.predict_proba(X), dtype=np.float64)
        if p.ndim == 2 and p.shape[1] == 2:
            p = p[:, 1]
        if p.shape != (X.shape[0],):
            raise ArtifactError(f"predict_proba returned shape {p.shape}, expected ({X.shape[0]},)")
        return p


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_sha256(data: bytes, expected: str) -> None:
    actual = sha256_of(data)
    if not hmac.compare_digest(actual, str(expected).lower()):
        raise ArtifactIntegrityError(f"sha256 mismatch: expected {expected}, got {actual}")


def dump_pickled(
    format: str,
    *,
    family: str,
    feature_names: tuple[str, ...] | list[str],
    estimator: Any,
    threshold: float = 0.5,
    meta: dict[str, Any] | None = None,
) -> bytes:
    """Serialise an estimator as a pickled artifact (deterministic for a deterministic object)."""
    if format not in PICKLED_FORMATS:
        raise ArtifactError(f"not a pickled format: {format!r}")
    header = {
        "format": format,
        "family": family,
        "feature_names": [str(n) for n in feature_names],
        "threshold": float(threshold),
        **(meta or {}),
    }
    line = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    return MAGIC + line + b"\n" + pickle.dumps(estimator, protocol=PICKLE_PROTOCOL)


def _split_pickled(data: bytes, format: str) -> tuple[dict[str, Any], bytes]:
    if not data.startswith(MAGIC):
        raise ArtifactError(f"not a {format} artifact (no modelbus pickle header)")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise ArtifactError("truncated artifact header")
    try:
        header = json.loads(data[len(MAGIC) : end])
    except ValueError as exc:
        raise ArtifactError(f"unreadable artifact header: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != format:
        found = header.get("format") if isinstance(header, dict) else None
        raise ArtifactError(f"artifact header says format {found!r}, the record says {format!r}")
    names = header.get("feature_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ArtifactError("artifact header has no feature names")
    return header, data[end + 1 :]


def describe_artifact(data: bytes, format: str, sha256: str) -> ArtifactInfo:
    """Verify the sha256 and read what the artifact declares; pickles are NOT unpickled."""
    verify_sha256(data, sha256)
    if format == LOGREG_FORMAT:
        model = LogisticModel.from_bytes(data)
        return ArtifactInfo(format, "logreg", model.feature_names)
    if format == ONNX_FORMAT:
        onnx_model = load_onnx(data)
        info = dict(onnx_model.header)
        return ArtifactInfo(format, onnx_model.family, onnx_model.feature_names, info)
    if format in PICKLED_FORMATS:
        header, _ = _split_pickled(data, format)
        names = tuple(header["feature_names"])
        return ArtifactInfo(format, str(header.get("family", "")), names, header)
    raise ArtifactError(f"unsupported artifact format {format!r}")


def load_model(data: bytes, format: str, sha256: str) -> ServableModel:
    """Verify ``sha256`` (ArtifactIntegrityError), then parse; ArtifactError if unusable."""
    verify_sha256(data, sha256)
    if format == LOGREG_FORMAT:
        return LogisticModel.from_bytes(data)
    if format == ONNX_FORMAT:
        return load_onnx(data)
    if format not in PICKLED_FORMATS:
        raise ArtifactError(f"unsupported artifact format {format!r}")
    header, payload = _split_pickled(data, format)
    try:
        # safe only because the sha256 was verified against the record above
        estimator = pickle.loads(payload)
    except Exception as exc:
        raise ArtifactError(f"artifact does not unpickle: {type(exc).__name__}: {exc}") from exc
    family = "river" if format == RIVER_FORMAT else "python"
    needed = "predict_proba_one" if family == "river" else "predict_proba"
    if not callable(getattr(estimator, needed, None)):
        raise ArtifactError(f"unpickled {type(estimator).__name__} has no {needed}()")
    names = tuple(header["feature_names"])
    return PickledModel(names, estimator, family, float(header.get("threshold", 0.5)))


__all__ = [
    "CODE_FREE_FORMATS",
    "FORMATS",
    "LOGREG_FORMAT",
    "ONNX_FORMAT",
    "PICKLED_FORMATS",
    "PICKLE_FORMAT",
    "RIVER_FORMAT",
    "ArtifactInfo",
    "ArtifactIntegrityError",
    "PickledModel",
    "ServableModel",
    "describe_artifact",
    "dump_pickled",
    "load_model",
    "verify_sha256",
]
