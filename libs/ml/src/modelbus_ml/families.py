"""The trainer-side registry of model families: name -> how to train it and serialise it.

- ``auto`` (the default): model choice. Every candidate family (``candidates``, by default
  ``logreg`` and ``sklearn``'s gradient boosting) is fitted on an inner split of the training
  rows and scored by log loss on the rest; the best is refitted on all training rows. The
  candidates, their scores and the choice are the ``selection`` of the result.
- ``logreg`` (built-in): numpy logistic regression, canonical JSON artifact.
- ``sklearn``: a scikit-learn estimator (``estimator``: ``gradient_boosting``,
  ``random_forest``, ``extra_trees`` or ``logistic_regression``), converted to ONNX by skl2onnx
  and served by ONNX Runtime: loading it runs no Python code.
- ``lightgbm`` / ``xgboost``: gradient-boosted trees from LightGBM / XGBoost, converted to ONNX
  by onnxmltools, served the same way.
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
from .flavors import (
    ONNX_FORMAT,
    PICKLE_FORMAT,
    RIVER_FORMAT,
    ServableModel,
    dump_pickled,
    load_model,
    sha256_of,
)
from .logreg import DEFAULT_PARAMS as LOGREG_DEFAULTS
from .logreg import FORMAT as LOGREG_FORMAT
from .logreg import ArtifactError, train_logreg
from .params import Limit, bounded_all, check_keys
from .params import bounded as _bounded

DEFAULT_FAMILY = "auto"
# Keys of a run's params that choose the family or the task, or record the run's data (hold-out
# share, drift data window, model selection) rather than tune the fit: recorded in the lineage,
# never passed to a fit.
META_KEYS = (
    "family",
    "entry_point",
    "holdout_fraction",
    "data_window",
    "model_selection",
    "task",
)


class FamilyError(ValueError):
    """Unknown family, bad entry point or a user model that breaks the interface."""


@dataclass(frozen=True)
class Trained:
    """A fitted model with its artifact bytes and format; ``selection`` says how ``auto``
    chose it (candidates, their validation scores, the choice), ``None`` for a fixed family."""

    model: ServableModel
    artifact: bytes
    format: str
    selection: dict[str, Any] | None = None


class Family(Protocol):
    name: str
    format: str
    default_params: dict[str, Any]

    def train(self, ds: Dataset, params: dict[str, Any], seed: int) -> Trained: ...


def fit_params(params: dict[str, Any]) -> dict[str, Any]:
    """A run's params without the reserved (family-choosing) keys."""
    return {k: v for k, v in params.items() if k not in META_KEYS}


def _check_both_classes(ds: Dataset) -> None:
    """Enough to fit: two rows, and two classes for a classifier."""
    if ds.rows < 2 or (ds.task != "regression" and len(set(ds.y.tolist())) < 2):
        raise ValueError("training needs at least two rows and, to classify, two classes")


def _check_binary_numbers(ds: Dataset, family: str) -> None:
    """The families that take a float matrix and 0/1 labels only."""
    if ds.task != "binary" or not ds.numeric or ds.may_miss:
        raise ValueError(
            f"{family} takes binary labels and number features without missing values; this "
            f"dataset is {ds.task} over {sorted(set(ds.feature_kinds))} features"
            f"{' with missing values' if ds.may_miss else ''}: use sklearn, linear or auto"
        )


