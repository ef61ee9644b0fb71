"""Model families and artifact loading: deterministic artifacts for every family, sha256 checked
before anything is parsed or unpickled, pickled artifacts described without unpickling."""

from __future__ import annotations

import hashlib
import pickle
import time

import numpy as np
import pytest

from modelbus_ml import (
    ArtifactError,
    ArtifactIntegrityError,
    Dataset,
    FamilyError,
    describe_artifact,
    evaluate,
    get_family,
    load_model,
    split_holdout,
    train_family,
)
from modelbus_ml.flavors import MAGIC, PICKLE_FORMAT, RIVER_FORMAT, dump_pickled

NB = "modelbus_ml.examples:train_gaussian_nb"
FAMILY_PARAMS = {
    "logreg": {"family": "logreg"},
    "river": {"family": "river", "passes": 2},
    "python": {"family": "python", "entry_point": NB},
    "sklearn": {"family": "sklearn"},
    "lightgbm": {"family": "lightgbm", "n_estimators": 50},
    "xgboost": {"family": "xgboost", "n_estimators": 50},
}


def make_dataset(seed: int = 1, rows: int = 600) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 3))
    y = (X @ np.array([1.5, -1.0, 0.0]) + rng.normal(0, 0.5, rows) > 0).astype(np.int8)
    return Dataset(("a", "b", "c"), X, y)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("family", sorted(FAMILY_PARAMS))
def test_every_family_is_deterministic_and_loads_back(family):
    train, holdout = split_holdout(make_dataset(), 0.25, seed=7)
    params = FAMILY_PARAMS[family]
    first = train_family(train, params, seed=7)
    # a dataset rebuilt from its canonical CSV (fresh objects) gives the same bytes
    again = train_family(Dataset(train.feature_names, train.X.copy(), train.y.copy()), params, 7)
    assert sha(first.artifact) == sha(again.artifact)
    assert first.format == get_family(family).format

    loaded = load_model(first.artifact, first.format, sha(first.artifact))
    assert loaded.feature_names == ("a", "b", "c")
    p = loaded.predict_proba(holdout.X)
    assert p.shape == (holdout.rows,) and np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p, first.model.predict_proba(holdout.X))
    assert evaluate(loaded, holdout)["auc"] > 0.85


def test_river_learns_rows_in_dataset_order():
    ds = make_dataset()
    forward = train_family(ds, {"family": "river"}, seed=1)
    reversed_ds = ds.take(np.arange(ds.rows)[::-1])
    backward = train_family(reversed_ds, {"family": "river"}, seed=1)
    assert sha(forward.artifact) != sha(backward.artifact)  # online: order is part of the data


def test_unknown_family_and_bad_entry_points_are_refused_with_a_reason():
    ds = make_dataset(rows=50)
    with pytest.raises(FamilyError, match="unknown model family 'xgb'"):
        train_family(ds, {"family": "xgb"}, 1)
    with pytest.raises(FamilyError, match="needs params"):
        train_family(ds, {"family": "python"}, 1)
    with pytest.raises(FamilyError, match="module:function"):
        train_family(ds, {"family": "python", "entry_point": "nocolon"}, 1)
    with pytest.raises(FamilyError, match="not found"):
        train_family(ds, {"family": "python", "entry_point": "modelbus_ml.examples:nope"}, 1)
    with pytest.raises(FamilyError, match="raised TypeError"):
        train_family(ds, {"family": "python", "entry_point": "builtins:dict"}, 1)
    with pytest.raises(FamilyError, match="without predict_proba"):
        train_family(ds, {"family": "python", "entry_point": f"{__name__}:returns_a_list"}, 1)


def returns_a_list(X, y, feature_names, params, seed):
    return [1, 2, 3]


