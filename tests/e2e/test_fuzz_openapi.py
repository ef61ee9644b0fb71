"""Schemathesis over every operation of every service's OpenAPI document, on the real stack with
authentication on (issue 11: "0 responses with status 500 under a schema fuzzer").

With the admin key every handler is reached: no answer is a 5xx, and every status answered is one
the operation documents. Without credentials (or with the random ones the fuzzer makes up) every
route but the open ones (health, metrics) answers 401: never a 2xx, never a 5xx.

The default run is small and reproducible (a fixed seed, Hypothesis derandomized, no example
database); ``MODELBUS_FUZZ_EXAMPLES=200`` (``make fuzz``) runs more examples per operation and
``MODELBUS_FUZZ_SEED`` another seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import status_code_conformance

from modelbus_embedded.stack import SERVICES
from modelbus_embedded.testing import publish, trained_event
from modelbus_platform.kit import build_app, load_specs
from modelbus_platform.settings import ServiceSettings
from modelbus_platform.signing import Signer, keypair, private_key
from modelbus_platform.stores import S3ObjectStore

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

EXAMPLES = int(os.environ.get("MODELBUS_FUZZ_EXAMPLES", "8"))
SEED = int(os.environ.get("MODELBUS_FUZZ_SEED", "11"))
OPEN_PATHS = frozenset(ServiceSettings().auth_open_paths)

# what was sent, for the summary: (pass, service) -> cases; (pass, service, operation) seen
CASES: Counter[tuple[str, str]] = Counter()
OPERATIONS: set[tuple[str, str, str]] = set()
REFUSED: Counter[str] = Counter()  # by the HTTP server, before any route (see below)
SECONDS: Counter[str] = Counter()  # pass -> seconds spent sending and checking
STATUSES: Counter[int] = Counter()  # the admin pass's answers by class (2, 4, ...)
SEEDED_CASES: Counter[int] = Counter()  # those of them naming the seeded model


# a model the stack really has (v1 the champion, served), so that half the time a model name
# the fuzzer sends is one the handlers find, and the cases get past the 404s
SEEDED = "fuzz-seeded"
NAMES = ("path.name", "path.model_name", "query.model_name", "body.model_name")


def config(*, examples: int, coverage: bool) -> SchemathesisConfig:
    """Reproducible: one seed, Hypothesis derandomized, nothing remembered between runs."""
    seeded = {"dictionary": "seeded", "probability": 0.5}
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "suppress-health-check": ["all"],
            "generation": {"max-examples": examples, "deterministic": True, "database": "none"},
            "phases": {"coverage": {"enabled": coverage}, "stateful": {"enabled": False}},
            "dictionaries": {"seeded": {"values": [SEEDED]}},
            "parameters": dict.fromkeys(NAMES, seeded),
        }
    )


@pytest.fixture(scope="module")
async def seeded(secured) -> str:
    """SEEDED trained as the trainer would (its ModelTrained, signed with its key), promoted and
    served before the fuzzer starts."""
    env = secured.stack.env
    store = S3ObjectStore(
        env["MODELBUS_S3_ENDPOINT"], "modelbus", "modelbus-secret", env["MODELBUS_BUCKET"]
    )
    trainer = Signer("trainer", private_key(secured.stack.signing_key("trainer")))
    trained = await trained_event(store, SEEDED, seed=1, signer=trainer)
    await publish(secured.stack.kafka_bootstrap, trained, signer=trainer)
    async with httpx.AsyncClient(headers=secured.admin, timeout=10) as http:
        for _ in range(600):
            ready = await http.get(f"{secured.url('scorer')}/v2/models/{SEEDED}/ready")
            if ready.status_code == 200:
                return SEEDED
            await asyncio.sleep(0.1)
    raise AssertionError(f"{SEEDED} was not served within a minute")


NOWHERE = {
    "kafka_bootstrap": "127.0.0.1:1",
    "mongo_uri": "mongodb://127.0.0.1:1",
    "trusted_keys": json.dumps({"anyone": keypair()[1]}),  # not the point here: no warning
}
SPECS = load_specs()


def document(service: str) -> dict:
    """The service's OpenAPI document with auth on, as its app makes it (the schemas must exist
    when pytest collects; the running services serve this very document: checked below)."""
    spec = SPECS[service]
    return build_app(spec, spec.settings(**NOWHERE, auth="on")).openapi()


DOCUMENTS = {service: document(service) for service in SERVICES}


@contextlib.contextmanager
def noted(case, name: str, service: str) -> Iterator[None]:
    """Count the case, its operation and the time it takes, for the summary."""
    CASES[name, service] += 1
    OPERATIONS.add((name, service, case.operation.label))
    started = time.perf_counter()
    try:
        yield
    finally:
        SECONDS[name] += time.perf_counter() - started


def refused_by_the_http_server(response) -> bool:
    """uvicorn's own answer to a request it cannot parse (a URL of 64 KiB or more: no schema
    bounds the sum of a request's query values): no route saw it, so no operation documents it."""
    return response.status_code == 400 and response.content == b"Invalid HTTP request received."


