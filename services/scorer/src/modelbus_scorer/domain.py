"""The scorer's pure core: which model serves each name, request parsing, and scoring.

Requests are parsed by the served version's signature. A model whose features are all numbers
that may not be missing takes the float fast path (whole float matrices, checked in one go);
any other model the general path: per feature, the rules of ``modelbus_ml.inputs`` (numbers,
categories, nulls where nullable) into an object matrix (float64 when every feature is a
number), every refusal naming the feature and the row.

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
from modelbus_ml.inputs import BadValue, InputSpec, check_column, few
from modelbus_ml.outputs import Outputs
from modelbus_ml.serving import Served

V2_DATATYPES = {"FP32": float, "FP64": float, "INT32": int, "INT64": int}
# the general path also takes BYTES (a category feature's strings)
V2_ALL_DATATYPES = {**V2_DATATYPES, "BYTES": str}
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
    outputs: Outputs
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
        return Scored(current, current.score(X), "champion", current.feature_names)
    except Exception as exc:
        previous = slots.previous
        if previous is None:
            raise ModelUnavailable("predict_failed", f"model failed: {exc}") from exc
        try:
            columns = project(current.feature_names, previous.feature_names)
            outputs = previous.score(X[:, columns])
        except Exception as fallback_exc:
            raise ModelUnavailable(
                "predict_failed", f"model and fallback failed: {exc}; {fallback_exc}"
            ) from fallback_exc
        return Scored(previous, outputs, "fallback", current.feature_names)


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
    extra = sorted(got - wanted, key=str)
    raise InvalidInput(
        "feature_mismatch",
        f"{where}: missing features {few(missing)}, unknown features {few(extra)}",
    )


def rows_to_matrix(
    instances: Any, names: tuple[str, ...], limit: int = 1_000_000, where: str = "instances"
) -> np.ndarray:
    """The fast path: ``[{feature: number, ...}, ...]`` -> an (n, k) float matrix in ``names``
    order."""
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


def rows_by_signature(
    instances: Any, spec: InputSpec, limit: int = 1_000_000, where: str = "instances"
) -> np.ndarray:
    """The general path: ``[{feature: number | category | null, ...}, ...]`` -> an (n, k)
    matrix in the model's order, each value checked by its feature's kind and nullability."""
    if not isinstance(instances, list):
        raise InvalidInput("bad_request", f"{where} must be a list of objects")
    check_batch_size(len(instances), limit)
    wanted = frozenset(spec.names)
    for i, row in enumerate(instances):
        if not isinstance(row, dict):
            raise InvalidInput("bad_request", f"{where}[{i}] must be an object")
        check_feature_names(row.keys(), wanted, f"{where}[{i}]")
    X = spec.empty(len(instances))
    for j, (name, kind, nullable) in enumerate(spec.features()):
        X[:, j] = checked([row[name] for row in instances], kind, nullable, name)
    return X


def checked(values: list[Any], kind: str, nullable: bool, feature: str) -> list[Any]:
    """One feature's values by the shared rules, a refusal as ``InvalidInput``."""
    try:
        return check_column(values, kind, nullable, feature)
    except BadValue as exc:
        raise InvalidInput(exc.reason, exc.detail) from None


def parse_rows(
    instances: Any, served: Served, limit: int = 1_000_000, where: str = "instances"
) -> np.ndarray:
    """Rows of a request as the served model's input matrix (fast path when it can)."""
    if served.numeric:
        return rows_to_matrix(instances, served.feature_names, limit, where)
    return rows_by_signature(instances, InputSpec.of(served), limit, where)


@dataclass(slots=True)  # per request: not frozen (a frozen init costs ~2x)
class NativeRequest:
    X: np.ndarray
    request_id: str | None


