"""Pure trainer logic: run identity, drift guards, feedback datasets, deterministic training."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from trainer_fixtures import T0, drift_event, make_dataset

from modelbus_contracts import TrainingRequested
from modelbus_trainer.domain import (
    RunFailed,
    cooldown_remaining,
    drift_skip_reason,
    feedback_dataset,
    merge_params,
    new_run,
    object_key,
    rebuild_trigger,
    run_id_for,
    train_snapshot,
    trained_event_id,
)


def test_run_id_is_a_function_of_the_trigger_event_id():
    event_id = uuid.uuid4()
    assert run_id_for(event_id) == run_id_for(event_id)
    assert run_id_for(event_id) != run_id_for(uuid.uuid4())
    assert trained_event_id("r1") == trained_event_id("r1") != trained_event_id("r2")


def test_new_run_uses_request_params_over_defaults_and_round_trips_the_trigger():
    params = {"family": "logreg", "epochs": 5}
    event = TrainingRequested(model_name="m", params=params, seed=7, reason="api")
    run = new_run(event, default_seed=42, now=T0)
    assert run["state"] == "pending"
    assert run["trigger"] == "api"
    assert run["params"]["epochs"] == 5 and "l2" in run["params"]
    assert run["seed"] == 7
    assert rebuild_trigger(run) == event


def test_drift_run_takes_the_default_seed_and_parent_version():
    event = drift_event("m", T0, version=3)
    run = new_run(event, default_seed=42, now=T0)
    assert (run["trigger"], run["seed"], run["parent_version"]) == ("drift", 42, 3)
    assert run["params"] == merge_params(None)


def test_cooldown_and_skip_reasons():
    assert cooldown_remaining(None, T0, 60) == 0
    assert cooldown_remaining(T0, T0 + timedelta(seconds=20), 60) == pytest.approx(40)
    assert cooldown_remaining(T0, T0 + timedelta(seconds=90), 60) == 0
    assert drift_skip_reason(None, 0) is None
    assert "in flight" in drift_skip_reason("r1", 0)
    assert "cooldown" in drift_skip_reason(None, 12.5)


def test_object_key_accepts_bare_keys_and_s3_uris():
    assert object_key("datasets/m/a.csv", "b") == "datasets/m/a.csv"
    assert object_key("s3://b/datasets/m/a.csv", "b") == "datasets/m/a.csv"


def test_feedback_dataset_uses_the_first_rows_features_and_drops_incomplete_rows():
    rows = [
        {"features": {"a": 1.0, "b": 2.0}, "label": 1},
        {"features": {"a": 3.0}, "label": 0},
        {"features": {"b": 5.0, "a": 4.0}, "label": 0},
    ]
    ds = feedback_dataset(rows)
    assert ds.feature_names == ("a", "b")
    assert ds.X.tolist() == [[1.0, 2.0], [4.0, 5.0]]
    assert ds.y.tolist() == [1, 0]
    with pytest.raises(RunFailed):
        feedback_dataset([])


def test_train_snapshot_is_deterministic_and_seed_sensitive():
    ds = make_dataset(200)
    a = train_snapshot(ds, merge_params(None), 1, 0.25)
    b = train_snapshot(ds, merge_params(None), 1, 0.25)
    c = train_snapshot(ds, merge_params(None), 2, 0.25)
    assert a.artifact == b.artifact and a.holdout_csv == b.holdout_csv
    assert c.artifact_sha256 != a.artifact_sha256
    assert a.holdout_rows == 50 and a.dataset_rows == 200
    assert a.metrics["auc"] > 0.6
    assert set(a.reference) == {"x1", "x2"}


def test_train_snapshot_refuses_tiny_or_single_class_data():
    with pytest.raises(RunFailed, match="rows"):
        train_snapshot(make_dataset(3), merge_params(None), 1, 0.25)
    ds = make_dataset(50)
    one_class = type(ds)(ds.feature_names, ds.X, ds.y * 0)
    with pytest.raises(RunFailed, match="two classes"):
        train_snapshot(one_class, merge_params(None), 1, 0.25)
