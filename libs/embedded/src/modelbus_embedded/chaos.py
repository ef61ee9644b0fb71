"""The fault suite's tools (``tests/chaos``, ``make chaos``): what injects the faults, what
keeps the books, and the table the suite prints.

- ``FaultProxy``: a TCP proxy on 127.0.0.1 in front of a server (the S3 store) that passes
  traffic, resets every connection, or resets only connections that carry an HTTP ``PUT`` (an
  upload fails; reads still work).
- ``Ledger``: one scenario's scoring requests (request id -> event id) and what came out for
  each (PredictionMade ids, ScoringFailed reasons, dead letters with their reasons), from one
  ``Outputs`` tap shared by the scenarios; ``Ledger.tally`` is lost / duplicates / answered.
- ``Stream``: ScoringRequested at a steady rate over several models, each recorded in its
  ledger once the broker acknowledged it (a send that fails is sent again: same event id).
- ``LagWatch``: every consumer group's committed offset against the end of each partition it
  reads, polled; a partition with a backlog whose committed offset does not move is stalled,
  and the longest stall outside the injected faults (``LagWatch.fault``) is reported.
- ``consumers``: who consumes which topic in which group, and who publishes it, read from the
  services' AsyncAPI documents (``infra/asyncapi``).
- ``Row`` / ``render_table`` / ``write_results``: the table (stdout, ``results.json``/``.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from modelbus_contracts import PredictionMade, ScoringFailed, ScoringRequested, encode
from modelbus_platform.bus import DLQ_REASON, dlq_topic
from modelbus_platform.signing import Signer, private_key
from modelbus_platform.stores import S3ObjectStore

from .stack import Stack
from .testing import labelled, until

# -- who consumes what ----------------------------------------------------------------------


@dataclass(frozen=True)
class Consumer:
    service: str
    group: str
    topic: str


def consumers(asyncapi_dir: Path) -> tuple[list[Consumer], dict[str, str]]:
    """Every (service, consumer group, topic) the AsyncAPI documents declare (a per-replica
    group's ``{instance}`` as the embedded stack names replicas: ``<service>-1``), and the
    service that publishes each topic."""
    found: list[Consumer] = []
    publisher: dict[str, str] = {}
    for path in sorted(asyncapi_dir.glob("*.yaml")):
        service = path.stem
        doc = yaml.safe_load(path.read_text())
        channels = doc["channels"]
        for operation in doc["operations"].values():
            channel = operation["channel"]["$ref"].rsplit("/", 1)[-1]
            topic = channels[channel]["address"]
            if operation["action"] == "receive":
                group = operation["x-modelbus-group"].replace("{instance}", f"{service}-1")
                found.append(Consumer(service, group, topic))
            elif not topic.endswith(".dlq"):
                publisher.setdefault(topic, service)
    return found, publisher


# -- a fault-injecting TCP proxy ------------------------------------------------------------


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (linger 0), not a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """127.0.0.1:<port> -> 127.0.0.1:<target>. ``mode``: ``pass``; ``reset`` (every
    connection, new or open, is reset on its next byte); ``reset_writes`` (a connection is
    reset when the client sends an HTTP ``PUT`` whose path starts with ``write_prefix``: those
    uploads fail, everything else works)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self.write_prefix = "/"
        self.resets = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="fault-proxy").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "reset":
                self._count()
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), 5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            for args in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _count(self) -> None:
        with self._lock:
            self.resets += 1

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                mode = self.mode
                if mode == "reset" or (
                    mode == "reset_writes"
                    and from_client
                    and chunk.startswith(f"PUT {self.write_prefix}".encode())
                ):
                    self._count()
                    break
                sink.sendall(chunk)
        except OSError:
            pass
        _reset(source)
        _reset(sink)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()


# -- the books ------------------------------------------------------------------------------


@dataclass
class Tally:
    sent: int
    answered: int  # by a PredictionMade
    failed: int  # by a ScoringFailed (its reason in the error)
    dead_lettered: int
    lost: int
    duplicates: int  # PredictionMade records beyond the first of their request
    split_ids: int  # requests answered under more than one prediction id (must be 0)
    lost_ids: list[str]


