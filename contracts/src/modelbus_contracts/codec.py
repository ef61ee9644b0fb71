"""The fast codec of every event, derived from its pydantic definition.

``data_struct(Event)`` builds a msgspec ``Struct`` of the event's data (everything but the
envelope) from the pydantic model's fields: types, defaults, ``Literal`` enumerations, optional
values, nested contract models (as nested structs that forbid unknown fields), lists, dicts,
UUIDs, datetimes, and the constraints (``ge``/``gt``/``le``/``lt``, ``min_length``/``max_length``,
``pattern``) and ``AfterValidator`` functions of the fields. Nothing here names a field of an
event: what cannot be derived exactly raises ``TypeError`` when the struct is built.

The struct accepts a subset of what pydantic accepts, with the same values; everything else it
refuses, and the callers (``columns``) hand those records to pydantic, which accepts them
(its lax coercions, such as ``"1.5"`` -> 1.5) or rejects them with the contract's reason. The
differential tests in ``contracts/tests`` hold the two to that. Where msgspec is more lenient
than pydantic the derived types narrow it:

* numbers: ints outside the 64-bit range orjson keeps as ints, and floats that are not finite
  (msgspec takes NaN from Python objects) are refused by bounds on every number;
* regular expressions: a final ``$`` becomes ``\\Z`` (Python's ``$`` also matches before a
  trailing line break, pydantic's does not);
* datetimes: read as RFC 3339 strings with at most six fractional digits (msgspec rounds a
  seventh, pydantic truncates) and then parsed;
* free-form JSON (``Any``): refused when it holds ints beyond 64 bits (orjson, which pydantic's
  path parses with, makes floats of them) or nests deeper than ``MAX_JSON_DEPTH``.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
import types
import typing
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, Union

import annotated_types
import msgspec
from pydantic import AfterValidator, BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .envelope import ENVELOPE_FIELDS, Event

# ints the fast path takes: int64 (orjson, which pydantic's path parses with, keeps up to
# 2**64 - 1 as ints and makes floats of the rest; msgspec bounds must fit an int64)
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
FLOAT_MAX = sys.float_info.max
MAX_JSON_DEPTH = 256  # deeper free-form JSON goes to pydantic
# RFC 3339 date-time as pydantic reads it exactly (fraction up to microseconds); [0-9], not \d:
# in a str pattern \d matches the digits of every script
DATETIME_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
    r"(Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?\Z"
)

Convert = Callable[[Any], Any]


def data_fields(event_cls: type[Event]) -> tuple[str, ...]:
    """The event's data fields (model order): what travels as the JSON value."""
    return tuple(name for name in event_cls.model_fields if name not in ENVELOPE_FIELDS)


@functools.cache
def data_struct(event_cls: type[Event]) -> type[msgspec.Struct]:
    """The msgspec struct of ``event_cls``'s data. ``model_name`` may be absent (``UNSET``):
    the CloudEvents subject supplies it then."""
    _check_model(event_cls, skip=ENVELOPE_FIELDS)
    fields = data_fields(event_cls)
    struct = _struct(f"{event_cls.__name__}Data", event_cls, fields, optional=("model_name",))
    return struct


@functools.cache
def data_decoder(event_cls: type[Event]) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(data_struct(event_cls))


@functools.cache
def batch_decoder(event_cls: type[Event]) -> tuple[msgspec.json.Decoder[Any], dict[str, Any]]:
    """A decoder for batches: ``data_struct`` without the patterns of the top-level fields,
    and those fields' exact types, to check each distinct value of a column once (a model
    name, say, is the same in most records of a batch)."""
    fields = data_fields(event_cls)
    loose = _struct(
        f"{event_cls.__name__}BatchData",
        event_cls,
        fields,
        optional=("model_name",),
        patterns_apart=True,
    )
    strict = {f.name: f.type for f in msgspec.structs.fields(data_struct(event_cls))}
    apart = {
        f.name: strict[f.name] for f in msgspec.structs.fields(loose) if f.type != strict[f.name]
    }
    return msgspec.json.Decoder(loose), apart


@functools.cache
def to_values(event_cls: type[Event]) -> dict[str, Convert | None]:
    """Per data field: how a decoded struct value becomes the event's value (nested structs
    become the contract models, built without validating again); None where it is the same."""
    return {
        name: _to_model(event_cls.model_fields[name].annotation) for name in data_fields(event_cls)
    }


