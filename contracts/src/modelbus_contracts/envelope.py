"""The event envelope shared by every modelbus event.

Every event is a frozen pydantic model. The envelope fields (``event_id`` ... ``causation_id``)
travel as CloudEvents Kafka headers (binary content mode); the remaining fields are the event's
``data`` and travel as the JSON message value. ``event_id`` is the idempotency key.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENVELOPE_FIELDS = (
    "event_id",
    "occurred_at",
    "producer",
    "correlation_id",
    "causation_id",
)


# what a model name may be (the Kafka key and subject of every event, a path segment in the APIs)
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
MODEL_NAME_MAX_LENGTH = 200

E = TypeVar("E", bound="Event")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Frozen(BaseModel):
    """Base for every contract model: immutable, strict about unknown fields, no NaN/inf."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


# a control character in a key of free-form JSON: BSON refuses a NUL in a key, so such a key
# would pass here and poison the first store that records it (a trained run, then the registry)
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def reject_non_finite(value: Any) -> Any:
    """Walk free-form JSON (params, feature dicts) and reject NaN/inf anywhere inside, and
    keys with a control character."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("NaN and infinity are not allowed")
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and CONTROL_CHARACTERS.search(key):
                raise ValueError(f"a key holds a control character: {key!r}")
            reject_non_finite(item)
    elif isinstance(value, list | tuple):
        for item in value:
            reject_non_finite(item)
    return value


class Event(Frozen):
    """Envelope + data. Subclasses set ``event_type`` (versioned) and add their data fields.

    ``key`` (the Kafka message key) is the model name: ordering is per model.
    """

    event_type: ClassVar[str]
    topic: ClassVar[str]

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: datetime = Field(default_factory=utcnow)
    producer: str = "unknown"
    correlation_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    causation_id: uuid.UUID | None = None

    model_name: str = Field(
        min_length=1, max_length=MODEL_NAME_MAX_LENGTH, pattern=MODEL_NAME_PATTERN
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "event_type" in cls.__dict__:
            cls.topic = cls.event_type

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @property
    def key(self) -> bytes:
        return self.model_name.encode()

    def data(self) -> dict[str, Any]:
        """The event's data: everything but the envelope, JSON-ready."""
        return self.model_dump(mode="json", exclude=set(ENVELOPE_FIELDS))

    def caused(self, event_cls: type[E], *, producer: str, **data: Any) -> E:
        """Build the next event in a chain: same correlation id, causation = this event."""
        return event_cls(
            producer=producer,
            correlation_id=self.correlation_id,
            causation_id=self.event_id,
            **data,
        )

    @classmethod
    def from_parts(cls, envelope: dict[str, Any], data: dict[str, Any]) -> Self:
        return cls.model_validate({**data, **envelope})


def is_model_name(value: str) -> bool:
    """Whether ``value`` is a model name the contract accepts (as pydantic matches it)."""
    return 1 <= len(value) <= MODEL_NAME_MAX_LENGTH and _MODEL_NAME.fullmatch(value) is not None


_MODEL_NAME = re.compile(MODEL_NAME_PATTERN.removeprefix("^").removesuffix("$"))

__all__ = [
    "ENVELOPE_FIELDS",
    "MODEL_NAME_MAX_LENGTH",
    "MODEL_NAME_PATTERN",
    "Event",
    "Frozen",
    "is_model_name",
    "reject_non_finite",
    "utcnow",
]
