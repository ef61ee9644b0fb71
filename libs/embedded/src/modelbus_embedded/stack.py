"""The embedded stack: the three protocol servers plus the six services as local processes.

``make up`` runs ``python -m modelbus_embedded up``: it starts everything under one data folder
(MongoDB-wire data and the artifact store persist there; the Kafka-protocol broker is memory-only
by design, the registry is the source of truth), waits for every service to be ready, records the
processes in ``<data>/run/stack.json`` so ``make down`` can stop them, and runs the demo.
The end-to-end tests start the same stack with S3 (moto) instead of the local artifact folder.

Authentication is on (``auth=False`` turns it off): the stack's API keys are made once per data
folder (``<data>/keys/api_keys.json``, see ``api_keys``) and the services trust only their
hashes (``MODELBUS_STATIC_KEYS``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from modelbus_platform.auth import Role, StaticKey, bearer, hash_key, new_secret
from modelbus_platform.signing import keypair

from .servers import Server, free_port, kafka_server, mongo_server, s3_server, wait_for_port

SERVICES = ("registry", "trainer", "deployer", "scorer", "monitor", "batch")
DEFAULT_PORTS = {
    "registry": 8001,
    "trainer": 8002,
    "deployer": 8003,
    "scorer": 8004,
    "monitor": 8005,
    "batch": 8006,
}
# the stack's API keys and their roles: an admin's, one per service (each reads the registry
# with its own), the upstream system's (the demo and the tests train, import and predict with
# it) and a read-only one (the tests and anyone looking)
API_KEY_ROLES: dict[str, Role] = {
    "admin": "admin",
    **dict.fromkeys(SERVICES, "viewer"),
    "upstream": "operator",
    "viewer": "viewer",
}


@dataclass
class Stack:
    data_dir: Path
    env: dict[str, str]
    ports: dict[str, int]
    servers: list[Server] = field(default_factory=list)
    services: dict[str, subprocess.Popen] = field(default_factory=dict)
    auth: bool = True

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def kafka_bootstrap(self) -> str:
        return self.env["MODELBUS_KAFKA_BOOTSTRAP"]

    def signing_key(self, service: str) -> str:
        """``service``'s Ed25519 signing key (base64), from the stack's key file."""
        return signing_keys(self.data_dir)[0][service]

    def api_key(self, name: str) -> str | None:
        """The secret of one of the stack's API keys (``API_KEY_ROLES``); None with auth off."""
        return api_keys(self.data_dir)[name]["key"] if self.auth else None

    def auth_headers(self, name: str) -> dict[str, str]:
        """The headers that call the stack's APIs as ``name`` (none with auth off)."""
        return bearer(self.api_key(name))

    def service_env(self, service: str) -> dict[str, str]:
        own_key = self.api_key(service)  # it reads the registry with a viewer key of its own
        return {
            **os.environ,
            **self.env,
            "MODELBUS_SIGNING_KEY": self.signing_key(service),
            "MODELBUS_SERVICE_NAME": service,
            "MODELBUS_INSTANCE_ID": f"{service}-1",
            "MODELBUS_HTTP_PORT": str(self.ports[service]),
            "MODELBUS_HTTP_HOST": "127.0.0.1",
            "MODELBUS_REGISTRY_URL": self.url("registry"),
            **({"MODELBUS_REGISTRY_API_KEY": own_key} if own_key else {}),
            "PYTHONUNBUFFERED": "1",
        }

    def start_service(self, service: str) -> subprocess.Popen:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{service}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"modelbus_{service}"],
                env=self.service_env(service),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.services[service] = proc
        return proc

    def wait_ready(self, service: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            proc = self.services.get(service)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"{service} exited with code {proc.returncode}; "
                    f"see {self.data_dir / 'logs' / (service + '.log')}"
                )
            try:
                response = httpx.get(f"{self.url(service)}/health/ready", timeout=2)
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.25)
        raise TimeoutError(f"{service} not ready after {timeout}s: {last}")

    def start(self, services: tuple[str, ...] = SERVICES) -> Stack:
        for service in services:
            self.start_service(service)
        for service in services:
            self.wait_ready(service)
        return self

    def stop_service(self, service: str, sig: int = signal.SIGTERM) -> None:
        proc = self.services.pop(service, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop(self) -> None:
        for service in reversed(list(self.services)):
            self.stop_service(service)
        for server in reversed(self.servers):
            server.stop()

    def save_state(self) -> Path:
        run = self.data_dir / "run"
        run.mkdir(parents=True, exist_ok=True)
        state = {
            "pids": {name: proc.pid for name, proc in self.services.items()}
            | {f"server:{s.name}": s.proc.pid for s in self.servers if s.proc},
            "urls": {name: self.url(name) for name in self.services},
            "env": self.env,
            "api_keys": str(api_keys_path(self.data_dir)) if self.auth else None,
        }
        path = run / "stack.json"
        path.write_text(json.dumps(state, indent=2))
        return path


def build_stack(
    data_dir: Path,
    *,
    object_store: str = "local",
    persistent_mongo: bool = True,
    ports: dict[str, int] | None = None,
    extra_env: dict[str, str] | None = None,
    auth: bool = True,
) -> Stack:
    """Start the protocol servers (not yet the services) and return the stack description.
    ``auth``: the services need the stack's API keys (``Stack.api_key``), made once per data
    folder; their environment holds only the keys' hashes and each service's own key."""
    data_dir = data_dir.resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    servers = [
        kafka_server(logs),
        mongo_server(logs, data_dir / "mongo" if persistent_mongo else None),
    ]
    if object_store == "s3":
        servers.append(s3_server(logs))
    started: list[Server] = []
    try:
        for server in servers:
            started.append(server.start())
    except BaseException:
        for server in started:
            server.stop()
        raise
    env = {
        "MODELBUS_KAFKA_BOOTSTRAP": f"127.0.0.1:{servers[0].port}",
        "MODELBUS_MONGO_URI": f"mongodb://127.0.0.1:{servers[1].port}",
        "MODELBUS_MONGO_DB": "modelbus",
        "MODELBUS_OBJECT_STORE": object_store,
        "MODELBUS_LOCAL_STORE_DIR": str(data_dir / "objects"),
        "MODELBUS_BUCKET": "modelbus",
        "MODELBUS_LOG_JSON": "true",
    }
    if object_store == "s3":
        env["MODELBUS_S3_ENDPOINT"] = f"127.0.0.1:{servers[2].port}"
    env["MODELBUS_TRUSTED_KEYS"] = json.dumps(signing_keys(data_dir)[1], sort_keys=True)
    env.update(auth_env(data_dir, auth))
    env.update(extra_env or {})
    return Stack(data_dir, env, dict(ports or DEFAULT_PORTS), servers, auth=auth)


def _write_once(path: Path, doc: dict) -> None:
    """A secret file, readable by its owner only; never overwritten (O_EXCL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(doc, out, indent=2)


def signing_keys(data_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Each service's signing key and the trusted public keys, made once per data folder
    (``keys/signing.json``, readable by its owner only) and kept across restarts: the stack's
    services sign their control events and act only on each other's."""
    path = data_dir / "keys" / "signing.json"
    if not path.exists():
        pairs = {service: keypair() for service in SERVICES}
        _write_once(
            path,
            {
                "signing_keys": {name: pair[0] for name, pair in pairs.items()},
                "trusted_keys": {name: pair[1] for name, pair in pairs.items()},
            },
        )
    doc = json.loads(path.read_text())
    return doc["signing_keys"], doc["trusted_keys"]


def api_keys_path(data_dir: Path) -> Path:
    return data_dir.resolve() / "keys" / "api_keys.json"


def api_keys(data_dir: Path) -> dict[str, dict[str, str]]:
    """The stack's API keys, ``{name: {"role", "key"}}`` (``API_KEY_ROLES``), made once per
    data folder (``keys/api_keys.json``, readable by its owner only) and kept across restarts.
    ``jq -r .admin.key <data>/keys/api_keys.json`` is the admin's."""
    path = api_keys_path(data_dir)
    if not path.exists():
        _write_once(
            path,
            {name: {"role": role, "key": new_secret()} for name, role in API_KEY_ROLES.items()},
        )
    doc = json.loads(path.read_text())
    missing = sorted(set(API_KEY_ROLES) - set(doc))
    if missing:
        raise RuntimeError(f"{path} has no key for {', '.join(missing)}: remove it for new keys")
    return doc


def auth_env(data_dir: Path, auth: bool) -> dict[str, str]:
    """What every service's environment says about authentication: on, and the stack's keys
    as ``MODELBUS_STATIC_KEYS`` (names, roles and hashes: no secret); or off."""
    if not auth:
        return {"MODELBUS_AUTH": "off"}
    entries = [
        StaticKey(name=name, role=entry["role"], sha256=hash_key(entry["key"]))  # type: ignore[arg-type]
        for name, entry in api_keys(data_dir).items()
    ]
    return {
        "MODELBUS_AUTH": "on",
        "MODELBUS_STATIC_KEYS": json.dumps([entry.model_dump() for entry in entries]),
    }


def free_ports() -> dict[str, int]:
    return {service: free_port() for service in SERVICES}


def stop_recorded(data_dir: Path) -> list[str]:
    """Stop every process a previous ``up`` recorded (``make down``)."""
    path = data_dir / "run" / "stack.json"
    if not path.exists():
        return []
    state = json.loads(path.read_text())
    stopped = []
    for name, pid in state.get("pids", {}).items():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
            stopped.append(name)
    deadline = time.monotonic() + 10
    for pid in state.get("pids", {}).values():
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return stopped


def port_in_use(port: int) -> bool:
    try:
        wait_for_port(port, timeout=0.1)
        return True
    except TimeoutError:
        return False
