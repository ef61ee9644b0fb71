"""In-memory stand-ins of the platform's ports, for the services' unit tests and benchmarks
(production code never imports this): a recording publisher, an object store, the registry, an
outbox and a relay that publishes at once.

``FakeRegistry`` is the ``modelbus_platform.registry.Registry`` port in memory: what tests
``put`` in it is read back through the same methods (and views) as the HTTP client returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from modelbus_contracts import Event, KafkaRecord, decode, encode
from modelbus_contracts.api import AliasesView, ModelView, RolloutView, VersionView
from modelbus_contracts.policy import ModelPolicyDoc, PolicyView

from .bus import RawRecord
from .outbox import Pending, Relay, stamped
from .registry import RegistryUnavailable
from .stores import ObjectNotFound, check_content_address, same_or_conflict

E = TypeVar("E", bound=Event)


class RecordingPublisher:
    """The publisher port in memory: keeps what was published, in order. It fails like the
    bus on what the consumers would refuse (an unencodable event, a record that breaks the
    contract), because it decodes what it is given as a consumer would."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, event: Event) -> None:
        encode(event)
        self.events.append(event)

    async def publish_record(self, record: KafkaRecord) -> None:
        event = decode(record.headers, record.value)
        if event.topic != record.topic:
            raise ValueError(f"{event.event_type} record sent to topic {record.topic}")
        self.events.append(event)

    async def publish_many(self, events: list[Event]) -> list[BaseException | None]:
        outcome: list[BaseException | None] = []
        for event in events:
            try:
                await self.publish(event)
                outcome.append(None)
            except Exception as exc:
                outcome.append(exc)
        return outcome

    async def publish_records(self, topic: str, records: list[RawRecord]) -> None:
        for key, value, headers in records:
            await self.publish_record(KafkaRecord(topic, key, value, dict(headers)))

    def of(self, event_cls: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, event_cls)]


class MemoryObjectStore:
    """An in-memory object store: the fake for unit tests (same contract as the adapters);
    counts puts so tests can see that content-addressed writes are not repeated."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts = 0

    async def put(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self.puts += 1
        self.objects[key] = bytes(data)

    async def put_once(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        check_content_address(key, data)
        if key in self.objects:
            same_or_conflict(key, self.objects[key], data)
            return False
        await self.put(key, data, content_type)
        return True

    async def get(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError as exc:
            raise ObjectNotFound(key) from exc

    async def exists(self, key: str) -> bool:
        return key in self.objects

    async def list(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    async def ping(self) -> bool:
        return True


class FakeRegistry:
    """The registry in memory.

    ``versions[(name, version)]`` holds the records, ``champions[name]`` the champion's version
    (None: a model without a champion), ``rollouts[name]`` the live rollout. ``down = True`` makes
    every read raise ``RegistryUnavailable`` (and ``ping`` answer False); ``calls`` lists the
    reads, e.g. ``"models"``, ``"champion:churn"``, ``"version:churn:2"``.
    """

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], VersionView] = {}
        self.champions: dict[str, int | None] = {}
        self.rollouts: dict[str, RolloutView] = {}
        self.policies: dict[str, PolicyView] = {}
        self.down = False
        self.calls: list[str] = []

    # -- arranging ------------------------------------------------------------------------------

    def put(self, view: VersionView, *, champion: bool = False) -> VersionView:
        """Record a version (replacing one with the same number); ``champion`` also points the
        model's champion at it."""
        self.versions[(view.model_name, view.version)] = view
        self.champions.setdefault(view.model_name, None)
        if champion:
            self.champions[view.model_name] = view.version
        return view

    def add_model(self, name: str) -> None:
        """A model the registry knows, with no champion (yet)."""
        self.champions.setdefault(name, None)

    # -- the Registry port ----------------------------------------------------------------------

    async def models(self) -> list[ModelView]:
        self._check("models")
        return [self._model_view(name) for name in self._names()]

    async def model_names(self) -> list[str]:
        self._check("models")
        return self._names()

    async def model(self, name: str) -> ModelView | None:
        self._check(f"model:{name}")
        return self._model_view(name) if name in self._names() else None

    async def champion(self, name: str) -> VersionView | None:
        self._check(f"champion:{name}")
        version = self.champions.get(name)
        return None if version is None else self.versions.get((name, version))

    async def policy(self, name: str) -> PolicyView:
        self._check(f"policy:{name}")
        return self.policies.get(name) or PolicyView(model_name=name, revision=0)

    async def all_policies(self) -> list[PolicyView]:
        self._check("policies")
        return [self.policies[name] for name in sorted(self.policies)]

    def set_policy(self, name: str, policy: ModelPolicyDoc | dict) -> PolicyView:
        """Store the next revision of ``name``'s policy (as a ``PUT`` would)."""
        doc = ModelPolicyDoc.model_validate(policy)
        revision = (self.policies[name].revision if name in self.policies else 0) + 1
        self.policies[name] = PolicyView(model_name=name, revision=revision, policy=doc)
        return self.policies[name]

    async def rollout(self, name: str) -> RolloutView | None:
        self._check(f"rollout:{name}")
        return self.rollouts.get(name)

    async def version(self, name: str, version: int) -> VersionView | None:
        self._check(f"version:{name}:{version}")
        return self.versions.get((name, version))

    async def ping(self) -> bool:
        return not self.down

    # -- internals ------------------------------------------------------------------------------

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.down:
            raise RegistryUnavailable("fake registry is down")

    def _names(self) -> list[str]:
        return sorted({*self.champions, *(name for name, _ in self.versions), *self.rollouts})

    def _model_view(self, name: str) -> ModelView:
        numbers = [v for (n, v) in self.versions if n == name]
        return ModelView(
            name=name,
            aliases=AliasesView(model_name=name, champion=self.champions.get(name)),
            rollout=self.rollouts.get(name),
            latest_version=max(numbers, default=None),
            version_count=len(numbers),
        )


class MemoryOutbox:
    """The outbox of in-memory repositories: records wait in a list."""

    def __init__(self) -> None:
        self.waiting: list[Pending] = []

    def add(self, events: Iterable[Event], doc_id: Any = None) -> None:
        for event_id, seq, record in stamped(events):
            self.waiting.append(Pending(doc_id, event_id, seq, seq, record))

    async def pending(self, limit: int) -> list[Pending]:
        return self.waiting[:limit]

    async def published(self, items: Sequence[Pending]) -> None:
        done = {id(p) for p in items}
        self.waiting = [p for p in self.waiting if id(p) not in done]


class InlineRelay(Relay):
    """``notify`` publishes at once, so a test sees the events right after the call that
    caused them. Like the real relay it never fails the caller: what could not be published
    stays pending for the next ``drain``."""

    async def notify(self) -> None:
        with contextlib.suppress(Exception):
            await self.drain()