# -- deriving ----------------------------------------------------------------------------------


def _check_model(model: type[BaseModel], skip: tuple[str, ...] = ()) -> None:
    """Refuse what the derivation does not translate: validators other than ``AfterValidator``
    in the fields' annotations, aliases, extra fields allowed, NaN/inf allowed."""
    config = model.model_config
    if config.get("extra") not in ("forbid", "ignore", None):
        raise TypeError(f"{model.__name__}: extra={config.get('extra')!r} is not derivable")
    if config.get("allow_inf_nan", True) or config.get("strict"):
        raise TypeError(f"{model.__name__}: derivable models reject NaN/inf and are lax")
    decorators = model.__pydantic_decorators__
    for kind in ("validators", "root_validators", "model_validators", "field_serializers"):
        if getattr(decorators, kind):
            raise TypeError(f"{model.__name__}: {kind} are not derivable")
    for decorator in decorators.field_validators.values():
        if set(decorator.info.fields) - set(skip):
            raise TypeError(f"{model.__name__}: field validators are not derivable")
    for name, field in model.model_fields.items():
        if name not in skip and (field.alias not in (None, name) or field.validation_alias):
            raise TypeError(f"{model.__name__}.{name}: aliases are not derivable")


def _struct(
    name: str,
    model: type[BaseModel],
    fields: tuple[str, ...],
    optional: tuple[str, ...] = (),
    patterns_apart: bool = False,
) -> type[msgspec.Struct]:
    specs: list[tuple[str, Any, Any]] = []
    checks: dict[str, Convert] = {}
    for field_name in fields:
        info = model.model_fields[field_name]
        metadata = info.metadata
        if patterns_apart:
            metadata = [m for m in metadata if not _is_pattern(m)]
        annotation, check = _derive(info.annotation, metadata)
        if check is not None:
            checks[field_name] = check
        if field_name in optional:
            specs.append((field_name, annotation | msgspec.UnsetType, msgspec.UNSET))
        else:
            specs.append((field_name, annotation, _default(info)))
    namespace = {"__post_init__": _post_init(checks)} if checks else None
    extra = model.model_config.get("extra", "ignore")
    return msgspec.defstruct(
        name,
        specs,
        kw_only=True,
        forbid_unknown_fields=extra == "forbid",
        gc=False,  # decoded data holds no cycles
        namespace=namespace,
        module=__name__,
    )


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return msgspec.field(default_factory=info.default_factory)  # type: ignore[arg-type]
    if info.default is PydanticUndefined:
        return msgspec.NODEFAULT
    return info.default


def _post_init(checks: dict[str, Convert]) -> Callable[[Any], None]:
    items = tuple(checks.items())

    def __post_init__(self: Any) -> None:
        for name, check in items:
            setattr(self, name, check(getattr(self, name)))

    return __post_init__


def _derive(annotation: Any, metadata: list[Any] = ()) -> tuple[Any, Convert | None]:  # type: ignore[assignment]
    """The msgspec type of a pydantic annotation with its field metadata, and the check (or
    conversion) to run on the decoded value, if any."""
    return _derive_annotated(annotation, metadata, {})


def _derive_annotated(
    inner: Any, metadata: Any, constraints: dict[str, Any]
) -> tuple[Any, Convert | None]:
    """``inner`` under ``metadata`` (constraints merged over the enclosing ones, validators run
    after its own check)."""
    merged = dict(constraints)
    validators: list[Convert] = []
    for item in metadata:
        _collect(item, merged, validators)
    ms_type, check = _derive_type(inner, merged)
    for validator in validators:
        check = _then(check, validator)
    return ms_type, check


def _is_pattern(item: Any) -> bool:
    return type(item).__name__ == "_PydanticGeneralMetadata" and "pattern" in vars(item)


