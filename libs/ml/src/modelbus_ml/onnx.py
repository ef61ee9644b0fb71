"""Models served through ONNX Runtime: the artifact is an ONNX graph, so loading it runs no
Python code (no unpickling), whatever trained it.

An ONNX artifact (format ``modelbus.onnx.v1``) is the serialised ONNX model converted by
skl2onnx, with the modelbus header in its metadata properties (``modelbus.*``: format, family,
feature names, threshold, library versions). ``OnnxModel`` serves it behind the
``ServableModel`` interface: one float32 input of shape (n, features) in feature order, the
probability of class 1 read from the ``probabilities`` output.
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


def to_onnx_artifact(
    estimator: Any,
    *,
    family: str,
    feature_names: tuple[str, ...],
    threshold: float,
    meta: dict[str, Any] | None = None,
) -> bytes:
    """A fitted scikit-learn classifier (or pipeline) as ONNX bytes with the modelbus header.
    Deterministic: the same fitted estimator gives the same bytes."""
    from skl2onnx import to_onnx

    sample = np.zeros((1, len(feature_names)), dtype=np.float32)
    try:
        graph = to_onnx(
            estimator,
            sample,
            options={id(estimator): {"zipmap": False}},
            target_opset=TARGET_OPSET,
        )
    except Exception as exc:  # an estimator skl2onnx cannot convert
        raise ArtifactError(f"cannot convert {type(estimator).__name__} to ONNX: {exc}") from exc
    header = {
        "format": ONNX_FORMAT,
        "family": family,
        "feature_names": json.dumps([str(n) for n in feature_names]),
        "threshold": repr(float(threshold)),
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

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        rows = np.asarray(X, dtype=np.float32).reshape(-1, len(self.feature_names))
        (probabilities,) = self.session.run([PROBABILITIES], {self.input_name: rows})
        p = np.asarray(probabilities, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] != rows.shape[0] or p.shape[1] < 2:
            raise ArtifactError(f"ONNX probabilities of shape {p.shape} for {rows.shape[0]} rows")
        return p[:, 1]


def onnx_header(data: bytes) -> tuple[dict[str, str], Any]:
    """The modelbus header of an ONNX artifact and a session over it (parsing builds no
    Python objects from the artifact: the graph runs in ONNX Runtime only)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one request, one core: predictable latency
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError(f"not an ONNX model ONNX Runtime can run: {exc}") from exc
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
    if len(inputs) != 1:
        raise ArtifactError(f"ONNX model has {len(inputs)} inputs, expected one matrix")
    outputs = {o.name for o in session.get_outputs()}
    if PROBABILITIES not in outputs:
        raise ArtifactError(f"ONNX model has no {PROBABILITIES!r} output: {sorted(outputs)}")
    family = str(header.get("family", ""))
    return OnnxModel(names, threshold, family, session, inputs[0].name, header)
