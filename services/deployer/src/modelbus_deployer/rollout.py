"""Safe rollouts, as pure logic: the stage machine, live statistics and the live rules.

No I/O here. A version that passed its hold-out gates goes through stages:

    pending_approval? -> shadow | canary step 0 -> canary step 1 -> ... -> promote -> watch

Each live stage collects a ``LiveWindow`` (the challenger's arm, the champion's baseline, the
fallbacks, shadow agreement and shadow errors, load failures) and ``judge_live`` turns it into
wait / pass / fail with one ``GateResult`` per rule, each carrying its observed value and
threshold. A failed rollout is a reject; a failed post-promotion watch is a rollback request.

Labelled live performance is the quality signal: accuracy for a classifier (the predicted class
equals the true one), RMSE (or MAE, when it is the primary metric) for a regression. The same
two rules hold for both, the regression's expressed for lower-is-better: live against the
hold-out (accuracy may trail it by ``accuracy_tolerance`` points; RMSE/MAE may exceed it by that
fraction; both beyond sampling noise) and, for a shadow or canary, against the champion on the
same traffic (fails only when significantly worse).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from modelbus_contracts import Decision, GateResult, Rollout

from .domain import Policy

Stage = Literal["shadow", "canary", "watch"]
Outcome = Literal["wait", "pass", "fail"]
LATENCY_WINDOW = 10_000
NOISE_Z = 2.0  # live vs hold-out accuracy: only a gap beyond ~2 standard errors counts


# --- the stage machine -----------------------------------------------------------------------


@dataclass(frozen=True)
class Next:
    """What a decision leads to: the ModelEvaluated decision and the rollout it starts."""

    decision: Decision
    rollout: Rollout | None = None

    @property
    def live(self) -> str:
        """The live stage the decision opens (what the watcher must follow)."""
        if self.decision in ("shadow", "canary"):
            return self.decision
        return "watch" if self.decision == "promote" else "none"


def first_stage(policy: Policy, has_champion: bool, approved: bool = False) -> Next:
    """Where a version whose hold-out gates all passed goes first."""
    if policy.require_approval and not approved:
        return Next("pending_approval")
    if not has_champion or policy.rollout == "immediate":
        return Next("promote")  # nothing to compare live traffic against
    if policy.rollout == "shadow":
        return Next("shadow", Rollout(mode="shadow", fraction=0.0, step=0))
    return Next("canary", Rollout(mode="canary", fraction=policy.canary_steps[0], step=0))


def after_pass(policy: Policy, rollout: Rollout) -> Next:
    """A live stage passed: the next canary step, or promote."""
    if rollout.mode == "canary" and rollout.step + 1 < len(policy.canary_steps):
        step = rollout.step + 1
        return Next("canary", Rollout(mode="canary", fraction=policy.canary_steps[step], step=step))
    return Next("promote")


def required_predictions(policy: Policy, stage: Stage) -> int:
    if stage == "shadow":
        return policy.shadow_min_predictions
    if stage == "canary":
        return policy.canary_step_predictions
    return policy.rollback_watch_predictions


# --- live statistics -------------------------------------------------------------------------


ERROR_SUMS = ("abs_sum", "sq_sum", "sq2_sum")


@dataclass
class ArmStats:
    """One model version serving one role: counts, labelled accuracy (a classifier) or error
    sums (a regression: ``valued`` labels with the sums of |e|, e^2 and e^4, enough for the
    RMSE, the MAE and their standard errors), recent latencies."""

    predictions: int = 0
    labelled: int = 0
    correct: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    valued: int = 0
    abs_sum: float = 0.0
    sq_sum: float = 0.0
    sq2_sum: float = 0.0

    def predicted(self, latency_ms: float) -> None:
        self.predictions += 1
        self.latencies.append(latency_ms)

    def labelled_as(self, correct: bool) -> None:
        self.labelled += 1
        self.correct += int(correct)

    def labelled_value(self, error: float) -> None:
        """A regression's prediction met its true value: ``error`` = predicted - true."""
        self.labelled += 1
        self.valued += 1
        sq = error * error
        self.abs_sum += abs(error)
        self.sq_sum += sq
        self.sq2_sum += sq * sq

    @property
    def accuracy(self) -> float | None:
        """Share of correct classes; None for a regression's labels."""
        return self.correct / self.labelled if self.labelled and not self.valued else None

    @property
    def rmse(self) -> float | None:
        return math.sqrt(self.sq_sum / self.valued) if self.valued else None

    @property
    def mae(self) -> float | None:
        return self.abs_sum / self.valued if self.valued else None

    def error(self, metric: str) -> float | None:
        return self.mae if metric == "mae" else self.rmse

    def row_loss(self, metric: str) -> tuple[float, float]:
        """Mean and variance of the per-label loss behind ``metric`` (the absolute error for
        MAE, the squared error for RMSE)."""
        n = max(self.valued, 1)
        if metric == "mae":
            mean = self.abs_sum / n
            return mean, max(self.sq_sum / n - mean * mean, 0.0)
        mean = self.sq_sum / n
        return mean, max(self.sq2_sum / n - mean * mean, 0.0)

    def since(self, base: ArmStats) -> ArmStats:
        """What was counted after ``base``, an earlier copy of these stats."""
        added = self.predictions - base.predictions
        recent = list(self.latencies)[-added:] if added > 0 else []
        return ArmStats(
            predictions=added,
            labelled=self.labelled - base.labelled,
            correct=self.correct - base.correct,
            latencies=deque(recent, maxlen=LATENCY_WINDOW),
            valued=self.valued - base.valued,
            **{name: getattr(self, name) - getattr(base, name) for name in ERROR_SUMS},
        )

    def absorb(self, delta: ArmStats) -> None:
        self.predictions += delta.predictions
        self.labelled += delta.labelled
        self.correct += delta.correct
        self.latencies.extend(delta.latencies)
        self.valued += delta.valued
        for name in ERROR_SUMS:
            setattr(self, name, getattr(self, name) + getattr(delta, name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "predictions": self.predictions,
            "labelled": self.labelled,
            "correct": self.correct,
            "latencies": list(self.latencies),
            "valued": self.valued,
            **{name: getattr(self, name) for name in ERROR_SUMS},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArmStats:
        return cls(
            predictions=int(data.get("predictions", 0)),
            labelled=int(data.get("labelled", 0)),
            correct=int(data.get("correct", 0)),
            latencies=deque(map(float, data.get("latencies", ())), maxlen=LATENCY_WINDOW),
            valued=int(data.get("valued", 0)),
            **{name: float(data.get(name, 0.0)) for name in ERROR_SUMS},
        )

    @property
    def p99_ms(self) -> float | None:
        if not self.latencies:
            return None
        return float(np.percentile(np.fromiter(self.latencies, dtype=float), 99))


@dataclass
class LiveWindow:
    """Everything seen live during one stage of one version."""

    arm: ArmStats = field(default_factory=ArmStats)
    baseline: ArmStats = field(default_factory=ArmStats)
    fallbacks: int = 0
    compared: int = 0
    agreed: int = 0
    shadow_errors: int = 0
    first_shadow_error: str = ""
    load_failures: list[str] = field(default_factory=list)

    COUNTS = ("fallbacks", "compared", "agreed", "shadow_errors")

    def compare(self, same_label: bool) -> None:
        self.compared += 1
        self.agreed += int(same_label)

    def shadow_failed(self, error: str) -> None:
        self.shadow_errors += 1
        self.first_shadow_error = self.first_shadow_error or error[:500]

    @property
    def shadow_error_rate(self) -> float:
        """Failed shadow requests over compared + failed ones."""
        total = self.compared + self.shadow_errors
        return self.shadow_errors / total if total else 0.0

    # -- checkpoints: a copy that survives a restart, and merging what two replicas counted -----

    def to_dict(self) -> dict[str, Any]:
        return {
            "arm": self.arm.to_dict(),
            "baseline": self.baseline.to_dict(),
            **{name: getattr(self, name) for name in self.COUNTS},
            "first_shadow_error": self.first_shadow_error,
            "load_failures": list(self.load_failures),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LiveWindow:
        return cls(
            arm=ArmStats.from_dict(data.get("arm") or {}),
            baseline=ArmStats.from_dict(data.get("baseline") or {}),
            **{name: int(data.get(name, 0)) for name in cls.COUNTS},
            first_shadow_error=str(data.get("first_shadow_error") or ""),
            load_failures=[str(f) for f in data.get("load_failures") or ()],
        )

    def copy(self) -> LiveWindow:
        return LiveWindow.from_dict(self.to_dict())

    def since(self, base: LiveWindow) -> LiveWindow:
        """What was counted after ``base``, an earlier copy of this window."""
        return LiveWindow(
            arm=self.arm.since(base.arm),
            baseline=self.baseline.since(base.baseline),
            **{name: getattr(self, name) - getattr(base, name) for name in self.COUNTS},
            first_shadow_error=self.first_shadow_error if self.shadow_errors else "",
            load_failures=self.load_failures[len(base.load_failures) :],
        )

    def absorb(self, delta: LiveWindow) -> None:
        """Add ``delta`` (what another copy counted) to this window."""
        self.arm.absorb(delta.arm)
        self.baseline.absorb(delta.baseline)
        for name in self.COUNTS:
            setattr(self, name, getattr(self, name) + getattr(delta, name))
        self.first_shadow_error = self.first_shadow_error or delta.first_shadow_error
        self.load_failures.extend(delta.load_failures)

    @property
    def fallback_rate(self) -> float:
        total = self.arm.predictions + self.fallbacks
        return self.fallbacks / total if total else 0.0

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    def evidence(self) -> dict[str, float]:
        """The numbers behind a verdict, finite floats only (they travel in events)."""
        numbers = {
            "predictions": float(self.arm.predictions),
            "fallbacks": float(self.fallbacks),
            "fallback_rate": self.fallback_rate,
            "labelled": float(self.arm.labelled),
            "load_failures": float(len(self.load_failures)),
            "champion_predictions": float(self.baseline.predictions),
            "compared": float(self.compared),
        }
        optional = {
            "latency_p99_ms": self.arm.p99_ms,
            "live_accuracy": self.arm.accuracy,
            "champion_live_accuracy": self.baseline.accuracy,
            "live_rmse": self.arm.rmse,
            "live_mae": self.arm.mae,
            "champion_live_rmse": self.baseline.rmse,
            "champion_live_mae": self.baseline.mae,
            "champion_labelled": float(self.baseline.labelled) if self.baseline.labelled else None,
            "agreement": self.agreement,
        }
        if self.shadow_errors:
            optional["shadow_errors"] = self.shadow_errors
            optional["shadow_error_rate"] = self.shadow_error_rate
        numbers.update({k: float(v) for k, v in optional.items() if v is not None})
        return {k: round(v, 6) for k, v in numbers.items() if math.isfinite(v)}


# --- the rules -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveVerdict:
    outcome: Outcome
    gates: list[GateResult]
    reasons: list[str]
    evidence: dict[str, float]


def _gate(name: str, passed: bool, observed: float, threshold: float, detail: str) -> GateResult:
    return GateResult(
        name=name,
        passed=passed,
        observed=float(observed),
        threshold=float(threshold),
        detail=detail,
    )


def live_gates(
    window: LiveWindow,
    policy: Policy,
    stage: Stage,
    holdout_value: float | None,
    who: str,
    holdout_rows: int | None = None,
    *,
    metric: str = "accuracy",
) -> list[GateResult]:
    """Every rule that has enough data to be judged; a rule without enough data is absent.
    ``metric`` is what labels are judged on (``Policy.live_metric``: accuracy, rmse or mae)
    and ``holdout_value`` its value on the hold-out."""
    gates: list[GateResult] = []
    arm, minimum = window.arm, policy.min_live_predictions
    if window.load_failures:
        count = len(window.load_failures)
        detail = f"{count} scorer(s) could not load {who}: {window.load_failures[0]}"
        gates.append(_gate("load_failures", False, count, 0, detail))
    if arm.predictions + window.fallbacks >= minimum:
        rate, limit = window.fallback_rate, policy.max_fallback_rate
        ok = rate <= limit
        detail = (
            f"fallback rate {rate:.3f} {'<=' if ok else '>'} maximum {limit:g} over "
            f"{arm.predictions + window.fallbacks} live predictions of {who}"
        )
        gates.append(_gate("fallback_rate", ok, rate, limit, detail))
    p99 = arm.p99_ms
    if arm.predictions >= minimum and p99 is not None:
        ok = p99 <= policy.live_latency_p99_ms
        detail = (
            f"live latency p99 {p99:.2f} ms {'<=' if ok else '>'} budget "
            f"{policy.live_latency_p99_ms:g} ms over {len(arm.latencies)} predictions of {who}"
        )
        gates.append(_gate("live_latency_p99", ok, p99, policy.live_latency_p99_ms, detail))
    if metric == "accuracy":
        gates.extend(_live_accuracy(arm, policy, holdout_value, holdout_rows))
    else:
        gates.extend(_live_error(arm, policy, metric, holdout_value, holdout_rows))
    if stage in ("shadow", "canary"):
        if metric == "accuracy":
            gates.extend(_against_champion(window, policy, who))
        else:
            gates.extend(_error_against_champion(window, policy, who, metric))
    agreement = window.agreement
    if stage == "shadow" and window.compared >= minimum and agreement is not None:
        # a floor that catches a broken model, not a quality signal: a better model disagrees
        # with the champion exactly where the champion is wrong
        ok = agreement >= policy.min_agreement
        detail = (
            f"shadow agrees with the champion on {agreement:.3f} of {window.compared} requests "
            f"{'>=' if ok else '<'} floor {policy.min_agreement:g}"
        )
        gates.append(_gate("shadow_agreement", ok, agreement, policy.min_agreement, detail))
    if stage == "shadow":
        gates.extend(_shadow_errors(window, policy, who))
    return gates


def _live_accuracy(
    arm: ArmStats, policy: Policy, holdout_accuracy: float | None, holdout_rows: int | None
) -> list[GateResult]:
    accuracy = arm.accuracy
    if arm.labelled < policy.min_labels or accuracy is None or holdout_accuracy is None:
        return []
    noise = accuracy_noise(holdout_accuracy, holdout_rows, accuracy, arm.labelled)
    floor = holdout_accuracy - policy.accuracy_tolerance - noise
    ok = accuracy >= floor
    detail = (
        f"live accuracy {accuracy:.3f} on {arm.labelled} labels {'>=' if ok else '<'} "
        f"hold-out accuracy {holdout_accuracy:.3f} - tolerance {policy.accuracy_tolerance:g}"
        f" - sampling noise {noise:.3f}"
    )
    return [_gate("live_accuracy", ok, accuracy, floor, detail)]


def _live_error(
    arm: ArmStats,
    policy: Policy,
    metric: str,
    holdout_error: float | None,
    holdout_rows: int | None,
) -> list[GateResult]:
    """A regression's live RMSE (MAE) may exceed the hold-out's by ``accuracy_tolerance`` as a
    fraction of it, plus ``NOISE_Z`` standard errors of the difference (the per-label loss's
    spread, as seen live, on both samples; the delta method for the root of RMSE)."""
    value = arm.error(metric)
    if arm.valued < policy.min_labels or value is None or holdout_error is None:
        return []
    _, variance = arm.row_loss(metric)
    se = math.sqrt(variance / arm.valued + (variance / holdout_rows if holdout_rows else 0.0))
    if metric == "rmse":
        se /= 2.0 * max(value, 1e-12)
    noise = NOISE_Z * se
    ceiling = holdout_error * (1.0 + policy.accuracy_tolerance) + noise
    ok = value <= ceiling
    detail = (
        f"live {metric} {value:.4g} on {arm.valued} labels {'<=' if ok else '>'} hold-out "
        f"{metric} {holdout_error:.4g} x (1 + tolerance {policy.accuracy_tolerance:g}) + "
        f"sampling noise {noise:.4g} (lower is better)"
    )
    return [_gate(f"live_{metric}", ok, value, ceiling, detail)]


def _error_against_champion(
    window: LiveWindow, policy: Policy, who: str, metric: str
) -> list[GateResult]:
    """A regression's labelled live error, the challenger against the champion on the same
    traffic: fails only when the challenger's mean per-label loss (squared error for RMSE,
    absolute error for MAE) is significantly higher (one-sided two-sample z test at
    ``significance``); absent until both have ``min_labels`` labels."""
    arm, champion = window.arm, window.baseline
    if arm.valued < policy.min_labels or champion.valued < policy.min_labels:
        return []
    ours, theirs = arm.error(metric), champion.error(metric)
    if ours is None or theirs is None:
        return []
    (m_ours, v_ours), (m_theirs, v_theirs) = arm.row_loss(metric), champion.row_loss(metric)
    spread = math.sqrt(v_ours / arm.valued + v_theirs / champion.valued)
    gain = m_theirs - m_ours  # positive: the challenger's loss is lower
    z = gain / spread if spread > 0 else (0.0 if gain == 0 else math.copysign(math.inf, gain))
    p_worse = 0.5 * math.erfc(-z / math.sqrt(2.0))
    ok = p_worse >= policy.significance
    loss = "squared" if metric == "rmse" else "absolute"
    detail = (
        f"live {metric} of {who} {ours:.4g} on {arm.valued} labels vs the champion's "
        f"{theirs:.4g} on {champion.valued} labels of the same traffic (lower is better): z "
        f"{z:.2f} on the per-label {loss} errors, "
        f"{'not significantly worse' if ok else 'significantly worse'} (p {p_worse:.3g}, "
        f"level {policy.significance:g})"
    )
    return [_gate("live_vs_champion", ok, ours - theirs, 0.0, detail)]


def _against_champion(window: LiveWindow, policy: Policy, who: str) -> list[GateResult]:
    """Labelled live performance, the challenger against the champion on the same live
    traffic: fails only when the challenger is significantly worse (one-sided two-proportion
    test at ``significance``); absent until both have ``min_labels`` labels."""
    arm, champion = window.arm, window.baseline
    ours, theirs = arm.accuracy, champion.accuracy
    if arm.labelled < policy.min_labels or champion.labelled < policy.min_labels:
        return []
    if ours is None or theirs is None:
        return []
    pooled = (arm.correct + champion.correct) / (arm.labelled + champion.labelled)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / arm.labelled + 1 / champion.labelled))
    z = (
        (ours - theirs) / spread
        if spread > 0
        else (0.0 if ours == theirs else math.copysign(math.inf, ours - theirs))
    )
    p_worse = 0.5 * math.erfc(-z / math.sqrt(2.0))  # P(Z <= z): how unlikely if not worse
    ok = p_worse >= policy.significance
    detail = (
        f"live accuracy of {who} {ours:.3f} on {arm.labelled} labels vs the champion's "
        f"{theirs:.3f} on {champion.labelled} labels of the same traffic: z {z:.2f}, "
        f"{'not significantly worse' if ok else 'significantly worse'} (p {p_worse:.3g}, "
        f"level {policy.significance:g})"
    )
    return [_gate("live_vs_champion", ok, ours - theirs, 0.0, detail)]


def _shadow_errors(window: LiveWindow, policy: Policy, who: str) -> list[GateResult]:
    """The shadow's own exceptions (``ScoringFailed`` with ``served_by=shadow``): a rate over
    compared + failed requests, or a shadow that never once answered."""
    errors, compared = window.shadow_errors, window.compared
    never_answered = errors >= policy.shadow_min_predictions and window.arm.predictions == 0
    if compared + errors < policy.min_live_predictions and not never_answered:
        return []
    rate, limit = window.shadow_error_rate, policy.max_shadow_error_rate
    ok = rate <= limit and not never_answered
    detail = (
        f"shadow {who} raised on {errors} of {compared + errors} requests (rate {rate:.3f} "
        f"{'<=' if ok else '>'} maximum {limit:g})"
    )
    if never_answered:
        detail += f", and never answered once in {errors} attempts"
    if errors:
        detail += f"; first error: {window.first_shadow_error}"
    return [_gate("shadow_error_rate", ok, rate, limit, detail)]


def accuracy_noise(
    holdout_accuracy: float, holdout_rows: int | None, live_accuracy: float, labelled: int
) -> float:
    """``NOISE_Z`` standard errors of (hold-out accuracy - live accuracy): a small hold-out or
    few labels must not roll back a good model on chance alone."""
    variance = live_accuracy * (1 - live_accuracy) / max(labelled, 1)
    if holdout_rows:
        variance += holdout_accuracy * (1 - holdout_accuracy) / holdout_rows
    return NOISE_Z * math.sqrt(variance)


def judge_live(
    window: LiveWindow,
    policy: Policy,
    stage: Stage,
    holdout_value: float | None,
    who: str,
    holdout_rows: int | None = None,
    *,
    metric: str = "accuracy",
) -> LiveVerdict:
    """Fail as soon as a judged rule fails; pass once the stage's sample size is reached.
    ``holdout_value`` is the hold-out's value of ``metric`` (accuracy, rmse or mae)."""
    gates = live_gates(window, policy, stage, holdout_value, who, holdout_rows, metric=metric)
    required = required_predictions(policy, stage)
    failed = [g for g in gates if not g.passed]
    if failed:
        reasons = [f"{g.name} failed: {g.detail}" for g in failed]
        return LiveVerdict("fail", gates, reasons, window.evidence())
    if window.arm.predictions < required:
        return LiveVerdict("wait", gates, [], window.evidence())
    size = _gate(
        "live_sample_size",
        True,
        window.arm.predictions,
        required,
        f"{window.arm.predictions} live predictions of {who} >= {required} ({stage})",
    )
    gates = [size, *gates]
    return LiveVerdict(
        "pass", gates, [f"{g.name} passed: {g.detail}" for g in gates], window.evidence()
    )