def _collect(item: Any, constraints: dict[str, Any], validators: list[Convert]) -> None:
    bare = type(item) is FieldInfo and item.annotation in (None, type(None))
    if bare and not item.json_schema_extra:
        for inner in item.metadata:  # Annotated[str, Field(max_length=...)]: its constraints
            _collect(inner, constraints, validators)
        return
    if isinstance(item, AfterValidator):
        params = inspect.signature(item.func).parameters
        if len(params) != 1:
            raise TypeError(f"validator {item.func!r} takes more than the value")
        validators.append(item.func)  # type: ignore[arg-type]
        return
    names = ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern")
    known = (
        annotated_types.Ge,
        annotated_types.Gt,
        annotated_types.Le,
        annotated_types.Lt,
        annotated_types.MinLen,
        annotated_types.MaxLen,
    )
    if isinstance(item, known):
        for name in names:
            if hasattr(item, name):
                constraints[name] = getattr(item, name)
        return
    if type(item).__name__ == "_PydanticGeneralMetadata":
        for name, value in vars(item).items():
            if name != "pattern" or not isinstance(value, str):
                raise TypeError(f"metadata {name}={value!r} is not derivable")
            constraints[name] = value
        return
    raise TypeError(f"metadata {item!r} is not derivable")


def _derive_type(tp: Any, constraints: dict[str, Any]) -> tuple[Any, Convert | None]:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        inner, *metadata = typing.get_args(tp)
        return _derive_annotated(inner, metadata, constraints)
    if origin in (Union, types.UnionType):
        return _derive_union(typing.get_args(tp), constraints)
    if origin is Literal:
        _no_constraints(tp, constraints)
        return tp, None
    if origin is list:
        (item,) = typing.get_args(tp)
        item_type, item_check = _derive_type(item, {})
        meta = _meta(constraints, ("min_length", "max_length"), tp)
        check = None if item_check is None else _each(item_check)
        return _annotated(list[item_type], meta), check  # type: ignore[valid-type]
    if origin is dict:
        key, value = typing.get_args(tp)
        key_type, key_check = _derive_type(key, {})
        value_type, value_check = _derive_type(value, {})
        if key_check is not None:
            raise TypeError(f"{tp}: keys that need a check are not derivable")
        meta = _meta(constraints, ("min_length", "max_length"), tp)
        check = None if value_check is None else _each_value(value_check)
        return _annotated(dict[key_type, value_type], meta), check  # type: ignore[valid-type]
    if tp is str:
        meta = _meta(constraints, ("min_length", "max_length", "pattern"), tp)
        if "pattern" in meta:
            meta["pattern"] = _python_pattern(meta["pattern"])
        return _annotated(str, meta), None
    if tp is bool:
        _no_constraints(tp, constraints)
        return bool, None
    if tp is int:
        meta = _meta(constraints, ("ge", "gt", "le", "lt"), tp)
        return _annotated(int, _bounded(meta, INT_MIN, INT_MAX)), None
    if tp is float:
        meta = _meta(constraints, ("ge", "gt", "le", "lt"), tp)
        return _annotated(float, _bounded(meta, -FLOAT_MAX, FLOAT_MAX)), None
    if tp is uuid.UUID:
        _no_constraints(tp, constraints)
        return uuid.UUID, None
    if tp is datetime:
        _no_constraints(tp, constraints)
        return _annotated(str, {"pattern": DATETIME_PATTERN}), datetime.fromisoformat
    if tp is Any:
        _no_constraints(tp, constraints)
        return Any, _plain_json
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        _no_constraints(tp, constraints)
        return _nested(tp), None
    raise TypeError(f"{tp!r} is not derivable")


def _derive_union(args: tuple[Any, ...], constraints: dict[str, Any]) -> tuple[Any, Convert | None]:
    """``X | None`` (constraints apply to ``X``, as pydantic applies them), or a union of
    scalars (``int | float | str``, each with its own constraints, no checks): msgspec picks
    the member by the JSON type as pydantic's smart union does."""
    members = [a for a in args if a is not type(None)]
    nullable = len(members) != len(args)
    if len(members) == 1:
        ms_type, check = _derive_type(members[0], constraints)
        if not nullable:
            return ms_type, check
        return ms_type | None, None if check is None else _unless_none(check)
    _no_constraints(args, constraints)
    derived = []
    for member in members:
        base = typing.get_args(member)[0] if typing.get_origin(member) is Annotated else member
        if base not in _SCALARS:
            raise TypeError(f"only unions of {_SCALARS} are derivable, not {args}")
        ms_type, check = _derive_type(member, {})
        if check is not None:
            raise TypeError(f"{member!r}: union members that need a check are not derivable")
        derived.append(ms_type)
    if nullable:
        derived.append(type(None))
    return Union[tuple(derived)], None  # noqa: UP007 (a runtime union of Annotated members)