class Ledger:
    """One scenario's scoring requests and their outcomes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: dict[str, str] = {}  # request id -> event id
        self.sent_at: dict[str, float] = {}
        self.predictions: dict[str, list[str]] = {}  # request id -> prediction ids
        self.failures: dict[str, list[str]] = {}  # request id -> ScoringFailed errors
        self.dead: dict[str, list[str]] = {}  # request id -> dead-letter reasons
        self.first_answer: dict[str, float] = {}

    def record_sent(self, request_id: str, event_id: str) -> None:
        self.sent[request_id] = event_id
        self.sent_at.setdefault(request_id, time.monotonic())

    def _answered(self, request_id: str) -> None:
        self.first_answer.setdefault(request_id, time.monotonic())

    def tally(self) -> Tally:
        outcome = set(self.predictions) | set(self.failures) | set(self.dead)
        lost = sorted(set(self.sent) - outcome)
        return Tally(
            sent=len(self.sent),
            answered=sum(1 for r in self.sent if r in self.predictions),
            failed=sum(1 for r in self.sent if r in self.failures and r not in self.predictions),
            dead_lettered=sum(1 for r in self.sent if r in self.dead),
            lost=len(lost),
            duplicates=sum(len(p) - 1 for r, p in self.predictions.items() if r in self.sent),
            split_ids=sum(1 for r, p in self.predictions.items() if len(set(p)) > 1),
            lost_ids=lost[:10],
        )

    def latencies(self, request_ids: Iterable[str]) -> list[float]:
        """Seconds from acknowledged send to first answer (inf: none yet)."""
        return [
            self.first_answer.get(r, float("inf")) - self.sent_at[r]
            for r in request_ids
            if r in self.sent_at
        ]

    async def settle(self, timeout: float, quiet_s: float = 1.0) -> Tally:
        """Wait (up to ``timeout``) until every request sent has an outcome, then ``quiet_s``
        more for late duplicates; the tally."""
        deadline = time.monotonic() + timeout
        while self.tally().lost:
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(quiet_s)
        return self.tally()


class Outputs:
    """One tap on PredictionMade, ScoringFailed and the ScoringRequested dead letters (from the
    beginning, no group): each record goes to the ledger that sent its request."""

    def __init__(self, bootstrap: str) -> None:
        self.ledgers: dict[str, Ledger] = {}  # request id -> its ledger
        self.by_event: dict[str, str] = {}  # event id -> request id
        self.scoring_failed_bytes: dict[str, int] = {}  # request id -> record size
        self.dead_letters: list[tuple[str, dict[str, str], int]] = []  # topic, headers, size
        self.consumer = AIOKafkaConsumer(
            PredictionMade.topic,
            ScoringFailed.topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        self.task: asyncio.Task | None = None
        self.dlq_consumer: AIOKafkaConsumer | None = None
        self.bootstrap = bootstrap

    def track(self, ledger: Ledger, request_id: str, event_id: str) -> None:
        self.ledgers[request_id] = ledger
        self.by_event[event_id] = request_id
        ledger.record_sent(request_id, event_id)

    async def start(self, dlq_topics: Iterable[str]) -> None:
        await self.consumer.start()
        self.dlq_consumer = AIOKafkaConsumer(
            *dlq_topics,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        await self.dlq_consumer.start()
        self.task = asyncio.gather(self._outputs(), self._dead_letters())

    async def _outputs(self) -> None:
        async for m in self.consumer:
            try:
                body = json.loads(m.value)
            except ValueError:
                continue
            rid = body.get("request_id")
            ledger = self.ledgers.get(rid) if isinstance(rid, str) else None
            if ledger is None:
                continue
            if m.topic == PredictionMade.topic:
                if body.get("served_by") == "shadow":
                    continue
                ledger.predictions.setdefault(rid, []).append(body["prediction_id"])
            else:
                ledger.failures.setdefault(rid, []).append(body.get("error", ""))
                self.scoring_failed_bytes[rid] = len(m.value)
            ledger._answered(rid)

    async def _dead_letters(self) -> None:
        assert self.dlq_consumer is not None
        async for m in self.dlq_consumer:
            headers = {k: v.decode("utf-8", "replace") for k, v in m.headers}
            self.dead_letters.append((m.topic, headers, len(m.value or b"")))
            if m.topic != dlq_topic(ScoringRequested.topic):
                continue
            rid = self.by_event.get(headers.get("ce_id", ""))
            ledger = self.ledgers.get(rid) if rid else None
            if ledger is not None and rid is not None:
                ledger.dead.setdefault(rid, []).append(headers.get(DLQ_REASON, ""))
                ledger._answered(rid)

    def dead_lettered(self, event_id: str) -> list[dict[str, str]]:
        """The dead letters (headers) of one event, from any topic."""
        return [h for _, h, _ in self.dead_letters if h.get("ce_id") == event_id]

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        await self.consumer.stop()
        if self.dlq_consumer is not None:
            await self.dlq_consumer.stop()


class Stream:
    """ScoringRequested for ``models`` (round robin) at ``rate`` per second, recorded in
    ``ledger`` as the broker acknowledges each; a failed send is sent again (same event)."""

    def __init__(
        self,
        bootstrap: str,
        outputs: Outputs,
        ledger: Ledger,
        models: list[str],
        rate: float,
        features: Any,
        **producer_options: Any,
    ) -> None:
        self.outputs, self.ledger, self.models, self.rate = outputs, ledger, models, rate
        self.features = features  # (i) -> features dict
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            request_timeout_ms=20_000,
            linger_ms=5,
            **producer_options,
        )
        self.count = 0
        self.unacked: set[asyncio.Task] = set()
        self.task: asyncio.Task | None = None
        self.resends = 0

    async def start(self) -> Stream:
        await self.producer.start()
        self.task = asyncio.create_task(self._run())
        return self

    def _event(self, i: int) -> ScoringRequested:
        return ScoringRequested(
            producer="chaos",
            model_name=self.models[i % len(self.models)],
            request_id=f"{self.ledger.name}-{i}",
            features=self.features(i),
        )

    async def _send(self, event: ScoringRequested) -> None:
        record = encode(event)
        headers = [(k, v.encode()) for k, v in record.headers.items()]
        while True:
            try:
                future = await self.producer.send(
                    record.topic, record.value, key=record.key, headers=headers
                )
                await future
                break
            except Exception:
                self.resends += 1
                await asyncio.sleep(0.5)
        self.outputs.track(self.ledger, event.request_id, str(event.event_id))

    async def _run(self) -> None:
        started = time.monotonic()
        while True:
            due = int((time.monotonic() - started) * self.rate) + 1
            while self.count < due:
                task = asyncio.create_task(self._send(self._event(self.count)))
                self.unacked.add(task)
                task.add_done_callback(self.unacked.discard)
                self.count += 1
            await asyncio.sleep(0.02)

    async def send_once(self, n: int) -> list[str]:
        """``n`` requests at once, acknowledged, instead of a stream; their request ids."""
        await self.producer.start()
        try:
            return await self.send_now(n)
        finally:
            await self.producer.stop()

    async def send_now(self, n: int) -> list[str]:
        """``n`` more requests at once; their request ids."""
        ids = []
        for _ in range(n):
            event = self._event(self.count)
            self.count += 1
            ids.append(event.request_id)
            task = asyncio.create_task(self._send(event))
            self.unacked.add(task)
            task.add_done_callback(self.unacked.discard)
        await self.drain()
        return ids

    async def drain(self, timeout: float = 120.0) -> None:
        if self.unacked:
            await asyncio.wait_for(asyncio.gather(*list(self.unacked)), timeout)

    async def stop(self) -> None:
        """Stop making requests; wait until every one made is acknowledged."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        await self.drain()
        await self.producer.stop()


