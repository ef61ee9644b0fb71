"""Batches of one event type as columns, and the batch decoder that fills them from Kafka records.

``Columns[PredictionMade]`` is a dataclass built from the event's fields: one list per field,
in the model's order, holding the event's values (ids as their canonical strings). The
high-volume consumers (the monitor) take their telemetry this way: no pydantic model per event.

``decode_batch(PredictionMade, raws)`` gives the columns of the records that satisfy the
contract, the accepted records in order and the rejected ones with the contract's reason:
exactly what ``cloudevents.decode`` (pydantic) gives record by record, which is its test
oracle. The envelope is checked per batch (``headers``), the data by the event's derived
msgspec struct (``codec``); a batch with anything unusual is done record by record, and a
record the fast path does not take goes through pydantic, which accepts it (a coercion) or
rejects it with its reason.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from operator import attrgetter
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, Self, TypeVar

import msgspec

from .cloudevents import ContractError, decode
from .codec import batch_decoder, data_decoder, data_fields, data_struct, to_values
from .envelope import ENVELOPE_FIELDS, Event
from .headers import Envelope, envelope_columns, record_envelope

E = TypeVar("E", bound=Event)
_IDS = ("event_id", "correlation_id")
_UNCHECKED = frozenset({None, msgspec.UNSET})
_value_of = attrgetter("value")


class Columns(Generic[E]):
    """A batch of events of one type, one list per field of the event (``Columns[X]`` is the
    dataclass for event class ``X``, built on first use)."""

    __slots__ = ()
    event: ClassVar[type[Event]]
    names: ClassVar[tuple[str, ...]]
    _getters: ClassVar[tuple[Any, ...]]

    if TYPE_CHECKING:

        def __init__(self, *columns: list[Any], **named: list[Any]) -> None: ...

        def __getattr__(self, name: str) -> list[Any]: ...

    def __class_getitem__(cls, item: Any) -> Any:
        if isinstance(item, type) and issubclass(item, Event):
            return columns_class(item)
        return super().__class_getitem__(item)  # type: ignore[misc]

    def __len__(self) -> int:
        return len(getattr(self, self.names[0]))

    @classmethod
    def of(cls, events: Iterable[Any]) -> Self:
        """The columns of these events, in order."""
        events = list(events)
        return cls(*(list(map(get, events)) for get in cls._getters))

    def by_model(self) -> dict[str, Self]:
        """One batch per model, in the order the models first appear, rows in order."""
        names = self.model_name
        if len(set(names)) <= 1:
            return {names[0]: self} if names else {}
        rows: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            rows.setdefault(name, []).append(i)
        columns = [getattr(self, name) for name in self.names]
        return {
            name: type(self)(*([column[i] for i in picked] for column in columns))
            for name, picked in rows.items()
        }

    def column(self, name: str) -> list[Any]:
        return getattr(self, name)  # type: ignore[no-any-return]


@functools.cache
def columns_class(event_cls: type[E]) -> type[Columns[E]]:
    """The ``Columns`` dataclass of ``event_cls``: its fields, model order, each a list."""
    names = tuple(event_cls.model_fields)
    cls = dataclasses.make_dataclass(
        f"{event_cls.__name__}Columns",
        [(name, list, dataclasses.field(default_factory=list)) for name in names],
        bases=(Columns,),
        slots=True,
    )
    cls.__module__ = __name__
    cls.event = event_cls
    cls.names = names
    cls._getters = tuple(_getter(name) for name in names)
    cls.__doc__ = f"A batch of {event_cls.__name__} as columns: {', '.join(names)}."
    return cls  # type: ignore[return-value]


def _getter(name: str) -> Any:
    get = attrgetter(name)
    if name in _IDS:
        return lambda event: str(get(event))
    if name == "causation_id":
        return lambda event: None if event.causation_id is None else str(event.causation_id)
    return get


# -- decoding ------------------------------------------------------------------------------------


Rejected = list[tuple[Any, str]]


class Decoded(NamedTuple, Generic[E]):
    """A decoded batch: the columns, the accepted records in order, the rejected ones with the
    contract's reason."""

    columns: Columns[E]
    accepted: list[Any]
    rejected: Rejected


