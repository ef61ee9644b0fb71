"""Off-the-shelf Open Inference Protocol v2 clients against the scorer, over real HTTP.

``tritonclient.http`` (NVIDIA's client for the same protocol) talks to the scorer served by
uvicorn: server and model metadata, readiness, and inference with a [n, k] FP64 input, one
input per feature, and binary-free JSON outputs; a bad request comes back as its error.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import uvicorn

from modelbus_embedded.servers import free_port
from modelbus_platform.http import create_app
from modelbus_platform.stores import LocalObjectStore
from modelbus_platform.testing import FakeRegistry, RecordingPublisher
from modelbus_scorer.api import Scoring, build_router, install_hot_routes
from modelbus_scorer.domain import ModelHolder
from modelbus_scorer.prediction_log import PredictionLog
from modelbus_scorer.service import ScorerService
from modelbus_scorer.telemetry import ScorerMetrics

httpclient = pytest.importorskip("tritonclient.http")
triton_utils = pytest.importorskip("tritonclient.utils")


class Served:
    """The scorer's HTTP app on fakes, served by uvicorn in a thread on a free port."""

    def __init__(self, tmp_path) -> None:
        self.store = LocalObjectStore(tmp_path)
        self.registry = FakeRegistry()
        self.publisher = RecordingPublisher()
        metrics = scorer_metrics = ScorerMetrics("scorer-v2-clients")
        self.service = ScorerService(
            holder=ModelHolder(),
            registry=self.registry,
            store=self.store,
            publisher=self.publisher,
            metrics=scorer_metrics,
            prediction_log=PredictionLog(
                self.publisher, scorer_metrics, producer="scorer", capacity=10_000
            ),
            producer="scorer",
            instance="i-1",
            max_instances=100,
        )

        async def readiness() -> dict[str, bool]:
            return {"bus": True}

        app = create_app(title="t", description="t", metrics=metrics, readiness=readiness)
        app.include_router(build_router(self.service, readiness))
        install_hot_routes(app, Scoring(self.service))
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
async def served(tmp_path, publish_artifact):
    s = Served(tmp_path)
    s.registry.put(await publish_artifact(s.store, "churn", 3), champion=True)
    await s.service.sync_all()
    s.start()
    yield s
    s.stop()


def _client(port: int):
    return httpclient.InferenceServerClient(url=f"127.0.0.1:{port}", network_timeout=10)


async def test_tritonclient_reads_metadata_and_readiness(served):
    def calls():
        client = _client(served.port)
        try:
            return (
                client.is_server_live(),
                client.is_server_ready(),
                client.is_model_ready("churn"),
                client.is_model_ready("nope"),
                client.get_server_metadata(),
                client.get_model_metadata("churn"),
            )
        finally:
            client.close()

    live, ready, model_ready, unknown_ready, server, model = await asyncio.to_thread(calls)

    assert (live, ready, model_ready, unknown_ready) == (True, True, True, False)
    assert server["name"] == "modelbus-scorer"
    assert model["name"] == "churn" and "3" in model["versions"]
    assert [(i["name"], i["datatype"]) for i in model["inputs"]] == [
        ("age", "FP64"),
        ("income", "FP64"),
    ]
    assert {o["name"] for o in model["outputs"]} == {"score", "label"}


async def test_tritonclient_infers_with_a_matrix_and_with_one_input_per_feature(served):
    X = np.asarray([[1.0, 2.0], [-3.0, 0.5], [0.0, 0.0]])

    def calls():
        client = _client(served.port)
        try:
            matrix = httpclient.InferInput("input-0", list(X.shape), "FP64")
            matrix.set_data_from_numpy(X, binary_data=False)
            outputs = [
                httpclient.InferRequestedOutput("score", binary_data=False),
                httpclient.InferRequestedOutput("label", binary_data=False),
            ]
            first = client.infer("churn", [matrix], outputs=outputs, request_id="r-1")
            columns = []
            for j, name in enumerate(("age", "income")):
                column = httpclient.InferInput(name, [len(X)], "FP64")
                column.set_data_from_numpy(np.ascontiguousarray(X[:, j]), binary_data=False)
                columns.append(column)
            second = client.infer("churn", columns, outputs=outputs, model_version="3")
            return first, second
        finally:
            client.close()

    first, second = await asyncio.to_thread(calls)

    expected = 1.0 / (1.0 + np.exp(-(X[:, 0] + X[:, 1])))  # the fixture model: coef 1, 1
    for result in (first, second):
        np.testing.assert_allclose(result.as_numpy("score"), expected)
        assert result.as_numpy("label").tolist() == (expected >= 0.5).astype(int).tolist()
    response = first.get_response()
    assert response["model_name"] == "churn" and response["model_version"] == "3"
    assert response["id"] == "r-1"


async def test_tritonclient_gets_the_reason_of_a_bad_request(served):
    def call():
        client = _client(served.port)
        try:
            wrong = httpclient.InferInput("input-0", [1, 3], "FP64")
            wrong.set_data_from_numpy(np.zeros((1, 3)), binary_data=False)
            client.infer("churn", [wrong])
        finally:
            client.close()

    with pytest.raises(triton_utils.InferenceServerException) as exc:
        await asyncio.to_thread(call)

    assert "3 columns" in str(exc.value) and "2 features" in str(exc.value)
