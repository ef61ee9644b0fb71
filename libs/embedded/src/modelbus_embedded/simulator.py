"""A simulated upstream system that drives the whole loop through the public interfaces.

It uploads a labelled dataset through the trainer's API and publishes TrainingRequested (a plain
CloudEvent on Kafka), waits until the scorer serves the first champion, streams ScoringRequested
events, answers every PredictionMade with the true label (LabelObserved), and part-way switches
the data's concept (concept drift). It watches the decision events and reports the timeline,
ending when a new champion is serving predictions.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from modelbus_contracts import (
    ContractError,
    DataQualityAlert,
    DriftDetected,
    Event,
    LabelObserved,
    ModelEvaluated,
    ModelLoadFailed,
    ModelPromoted,
    ModelRegistered,
    ModelRolledBack,
    ModelTrained,
    PredictionMade,
    ScoringFailed,
    ScoringRequested,
    TrainingRequested,
    decode,
    encode,
)
from modelbus_platform.auth import bearer

FEATURES = ("tenure", "monthly_charges", "support_calls", "usage_drop", "plan")
PLANS = ("basic", "standard", "premium")
Row = dict[str, float | str | None]
WATCHED = (
    TrainingRequested,
    ModelTrained,
    ModelRegistered,
    ModelEvaluated,
    ModelPromoted,
    ModelRolledBack,
    ModelLoadFailed,
    DriftDetected,
    DataQualityAlert,
    ScoringFailed,
    PredictionMade,
)


@dataclass(frozen=True)
class Rule:
    """A non-linear relation over numbers and a category: customers churn when ``rule`` says
    so (tenure, monthly_charges, support_calls and usage_drop standardised, ``plan`` one of
    basic / standard / premium, usage_drop missing for ``missing`` of the customers), ``flip``
    of the labels noisy. No linear model learns it: the default model choice has to find a
    tree ensemble, and the plan matters, so the one-hot encoded category has to be used."""

    name: str
    plan_shares: tuple[float, float, float]
    flip: float = 0.03
    missing: float = 0.02

    def sample(self, n: int, rng: np.random.Generator) -> tuple[list[Row], list[int]]:
        X = rng.normal(0.0, 1.0, size=(n, 4))
        plan = rng.choice(len(PLANS), size=n, p=self.plan_shares)
        tenure, charges, calls, drop = X.T
        if self.name == "before":  # new premium customers, many support calls, dear basic plans
            churn = (
                ((tenure < -0.2) & (plan == 2)) | (calls > 1.2) | ((plan == 0) & (charges > 0.8))
            )
        else:  # now: long-standing customers whose usage drops; basic plans with any complaint
            churn = ((tenure > 0.3) & (drop > 0.0)) | ((plan == 0) & (calls > 0.0))
        y = churn.astype(np.int8)
        y = np.where(rng.random(n) < self.flip, 1 - y, y)
        absent = rng.random(n) < self.missing
        rows: list[Row] = []
        for i, (values, p) in enumerate(zip(X.tolist(), plan.tolist(), strict=True)):
            row: Row = dict(zip(FEATURES[:4], values, strict=True))
            if absent[i]:
                row["usage_drop"] = None
            row["plan"] = PLANS[p]
            rows.append(row)
        return rows, [int(v) for v in y]


BEFORE = Rule("before", (0.4, 0.4, 0.2))
AFTER = Rule("after", (0.55, 0.3, 0.15))  # customers churn for other reasons; more basic plans


@dataclass
class ScenarioConfig:
    model_name: str = "churn"
    initial_rows: int = 3000
    rate_per_s: float = 400.0
    drift_after_requests: int = 2000
    timeout_s: float = 240.0
    seed: int = 7
    monitor_url: str | None = None  # given: keep streaming until the incident is closed
    recovery_timeout_s: float = 180.0


@dataclass
class ScenarioResult:
    model_name: str
    events: list[Event] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    requests_sent: int = 0
    labels_sent: int = 0
    completed: bool = False

    def of(self, cls: type) -> list:
        return [e for e in self.events if isinstance(e, cls)]

    def seconds(self, start: str, end: str) -> float | None:
        if start in self.marks and end in self.marks:
            return self.marks[end] - self.marks[start]
        return None


def describe(event: Event) -> str | None:
    """One readable timeline line per decision event (None: not worth a line)."""
    match event:
        case TrainingRequested():
            return f"training requested ({event.reason})"
        case ModelTrained():
            m, params = event.metrics, event.lineage.params
            chosen = (params.get("model_selection") or {}).get("chosen")
            family = f"{params.get('family')} -> {chosen}" if chosen else params.get("family")
            window = params.get("data_window") or {}
            rung = f", attempt {window['attempt']}" if window.get("attempt", 1) > 1 else ""
            return (
                f"trained    run {event.run_id[:8]} on {event.lineage.dataset.rows} rows "
                f"(trigger {event.lineage.trigger}{rung}, family {family}): hold-out auc "
                f"{m.get('auc', math.nan):.3f}, accuracy {m.get('accuracy', math.nan):.3f} in "
                f"{event.training_seconds:.2f}s"
            )
        case ModelRegistered():
            champ = f", champion is v{event.champion.version}" if event.champion else ""
            return (
                f"registered v{event.version} (artifact sha256 {event.artifact.sha256[:12]}{champ})"
            )
        case ModelEvaluated():
            versus = f" vs v{event.champion_version}" if event.champion_version else ""
            return (
                f"evaluated  v{event.version}{versus} on the same {event.holdout.rows}-row "
                f"hold-out: {event.decision.upper()} - " + "; ".join(event.reasons)
            )
        case ModelPromoted():
            prev = f" (previous v{event.previous_version})" if event.previous_version else ""
            return f"promoted   v{event.version}{prev}"
        case ModelRolledBack():
            return f"rolled back v{event.from_version} -> v{event.to_version}: {event.reason}"
        case ModelLoadFailed():
            return f"LOAD FAILED v{event.version} on {event.instance}: {event.error}"
        case DriftDetected() if event.attempt > 1:
            return (
                f"retrain    incident {event.incident_id[:8]}, attempt {event.attempt}: "
                f"accuracy not back to its pre-drift level yet, a larger window"
            )
        case DriftDetected():
            return (
                f"drift      on {event.feature} ({event.detector}): "
                f"{_num(event.reference_value)} -> {_num(event.current_value)} after "
                f"{event.observations} points, window {event.window_size}, "
                f"incident {event.incident_id[:8]}"
            )
        case DataQualityAlert():
            return f"data quality: {event.check} on {event.feature}: {event.count} ({event.detail})"
        case ScoringFailed():
            return f"scoring failed for {event.request_id}: {event.error}"
    return None


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


class Upstream:
    """Talks to modelbus only through Kafka (CloudEvents) and the services' HTTP APIs, every
    HTTP call with ``api_key`` (an ``operator`` key: it uploads datasets and predicts; None
    when the services have auth off)."""

    def __init__(
        self,
        bootstrap: str,
        trainer_url: str,
        scorer_url: str,
        config: ScenarioConfig,
        say: Callable[[str], None] = print,
        *,
        api_key: str | None,
    ) -> None:
        self.bootstrap = bootstrap
        self.headers = bearer(api_key)
        self.trainer_url = trainer_url
        self.scorer_url = scorer_url
        self.cfg = config
        self.say = say
        self.rng = np.random.default_rng(config.seed)
        self.result = ScenarioResult(config.model_name)
        self.truth: dict[str, int | float | str] = {}
        self.concept: Any = BEFORE
        self.features: tuple[str, ...] = FEATURES
        self.t0 = time.monotonic()
        self.champion_version = 0
        self.first_champion: int | None = None
        self.promoted = asyncio.Event()

    def mark(self, name: str) -> None:
        self.result.marks.setdefault(name, time.monotonic() - self.t0)

    def line(self, text: str) -> None:
        self.say(f"[{time.monotonic() - self.t0:6.1f}s] {text}")

    async def run(self) -> ScenarioResult:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await self.producer.start()
        consumer = await self._watch()
        watcher = asyncio.create_task(self._consume(consumer))
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                await self._train_first_model()
                await self._stream_until_new_champion_serves()
            self.result.completed = True
            if self.cfg.monitor_url:
                await self._stream_until_the_incident_closes()
        except TimeoutError:
            self.line(f"TIMEOUT after {self.cfg.timeout_s}s: the loop did not complete")
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await consumer.stop()
            await self.producer.stop()
        return self.result

    async def _watch(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        partitions = []
        for cls in WATCHED:
            for p in await _partitions(consumer, cls.topic):
                partitions.append(TopicPartition(cls.topic, p))
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the end offsets now, before we publish anything
            await consumer.position(tp)
        return consumer

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        key = self.cfg.model_name.encode()
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=2000)
            labels = []
            for records in batch.values():
                for record in records:
                    if record.key != key:
                        continue
                    try:
                        event = decode(record.headers, record.value)
                    except ContractError:
                        continue
                    if isinstance(event, PredictionMade):
                        labels.append(self._on_prediction(event))
                    else:
                        self._on_decision(event)
            for label in labels:
                if label is not None:
                    await self._send(label)
                    self.result.labels_sent += 1

    def _on_prediction(self, event: PredictionMade) -> LabelObserved | None:
        new = self.first_champion is not None and event.version != self.first_champion
        if new and "new_champion_serving" not in self.result.marks:
            self.mark("new_champion_serving")
            self.line(f"serving    v{event.version}: first prediction by the new champion")
        truth = self.truth.pop(event.request_id or "", None)
        if truth is None:
            return None
        return LabelObserved(
            model_name=event.model_name,
            prediction_id=event.prediction_id,
            label=truth,
            producer="upstream-simulator",
            correlation_id=event.correlation_id,
            causation_id=event.event_id,
        )

    def _on_decision(self, event: Event) -> None:
        self.result.events.append(event)
        text = describe(event)
        if text:
            self.line(text)
        if isinstance(event, ModelPromoted):
            self.champion_version = event.version
            self.promoted.set()
            self.mark(f"promoted_v{event.version}")
        if isinstance(event, DriftDetected):
            self.mark("drift_detected")

    async def _send(self, event: Event) -> None:
        record = encode(event)
        await self.producer.send(
            record.topic,
            record.value,
            key=record.key,
            headers=[(k, v.encode()) for k, v in record.headers.items()],
        )

    def sample(self, n: int) -> tuple[list[Row], list[Any]]:
        """``n`` rows of the current concept and their true labels."""
        return self.concept.sample(n, self.rng)

    def first_dataset(self) -> tuple[list[Row], list[Any]]:
        """The labelled rows the first model is trained on."""
        return BEFORE.sample(self.cfg.initial_rows, self.rng)

    async def _train_first_model(self) -> None:
        rows, labels = self.first_dataset()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow((*self.features, "label"))
        for row, label in zip(rows, labels, strict=True):
            writer.writerow([_cell(row.get(f)) for f in self.features] + [_cell(label)])
        body = out.getvalue()
        async with httpx.AsyncClient(timeout=30, headers=self.headers) as http:
            response = await http.put(
                f"{self.trainer_url}/datasets/{self.cfg.model_name}",
                content=body,
                headers={"content-type": "text/csv"},
            )
            response.raise_for_status()
            dataset = response.json()
            self.line(f"uploaded   {dataset['rows']} labelled rows -> {dataset['uri']}")
            await self._send(
                TrainingRequested(
                    model_name=self.cfg.model_name,
                    reason="manual",
                    dataset_uri=dataset["uri"],
                    producer="upstream-simulator",
                )
            )
            await self.promoted.wait()
            while True:
                ready = await http.get(f"{self.scorer_url}/v2/models/{self.cfg.model_name}/ready")
                raise_if_refused(ready)
                if ready.status_code == 200:
                    break
                await asyncio.sleep(0.1)
        self.first_champion = self.champion_version
        self.mark("first_champion_serving")
        self.line(f"serving    v{self.first_champion} (scorer reports the model ready)")

    async def _stream_until_the_incident_closes(self) -> None:
        """Recovery, not one shot: keep the traffic going and show the incident's states
        (monitor API) until it is closed (recovered) or needs a human."""
        seen: set[tuple[str, str]] = set()
        deadline = time.monotonic() + self.cfg.recovery_timeout_s
        async with httpx.AsyncClient(
            base_url=self.cfg.monitor_url or "", timeout=5, headers=self.headers
        ) as http:
            while time.monotonic() < deadline:
                await self._stream_batches(max(1, int(self.cfg.rate_per_s / 20)))
                response = await http.get("/incidents", params={"model_name": self.cfg.model_name})
                raise_if_refused(response)
                incidents = response.json() if response.status_code == 200 else []
                if not incidents:
                    continue
                incident = incidents[0]
                for step in incident.get("transitions", []):
                    key = (step["at"], step["state"])
                    if key not in seen:
                        seen.add(key)
                        self.line(f"incident   {step['state']:11s} {step['reason']}")
                if incident["status"] == "closed" or incident.get("state") == "needs_human":
                    self.mark(f"incident_{incident.get('state')}")
                    return
        self.line(f"incident   still open after {self.cfg.recovery_timeout_s:.0f}s")

    async def _stream_batches(self, batches: int) -> None:
        """``batches`` times 20 requests of the current concept at the configured rate."""
        interval = 20 / self.cfg.rate_per_s
        for _ in range(batches):
            rows, labels = self.sample(20)
            for row, label in zip(rows, labels, strict=True):
                request_id = uuid.uuid4().hex
                self.truth[request_id] = label
                await self._send(
                    ScoringRequested(
                        model_name=self.cfg.model_name,
                        request_id=request_id,
                        features=row,
                        producer="upstream-simulator",
                    )
                )
                self.result.requests_sent += 1
            await asyncio.sleep(interval)

    async def _stream_until_new_champion_serves(self) -> None:
        while "new_champion_serving" not in self.result.marks:
            if (
                self.result.requests_sent >= self.cfg.drift_after_requests
                and self.concept is BEFORE
            ):
                self.concept = AFTER
                self.mark("drift_onset")
                self.line("DRIFT      upstream behaviour changed (concept drift injected)")
            await self._stream_batches(1)
        async with httpx.AsyncClient(timeout=10, headers=self.headers) as http:
            probe = await http.post(
                f"{self.scorer_url}/v2/models/{self.cfg.model_name}/infer",
                json={"inputs": [_v2_input(f, v) for f, v in self.sample(1)[0][0].items()]},
            )  # a missing value travels as null (the input of a nullable feature)
            raise_if_refused(probe)
            if probe.status_code == 200:
                self.line(
                    f"online     /v2 infer answered by version {probe.json().get('model_version')}"
                )


def raise_if_refused(response: httpx.Response) -> None:
    """Raise if the call was refused for its credentials (401, 403): waiting will not help."""
    if response.status_code in (401, 403):
        response.raise_for_status()


def _cell(value: Any) -> str:
    """A CSV cell: numbers in round-trip form, categories as they are, missing empty."""
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def _v2_input(name: str, value: Any) -> dict[str, Any]:
    """One feature as an Open Inference Protocol v2 input: FP64, or BYTES for a category."""
    datatype = "BYTES" if isinstance(value, str) else "FP64"
    return {"name": name, "shape": [1], "datatype": datatype, "data": [value]}


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    for _ in range(50):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return sorted(parts)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} has no partitions")
