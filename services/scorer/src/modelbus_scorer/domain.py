"""The scorer's pure core: which model serves each name, request parsing, and scoring.

No I/O here. The ``ModelHolder`` keeps, per model name, an immutable ``Slots`` pair (``current``
and the warm last-good ``previous``). A swap builds the new pair fully, then replaces the
reference in one assignment: a request reads the pair once and keeps that reference, so requests
in flight finish on the model they started with and no lock sits on the hot path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelbus_contracts import ServedBy
from modelbus_ml.serving import Served

V2_DATATYPES = {"FP32": float, "FP64": float, "INT32": int, "INT64": int}
_NUMBER_TYPES = frozenset({int, float})


class InvalidInput(ValueError):
    """A request the scorer refuses; ``reason`` is a short code (a metric label)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ModelUnavailable(Exception):
    """No model can answer: ``reason`` is unknown_model, model_not_loaded or predict_failed."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Slots:
    current: Served | None = None
    previous: Served | None = None


@dataclass(slots=True)  # per request: not frozen (a frozen init costs ~2x)
class Scored:
    served: Served
    scores: np.ndarray
    labels: np.ndarray
    served_by: ServedBy
    features: tuple[str, ...]  # the request matrix's columns (the current model's features)


class ModelHolder:
    """Per model name: the serving pair. Reads take no lock; a swap is one assignment."""

    def __init__(self) -> None:
        self._slots: dict[str, Slots] = {}

    def names(self) -> list[str]:
        return sorted(self._slots)

    def know(self, name: str) -> None:
        """Record that the registry has this model (so it is 503 until loaded, not 404)."""
        self._slots.setdefault(name, Slots())

    def get(self, name: str) -> Slots | None:
        return self._slots.get(name)

    def swap(self, name: str, served: Served) -> Slots:
        """Make ``served`` current; the old current becomes the warm ``previous``."""
        old = self._slots.get(name, Slots())
        if old.current is not None and old.current.same_as(served.version, served.sha256):
            return old
        if old.current is None:
            new = Slots(current=served, previous=old.previous)
        else:
            new = Slots(current=served, previous=old.current)
        self._slots[name] = new
        return new


def serving_slots(holder: ModelHolder, name: str) -> tuple[Served, Slots]:
    """The pair to serve ``name`` with, read once, or ``ModelUnavailable``."""
    slots = holder.get(name)
    if slots is None:
        raise ModelUnavailable("unknown_model", f"unknown model {name!r}")
    if slots.current is None:
        raise ModelUnavailable("model_not_loaded", f"model {name!r} has no loaded version yet")
    return slots.current, slots


def predict(slots: Slots, current: Served, X: np.ndarray) -> Scored:
    """Score on the current model; if it raises, answer from the warm previous one."""
    try:
        scores, labels = current.score(X)
        return Scored(current, scores, labels, "champion", current.feature_names)
    except Exception as exc:
        previous = slots.previous
        if previous is None:
            raise ModelUnavailable("predict_failed", f"model failed: {exc}") from exc
        try:
            columns = project(current.feature_names, previous.feature_names)
            scores, labels = previous.score(X[:, columns])
        except Exception as fallback_exc:
            raise ModelUnavailable(
                "predict_failed", f"model and fallback failed: {exc}; {fallback_exc}"
            ) from fallback_exc
        return Scored(previous, scores, labels, "fallback", current.feature_names)


def project(have: Sequence[str], want: Sequence[str]) -> list[int]:
    """Column indexes that turn a matrix in ``have`` order into ``want`` order."""
    index = {name: i for i, name in enumerate(have)}
    missing = [n for n in want if n not in index]
    if missing:
        raise KeyError(f"fallback model needs features {missing}")
    return [index[n] for n in want]


# --- request parsing -------------------------------------------------------------------------


def check_numbers(values: list[Any], where: str) -> None:
    """Every value must be a JSON number: not a bool, string or null."""
    if not _NUMBER_TYPES.issuperset(map(type, values)):
        bad = next(v for v in values if type(v) not in _NUMBER_TYPES)
        raise InvalidInput("not_a_number", f"{where}: {bad!r} is not a number")


def to_matrix(values: list[Any], rows: int, cols: int, where: str) -> np.ndarray:
    check_numbers(values, where)
    try:
        X = np.asarray(values, dtype=np.float64).reshape(rows, cols)
    except (OverflowError, ValueError) as exc:
        raise InvalidInput("not_a_number", f"{where}: {exc}") from exc
    if not np.isfinite(X).all():
        raise InvalidInput("non_finite", f"{where}: NaN or infinite values are not allowed")
    return X


def check_batch_size(rows: int, limit: int) -> None:
    if rows == 0:
        raise InvalidInput("empty_batch", "no instances to score")
    if rows > limit:
        raise InvalidInput("too_many_instances", f"{rows} instances, at most {limit} per request")


def check_feature_names(keys: Any, wanted: frozenset[str], where: str) -> None:
    """``keys`` (a dict's keys view) must be exactly the model's feature names."""
    if keys == wanted:
        return
    got = set(keys)
    missing = sorted(wanted - got)
    extra = sorted(got - wanted)
    raise InvalidInput(
        "feature_mismatch", f"{where}: missing features {missing}, unknown features {extra}"
    )


def rows_to_matrix(
    instances: Any, names: tuple[str, ...], limit: int = 1_000_000, where: str = "instances"
) -> np.ndarray:
    """``[{feature: number, ...}, ...]`` -> an (n, k) float matrix in ``names`` order."""
    if not isinstance(instances, list):
        raise InvalidInput("bad_request", f"{where} must be a list of objects")
    check_batch_size(len(instances), limit)
    wanted = frozenset(names)
    flat: list[Any] = []
    for i, row in enumerate(instances):
        if not isinstance(row, dict):
            raise InvalidInput("bad_request", f"{where}[{i}] must be an object")
        check_feature_names(row.keys(), wanted, f"{where}[{i}]")
        flat.extend(row[n] for n in names)
    return to_matrix(flat, len(instances), len(names), where)


@dataclass(slots=True)  # per request: not frozen (a frozen init costs ~2x)
class NativeRequest:
    X: np.ndarray
    request_id: str | None


def parse_native(body: Any, names: tuple[str, ...], limit: int) -> NativeRequest:
    """``{"instances": [{..}, ..]}`` or ``{"features": {..}}``, optional ``request_id``."""
    if not isinstance(body, dict):
        raise InvalidInput("bad_request", "body must be a JSON object")
    request_id = body.get("request_id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("bad_request", "request_id must be a string")
    if "instances" in body:
        X = rows_to_matrix(body["instances"], names, limit)
    elif "features" in body:
        X = rows_to_matrix([body["features"]], names, limit, where="features")
    else:
        raise InvalidInput("bad_request", 'body needs "instances": [...] or "features": {...}')
    return NativeRequest(X, request_id)


@dataclass(slots=True)  # per request: not frozen (a frozen init costs ~2x)
class V2Request:
    X: np.ndarray
    id: str | None


def parse_v2(body: Any, names: tuple[str, ...], limit: int) -> V2Request:
    """An Open Inference Protocol v2 infer request: one input per feature (shape [n] or [n, 1]),
    or one 2-D input of shape [n, k] with columns in feature order."""
    if not isinstance(body, dict):
        raise InvalidInput("bad_request", "body must be a JSON object")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("bad_request", "id must be a string")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("bad_request", '"inputs" must be a non-empty list')
    X = _plain_matrix(inputs, names, limit)
    if X is not None:
        return V2Request(X, request_id)
    tensors = [_tensor(t, i) for i, t in enumerate(inputs)]
    if len(tensors) == 1 and _is_matrix(tensors[0], names):
        X = _matrix_input(tensors[0], names, limit)
    else:
        X = _per_feature_inputs(tensors, names, limit)
    return V2Request(X, request_id)


_FLOAT_DATATYPES = frozenset({"FP32", "FP64"})


def _plain_matrix(inputs: list[Any], names: tuple[str, ...], limit: int) -> np.ndarray | None:
    """The common request, checked in one go: a single FP32/FP64 input of shape [n, k] with
    flat, finite, numeric data in feature order. None for anything else (or anything wrong):
    the general path then parses it and names the problem."""
    if len(inputs) != 1:
        return None
    tensor = inputs[0]
    if type(tensor) is not dict or tensor.get("datatype") not in _FLOAT_DATATYPES:
        return None
    shape, data, name = tensor.get("shape"), tensor.get("data"), tensor.get("name")
    if type(shape) is not list or len(shape) != 2 or type(data) is not list:
        return None
    rows, cols = shape
    if (
        type(rows) is not int
        or type(cols) is not int
        or type(name) is not str
        or cols != len(names)
        or not 0 < rows <= limit
        or len(data) != rows * cols
        or (cols == 1 and name in names)  # one feature's [n, 1] column: the general path
        or not _NUMBER_TYPES.issuperset(map(type, data))
    ):
        return None
    try:
        X = np.asarray(data, dtype=np.float64).reshape(rows, cols)
    except (OverflowError, ValueError):
        return None
    return X if np.isfinite(X).all() else None


@dataclass(slots=True)  # per request: not frozen (a frozen init costs ~2x)
class _Tensor:
    name: str
    shape: tuple[int, ...]
    datatype: str
    data: list[Any]


def _tensor(raw: Any, i: int) -> _Tensor:
    where = f"inputs[{i}]"
    if not isinstance(raw, dict):
        raise InvalidInput("bad_request", f"{where} must be an object")
    name, shape, datatype = raw.get("name"), raw.get("shape"), raw.get("datatype")
    if not isinstance(name, str):
        raise InvalidInput("bad_request", f"{where}.name must be a string")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise InvalidInput("bad_shape", f"{where}.shape must be a list of non-negative integers")
    if datatype not in V2_DATATYPES:
        raise InvalidInput(
            "bad_datatype", f"{where}.datatype {datatype!r} not in {sorted(V2_DATATYPES)}"
        )
    data = _flatten(raw.get("data"), where)
    if len(data) != math.prod(shape):
        raise InvalidInput(
            "length_mismatch",
            f"{where}: shape {shape} needs {math.prod(shape)} values, got {len(data)}",
        )
    if V2_DATATYPES[datatype] is int and not all(type(v) is int for v in data):
        raise InvalidInput("not_a_number", f"{where}: {datatype} data must be integers")
    return _Tensor(name, tuple(shape), datatype, data)


def _flatten(data: Any, where: str) -> list[Any]:
    """v2 allows row-major nested lists; flatten them to one list."""
    if not isinstance(data, list):
        raise InvalidInput("bad_request", f"{where}.data must be a list")
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    for v in data:
        flat.extend(_flatten(v, where) if isinstance(v, list) else [v])
    return flat


def _is_matrix(t: _Tensor, names: tuple[str, ...]) -> bool:
    """A single 2-D input is the whole matrix, unless it is one feature's [n, 1] column."""
    return len(t.shape) == 2 and not (t.name in names and t.shape[1] == 1)


def _matrix_input(t: _Tensor, names: tuple[str, ...], limit: int) -> np.ndarray:
    rows, cols = t.shape
    if cols != len(names):
        raise InvalidInput(
            "feature_mismatch",
            f"input {t.name!r} has {cols} columns, the model has "
            f"{len(names)} features {list(names)}",
        )
    check_batch_size(rows, limit)
    return to_matrix(t.data, rows, cols, f"input {t.name!r}")


def _per_feature_inputs(tensors: list[_Tensor], names: tuple[str, ...], limit: int) -> np.ndarray:
    by_name = {t.name: t for t in tensors}
    if len(by_name) != len(tensors):
        raise InvalidInput("feature_mismatch", "an input name appears twice")
    check_feature_names(by_name.keys(), frozenset(names), "inputs")
    rows = {t.shape[0] for t in tensors}
    for t in tensors:
        if len(t.shape) > 2 or (len(t.shape) == 2 and t.shape[1] != 1):
            raise InvalidInput(
                "bad_shape", f"input {t.name!r}: shape {list(t.shape)}, expected [n] or [n, 1]"
            )
    if len(rows) != 1:
        raise InvalidInput("length_mismatch", f"inputs have different row counts {sorted(rows)}")
    n = rows.pop()
    check_batch_size(n, limit)
    columns = [to_matrix(by_name[f].data, n, 1, f"input {f!r}") for f in names]
    return np.hstack(columns)


def features_to_matrix(features: dict[str, float], names: tuple[str, ...]) -> np.ndarray:
    """One stream record -> a (1, k) matrix, or ``InvalidInput``."""
    return rows_to_matrix([features], names, where="features")
