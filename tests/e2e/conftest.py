"""The whole stack with HTTP authentication on, for the suites that attack it (the OpenAPI fuzzer,
the hostile run): six services, the Kafka-protocol broker, MongoDB-wire and S3 on free ports; a
bootstrap admin key the tests hold (only its hash is in the services' environment) and a static
viewer key the services read the registry with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from modelbus_embedded.stack import Stack, build_stack, free_ports
from modelbus_platform.auth import hash_key, make_static_key, new_secret


@dataclass
class SecuredStack:
    stack: Stack
    admin_key: str

    @property
    def admin(self) -> dict[str, str]:
        """The headers of a request made with the bootstrap admin key."""
        return {"Authorization": f"Bearer {self.admin_key}"}

    def url(self, service: str) -> str:
        return self.stack.url(service)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredStack]:
    admin_key = new_secret()
    services_key, services_entry = make_static_key("services", "viewer")
    running = build_stack(
        tmp_path_factory.mktemp("secured"),
        object_store="s3",
        persistent_mongo=False,
        ports=free_ports(),
        extra_env={
            "MODELBUS_AUTH": "on",
            "MODELBUS_ADMIN_KEY_SHA256": hash_key(admin_key),
            "MODELBUS_STATIC_KEYS": json.dumps([services_entry.model_dump()]),
            "MODELBUS_REGISTRY_API_KEY": services_key,
        },
    )
    try:
        running.start()
        yield SecuredStack(running, admin_key)
    finally:
        running.stop()