class Bomb:
    """Unpickling this runs code: the tests prove it never gets the chance."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('unpickled!')",))


def test_a_pickle_is_never_loaded_unless_its_sha256_matches():
    data = dump_pickled(PICKLE_FORMAT, family="python", feature_names=["a"], estimator=Bomb())
    with pytest.raises(ArtifactIntegrityError, match="sha256 mismatch"):
        load_model(data, PICKLE_FORMAT, "0" * 64)
    with pytest.raises(ArtifactIntegrityError):
        describe_artifact(data, PICKLE_FORMAT, "0" * 64)
    # describing a (matching) pickle reads only its header
    info = describe_artifact(data, PICKLE_FORMAT, sha(data))
    assert (info.family, info.feature_names) == ("python", ("a",))


def test_pickled_artifacts_are_checked_before_and_after_unpickling():
    trained = train_family(make_dataset(rows=80), FAMILY_PARAMS["river"], 1)
    data = trained.artifact
    with pytest.raises(ArtifactError, match="the record says"):
        load_model(data, PICKLE_FORMAT, sha(data))  # header and record disagree
    raw = pickle.dumps({"not": "a model"})
    with pytest.raises(ArtifactError, match="no modelbus pickle header"):
        load_model(raw, RIVER_FORMAT, sha(raw))
    no_model = dump_pickled(RIVER_FORMAT, family="river", feature_names=["a"], estimator=[1])
    with pytest.raises(ArtifactError, match="has no predict_proba_one"):
        load_model(no_model, RIVER_FORMAT, sha(no_model))
    truncated = MAGIC + b'{"format":"modelbus.river.v1"'
    with pytest.raises(ArtifactError):
        load_model(truncated, RIVER_FORMAT, sha(truncated))
    with pytest.raises(ArtifactError, match="unsupported artifact format"):
        load_model(data, "onnx", sha(data))


def test_logreg_artifacts_load_through_the_same_interface():
    trained = train_family(make_dataset(rows=100), {}, 3)
    assert trained.format == "modelbus.logreg.v1"
    info = describe_artifact(trained.artifact, trained.format, sha(trained.artifact))
    assert info.family == "logreg" and info.feature_names == ("a", "b", "c")
    with pytest.raises(ArtifactIntegrityError):
        load_model(trained.artifact + b" ", trained.format, sha(trained.artifact))


def test_river_scoring_speed_is_recorded():
    """River has no vectorised predict without pandas: a per-row loop, measured here."""
    ds = make_dataset(rows=2000)
    model = train_family(ds, FAMILY_PARAMS["river"], 1).model
    started = time.perf_counter()
    model.predict_proba(ds.X)
    rows_per_s = ds.rows / (time.perf_counter() - started)
    assert rows_per_s > 5_000, rows_per_s


def xor_dataset(seed: int = 3, rows: int = 2000) -> Dataset:
    """A non-linear concept over features five orders of magnitude apart (age, salary)."""
    rng = np.random.default_rng(seed)
    X = np.c_[rng.uniform(18, 80, rows), rng.uniform(1e4, 2e5, rows)]
    y = ((X[:, 0] > 45) ^ (X[:, 1] > 1e5)).astype(np.int8)
    return Dataset(("age", "salary"), X, y)


@pytest.mark.parametrize(
    "estimator", ["gradient_boosting", "random_forest", "extra_trees", "logistic_regression"]
)
def test_sklearn_estimators_are_served_through_onnx_with_sklearns_probabilities(estimator):
    train, holdout = split_holdout(xor_dataset(), 0.25, seed=1)
    fitted = get_family("sklearn").estimator(
        {**get_family("sklearn").default_params, "estimator": estimator}, 1, train
    )
    fitted.fit(train.X, train.y.astype(np.int64))
    trained = train_family(train, {"family": "sklearn", "estimator": estimator}, seed=1)
    assert trained.format == "modelbus.onnx.v1"
    loaded = load_model(trained.artifact, trained.format, sha(trained.artifact))
    # ONNX runs in float32: the probabilities agree with scikit-learn's to float32 precision
    np.testing.assert_allclose(
        loaded.predict_proba(holdout.X), fitted.predict_proba(holdout.X)[:, 1], atol=1e-4
    )
    info = describe_artifact(trained.artifact, trained.format, sha(trained.artifact))
    assert info.family == "sklearn" and info.feature_names == ("age", "salary")
    assert info.header["estimator"] == f'"{estimator}"'


def test_onnx_artifacts_are_checked_and_refused_with_a_reason():
    trained = train_family(make_dataset(), {"family": "sklearn", "n_estimators": 5}, seed=1)
    with pytest.raises(ArtifactIntegrityError):
        load_model(trained.artifact, trained.format, "0" * 64)
    garbage = b"not a protobuf" * 10
    with pytest.raises(ArtifactError, match="ONNX"):
        load_model(garbage, trained.format, sha(garbage))
    # a logreg JSON artifact claimed to be ONNX is refused, not misread
    logreg = train_family(make_dataset(), {"family": "logreg"}, seed=1).artifact
    with pytest.raises(ArtifactError):
        load_model(logreg, trained.format, sha(logreg))


@pytest.mark.parametrize(
    "params, reason",
    [
        ({"n_estimators": 10**6}, "n_estimators must be within"),
        ({"max_depth": 0}, "max_depth must be within"),
        ({"learning_rate": "fast"}, "learning_rate must be a number"),
        ({"estimator": "svm"}, "unknown sklearn estimator"),
    ],
)
def test_sklearn_params_are_bounded(params, reason):
    with pytest.raises(ValueError, match=reason):
        train_family(make_dataset(), {"family": "sklearn", **params}, seed=1)


def test_auto_learns_a_non_linear_concept_and_records_the_choice():
    train, holdout = split_holdout(xor_dataset(), 0.25, seed=2)
    trained = train_family(train, {}, seed=2)
    selection = trained.selection
    assert selection is not None and selection["chosen"] == "sklearn"
    scores = {c["family"]: c["log_loss"] for c in selection["candidates"]}
    assert scores["sklearn"] < scores["logreg"]
    assert evaluate(trained.model, holdout)["accuracy"] > 0.95
    # the same data, params and seed: the same choice and the same bytes
    assert train_family(train, {}, seed=2).artifact == trained.artifact


def test_auto_keeps_the_linear_model_on_a_linear_concept():
    train, _ = split_holdout(make_dataset(rows=3000), 0.25, seed=2)
    trained = train_family(train, {}, seed=2)
    assert trained.selection["chosen"] == "logreg", trained.selection
    assert trained.format == "modelbus.logreg.v1"


def test_auto_is_configurable_and_refuses_what_it_cannot_do():
    ds = xor_dataset(rows=400)
    only = train_family(ds, {"candidates": ["logreg"]}, seed=1)
    assert only.selection["chosen"] == "logreg" and only.selection["candidates"] == []
    forest = {"candidate_params": {"sklearn": {"estimator": "random_forest", "n_estimators": 20}}}
    chosen = train_family(ds, forest, seed=1)
    assert (
        describe_artifact(chosen.artifact, chosen.format, sha(chosen.artifact)).header["estimator"]
        == '"random_forest"'
    )
    with pytest.raises(FamilyError, match="cannot be an auto candidate"):
        train_family(ds, {"candidates": ["python"]}, seed=1)
    with pytest.raises(FamilyError, match="unknown model family"):
        train_family(ds, {"candidates": ["xgboost9"]}, seed=1)
    with pytest.raises(FamilyError, match="does not take"):
        train_family(ds, {"epochs": 3}, seed=1)
    tiny = xor_dataset(rows=20)
    assert "too few" in train_family(tiny, {}, seed=1).selection["reason"]


@pytest.mark.parametrize("family", ["lightgbm", "xgboost"])
def test_boosting_families_serve_through_onnx_with_their_own_probabilities(family):
    train, holdout = split_holdout(xor_dataset(), 0.25, seed=1)
    trained = train_family(train, {"family": family}, seed=1)
    assert trained.format == "modelbus.onnx.v1"
    booster = get_family(family).estimator({**get_family(family).default_params}, 1, train)
    booster.fit(train.X.astype(np.float32), train.y.astype(np.int64))
    loaded = load_model(trained.artifact, trained.format, sha(trained.artifact))
    np.testing.assert_allclose(
        loaded.predict_proba(holdout.X),
        booster.predict_proba(holdout.X.astype(np.float32))[:, 1],
        atol=1e-4,
    )
    assert evaluate(loaded, holdout)["accuracy"] > 0.95  # the non-linear concept is learned
    assert describe_artifact(trained.artifact, trained.format, sha(trained.artifact)).family == (
        family
    )
    with pytest.raises(ValueError, match="n_estimators must be within"):
        train_family(train, {"family": family, "n_estimators": 10**7}, seed=1)


def test_a_model_from_outside_is_vetted_in_a_process_of_its_own():
    from modelbus_ml import testing as hostile
    from modelbus_ml.onnx import vet_import, vet_import_isolated

    train, holdout = split_holdout(make_dataset(), 0.25, seed=1)
    fitted = get_family("sklearn").estimator({**get_family("sklearn").default_params}, 1, train)
    fitted.fit(train.X, train.y.astype(np.int64))
    from skl2onnx import to_onnx

    data = to_onnx(
        fitted, train.X[:1].astype(np.float32), options={id(fitted): {"zipmap": False}}
    ).SerializeToString()
    args = (data, train.feature_names, 0.5, holdout, {})
    assert vet_import_isolated(*args) == vet_import(*args)  # same bytes, same metrics
    with pytest.raises(ArtifactError, match="crashed the process"):
        vet_import_isolated(*args, target=hostile.crash)
    with pytest.raises(ArtifactError, match="longer than 2s"):
        vet_import_isolated(*args, target=hostile.hang, timeout_s=2)
    with pytest.raises(ArtifactError, match=r"MiB|crashed"):
        vet_import_isolated(*args, target=hostile.hog, memory_bytes=1 << 30)
    with pytest.raises(ArtifactError, match="ONNX"):
        vet_import_isolated(b"garbage", *args[1:])


@pytest.mark.parametrize(
    "params, reason",
    [
        ({"family": "logreg", "epochs": 400_000}, r"epochs must be within \[1, 5000\]"),
        ({"family": "logreg", "epochs": 2**64}, "epochs must be within"),
        ({"family": "logreg", "epochs": 10.5}, "epochs must be an integer"),
        ({"family": "logreg", "learning_rate": 0}, "learning_rate must be within"),
        ({"family": "logreg", "l2": -1}, "l2 must be within"),
        ({"family": "logreg", "threshold": 2}, "threshold must be within"),
        ({"family": "logreg", "epochs": "300"}, "epochs must be a number"),
        ({"family": "river", "passes": 10_000}, r"passes must be within \[1, 100\]"),
        ({"family": "river", "learning_rate": -0.1}, "learning_rate must be within"),
        ({"family": "river", "l2": 1e9}, "l2 must be within"),
        ({"family": "river", "threshold": True}, "threshold must be a number"),
        ({"family": "python", "entry_point": NB, "threshold": -1}, "threshold must be within"),
        ({"candidates": ["logreg"], "validation_fraction": 0.9}, "validation_fraction must be"),
        (
            {"candidates": ["logreg"], "candidate_params": {"logreg": {"epochs": 10**6}}},
            "epochs must be within",
        ),
        (
            {"candidates": ["logreg"], "candidate_params": {"sklaern": {}}},
            r"not candidates: \['sklaern'\]",
        ),
        ({"candidate_params": {"logreg": 3}}, "must map a family name to its params"),
    ],
)
def test_every_familys_params_are_bounded_before_it_trains(params, reason):
    started = time.perf_counter()
    with pytest.raises(ValueError, match=reason):
        train_family(make_dataset(rows=200), params, seed=1)
    assert time.perf_counter() - started < 2  # refused, not trained


def test_logreg_trains_at_its_limits():
    ds = make_dataset(rows=100)
    params = {"epochs": 5000, "learning_rate": 10.0, "l2": 0.0, "threshold": 1.0}
    assert train_family(ds, {"family": "logreg", **params}, seed=1).model.threshold == 1.0


@pytest.mark.parametrize(
    "params, where",
    [
        ({"family": "logreg", "ep\x00ochs": 3}, "params"),
        ({"family": "sklearn", "a\nb": 1}, "params"),
        ({"candidate_params": {"logreg": {"l2\x00": 1}}}, r"params\.candidate_params\.logreg"),
        ({"candidates": ["logreg"], "x": [{"\x7f": 1}]}, r"params\.x\[0\]"),
        ({"family": "logreg", "": 1}, "params"),
    ],
)
def test_a_params_key_with_a_control_character_is_refused_before_training(params, where):
    with pytest.raises(ValueError, match=f"a key of {where} "):
        train_family(make_dataset(rows=100), params, seed=1)
