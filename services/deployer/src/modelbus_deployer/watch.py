"""Live telemetry -> per-stage windows, in memory and without I/O.

``LiveTracker`` attributes each PredictionMade, LabelObserved, ModelLoadFailed and ScoringFailed
to the live stage of its model (``ActiveStage``: a shadow, a canary step, or the watch after a
promotion):

- shadow: ``served_by=shadow`` of the challenger is the arm, the champion's predictions are the
  baseline, and a shadow prediction is compared with the champion prediction it mirrors
  (``shadow_of``) for the agreement rate;
- canary: ``served_by=canary`` of the challenger is the arm, the champion the baseline;
- watch: the new champion's ``served_by=champion`` predictions are the arm.

``served_by=fallback`` predictions of the model count against the stage (the model being
exposed raised and the warm previous one answered); a ``ScoringFailed`` with
``served_by=shadow`` of the challenger under shadow is a shadow error. Labels join on prediction
id through a bounded map of recent predictions (shadow predictions through the champion id they
mirror). The windows are checkpointed by ``checkpoints.LiveCheckpoints``; the join maps are not
(a label for a prediction counted before a restart is not joined).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from modelbus_contracts import LabelObserved, ModelLoadFailed, PredictionMade, ScoringFailed

from .rollout import LiveWindow, Stage

WindowKey = tuple[str, int, int]  # model, version, stage number


@dataclass(frozen=True)
class ActiveStage:
    """The live stage one model is in, as the decision store says."""

    model_name: str
    version: int
    stage_no: int
    stage: Stage
    champion_version: int | None
    holdout_accuracy: float | None
    doc: dict[str, Any]

    @property
    def holdout_rows(self) -> int | None:
        return (self.doc.get("holdout") or {}).get("rows")

    @property
    def key(self) -> WindowKey:
        return (self.model_name, self.version, self.stage_no)

    @property
    def who(self) -> str:
        return f"v{self.version}"


class Bounded(OrderedDict):
    """An insertion-ordered dict that forgets its oldest entries beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        if len(self) > self.limit:
            self.popitem(last=False)


class LiveTracker:
    def __init__(self, remember: int = 200_000) -> None:
        self.windows: dict[WindowKey, LiveWindow] = {}
        self.served = Bounded(remember)  # prediction_id -> (key, role, label)
        self.shadows = Bounded(remember)  # champion prediction_id -> (key, shadow label, compared)

    def window(self, key: WindowKey) -> LiveWindow:
        return self.windows.setdefault(key, LiveWindow())

    def forget(self, key: WindowKey) -> None:
        self.windows.pop(key, None)

    # -- telemetry ---------------------------------------------------------------------------

    def prediction(self, event: PredictionMade, active: ActiveStage) -> bool:
        """Count one prediction in the active stage's window; False if it is not part of it."""
        window, key = self.window(active.key), active.key
        role = _role(event, active)
        if role is None:
            return False
        if role == "fallback":
            window.fallbacks += 1
            return True
        stats = window.arm if role == "arm" else window.baseline
        stats.predicted(event.latency_ms)
        if role == "arm" and event.served_by == "shadow" and event.shadow_of:
            self._shadow(window, key, event.shadow_of, event.label)
            return True
        self.served.put(event.prediction_id, (key, role, event.label))
        if role == "baseline" and active.stage == "shadow":
            self._mirror(window, event.prediction_id, event.label)
        return True

    def _shadow(self, window: LiveWindow, key: WindowKey, served_id: str, label: int) -> None:
        served = self.served.get(served_id)
        compared = served is not None and served[0] == key
        if compared:
            window.compare(served[2] == label)
        self.shadows.put(served_id, (key, label, compared))

    def _mirror(self, window: LiveWindow, prediction_id: str, label: int) -> None:
        shadow = self.shadows.get(prediction_id)
        if shadow is not None and not shadow[2]:
            window.compare(shadow[1] == label)
            self.shadows[prediction_id] = (shadow[0], shadow[1], True)

    def label(self, event: LabelObserved) -> list[WindowKey]:
        """Join a label with the prediction(s) it belongs to; the windows it counted in (none
        if no prediction of a live window is remembered)."""
        keys: list[WindowKey] = []
        served = self.served.get(event.prediction_id)
        if served is not None and served[0] in self.windows:
            key, role, predicted = served
            window = self.windows[key]
            (window.arm if role == "arm" else window.baseline).labelled_as(predicted == event.label)
            keys.append(key)
        shadow = self.shadows.get(event.prediction_id)
        if shadow is not None and shadow[0] in self.windows:
            self.windows[shadow[0]].arm.labelled_as(shadow[1] == event.label)
            keys.append(shadow[0])
        return keys

    def load_failed(self, event: ModelLoadFailed, active: ActiveStage) -> bool:
        if event.version != active.version:
            return False
        self.window(active.key).load_failures.append(f"{event.instance}: {event.error}"[:500])
        return True

    def scoring_failed(self, event: ScoringFailed, active: ActiveStage) -> bool:
        """A shadow of the challenger under shadow raised; False for any other failure."""
        shadow = active.stage == "shadow" and event.served_by == "shadow"
        if not shadow or event.version != active.version:
            return False
        self.window(active.key).shadow_failed(f"{event.request_id}: {event.error}")
        return True


def _role(event: PredictionMade, active: ActiveStage) -> str | None:
    if event.served_by == "fallback":
        return "fallback"
    if active.stage == "watch":
        ok = event.served_by == "champion" and event.version == active.version
        return "arm" if ok else None
    if event.served_by == active.stage and event.version == active.version:
        return "arm"
    if event.served_by == "champion" and event.version == active.champion_version:
        return "baseline"
    return None
