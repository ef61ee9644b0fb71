"""A model's inputs checked against its signature: the one set of rules every entry point
shares (the scorer's HTTP and stream requests, the batch scorer's file rows).

- a ``number`` feature takes a number (not a bool); null only if ``nullable`` (-> NaN);
- a ``category`` feature takes a string of at most ``MAX_CATEGORY_LENGTH`` characters; null
  only if ``nullable`` (-> None).

Anything else is a ``BadValue`` with a reason code (``not_a_number``, ``non_finite``,
``not_a_category``, ``category_too_long``, ``null_not_allowed``); the caller says where (the
feature and the row). A file's cells are text: ``from_text`` turns one into the value it
stands for (an empty cell is null, a number feature's cell is read as a number), then the same
``check_value`` rules apply.

This is the general path. A model whose features are all numbers that may not be missing is
served by the scorer's float fast path, which follows the same rules on whole float matrices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dataset import CATEGORY, MAX_CATEGORY_LENGTH, NUMBER

NOT_A_NUMBER = "not_a_number"
NON_FINITE = "non_finite"
NOT_A_CATEGORY = "not_a_category"
CATEGORY_TOO_LONG = "category_too_long"
NULL_NOT_ALLOWED = "null_not_allowed"
REASONS = (NOT_A_NUMBER, NON_FINITE, NOT_A_CATEGORY, CATEGORY_TOO_LONG, NULL_NOT_ALLOWED)


class BadValue(ValueError):
    """One value the signature refuses: ``reason`` (a code), ``detail`` (what was wrong)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class InputSpec:
    """Per feature, in the model's order: its name, kind and whether it may be null."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    nullable: tuple[bool, ...]

    @classmethod
    def of(cls, served: Any) -> InputSpec:
        """From a ``Served`` (or anything with ``feature_names``, ``kinds``, ``nullable``;
        missing kinds: numbers, missing nullability: not nullable)."""
        names = tuple(served.feature_names)
        kinds = tuple(getattr(served, "kinds", ()) or (NUMBER,) * len(names))
        nullable = tuple(getattr(served, "nullable", ()) or (False,) * len(names))
        return cls(names, kinds, nullable)

    @property
    def numbers_only(self) -> bool:
        """Every feature a number: the matrix is float64 (NaN where nullable and missing)."""
        return all(k == NUMBER for k in self.kinds)

    def features(self) -> list[tuple[str, str, bool]]:
        """(name, kind, nullable) per feature, in order."""
        return list(zip(self.names, self.kinds, self.nullable, strict=True))

    def empty(self, rows: int) -> np.ndarray:
        """A matrix to fill column by column (float64 for numbers only, else object)."""
        return np.empty((rows, len(self.names)), np.float64 if self.numbers_only else object)


def check_value(value: Any, kind: str, nullable: bool) -> float | str | None:
    """``value`` as the model takes it (a float, NaN, a string or None), or ``BadValue``."""
    t = type(value)
    if kind == NUMBER:
        if t is float:
            if value - value == 0.0:  # finite (inf - inf and NaN - NaN are NaN)
                return value  # type: ignore[no-any-return]
            raise BadValue(NON_FINITE, "NaN or infinite values are not allowed")
        if t is int:
            try:
                return float(value)
            except OverflowError:
                raise BadValue(NOT_A_NUMBER, f"{value} is too large for a number") from None
        if value is None:
            if nullable:
                return math.nan
            raise BadValue(NULL_NOT_ALLOWED, "null, and the feature is not nullable")
        raise BadValue(NOT_A_NUMBER, f"{_shown(value)} is not a number")
    if kind == CATEGORY:
        if t is str:
            if len(value) <= MAX_CATEGORY_LENGTH:
                return value  # type: ignore[no-any-return]
            raise BadValue(CATEGORY_TOO_LONG, f"longer than {MAX_CATEGORY_LENGTH} characters")
        if value is None:
            if nullable:
                return None
            raise BadValue(NULL_NOT_ALLOWED, "null, and the feature is not nullable")
        raise BadValue(NOT_A_CATEGORY, f"{_shown(value)} is not a category (a string)")
    raise ValueError(f"unknown feature kind {kind!r}")


def from_text(cell: Any, kind: str) -> Any:
    """A file cell as the value it stands for: empty or null is null; a number feature's text
    is read as a number (text that is not one stays text, so ``check_value`` refuses it); a
    typed cell (Parquet) is itself."""
    if cell is None:
        return None
    if type(cell) is not str:
        return cell
    if kind == NUMBER:
        text = cell.strip()
        if not text:
            return None
        try:
            return float(text)
        except ValueError:
            return cell
    return cell if cell else None


def check_column(values: Sequence[Any], kind: str, nullable: bool, feature: str) -> list[Any]:
    """A whole column checked; a ``BadValue``'s detail names the feature and the row:
    ``feature 'city', row 3: 7 is not a category (a string)``."""
    out = []
    for i, value in enumerate(values):
        try:
            out.append(check_value(value, kind, nullable))
        except BadValue as exc:
            raise BadValue(exc.reason, f"feature {feature!r}, row {i}: {exc.detail}") from None
    return out


def few(names: Sequence[Any], limit: int = 5) -> str:
    """At most ``limit`` names (each cut short), then how many more: an error that lists what
    a request got wrong stays small however large the request was."""
    shown = [_shown(str(name)) for name in list(names)[:limit]]
    more = len(names) - len(shown)
    return f"[{', '.join(shown)}{f', ... and {more} more' if more > 0 else ''}]"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = [
    "REASONS",
    "BadValue",
    "InputSpec",
    "check_column",
    "check_value",
    "few",
    "from_text",
]