# -- stalls -----------------------------------------------------------------------------------


@dataclass
class Stall:
    seconds: float = 0.0
    where: str = ""


class LagWatch:
    """Polls every group's committed offsets and every partition's end offset. A partition
    with a backlog (end > committed) whose committed offset has not moved is stalled from its
    last move, or from the end of the last fault (``fault()``: a fault stalls by design; what
    counts is how long it takes to recover once it is over)."""

    def __init__(self, bootstrap: str, groups: dict[str, list[str]], interval: float = 0.5):
        self.bootstrap = bootstrap
        self.groups = groups  # group -> topics
        self.interval = interval
        self._since: dict[tuple[str, str, int], tuple[int, float]] = {}
        self._faults = 0
        self._fault_ended = 0.0
        self.longest = Stall()
        self.lag: dict[tuple[str, str, int], int] = {}
        self.sampled_at = 0.0
        self.errors = 0
        self.last_error = ""
        self.task: asyncio.Task | None = None

    async def start(self) -> LagWatch:
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        await self.admin.start()
        self.ends = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, request_timeout_ms=5000
        )
        await self.ends.start()
        topics = sorted({t for ts in self.groups.values() for t in ts})
        described = await self.admin.describe_topics(topics)
        self.tps = [
            TopicPartition(d["topic"], p["partition"])
            for d in described
            for p in sorted(d["partitions"], key=lambda p: p["partition"])
        ]
        self.task = asyncio.create_task(self._run())
        return self

    @contextlib.contextmanager
    def fault(self) -> Iterator[None]:
        self._faults += 1
        try:
            yield
        finally:
            self._faults -= 1
            self._fault_ended = time.monotonic()

    def reset(self) -> None:
        """A new scenario: the longest stall from now on."""
        self.longest = Stall()

    async def _sample(self) -> None:
        tps = self.tps
        ends = await self.ends.end_offsets(tps)
        now = time.monotonic()
        lag = {}
        for group, topics in self.groups.items():
            committed = await self.admin.list_consumer_group_offsets(
                group, partitions=[tp for tp in tps if tp.topic in topics]
            )
            for tp in tps:
                if tp.topic not in topics:
                    continue
                meta = committed.get(tp)
                done = meta.offset if meta is not None and meta.offset >= 0 else 0
                key = (group, tp.topic, tp.partition)
                lag[key] = self.note(key, ends.get(tp, 0), done, now)
        self.lag, self.sampled_at = lag, now

    def note(self, key: tuple[str, str, int], end: int, done: int, now: float) -> int:
        """One sample of one group's partition (its end offset and its committed one): the
        backlog; a stall longer than any so far becomes ``longest``."""
        behind = max(0, end - done)
        last = self._since.get(key)
        if behind == 0 or last is None or last[0] != done or self._faults:
            self._since[key] = (done, now)
            return behind
        stalled = now - max(last[1], self._fault_ended)
        if stalled > self.longest.seconds:
            group, topic, partition = key
            self.longest = Stall(stalled, f"{group} {topic}[{partition}]")
        return behind

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._sample(), 10)
            except Exception as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(self.interval)

    def behind(self, groups: Iterable[str] | None = None) -> dict[str, int]:
        wanted = set(groups) if groups is not None else None
        out: dict[str, int] = {}
        for (group, topic, partition), n in self.lag.items():
            if n and (wanted is None or group in wanted):
                out[f"{group} {topic}[{partition}]"] = n
        return out

    async def caught_up(self, timeout: float, groups: Iterable[str] | None = None) -> dict:
        """Wait until no group (of ``groups``) has a backlog in a fresh sample; what is still
        behind at the deadline (empty: caught up)."""
        deadline = time.monotonic() + timeout
        while True:
            asked = time.monotonic()
            while self.sampled_at < asked:
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.1)
            if self.sampled_at < asked:  # no fresh sample: that is no proof of anything
                return {"no lag sample": self.errors, "last error": self.last_error}
            behind = self.behind(groups)
            if not behind or time.monotonic() >= deadline:
                return behind
            await asyncio.sleep(0.3)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.ends.stop()
        await self.admin.close()


