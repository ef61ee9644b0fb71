"""Models served through ONNX Runtime: the artifact is an ONNX graph, so loading it runs no
Python code (no unpickling), whatever trained it.

An ONNX artifact (format ``modelbus.onnx.v1``) is a serialised ONNX model with the modelbus
header in its metadata properties (``modelbus.*``: format, family, feature names, threshold,
the probabilities output, library versions). It is either converted by skl2onnx from a model the
trainer fitted (``to_onnx_artifact``) or a classifier trained elsewhere and imported through the
registry (``import_onnx``: any converter, any framework, checked and given the header).
``OnnxModel`` serves it behind the ``ServableModel`` interface: one float input of shape
(n, features) in feature order, the probability of class 1 read from the probabilities output
(a float tensor of shape (n, 2)).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .logreg import ArtifactError

ONNX_FORMAT = "modelbus.onnx.v1"
PREFIX = "modelbus."
PROBABILITIES = "probabilities"
TARGET_OPSET = 17
ONNXMLTOOLS_OPSET = 15  # the highest onnxmltools 1.16 converts to


CONVERTERS = ("skl2onnx", "lightgbm", "xgboost")


def _initial_types(feature_names: tuple[str, ...], kinds: tuple[str, ...], converter: str):
    """One float matrix ``X`` when every feature is a number; else one [n, 1] input per
    feature, float or string (what a ``ColumnTransformer`` over mixed columns converts from)."""
    if converter == "skl2onnx":
        from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    else:
        from onnxmltools.convert.common.data_types import FloatTensorType, StringTensorType
    if all(k == "number" for k in kinds):
        return [("X", FloatTensorType([None, len(feature_names)]))]
    return [
        (name, StringTensorType([None, 1]) if kind == "category" else FloatTensorType([None, 1]))
        for name, kind in zip(feature_names, kinds, strict=True)
    ]


def _convert(estimator: Any, initial: list[Any], converter: str, classifier: bool) -> Any:
    """The ONNX graph of a fitted model: scikit-learn through skl2onnx, LightGBM and XGBoost
    through onnxmltools; class probabilities as a float (n, classes) tensor, no zipmap."""
    if converter == "skl2onnx":
        from skl2onnx import to_onnx

        options = {id(estimator): {"zipmap": False}} if classifier else None
        return to_onnx(estimator, initial_types=initial, options=options, target_opset=TARGET_OPSET)
    import onnxmltools

    if converter == "lightgbm":
        return onnxmltools.convert_lightgbm(
            estimator, initial_types=initial, zipmap=False, target_opset=ONNXMLTOOLS_OPSET
        )
    if converter == "xgboost":
        return onnxmltools.convert_xgboost(
            estimator, initial_types=initial, target_opset=ONNXMLTOOLS_OPSET
        )
    raise ArtifactError(f"unknown ONNX converter {converter!r}; known: {list(CONVERTERS)}")


def to_onnx_artifact(
    estimator: Any,
    *,
    family: str,
    feature_names: tuple[str, ...],
    threshold: float,
    meta: dict[str, Any] | None = None,
    converter: str = "skl2onnx",
    kinds: tuple[str, ...] = (),
    task: str = "binary",
    classes: tuple[str, ...] = (),
) -> bytes:
    """A fitted model (a scikit-learn estimator or pipeline, a LightGBM or XGBoost model) as
    ONNX bytes with the modelbus header: its features and their kinds, its task and (multiclass)
    its classes in probability order. Deterministic: the same fitted estimator gives the same
    bytes."""
    kinds = tuple(kinds) or ("number",) * len(feature_names)
    initial = _initial_types(tuple(feature_names), kinds, converter)
    try:
        graph = _convert(estimator, initial, converter, classifier=task != "regression")
    except ArtifactError:
        raise
    except Exception as exc:  # an estimator the converter cannot convert
        raise ArtifactError(f"cannot convert {type(estimator).__name__} to ONNX: {exc}") from exc
    graph.graph.name = f"modelbus-{family}"  # onnxmltools names it with a random uuid
    session = _session(graph.SerializeToString())
    k = 2 if task == "binary" else len(classes)
    output = _value_output(session) if task == "regression" else _probabilities_output(session, k)
    header = {
        "format": ONNX_FORMAT,
        "family": family,
        "feature_names": json.dumps([str(n) for n in feature_names]),
        "threshold": repr(float(threshold)),
        "probabilities_output": output,
        **_task_header(task, classes, kinds),
        **{k: json.dumps(v, sort_keys=True) for k, v in (meta or {}).items()},
    }
    for key, value in sorted(header.items()):
        prop = graph.metadata_props.add()
        prop.key, prop.value = PREFIX + key, value
    return bytes(graph.SerializeToString())


def _task_header(task: str, classes: tuple[str, ...], kinds: tuple[str, ...]) -> dict[str, str]:
    """What a binary model over numbers leaves out (older artifacts read the same)."""
    header = {}
    if task != "binary":
        header["task"] = task
    if classes:
        header["classes"] = json.dumps(list(classes))
    if any(k != "number" for k in kinds):
        header["kinds"] = json.dumps(list(kinds))
    return header


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX model behind the ``ServableModel`` interface: a binary or multiclass classifier
    (``predict_proba``) or a regressor (``predict_values``)."""

    feature_names: tuple[str, ...]
    threshold: float
    family: str
    session: Any = field(repr=False, compare=False)
    input_name: str = "X"
    header: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    output_name: str = PROBABILITIES
    input_dtype: Any = np.float32
    task: str = "binary"
    classes: tuple[str, ...] = ()
    # one [n, 1] input per feature (name, numpy dtype or ``str``); empty: one matrix input
    columns: tuple[tuple[str, Any], ...] = ()

    @property
    def kinds(self) -> tuple[str, ...]:
        """Each feature's kind: a string input is a category."""
        return _kinds_of(self.columns, len(self.feature_names))

    def _feed(self, X: np.ndarray) -> dict[str, np.ndarray]:
        if not self.columns:
            rows = np.asarray(X, dtype=self.input_dtype).reshape(-1, len(self.feature_names))
            return {self.input_name: rows}
        X = np.asarray(X).reshape(-1, len(self.feature_names))
        feed = {}
        for j, (name, dtype) in enumerate(self.columns):
            col = X[:, j]
            if dtype is str:
                values = ["" if v is None else str(v) for v in col.tolist()]
                feed[name] = np.asarray(values, dtype=object).reshape(-1, 1)
            else:
                feed[name] = np.asarray(col, dtype=dtype).reshape(-1, 1)
        return feed

    def _run(self, X: np.ndarray) -> np.ndarray:
        feed = self._feed(X)
        (out,) = self.session.run([self.output_name], feed)
        return np.asarray(out, dtype=np.float64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Binary: P(class 1) per row, shape (n,); multiclass: shape (n, classes)."""
        p = self._run(X)
        n = len(X)
        if p.ndim != 2 or p.shape[0] != n or p.shape[1] < 2:
            raise ArtifactError(f"ONNX probabilities of shape {p.shape} for {n} rows")
        return p[:, 1] if self.task == "binary" else p

    def predict_values(self, X: np.ndarray) -> np.ndarray:
        """Regression: the predicted value per row, shape (n,)."""
        v = self._run(X)
        n = len(X)
        if v.size != n:
            raise ArtifactError(f"ONNX values of shape {v.shape} for {n} rows")
        return v.reshape(n)


def _session(data: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one request, one core: predictable latency
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError(f"not an ONNX model ONNX Runtime can run: {exc}") from exc


INPUT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}


def _one_output(session: Any, fits: Any, wanted: str) -> str:
    """The name of the one float output whose shape ``fits`` (``probabilities`` if several
    do), or ArtifactError saying what was ``wanted`` and what the model has."""
    candidates = [
        o.name for o in session.get_outputs() if o.type in INPUT_TYPES and fits(list(o.shape or []))
    ]
    if PROBABILITIES in candidates:
        return PROBABILITIES
    if len(candidates) == 1:
        return candidates[0]
    described = [(o.name, o.type, o.shape) for o in session.get_outputs()]
    raise ArtifactError(f"the ONNX model needs {wanted}; its outputs: {described}")


def _probabilities_output(session: Any, k: int = 2) -> str:
    """The name of the output holding class probabilities: a float tensor of shape (n, k)."""
    return _one_output(
        session,
        lambda shape: len(shape) == 2 and shape[1] in (k, str(k)),
        f"exactly one float tensor output of shape (n, {k}) with the class probabilities "
        "(skl2onnx: options={'zipmap': False})",
    )


def _value_output(session: Any) -> str:
    """The name of a regressor's output: one float tensor of shape (n,) or (n, 1)."""
    return _one_output(
        session,
        lambda shape: len(shape) == 1 or (len(shape) == 2 and shape[1] in (1, "1")),
        "exactly one float output of shape (n, 1) for a regression",
    )


STRING_INPUT = "tensor(string)"


def _inputs(session: Any, feature_names: tuple[str, ...]) -> tuple[str, Any, tuple]:
    """How a graph takes the features: ``(matrix input name, dtype, ())`` for one float matrix
    of shape (n, features), or ``("", None, columns)`` for one [n, 1] (or [n]) input per
    feature, named as the features (float or string). ArtifactError otherwise."""
    inputs = session.get_inputs()
    if len(inputs) == 1 and len(feature_names) >= 1 and len(inputs[0].shape or []) == 2:
        (entry,) = inputs
        shape = list(entry.shape)
        named_column = len(feature_names) == 1 and entry.name == feature_names[0]
        if not named_column or entry.type in INPUT_TYPES:
            dtype = INPUT_TYPES.get(entry.type)
            if dtype is None:
                raise ArtifactError(f"the ONNX input is {entry.type} {shape}, expected floats")
            if isinstance(shape[1], int) and shape[1] != len(feature_names):
                raise ArtifactError(
                    f"the ONNX input takes {shape[1]} features, {len(feature_names)} feature "
                    "names given"
                )
            if not named_column:
                return entry.name, dtype, ()
    by_name = {i.name: i for i in inputs}
    if set(by_name) != set(feature_names):
        raise ArtifactError(
            "the ONNX model must take one float matrix, or one input per feature named as the "
            f"features; its inputs: {sorted(by_name)}, the features: {list(feature_names)}"
        )
    columns = []
    for name in feature_names:
        entry = by_name[name]
        if entry.type == STRING_INPUT:
            columns.append((name, str))
        elif entry.type in INPUT_TYPES:
            columns.append((name, INPUT_TYPES[entry.type]))
        else:
            raise ArtifactError(f"the ONNX input {name!r} is {entry.type}: floats or strings")
    return "", None, tuple(columns)


def _kinds_of(columns: tuple[tuple[str, Any], ...], n: int) -> tuple[str, ...]:
    if not columns:
        return ("number",) * n
    return tuple("category" if dtype is str else "number" for _, dtype in columns)


def _infer_task(session: Any) -> tuple[str, int]:
    """``(task, classes)`` from the outputs: a float (n, k) output with k >= 2 is a classifier
    (binary when k = 2), a single float (n, 1) output a regressor."""
    ks = [
        o.shape[1]
        for o in session.get_outputs()
        if o.type in INPUT_TYPES
        and len(o.shape or []) == 2
        and isinstance(o.shape[1], int)
        and o.shape[1] >= 2
    ]
    if len(ks) == 1:
        return ("binary" if ks[0] == 2 else "multiclass"), ks[0]
    return "regression", 0


def import_onnx(
    data: bytes,
    *,
    feature_names: tuple[str, ...],
    threshold: float = 0.5,
    task: str | None = None,
    classes: tuple[str, ...] = (),
) -> bytes:
    """A model trained elsewhere, exported to ONNX by any converter, as a modelbus ONNX
    artifact: checked (one float matrix input, or one float/string input per feature named as
    the features; a probabilities output of shape (n, classes), or one value output for a
    regression; a warm-up prediction of valid numbers) and given the header. The task is read
    from the outputs unless given; a multiclass model's classes default to "0".."k-1".
    ``ArtifactError`` with the reason otherwise. Parsing builds no Python objects from the
    bytes: the protobuf is read by ``onnx`` and the graph runs in ONNX Runtime only."""
    import onnx

    if not feature_names or len(set(feature_names)) != len(feature_names):
        raise ArtifactError("feature_names must be distinct and not empty")
    if not 0.0 <= threshold <= 1.0:
        raise ArtifactError(f"threshold must be within [0, 1], got {threshold}")
    session = _session(data)
    input_name, dtype, columns = _inputs(session, tuple(feature_names))
    guessed, k = _infer_task(session)
    task = task or guessed
    if task == "multiclass":
        classes = tuple(classes) or tuple(str(i) for i in range(k))
        if len(classes) != k or len(set(classes)) != k:
            raise ArtifactError(f"the model gives {k} class probabilities, classes {list(classes)}")
    elif classes:
        raise ArtifactError(f"classes are for a multiclass model, not a {task} one")
    kinds = _kinds_of(columns, len(feature_names))
    output = (
        _value_output(session)
        if task == "regression"
        else _probabilities_output(session, 2 if task == "binary" else len(classes))
    )
    probe = OnnxModel(
        tuple(feature_names), threshold, "onnx", session, input_name or "X", {}, output,
        dtype or np.float32, task, tuple(classes), columns,
    )  # fmt: skip
    warm = np.empty((2, len(feature_names)), dtype=object if columns else np.float64)
    for j, kind in enumerate(kinds):
        warm[:, j] = "" if kind == "category" else 0.0
    try:
        out = probe.predict_values(warm) if task == "regression" else probe.predict_proba(warm)
    except ArtifactError:
        raise
    except Exception as exc:
        raise ArtifactError(f"the ONNX model fails on a warm-up batch: {exc}") from exc
    if not np.all(np.isfinite(out)) or (
        task != "regression" and not np.all((out >= 0) & (out <= 1))
    ):
        raise ArtifactError(f"the ONNX model's outputs are not valid: {out.tolist()}")
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:
        raise ArtifactError(f"unreadable ONNX protobuf: {exc}") from exc
    kept = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    header = {
        "format": ONNX_FORMAT,
        "family": "onnx",
        "feature_names": json.dumps([str(n) for n in feature_names]),
        "threshold": repr(float(threshold)),
        "probabilities_output": output,
        **_task_header(task, tuple(classes), kinds),
    }
    for prop in kept:
        model.metadata_props.add(key=prop.key, value=prop.value)
    for key, value in sorted(header.items()):
        model.metadata_props.add(key=PREFIX + key, value=value)
    return bytes(model.SerializeToString())


def onnx_header(data: bytes) -> tuple[dict[str, str], Any]:
    """The modelbus header of an ONNX artifact and a session over it (parsing builds no
    Python objects from the artifact: the graph runs in ONNX Runtime only)."""
    session = _session(data)
    props = session.get_modelmeta().custom_metadata_map
    header = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
    if header.get("format") != ONNX_FORMAT:
        raise ArtifactError(f"ONNX artifact header says format {header.get('format')!r}")
    return header, session


TASKS = ("binary", "multiclass", "regression")


def load_onnx(data: bytes) -> OnnxModel:
    header, session = onnx_header(data)
    try:
        names = tuple(json.loads(header["feature_names"]))
        threshold = float(header.get("threshold", "0.5"))
        task = header.get("task", "binary")
        classes = tuple(json.loads(header.get("classes", "[]")))
    except (KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(f"ONNX artifact header is unreadable: {exc}") from exc
    if not names or not all(isinstance(n, str) for n in names):
        raise ArtifactError("ONNX artifact header has no feature names")
    if task not in TASKS or not all(isinstance(c, str) for c in classes):
        raise ArtifactError(f"ONNX artifact header has task {task!r}, classes {classes!r}")
    if task == "multiclass" and len(classes) < 2:
        raise ArtifactError("a multiclass ONNX artifact names fewer than two classes")
    input_name, dtype, columns = _inputs(session, names)
    output = header.get("probabilities_output", PROBABILITIES)
    outputs = {o.name for o in session.get_outputs()}
    if output not in outputs:
        raise ArtifactError(f"ONNX model has no {output!r} output: {sorted(outputs)}")
    family = str(header.get("family", ""))
    return OnnxModel(
        names, threshold, family, session, input_name or "X", header, output,
        dtype or np.float32, task, classes, columns,
    )  # fmt: skip


# -- vetting a model from outside, in a process of its own ---------------------------------------

DEFAULT_VET_MEMORY_BYTES = 8 << 30
DEFAULT_VET_TIMEOUT_S = 120.0


def vet_import(
    data: bytes, feature_names: tuple[str, ...], threshold: float, holdout: Any, spec: dict
) -> tuple[bytes, dict[str, float]]:
    """``import_onnx`` (``spec``: its ``task`` and ``classes``) and the model's metrics on the
    hold-out (a ``Dataset``)."""
    from .evaluation import evaluate

    artifact = import_onnx(
        data,
        feature_names=feature_names,
        threshold=threshold,
        task=spec.get("task"),
        classes=tuple(spec.get("classes") or ()),
    )
    return artifact, evaluate(load_onnx(artifact), holdout)


def _vet_child(conn: Any, memory_bytes: int, target: Any, args: tuple[Any, ...]) -> None:
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        conn.send(("ok", target(*args)))
    except ArtifactError as exc:
        conn.send(("refused", str(exc)))
    except MemoryError:
        conn.send(("refused", f"it needs more than {memory_bytes >> 20} MiB"))
    except Exception as exc:
        conn.send(("refused", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def vet_import_isolated(
    data: bytes,
    feature_names: tuple[str, ...],
    threshold: float,
    holdout: Any,
    spec: dict | None = None,
    *,
    timeout_s: float = DEFAULT_VET_TIMEOUT_S,
    memory_bytes: int = DEFAULT_VET_MEMORY_BYTES,
    target: Any = vet_import,
) -> tuple[bytes, dict[str, float]]:
    """``vet_import`` in a child process with a memory limit and a time limit: a model from
    outside that crashes ONNX Runtime, eats memory or hangs is refused (ArtifactError with the
    reason) and takes nothing else down."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    args = (data, tuple(feature_names), threshold, holdout, dict(spec or {}))
    child = ctx.Process(target=_vet_child, args=(sender, memory_bytes, target, args), daemon=True)
    child.start()
    sender.close()
    outcome: tuple[str, Any] | None = None
    timed_out = False
    try:
        if receiver.poll(timeout_s):
            outcome = receiver.recv()
        else:
            timed_out = True
    except EOFError:
        outcome = None
    finally:
        receiver.close()
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()
    if outcome is not None and outcome[0] == "ok":
        return outcome[1]
    if outcome is not None:
        raise ArtifactError(str(outcome[1]))
    if timed_out:
        raise ArtifactError(f"checking the model took longer than {timeout_s:.0f}s")
    raise ArtifactError(
        f"the model crashed the process that checked it (exit code {child.exitcode})"
    )
