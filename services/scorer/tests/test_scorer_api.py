"""The HTTP API (native and Open Inference Protocol v2) on fakes, through ASGI.

Every test runs twice: with the scoring routes found by the data plane's router (production)
and by FastAPI's, so both give the same answers."""

from __future__ import annotations

import math

import httpx
import numpy as np
import orjson
import pytest

from modelbus_contracts import PredictionMade
from modelbus_embedded.testing import DocumentedStatuses
from modelbus_ml import LogisticModel
from modelbus_platform.http import create_app
from modelbus_platform.stores import LocalObjectStore
from modelbus_platform.testing import FakeRegistry, RecordingPublisher
from modelbus_scorer.api import Scoring, build_router, install_hot_routes
from modelbus_scorer.api_models import InferRequest, InferResponse, PredictRequest, PredictResponse
from modelbus_scorer.bootstrap import build_app, control_group
from modelbus_scorer.config import ScorerSettings
from modelbus_scorer.domain import ModelHolder, Served
from modelbus_scorer.prediction_log import PredictionLog
from modelbus_scorer.service import ScorerService
from modelbus_scorer.telemetry import ScorerMetrics


class Api:
    def __init__(self, tmp_path, fast: bool = True) -> None:
        self.store = LocalObjectStore(tmp_path)
        self.registry = FakeRegistry()
        self.publisher = RecordingPublisher()
        self.metrics = scorer_metrics = ScorerMetrics("scorer-api-test")
        self.log = PredictionLog(self.publisher, scorer_metrics, producer="scorer", capacity=1000)
        self.service = ScorerService(
            holder=ModelHolder(),
            registry=self.registry,
            store=self.store,
            publisher=self.publisher,
            metrics=scorer_metrics,
            prediction_log=self.log,
            producer="scorer",
            instance="i-1",
            max_instances=50,
        )
        self.ready = {"bus": True}

        async def readiness() -> dict[str, bool]:
            return dict(self.ready)

        app = create_app(
            title="t",
            description="t",
            metrics=self.metrics,
            readiness=readiness,
            max_body_bytes=2000,
            fast_router=fast,
        )
        app.include_router(build_router(self.service, readiness))
        install_hot_routes(app, Scoring(self.service))
        app.add_middleware(DocumentedStatuses)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://scorer"
        )

    def rejected(self, reason: str) -> float:
        labels = {"reason": reason, "source": "http"}
        value = self.metrics.registry.get_sample_value(
            "modelbus_scorer_rejected_requests_total", labels
        )
        return value or 0.0


@pytest.fixture(params=["fast", "framework"])
async def api(request, tmp_path, publish_artifact):
    a = Api(tmp_path, fast=request.param == "fast")
    a.registry.put(await publish_artifact(a.store, "m", 1), champion=True)
    a.registry.add_model("empty")
    await a.service.sync_all()
    yield a
    await a.client.aclose()


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


async def test_native_predict(api):
    body = {"instances": [{"age": 1, "income": 1}, {"age": -3, "income": 0}], "request_id": "r"}
    response = await api.client.post("/models/m/predict", json=body)
    assert response.status_code == 200
    doc = response.json()
    assert (doc["model_name"], doc["model_version"], doc["served_by"]) == ("m", 1, "champion")
    assert doc["request_id"] == "r"
    scores = [p["score"] for p in doc["predictions"]]
    assert scores == pytest.approx([sigmoid(2), sigmoid(-3)])
    assert [p["label"] for p in doc["predictions"]] == [1, 0]
    assert all(len(p["prediction_id"]) == 32 for p in doc["predictions"])


async def test_native_single_features_and_the_prediction_is_logged(api):
    await api.log.start()
    response = await api.client.post(
        "/models/m/predict", json={"features": {"age": 0, "income": 0}}
    )
    await api.log.stop()
    [prediction] = response.json()["predictions"]
    [made] = api.publisher.of(PredictionMade)
    assert made.prediction_id == prediction["prediction_id"]
    assert made.source == "http" and made.version == 1


async def test_v2_infer_per_feature_inputs(api):
    body = {
        "id": "req-1",
        "inputs": [
            {"name": "age", "shape": [2], "datatype": "FP64", "data": [1.0, -1.0]},
            {"name": "income", "shape": [2, 1], "datatype": "INT64", "data": [1, 0]},
        ],
    }
    response = await api.client.post("/v2/models/m/infer", json=body)
    assert response.status_code == 200
    doc = response.json()
    assert (doc["model_name"], doc["model_version"], doc["id"]) == ("m", "1", "req-1")
    score, label = doc["outputs"]
    assert score["name"] == "score" and score["datatype"] == "FP64" and score["shape"] == [2]
    assert score["data"] == pytest.approx([sigmoid(2), sigmoid(-1)])
    assert label == {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]}
    assert doc["parameters"]["served_by"] == "champion"
    assert len(doc["parameters"]["prediction_ids"]) == 2


