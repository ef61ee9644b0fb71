"""``transient.outlast``: a dependency that does not answer is waited for, within a bound."""

from __future__ import annotations

import pytest

import modelbus_platform.transient as transient
from modelbus_platform.transient import backoff_delay, outlast


def test_backoff_doubles_is_capped_and_jittered():
    for waits, full in ((1, 0.5), (2, 1.0), (3, 2.0), (10, 10.0)):
        delays = {backoff_delay(waits, 0.5, 10.0) for _ in range(50)}
        assert all(full / 2 <= d <= full for d in delays)
        assert len(delays) > 1  # jittered: replicas do not retry in step


async def test_a_transient_failure_is_waited_out_a_permanent_one_raised_at_once(monkeypatch):
    monkeypatch.setattr(transient, "backoff_delay", lambda *a: 0.001)
    calls, waits = [], []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionRefusedError("down")
        return "stored"

    async def waited() -> None:
        waits.append(1)

    assert await outlast(flaky, what="store", max_wait_s=5, on_wait=waited) == "stored"
    assert (len(calls), len(waits)) == (4, 3)

    async def refused() -> None:
        calls.append(1)
        raise ValueError("bad request")

    calls.clear()
    with pytest.raises(ValueError):
        await outlast(refused, what="store", max_wait_s=5)
    assert len(calls) == 1


async def test_an_outage_longer_than_the_wait_is_raised(monkeypatch):
    monkeypatch.setattr(transient, "backoff_delay", lambda *a: 0.02)

    async def down() -> None:
        raise ConnectionResetError("reset")

    with pytest.raises(ConnectionResetError):
        await outlast(down, what="store", max_wait_s=0.1)
