"""The whole stack with HTTP authentication on, for the suites that attack it (the OpenAPI fuzzer,
the hostile run): six services, the Kafka-protocol broker, MongoDB-wire and S3 on free ports;
the stack's admin key the tests hold (only its hash is in the services' environment) and a viewer
key per service it reads the registry with."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from modelbus_embedded.stack import Stack, build_stack, free_ports


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
    """The stack as ``make up`` runs it, auth on (its keys made under the data folder): the
    tests hold its admin key; each service reads the registry with a viewer key of its own."""
    running = build_stack(
        tmp_path_factory.mktemp("secured"),
        object_store="s3",
        persistent_mongo=False,
        ports=free_ports(),
    )
    try:
        running.start()
        admin_key = running.api_key("admin")
        assert admin_key is not None
        yield SecuredStack(running, admin_key)
    finally:
        running.stop()
