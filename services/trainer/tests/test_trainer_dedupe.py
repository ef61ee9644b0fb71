"""Commands deduplicated: the same training (model, data, effective params, seed) asked for
again within ``train_dedupe_window_s`` makes no second run, whoever asks (API, bus, schedule,
drift), on in-memory fakes; and on the real MongoDB-wire server, two trainer replicas racing on
the same request make one run."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
import pytest
from trainer_fixtures import Harness, drift_event, make_dataset

from modelbus_contracts import ModelTrained, TrainingRequested
from modelbus_embedded.testing import service_app
from modelbus_platform.scheduler import Fire
from modelbus_platform.settings import ServiceSettings
from modelbus_platform.stores import connect_mongo
from modelbus_platform.testing import InlineRelay, MemoryObjectStore, RecordingPublisher
from modelbus_trainer import api
from modelbus_trainer.adapters import MongoFeedbackStore, MongoLockStore, MongoRunStore
from modelbus_trainer.config import ScheduleSpec, TrainerSettings
from modelbus_trainer.domain import dedupe_key, run_id_for, scheduled_event, training_data
from modelbus_trainer.service import TrainerMetrics, TrainerService


async def _put(h: Harness, model: str = "m", seed: int = 0) -> str:
    return (await h.service.put_dataset(model, make_dataset(120, seed).to_csv_bytes()))["uri"]


def _request(uri: str | None, model: str = "m", **fields) -> TrainingRequested:
    return TrainingRequested(model_name=model, dataset_uri=uri, **fields)


def _deduplicated(metrics: TrainerMetrics, trigger: str) -> float:
    value = metrics.registry.get_sample_value(
        "modelbus_trainer_runs_deduplicated_total", {"trigger": trigger}
    )
    return value or 0.0


FAST = {"training": {"family": "logreg"}}  # quick runs: the rule is the same for any family


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.service.metrics = TrainerMetrics()
    for model in ("m", "n"):
        harness.registry.set_policy(model, FAST)
    return harness


async def test_the_same_request_within_the_window_makes_one_run(h):
    uri = await _put(h)
    first = await h.service.on_training_requested(_request(uri, seed=3))
    again = _request(uri, seed=3)
    assert await h.service.on_training_requested(again) is None  # nothing recorded
    await h.service.drain(10)
    assert list(h.runs.runs) == [first["run_id"]]
    assert await h.runs.get(run_id_for(again.event_id)) is None
    assert len(h.publisher.of(ModelTrained)) == 1
    assert _deduplicated(h.service.metrics, "manual") == 1

    h.clock.advance(h.settings.train_dedupe_window_s - 1)  # still within the window
    assert await h.service.on_training_requested(_request(uri, seed=3)) is None
    assert len(h.runs.runs) == 1


async def test_the_window_is_counted_from_the_run_and_then_the_same_request_runs(h):
    uri = await _put(h)
    await h.service.on_training_requested(_request(uri))
    await h.service.drain(10)
    h.clock.advance(h.settings.train_dedupe_window_s)
    later = await h.service.on_training_requested(_request(uri))
    assert later is not None
    await h.service.drain(10)
    assert len(h.runs.runs) == 2
    assert h.runs.claims[later["dedupe_key"]]["run_id"] == later["run_id"]


async def test_a_run_still_in_flight_is_a_duplicate_too(h):
    uri = await _put(h)
    await h.locks.acquire("m", "someone-else", h.clock.now, 600)  # the first run waits
    first = await h.service.on_training_requested(_request(uri))
    await asyncio.sleep(0.05)
    assert (await h.runs.get(first["run_id"]))["state"] == "pending"
    assert await h.service.on_training_requested(_request(uri)) is None
    await h.service.stop()
    assert len(h.runs.runs) == 1


async def test_a_failed_run_does_not_block_a_retry(h):
    h.store.objects["in/data.csv"] = b"x1,x2\n1,2\n"  # no label column: the run fails
    failed = await h.service.on_training_requested(_request("in/data.csv"))
    await h.service.drain(10)
    assert (await h.runs.get(failed["run_id"]))["state"] == "failed"
    retry = await h.service.on_training_requested(_request("in/data.csv"))
    assert retry is not None and retry["dedupe_key"] == failed["dedupe_key"]
    await h.service.drain(10)
    assert len(h.runs.runs) == 2
    assert _deduplicated(h.service.metrics, "manual") == 0


async def test_params_seed_data_or_model_that_differ_make_their_own_runs(h):
    uri, other = await _put(h, seed=0), await _put(h, seed=1)
    events = [
        _request(uri),
        _request(uri, seed=7),
        _request(uri, params={"l2": 0.5}),
        _request(other),
        _request(await _put(h, "n"), model="n"),
        _request(None),
        _request(None, since=h.clock.now - timedelta(hours=1)),
    ]
    runs = [await h.service.on_training_requested(e) for e in events]
    await h.service.stop()
    assert all(r is not None for r in runs)
    assert len({r["dedupe_key"] for r in runs}) == len(events)


async def test_the_key_is_of_the_effective_params_and_seed(h):
    """The default seed given explicitly, or a param the model's policy sets anyway, asks for
    the same training as leaving them out."""
    h.registry.set_policy("m", {"training": {"family": "logreg", "params": {"epochs": 40}}})
    uri = await _put(h)
    first = await h.service.on_training_requested(_request(uri))
    assert first["params"]["family"] == "logreg" and first["params"]["epochs"] == 40
    explicit = _request(uri, seed=h.settings.default_seed, params={"epochs": 40})
    assert await h.service.on_training_requested(explicit) is None
    await h.service.drain(10)
    assert len(h.runs.runs) == 1


async def test_a_dataset_not_content_addressed_is_identified_by_its_bytes(h):
    h.store.objects["in/data.csv"] = make_dataset(80, 0).to_csv_bytes()
    first = await h.service.on_training_requested(_request("in/data.csv"))
    await h.service.drain(10)
    h.store.objects["in/data.csv"] = make_dataset(80, 1).to_csv_bytes()  # replaced in place
    changed = await h.service.on_training_requested(_request("in/data.csv"))
    assert changed is not None and changed["dedupe_key"] != first["dedupe_key"]
    await h.service.drain(10)
    h.store.objects["in/data.csv"] = make_dataset(80, 0).to_csv_bytes()  # the first bytes again
    assert await h.service.on_training_requested(_request("in/data.csv")) is None
    assert len(h.runs.runs) == 2


async def test_a_snapshot_is_identified_by_its_content_address_without_reading_it(h):
    uri = await _put(h)
    event = _request(uri)
    del h.store.objects[uri]  # not read: the key names the content
    run = await h.service.on_training_requested(event)
    await h.service.stop()
    sha = uri.rsplit("/", 1)[1].removesuffix(".csv")
    assert run["dedupe_key"] == dedupe_key(run, {"dataset_sha256": sha})
    assert training_data(event, sha) == {"dataset_sha256": sha}


async def test_two_concurrent_identical_requests_make_one_run(h):
    uri = await _put(h)
    outcomes = await asyncio.gather(
        *(h.service.on_training_requested(_request(uri, seed=1)) for _ in range(2))
    )
    await h.service.drain(10)
    assert sum(o is not None for o in outcomes) == 1
    assert len(h.runs.runs) == 1 and len(h.publisher.of(ModelTrained)) == 1
    assert _deduplicated(h.service.metrics, "manual") == 1


async def test_scheduled_fires_on_an_unchanged_dataset_make_one_run(h):
    uri = await _put(h)
    spec = ScheduleSpec(cron="* * * * *", dataset_uri=uri)
    fires = [Fire("m", spec, h.clock.now + timedelta(minutes=i), uuid.uuid4()) for i in range(1, 6)]
    outcomes = []
    for fire in fires:
        h.clock.now = fire.at
        outcomes.append(await h.service.on_training_requested(scheduled_event(fire)))
        await h.service.drain(10)
    assert [o is not None for o in outcomes] == [True, False, False, False, False]
    assert len(h.runs.runs) == 1 and len(h.publisher.of(ModelTrained)) == 1
    assert _deduplicated(h.service.metrics, "schedule") == 4
    # an API request for the same training is the same run too
    assert await h.service.on_training_requested(_request(uri)) is None


async def test_drift_re_emitted_for_the_same_incident_and_attempt_makes_one_run():
    h = Harness(drift_min_rows=1000, drift_wait_timeout_s=5, drift_cooldown_s=0)  # it waits
    drift = drift_event("m", h.clock.now)
    first = await h.service.on_drift(drift)
    same = drift.model_copy(update={"event_id": uuid.uuid4()})  # a second detector replica
    assert await h.service.on_drift(same) is None
    await h.service.stop()
    assert list(h.runs.runs) == [first["run_id"]]
    next_attempt = drift.model_copy(update={"event_id": uuid.uuid4(), "attempt": 2})
    assert training_data(next_attempt) != training_data(drift)


async def test_a_window_of_zero_turns_deduplication_off():
    h = Harness(train_dedupe_window_s=0)
    h.registry.set_policy("m", FAST)
    uri = await _put(h)
    for _ in range(3):
        assert await h.service.on_training_requested(_request(uri)) is not None
    await h.service.drain(10)
    assert len(h.runs.runs) == 3 and h.runs.claims == {}


# -- HTTP ------------------------------------------------------------------------------------


@pytest.fixture
async def client(h):
    app = service_app(api.router, context=h.service)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://trainer"
    ) as http:
        yield http
    await h.service.stop()


async def test_the_api_answers_a_duplicate_with_the_existing_run(client, h):
    uri = await _put(h)
    first = await client.post("/models/m/train", json={"dataset_uri": uri, "seed": 2})
    assert first.status_code == 202 and first.json()["duplicate"] is False
    again = await client.post("/models/m/train", json={"dataset_uri": uri, "seed": 2})
    assert again.status_code == 200
    assert again.json() == {**first.json(), "duplicate": True}
    assert len(h.publisher.of(TrainingRequested)) == 1  # nothing published for the duplicate
    other = await client.post("/models/m/train", json={"dataset_uri": uri, "seed": 3})
    assert other.status_code == 202 and other.json()["run_id"] != first.json()["run_id"]


async def test_twenty_concurrent_api_requests_make_one_request_and_one_run(client, h):
    uri = await _put(h)
    answers = await asyncio.gather(
        *(client.post("/models/m/train", json={"dataset_uri": uri}) for _ in range(20))
    )
    assert sorted(a.status_code for a in answers) == [200] * 19 + [202]
    assert {a.json()["run_id"] for a in answers} == {answers[0].json()["run_id"]}
    [event] = h.publisher.of(TrainingRequested)
    await h.service.on_training_requested(event)  # the bus delivers it: the API's claim is its
    await h.service.drain(10)
    assert list(h.runs.runs) == [answers[0].json()["run_id"]]
    assert len(h.publisher.of(ModelTrained)) == 1


async def test_a_request_that_could_not_be_published_claims_nothing(client, h):
    uri = await _put(h)
    published = h.service.publisher

    class Down:
        async def publish(self, event):
            raise ConnectionError("broker down")

    h.service.publisher = Down()
    failed = await client.post("/models/m/train", json={"dataset_uri": uri})
    assert failed.status_code == 500
    assert h.runs.claims == {}
    h.service.publisher = published
    retry = await client.post("/models/m/train", json={"dataset_uri": uri})
    assert retry.status_code == 202 and retry.json()["duplicate"] is False


# -- two replicas on the real MongoDB-wire server ------------------------------------------


@pytest.mark.integration
async def test_two_replicas_on_mongodb_make_one_run_of_concurrent_identical_requests(infra, unique):
    store = MemoryObjectStore()
    replicas, clients = [], []
    for _ in range(2):
        client, db = connect_mongo(
            ServiceSettings(mongo_uri=infra.mongo_uri, mongo_db=f"dedupe_{unique}")
        )
        runs = MongoRunStore(db)
        await runs.init()
        publisher = RecordingPublisher()
        replicas.append(
            TrainerService(
                TrainerSettings(code_version="it"),
                runs=runs,
                feedback=MongoFeedbackStore(db),
                locks=MongoLockStore(db),
                store=store,
                publisher=publisher,
                events=InlineRelay([runs.outbox], publisher),
            )
        )
        clients.append(client)
    try:
        stored = await replicas[0].put_dataset(f"m-{unique}", make_dataset(100).to_csv_bytes())
        fast = {"family": "logreg"}
        events = [
            _request(stored["uri"], model=f"m-{unique}", seed=4, params=fast) for _ in range(6)
        ]
        outcomes = await asyncio.gather(
            *(replicas[i % 2].on_training_requested(e) for i, e in enumerate(events))
        )
        made = [o for o in outcomes if o is not None]
        assert len(made) == 1
        for replica in replicas:
            await replica.drain(30)
        runs = await replicas[1].runs.list(f"m-{unique}", 10)
        assert [r["run_id"] for r in runs] == [made[0]["run_id"]]
        assert runs[0]["state"] == "succeeded", runs[0]["reason"]
        claim = await replicas[1].runs.get_claim(made[0]["dedupe_key"])
        assert claim["run_id"] == made[0]["run_id"]
        # after the run: still a duplicate on either replica
        assert (
            await replicas[1].on_training_requested(
                events[0].model_copy(update={"event_id": uuid.uuid4()})
            )
            is None
        )
    finally:
        for replica in replicas:
            await replica.stop()
        for client in clients:
            await client.close()