_SCALARS = (int, float, str)


@functools.cache
def _nested(model: type[BaseModel]) -> type[msgspec.Struct]:
    _check_model(model)
    return _struct(model.__name__, model, tuple(model.model_fields))


def _meta(constraints: dict[str, Any], allowed: tuple[str, ...], tp: Any) -> dict[str, Any]:
    unknown = set(constraints) - set(allowed)
    if unknown:
        raise TypeError(f"{tp!r}: constraints {sorted(unknown)} are not derivable")
    return dict(constraints)


def _no_constraints(tp: Any, constraints: dict[str, Any]) -> None:
    _meta(constraints, (), tp)


def _bounded(meta: dict[str, Any], low: float, high: float) -> dict[str, Any]:
    """Bounds on both sides: the type's range where the field sets none (NaN fails any)."""
    if "ge" not in meta and "gt" not in meta:
        meta["ge"] = low
    if "le" not in meta and "lt" not in meta:
        meta["le"] = high
    return meta


def _annotated(tp: Any, meta: dict[str, Any]) -> Any:
    return Annotated[tp, msgspec.Meta(**meta)] if meta else tp


def _python_pattern(pattern: str) -> str:
    """pydantic's (Rust) semantics in Python's ``re``: ``$`` at the end matches only at the end.
    What may differ between the two engines otherwise (``$`` elsewhere, the Unicode classes
    ``\\d``, ``\\w``, ``\\s``, ``\\b``) is refused."""
    body = pattern[:-1] if pattern.endswith("$") and not pattern.endswith("\\$") else pattern
    if re.search(r"(?<!\\)\$|\\[dDwWsSbB]", body):
        raise TypeError(f"pattern {pattern!r} is not derivable exactly")
    if body is not pattern:
        pattern = body + r"\Z"
    re.compile(pattern)
    return pattern


# -- checks run on decoded values (in the struct's __post_init__) ------------------------------


def _then(first: Convert | None, second: Convert) -> Convert:
    if first is None:
        return second
    return lambda value: second(first(value))


def _each(check: Convert) -> Convert:
    return lambda values: [check(v) for v in values]


def _each_value(check: Convert) -> Convert:
    return lambda values: {k: check(v) for k, v in values.items()}


def _unless_none(check: Convert) -> Convert:
    return lambda value: None if value is None else check(value)


def _plain_json(value: Any, depth: int = 0) -> Any:
    """Free-form JSON as orjson reads it: no int beyond 64 bits, not too deep."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError("JSON nested too deeply for the fast path")
    if type(value) is int:
        if not INT_MIN <= value <= INT_MAX:
            raise ValueError("int beyond 64 bits")
    elif type(value) is dict:
        for item in value.values():
            _plain_json(item, depth + 1)
    elif type(value) is list:
        for item in value:
            _plain_json(item, depth + 1)
    return value


# -- struct values -> the event's values --------------------------------------------------------


def _to_model(tp: Any) -> Convert | None:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _to_model(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) > 1:
            return None  # a union of scalars
        inner = _to_model(members[0])
        return None if inner is None else _unless_none(inner)
    if origin is list:
        inner = _to_model(typing.get_args(tp)[0])
        return None if inner is None else _each(inner)
    if origin is dict:
        inner = _to_model(typing.get_args(tp)[1])
        return None if inner is None else _each_value(inner)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return _model_builder(tp)
    return None


@functools.cache
def _model_builder(model: type[BaseModel]) -> Convert:
    converters = tuple(
        (name, _to_model(field.annotation)) for name, field in model.model_fields.items()
    )

    def build(struct: Any) -> BaseModel:
        values = {
            name: getattr(struct, name) if convert is None else convert(getattr(struct, name))
            for name, convert in converters
        }
        return model.model_construct(**values)

    return build


__all__ = [
    "DATETIME_PATTERN",
    "batch_decoder",
    "data_decoder",
    "data_fields",
    "data_struct",
    "to_values",
]