def parse_native(body: Any, served: Served, limit: int) -> NativeRequest:
    """``{"instances": [{..}, ..]}`` or ``{"features": {..}}``, optional ``request_id``."""
    if not isinstance(body, dict):
        raise InvalidInput("bad_request", "body must be a JSON object")
    request_id = body.get("request_id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("bad_request", "request_id must be a string")
    if "instances" in body:
        X = parse_rows(body["instances"], served, limit)
    elif "features" in body:
        X = parse_rows([body["features"]], served, limit, where="features")
    else:
        raise InvalidInput("bad_request", 'body needs "instances": [...] or "features": {...}')
    return NativeRequest(X, request_id)


@dataclass(slots=True)  # per request: not frozen (a frozen init costs ~2x)
class V2Request:
    X: np.ndarray
    id: str | None


def parse_v2(body: Any, served: Served, limit: int) -> V2Request:
    """An Open Inference Protocol v2 infer request: one input per feature (shape [n] or [n, 1];
    BYTES for a category feature, FP32/FP64/INT32/INT64 for a number), or, for a model whose
    features are all numbers, one 2-D input of shape [n, k] with columns in feature order."""
    if not isinstance(body, dict):
        raise InvalidInput("bad_request", "body must be a JSON object")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("bad_request", "id must be a string")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("bad_request", '"inputs" must be a non-empty list')
    if not served.numeric:
        return V2Request(_inputs_by_signature(inputs, InputSpec.of(served), limit), request_id)
    names = served.feature_names
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


def _tensor(raw: Any, i: int, datatypes: dict[str, type] = V2_DATATYPES) -> _Tensor:
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
    if datatype not in datatypes:
        raise InvalidInput(
            "bad_datatype", f"{where}.datatype {datatype!r} not in {sorted(datatypes)}"
        )
    data = _flatten(raw.get("data"), where)
    if len(data) != math.prod(shape):
        raise InvalidInput(
            "length_mismatch",
            f"{where}: shape {shape} needs {math.prod(shape)} values, got {len(data)}",
        )
    if datatypes[datatype] is int and not all(type(v) is int for v in data):
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
    n = _feature_rows(tensors, names, limit)
    by_name = {t.name: t for t in tensors}
    columns = [to_matrix(by_name[f].data, n, 1, f"input {f!r}") for f in names]
    return np.hstack(columns)


def _inputs_by_signature(inputs: list[Any], spec: InputSpec, limit: int) -> np.ndarray:
    """The general path: one input per feature, its datatype by the feature's kind (BYTES for
    a category, a number type for a number), its values by the shared rules."""
    tensors = [_tensor(t, i, V2_ALL_DATATYPES) for i, t in enumerate(inputs)]
    if len(tensors) == 1 and _is_matrix(tensors[0], spec.names):
        raise InvalidInput(
            "feature_mismatch",
            f"a single [n, k] input is only for models whose features are all numbers; "
            f"send one input per feature {list(spec.names)}",
        )
    n = _feature_rows(tensors, spec.names, limit)
    by_name = {t.name: t for t in tensors}
    X = spec.empty(n)
    for j, (name, kind, nullable) in enumerate(spec.features()):
        t = by_name[name]
        wanted = "BYTES" if kind == "category" else "a number type (FP32, FP64, INT32, INT64)"
        if (t.datatype == "BYTES") != (kind == "category"):
            raise InvalidInput(
                "bad_datatype", f"input {name!r} is a {kind} feature: {t.datatype}, not {wanted}"
            )
        X[:, j] = checked(t.data, kind, nullable, name)
    return X


def _feature_rows(tensors: list[_Tensor], names: tuple[str, ...], limit: int) -> int:
    """Per-feature inputs: one per feature, each [n] or [n, 1], the same n; returns n."""
    by_name = {t.name: t for t in tensors}
    if len(by_name) != len(tensors):
        raise InvalidInput("feature_mismatch", "an input name appears twice")
    check_feature_names(by_name.keys(), frozenset(names), "inputs")
    for t in tensors:
        if len(t.shape) > 2 or (len(t.shape) == 2 and t.shape[1] != 1):
            raise InvalidInput(
                "bad_shape", f"input {t.name!r}: shape {list(t.shape)}, expected [n] or [n, 1]"
            )
    rows = {t.shape[0] for t in tensors}
    if len(rows) != 1:
        raise InvalidInput("length_mismatch", f"inputs have different row counts {sorted(rows)}")
    n = rows.pop()
    check_batch_size(n, limit)
    return n


def features_to_matrix(features: dict[str, Any], served: Served) -> np.ndarray:
    """One stream record -> a (1, k) matrix, or ``InvalidInput``."""
    return parse_rows([features], served, where="features")
