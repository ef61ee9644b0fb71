"""Shadow and canary serving of a challenger, as pure logic (no I/O).

The registry says, per model, whether a challenger is exposed (``ModelView.rollout``): in
``shadow`` it scores every request next to the champion and its answers are only logged
(``served_by="shadow"``, ``shadow_of`` = the champion prediction it mirrors); as a ``canary`` it
answers a ``fraction`` of requests (``served_by="canary"``). Canary routing is sticky: a request
key (the request id, or an explicit routing key) hashes to a fixed point in [0, 1), so one key
always lands on the same arm while the fraction grows from step to step (a key in the canary at
10% is still in it at 50%).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np

from modelbus_contracts import RolloutMode
from modelbus_ml.outputs import Outputs

from .domain import Scored, Served, Slots, predict, project

HASH_SPACE = float(2**64)


@dataclass(frozen=True, slots=True)
class Challenger:
    """A loaded challenger and how it meets live traffic."""

    served: Served
    mode: RolloutMode  # shadow or canary
    fraction: float
    champion_version: int | None

    def same_as(self, version: int, sha256: str) -> bool:
        return self.served.same_as(version, sha256)


def routing_point(key: str) -> float:
    """A stable, uniform point in [0, 1) for ``key`` (same key, same point, every process)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / HASH_SPACE


def in_canary(key: str, fraction: float) -> bool:
    """Whether the request with ``key`` goes to the canary at this traffic ``fraction``."""
    return fraction > 0 and routing_point(key) < fraction


def route(
    challenger: Challenger | None,
    key: str | None,
    slots: Slots,
    current: Served,
    X: np.ndarray,
) -> Scored:
    """Who answers: the canary for keys in its fraction, else the champion (with its fallback).
    A canary that raises is answered by the champion and logged ``served_by="fallback"``, so
    the deployer counts it against the canary."""
    if challenger is None or challenger.mode != "canary" or key is None:
        return predict(slots, current, X)
    if not in_canary(key, challenger.fraction):
        return predict(slots, current, X)
    try:
        columns = project(current.feature_names, challenger.served.feature_names)
        outputs = challenger.served.score(X[:, columns])
    except Exception:
        return dataclasses.replace(predict(slots, current, X), served_by="fallback")
    return Scored(challenger.served, outputs, "canary", current.feature_names)


def shadow_scores(
    challenger: Challenger | None, features: tuple[str, ...], X: np.ndarray
) -> Outputs | None:
    """The shadow's outputs for rows the champion answered; None if there is no
    shadow. A shadow that raises raises here: the caller reports it (ScoringFailed with
    ``served_by="shadow"``) and the caller's answer is the champion's all the same."""
    if challenger is None or challenger.mode != "shadow":
        return None
    columns = project(features, challenger.served.feature_names)
    return challenger.served.score(X[:, columns])
