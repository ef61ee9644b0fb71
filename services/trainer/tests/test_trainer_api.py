"""The HTTP API on a fake-backed service: status codes, 4xx reasons, response shapes."""

from __future__ import annotations

import httpx
import pytest
from trainer_fixtures import Harness, feedback_events, make_dataset

from modelbus_contracts import TrainingRequested
from modelbus_embedded.testing import service_app
from modelbus_trainer import api
from modelbus_trainer.domain import run_id_for


@pytest.fixture
async def client_and_harness():
    h = Harness()
    app = service_app(api.router, context=h.service)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://trainer"
    ) as client:
        yield client, h
    await h.service.stop()


async def test_train_publishes_a_training_request(client_and_harness):
    client, h = client_and_harness
    body = {"dataset_uri": "datasets/m/x.csv", "params": {"epochs": 10}, "seed": 9}
    response = await client.post("/models/m/train", json=body)
    assert response.status_code == 202
    [event] = h.publisher.of(TrainingRequested)
    assert response.json() == {
        "event_id": str(event.event_id),
        "correlation_id": str(event.correlation_id),
        "run_id": run_id_for(event.event_id),
        "duplicate": False,
    }
    assert (event.reason, event.dataset_uri, event.seed) == ("api", "datasets/m/x.csv", 9)
    assert event.params == {"epochs": 10} and event.producer == "trainer"


async def test_train_rejects_bad_model_names_and_bodies(client_and_harness):
    client, h = client_and_harness
    assert (await client.post("/models/-bad/train", json={})).status_code == 422
    assert (await client.post("/models/m/train", json={"seed": "x"})).status_code == 422
    assert h.publisher.events == []


async def test_put_dataset_validates_and_stores(client_and_harness):
    client, h = client_and_harness
    csv = make_dataset(20).to_csv_bytes()
    response = await client.put(
        "/datasets/m", content=csv, headers={"content-type": "text/csv; charset=utf-8"}
    )
    assert response.status_code == 200
    stored = response.json()
    assert stored["rows"] == 20 and stored["feature_names"] == ["x1", "x2"]
    assert h.store.objects[stored["uri"]] == csv


@pytest.mark.parametrize(
    ("body", "content_type", "status", "reason", "message"),
    [
        (b"a,b\n1,2\n", "text/csv", 422, "bad_dataset", "no 'label' column"),
        (b"a,label\n1,7\n", "text/csv", 422, "bad_dataset", "at least two classes"),
        (b"a,label\n", "text/csv", 422, "bad_dataset", "no rows"),
        (b"a,label\n1,1\n", "application/json", 415, "unsupported_media_type", "expected text/csv"),
    ],
)
async def test_put_dataset_rejects_bad_input_with_a_reason(
    client_and_harness, body, content_type, status, reason, message
):
    client, h = client_and_harness
    response = await client.put("/datasets/m", content=body, headers={"content-type": content_type})
    assert response.status_code == status
    assert response.json()["reason"] == reason
    assert message in response.json()["error"]
    assert h.store.objects == {}


async def test_runs_and_feedback_count(client_and_harness):
    client, h = client_and_harness
    uri = (await h.service.put_dataset("m", make_dataset(100).to_csv_bytes()))["uri"]
    event = TrainingRequested(model_name="m", dataset_uri=uri)
    await h.service.on_training_requested(event)
    await h.service.drain(10)
    await h.add_feedback(feedback_events("m", 3, h.clock.now))

    run = (await client.get(f"/runs/{run_id_for(event.event_id)}")).json()
    assert run["state"] == "succeeded" and run["created_at"].startswith("2025-01-01")
    listed = (await client.get("/runs", params={"model_name": "m", "limit": 5})).json()
    assert [r["run_id"] for r in listed] == [run["run_id"]]
    assert (await client.get("/runs", params={"model_name": "other"})).json() == []
    assert (await client.get("/runs/nope")).status_code == 404
    assert (await client.get("/runs", params={"limit": 0})).status_code == 422
    count = (await client.get("/models/m/feedback/count")).json()
    assert count == {"model_name": "m", "complete": 3, "total": 3}


@pytest.mark.parametrize("seed", [-1, 2**53 + 1, 2**63, 2**64])
async def test_a_seed_out_of_range_is_422_naming_it(client_and_harness, seed):
    client, h = client_and_harness
    response = await client.post("/models/m/train", json={"seed": seed})
    assert response.status_code == 422
    assert response.json()["details"][0]["loc"] == ["body", "seed"]
    assert h.publisher.events == []


@pytest.mark.parametrize(
    "params", [{"ep\x00ochs": 3}, {"candidate_params": {"logreg": {"l\n2": 1}}}]
)
async def test_a_params_key_with_a_control_character_is_422_and_nothing_is_requested(
    client_and_harness, params
):
    client, h = client_and_harness
    response = await client.post("/models/m/train", json={"params": params})
    assert response.status_code == 422
    assert response.json()["details"][0]["loc"][:2] == ["body", "params"]
    assert "control character" in response.json()["error"]
    assert h.publisher.events == []


async def test_a_csv_column_with_a_nul_is_refused_before_it_is_stored(client_and_harness):
    client, h = client_and_harness
    csv = b"age,in\x00come,label\n1,2,0\n2,1,1\n3,3,0\n"
    response = await client.put("/datasets/m", content=csv, headers={"content-type": "text/csv"})
    assert response.status_code == 422
    assert response.json()["reason"] == "bad_dataset"
    assert "column 1's name holds a control character" in response.json()["error"]
    assert h.store.objects == {}
