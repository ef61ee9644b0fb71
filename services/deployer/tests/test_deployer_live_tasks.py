"""Live stages of a multiclass and a regression model: labels join predictions as classes (as
strings) or values (errors), the windows survive a checkpoint, and the live rules judge
accuracy, or RMSE/MAE with lower-is-better, against the hold-out and the champion."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest

from modelbus_contracts import LabelObserved, PredictionMade
from modelbus_deployer.domain import Policy
from modelbus_deployer.rollout import ArmStats, LiveWindow, judge_live
from modelbus_deployer.watch import ActiveStage, LiveTracker, agrees, class_key

SHADOW = Policy(rollout="shadow", shadow_min_predictions=300, min_labels=200)


def stage(kind: str, task: str, metrics: dict[str, float] | None = None) -> ActiveStage:
    doc = {
        "task": task,
        "holdout": {"rows": 500},
        "challenger_metrics": metrics or {},
    }
    accuracy = (metrics or {}).get("accuracy")
    return ActiveStage("m", 2, 1, kind, 1, accuracy, doc)  # type: ignore[arg-type]


def predicted(
    version: int, served_by: str, shadow_of: str | None = None, model: str = "m", **answer
) -> PredictionMade:
    return PredictionMade(
        producer="scorer",
        model_name=model,
        prediction_id=uuid.uuid4().hex,
        version=version,
        features={"x": 1.0},
        served_by=served_by,
        shadow_of=shadow_of,
        latency_ms=1.0,
        **answer,
    )


def label(prediction_id: str, value, model: str = "m") -> LabelObserved:
    return LabelObserved(producer="up", model_name=model, prediction_id=prediction_id, label=value)


# --- joins -------------------------------------------------------------------------------------


def test_classes_are_compared_as_strings():
    assert class_key(2) == class_key(2.0) == class_key("2") == "2"
    assert class_key(1) != class_key("1.5")
    tracker, active = LiveTracker(), stage("watch", "binary", {"accuracy": 0.9})
    binary = predicted(2, "champion", score=0.8, label=1)
    tracker.prediction(binary, active)

    assert tracker.label(label(binary.prediction_id, 1.0)) == [active.key]
    assert tracker.windows[active.key].arm.accuracy == 1.0


def test_multiclass_labels_join_the_predicted_class():
    tracker, active = LiveTracker(), stage("canary", "multiclass", {"accuracy": 0.8})
    answers = [("b", "b"), ("a", "c"), ("2", 2)]  # the last: an integer label of class "2"
    for predicted_class, truth in answers:
        event = predicted(
            2, "canary", score=0.7, label=predicted_class, probabilities={predicted_class: 0.7}
        )
        tracker.prediction(event, active)
        tracker.label(label(event.prediction_id, truth))

    arm = tracker.windows[active.key].arm
    assert (arm.labelled, arm.correct, arm.valued) == (3, 2, 0)
    assert arm.accuracy == pytest.approx(2 / 3)
    assert arm.rmse is None


def test_regression_labels_join_the_predicted_value_as_an_error():
    tracker, active = LiveTracker(), stage("watch", "regression", {"rmse": 1.0})
    for value, truth in [(10.0, 11.0), (5.0, 2.0), (0.0, "0.5"), (1.0, "n/a")]:
        event = predicted(2, "champion", value=value)
        tracker.prediction(event, active)
        tracker.label(label(event.prediction_id, truth))

    arm = tracker.windows[active.key].arm
    assert (arm.labelled, arm.valued) == (3, 3)  # "n/a" is not a value: not counted
    assert arm.accuracy is None
    assert arm.rmse == pytest.approx(math.sqrt((1 + 9 + 0.25) / 3))
    assert arm.mae == pytest.approx((1 + 3 + 0.5) / 3)
    evidence = tracker.windows[active.key].evidence()
    assert evidence["live_rmse"] == pytest.approx(arm.rmse, abs=1e-6)
    assert "live_accuracy" not in evidence


def test_regression_windows_survive_a_checkpoint_and_merge():
    window = LiveWindow()
    for e in (1.0, -2.0, 0.5):
        window.arm.labelled_value(e)
    base = window.copy()
    window.arm.labelled_value(3.0)

    restored = LiveWindow.from_dict(window.to_dict())
    delta = window.since(base)
    merged = base.copy()
    merged.absorb(delta)

    for w in (restored, merged):
        assert (w.arm.valued, w.arm.sq_sum, w.arm.sq2_sum) == (4, 14.25, 1 + 16 + 0.0625 + 81)
        assert w.arm.mae == pytest.approx(6.5 / 4)
    assert ArmStats.from_dict({"labelled": 3, "correct": 2}).accuracy == pytest.approx(2 / 3)


def test_regression_agreement_is_a_relative_or_hold_out_rmse_tolerance():
    assert agrees(100.0, 109.0)  # within 10%
    assert not agrees(100.0, 125.0)
    assert not agrees(0.01, 0.2)  # near zero a relative difference means little...
    assert agrees(0.01, 0.2, scale=0.5)  # ...so the hold-out RMSE is the floor
    assert agrees("b", "b") and not agrees("a", "b") and not agrees(None, None)


def test_regression_shadow_agreement_uses_the_hold_out_rmse():
    tracker, active = LiveTracker(), stage("shadow", "regression", {"rmse": 0.5})
    for champion_value, shadow_value in [(0.1, 0.4), (0.0, 3.0), (50.0, 52.0)]:
        served = predicted(1, "champion", value=champion_value)
        tracker.prediction(served, active)
        tracker.prediction(predicted(2, "shadow", served.prediction_id, value=shadow_value), active)

    window = tracker.windows[active.key]
    assert (window.compared, window.agreed) == (3, 2)


# --- the live rules ------------------------------------------------------------------------------


def regression_window(rng, n: int, ours: float, theirs: float) -> LiveWindow:
    w = LiveWindow()
    for _ in range(n):
        w.arm.predicted(1.0)
        w.arm.labelled_value(float(rng.normal(0, ours)))
        w.baseline.predicted(1.0)
        w.baseline.labelled_value(float(rng.normal(0, theirs)))
        w.compare(True)
    return w


def test_a_regression_shadow_as_good_as_the_champion_passes():
    w = regression_window(np.random.default_rng(1), 300, ours=1.0, theirs=1.0)

    verdict = judge_live(w, SHADOW, "shadow", 1.0, "v2", 500, metric="rmse")

    assert verdict.outcome == "pass", verdict.reasons
    names = {g.name for g in verdict.gates}
    assert {"live_rmse", "live_vs_champion", "shadow_agreement"} <= names
    assert "live_accuracy" not in names
    assert verdict.evidence["champion_live_rmse"] > 0


def test_a_regression_shadow_significantly_worse_than_the_champion_is_rejected():
    w = regression_window(np.random.default_rng(2), 300, ours=1.6, theirs=1.0)

    verdict = judge_live(w, SHADOW, "shadow", 1.6, "v2", 500, metric="rmse")

    assert verdict.outcome == "fail"
    versus = next(g for g in verdict.gates if g.name == "live_vs_champion")
    assert not versus.passed
    assert versus.observed == pytest.approx(w.arm.rmse - w.baseline.rmse)
    assert "(lower is better)" in versus.detail and "per-label squared errors" in versus.detail
    assert verdict.reasons == [f"live_vs_champion failed: {versus.detail}"]


@pytest.mark.parametrize("metric", ["rmse", "mae"])
def test_a_regression_watch_rolls_back_when_live_error_exceeds_the_hold_out(metric):
    rng = np.random.default_rng(3)
    fine = regression_window(rng, 300, ours=1.0, theirs=1.0)
    drifted = regression_window(rng, 300, ours=2.0, theirs=1.0)
    holdout = math.sqrt(2 / math.pi) if metric == "mae" else 1.0  # E|N(0, 1)| and its RMSE
    policy = Policy(rollback_watch_predictions=300, min_labels=200)

    ok = judge_live(fine, policy, "watch", holdout, "v2", 500, metric=metric)
    bad = judge_live(drifted, policy, "watch", holdout, "v2", 500, metric=metric)

    assert ok.outcome == "pass", ok.reasons
    assert bad.outcome == "fail"
    rule = next(g for g in bad.gates if g.name == f"live_{metric}")
    assert rule.observed == pytest.approx(drifted.arm.error(metric))
    assert holdout * 1.05 < rule.threshold < holdout * 1.3  # tolerance 5% + sampling noise
    assert f"hold-out {metric} {holdout:.4g} x (1 + tolerance 0.05)" in rule.detail


def test_a_multiclass_canary_is_judged_on_accuracy_against_the_champion():
    policy = Policy(rollout="canary", canary_step_predictions=300, min_labels=200)
    w = LiveWindow()
    for i in range(300):
        w.arm.predicted(1.0)
        w.arm.labelled_as(i % 10 < 6)  # 0.6
        w.baseline.predicted(1.0)
        w.baseline.labelled_as(i % 10 < 8)  # 0.8

    verdict = judge_live(w, policy, "canary", 0.62, "v2", 500)

    assert verdict.outcome == "fail"
    assert [g.name for g in verdict.gates if not g.passed] == ["live_vs_champion"]
    assert "live accuracy of v2 0.600 on 300 labels vs the champion's 0.800" in verdict.reasons[0]


# --- through the services: a regression promoted, then rolled back on its live RMSE ---------------


async def register_regression(world, version: int, champion=None):
    """A linear regression trained on y = 3x + noise, registered with its signature."""
    from modelbus_contracts import (
        ArtifactRef,
        DatasetRef,
        Lineage,
        ModelRegistered,
        ModelSummary,
        Signature,
    )
    from modelbus_ml import from_rows, train_family
    from modelbus_platform.stores import sha256_hex

    rng = np.random.default_rng(version)
    xs = rng.normal(size=400)
    ds = from_rows(["x"], [{"x": float(x)} for x in xs], [3 * x + rng.normal() for x in xs])
    trained = train_family(ds.take(np.arange(250)), {"family": "linear"}, seed=0)
    holdout = ds.take(np.arange(250, 400)).to_csv_bytes()

    async def put(key: str, data: bytes, fmt: str) -> ArtifactRef:
        await world.store.put(key, data)
        return ArtifactRef(uri=key, sha256=sha256_hex(data), size_bytes=len(data), format=fmt)

    artifact = await put(f"artifacts/churn/v{version}", trained.artifact, trained.format)
    held = await put(f"datasets/churn/v{version}.csv", holdout, "csv")
    ref = DatasetRef(uri=held.uri, sha256=held.sha256, rows=150)
    summary = None
    if champion is not None:
        summary = ModelSummary(version=champion[0], artifact=champion[1], feature_names=["x"])
    event = ModelRegistered(
        producer="registry",
        model_name="churn",
        version=version,
        run_id=f"run-{version}",
        artifact=artifact,
        feature_names=["x"],
        metrics={},
        lineage=Lineage(dataset=ref, holdout=ref, seed=0, code_version="t", trigger="api"),
        signature=Signature.model_validate(ds.signature()),
        champion=summary,
    )
    return event, artifact


async def test_a_promoted_regression_is_rolled_back_on_its_live_rmse(make_world):
    from modelbus_contracts import ModelRollbackRequested
    from modelbus_deployer.config import DeployerSettings
    from modelbus_deployer.live_service import LiveService
    from modelbus_deployer.testing import MemoryLiveStats

    world = make_world(DeployerSettings(rollback_watch_predictions=300, min_labels=200))
    service = world.service()
    live = LiveService(
        settings=world.settings,
        decisions=world.decisions,
        events=world.relay(),
        deployer=service,
        stats=MemoryLiveStats(),
    )
    service.on_stage = live.note
    v1, _ = await register_regression(world, 1)
    assert await service.handle_registered(v1) == "decided"
    doc = world.decisions.docs[("churn", 1)]
    assert (doc["task"], doc["decision"], doc["live"]) == ("regression", "promote", "watch")
    holdout_rmse = doc["challenger_metrics"]["rmse"]
    assert 0.7 < holdout_rmse < 1.4

    rng = np.random.default_rng(9)
    events = []
    for _ in range(250):  # the world moved: errors twice the hold-out's
        p = predicted(1, "champion", model="churn", value=0.0)
        truth = float(rng.normal(0, 2 * holdout_rmse))
        events += [p, label(p.prediction_id, truth, model="churn")]
    outcome = await live.handle(events)

    assert outcome == {"churn": "rollback_requested"}
    [request] = world.publisher.of(ModelRollbackRequested)
    assert request.reason.startswith("live_rmse failed: live rmse ")
    assert f"hold-out rmse {holdout_rmse:.4g}" in request.reason
    assert request.evidence["live_rmse"] > 1.5 * holdout_rmse
