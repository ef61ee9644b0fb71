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

What a prediction is, for every task: a classifier's class, compared as a string (the binary
``1``, a label ``1.0`` and ``"1"`` are one class), or a regression's value (a float). A label
meets a class (correct or not) or a value (its error). A shadow agrees with the champion when
it answers the same class or, for a regression, a value within ``AGREEMENT_RTOL`` (10%) of the
champion's, or within the challenger's hold-out RMSE of it (so that values near zero, where a
relative difference means nothing, still agree when both models are fine): a floor that
catches a broken model, not a quality signal.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from modelbus_contracts import LabelObserved, ModelLoadFailed, PredictionMade, ScoringFailed

from .rollout import ArmStats, LiveWindow, Stage

WindowKey = tuple[str, int, int]  # model, version, stage number
Predicted = str | float | None  # a class (as a string), a regression's value, or nothing
AGREEMENT_RTOL = 0.1


def class_key(label: Any) -> str:
    """A class as a string: 2, 2.0 and "2" are the class "2"."""
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label)


def predicted_of(event: PredictionMade) -> Predicted:
    """What ``event`` answered: a regression's value, else the class."""
    if event.value is not None:
        return float(event.value)
    return None if event.label is None else class_key(event.label)


def true_value(label: Any) -> float | None:
    """A regression's true value from a label; None if it is not a finite number."""
    if isinstance(label, bool):
        return None
    try:
        value = float(label)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def agrees(shadow: Predicted, champion: Predicted, scale: float = 0.0) -> bool:
    """Same class, or (a regression) values within the tolerance (see the module docstring)."""
    if isinstance(shadow, float) and isinstance(champion, float):
        tolerance = max(AGREEMENT_RTOL * max(abs(shadow), abs(champion)), scale)
        return abs(shadow - champion) <= tolerance
    return shadow is not None and shadow == champion


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
    def task(self) -> str:
        return str(self.doc.get("task") or "binary")

    def holdout_value(self, metric: str) -> float | None:
        """The challenger's hold-out value of a live metric (accuracy, rmse, mae)."""
        if metric == "accuracy":
            return self.holdout_accuracy
        value = (self.doc.get("challenger_metrics") or {}).get(metric)
        return None if value is None else float(value)

    @property
    def agreement_scale(self) -> float:
        """A regression's absolute agreement tolerance: the challenger's hold-out RMSE."""
        if self.task != "regression":
            return 0.0
        return self.holdout_value("rmse") or 0.0

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
        predicted = predicted_of(event)
        if role == "arm" and event.served_by == "shadow" and event.shadow_of:
            self._shadow(window, active, event.shadow_of, predicted)
            return True
        self.served.put(event.prediction_id, (key, role, predicted))
        if role == "baseline" and active.stage == "shadow":
            self._mirror(window, active, event.prediction_id, predicted)
        return True

    def _shadow(
        self, window: LiveWindow, active: ActiveStage, served_id: str, predicted: Predicted
    ) -> None:
        served = self.served.get(served_id)
        compared = served is not None and served[0] == active.key
        if compared:
            window.compare(agrees(predicted, served[2], active.agreement_scale))
        self.shadows.put(served_id, (active.key, predicted, compared))

    def _mirror(
        self, window: LiveWindow, active: ActiveStage, prediction_id: str, predicted: Predicted
    ) -> None:
        shadow = self.shadows.get(prediction_id)
        if shadow is not None and not shadow[2]:
            window.compare(agrees(shadow[1], predicted, active.agreement_scale))
            self.shadows[prediction_id] = (shadow[0], shadow[1], True)

    def label(self, event: LabelObserved) -> list[WindowKey]:
        """Join a label with the prediction(s) it belongs to; the windows it counted in (none
        if no prediction of a live window is remembered, or the label does not fit it)."""
        keys: list[WindowKey] = []
        served = self.served.get(event.prediction_id)
        if served is not None and served[0] in self.windows:
            key, role, predicted = served
            window = self.windows[key]
            if _count_label(window.arm if role == "arm" else window.baseline, predicted, event):
                keys.append(key)
        shadow = self.shadows.get(event.prediction_id)
        if (
            shadow is not None
            and shadow[0] in self.windows
            and _count_label(self.windows[shadow[0]].arm, shadow[1], event)
        ):
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


def _count_label(stats: ArmStats, predicted: Predicted, event: LabelObserved) -> bool:
    """A class meets its true class (correct or not); a value meets its true value (its
    error). False if there is nothing to compare (no prediction, a non-numeric value)."""
    if isinstance(predicted, float):
        truth = true_value(event.label)
        if truth is None:
            return False
        stats.labelled_value(predicted - truth)
        return True
    if predicted is None:
        return False
    stats.labelled_as(predicted == class_key(event.label))
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