# -- the table ------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    sent: int = 0
    answered: int = 0
    failed: int = 0
    dead_lettered: int = 0
    lost: int = 0
    duplicates: int = 0
    split_ids: int = 0
    stall_s: float = 0.0
    state_ok: bool = True
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, scenario: str, tally: Tally | None, stall: Stall, **extra: Any) -> Row:
        counts = {}
        if tally is not None:
            counts = {k: v for k, v in asdict(tally).items() if k != "lost_ids"}
        return cls(scenario, **counts, stall_s=round(stall.seconds, 1), **extra)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.split_ids == 0 and self.stall_s <= 10 and self.state_ok


COLUMNS = (
    ("scenario", 34),
    ("sent", 7),
    ("answered", 9),
    ("failed", 7),
    ("dead-lettered", 14),
    ("lost", 5),
    ("duplicates (ids)", 17),
    ("longest stall s", 16),
    ("state ok", 9),
    ("s", 6),
)


def _cells(row: Row) -> list[str]:
    return [
        row.scenario,
        str(row.sent),
        str(row.answered),
        str(row.failed),
        str(row.dead_lettered),
        str(row.lost),
        f"{row.duplicates} ({'one id' if row.split_ids == 0 else f'{row.split_ids} split'})",
        f"{row.stall_s:.1f}",
        "yes" if row.state_ok else "NO",
        f"{row.seconds:.0f}",
    ]