class LogregFamily:
    name = "logreg"
    format = LOGREG_FORMAT
    default_params = dict(LOGREG_DEFAULTS)

    def train(self, ds: Dataset, params: dict[str, Any], seed: int) -> Trained:
        _check_binary_numbers(ds, self.name)
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
    # passes: each is a pure-Python learn_one per row, so 100 passes is already minutes
    LIMITS: dict[str, Limit] = {
        "learning_rate": (float, 1e-6, 10.0),
        "l2": (float, 0.0, 1e3),
        "passes": (int, 1, 100),
        "threshold": (float, 0.0, 1.0),
    }

    def train(self, ds: Dataset, params: dict[str, Any], seed: int) -> Trained:
        import river
        from river import linear_model, optim, preprocessing

        _check_both_classes(ds)
        _check_binary_numbers(ds, self.name)
        p = {**self.default_params, **fit_params(params)}
        knobs = bounded_all(p, self.LIMITS)
        lr, passes = knobs["learning_rate"], knobs["passes"]
        random.seed(seed)  # nothing in this pipeline draws random numbers; belt and braces
        pipeline = preprocessing.StandardScaler() | linear_model.LogisticRegression(
            optimizer=optim.SGD(lr), l2=knobs["l2"], intercept_lr=lr
        )
        names = ds.feature_names
        rows, labels = ds.X.tolist(), [bool(v) for v in ds.y.tolist()]
        for _ in range(passes):
            for row, label in zip(rows, labels, strict=True):
                pipeline.learn_one(dict(zip(names, row, strict=True)), label)
        threshold = knobs["threshold"]
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
        _check_binary_numbers(ds, self.name)
        fn = resolve_entry_point(spec)
        user_params = fit_params({**self.default_params, **params})
        threshold = _bounded(user_params, "threshold", float, 0.0, 1.0)
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
            threshold=threshold,
            meta={"entry_point": str(spec)},
        )
        model = load_model(data, self.format, sha256_of(data))
        model.predict_proba(ds.X[:1])  # fail the run now, not in the scorer
        return Trained(model, data, self.format)


SKLEARN_ESTIMATORS = (
    "gradient_boosting",
    "random_forest",
    "extra_trees",
    "linear",
    "logistic_regression",
)
MISSING_CATEGORY = ""  # a missing category is one more category (one-hot: its own column)


class OnnxFamily:
    """A family whose fitted model is converted to ONNX and served by ONNX Runtime: the
    subclass makes the estimator for the task (``estimator``), says what it is fitted on
    (``matrix``), what the header records (``meta``) and which converter reads it
    (``converter``)."""

    name: str
    format = ONNX_FORMAT
    converter = "skl2onnx"
    default_params: dict[str, Any]

    def estimator(self, p: dict[str, Any], seed: int, ds: Dataset) -> Any:
        raise NotImplementedError

    def matrix(self, ds: Dataset) -> np.ndarray:
        return ds.X

    def meta(self, p: dict[str, Any]) -> dict[str, Any]:
        return {}

    def train(self, ds: Dataset, params: dict[str, Any], seed: int) -> Trained:
        from .onnx import to_onnx_artifact

        _check_both_classes(ds)
        p = {**self.default_params, **fit_params(params)}
        threshold = _bounded(p, "threshold", float, 0.0, 1.0)
        estimator = self.estimator(p, seed, ds)
        y = ds.y.astype(np.float64 if ds.task == "regression" else np.int64)
        estimator.fit(self.matrix(ds), y)
        classes: tuple[str, ...] = ()
        if ds.task == "multiclass":
            classes = tuple(ds.classes[int(i)] for i in _fitted_classes(estimator))
        data = to_onnx_artifact(
            estimator,
            family=self.name,
            feature_names=ds.feature_names,
            threshold=threshold,
            meta=self.meta(p),
            converter=self.converter,
            kinds=ds.feature_kinds,
            task=ds.task,
            classes=classes,
        )
        return Trained(load_model(data, self.format, sha256_of(data)), data, self.format)


def _fitted_classes(estimator: Any) -> np.ndarray:
    """The class indexes a fitted classifier (or pipeline) knows, in probability order."""
    return np.asarray(estimator.classes_)


def _sklearn_matrix(ds: Dataset) -> np.ndarray:
    """What a scikit-learn pipeline is fitted on: the float matrix, or (categories) an object
    matrix with floats and strings, a missing category as ``MISSING_CATEGORY``."""
    if ds.numeric:
        return ds.X
    X = ds.X.copy()
    for j, kind in enumerate(ds.feature_kinds):
        if kind == "category":
            X[:, j] = [MISSING_CATEGORY if v is None else v for v in X[:, j].tolist()]
    return X


