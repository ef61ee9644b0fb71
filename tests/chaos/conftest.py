"""The fault suite's stack: the embedded stack (auth on, S3, persistent MongoDB-wire so it can
be killed and restarted on its data) with a fault-injecting proxy between the services and the
S3 server; one tap on the scoring outputs and dead letters, one watch on every consumer
group's lag, and three champions (one per partition of ``scoring.requested.v1``) trained by
the trainer from uploaded data, plus a fourth for the monitor scenario.

``MODELBUS_CHAOS=full`` (``make chaos``) selects the full form: thousands of requests and 30 s
outages; otherwise the short form runs in ``make test`` (small counts, outages of seconds)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelbus_embedded.chaos import (
    Chaos,
    FaultProxy,
    LagWatch,
    Outputs,
    consumers,
    serving,
    train_champion,
)
from modelbus_embedded.stack import build_stack, free_ports
from modelbus_embedded.testing import model_names
from modelbus_platform.bus import dlq_topic
from modelbus_platform.stores import S3ObjectStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def chaos(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Chaos]:
    stack = build_stack(
        tmp_path_factory.mktemp("chaos"),
        object_store="s3",
        persistent_mongo=True,
        ports=free_ports(),
        extra_env={"MODELBUS_LOG_LEVEL": "INFO"},
    )
    s3 = next(s for s in stack.servers if s.name == "s3")
    proxy = FaultProxy(s3.port)
    stack.env["MODELBUS_S3_ENDPOINT"] = f"127.0.0.1:{proxy.port}"
    found, publisher = consumers(ROOT / "infra" / "asyncapi")
    consumed: dict[str, list[tuple[str, str]]] = {}
    for c in found:
        consumed.setdefault(c.topic, []).append((c.service, c.group))
    groups: dict[str, list[str]] = {}
    for c in found:
        groups.setdefault(c.group, []).append(c.topic)
    outputs = watch = None
    try:
        await asyncio.to_thread(stack.start)
        outputs = Outputs(stack.kafka_bootstrap)
        await outputs.start([dlq_topic(t) for t in consumed])
        watch = await LagWatch(stack.kafka_bootstrap, groups).start()
        uid = uuid.uuid4().hex[:6]
        chaos = Chaos(
            stack=stack,
            proxy=proxy,
            outputs=outputs,
            watch=watch,
            store=S3ObjectStore(
                f"127.0.0.1:{s3.port}", "modelbus", "modelbus-secret", stack.env["MODELBUS_BUCKET"]
            ),
            models=model_names(f"chaos-{uid}"),
            monitored=f"chaos-{uid}-monitored",
            consumed=consumed,
            publisher=publisher,
            uid=uid,
        )
        async with chaos.http() as http:
            names = [*chaos.models, chaos.monitored]
            for seed, name in enumerate(names):
                chaos.datasets[name] = await train_champion(chaos, http, name, seed)
            await serving(chaos, http, names, 180)
        yield chaos
    finally:
        for server in stack.servers:  # a scenario that failed half-way must not leave it so
            if server.proc is not None and server.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.proc.pid, signal.SIGCONT)
        if watch is not None:
            await watch.stop()
        if outputs is not None:
            await outputs.stop()
        stack.stop()
        proxy.close()