def admin_test(service: str):
    def test(case, secured, seeded):
        with noted(case, "admin", service):
            response = case.call(base_url=secured.url(service), headers=secured.admin, timeout=30)
            if refused_by_the_http_server(response):
                REFUSED[service] += 1
                return
            STATUSES[response.status_code // 100] += 1
            named = (case.path_parameters, case.query, case.body)
            SEEDED_CASES[response.status_code // 100] += SEEDED in repr(named)
            checks = [not_a_server_error, status_code_conformance]
            case.validate_response(response, checks=checks, headers=secured.admin)

    test.__doc__ = f"{service}, with the admin key: no 5xx, only documented statuses"
    schema = schemathesis.openapi.from_dict(
        DOCUMENTS[service], config=config(examples=EXAMPLES, coverage=True)
    )
    return schema.parametrize()(test)


def anonymous_test(service: str):
    def test(case, secured):
        with noted(case, "anonymous", service):
            response = case.call(base_url=secured.url(service), timeout=30)
        if case.operation.path in OPEN_PATHS:
            assert response.status_code < 500, (case.operation.label, response.text)
        else:
            assert response.status_code == 401, (case.operation.label, response.text)
            assert response.json()["reason"] == "unauthenticated"

    test.__doc__ = f"{service}, no or made-up credentials: 401 but on the open routes"
    schema = schemathesis.openapi.from_dict(
        DOCUMENTS[service], config=config(examples=max(2, EXAMPLES // 4), coverage=False)
    )
    return schema.parametrize()(test)


def test_the_running_services_serve_the_documents_fuzzed(secured, seeded):
    for service in SERVICES:
        served = httpx.get(f"{secured.url(service)}/openapi.json", headers=secured.admin)
        assert served.json() == DOCUMENTS[service], service


# one test per operation and service (schemathesis' lazy fixture loading does not run on
# pytest 9.2: it sets a node's _nodeid, which pytest no longer has)
for _service in SERVICES:
    globals()[f"test_{_service}_with_the_admin_key"] = admin_test(_service)
for _service in SERVICES:
    globals()[f"test_{_service}_without_credentials"] = anonymous_test(_service)


def longest(schema: dict):
    """A query value at the bound its schema documents (the most items, the most characters),
    or None if unbounded."""
    for option in schema.get("anyOf", [schema]):
        if "maxItems" in option:
            return [""] * option["maxItems"]
        if "maxLength" in option:
            return "a" * option["maxLength"]
    return None


def test_every_query_parameter_at_its_documented_bound_reaches_its_route(secured):
    """Each query parameter as long as its operation allows fits in a URL the server reads: the
    route answers (JSON), not the HTTP server (the fuzzer's: the import route's 100_000-character
    signature and 10_000 feature names, refused with a plain-text 400)."""
    bounded = 0
    for service, doc in DOCUMENTS.items():
        for path, item in doc["paths"].items():
            for method, operation in item.items():
                for parameter in operation.get("parameters", []):
                    value = longest(parameter["schema"])
                    if parameter["in"] != "query" or value is None:
                        continue
                    bounded += 1
                    answer = httpx.request(
                        method,
                        secured.url(service) + path.replace("{", "").replace("}", ""),
                        params={parameter["name"]: value},
                        headers=secured.admin,
                        timeout=30,
                    )
                    where = (service, method, path, parameter["name"], answer.status_code)
                    assert answer.headers["content-type"] == "application/json", where
                    assert answer.status_code < 500, where
    assert bounded >= 4  # the import's feature_names, signature, classes, source at least


def test_every_operation_of_every_service_was_fuzzed():
    """Both passes reached every operation of the six documents (and the summary)."""
    for service, doc in DOCUMENTS.items():
        labels = {
            f"{method.upper()} {path}" for path, item in doc["paths"].items() for method in item
        }
        for name in ("admin", "anonymous"):
            fuzzed = {label for n, s, label in OPERATIONS if (n, s) == (name, service)}
            assert fuzzed == labels, (name, service, labels - fuzzed)
    print(f"\nfuzzed {len(DOCUMENTS)} services, seed {SEED}, {EXAMPLES} examples per operation:")
    for name in ("admin", "anonymous"):
        operations = sum(1 for n, _, _ in OPERATIONS if n == name)
        cases = sum(count for (n, _), count in CASES.items() if n == name)
        print(f"  {name:<10} {operations:>3} operations {cases:>6} requests {SECONDS[name]:>6.0f}s")
    classes = ", ".join(f"{k}xx {v}" for k, v in sorted(STATUSES.items()))
    print(f"  admin answers by class: {classes}")
    seeded = ", ".join(f"{k}xx {v}" for k, v in sorted(SEEDED_CASES.items()))
    print(f"  of which naming the seeded model {SEEDED}: {seeded}")
    print(f"  refused by the HTTP server (URL of 64 KiB or more): {dict(REFUSED) or 0}")
