"""Each model's live policy, as the trainer, the deployer and the monitor read it.

The registry stores and versions the policies (``GET``/``PUT /models/{name}/policy``) and
announces each new revision with ``ModelPolicyChanged``. ``Policies`` reads a model's policy
through the ``Registry`` port and keeps it for ``ttl_s`` (so a replica that did not get the
event still follows within that time); ``invalidate`` (on the event) makes the next read fetch
it at once. When the registry cannot be reached the last policy read stands, or, before any
read succeeded, the empty policy: the service's own settings apply. Nothing here blocks a
decision on the registry being up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from modelbus_contracts.policy import ModelPolicyDoc, PolicyView

from .registry import Registry, RegistryError

log = structlog.get_logger(__name__)


class Policies:
    def __init__(
        self,
        registry: Registry,
        *,
        ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.ttl_s = ttl_s
        self.clock = clock
        self._views: dict[str, PolicyView] = {}
        self._read_at: dict[str, float] = {}

    async def view(self, name: str) -> PolicyView:
        """The model's policy revision as last read (read again when older than ``ttl_s``)."""
        read_at = self._read_at.get(name)
        if read_at is not None and self.clock() - read_at < self.ttl_s:
            return self._views.get(name) or PolicyView(model_name=name, revision=0)
        try:
            view = await self.registry.policy(name)
        except RegistryError as exc:
            kept = self._views.get(name)
            log.warning(
                "policy.read_failed",
                model=name,
                error=str(exc),
                keeping_revision=kept.revision if kept else 0,
            )
            self._read_at[name] = self.clock()  # retried after ttl_s, not on every call
            return kept or PolicyView(model_name=name, revision=0)
        previous = self._views.get(name)
        if previous is None or previous.revision != view.revision:
            log.info("policy.applied", model=name, revision=view.revision)
        self._views[name], self._read_at[name] = view, self.clock()
        return view

    async def get(self, name: str) -> ModelPolicyDoc:
        return (await self.view(name)).policy

    async def load_all(self) -> list[PolicyView]:
        """Every model's policy at once (start-up: what must run before any model is used,
        like a schedule); RegistryError when the registry cannot be reached."""
        views = await self.registry.all_policies()
        now = self.clock()
        for view in views:
            self._views[view.model_name], self._read_at[view.model_name] = view, now
        return views

    def invalidate(self, name: str) -> None:
        """A new revision exists: the next read goes to the registry."""
        self._read_at.pop(name, None)

    def known(self, name: str) -> PolicyView | None:
        """The revision last read, without reading (for a synchronous caller)."""
        return self._views.get(name)


__all__ = ["Policies"]
