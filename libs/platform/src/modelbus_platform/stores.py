"""Storage ports and adapters: MongoDB (PyMongo async) and object storage (S3 via minio, or a
local folder). Nothing connects at import time; ``build_object_store`` and ``connect_mongo``
are called from each service's bootstrap.

Datasets and artifacts are write-once and content-addressed: under ``datasets/`` and
``artifacts/`` a key is ``<prefix>/<model>/<sha256>.<ext>`` and holds exactly the bytes whose
sha256 it names. They are written with ``put_once``, which checks the name against the bytes
and never replaces an object with other bytes (writing the same bytes again is a no-op), so a
record that points at a key keeps meaning the bytes it was made from. ``put`` overwrites and is
for everything else (batch outputs, reports).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import uuid
from pathlib import Path
from typing import Protocol

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from .settings import ServiceSettings


class ObjectNotFound(KeyError):
    pass


class IntegrityError(ValueError):
    """Stored bytes do not have the sha256 the caller expected."""


class ObjectConflict(ValueError):
    """A write-once key already holds other bytes: nothing was written."""


CONTENT_ADDRESSED_PREFIXES = ("datasets/", "artifacts/")
_CONTENT_ADDRESSED_KEY = re.compile(
    r"(?:datasets|artifacts)/[^/\x00-\x1f\x7f]+/(?P<sha256>[0-9a-f]{64})\.[A-Za-z0-9]{1,16}"
)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_content_addressed(key: str) -> bool:
    """True for keys under ``datasets/`` and ``artifacts/`` (write-once, named by their sha256)."""
    return key.startswith(CONTENT_ADDRESSED_PREFIXES)


def check_content_address(key: str, data: bytes) -> None:
    """Refuse (``IntegrityError``) bytes that a content-addressed key does not name: such a key
    must be ``<prefix>/<model>/<sha256>.<ext>`` and ``data`` must hash to that sha256. Other keys
    pass unchecked."""
    if not is_content_addressed(key):
        return
    match = _CONTENT_ADDRESSED_KEY.fullmatch(key)
    if match is None:
        raise IntegrityError(
            f"{key!r}: keys under datasets/ and artifacts/ are <prefix>/<model>/<sha256>.<ext>"
        )
    actual = sha256_hex(data)
    if actual != match["sha256"]:
        raise IntegrityError(
            f"{key!r} names sha256 {match['sha256']} but the bytes hash to {actual}"
        )


def same_or_conflict(key: str, existing: bytes, data: bytes) -> None:
    """After a write-once put found ``key`` taken: the same bytes are a no-op, others a conflict."""
    if existing != data:
        raise ObjectConflict(
            f"{key!r} is write-once and already holds other bytes (sha256 {sha256_hex(existing)}, "
            f"not {sha256_hex(data)})"
        )


class ObjectStore(Protocol):
    async def put(self, key: str, data: bytes, content_type: str = ...) -> None: ...

    async def put_once(self, key: str, data: bytes, content_type: str = ...) -> bool:
        """Write ``key`` unless it exists: True if written, False if it already held exactly
        ``data``; ``ObjectConflict`` if it holds other bytes, ``IntegrityError`` if a
        content-addressed key does not name ``data``'s sha256."""
        ...

    async def get(self, key: str) -> bytes: ...

    async def exists(self, key: str) -> bool: ...

    async def list(self, prefix: str = "") -> list[str]: ...

    async def ping(self) -> bool: ...


async def get_verified(store: ObjectStore, key: str, sha256: str) -> bytes:
    """Read an object and refuse it unless its sha256 is the one on record."""
    data = await store.get(key)
    actual = sha256_hex(data)
    if actual != sha256:
        raise IntegrityError(f"{key}: sha256 {actual} does not match the record {sha256}")
    return data