async def test_v2_infer_single_matrix_input(api):
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 0.5]}]}
    response = await api.client.post("/v2/models/m/infer", json=body)
    assert response.status_code == 200
    assert response.json()["outputs"][0]["data"] == pytest.approx([sigmoid(1)])


async def test_v2_metadata_and_readiness(api):
    server = (await api.client.get("/v2")).json()
    assert server["name"] == "modelbus-scorer"
    meta = (await api.client.get("/v2/models/m")).json()
    assert meta["platform"] == "modelbus-logreg"  # the family of the served version
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [
        {"name": "age", "datatype": "FP64", "shape": [-1]},
        {"name": "income", "datatype": "FP64", "shape": [-1]},
    ]
    assert [o["name"] for o in meta["outputs"]] == ["score", "label"]
    assert (await api.client.get("/v2/models/m/ready")).status_code == 200
    not_loaded = await api.client.get("/v2/models/empty/ready")
    assert not_loaded.status_code == 503 and not_loaded.json()["reason"]
    assert (await api.client.get("/v2/models/nope/ready")).status_code == 404
    assert (await api.client.get("/v2/models/empty")).status_code == 503
    assert (await api.client.get("/v2/health/live")).status_code == 200
    assert (await api.client.get("/v2/health/ready")).status_code == 200
    api.ready["bus"] = False
    assert (await api.client.get("/v2/health/ready")).status_code == 503


@pytest.mark.parametrize("path", ["/models/{}/predict", "/v2/models/{}/infer"])
async def test_unknown_model_is_404_and_unloaded_is_503(api, path):
    body = {"features": {"age": 1, "income": 1}}
    unknown = await api.client.post(path.format("nope"), json=body)
    assert unknown.status_code == 404 and unknown.json()["reason"] == "unknown_model"
    unloaded = await api.client.post(path.format("empty"), json=body)
    assert unloaded.status_code == 503 and unloaded.json()["reason"] == "model_not_loaded"


@pytest.mark.parametrize(
    ("path", "raw", "status", "reason"),
    [
        ("/models/m/predict", b"{not json", 400, "invalid_json"),
        ("/models/m/predict", b'{"features": {"age": NaN, "income": 1}}', 400, "invalid_json"),
        ("/models/m/predict", b'{"instances": []}', 422, "empty_batch"),
        ("/models/m/predict", b'{"features": {"age": 1}}', 422, "feature_mismatch"),
        ("/models/m/predict", b'{"features": {"age": "a", "income": 1}}', 422, "not_a_number"),
        ("/models/m/predict", b'{"features": {"age": 1e999, "income": 1}}', 400, "invalid_json"),
        (
            "/models/m/predict",
            orjson.dumps({"instances": [{"age": 1, "income": 1}] * 51}),
            422,
            "too_many_instances",
        ),
        (
            "/v2/models/m/infer",
            b'{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3]}]}',
            422,
            "length_mismatch",
        ),
        (
            "/v2/models/m/infer",
            b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}',
            422,
            "feature_mismatch",
        ),
    ],
)
async def test_bad_requests_are_refused_with_a_reason_and_counted(api, path, raw, status, reason):
    response = await api.client.post(path, content=raw)
    assert response.status_code == status
    assert response.json()["reason"] == reason
    assert response.json()["error"]
    assert api.rejected(reason) == 1


async def test_oversized_body_is_413(api):
    big = orjson.dumps({"instances": [{"age": 1, "income": 1}] * 100})
    response = await api.client.post("/models/m/predict", content=big)
    assert response.status_code == 413


async def test_a_crashing_model_is_answered_by_the_warm_previous(api):
    slots = api.service.holder.get("m")
    crashing = LogisticModel(("age", "income"), np.ones(3), 0.0, np.zeros(2), np.ones(2), 0.5)
    api.service.holder.swap("m", Served(2, crashing, ("age", "income"), "f" * 64))
    assert api.service.holder.get("m").previous is slots.current
    response = await api.client.post(
        "/models/m/predict", json={"features": {"age": 1, "income": 1}}
    )
    doc = response.json()
    assert response.status_code == 200
    assert (doc["served_by"], doc["model_version"]) == ("fallback", 1)
    assert (
        api.metrics.registry.get_sample_value("modelbus_scorer_fallbacks_total", {"model": "m"})
        == 1
    )


