"""The service layer on fakes: sync from the registry, hot swap, load failures, stream scoring,
and the prediction log."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from modelbus_contracts import (
    ModelLoadFailed,
    ModelPromoted,
    ModelRolledBack,
    PredictionMade,
    ScoringFailed,
    ScoringRequested,
)
from modelbus_platform.registry import RegistryUnavailable
from modelbus_platform.stores import LocalObjectStore
from modelbus_platform.testing import FakeRegistry, RecordingPublisher
from modelbus_scorer.bootstrap import sync_forever
from modelbus_scorer.domain import ModelHolder
from modelbus_scorer.handlers import resync_on_control, scores_requested
from modelbus_scorer.prediction_log import PredictionLog
from modelbus_scorer.service import ScorerService, SeenRequests
from modelbus_scorer.telemetry import ScorerMetrics


class Harness:
    def __init__(self, tmp_path) -> None:
        self.store = LocalObjectStore(tmp_path / "objects")
        self.registry = FakeRegistry()
        self.publisher = RecordingPublisher()
        self.metrics = ScorerMetrics("scorer-test")
        self.log = PredictionLog(self.publisher, self.metrics, producer="scorer", capacity=5)
        self.service = ScorerService(
            holder=ModelHolder(),
            registry=self.registry,
            store=self.store,
            publisher=self.publisher,
            metrics=self.metrics,
            prediction_log=self.log,
            producer="scorer",
            instance="scorer-1",
            max_instances=100,
        )

    def value(self, name: str, labels: dict | None = None) -> float:
        return self.metrics.registry.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
def h(tmp_path) -> Harness:
    return Harness(tmp_path)


def promoted(name: str, view) -> ModelPromoted:
    return ModelPromoted(
        model_name=name,
        version=view.version,
        previous_version=None,
        artifact=view.artifact,
        feature_names=view.feature_names,
        reason="test",
    )


async def test_start_up_loads_every_champion_and_replays_are_no_ops(h, publish_artifact):
    h.registry.put(await publish_artifact(h.store, "m", 1), champion=True)
    h.registry.add_model("no-champ")
    assert await h.service.sync_all() == {"m": "loaded", "no-champ": "no_champion"}
    assert h.service.holder.get("m").current.version == 1
    assert h.service.holder.get("no-champ").current is None  # known: 503, not 404
    assert await h.service.sync_model("m") == "unchanged"
    assert h.value("modelbus_scorer_loaded_version", {"model": "m", "slot": "current"}) == 1


async def test_promotion_swaps_and_keeps_the_last_good_warm(h, publish_artifact, make_model):
    v1 = await publish_artifact(h.store, "m", 1)
    h.registry.put(v1, champion=True)
    await h.service.sync_all()
    v2 = await publish_artifact(h.store, "m", 2, make_model(coef=[2.0, 2.0]))
    h.registry.put(v2, champion=True)
    await resync_on_control(h.service, promoted("m", v1))  # event's version is ignored
    slots = h.service.holder.get("m")
    assert (slots.current.version, slots.previous.version) == (2, 1)


async def test_rollback_reuses_the_warm_previous_without_reading_the_store(
    h, publish_artifact, make_model
):
    v1 = await publish_artifact(h.store, "m", 1)
    v2 = await publish_artifact(h.store, "m", 2, make_model(coef=[2.0, 2.0]))
    h.registry.put(v1, champion=True)
    await h.service.sync_all()
    h.registry.put(v2, champion=True)
    await h.service.sync_model("m")
    await h.store.put(v1.artifact.uri, b"gone bad")  # a reload would now fail
    h.registry.put(v1, champion=True)
    event = ModelRolledBack(
        model_name="m",
        from_version=2,
        to_version=1,
        artifact=v1.artifact,
        feature_names=v1.feature_names,
        reason="regression",
    )
    await resync_on_control(h.service, event)
    slots = h.service.holder.get("m")
    assert (slots.current.version, slots.previous.version) == (1, 2)
    assert h.publisher.of(ModelLoadFailed) == []


@pytest.mark.parametrize("fault", ["corrupted", "missing", "unreadable", "wrong_features"])
async def test_load_failure_keeps_serving_and_announces_it(h, publish_artifact, make_model, fault):
    h.registry.put(await publish_artifact(h.store, "m", 1), champion=True)
    await h.service.sync_all()
    if fault == "corrupted":
        bad = await publish_artifact(h.store, "m", 2, make_model(coef=[3.0, 3.0]))
        await h.store.put(bad.artifact.uri, b'{"format": "tampered"}')
    elif fault == "missing":
        bad = await publish_artifact(h.store, "m", 2, make_model(coef=[3.0, 3.0]))
        bad = bad.model_copy(
            update={"artifact": bad.artifact.model_copy(update={"uri": "artifacts/m/nope.json"})}
        )
    elif fault == "unreadable":
        bad = await publish_artifact(h.store, "m", 2, data=b"not json at all")
    else:
        bad = await publish_artifact(h.store, "m", 2, make_model(("a", "b")))
        bad = bad.model_copy(update={"feature_names": ["age", "income"]})
    h.registry.put(bad, champion=True)
    event = promoted("m", bad)
    await resync_on_control(h.service, event)  # does not raise

    assert h.service.holder.get("m").current.version == 1
    [failed] = h.publisher.of(ModelLoadFailed)
    assert (failed.version, failed.instance) == (2, "scorer-1")
    assert failed.correlation_id == event.correlation_id
    assert failed.causation_id == event.event_id
    assert failed.error
    assert h.value("modelbus_scorer_model_load_failures_total", {"model": "m"}) == 1
    result = h.service.score("m", lambda served, limit: (_zeros(served.feature_names), None))
    assert result.scored.served.version == 1
    await resync_on_control(h.service, event)  # a redelivery: the same announcement
    assert h.publisher.of(ModelLoadFailed)[1].event_id == failed.event_id


async def test_periodic_resync_announces_a_failure_once(h, publish_artifact):
    h.registry.put(await publish_artifact(h.store, "m", 1, data=b"broken"), champion=True)
    await h.service.sync_all()
    await h.service.sync_all()
    assert len(h.publisher.of(ModelLoadFailed)) == 1
    assert h.value("modelbus_scorer_model_load_failures_total", {"model": "m"}) == 2


async def test_registry_down_raises_so_the_bus_retries(h):
    h.registry.down = True
    with pytest.raises(RegistryUnavailable):
        await h.service.sync_model("m")
    with pytest.raises(RegistryUnavailable):
        await h.service.sync_all()
    assert h.service.sync_attempted and not h.service.last_sync_ok


async def test_sync_loop_keeps_retrying_until_the_registry_answers(h, publish_artifact):
    h.registry.down = True
    h.registry.put(await publish_artifact(h.store, "m", 1), champion=True)
    task = asyncio.create_task(sync_forever(h.service, interval_s=0.05))
    try:
        await asyncio.sleep(0.12)
        assert h.service.holder.get("m") is None
        h.registry.down = False
        for _ in range(100):
            if h.service.holder.get("m") and h.service.holder.get("m").current:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert h.service.holder.get("m").current.version == 1
    assert h.registry.calls.count("models") >= 2


# --- stream scoring --------------------------------------------------------------------------


def _zeros(names):
    return np.zeros((1, len(names)))


async def test_stream_scoring_publishes_a_prediction_caused_by_the_request(h, publish_artifact):
    h.registry.put(await publish_artifact(h.store, "m", 1), champion=True)
    await h.service.sync_all()
    request = ScoringRequested(model_name="m", request_id="r-1", features={"age": 1, "income": 0})
    await scores_requested(h.service, [request])
    [made] = h.publisher.of(PredictionMade)
    assert (made.request_id, made.version, made.source) == ("r-1", 1, "stream")
    assert made.correlation_id == request.correlation_id
    assert made.causation_id == request.event_id
    assert made.features == {"age": 1.0, "income": 0.0}
    # a redelivered request makes the very same prediction (same ids): downstream dedupes it
    await scores_requested(h.service, [request])
    again = h.publisher.of(PredictionMade)[1]
    assert (again.event_id, again.prediction_id) == (made.event_id, made.prediction_id)
    labels = {"model": "m", "version": "1", "served_by": "champion", "source": "stream"}
    assert h.value("modelbus_scorer_predictions_total", labels) == 2


@pytest.mark.parametrize(
    ("model", "features", "reason"),
    [
        ("m", {"age": 1}, "feature_mismatch"),
        ("m", {"age": 1, "income": 2, "zip": 3}, "feature_mismatch"),
        ("other", {"age": 1, "income": 2}, "unknown_model"),
    ],
)
async def test_bad_stream_requests_become_scoring_failed(
    h, publish_artifact, model, features, reason
):
    h.registry.put(await publish_artifact(h.store, "m", 1), champion=True)
    await h.service.sync_all()
    request = ScoringRequested(model_name=model, request_id="r-2", features=features)
    await scores_requested(h.service, [request])  # returns normally
    [failed] = h.publisher.of(ScoringFailed)
    assert failed.request_id == "r-2"
    assert failed.error.startswith(reason)
    assert failed.correlation_id == request.correlation_id
    assert h.publisher.of(PredictionMade) == []
    assert (
        h.value("modelbus_scorer_rejected_requests_total", {"reason": reason, "source": "stream"})
        == 1
    )


async def test_a_request_id_reused_with_other_content_is_a_conflict_not_a_second_score(
    h, publish_artifact
):
    h.registry.put(await publish_artifact(h.store, "m", 1), champion=True)
    await h.service.sync_all()
    first = ScoringRequested(model_name="m", request_id="r-1", features={"age": 1, "income": 0})
    forged = first.model_copy(update={"features": {"age": 9, "income": 9}})
    await scores_requested(h.service, [first, forged])
    await scores_requested(h.service, [forged])  # later, on its own: refused the same way
    await scores_requested(h.service, [first])  # the original redelivered: scored again
    made = h.publisher.of(PredictionMade)
    assert [m.features for m in made] == [{"age": 1.0, "income": 0.0}] * 2
    assert made[0].prediction_id == made[1].prediction_id
    failed = h.publisher.of(ScoringFailed)
    assert len(failed) == 2 and failed[0].event_id == failed[1].event_id
    assert failed[0].error.startswith("event_id_conflict: event ")
    assert failed[0].causation_id == first.event_id
    labels = {"reason": "event_id_conflict", "source": "stream"}
    assert h.value("modelbus_scorer_rejected_requests_total", labels) == 2


def test_seen_requests_remember_a_bounded_window():
    seen = SeenRequests(capacity=2)
    a, b, c = (ScoringRequested(model_name="m", request_id=r, features={"x": 1.0}) for r in "abc")
    assert not any(seen.conflicts(e) for e in (a, b, a, c))
    assert seen.conflicts(b.model_copy(update={"request_id": "z"}))
    # the window holds b and c: a was forgotten, so a changed a is taken as new
    assert not seen.conflicts(a.model_copy(update={"features": {"x": 2.0}}))


# --- HTTP scoring path + prediction log ------------------------------------------------------


async def test_http_predictions_are_logged_in_the_background_and_flushed(h, publish_artifact):
    h.registry.put(await publish_artifact(h.store, "m", 1), champion=True)
    await h.service.sync_all()
    await h.log.start()
    X = [[0.0, 0.0], [1.0, 1.0]]
    result = h.service.score("m", lambda served, limit: (np.asarray(X), "req-9"))
    assert h.publisher.of(PredictionMade) == []  # not published on the request path
    await h.log.stop()
    made = h.publisher.of(PredictionMade)
    assert [m.prediction_id for m in made] == result.prediction_ids
    assert {m.request_id for m in made} == {"req-9"}
    assert made[1].features == {"age": 1.0, "income": 1.0}
    assert all(m.source == "http" and m.served_by == "champion" for m in made)
    assert h.log.pending == 0


async def test_a_full_prediction_log_drops_and_counts(h, publish_artifact):
    h.registry.put(await publish_artifact(h.store, "m", 1), champion=True)
    await h.service.sync_all()
    h.service.score("m", lambda served, limit: (np.zeros((4, 2)), None))  # capacity is 5
    h.service.score("m", lambda served, limit: (np.zeros((2, 2)), None))  # dropped
    assert h.value("modelbus_scorer_prediction_log_dropped_total") == 2
    await h.log.start()
    await h.log.stop()
    assert len(h.publisher.of(PredictionMade)) == 4


async def test_a_stream_request_racing_the_start_up_sync_waits_for_it(h, publish_artifact):
    h.registry.put(await publish_artifact(h.store, "m", 1), champion=True)
    request = ScoringRequested(model_name="m", request_id="early", features={"age": 1, "income": 1})
    scoring = asyncio.create_task(scores_requested(h.service, [request]))
    await asyncio.sleep(0.05)
    assert not scoring.done()
    await h.service.sync_all()
    await asyncio.wait_for(scoring, 1)
    [made] = h.publisher.of(PredictionMade)
    assert made.request_id == "early"


async def test_before_any_sync_an_unknown_model_is_not_synced(h):
    h.service.first_sync_wait_s = 0.01
    request = ScoringRequested(model_name="m", request_id="r", features={"age": 1, "income": 1})
    await scores_requested(h.service, [request])
    [failed] = h.publisher.of(ScoringFailed)
    assert failed.error.startswith("not_synced")


async def test_one_models_store_trouble_does_not_starve_the_others(h, publish_artifact):
    h.registry.put(await publish_artifact(h.store, "a", 1), champion=True)
    h.registry.put(await publish_artifact(h.store, "b", 1), champion=True)
    real_get = h.store.get

    async def flaky_get(key: str) -> bytes:
        if key.startswith("artifacts/a/"):
            raise ConnectionError("store timeout")
        return await real_get(key)

    h.store.get = flaky_get
    with pytest.raises(ConnectionError):
        await h.service.sync_all()  # raised so the sync loop retries soon
    assert h.service.holder.get("b").current.version == 1
    assert h.service.holder.get("a").current is None
    assert h.service.synced.is_set() and not h.service.last_sync_ok
    assert h.publisher.of(ModelLoadFailed) == []  # transient: not a bad model