class S3ObjectStore:
    """S3 through the ``minio`` client (sync; run in a worker thread)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str = "us-east-1",
    ) -> None:
        from minio import Minio

        self.bucket = bucket
        self.client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region
        )
        self._bucket_ready = False

    async def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return

        def make() -> None:
            if not self.client.bucket_exists(self.bucket):
                try:
                    self.client.make_bucket(self.bucket)
                except Exception:
                    if not self.client.bucket_exists(self.bucket):
                        raise

        await asyncio.to_thread(make)
        self._bucket_ready = True

    async def put(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        await self._ensure_bucket()
        await asyncio.to_thread(
            self.client.put_object,
            self.bucket,
            key,
            io.BytesIO(data),
            len(data),
            content_type=content_type,
        )

    async def put_once(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        """A conditional PUT (``If-None-Match: *``: the server refuses it with 412 if the key
        exists, so two writers cannot both win), preceded by a HEAD that skips the upload when
        the key is already there. Servers that ignore the condition (older MinIO) still get the
        HEAD check, with a race window between the two. One PUT, so up to 5 GiB."""
        from minio.error import S3Error

        check_content_address(key, data)
        await self._ensure_bucket()
        if await self.exists(key):
            same_or_conflict(key, await self.get(key), data)
            return False
        headers = {"Content-Type": content_type, "If-None-Match": "*"}
        try:
            # minio's public put_object cannot send a condition header; _put_object is the
            # single PUT it makes itself for objects of one part
            await asyncio.to_thread(self.client._put_object, self.bucket, key, data, headers)
        except S3Error as exc:
            if exc.code not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
            same_or_conflict(key, await self.get(key), data)
            return False
        return True

    async def get(self, key: str) -> bytes:
        from minio.error import S3Error

        def read() -> bytes:
            try:
                response = self.client.get_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchBucket"):
                    raise ObjectNotFound(key) from exc
                raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return await asyncio.to_thread(read)

    async def exists(self, key: str) -> bool:
        from minio.error import S3Error

        def stat() -> bool:
            try:
                self.client.stat_object(self.bucket, key)
                return True
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject", "NotFound"):
                    return False
                raise

        return await asyncio.to_thread(stat)

    async def list(self, prefix: str = "") -> list[str]:
        await self._ensure_bucket()
        return await asyncio.to_thread(
            lambda: sorted(
                o.object_name
                for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
            )
        )

    async def ping(self) -> bool:
        try:
            await asyncio.wait_for(self._ensure_bucket(), 3)
            return True
        except Exception:
            self._bucket_ready = False
            return False


class LocalObjectStore:
    """A folder on disk with the same interface; writes are atomic (temp file + rename)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"key escapes the store: {key!r}")
        return path

    async def put(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        path = self._path(key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)

        await asyncio.to_thread(write)

    async def put_once(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        """Exclusive create: the bytes go to a temp file that is hard-linked to the key, which
        fails if the key exists (so no reader sees a partial object and two writers cannot
        both win)."""
        check_content_address(key, data)
        path = self._path(key)

        def write() -> bool:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                same_or_conflict(key, path.read_bytes(), data)
                return False
            finally:
                tmp.unlink()

        return await asyncio.to_thread(write)

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    async def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    async def list(self, prefix: str = "") -> list[str]:
        if not self.root.exists():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(
            k for k in keys if k.startswith(prefix) and not k.rsplit("/", 1)[-1].startswith(".")
        )

    async def ping(self) -> bool:
        return True


def build_object_store(settings: ServiceSettings) -> ObjectStore:
    if settings.object_store == "local":
        return LocalObjectStore(settings.local_store_dir)
    return S3ObjectStore(
        settings.s3_endpoint,
        settings.s3_access_key.get_secret_value(),
        settings.s3_secret_key.get_secret_value(),
        settings.bucket,
        secure=settings.s3_secure,
        region=settings.s3_region,
    )


def connect_mongo(settings: ServiceSettings) -> tuple[AsyncMongoClient, AsyncDatabase]:
    client: AsyncMongoClient = AsyncMongoClient(
        settings.mongo_uri.get_secret_value(), serverSelectionTimeoutMS=5000, tz_aware=True
    )
    return client, client[settings.mongo_db]


async def mongo_ping(db: AsyncDatabase) -> bool:
    try:
        await asyncio.wait_for(db.command("ping"), 3)
        return True
    except Exception:
        return False


class MongoProcessedEvents:
    """The idempotency ledger in MongoDB: one document per (group, event_id)."""

    def __init__(self, db: AsyncDatabase, collection: str = "processed_events") -> None:
        self.col = db[collection]

    async def init(self) -> None:
        await self.col.create_index([("group", 1), ("event_id", 1)], unique=True)

    async def seen(self, group: str, event_id: uuid.UUID) -> bool:
        return await self.col.find_one({"group": group, "event_id": str(event_id)}) is not None

    async def mark(self, group: str, event_id: uuid.UUID) -> None:
        try:
            await self.col.insert_one({"group": group, "event_id": str(event_id)})
        except DuplicateKeyError:
            pass
