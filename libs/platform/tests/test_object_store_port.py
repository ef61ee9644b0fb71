"""One test suite for the ObjectStore port, run against every adapter: the in-memory fake, a local
folder and a real S3 server (moto), so the fake, the embedded default and production agree."""

from __future__ import annotations

import pytest

from modelbus_platform.stores import (
    IntegrityError,
    LocalObjectStore,
    ObjectNotFound,
    S3ObjectStore,
    get_verified,
    sha256_hex,
)
from modelbus_platform.testing import MemoryObjectStore


@pytest.fixture(params=["memory", "local", "s3"])
def store(request, tmp_path, unique):
    if request.param == "memory":
        return MemoryObjectStore()
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    infra = request.getfixturevalue("infra")
    return S3ObjectStore(infra.s3_endpoint, "k", "s", f"port-{unique}")


async def test_put_get_exists_list(store):
    assert not await store.exists("a/b.json")
    await store.put("a/b.json", b"{}")
    await store.put("a/c.json", b"[]")
    await store.put("z.txt", b"z")
    assert await store.exists("a/b.json")
    assert await store.get("a/b.json") == b"{}"
    assert await store.list("a/") == ["a/b.json", "a/c.json"]
    assert await store.ping()


async def test_overwrite_replaces_bytes(store):
    await store.put("k", b"one")
    await store.put("k", b"two")
    assert await store.get("k") == b"two"


async def test_missing_object_raises_not_found(store):
    with pytest.raises(ObjectNotFound):
        await store.get("nope/missing.bin")


async def test_get_verified_refuses_tampered_bytes(store):
    await store.put("art.json", b"good")
    assert await get_verified(store, "art.json", sha256_hex(b"good")) == b"good"
    await store.put("art.json", b"evil")
    with pytest.raises(IntegrityError, match="does not match"):
        await get_verified(store, "art.json", sha256_hex(b"good"))


async def test_local_store_refuses_keys_outside_its_root(tmp_path):
    with pytest.raises(ValueError, match="escapes"):
        await LocalObjectStore(tmp_path / "root").put("../outside", b"x")
