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


def _convert(estimator: Any, features: int, converter: str) -> Any:
    """The ONNX graph of a fitted classifier: scikit-learn through skl2onnx, LightGBM and
    XGBoost through onnxmltools; probabilities as a float (n, 2) tensor, no zipmap."""
    if converter == "skl2onnx":
        from skl2onnx import to_onnx

        sample = np.zeros((1, features), dtype=np.float32)
        options = {id(estimator): {"zipmap": False}}
        return to_onnx(estimator, sample, options=options, target_opset=TARGET_OPSET)
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    initial = [("X", FloatTensorType([None, features]))]
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
) -> bytes:
    """A fitted classifier (a scikit-learn estimator or pipeline, a LightGBM or XGBoost model)
    as ONNX bytes with the modelbus header. Deterministic: the same fitted estimator gives the
    same bytes."""
    try:
        graph = _convert(estimator, len(feature_names), converter)
    except ArtifactError:
        raise
    except Exception as exc:  # an estimator the converter cannot convert
        raise ArtifactError(f"cannot convert {type(estimator).__name__} to ONNX: {exc}") from exc
    graph.graph.name = f"modelbus-{family}"  # onnxmltools names it with a random uuid
    output = _probabilities_output(_session(graph.SerializeToString()))
    header = {
        "format": ONNX_FORMAT,
        "family": family,
        "feature_names": json.dumps([str(n) for n in feature_names]),
        "threshold": repr(float(threshold)),
        "probabilities_output": output,
        **{k: json.dumps(v, sort_keys=True) for k, v in (meta or {}).items()},
    }
    for key, value in sorted(header.items()):
        prop = graph.metadata_props.add()
        prop.key, prop.value = PREFIX + key, value
    return bytes(graph.SerializeToString())


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX classifier behind the ``ServableModel`` interface."""

    feature_names: tuple[str, ...]
    threshold: float
    family: str
    session: Any = field(repr=False, compare=False)
    input_name: str = "X"
    header: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    output_name: str = PROBABILITIES
    input_dtype: Any = np.float32

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        rows = np.asarray(X, dtype=self.input_dtype).reshape(-1, len(self.feature_names))
        (probabilities,) = self.session.run([self.output_name], {self.input_name: rows})
        p = np.asarray(probabilities, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] != rows.shape[0] or p.shape[1] < 2:
            raise ArtifactError(f"ONNX probabilities of shape {p.shape} for {rows.shape[0]} rows")
        return p[:, 1]


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


def _probabilities_output(session: Any) -> str:
    """The name of the output holding class probabilities: a float tensor of shape (n, 2)."""
    candidates = []
    for output in session.get_outputs():
        shape = list(output.shape or [])
        if output.type in INPUT_TYPES and len(shape) == 2 and shape[1] in (2, "2"):
            candidates.append(output.name)
    if PROBABILITIES in candidates:
        return PROBABILITIES
    if len(candidates) == 1:
        return candidates[0]
    described = [(o.name, o.type, o.shape) for o in session.get_outputs()]
    raise ArtifactError(
        "the ONNX model needs exactly one float tensor output of shape (n, 2) with the class "
        f"probabilities (skl2onnx: options={{'zipmap': False}}); its outputs: {described}"
    )


def import_onnx(data: bytes, *, feature_names: tuple[str, ...], threshold: float = 0.5) -> bytes:
    """A binary classifier trained elsewhere, exported to ONNX by any converter, as a modelbus
    ONNX artifact: checked (one float input of shape (n, len(feature_names)), one probabilities
    output of shape (n, 2), a warm-up prediction of valid probabilities) and given the header.
    ``ArtifactError`` with the reason otherwise. Parsing builds no Python objects from the
    bytes: the protobuf is read by ``onnx`` and the graph runs in ONNX Runtime only."""
    import onnx

    if not feature_names or len(set(feature_names)) != len(feature_names):
        raise ArtifactError("feature_names must be distinct and not empty")
    if not 0.0 <= threshold <= 1.0:
        raise ArtifactError(f"threshold must be within [0, 1], got {threshold}")
    session = _session(data)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ArtifactError(f"the ONNX model has {len(inputs)} inputs, expected one matrix")
    (entry,) = inputs
    dtype = INPUT_TYPES.get(entry.type)
    shape = list(entry.shape or [])
    if dtype is None or len(shape) != 2:
        raise ArtifactError(f"the ONNX input is {entry.type} {shape}, expected a float matrix")
    if isinstance(shape[1], int) and shape[1] != len(feature_names):
        raise ArtifactError(
            f"the ONNX input takes {shape[1]} features, {len(feature_names)} feature names given"
        )
    output = _probabilities_output(session)
    try:
        (p,) = session.run([output], {entry.name: np.zeros((2, len(feature_names)), dtype)})
    except Exception as exc:
        raise ArtifactError(f"the ONNX model fails on a warm-up batch: {exc}") from exc
    p = np.asarray(p, dtype=np.float64)
    if p.shape != (2, 2) or not np.all((p >= 0) & (p <= 1)):
        raise ArtifactError(f"the ONNX model's probabilities are not in [0, 1]: {p.tolist()}")
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


def load_onnx(data: bytes) -> OnnxModel:
    header, session = onnx_header(data)
    try:
        names = tuple(json.loads(header["feature_names"]))
        threshold = float(header.get("threshold", "0.5"))
    except (KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(f"ONNX artifact header is unreadable: {exc}") from exc
    if not names or not all(isinstance(n, str) for n in names):
        raise ArtifactError("ONNX artifact header has no feature names")
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type not in INPUT_TYPES:
        raise ArtifactError(f"ONNX model has {len(inputs)} inputs, expected one float matrix")
    output = header.get("probabilities_output", PROBABILITIES)
    outputs = {o.name for o in session.get_outputs()}
    if output not in outputs:
        raise ArtifactError(f"ONNX model has no {output!r} output: {sorted(outputs)}")
    family = str(header.get("family", ""))
    dtype = INPUT_TYPES[inputs[0].type]
    return OnnxModel(names, threshold, family, session, inputs[0].name, header, output, dtype)


# -- vetting a model from outside, in a process of its own ---------------------------------------

DEFAULT_VET_MEMORY_BYTES = 8 << 30
DEFAULT_VET_TIMEOUT_S = 120.0


def vet_import(
    data: bytes,
    feature_names: tuple[str, ...],
    threshold: float,
    X: np.ndarray,
    y: np.ndarray,
) -> tuple[bytes, dict[str, float]]:
    """``import_onnx`` and the model's metrics on the hold-out ``X``, ``y``."""
    from .dataset import Dataset
    from .evaluation import evaluate

    artifact = import_onnx(data, feature_names=feature_names, threshold=threshold)
    metrics = evaluate(load_onnx(artifact), Dataset(feature_names, X, y))
    return artifact, metrics


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
    X: np.ndarray,
    y: np.ndarray,
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
    args = (data, tuple(feature_names), threshold, X, y)
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
