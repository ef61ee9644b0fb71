"""Every HTTP route of every service needs a role or is explicitly open (auth on). A route added
without a decision here fails this test: that is its point. The roles come from
``modelbus_platform.auth.required_role``; this table is the reviewed copy of its answers."""

from __future__ import annotations

import pytest

from modelbus_platform.auth import AuthMiddleware
from modelbus_platform.kit import build_app, load_specs

NOWHERE = {"kafka_bootstrap": "127.0.0.1:1", "mongo_uri": "mongodb://127.0.0.1:1"}
SPECS = load_specs()

# what every service's shell serves: docs need a viewer, health and metrics are open
SHELL = {
    ("GET", "/openapi.json"): "viewer",
    ("GET", "/docs"): "viewer",
    ("GET", "/docs/oauth2-redirect"): "viewer",
    ("GET", "/redoc"): "viewer",
    ("GET", "/health/live"): None,
    ("GET", "/health/ready"): None,
    ("GET", "/metrics"): None,
}
EXPECTED = {
    "batch": {
        ("POST", "/batch-jobs"): "operator",
        ("GET", "/batch-jobs"): "viewer",
        ("GET", "/batch-jobs/{job_id}"): "viewer",
    },
    "deployer": {
        ("GET", "/decisions"): "viewer",
        ("GET", "/decisions/{model_name}/{version}"): "viewer",
        ("GET", "/policy"): "viewer",
        ("POST", "/decisions/{model_name}/{version}/approve"): "operator",
        ("POST", "/decisions/{model_name}/{version}/reject"): "operator",
    },
    "monitor": {
        ("GET", "/models/{name}/status"): "viewer",
        ("GET", "/incidents"): "viewer",
        ("POST", "/incidents/{incident_id}/resolve"): "operator",
        ("GET", "/incidents/{incident_id}"): "viewer",
        ("GET", "/models/{name}/daily"): "viewer",
        ("GET", "/models/{name}/report"): "viewer",
    },
    "registry": {
        ("GET", "/models"): "viewer",
        ("GET", "/models/{name}"): "viewer",
        ("POST", "/models/{name}/versions"): "operator",
        ("GET", "/models/{name}/versions"): "viewer",
        ("GET", "/models/{name}/versions/{version}"): "viewer",
        ("GET", "/models/{name}/versions/{version}/artifact"): "viewer",
        ("GET", "/models/{name}/aliases"): "viewer",
        ("GET", "/models/{name}/aliases/{alias}"): "viewer",
        ("PUT", "/models/{name}/aliases/{alias}"): "operator",
        ("POST", "/models/{name}/rollback"): "operator",
        ("GET", "/models/{name}/policy"): "viewer",
        ("PUT", "/models/{name}/policy"): "admin",
        ("GET", "/policies"): "viewer",
        ("GET", "/models/{name}/policy/revisions"): "viewer",
        ("GET", "/models/{name}/audit"): "viewer",
        ("GET", "/audit"): "viewer",
        ("POST", "/admin/keys"): "admin",
        ("GET", "/admin/keys"): "admin",
        ("DELETE", "/admin/keys/{key_id}"): "admin",
        ("POST", "/admin/keys/{key_id}/rotate"): "admin",
        ("GET", "/admin/dlq"): "admin",
        ("GET", "/admin/dlq/{topic}"): "admin",
        ("POST", "/admin/dlq/{topic}/replay"): "admin",
    },
    "scorer": {
        ("GET", "/v2/health/live"): None,
        ("GET", "/v2/health/ready"): None,
        ("GET", "/v2"): "viewer",
        ("GET", "/v2/models/{name}"): "viewer",
        ("GET", "/v2/models/{name}/versions/{version}"): "viewer",
        ("GET", "/v2/models/{name}/ready"): "viewer",
        ("GET", "/v2/models/{name}/versions/{version}/ready"): "viewer",
        ("POST", "/v2/models/{name}/infer"): "predict",
        ("POST", "/v2/models/{name}/versions/{version}/infer"): "predict",
        ("POST", "/models/{name}/predict"): "predict",
    },
    "trainer": {
        ("POST", "/models/{name}/train"): "operator",
        ("PUT", "/datasets/{name}"): "operator",
        ("GET", "/runs"): "viewer",
        ("GET", "/runs/{run_id}"): "viewer",
        ("POST", "/runs/{run_id}/reproduce"): "operator",
        ("GET", "/models/{name}/feedback/count"): "viewer",
    },
}


def auth_layer(app) -> AuthMiddleware | None:
    """The chain's auth layer, as the app runs it (None if the chain has none)."""
    layer = app.build_chain()
    while layer is not None and not isinstance(layer, AuthMiddleware):
        layer = getattr(layer, "app", None)
    return layer


def test_every_service_is_in_the_table():
    assert set(EXPECTED) == set(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_route_has_a_role_or_is_explicitly_open(name):
    spec = SPECS[name]
    app = build_app(spec, spec.settings(**NOWHERE, auth="on"))
    roles = auth_layer(app).roles
    found = {
        (method, path): role
        for method, entries in roles.table.items()
        for _, path, role in entries
        if method != "HEAD"
    }
    assert found == {**SHELL, **EXPECTED[name]}
    for method, path in found:  # a concrete request is judged as its template
        concrete = path.replace("{", "").replace("}", "")
        assert roles.role_for(method, concrete) == found[(method, path)], (method, path)
    assert roles.role_for("GET", "/no/such/route") == "viewer"
    assert roles.role_for("PATCH", "/models/x") == "viewer"  # 405 only for known callers


@pytest.mark.parametrize("name", sorted(SPECS))
def test_auth_is_off_by_default_and_then_not_in_the_chain(name):
    spec = SPECS[name]
    assert spec.settings(**NOWHERE).auth == "off"
    assert auth_layer(build_app(spec, spec.settings(**NOWHERE))) is None


@pytest.mark.parametrize("name", ["registry", "scorer"])
def test_with_auth_on_the_openapi_document_shows_credentials_401_and_403(name):
    spec = SPECS[name]
    settings = spec.settings(**NOWHERE, auth="on")
    doc = build_app(spec, settings).openapi()
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    for path, item in doc["paths"].items():
        for operation in item.values():
            if path in settings.auth_open_paths:
                assert "401" not in operation["responses"] and "security" not in operation
            else:
                assert {"401", "403"} <= set(operation["responses"]), path
                assert operation["security"] == [{"bearer": []}, {"apiKey": []}]
    off = build_app(spec, spec.settings(**NOWHERE)).openapi()
    assert "securitySchemes" not in off["components"]
    assert all(
        "401" not in op["responses"] for item in off["paths"].values() for op in item.values()
    )


@pytest.mark.parametrize("name", sorted(SPECS))
def test_only_the_registry_creates_the_key_index_at_start(name):
    spec = SPECS[name]
    app = build_app(spec, spec.settings(**NOWHERE, auth="on"))
    resources = [r.name for r in app.state.kit.lifecycle.resources]
    assert ("api-key-indexes" in resources) == (name == "registry")
    assert "api-keys" in resources  # its client, closed at stop
