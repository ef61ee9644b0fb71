"""Every service's HTTP contract, read from each app's OpenAPI document: every route documents
a success and its error statuses, every error answer is the one ``ErrorBody``, and the scoring
routes show their request and response schemas. (The API tests of each service check the other
half: every status a route answers is one its operation documents.)"""

from __future__ import annotations

import pytest

from modelbus_platform.kit import build_app, load_specs

NOWHERE = {"kafka_bootstrap": "127.0.0.1:1", "mongo_uri": "mongodb://127.0.0.1:1"}
ERROR = {"$ref": "#/components/schemas/ErrorBody"}
# the readiness probes answer 503 with their report (which checks failed), not an error
PROBES = {("/health/ready", "503"), ("/v2/health/ready", "503")}


SPECS = load_specs()


def operations(doc: dict):
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", path, operation


@pytest.fixture(params=sorted(SPECS))
def app(request):
    spec = SPECS[request.param]
    return build_app(spec, spec.settings(**NOWHERE))


@pytest.fixture
def openapi(app) -> dict:
    return app.openapi()


def test_every_route_documents_its_statuses_and_errors_in_the_one_error_body(app, openapi):
    assert "HTTPValidationError" not in openapi["components"]["schemas"]
    for name, path, operation in operations(openapi):
        responses = operation["responses"]
        if path not in app.gated:  # 503 starting: the service has not started yet
            assert "503" in responses, name
        assert any(status.startswith("2") for status in responses), name
        assert "500" in responses, name
        if "requestBody" in operation:
            assert "413" in responses, name
        if operation.get("parameters") or "requestBody" in operation:
            assert "422" in responses, name
        for status, response in responses.items():
            if status >= "400" and (path, status) not in PROBES:
                assert response["content"] == {"application/json": {"schema": ERROR}}, (
                    name,
                    status,
                )
                assert response["description"], (name, status)


def test_the_scoring_routes_show_their_bodies_and_every_status():
    spec = SPECS["scorer"]
    doc = build_app(spec, spec.settings(**NOWHERE)).openapi()
    routes = {
        "/v2/models/{name}/infer": ("InferRequest", "InferResponse"),
        "/v2/models/{name}/versions/{version}/infer": ("InferRequest", "InferResponse"),
        "/models/{name}/predict": ("PredictRequest", "PredictResponse"),
    }
    for path, (request, response) in routes.items():
        operation = doc["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{request}"}
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{response}"}
        assert set(operation["responses"]) == {"200", "400", "404", "413", "422", "500", "503"}
    infer_input = doc["components"]["schemas"]["InferInput"]
    datatypes = infer_input["properties"]["datatype"]["enum"]
    assert datatypes == ["FP32", "FP64", "INT32", "INT64", "BYTES"]