def decode_batch(event_cls: type[E], raws: Sequence[Any]) -> Decoded[E]:
    """Kafka records of ``event_cls``'s topic (objects with ``headers`` and ``value``) ->
    columns, accepted and rejected records: what ``decode`` gives record by record."""
    with _no_cyclic_gc():
        return _decoding(event_cls).decode(raws)


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """The cyclic garbage collector paused while a batch is decoded: the thousands of dicts and
    lists it builds cannot form cycles, and the collections they would trigger traverse the
    consumer's long-lived state. Collection resumes right after."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Decoding(Generic[E]):
    """Everything the batch decoder of one event class needs, derived once."""

    def __init__(self, event_cls: type[E]) -> None:
        self.event_cls = event_cls
        self.event_type = event_cls.event_type.encode()
        self.columns = columns_class(event_cls)
        self.decoder = data_decoder(event_cls)
        self.batch_decoder, self.distinct_checks = batch_decoder(event_cls)
        self.fields = data_fields(event_cls)
        self.getters = tuple(map(attrgetter, self.fields))
        self.to_values = to_values(event_cls)
        self.name_type = msgspec.structs.fields(data_struct(event_cls))[
            self.fields.index("model_name")
        ].type

    def decode(self, raws: Sequence[Any]) -> Decoded[E]:
        envelope = envelope_columns(raws, self.event_type)
        if envelope is not None:
            try:
                structs = list(map(self.batch_decoder.decode, map(_value_of, raws)))
            except Exception:  # a record the struct refuses: record by record
                structs = None
            if structs is not None:
                columns = self._columns(envelope, structs)
                if columns is not None:
                    return Decoded(columns, list(raws), [])
        return self.decode_by_record(raws)

    def _columns(self, envelope: Envelope, structs: list[Any]) -> Columns[E] | None:
        data: dict[str, list[Any]] = {}
        for name, get in zip(self.fields, self.getters, strict=True):
            column = list(map(get, structs))
            convert = self.to_values[name]
            data[name] = column if convert is None else list(map(convert, column))
        for name, exact in self.distinct_checks.items():
            try:
                for value in set(data[name]) - _UNCHECKED:
                    msgspec.convert(value, exact)
            except msgspec.ValidationError:
                return None
        names = data["model_name"]
        if msgspec.UNSET in names:
            subjects = [
                self._subject(s) if n is msgspec.UNSET else n
                for n, s in zip(names, envelope.subject, strict=True)
            ]
            if None in subjects:
                return None
            data["model_name"] = subjects
        return self.columns(
            event_id=envelope.event_id,
            occurred_at=envelope.occurred_at,
            producer=envelope.producer,
            correlation_id=envelope.correlation_id,
            causation_id=envelope.causation_id,
            **data,
        )

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one instance per event class, kept anyway
    def _subject(self, subject: Any) -> str | None:
        """The model name a subject header supplies, if the contract accepts it as one."""
        if type(subject) is not bytes or not subject:
            return None
        try:
            return msgspec.convert(subject.decode(), self.name_type)  # type: ignore[no-any-return]
        except (UnicodeDecodeError, msgspec.ValidationError):
            return None

    def decode_by_record(self, raws: Sequence[Any]) -> Decoded[E]:
        """The same, record by record: the fast path where it applies, else pydantic."""
        rows: list[tuple[Any, ...]] = []
        accepted: list[Any] = []
        rejected: Rejected = []
        for raw in raws:
            row = self._fast_row(raw)
            if row is None:
                try:
                    event = decode(raw.headers, raw.value, expected=self.event_cls)
                except ContractError as exc:
                    rejected.append((raw, str(exc)))
                    continue
                row = tuple(get(event) for get in self.columns._getters)
            rows.append(row)
            accepted.append(raw)
        if not rows:
            return Decoded(self.columns(), accepted, rejected)
        return Decoded(self.columns(*map(list, zip(*rows, strict=True))), accepted, rejected)

    def _fast_row(self, raw: Any) -> tuple[Any, ...] | None:
        envelope = record_envelope(raw.headers, self.event_type)
        if envelope is None:
            return None
        try:
            struct = self.decoder.decode(raw.value)
        except Exception:
            return None
        values = []
        for name, get in zip(self.fields, self.getters, strict=True):
            value = get(struct)
            convert = self.to_values[name]
            values.append(value if convert is None else convert(value))
        if values[0] is msgspec.UNSET:
            values[0] = self._subject(envelope[-1])
            if values[0] is None:
                return None
        return (*envelope[:-1], *values)


@functools.cache
def _decoding(event_cls: type[E]) -> _Decoding[E]:
    decoding = _Decoding(event_cls)
    if decoding.fields[0] != "model_name" or decoding.columns.names[: len(ENVELOPE_FIELDS)] != (
        ENVELOPE_FIELDS
    ):
        raise TypeError(f"{event_cls.__name__}: envelope fields, then model_name, then the data")
    return decoding


def decode_by_record(event_cls: type[E], raws: Sequence[Any]) -> Decoded[E]:
    """``decode_batch`` without the batch path (what it falls back to)."""
    return _decoding(event_cls).decode_by_record(raws)


__all__ = ["Columns", "Decoded", "columns_class", "decode_batch", "decode_by_record"]
