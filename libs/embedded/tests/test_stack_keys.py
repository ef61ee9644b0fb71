"""The embedded stack's API keys: made once per data folder, only their hashes in the services'
shared environment, each service reading the registry with its own."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from modelbus_embedded.stack import API_KEY_ROLES, SERVICES, Stack, api_keys, auth_env
from modelbus_platform.auth import ApiKeys, MemoryKeyStore, Unauthenticated, static_keys


def stack_of(data: Path, auth: bool) -> Stack:
    return Stack(data, auth_env(data, auth), dict.fromkeys(SERVICES, 1), auth=auth)


def test_keys_are_made_once_readable_by_their_owner_only(tmp_path: Path):
    first = api_keys(tmp_path)
    path = tmp_path / "keys" / "api_keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert {name: entry["role"] for name, entry in first.items()} == API_KEY_ROLES
    assert first["admin"]["role"] == "admin" and first["upstream"]["role"] == "operator"
    assert {first[s]["role"] for s in SERVICES} == {"viewer"}
    assert len({entry["key"] for entry in first.values()}) == len(first), "a key reused"
    assert api_keys(tmp_path) == first, "a restart made new keys"


def test_a_key_file_without_a_needed_key_is_refused(tmp_path: Path):
    keys = api_keys(tmp_path)
    del keys["upstream"]
    path = tmp_path / "keys" / "api_keys.json"
    path.write_text(json.dumps(keys))
    with pytest.raises(RuntimeError, match="upstream"):
        api_keys(tmp_path)


async def test_the_services_trust_the_keys_by_their_hashes_only(tmp_path: Path):
    stack = stack_of(tmp_path, auth=True)
    shared = json.dumps(stack.env)
    assert stack.env["MODELBUS_AUTH"] == "on"
    for name in API_KEY_ROLES:
        assert stack.api_key(name) not in shared, f"{name}'s secret in the shared environment"
    keys = ApiKeys(MemoryKeyStore(), static=static_keys(stack.env["MODELBUS_STATIC_KEYS"]))
    for name, role in API_KEY_ROLES.items():
        identity = await keys.identify(stack.api_key(name) or "")
        assert (identity.name, identity.role) == (name, role)
    with pytest.raises(Unauthenticated):
        await keys.identify("mbk_not-one-of-them")


def test_each_service_reads_the_registry_with_its_own_key(tmp_path: Path):
    stack = stack_of(tmp_path, auth=True)
    for service in SERVICES:
        env = stack.service_env(service)
        assert env["MODELBUS_REGISTRY_API_KEY"] == stack.api_key(service)
        others = {stack.api_key(name) for name in API_KEY_ROLES if name != service}
        assert not others & set(env.values()), f"{service} holds another's key"
    assert stack.auth_headers("viewer") == {"Authorization": f"Bearer {stack.api_key('viewer')}"}


def test_auth_off_makes_no_keys_and_sends_none(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MODELBUS_REGISTRY_API_KEY", raising=False)
    stack = stack_of(tmp_path, auth=False)
    assert stack.env == {"MODELBUS_AUTH": "off"}
    assert stack.api_key("admin") is None and stack.auth_headers("upstream") == {}
    assert "MODELBUS_REGISTRY_API_KEY" not in stack.service_env("scorer")
    assert not (tmp_path / "keys" / "api_keys.json").exists()
