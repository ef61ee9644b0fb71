"""Training parameters checked before anything is fitted.

A run's params come from the bus and the API, so they are input like any other: every family
reads its knobs through ``bounded`` (a number of the right kind within documented limits, else
a ValueError with the reason, which the trainer turns into a failed run), and no key anywhere
in them may hold a control character (``check_keys``): a NUL in a key trains, then poisons
every store and consumer that keys a document by it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .dataset import name_problem

# kind, lowest, highest: the limits of one knob (documented where a family declares them)
Limit = tuple[type, float, float]


def bounded(params: Mapping[str, Any], key: str, kind: type, low: float, high: float) -> Any:
    """``params[key]`` as ``kind`` within [low, high], else ValueError with the reason (a huge
    forest or 400,000 epochs is refused, not trained)."""
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if kind is int and value != int(value):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{key} must be within [{low}, {high}], got {value!r}")
    return kind(value)


def bounded_all(params: Mapping[str, Any], limits: Mapping[str, Limit]) -> dict[str, Any]:
    """Every knob of ``limits`` read from ``params`` through ``bounded``."""
    return {key: bounded(params, key, *limit) for key, limit in limits.items()}


def check_keys(params: Any, where: str = "params") -> None:
    """ValueError if a key anywhere in ``params`` (nested dicts and lists too) is not a
    printable name: the same rule as a dataset's column names."""
    if isinstance(params, Mapping):
        for key, value in params.items():
            problem = name_problem(key) if isinstance(key, str) else "is not a string"
            if problem:
                raise ValueError(f"a key of {where} {problem}: {key!r}")
            check_keys(value, f"{where}.{key}")
    elif isinstance(params, list | tuple):
        for i, item in enumerate(params):
            check_keys(item, f"{where}[{i}]")
