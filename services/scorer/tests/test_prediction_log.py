"""The prediction log: a scored batch's records decode to exactly the events the pydantic path
builds (the contracts' batch encoder), and failed publishes are counted, never raised into
requests."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import numpy as np
import orjson

from modelbus_contracts import PredictionMade, ScoringRequested, decode, encode
from modelbus_ml.outputs import Outputs
from modelbus_platform.testing import RecordingPublisher
from modelbus_scorer.prediction_log import PredictionBatch, PredictionLog, random_ids
from modelbus_scorer.telemetry import ScorerMetrics

FEATURES = ("age", "tenure", "spend")


def batch(n: int = 3, scores=None, labels=None, **overrides) -> PredictionBatch:
    rng = np.random.default_rng(n)
    scores = rng.uniform(size=n) if scores is None else scores
    labels = rng.integers(0, 2, size=n) if labels is None else labels
    fields = dict(
        model_name="churn",
        version=4,
        feature_names=FEATURES,
        X=rng.normal(size=(n, len(FEATURES))),
        outputs=Outputs("binary", (), scores=scores, labels=labels),
        prediction_ids=random_ids(n),
        request_id="req-1",
        served_by="champion",
        source="http",
        latency_ms=0.37,
    )
    fields.update(overrides)
    return PredictionBatch(**fields)


def decoded(records) -> list[PredictionMade]:
    return [decode(headers, value, expected=PredictionMade) for _, value, headers in records]


def validated(b: PredictionBatch, i: int, producer: str = "scorer") -> PredictionMade:
    """Row ``i`` of ``b`` as the validated pydantic event, encoded and decoded."""
    cause = b.cause
    event = PredictionMade(
        producer=producer,
        model_name=b.model_name,
        prediction_id=b.prediction_ids[i],
        request_id=b.request_id,
        version=b.version,
        features={
            f: None if v != v else v for f, v in zip(b.feature_names, b.X[i].tolist(), strict=True)
        },
        **b.outputs.record(i),
        served_by=b.served_by,
        shadow_of=b.shadow_of[i] if b.shadow_of else None,
        source=b.source,
        latency_ms=b.latency_ms,
        occurred_at=b.occurred_at,
        **(
            {"correlation_id": cause.correlation_id, "causation_id": cause.event_id}
            if cause is not None
            else {}
        ),
    )
    record = encode(event)
    return decode(record.headers, record.value)


def comparable(event: PredictionMade) -> dict:
    """Everything but the ids a fresh event draws at random."""
    if event.causation_id is None:  # an uncaused prediction starts its own chain
        assert event.correlation_id == event.event_id
    return event.model_dump(exclude={"event_id", "correlation_id"})


WHEN = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_records_decode_to_the_validated_events():
    b = batch(5, occurred_at=WHEN)

    fast = decoded(b.records("scorer"))
    slow = [validated(b, i) for i in range(5)]

    assert [comparable(e) for e in fast] == [
        e.model_dump(exclude={"event_id", "correlation_id"}) for e in slow
    ]
    assert [e.prediction_id for e in fast] == b.prediction_ids
    assert {e.producer for e in fast} == {"scorer"}
    assert fast[0].features == dict(zip(FEATURES, b.X[0].tolist(), strict=True))
    assert all(e.occurred_at.tzinfo is not None for e in fast)
    assert len({e.event_id for e in fast}) == 5  # one id per prediction


def mixed_rows(n: int) -> np.ndarray:
    """Rows of a model with a nullable number and a nullable category, some missing."""
    X = np.empty((n, 2), dtype=object)
    X[:, 0] = [float(i) if i % 2 else np.nan for i in range(n)]
    X[:, 1] = ["paris" if i % 3 else None for i in range(n)]
    return X


def test_multiclass_records_carry_the_class_and_every_probability():
    proba = np.array([[0.2, 0.7, 0.1], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    classes = ("high", "low", "mid")
    best = proba.argmax(axis=1)
    outputs = Outputs(
        "multiclass",
        classes,
        scores=proba.max(axis=1),
        labels=np.asarray(classes, dtype=object)[best],
        proba=proba,
    )
    b = batch(
        3,
        outputs=outputs,
        X=mixed_rows(3),
        feature_names=("age", "city"),
        missing=True,
        occurred_at=WHEN,
    )

    fast = decoded(b.records("scorer"))

    assert [e.label for e in fast] == ["low", "high", "mid"]
    assert [e.score for e in fast] == [0.7, 0.5, 0.8]
    assert fast[0].probabilities == {"high": 0.2, "low": 0.7, "mid": 0.1}
    assert fast[0].features == {"age": None, "city": None}  # NaN and None: both null
    assert fast[1].features == {"age": 1.0, "city": "paris"}
    assert [comparable(e) for e in fast] == [
        validated(b, i).model_dump(exclude={"event_id", "correlation_id"}) for i in range(3)
    ]


def test_regression_records_carry_the_value_only():
    outputs = Outputs("regression", (), values=np.array([3.5, -1.25]))
    b = batch(
        2,
        outputs=outputs,
        X=mixed_rows(2),
        feature_names=("age", "city"),
        missing=True,
        occurred_at=WHEN,
    )

    fast = decoded(b.records("scorer"))

    assert [e.value for e in fast] == [3.5, -1.25]
    assert {(e.score, e.label, e.probabilities) for e in fast} == {(None, None, None)}
    assert [comparable(e) for e in fast] == [
        validated(b, i).model_dump(exclude={"event_id", "correlation_id"}) for i in range(2)
    ]


def test_a_caused_batch_derives_its_ids_and_keeps_the_correlation():
    cause = ScoringRequested(
        producer="upstream", model_name="churn", request_id="r-9", features={"age": 1.0}
    )
    b = batch(1, cause=cause, source="stream", request_id="r-9", occurred_at=WHEN)

    [fast] = decoded(b.records("scorer"))
    [again] = decoded(b.records("scorer"))

    assert fast.event_id == again.event_id  # deterministic: a redelivered request, the same event
    assert fast.event_id == uuid.uuid5(cause.event_id, f"prediction.made.v1/{b.prediction_ids[0]}")
    assert fast.correlation_id == cause.correlation_id
    assert fast.causation_id == cause.event_id
    assert fast.model_dump(exclude={"event_id"}) == validated(b, 0).model_dump(exclude={"event_id"})


def test_shadow_records_name_the_prediction_they_mirror():
    served = batch(2)
    shadow = batch(2, served_by="shadow", version=5, shadow_of=served.prediction_ids)

    events = decoded(shadow.records("scorer"))

    assert [e.shadow_of for e in events] == served.prediction_ids
    assert {e.served_by for e in events} == {"shadow"}


def test_the_record_key_is_the_model_and_the_value_is_the_data_only():
    [(key, value, headers)] = batch(1).records("scorer")

    assert key == b"churn"
    data = orjson.loads(value)
    assert "event_id" not in data and data["model_name"] == "churn"
    names = [name for name, _ in headers]
    assert names[:2] == ["ce_specversion", "ce_type"] and "ce_causationid" not in names


def test_an_unset_time_is_when_the_batch_is_encoded():
    before = datetime.now(UTC).replace(microsecond=0)
    [event] = decoded(batch(1).records("scorer"))
    assert before <= event.occurred_at <= datetime.now(UTC)


def test_a_batch_that_breaks_the_contract_is_refused_with_the_reason():
    import pytest

    from modelbus_contracts import ContractError

    with pytest.raises(ContractError, match="score"):
        batch(2, scores=np.array([0.5, np.nan])).records("scorer")


class FailingPublisher(RecordingPublisher):
    async def publish_records(self, topic, records):
        raise ConnectionError("broker unreachable")


async def test_a_failed_publish_is_counted_and_the_log_keeps_running():
    metrics = ScorerMetrics("scorer-log-test")
    log = PredictionLog(FailingPublisher(), metrics, producer="scorer", capacity=100)
    await log.start()

    assert log.submit(batch(3))
    await asyncio.sleep(0.05)
    await log.stop()

    assert metrics.log_errors._value.get() == 3
    assert log.pending == 0


async def test_queued_batches_are_published_together_on_stop():
    publisher = RecordingPublisher()
    metrics = ScorerMetrics("scorer-log-test-2")
    log = PredictionLog(publisher, metrics, producer="scorer", capacity=1000)
    batches = [batch(2) for _ in range(70)]
    await log.start()
    for b in batches:
        assert log.submit(b)
    await log.stop()

    published = [e.prediction_id for e in publisher.of(PredictionMade)]
    assert published == [pid for b in batches for pid in b.prediction_ids]


class CountingPublisher(RecordingPublisher):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    async def publish_records(self, topic, records):
        self.calls.append(len(records))
        await super().publish_records(topic, records)


async def test_the_log_lingers_so_predictions_arriving_together_share_one_publish():
    publisher = CountingPublisher()
    metrics = ScorerMetrics("scorer-log-test-3")
    log = PredictionLog(publisher, metrics, producer="scorer", capacity=100, linger_s=0.05)
    await log.start()

    log.submit(batch(1))
    await asyncio.sleep(0.01)  # within the linger: joins the same publish
    log.submit(batch(2))
    await asyncio.sleep(0.1)
    await log.stop()

    assert publisher.calls == [3]