def _prepare(ds: Dataset, scale: bool) -> list[tuple[str, Any]]:
    """The preprocessing steps a dataset needs: missing numbers imputed by the median,
    categories one-hot encoded (a category unseen in training: all zeros), numbers scaled for
    a linear model. None for a complete float matrix a tree takes as it is."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numbers_steps: list[Any] = [SimpleImputer(strategy="median")] if ds.may_miss else []
    if scale:
        numbers_steps.append(StandardScaler())
    if ds.numeric:
        return [(f"prep{i}", step) for i, step in enumerate(numbers_steps)]
    kinds = ds.feature_kinds
    numbers = [j for j, k in enumerate(kinds) if k == "number"]
    categories = [j for j, k in enumerate(kinds) if k == "category"]
    parts: list[tuple[str, Any, list[int]]] = []
    if numbers:
        # missing numbers may first appear live: a mixed pipeline imputes them always
        steps = [SimpleImputer(strategy="median"), *([StandardScaler()] if scale else [])]
        parts.append(("numbers", make_pipeline(*steps), numbers))
    encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    parts.append(("categories", encoder, categories))
    return [("columns", ColumnTransformer(parts))]


class SklearnFamily(OnnxFamily):
    name = "sklearn"
    default_params: dict[str, Any] = {
        "estimator": "gradient_boosting",
        "n_estimators": 150,
        "max_depth": 3,
        "learning_rate": 0.1,
        "subsample": 1.0,
        "min_samples_leaf": 5,
        "C": 1.0,
        "alpha": 1.0,
        "threshold": 0.5,
    }

    def estimator(self, p: dict[str, Any], seed: int, ds: Dataset) -> Any:
        from sklearn import ensemble
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.pipeline import Pipeline

        regression = ds.task == "regression"
        kind = str(p["estimator"])
        trees = _bounded(p, "n_estimators", int, 1, 2000)
        depth = _bounded(p, "max_depth", int, 1, 32)
        leaf = _bounded(p, "min_samples_leaf", int, 1, 100_000)
        linear = kind in ("linear", "logistic_regression")
        if kind == "logistic_regression" and regression:
            raise ValueError("logistic_regression classifies: use estimator 'linear' (ridge)")
        if kind == "gradient_boosting":
            cls = (
                ensemble.GradientBoostingRegressor
                if regression
                else ensemble.GradientBoostingClassifier
            )
            model = cls(
                n_estimators=trees,
                max_depth=depth,
                learning_rate=_bounded(p, "learning_rate", float, 1e-6, 1.0),
                subsample=_bounded(p, "subsample", float, 0.01, 1.0),
                min_samples_leaf=leaf,
                random_state=seed % 2**32,
            )
        elif kind in ("random_forest", "extra_trees"):
            forest = "RandomForest" if kind == "random_forest" else "ExtraTrees"
            cls = getattr(ensemble, forest + ("Regressor" if regression else "Classifier"))
            model = cls(
                n_estimators=trees,
                max_depth=depth,
                min_samples_leaf=leaf,
                random_state=seed % 2**32,
                n_jobs=1,
            )
        elif linear and regression:
            model = Ridge(alpha=_bounded(p, "alpha", float, 0.0, 1e9))
        elif linear:
            model = LogisticRegression(C=_bounded(p, "C", float, 1e-9, 1e9), max_iter=1000)
        else:
            raise ValueError(
                f"unknown sklearn estimator {kind!r}; known: {list(SKLEARN_ESTIMATORS)}"
            )
        steps = _prepare(ds, scale=linear)
        return Pipeline([*steps, ("model", model)]) if steps else model

    def matrix(self, ds: Dataset) -> np.ndarray:
        return _sklearn_matrix(ds)

    def meta(self, p: dict[str, Any]) -> dict[str, Any]:
        import sklearn

        return {
            "estimator": str(p["estimator"]),
            "libraries": {"scikit-learn": sklearn.__version__},
        }


class LinearFamily(SklearnFamily):
    """scikit-learn's linear model for the task: logistic regression for a classifier, ridge
    for a regression, after the same preprocessing (one-hot categories, imputed and scaled
    numbers). ``auto``'s linear candidate where ``logreg`` cannot go."""

    name = "linear"
    default_params = {**SklearnFamily.default_params, "estimator": "linear"}