async def test_build_app_wires_routes_groups_and_readiness_without_connecting(tmp_path):
    settings = ScorerSettings(instance_id="pod-7", kafka_bootstrap="127.0.0.1:1")
    assert (settings.service_name, settings.http_port) == ("scorer", 8004)
    assert control_group(settings) == "scorer-control-pod-7"
    registry = FakeRegistry()
    registry.down = True
    app = build_app(settings, registry=registry, store=LocalObjectStore(tmp_path))
    paths = set(app.openapi()["paths"])
    assert {"/models/{name}/predict", "/v2/models/{name}/infer", "/v2/health/ready"} <= paths
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://scorer"
    ) as client:
        response = await client.get("/health/ready")
    assert response.status_code == 503  # not started: nothing is checked, nothing is ready
    assert response.json()["checks"] == dict.fromkeys(
        ("bus", "dependencies", "consumers", "object_store", "registry", "synced"), False
    )


async def test_before_the_first_sync_models_are_503_not_404(tmp_path):
    api = Api(tmp_path)
    try:
        response = await api.client.post("/models/m/predict", json={"features": {"age": 1}})
        assert response.status_code == 503
        assert response.json()["reason"] == "not_synced"
        assert (await api.client.get("/v2/models/m/ready")).status_code == 503
    finally:
        await api.client.aclose()


async def test_v2_version_paths_only_answer_for_the_version_being_served(api):
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [0, 0]}]}
    ok = await api.client.post("/v2/models/m/versions/1/infer", json=body)
    assert ok.status_code == 200 and ok.json()["model_version"] == "1"
    other = await api.client.post("/v2/models/m/versions/7/infer", json=body)
    assert other.status_code == 404 and other.json()["reason"] == "version_not_served"
    assert (await api.client.get("/v2/models/m/versions/1")).json()["versions"] == ["1"]
    assert (await api.client.get("/v2/models/m/versions/7")).status_code == 404
    assert (await api.client.get("/v2/models/m/versions/1/ready")).status_code == 200
    not_ready = await api.client.get("/v2/models/m/versions/7/ready")
    assert not_ready.status_code == 404
    assert not_ready.json() == {
        "error": "model 'm' serves version 1",
        "reason": "version_not_served",
    }


V2_BODIES = [
    {
        "id": "r-1",
        "inputs": [
            {"name": "age", "shape": [2], "datatype": "FP64", "data": [1.0, -1.0]},
            {"name": "income", "shape": [2, 1], "datatype": "INT64", "data": [[1], [0]]},
        ],
        "parameters": {"routing_key": "user-1"},
    },
    {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 0.5]}]},
]
NATIVE_BODIES = [
    {"instances": [{"age": 1, "income": 1}, {"age": -3, "income": 0}], "request_id": "r"},
    {"features": {"age": 0.5, "income": 2}, "routing_key": "user-2"},
]


@pytest.mark.parametrize(
    ("path", "body", "documented_request", "documented_response"),
    [("/v2/models/m/infer", b, InferRequest, InferResponse) for b in V2_BODIES]
    + [("/v2/models/m/versions/1/infer", V2_BODIES[1], InferRequest, InferResponse)]
    + [("/models/m/predict", b, PredictRequest, PredictResponse) for b in NATIVE_BODIES],
)
async def test_requests_and_answers_are_what_openapi_documents(
    api, path, body, documented_request, documented_response
):
    documented_request.model_validate(body)
    response = await api.client.post(path, json=body)
    assert response.status_code == 200
    documented_response.model_validate(response.json())


@pytest.mark.parametrize("version", [2**53 + 1, 2**63, 2**64, 0])
async def test_a_version_out_of_range_in_the_path_is_422_naming_it(api, version):
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [0, 0]}]}
    infer = await api.client.post(f"/v2/models/m/versions/{version}/infer", json=body)
    assert infer.status_code == 422
    assert infer.json()["reason"] == "bad_version"
    assert "version must be an integer from 1" in infer.json()["error"]
    for path in (f"/v2/models/m/versions/{version}", f"/v2/models/m/versions/{version}/ready"):
        answer = await api.client.get(path)
        assert answer.status_code == 422
        assert answer.json()["reason"] == "validation_error"
        assert answer.json()["details"][0]["loc"] == ["path", "version"]
