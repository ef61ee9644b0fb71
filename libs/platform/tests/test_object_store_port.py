"""One test suite for the ObjectStore port, run against every adapter: the in-memory fake, a local
folder and a real S3 server (moto), so the fake, the embedded default and production agree;
write-once puts included (moto honours ``If-None-Match: *``, as S3 and MinIO do)."""

from __future__ import annotations

import asyncio

import pytest

from modelbus_platform.stores import (
    IntegrityError,
    LocalObjectStore,
    ObjectConflict,
    ObjectNotFound,
    S3ObjectStore,
    check_content_address,
    get_verified,
    is_content_addressed,
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


# --- write-once, content-addressed keys -------------------------------------------------------

DATA = b"id,age\n1,30\n"
DATASET = f"datasets/churn/{sha256_hex(DATA)}.csv"


async def test_put_once_writes_then_same_bytes_are_a_no_op(store):
    assert await store.put_once(DATASET, DATA, "text/csv") is True
    assert await store.put_once(DATASET, DATA, "text/csv") is False
    assert await store.get(DATASET) == DATA
    assert await store.list("datasets/") == [DATASET]  # no temp file left behind


async def test_put_once_refuses_other_bytes_and_keeps_the_first(store):
    await store.put_once("reports/once.json", b"first")
    with pytest.raises(ObjectConflict, match="write-once"):
        await store.put_once("reports/once.json", b"second")
    assert await store.get("reports/once.json") == b"first"


async def test_put_once_refuses_bytes_the_content_address_does_not_name(store):
    evil = b"id,age\n1,99\n"
    with pytest.raises(IntegrityError, match="names sha256"):
        await store.put_once(DATASET, evil)
    assert not await store.exists(DATASET)
    with pytest.raises(IntegrityError, match="<sha256>"):
        await store.put_once("artifacts/churn/latest.json", b"{}")
    assert not await store.exists("artifacts/churn/latest.json")


async def test_a_tampered_content_addressed_object_is_a_conflict_not_overwritten(store):
    # someone with raw write access replaced the bytes: put_once neither hides nor repairs it
    await store.put(DATASET, b"tampered")
    with pytest.raises(ObjectConflict):
        await store.put_once(DATASET, DATA)
    assert await store.get(DATASET) == b"tampered"


async def test_concurrent_put_once_of_other_bytes_has_one_winner(store):
    async def attempt(data: bytes) -> str:
        try:
            return "written" if await store.put_once("race/key.bin", data) else "same"
        except ObjectConflict:
            return "conflict"

    outcomes = await asyncio.gather(*(attempt(bytes([i]) * 64) for i in range(6)))
    assert outcomes.count("written") == 1 and outcomes.count("conflict") == 5
    winner = outcomes.index("written")
    assert await store.get("race/key.bin") == bytes([winner]) * 64


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        (f"artifacts/churn/{'a' * 64}.json", True),
        (f"artifacts/churn/{'a' * 64}.onnx", True),
        (f"artifacts/churn/{'A' * 64}.json", False),  # the sha256 is lower-case hex
        (f"artifacts/churn/{'a' * 63}.json", False),
        (f"artifacts/churn/x/{'a' * 64}.json", False),
        (f"artifacts/{'a' * 64}.json", False),
        (f"datasets/churn/{'a' * 64}", False),
        (f"datasets/ch\x00rn/{'a' * 64}.csv", False),
        (f"batch/churn/{'a' * 64}.csv", True),  # not content-addressed: unchecked
    ],
)
def test_content_addressed_key_shapes(key, ok):
    data = b"x"
    key = key.replace("a" * 64, sha256_hex(data)) if "a" * 64 in key else key
    if ok:
        check_content_address(key, data)
    else:
        with pytest.raises(IntegrityError):
            check_content_address(key, data)
    assert is_content_addressed(key) is key.startswith(("datasets/", "artifacts/"))