class BoostingFamily(OnnxFamily):
    """Gradient-boosted trees from LightGBM or XGBoost, converted by onnxmltools and served by
    ONNX Runtime like the ``sklearn`` family (no code runs on load). Single-threaded and
    seeded: the same data, params and seed give the same bytes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.converter = name
        self.default_params: dict[str, Any] = {
            "n_estimators": 200,
            "learning_rate": 0.1,
            "max_depth": 6 if name == "xgboost" else -1,
            "num_leaves": 31,
            "min_child_samples": 20,
            "subsample": 1.0,
            "threshold": 0.5,
        }

    def estimator(self, p: dict[str, Any], seed: int, ds: Dataset) -> Any:
        if not ds.numeric:
            raise ValueError(
                f"{self.name} here takes number features: one-hot the categories, or use the "
                "sklearn family (its pipeline one-hot encodes them)"
            )
        regression = ds.task == "regression"
        trees = _bounded(p, "n_estimators", int, 1, 5000)
        rate = _bounded(p, "learning_rate", float, 1e-6, 1.0)
        subsample = _bounded(p, "subsample", float, 0.01, 1.0)
        if self.name == "lightgbm":
            import lightgbm

            cls = lightgbm.LGBMRegressor if regression else lightgbm.LGBMClassifier
            return cls(
                n_estimators=trees,
                learning_rate=rate,
                max_depth=_bounded(p, "max_depth", int, -1, 64),
                num_leaves=_bounded(p, "num_leaves", int, 2, 4096),
                min_child_samples=_bounded(p, "min_child_samples", int, 1, 100_000),
                subsample=subsample,
                subsample_freq=1 if subsample < 1 else 0,
                random_state=seed % 2**31,
                n_jobs=1,
                deterministic=True,
                force_row_wise=True,
                verbose=-1,
            )
        import xgboost

        return (xgboost.XGBRegressor if regression else xgboost.XGBClassifier)(
            n_estimators=trees,
            learning_rate=rate,
            max_depth=_bounded(p, "max_depth", int, 1, 64),
            subsample=subsample,
            random_state=seed % 2**31,
            n_jobs=1,
            tree_method="hist",
            verbosity=0,
        )

    def matrix(self, ds: Dataset) -> np.ndarray:
        return np.ascontiguousarray(ds.X, dtype=np.float32)  # what the boosters train on

    def meta(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"libraries": {self.name: __import__(self.name).__version__}}


class AutoFamily:
    """Model choice: fit every candidate on an inner split of the training rows, keep the one
    with the lowest validation log loss (ties: the earlier candidate, so the simpler one when
    listed first) and refit it on all training rows. Deterministic: same data, params, seed ->
    same choice and same bytes."""

    name = "auto"
    format = "by candidate"
    default_params: dict[str, Any] = {
        "candidates": ["logreg", "sklearn"],
        "validation_fraction": 0.25,
        "candidate_params": {},
    }
    MIN_ROWS = 40  # below this a validation split says nothing: the first candidate is used

    def candidates(self, p: dict[str, Any]) -> list[str]:
        names = p.get("candidates")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise FamilyError("auto needs candidates: a non-empty list of family names")
        if len(names) > 8:
            raise FamilyError("auto takes at most 8 candidates")
        for name in names:
            if name in ("auto", "python"):
                raise FamilyError(f"{name!r} cannot be an auto candidate")
            get_family(name)
        return names

    SHARED = ("threshold",)  # passed on to every candidate

    def train(self, ds: Dataset, params: dict[str, Any], seed: int) -> Trained:
        from .dataset import split_holdout
        from .evaluation import DEFAULT_METRIC, evaluate

        _check_both_classes(ds)
        p = {**self.default_params, **fit_params(params)}
        unknown = sorted(set(p) - set(self.default_params) - set(self.SHARED))
        if unknown:
            raise FamilyError(
                f"auto does not take {unknown}: name a family to tune it, or give a candidate's "
                "params in candidate_params"
            )
        names = self.candidates(p)
        swapped = ""
        if "logreg" in names and (ds.task != "binary" or not ds.numeric or ds.may_miss):
            names = ["linear" if n == "logreg" else n for n in names]
            names = list(dict.fromkeys(names))
            swapped = (
                f"; logreg takes binary labels over complete numbers, so linear (scikit-learn's "
                f"{'ridge' if ds.task == 'regression' else 'logistic regression'}) stands in"
            )
        metric = DEFAULT_METRIC[ds.task]
        overrides = p.get("candidate_params") or {}
        if not isinstance(overrides, dict) or not all(
            isinstance(v, dict) for v in overrides.values()
        ):
            raise FamilyError("candidate_params must map a family name to its params")
        strangers = sorted(set(overrides) - set(self.candidates(p)))
        if strangers:  # never silently unused: a typo would train with the defaults
            raise FamilyError(
                f"candidate_params name families that are not candidates: {strangers}"
            )
        fraction = _bounded(p, "validation_fraction", float, 0.05, 0.5)

        shared = {k: p[k] for k in self.SHARED if k in p}

        def params_of(name: str) -> dict[str, Any]:
            return {**shared, **dict(overrides.get(name) or {}), "family": name}

        scored: list[dict[str, Any]] = []
        chosen = names[0]
        inner, validation = split_holdout(ds, fraction, seed)
        usable = ds.rows >= self.MIN_ROWS and (
            ds.task == "regression"
            or len(set(inner.y.tolist()))
            == len(set(validation.y.tolist()))
            == len(set(ds.y.tolist()))
        )
        if usable and len(names) > 1:
            for name in names:
                try:
                    model = get_family(name).train(inner, params_of(name), seed).model
                    metrics = evaluate(model, validation)
                    scored.append({"family": name, **metrics})
                except (ValueError, ArtifactError) as exc:
                    scored.append({"family": name, "error": str(exc)})
            ok = [c for c in scored if "error" not in c]
            if not ok:
                raise FamilyError(f"no auto candidate could be trained: {scored}")
            chosen = min(ok, key=lambda c: c[metric])["family"]
        trained = get_family(chosen).train(ds, params_of(chosen), seed)
        selection = {
            "metric": metric,
            "validation_fraction": fraction,
            "validation_rows": validation.rows if usable else 0,
            "candidates": scored,
            "chosen": chosen,
            "reason": (
                f"lowest validation {metric} among {names}{swapped}"
                if scored
                else f"{ds.rows} rows: too few to compare candidates, the first is used"
                if len(names) > 1
                else "one candidate"
            ),
        }
        return Trained(trained.model, trained.artifact, trained.format, selection)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        AutoFamily(),
        LogregFamily(),
        SklearnFamily(),
        LinearFamily(),
        BoostingFamily("lightgbm"),
        BoostingFamily("xgboost"),
        RiverFamily(),
        PythonFamily(),
    )
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise FamilyError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None


def train_family(ds: Dataset, params: dict[str, Any], seed: int) -> Trained:
    """Train the family named by ``params["family"]`` (default ``auto``), its params' keys
    checked first (``check_keys``) and its knobs bounded by the family itself."""
    check_keys(params)
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