def render_table(rows: list[Row]) -> str:
    lines = ["".join(f"{name:<{width}}" for name, width in COLUMNS)]
    for row in rows:
        cells = _cells(row)
        lines.append("".join(f"{c:<{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=True)))
    return "\n".join(lines)


def render_markdown(rows: list[Row]) -> str:
    lines = [
        "| " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    notes = [f"- {row.scenario}: {note}" for row in rows for note in row.notes]
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


def write_results(rows: list[Row], directory: Path, form: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    doc = {"form": form, "pid": os.getpid(), "rows": [asdict(r) | {"ok": r.ok} for r in rows]}
    (directory / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (directory / "results.md").write_text(f"Fault suite ({form} form)\n\n" + render_markdown(rows))


# -- the suite's settings and its stack -------------------------------------------------------

FULL = os.environ.get("MODELBUS_CHAOS", "").lower() == "full"


@dataclass(frozen=True)
class Form:
    name: str
    rate: float  # scoring requests per second while a fault is injected
    outage_s: float  # how long the broker / MongoDB / the store stay down
    lead_s: float  # streaming before and after a fault
    monitor_rows: int


FORM = (
    Form("full", rate=150.0, outage_s=30.0, lead_s=10.0, monitor_rows=3000)
    if FULL
    else Form("short", rate=25.0, outage_s=3.0, lead_s=2.0, monitor_rows=300)
)


@dataclass
class Chaos:
    stack: Stack
    proxy: FaultProxy
    outputs: Outputs
    watch: LagWatch
    store: S3ObjectStore  # the S3 server itself, not through the proxy
    models: list[str]  # champions, one per partition
    monitored: str  # a champion only the monitor scenario streams to
    consumed: dict[str, list[tuple[str, str]]]  # topic -> [(service, group)]
    publisher: dict[str, str]  # topic -> the service that publishes it
    uid: str
    rows: list[Row] = field(default_factory=list)
    datasets: dict[str, str] = field(default_factory=dict)  # model -> its training CSV

    @property
    def bootstrap(self) -> str:
        return self.stack.kafka_bootstrap

    def signer(self, service: str) -> Signer:
        return Signer(service, private_key(self.stack.signing_key(service)))

    def groups_of(self, service: str) -> list[str]:
        return sorted({g for subs in self.consumed.values() for s, g in subs if s == service})

    def http(self, who: str = "upstream") -> httpx.AsyncClient:
        return httpx.AsyncClient(headers=self.stack.auth_headers(who), timeout=30)


async def train_champion(chaos: Chaos, http: httpx.AsyncClient, name: str, seed: int) -> str:
    """Upload a labelled CSV to the trainer and train ``name`` on it (logreg): the trainer's
    ModelTrained, the registry, the deployer's first promotion. The dataset's URI."""
    trainer = chaos.stack.url("trainer")
    csv = labelled(400, seed).to_csv_bytes()
    stored = await http.put(
        f"{trainer}/datasets/{name}", content=csv, headers={"content-type": "text/csv"}
    )
    assert stored.status_code == 200, stored.text
    uri = stored.json()["uri"]
    answer = await http.post(
        f"{trainer}/models/{name}/train",
        json={"dataset_uri": uri, "params": {"family": "logreg"}},
    )
    assert answer.status_code in (200, 202), answer.text
    return uri


async def serving(chaos: Chaos, http: httpx.AsyncClient, names: list[str], timeout: float):
    async def all_ready():
        for name in names:
            answer = await http.get(f"{chaos.stack.url('scorer')}/v2/models/{name}/ready")
            if answer.status_code != 200:
                return False
        return True

    await until(all_ready, timeout)
