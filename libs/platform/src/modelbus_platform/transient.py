"""Transient or permanent: what a failed handler's exception means for its message.

A dependency that does not answer now (MongoDB, the object store, the broker, the registry's
HTTP API) is a *transient* failure: the message is retried with capped, jittered backoff for as
long as it takes, never dead-lettered, and the consumer's partition waits (readiness says so).
Everything else — a contract, a validation, a refusal by the domain, a bug — is *permanent*:
retried a few times, then dead-lettered with the reason. An exception may also say it itself
(``transient = True``), and one raised ``from`` a transient cause is transient.
"""

from __future__ import annotations

import httpx
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
