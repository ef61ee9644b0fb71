"""The registry's storage port. One Protocol, two adapters (MongoDB, and the in-memory one in
``testing``), one shared test suite run against both.

A write that changes state others care about takes the ``events`` it causes: they are stored
in the same document write (the outbox) and published by the service's relay."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from modelbus_contracts import Event


class RegistryRepository(Protocol):
    """Models, versions and the append-only audit log. Documents come back without ``_id``."""

    async def init(self) -> None:
        """Create indexes (idempotent)."""

    async def ping(self) -> bool: ...

    # -- models -------------------------------------------------------------------------------

    async def get_model(self, name: str) -> dict[str, Any] | None: ...

    async def list_models(self) -> list[dict[str, Any]]: ...

    async def allocate_version(self, name: str, now: datetime) -> int:
        """Atomically take the model's next version number (creating the model if new)."""

    async def cas_aliases(
        self,
        name: str,
        expected: dict[str, int | None],
        new: dict[str, int | None],
        now: datetime,
        *,
        rollout: dict[str, Any] | None = None,
        events: Sequence[Event] = (),
    ) -> dict[str, Any] | None:
        """Set ``new`` aliases (and ``rollout``, if given) only if every alias in ``expected``
        still has that value, with ``events`` in the same write. Returns the updated model, or
        None when the compare failed (nothing changed, nothing emitted)."""

    async def set_rollout(
        self, name: str, rollout: dict[str, Any], now: datetime, *, events: Sequence[Event] = ()
    ) -> None:
        """Store the model's live rollout state (mode, version, fraction, step)."""

    # -- versions -----------------------------------------------------------------------------

    async def insert_version(self, doc: dict[str, Any], *, events: Sequence[Event] = ()) -> bool:
        """False if (model_name, version), (model_name, run_id) or, for a doc with one,
        (model_name, artifact_sha256) already exists (then nothing is emitted): of two
        concurrent inserts of the same artifact, one wins."""

    async def get_version(self, name: str, version: int) -> dict[str, Any] | None: ...

    async def find_version_by_run(self, name: str, run_id: str) -> dict[str, Any] | None: ...

    async def find_version_by_artifact(self, name: str, sha256: str) -> dict[str, Any] | None:
        """The model's version whose artifact has this sha256 (the oldest, for versions
        registered before artifacts were unique)."""

    async def list_versions(self, name: str) -> list[dict[str, Any]]:
        """Oldest first."""

    async def count_versions(self, name: str) -> int: ...

    async def update_version(self, name: str, version: int, fields: dict[str, Any]) -> None: ...

    async def versions_in_status(self, status: str, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` versions of any model in ``status``, by model name and version."""

    async def sweep_version(
        self,
        name: str,
        version: int,
        reannounced: int,
        fields: dict[str, Any],
        *,
        events: Sequence[Event] = (),
    ) -> bool:
        """Compare-and-set for the sweep of versions left ``registered``: set ``fields`` (with
        ``events`` in the same write) only while the version is still ``registered`` and its
        ``reannounced`` count is ``reannounced`` (``domain.version_doc`` starts it at 0; ``init``
        gives it to versions stored without one). False if it moved (a verdict came, or another
        replica swept it): nothing changed, nothing emitted."""

    # -- policies -----------------------------------------------------------------------------

    async def latest_policy(self, name: str) -> dict[str, Any] | None:
        """The model's newest policy revision, or None."""

    async def insert_policy(self, doc: dict[str, Any], *, events: Sequence[Event] = ()) -> bool:
        """Store a revision; False if (model_name, revision) exists already (then nothing is
        emitted): two writers of the same revision, one wins."""

    async def list_policies(self, name: str, limit: int) -> list[dict[str, Any]]:
        """Newest revision first."""

    async def latest_policies(self) -> list[dict[str, Any]]:
        """The newest revision of every model's policy, by model name."""

    # -- audit --------------------------------------------------------------------------------

    async def append_audit(self, record: dict[str, Any]) -> int:
        """Insert a record (never update); returns its ``seq``, increasing with every insert."""

    async def list_audit(self, model_name: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first."""
