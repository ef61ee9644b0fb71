"""Shadow and canary serving on fakes: sticky canary routing, the shadow never answers, a
raising canary is answered by the champion as a fallback, and the registry's rollout state is
what the scorer serves (loaded on sync, dropped when cleared)."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest

from modelbus_contracts import (
    ModelLoadFailed,
    ModelRolloutChanged,
    PredictionMade,
    ScoringFailed,
    ScoringRequested,
)
from modelbus_contracts.api import RolloutView
from modelbus_embedded.testing import service_app
from modelbus_platform.stores import LocalObjectStore
from modelbus_platform.testing import FakeRegistry, RecordingPublisher
from modelbus_scorer.api import Scoring, install_hot_routes
from modelbus_scorer.domain import ModelHolder
from modelbus_scorer.handlers import resync_on_control, scores_requested
from modelbus_scorer.prediction_log import PredictionLog
from modelbus_scorer.rollout import in_canary, routing_point
from modelbus_scorer.service import ScorerService
from modelbus_scorer.telemetry import ScorerMetrics


def test_canary_routing_is_sticky_and_respects_the_fraction():
    keys = [f"user-{i}" for i in range(10_000)]

    at_10 = {k for k in keys if in_canary(k, 0.1)}
    at_50 = {k for k in keys if in_canary(k, 0.5)}

    assert abs(len(at_10) / len(keys) - 0.1) < 0.015
    assert abs(len(at_50) / len(keys) - 0.5) < 0.02
    assert at_10 <= at_50  # a user in the canary stays in it as the fraction grows
    assert all(in_canary(k, 0.1) for k in list(at_10)[:100])  # same key, same arm
    assert routing_point("user-1") == routing_point("user-1")
    assert not any(in_canary(k, 0.0) for k in keys[:1000])


class Harness:
    def __init__(self, tmp_path) -> None:
        self.store = LocalObjectStore(tmp_path / "objects")
        self.registry = FakeRegistry()
        self.publisher = RecordingPublisher()
        metrics = self.metrics = ScorerMetrics("scorer-rollout-test")
        self.log = PredictionLog(self.publisher, metrics, producer="scorer", capacity=10_000)
        self.service = ScorerService(
            holder=ModelHolder(),
            registry=self.registry,
            store=self.store,
            publisher=self.publisher,
            metrics=metrics,
            prediction_log=self.log,
            producer="scorer",
            instance="scorer-1",
            max_instances=100,
        )

    async def expose(self, publish_artifact, make_model, mode, fraction=0.0, challenger=None):
        self.registry.put(await publish_artifact(self.store, "m", 1, make_model()), champion=True)
        view = await publish_artifact(
            self.store, "m", 2, challenger or make_model(coef=[-1.0, -1.0])
        )
        self.registry.versions[("m", 2)] = view
        self.registry.rollouts["m"] = RolloutView(
            mode=mode, version=2, champion_version=1, fraction=fraction
        )
        await self.service.sync_all()


@pytest.fixture
def h(tmp_path) -> Harness:
    return Harness(tmp_path)


def rows(n: int):
    return lambda served, limit: (np.ones((n, 2)), None)


async def test_shadow_scores_every_request_but_never_answers(h, publish_artifact, make_model):
    await h.expose(publish_artifact, make_model, "shadow")
    await h.log.start()

    result = h.service.score("m", rows(3))
    await h.log.stop()

    assert result.scored.served_by == "champion" and result.scored.served.version == 1
    made = h.publisher.of(PredictionMade)
    served = [m for m in made if m.served_by == "champion"]
    shadow = [m for m in made if m.served_by == "shadow"]
    assert [m.prediction_id for m in served] == result.prediction_ids
    assert [m.shadow_of for m in shadow] == result.prediction_ids
    assert {m.version for m in shadow} == {2}
    assert all(s.label != c.label for s, c in zip(shadow, served, strict=True))


async def test_canary_answers_its_fraction_by_routing_key(h, publish_artifact, make_model):
    await h.expose(publish_artifact, make_model, "canary", fraction=0.3)
    keys = [f"k{i}" for i in range(400)]

    arms = {k: h.service.score("m", rows(1), routing_key=k).scored.served_by for k in keys}
    again = {k: h.service.score("m", rows(1), routing_key=k).scored.served_by for k in keys}

    assert arms == again
    assert {arms[k] for k in keys} == {"canary", "champion"}
    assert {arms[k] == "canary" for k in keys} == {True, False}
    assert all((arms[k] == "canary") == in_canary(k, 0.3) for k in keys)
    canary = next(k for k in keys if arms[k] == "canary")
    assert h.service.score("m", rows(1), routing_key=canary).scored.served.version == 2


async def test_stream_shadow_predictions_have_deterministic_ids(h, publish_artifact, make_model):
    await h.expose(publish_artifact, make_model, "shadow")
    request = ScoringRequested(model_name="m", request_id="r-1", features={"age": 1, "income": 0})

    await scores_requested(h.service, [request])
    await scores_requested(h.service, [request])

    first, shadow, again, shadow_again = h.publisher.of(PredictionMade)
    assert (first.served_by, shadow.served_by) == ("champion", "shadow")
    assert shadow.shadow_of == first.prediction_id
    assert shadow.causation_id == request.event_id
    assert (shadow_again.event_id, again.event_id) == (shadow.event_id, first.event_id)


async def test_a_raising_canary_is_answered_by_the_champion_as_fallback(
    h, publish_artifact, make_model
):
    await h.expose(publish_artifact, make_model, "canary", fraction=0.99)
    challenger = h.service.challengers["m"]

    def boom(X):
        raise FloatingPointError("bad canary")

    object.__setattr__(challenger.served.model, "predict_proba", boom)
    key = next(f"k{i}" for i in range(100) if in_canary(f"k{i}", 0.99))

    result = h.service.score("m", rows(1), routing_key=key)

    assert result.scored.served_by == "fallback"
    assert result.scored.served.version == 1


async def test_a_raising_shadow_is_reported_and_never_affects_the_answer(
    h, publish_artifact, make_model
):
    await h.expose(publish_artifact, make_model, "shadow")
    challenger = h.service.challengers["m"]

    def boom(X):
        raise FloatingPointError("bad shadow")

    object.__setattr__(challenger.served.model, "predict_proba", boom)
    await h.log.start()

    result = h.service.score("m", rows(2))
    request = ScoringRequested(model_name="m", request_id="r-7", features={"age": 1, "income": 0})
    await scores_requested(h.service, [request])
    await scores_requested(h.service, [request])  # a redelivery: the same report
    await h.log.stop()

    assert (result.scored.served_by, result.scored.served.version) == ("champion", 1)
    made = h.publisher.of(PredictionMade)
    assert {m.served_by for m in made} == {"champion"}  # no shadow prediction was invented
    http_failed, stream_failed, stream_again = sorted(
        h.publisher.of(ScoringFailed), key=lambda e: e.causation_id is not None
    )
    assert (http_failed.served_by, http_failed.version) == ("shadow", 2)
    assert http_failed.request_id == result.prediction_ids[0]  # no request id: the prediction's
    assert "FloatingPointError: bad shadow" in http_failed.error
    assert (stream_failed.request_id, stream_failed.causation_id) == ("r-7", request.event_id)
    assert stream_again.event_id == stream_failed.event_id
    failures = h.metrics.registry.get_sample_value(
        "modelbus_scorer_shadow_failures_total", {"model": "m", "version": "2"}
    )
    assert failures == 3


async def test_rollout_follows_the_registry(h, publish_artifact, make_model):
    await h.expose(publish_artifact, make_model, "canary", fraction=0.1)
    assert h.service.challengers["m"].fraction == 0.1

    h.registry.rollouts["m"] = RolloutView(
        mode="canary", version=2, champion_version=1, fraction=0.5
    )
    changed = ModelRolloutChanged(model_name="m", version=2, mode="canary", fraction=0.5)
    await resync_on_control(h.service, changed)
    assert h.service.challengers["m"].fraction == 0.5

    h.registry.rollouts["m"] = RolloutView(mode="none")
    await resync_on_control(h.service, ModelRolloutChanged(model_name="m", mode="none"))
    assert "m" not in h.service.challengers
    assert h.service.score("m", rows(1), routing_key="x").scored.served_by == "champion"


async def test_an_unloadable_challenger_is_announced(h, publish_artifact, make_model):
    h.registry.put(await publish_artifact(h.store, "m", 1, make_model()), champion=True)
    view = await publish_artifact(h.store, "m", 2, data=b"not json", sha=uuid.uuid4().hex * 2)
    h.registry.versions[("m", 2)] = view
    h.registry.rollouts["m"] = RolloutView(mode="shadow", version=2, champion_version=1)

    await h.service.sync_all()

    [failed] = h.publisher.of(ModelLoadFailed)
    assert failed.version == 2
    assert "m" not in h.service.challengers


async def test_http_routing_key_header_or_body_pins_the_arm(h, publish_artifact, make_model):
    await h.expose(publish_artifact, make_model, "canary", fraction=0.5)
    app = service_app()
    install_hot_routes(app, Scoring(h.service))
    canary = next(f"u{i}" for i in range(100) if in_canary(f"u{i}", 0.5))
    stable = next(f"u{i}" for i in range(100) if not in_canary(f"u{i}", 0.5))
    body = {"features": {"age": 1, "income": 1}}
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        by_header = await client.post(
            "/models/m/predict", json=body, headers={"X-Routing-Key": canary}
        )
        by_body = await client.post("/models/m/predict", json={**body, "routing_key": stable})

    assert (by_header.json()["served_by"], by_header.json()["model_version"]) == ("canary", 2)
    assert (by_body.json()["served_by"], by_body.json()["model_version"]) == ("champion", 1)
