"""Shared harness of the serving benchmarks: real servers, a fake registry, a scorer process,
and load generators (wrk when installed, else a small asyncio HTTP/1.1 generator).

Core layout on a 2-core machine: the server under test runs on core 0 (``SERVER_CORE``); the
load generator, the broker, the S3 server, the fake registry and this process run on core 1
(``CLIENT_CORE``). In production the broker and the clients are other machines; here they share
the client core so that the server under test has a core of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from modelbus_contracts.api import VersionView
from modelbus_embedded import testing
from modelbus_embedded.servers import (
    Server,
    free_port,
    kafka_server,
    mongo_server,
    s3_server,
    wait_for_port,
)
from modelbus_ml import LogisticModel
from modelbus_platform.stores import S3ObjectStore

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "bench"
SERVER_CORE = os.environ.get("BENCH_SERVER_CORE", "0")
CLIENT_CORE = os.environ.get("BENCH_CLIENT_CORE", "1")
FEATURES = ("f0", "f1", "f2", "f3")
ROW = [0.25, -1.5, 3.0, 0.75]
ZERO_SHA = "0" * 64
BUCKET = "bench"


def pin_self() -> None:
    """This process (load generator side) runs on the client core."""
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {int(CLIENT_CORE)})


def pinned(core: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", core, *argv] if shutil.which("taskset") else argv


def bench_model(coef: list[float] | None = None, intercept: float = 0.1) -> LogisticModel:
    k = len(FEATURES)
    return LogisticModel(
        feature_names=FEATURES,
        coef=np.asarray(coef or [0.5, -0.25, 0.125, 1.0], dtype=np.float64),
        intercept=intercept,
        mean=np.asarray([0.0, 0.5, 1.0, -0.5]),
        scale=np.ones(k),
        threshold=0.5,
    )


def v2_body(request_id: str = "bench") -> bytes:
    """One row of 4 FP64 features as a single [1, 4] input: the payload of every online bench."""
    tensor = {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}
    return json.dumps({"id": request_id, "inputs": [tensor]}).encode()


def version_view(name: str, version: int, data: bytes) -> VersionView:
    return testing.version_view(name, version, data, FEATURES)


# --- fake registry -----------------------------------------------------------------------------


class FakeRegistry:
    """``GET /models`` and ``GET /models/{name}/aliases/champion`` (a VersionView), in a thread.
    ``champions`` can be changed while it runs (the hot-swap bench promotes through it)."""

    def __init__(self) -> None:
        self.champions: dict[str, dict[str, Any]] = {}
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if parts == ["models"]:
                    self._send(200, [{"name": n} for n in sorted(registry.champions)])
                elif (
                    len(parts) == 4
                    and parts[0] == "models"
                    and parts[2:] == ["aliases", "champion"]
                ):
                    view = registry.champions.get(parts[1])
                    self._send(200 if view else 404, view or {"detail": "no champion"})
                else:
                    self._send(404, {"detail": "not found"})

            def _send(self, status: int, body: Any) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeRegistry:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- servers -----------------------------------------------------------------------------------


@dataclass
class Env:
    """Broker, S3, MongoDB-wire (on the client core), fake registry; scorers on demand."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="modelbus-bench-")))
    kafka: Server | None = None
    s3: Server | None = None
    mongo: Server | None = None
    registry: FakeRegistry = field(default_factory=FakeRegistry)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def start(self) -> Env:
        self.kafka = kafka_server(self.base)
        self.s3 = s3_server(self.base)
        self.mongo = mongo_server(self.base)
        for server in (self.kafka, self.s3, self.mongo):
            server.argv = pinned(CLIENT_CORE, server.argv)
            server.start()
        self.registry.start()
        return self

    @property
    def bootstrap(self) -> str:
        assert self.kafka is not None
        return f"127.0.0.1:{self.kafka.port}"

    @property
    def store(self) -> S3ObjectStore:
        assert self.s3 is not None
        return S3ObjectStore(f"127.0.0.1:{self.s3.port}", "modelbus", "modelbus-secret", BUCKET)

    async def publish_model(self, name: str, version: int, model: LogisticModel) -> VersionView:
        """Artifact into S3, record into the fake registry as the champion."""
        data = model.to_bytes()
        view = version_view(name, version, data)
        await self.store.put(view.artifact.uri, data)
        self.registry.champions[name] = view.model_dump(mode="json")
        return view

    def scorer_env(self, instance: str, port: int) -> dict[str, str]:
        assert self.s3 is not None
        return {
            **os.environ,
            "MODELBUS_KAFKA_BOOTSTRAP": self.bootstrap,
            "MODELBUS_OBJECT_STORE": "s3",
            "MODELBUS_S3_ENDPOINT": f"127.0.0.1:{self.s3.port}",
            "MODELBUS_BUCKET": BUCKET,
            "MODELBUS_MONGO_URI": f"mongodb://127.0.0.1:{self.mongo.port}" if self.mongo else "",
            "MODELBUS_MONGO_DB": "bench",
            "MODELBUS_REGISTRY_URL": self.registry.url,
            "MODELBUS_INSTANCE_ID": instance,
            "MODELBUS_HTTP_PORT": str(port),
            "MODELBUS_LOG_LEVEL": "WARNING",
            "MODELBUS_LOG_JSON": "true",
        }

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str], port: int | None
    ) -> subprocess.Popen:
        """A server under test, pinned to the server core, logs in build/bench/logs."""
        logs = OUT / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                pinned(SERVER_CORE, argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
            )
        self.procs.append(proc)
        if port is not None:
            wait_for_port(port, 60, proc)
        return proc

    def start_scorer(self, instance: str = "bench-0", port: int | None = None) -> tuple[int, Any]:
        port = port or free_port()
        argv = [sys.executable, "-m", "modelbus_scorer"]
        proc = self.spawn(f"scorer-{instance}", argv, self.scorer_env(instance, port), port)
        return port, proc

    def stop_proc(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop(self) -> None:
        for proc in self.procs:
            self.stop_proc(proc)
        self.registry.stop()
        for server in (self.kafka, self.s3, self.mongo):
            if server is not None:
                server.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def wait_http_ok(url: str, timeout: float = 60.0, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=2.0, headers=headers)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


def scrape(port: int, metric: str) -> float:
    """Sum of one Prometheus metric's samples on ``port``'s /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(metric) and (len(line) == len(metric) or line[len(metric)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- load generators ---------------------------------------------------------------------------

WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
-- extra headers
wrk.body = io.open(os.getenv("BENCH_BODY_FILE")):read("*a")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"max_us":%d,"mean_us":%.1f,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def have_wrk() -> bool:
    return shutil.which("wrk") is not None and os.environ.get("BENCH_LOADGEN") != "python"


def run_wrk(
    url: str,
    body: bytes,
    duration_s: float,
    connections: int,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    OUT.mkdir(parents=True, exist_ok=True)
    script, body_file = OUT / "post.lua", OUT / "body.json"
    # a JSON string of ASCII is a Lua string literal
    extra = "".join(
        f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in (headers or {}).items()
    )
    script.write_text(WRK_LUA.replace("-- extra headers\n", extra))
    body_file.write_bytes(body)
    argv = pinned(
        CLIENT_CORE,
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            "-s",
            str(script),
            url,
        ],
    )
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "BENCH_BODY_FILE": str(body_file)},
    ).stdout
    return parse_wrk(out)


def parse_wrk(stdout: str) -> dict[str, Any]:
    """The ``WRKJSON`` line our wrk Lua script prints, as the load generators' result shape."""
    line = next(x for x in stdout.splitlines() if x.startswith("WRKJSON "))
    raw = json.loads(line[len("WRKJSON ") :])
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    return {
        "loadgen": "wrk",
        "requests": raw["requests"],
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "p999_ms": raw["p999_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": errors,
        "non_2xx": raw["status"],
    }


@dataclass
class Sample:
    at: float  # seconds since the generator started
    latency_ms: float
    status: int
    body: bytes


async def _connection(
    host: str, port: int, request: bytes, stop_at: float, t0: float, samples: list[Sample]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError):
                samples.append(Sample(started - t0, 0.0, 0, b""))
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            done = time.perf_counter()
            samples.append(Sample(started - t0, (done - started) * 1000, status, body))
    finally:
        writer.close()


async def python_load(
    port: int,
    path: str,
    body: bytes,
    duration_s: float,
    connections: int,
    headers: dict[str, str] | None = None,
) -> list[Sample]:
    """Closed-loop HTTP/1.1 keep-alive load: ``connections`` clients, one request in flight each.
    Every response is kept (time, latency, status, body) for timelines."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    samples: list[Sample] = []
    t0 = time.perf_counter()
    stop_at = t0 + duration_s
    await asyncio.gather(
        *(_connection("127.0.0.1", port, request, stop_at, t0, samples) for _ in range(connections))
    )
    return samples


def summarise(samples: list[Sample], duration_s: float) -> dict[str, Any]:
    ok = [s.latency_ms for s in samples if 200 <= s.status < 300]
    lat = np.asarray(ok) if ok else np.asarray([0.0])
    return {
        "loadgen": "python-asyncio",
        "requests": len(samples),
        "rps": len(samples) / duration_s,
        "p50_ms": float(np.percentile(lat, 50)),
        "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)),
        "p999_ms": float(np.percentile(lat, 99.9)),
        "max_ms": float(lat.max()),
        "errors": sum(1 for s in samples if not 200 <= s.status < 300),
        "non_2xx": sum(1 for s in samples if s.status and not 200 <= s.status < 300),
    }


def load(
    url_port: int,
    path: str,
    body: bytes,
    duration_s: float,
    connections: int,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """wrk if installed (``BENCH_LOADGEN=python`` forces the asyncio generator); ``headers``
    go with every request (credentials)."""
    if have_wrk():
        url = f"http://127.0.0.1:{url_port}{path}"
        return run_wrk(url, body, duration_s, connections, headers)
    samples = asyncio.run(python_load(url_port, path, body, duration_s, connections, headers))
    return summarise(samples, duration_s)


def describe(result: dict[str, Any]) -> str:
    """One load result as a line: throughput, p50, p99, errors."""
    return (
        f"{result['rps']:9.0f} req/s p50 {result['p50_ms']:6.2f} ms "
        f"p99 {result['p99_ms']:7.2f} ms errors {result['errors']}"
    )


def machine_notes() -> dict[str, Any]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def git(*argv: str) -> str:
        result = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
        return result.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "scorer_dirty": bool(git("status", "--porcelain", "services/scorer")),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "server_core": SERVER_CORE,
        "client_core": CLIENT_CORE,
        "python": sys.version.split()[0],
        "loadgen": "wrk" if have_wrk() else "python-asyncio",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_json(name: str, data: dict[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    path.write_text(json.dumps(data, indent=2))
    return path
