"""The deployer's ports: where decisions are kept and where models and hold-outs come from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelbus_contracts import ArtifactRef, DatasetRef, Event, Signature
from modelbus_ml import Dataset, ServableModel


class LoadError(Exception):
    """An artifact or dataset is missing, fails its sha256, or cannot be parsed.

    A permanent problem with the input: the deployer rejects the model with this reason.
    """

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


@dataclass(frozen=True)
class HoldoutSpec:
    """How a hold-out is read for one model: its task, its classes in the order of its
    probabilities (multiclass) and the kind of each feature it names (others inferred)."""

    task: str = "binary"
    classes: tuple[str, ...] = ()
    kinds: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, signature: Signature | None, model: Any) -> HoldoutSpec:
        """From the registry record's signature; without one (an older record), from the
        model itself (its task and classes), every feature's kind inferred."""
        if signature is not None:
            kinds = {f.name: f.kind for f in signature.features}
            return cls(signature.task, tuple(signature.classes), kinds)
        task = str(getattr(model, "task", "binary"))
        return cls(task, tuple(getattr(model, "classes", ()) or ()))


class ModelSource(Protocol):
    async def load_model(self, ref: ArtifactRef, model_name: str) -> ServableModel:
        """``model_name``'s artifact, verified (its signature, its sha256, a pickle only if
        the model's policy allows it); ``LoadError`` with the reason otherwise."""
        ...

    async def load_dataset(self, ref: DatasetRef, spec: HoldoutSpec | None = None) -> Dataset:
        """The hold-out, its labels read with the ``spec``'s task and classes (so class
        indexes line up with the model's probabilities) and its features with their kinds;
        without a spec, everything inferred."""
        ...

    async def ping(self) -> bool: ...


class DecisionStore(Protocol):
    """One decision document per (model_name, version); the deployer's audit trail. The
    ModelEvaluated (or ModelRollbackRequested) a write causes goes into the same write (the
    outbox) and is published by the service's relay; a document read back says
    ``published`` once nothing of it waits any more."""

    async def init(self) -> None: ...

    async def get(self, model_name: str, version: int) -> dict[str, Any] | None: ...

    async def insert(self, doc: dict[str, Any], *, events: Sequence[Event] = ()) -> bool:
        """Store a new decision with its events; False if one exists already for
        (model_name, version) (then nothing is emitted)."""
        ...

    async def transition(
        self,
        model_name: str,
        version: int,
        stage: int,
        fields: dict[str, Any],
        *,
        events: Sequence[Event] = (),
    ) -> dict[str, Any] | None:
        """Compare-and-set: apply ``fields`` (and emit ``events``) only if the decision is
        still at ``stage``. Returns the updated document, or None (another replica or request
        moved it; nothing emitted)."""
        ...

    async def active(self, model_name: str) -> dict[str, Any] | None:
        """The newest decision of the model in a live stage (shadow, canary, watch), if any."""
        ...

    async def list(self, model_name: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first."""
        ...


StageKey = tuple[str, int, int]  # model_name, version, stage number of the decision


class LiveStatsStore(Protocol):
    """Checkpoints of the live windows, one per (model_name, version, stage number).

    A checkpoint is ``{"rev": int, "window": {...}, "recent_ids": [...]}``; ``rev`` counts the
    writes and makes ``save`` a compare-and-set, so two replicas never overwrite each other's
    counts (the loser merges and saves again).
    """

    async def init(self) -> None: ...

    async def load(self, key: StageKey) -> dict[str, Any] | None: ...

    async def save(self, key: StageKey, rev: int, checkpoint: dict[str, Any]) -> bool:
        """Store ``checkpoint`` as revision ``rev + 1`` only if the stored one is ``rev`` (0:
        nothing stored yet). False if another writer got there first (or it was deleted)."""
        ...

    async def delete(self, key: StageKey) -> None:
        """The stage is decided: its window is no longer needed."""
        ...
