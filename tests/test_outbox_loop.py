"""A champion moved while the broker is down: the change is stored with its event (the outbox),
the API answers at once, and when the broker answers again the event is published and the
scorer and the monitor follow it, with no restart.

Real servers: a Kafka-protocol broker of this test's own (so it can be paused with SIGSTOP
without disturbing the others), the session's MongoDB-wire and S3 servers. The registry, scorer
and monitor run in-process; the scorer and the monitor read the registry app over ASGI. The
scorer's periodic resync is turned off, so only the event can make it follow.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from modelbus_embedded.servers import kafka_server
from modelbus_monitor.bootstrap import build_app as build_monitor
from modelbus_monitor.config import MonitorSettings
from modelbus_registry.bootstrap import build_app as build_registry
from modelbus_registry.config import RegistrySettings
from modelbus_scorer.bootstrap import build_app as build_scorer
from modelbus_scorer.config import ScorerSettings

from .test_rollback_loop import running, s3, trained

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture
def broker(tmp_path):
    server = kafka_server(tmp_path).start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


async def until(check, timeout: float = 90.0, every: float = 0.2) -> None:
    """Poll ``check`` (an HTTP look at two services) until it holds."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - polling other services over HTTP
            await asyncio.sleep(every)


async def test_a_champion_moved_while_the_broker_is_down_is_followed_once_it_is_back(
    broker, service_env, unique, monkeypatch
):
    for key, value in service_env.items():
        monkeypatch.setenv(key, value)
    bootstrap = f"127.0.0.1:{broker.port}"
    name = f"outbox-{unique}"
    registry = build_registry(RegistrySettings(kafka_bootstrap=bootstrap, mongo_db=f"r_{unique}"))
    transport = httpx.ASGITransport(registry)
    scorer = build_scorer(
        ScorerSettings(
            kafka_bootstrap=bootstrap,
            registry_url="http://registry",
            instance_id=f"s-{unique}",
            sync_interval_s=3600,
        ),
        registry_transport=transport,
    )
    monitor = build_monitor(
        MonitorSettings(
            kafka_bootstrap=bootstrap, registry_url="http://registry", mongo_db=f"m_{unique}"
        ),
        registry_transport=transport,
    )
    store = s3(service_env)
    async with (
        running(registry, scorer, monitor),
        httpx.AsyncClient(transport=transport, base_url="http://registry") as reg,
        httpx.AsyncClient(transport=httpx.ASGITransport(scorer), base_url="http://s") as sc,
        httpx.AsyncClient(transport=httpx.ASGITransport(monitor), base_url="http://m") as mon,
    ):
        for seed in (1, 2):
            assert await registry.state.context.register(await trained(store, name, seed))

        async def scorer_synced() -> bool:  # after its first full sync it only follows events
            return scorer.state.context.last_sync_ok

        await until(scorer_synced)

        async def serving(version: int) -> bool:
            meta = await sc.get(f"/v2/models/{name}")
            status = await mon.get(f"/models/{name}/status")
            return (
                meta.status_code == 200
                and meta.json()["parameters"]["version"] == version
                and status.status_code == 200
                and status.json()["serving_version"] == version
            )

        async def move(version: int, expected: int | None) -> httpx.Response:
            body = {"version": version, "expected_version": expected, "reason": "operator"}
            return await reg.put(f"/models/{name}/aliases/champion", json=body)

        assert (await move(1, None)).status_code == 200
        await until(lambda: serving(1))

        os.kill(broker.proc.pid, signal.SIGSTOP)  # the broker stops answering
        started = time.monotonic()
        moved = await move(2, 1)
        answered_in = time.monotonic() - started
        assert moved.status_code == 200, moved.text
        assert answered_in < 5.0, f"the API waited on the broker ({answered_in:.1f} s)"
        assert moved.json()["champion"] == 2
        await asyncio.sleep(3)
        assert await serving(1)  # nothing published yet: the scorer and the monitor wait
        relay = registry.state.kit.relay
        assert any([await store.pending(10) for store in relay.stores])

        os.kill(broker.proc.pid, signal.SIGCONT)  # the broker is back
        await until(lambda: serving(2))
        assert not any([await store.pending(10) for store in relay.stores])
