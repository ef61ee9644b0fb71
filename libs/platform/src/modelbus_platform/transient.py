"""Transient or permanent: what a failed handler's exception means for its message.

A dependency that does not answer now (MongoDB, the object store, the broker, the registry's
HTTP API) is a *transient* failure: the message is retried with capped, jittered backoff for as
long as it takes, never dead-lettered, and the consumer's partition waits (readiness says so).
Everything else — a contract, a validation, a refusal by the domain, a bug — is *permanent*:
retried a few times, then dead-lettered with the reason. An exception may also say it itself
(``transient = True``), and one raised ``from`` a transient cause is transient.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import structlog
import urllib3.exceptions
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    NotLeaderForPartitionError,
    RequestTimedOutError,
)
from minio.error import ServerError
from pymongo.errors import ConnectionFailure, WaitQueueTimeoutError

from .registry import RegistryUnavailable

log = structlog.get_logger(__name__)
T = TypeVar("T")

TRANSIENT: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted (OSError)
    TimeoutError,  # asyncio's too
    ConnectionFailure,  # MongoDB: AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError
    WaitQueueTimeoutError,
    httpx.TransportError,  # another service's HTTP API: connect, read, pool
    urllib3.exceptions.HTTPError,  # the S3 client's connection errors
    ServerError,  # an S3 server's 5xx
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    NotLeaderForPartitionError,
    RequestTimedOutError,
    RegistryUnavailable,
)


def is_transient(exc: BaseException | None, _depth: int = 0) -> bool:
    """Whether ``exc`` (or what caused it) is a dependency not answering now."""
    if exc is None or _depth > 5:
        return False
    if isinstance(exc, TRANSIENT) or getattr(exc, "transient", False) is True:
        return True
    return is_transient(exc.__cause__, _depth + 1)


def backoff_delay(waits: int, base_s: float, max_s: float) -> float:
    """The ``waits``-th wait (1-based): doubling from ``base_s``, capped at ``max_s``, with
    jitter (half to all of it) so replicas waiting for the same dependency do not align."""
    delay = min(max_s, base_s * 2 ** min(waits - 1, 20))
    return max(0.01, delay * random.uniform(0.5, 1.0))


async def outlast(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    max_wait_s: float,
    base_s: float = 0.5,
    max_s: float = 10.0,
    on_wait: Callable[[], Awaitable[None]] | None = None,
) -> T:
    """``await call()``, waiting out a dependency that does not answer (``is_transient``) for
    up to ``max_wait_s`` with capped, jittered backoff (``on_wait`` before each wait, e.g. to
    keep a lock fresh); a permanent failure, or an outage that outlasts the wait, is raised."""
    deadline = time.monotonic() + max_wait_s
    waits = 0
    while True:
        try:
            result = await call()
        except Exception as exc:
            waits += 1
            delay = backoff_delay(waits, base_s, max_s)
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            if waits == 1:
                log.warning(
                    "dependency.unavailable", what=what, max_wait_s=max_wait_s, error=str(exc)
                )
            if on_wait is not None:
                await on_wait()
            await asyncio.sleep(delay)
            continue
        if waits:
            log.info("dependency.back", what=what, waits=waits)
        return result
