"""The trainer-side registry of model families: name -> how to train it and serialise it.

- ``logreg`` (built-in): numpy logistic regression, canonical JSON artifact.
- ``river``: ``StandardScaler | LogisticRegression`` from River, trained online with
  ``learn_one`` over the rows in the dataset's order (``passes`` times); no randomness.
- ``python``: a user-supplied entry point ``"package.module:function"`` given in
  ``params["entry_point"]`` with this interface::

      def train(X: np.ndarray, y: np.ndarray, feature_names: list[str], params: dict,
                seed: int) -> object  # with predict_proba(X) -> (n,) or (n, 2) array

  ``X`` is float64 (n, features) in ``feature_names`` order, ``y`` int8 in {0, 1}, ``params`` the
  run's params without the reserved keys, ``seed`` the run's seed (Python's and numpy's global
  RNGs are also seeded with it before the call). The returned object is pickled, so its class
  must be importable wherever the model is served.

Every family is deterministic: the same dataset, params and seed give the same artifact bytes.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .dataset import Dataset
from .flavors import PICKLE_FORMAT, RIVER_FORMAT, ServableModel, dump_pickled, load_model, sha256_of
from .logreg import DEFAULT_PARAMS as LOGREG_DEFAULTS
from .logreg import FORMAT as LOGREG_FORMAT
from .logreg import train_logreg

DEFAULT_FAMILY = "logreg"
# Keys of a run's params that choose the family or record the run's data (hold-out share, drift
# data window) rather than tune the fit: recorded in the lineage, never passed to a fit.
META_KEYS = ("family", "entry_point", "holdout_fraction", "data_window")


class FamilyError(ValueError):
    """Unknown family, bad entry point or a user model that breaks the interface."""


@dataclass(frozen=True)
class Trained:
    """A fitted model with its artifact bytes and format."""

    model: ServableModel
    artifact: bytes
    format: str


class Family(Protocol):
    name: str
    format: str
    default_params: dict[str, Any]

    def train(self, ds: Dataset, params: dict[str, Any], seed: int) -> Trained: ...


def fit_params(params: dict[str, Any]) -> dict[str, Any]:
    """A run's params without the reserved (family-choosing) keys."""
    return {k: v for k, v in params.items() if k not in META_KEYS}


def _check_both_classes(ds: Dataset) -> None:
    if ds.rows < 2 or len(set(ds.y.tolist())) < 2:
        raise ValueError("training needs at least two rows and both classes")


class LogregFamily:
    name = "logreg"
    format = LOGREG_FORMAT
    default_params = dict(LOGREG_DEFAULTS)

    def train(self, ds: Dataset, params: dict[str, Any], seed: int) -> Trained:
        model = train_logreg(ds, fit_params(params), seed)
        return Trained(model, model.to_bytes(), self.format)


class RiverFamily:
    name = "river"
    format = RIVER_FORMAT
    default_params: dict[str, Any] = {
        "learning_rate": 0.01,
        "l2": 0.0,
        "passes": 1,
        "threshold": 0.5,
    }

    def train(self, ds: Dataset, params: dict[str, Any], seed: int) -> Trained:
        import river
        from river import linear_model, optim, preprocessing

        _check_both_classes(ds)
        p = {**self.default_params, **fit_params(params)}
        lr, passes = float(p["learning_rate"]), int(p["passes"])
        if lr <= 0 or passes < 1:
            raise ValueError("river needs learning_rate > 0 and passes >= 1")
        random.seed(seed)  # nothing in this pipeline draws random numbers; belt and braces
        pipeline = preprocessing.StandardScaler() | linear_model.LogisticRegression(
            optimizer=optim.SGD(lr), l2=float(p["l2"]), intercept_lr=lr
        )
        names = ds.feature_names
        rows, labels = ds.X.tolist(), [bool(v) for v in ds.y.tolist()]
        for _ in range(passes):
            for row, label in zip(rows, labels, strict=True):
                pipeline.learn_one(dict(zip(names, row, strict=True)), label)
        threshold = float(p["threshold"])
        meta = {"libraries": {"river": river.__version__}}
        data = dump_pickled(
            self.format,
            family=self.name,
            feature_names=names,
            estimator=pipeline,
            threshold=threshold,
            meta=meta,
        )
        return Trained(load_model(data, self.format, sha256_of(data)), data, self.format)


def resolve_entry_point(spec: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function (FamilyError if it cannot be found)."""
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr:
        raise FamilyError(f"entry point must look like 'module:function', got {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise FamilyError(f"entry point {spec!r} not found: {exc}") from exc
    if not callable(target):
        raise FamilyError(f"entry point {spec!r} is not callable")
    return target


class PythonFamily:
    name = "python"
    format = PICKLE_FORMAT
    default_params: dict[str, Any] = {"threshold": 0.5}

    def train(self, ds: Dataset, params: dict[str, Any], seed: int) -> Trained:
        spec = params.get("entry_point")
        if not spec:
            raise FamilyError("the python family needs params['entry_point'] = 'module:function'")
        fn = resolve_entry_point(spec)
        user_params = fit_params({**self.default_params, **params})
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            estimator = fn(ds.X.copy(), ds.y.copy(), list(ds.feature_names), user_params, seed)
        except Exception as exc:
            raise FamilyError(f"entry point {spec} raised {type(exc).__name__}: {exc}") from exc
        if not callable(getattr(estimator, "predict_proba", None)):
            raise FamilyError(f"{spec} returned {type(estimator).__name__} without predict_proba")
        data = dump_pickled(
            self.format,
            family=self.name,
            feature_names=ds.feature_names,
            estimator=estimator,
            threshold=float(user_params.get("threshold", 0.5)),
            meta={"entry_point": str(spec)},
        )
        model = load_model(data, self.format, sha256_of(data))
        model.predict_proba(ds.X[:1])  # fail the run now, not in the scorer
        return Trained(model, data, self.format)


FAMILIES: dict[str, Family] = {f.name: f for f in (LogregFamily(), RiverFamily(), PythonFamily())}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise FamilyError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None


def train_family(ds: Dataset, params: dict[str, Any], seed: int) -> Trained:
    """Train the family named by ``params["family"]`` (default ``logreg``)."""
    return get_family(str(params.get("family", DEFAULT_FAMILY))).train(ds, params, seed)


__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "META_KEYS",
    "Family",
    "FamilyError",
    "Trained",
    "fit_params",
    "get_family",
    "resolve_entry_point",
    "train_family",
]
