"""Reading an MLflow model directory (zipped) without MLflow and without running its code.

An MLflow model is a folder with an ``MLmodel`` file (YAML: its flavors and its signature) and
the flavors' data. modelbus serves what it can load without executing Python: the ``onnx``
flavor (``mlflow.onnx.log_model``). Its feature names come from the signature's column inputs:
a numeric column is a number feature, a ``string`` column a category, a column with
``"required": false`` a nullable one. Any other flavor (``sklearn``, ``xgboost``,
``python_function`` ...) is a pickle or code: it is refused with the way out (export the
model to ONNX).

The archive is read in memory: no file is written, at most ``max_entries`` members and
``max_bytes`` uncompressed bytes are read (a zip bomb stops there), and the flavor's data path
must stay inside the model folder.
"""

from __future__ import annotations

import io
import json
import posixpath
import zipfile
from dataclasses import dataclass, field
from typing import Any

import yaml

from .logreg import ArtifactError

NUMERIC_TYPES = frozenset({"double", "float", "long", "integer"})
CATEGORY_TYPES = frozenset({"string"})
PICKLED_FLAVORS = ("sklearn", "xgboost", "lightgbm", "python_function", "pytorch", "keras")


@dataclass(frozen=True)
class MlflowModel:
    """What an MLflow model directory holds that modelbus can serve."""

    onnx: bytes
    feature_names: tuple[str, ...] | None
    flavors: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)
    # per feature, from the column signature (empty without one): number | category
    kinds: tuple[str, ...] = ()
    nullable: tuple[bool, ...] = ()


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: list[int]) -> bytes:
    if info.file_size > budget[0]:
        raise ArtifactError(f"{info.filename}: too large ({info.file_size} bytes)")
    with archive.open(info) as stream:
        data = stream.read(budget[0] + 1)  # never trust the declared size
    if len(data) > budget[0]:
        raise ArtifactError(f"{info.filename}: too large")
    budget[0] -= len(data)
    return data


def _signature_columns(signature: Any) -> tuple[tuple[str, str, bool], ...] | None:
    """``(name, kind, nullable)`` of each column of a column-based signature (None for a tensor
    signature or none): numeric types are numbers, ``string`` is a category."""
    if not isinstance(signature, dict) or "inputs" not in signature:
        return None
    try:
        inputs = json.loads(signature["inputs"])
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"MLmodel signature inputs are not JSON: {exc}") from exc
    if not isinstance(inputs, list) or not inputs:
        return None
    if any(not isinstance(i, dict) or i.get("type") == "tensor" for i in inputs):
        return None
    columns, refused = [], []
    for column in inputs:
        name, kind = column.get("name"), column.get("type")
        if not isinstance(name, str) or not name:
            return None
        if kind not in NUMERIC_TYPES | CATEGORY_TYPES:
            refused.append(f"{name} ({kind})")
        nullable = column.get("required", True) is False
        columns.append((name, "category" if kind in CATEGORY_TYPES else "number", nullable))
    if refused:
        raise ArtifactError(
            f"the signature has inputs {refused} of a type modelbus cannot serve: numbers "
            f"({', '.join(sorted(NUMERIC_TYPES))}) and categories (string) only"
        )
    return tuple(columns)


def read_mlflow_zip(
    data: bytes, *, max_bytes: int = 256_000_000, max_entries: int = 10_000
) -> MlflowModel:
    """The ONNX model, feature names and kinds of a zipped MLflow model directory;
    ArtifactError with the reason otherwise."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ArtifactError(f"not a zip archive: {exc}") from exc
    with archive:
        members = archive.infolist()
        if len(members) > max_entries:
            raise ArtifactError(f"the archive has {len(members)} members (at most {max_entries})")
        by_name = {posixpath.normpath(m.filename): m for m in members if not m.is_dir()}
        mlmodels = sorted(n for n in by_name if posixpath.basename(n) == "MLmodel")
        if not mlmodels:
            raise ArtifactError("no MLmodel file in the archive (zip the MLflow model folder)")
        mlmodel = min(mlmodels, key=lambda n: n.count("/"))
        folder = posixpath.dirname(mlmodel)
        budget = [max_bytes]
        try:
            spec = yaml.safe_load(_read(archive, by_name[mlmodel], budget))
        except yaml.YAMLError as exc:
            raise ArtifactError(f"MLmodel is not YAML: {exc}") from exc
        if not isinstance(spec, dict) or not isinstance(spec.get("flavors"), dict):
            raise ArtifactError("MLmodel has no flavors")
        flavors = tuple(sorted(str(f) for f in spec["flavors"]))
        onnx_flavor = spec["flavors"].get("onnx")
        if not isinstance(onnx_flavor, dict):
            pickled = [f for f in PICKLED_FLAVORS if f in flavors]
            raise ArtifactError(
                f"the MLflow model has flavors {list(flavors)} and no 'onnx' flavor: "
                f"{'the ' + pickled[0] + ' flavor is a pickle, and ' if pickled else ''}modelbus "
                "loads no Python code; log it with mlflow.onnx (or convert it with skl2onnx / "
                "onnxmltools) and import that"
            )
        relative = str(onnx_flavor.get("data", "model.onnx"))
        path = posixpath.normpath(posixpath.join(folder, relative))
        outside = folder and not path.startswith(folder + "/")
        if path.startswith("..") or posixpath.isabs(relative) or outside:
            raise ArtifactError(f"the onnx flavor's data {relative!r} is outside the model folder")
        if path not in by_name:
            raise ArtifactError(f"the onnx flavor's data {relative!r} is not in the archive")
        onnx = _read(archive, by_name[path], budget)
        columns = _signature_columns(spec.get("signature")) or ()
        info = {
            "mlflow_version": str(spec.get("mlflow_version", "")),
            "run_id": str(spec.get("run_id", "")),
            "model_uuid": str(spec.get("model_uuid", "")),
        }
        return MlflowModel(
            onnx,
            tuple(c[0] for c in columns) or None,
            flavors,
            {k: v for k, v in info.items() if v},
            kinds=tuple(c[1] for c in columns),
            nullable=tuple(c[2] for c in columns),
        )
