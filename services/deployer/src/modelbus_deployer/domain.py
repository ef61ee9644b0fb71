"""Promotion gates: the pure judgement of a challenger model, optionally against a champion.

No I/O here. Everything is computed on ONE hold-out (the challenger's), so the champion and the
challenger are compared on the same rows. Each gate is a ``GateResult`` carrying the observed
value, the threshold and a sentence with the numbers; the decision is promote iff every gate
passes. The clock used for the latency gate is injected so tests can simulate a slow model.

The default primary metric is a proper scoring rule (log loss; Brier selectable): it sees a
moved decision threshold, which a ranking metric such as AUC cannot. With a proper rule the
challenger is compared row by row with the champion (or, for a first model, with the base rate
of the hold-out) by a one-sided paired test: it must be better by at least the margin and
significantly so, so that noise cannot promote. AUC and accuracy stay selectable, judged on the
margin alone.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from modelbus_contracts import GateResult
from modelbus_contracts.policy import MetricName, RolloutPolicy
from modelbus_ml import PROPER_SCORING_RULES, Dataset, evaluate, row_losses, scores_of

Decision = Literal["promote", "reject"]
LOWER_IS_BETTER: frozenset[str] = frozenset(PROPER_SCORING_RULES)
EPSILON = 1e-12  # float slack so "better by exactly the margin" passes

Clock = Callable[[], float]


class Scorable(Protocol):
    """What the gates need from a model (``modelbus_ml.LogisticModel`` fits)."""

    feature_names: tuple[str, ...]
    threshold: float

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Policy:
    """The effective promotion policy for one model."""

    primary_metric: MetricName = "log_loss"
    promotion_margin: float = 0.0
    significance: float = 0.05
    min_primary_metric: float = 0.6
    min_holdout_rows: int = 100
    latency_budget_ms: float = 5.0
    latency_samples: int = 200
    require_approval: bool = False
    rollout: RolloutPolicy = "immediate"
    shadow_min_predictions: int = 500
    canary_steps: tuple[float, ...] = (0.1, 0.5)
    canary_step_predictions: int = 500
    min_live_predictions: int = 100
    min_agreement: float = 0.5
    max_shadow_error_rate: float = 0.01
    max_fallback_rate: float = 0.05
    live_latency_p99_ms: float = 250.0
    min_labels: int = 200
    accuracy_tolerance: float = 0.05
    rollback_watch_predictions: int = 2000

    @property
    def higher_is_better(self) -> bool:
        return self.primary_metric not in LOWER_IS_BETTER

    @property
    def paired(self) -> bool:
        """A per-row proper scoring rule: judged by a paired test, not by the margin alone."""
        return self.primary_metric in PROPER_SCORING_RULES

    def with_overrides(self, overrides: dict[str, Any]) -> Policy:
        if "canary_steps" in overrides:
            overrides = {**overrides, "canary_steps": tuple(overrides["canary_steps"])}
        return dataclasses.replace(self, **overrides)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["canary_steps"] = list(self.canary_steps)
        return {**data, "higher_is_better": self.higher_is_better}


@dataclass(frozen=True)
class LatencyStats:
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reasons: list[str]
    gates: list[GateResult]
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    latency: LatencyStats | None = None


# --- helpers ---------------------------------------------------------------------------------


def finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Drop NaN/inf values: events and audit records carry only real numbers."""
    return {k: float(v) for k, v in metrics.items() if math.isfinite(v)}


def missing_features(model: Scorable, holdout: Dataset) -> list[str]:
    return [n for n in model.feature_names if n not in holdout.feature_names]


def feature_matrix(model: Scorable, holdout: Dataset) -> np.ndarray:
    return holdout.X[:, [holdout.feature_names.index(n) for n in model.feature_names]]


def _gate(
    name: str, passed: bool, observed: float | None, threshold: float | None, detail: str
) -> GateResult:
    return GateResult(
        name=name,
        passed=bool(passed),
        observed=finite_or_none(observed),
        threshold=finite_or_none(threshold),
        detail=detail,
    )


def _num(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


# --- gates -----------------------------------------------------------------------------------


def holdout_size_gate(rows: int, policy: Policy) -> GateResult:
    passed = rows >= policy.min_holdout_rows
    op = ">=" if passed else "<"
    return _gate(
        "holdout_size",
        passed,
        rows,
        policy.min_holdout_rows,
        f"hold-out has {rows} rows {op} minimum {policy.min_holdout_rows}",
    )


def output_sanity_gate(model: Scorable, holdout: Dataset) -> GateResult:
    """Scores must be finite, within [0, 1], one per hold-out row."""
    missing = missing_features(model, holdout)
    if missing:
        return _gate("output_sanity", False, None, 0, f"hold-out lacks model features {missing}")
    try:
        scores = np.asarray(model.predict_proba(feature_matrix(model, holdout)), dtype=np.float64)
    except Exception as exc:  # model code is untrusted here: a crash is a verdict
        return _gate("output_sanity", False, None, 0, f"predict_proba failed: {exc!r}")
    if scores.shape != (holdout.rows,):
        detail = f"model returned scores of shape {scores.shape} for {holdout.rows} rows"
        return _gate("output_sanity", False, None, 0, detail)
    bad = int((~np.isfinite(scores) | (scores < 0) | (scores > 1)).sum())
    detail = f"{bad} of {holdout.rows} scores are NaN, infinite or outside [0, 1]"
    return _gate("output_sanity", bad == 0, bad, 0, detail)


def measure_latency(model: Scorable, row: np.ndarray, samples: int, clock: Clock) -> LatencyStats:
    """Time ``predict_proba`` on one row ``samples`` times (after one warm-up call)."""
    model.predict_proba(row)
    timings = np.empty(samples, dtype=np.float64)
    for i in range(samples):
        started = clock()
        model.predict_proba(row)
        timings[i] = (clock() - started) * 1000.0
    return LatencyStats(
        samples=samples,
        p50_ms=float(np.percentile(timings, 50)),
        p99_ms=float(np.percentile(timings, 99)),
        max_ms=float(timings.max()),
    )


def latency_gate(
    model: Scorable, holdout: Dataset, policy: Policy, clock: Clock
) -> tuple[GateResult, LatencyStats | None]:
    budget = policy.latency_budget_ms
    if holdout.rows == 0 or missing_features(model, holdout):
        return _gate("latency_budget", False, None, budget, "no hold-out row to time"), None
    try:
        stats = measure_latency(
            model, feature_matrix(model, holdout)[:1], policy.latency_samples, clock
        )
    except Exception as exc:
        return _gate("latency_budget", False, None, budget, f"predict failed: {exc!r}"), None
    passed = stats.p99_ms <= budget
    op = "<=" if passed else ">"
    detail = (
        f"single-row predict p99 {stats.p99_ms:.3f} ms {op} budget {budget:g} ms "
        f"over {stats.samples} calls (p50 {stats.p50_ms:.3f} ms)"
    )
    return _gate("latency_budget", passed, stats.p99_ms, budget, detail), stats


def absolute_quality_gate(metrics: dict[str, float], rows: int, policy: Policy) -> GateResult:
    metric, minimum = policy.primary_metric, policy.min_primary_metric
    value = metrics.get(metric)
    if value is None:
        detail = f"{metric} could not be computed for the challenger on the {rows}-row hold-out"
        return _gate("absolute_quality", False, None, minimum, detail)
    passed = value >= minimum if policy.higher_is_better else value <= minimum
    if policy.higher_is_better:
        op, bound = (">=", "minimum") if passed else ("<", "minimum")
    else:
        op, bound = ("<=", "maximum") if passed else (">", "maximum")
    detail = (
        f"{metric} {_num(value)} {op} {bound} {minimum:g} for a first model "
        f"on the {rows}-row hold-out"
    )
    return _gate("absolute_quality", passed, value, minimum, detail)


def improvement(challenger: float, champion: float, policy: Policy) -> float:
    """How much better the challenger is; positive is better whatever the metric's direction."""
    delta = challenger - champion
    return delta if policy.higher_is_better else -delta


def champion_delta_gate(
    challenger: dict[str, float],
    champion: dict[str, float],
    champion_version: int,
    rows: int,
    policy: Policy,
) -> GateResult:
    metric, margin = policy.primary_metric, policy.promotion_margin
    ours, theirs = challenger.get(metric), champion.get(metric)
    if ours is None or theirs is None:
        who = "challenger" if ours is None else f"champion v{champion_version}"
        detail = f"{metric} could not be computed for the {who} on the {rows}-row hold-out"
        return _gate("champion_delta", False, None, margin, detail)
    gain = improvement(ours, theirs, policy)
    passed = gain >= margin - EPSILON
    op = ">=" if passed else "<"
    label = "" if policy.higher_is_better else "improvement "
    suffix = "" if policy.higher_is_better else " (lower is better)"
    detail = (
        f"{metric} {_num(ours)} vs champion v{champion_version} {_num(theirs)} on the same "
        f"{rows}-row hold-out: {label}{gain:+.3f} {op} margin {margin:g}{suffix}"
    )
    return _gate("champion_delta", passed, gain, margin, detail)


@dataclass(frozen=True)
class PairedTest:
    """Row-by-row comparison of two models' losses on the same rows (``gain`` > 0: the
    challenger's loss is lower). One-sided: is the mean gain above zero? Normal approximation
    of the paired t statistic (a hold-out has at least ``min_holdout_rows`` rows)."""

    gain: float  # mean loss of the other model minus the challenger's
    z: float
    p_value: float
    rows: int

    @classmethod
    def of(cls, other: np.ndarray, challenger: np.ndarray) -> PairedTest:
        diff = np.asarray(other, dtype=np.float64) - np.asarray(challenger, dtype=np.float64)
        n = int(diff.size)
        gain = float(diff.mean()) if n else 0.0
        spread = float(diff.std(ddof=1)) if n > 1 else 0.0
        if spread == 0.0:  # identical predictions (or a constant difference)
            z = math.inf if gain > 0 else (-math.inf if gain < 0 else 0.0)
        else:
            z = gain / (spread / math.sqrt(n))
        p_value = 0.5 * math.erfc(z / math.sqrt(2.0))  # P(Z >= z)
        return cls(gain, z, p_value, n)


def paired_gates(
    test: PairedTest,
    policy: Policy,
    *,
    ours: float,
    rival: str,
    theirs: float,
    others: str = "",
) -> list[GateResult]:
    """The two halves of a paired judgement on the primary (proper) metric: better by at least
    the margin, and significantly so."""
    metric, margin, alpha = policy.primary_metric, policy.promotion_margin, policy.significance
    better = test.gain >= margin - EPSILON
    significant = test.p_value < alpha
    also = f"; beside it: {others}" if others else ""
    return [
        _gate(
            "champion_delta",
            better,
            test.gain,
            margin,
            f"{metric} {_num(ours)} vs {_num(theirs)} of {rival} on the same {test.rows}-row "
            f"hold-out: improvement {test.gain:+.4f} {'>=' if better else '<'} margin "
            f"{margin:g} (lower is better){also}",
        ),
        _gate(
            "paired_test",
            significant,
            test.p_value,
            alpha,
            f"{metric} row by row, challenger vs {rival}: one-sided paired test z "
            f"{test.z:.2f}, p {test.p_value:.3g} {'<' if significant else '>='} {alpha:g} "
            f"over {test.rows} rows",
        ),
    ]


def beside(challenger: dict[str, float], other: dict[str, float], primary: str) -> str:
    """Every other metric of both models, for the record."""
    names = [m for m in ("auc", "accuracy", "log_loss", "brier") if m != primary]
    return ", ".join(
        f"{m} {_num(challenger.get(m))} vs {_num(other.get(m))}"
        for m in names
        if m in challenger or m in other
    )


# --- the verdict -----------------------------------------------------------------------------


def _metrics_of(model: Scorable, holdout: Dataset) -> dict[str, float]:
    if missing_features(model, holdout):
        return {}
    try:
        return finite_metrics(evaluate(model, holdout))  # type: ignore[arg-type]
    except Exception:
        return {}


def decide(gates: list[GateResult]) -> tuple[Decision, list[str]]:
    """Promote iff every gate passed; the reasons are the failed gates' sentences, or all."""
    failed = [g for g in gates if not g.passed]
    if failed:
        return "reject", [f"{g.name} failed: {g.detail}" for g in failed]
    return "promote", [f"{g.name} passed: {g.detail}" for g in gates]


def judge(
    challenger: Scorable,
    holdout: Dataset,
    policy: Policy,
    champion: Scorable | None = None,
    champion_version: int | None = None,
    clock: Clock = time.perf_counter,
) -> Verdict:
    """Run every gate for ``challenger`` (and ``champion``, if any) on the same hold-out."""
    sanity = output_sanity_gate(challenger, holdout)
    challenger_metrics = _metrics_of(challenger, holdout) if sanity.passed else {}
    latency, stats = latency_gate(challenger, holdout, policy, clock)
    gates = [holdout_size_gate(holdout.rows, policy), sanity, latency]
    champion_metrics = _metrics_of(champion, holdout) if champion is not None else {}
    if policy.paired:
        metrics = (challenger_metrics, champion_metrics)
        gates += _paired(challenger, holdout, policy, champion, champion_version, metrics)
    elif champion is None:
        gates.append(absolute_quality_gate(challenger_metrics, holdout.rows, policy))
    else:
        gates.append(
            champion_delta_gate(
                challenger_metrics, champion_metrics, champion_version or 0, holdout.rows, policy
            )
        )
    decision, reasons = decide(gates)
    return Verdict(decision, reasons, gates, challenger_metrics, champion_metrics, stats)


def _paired(
    challenger: Scorable,
    holdout: Dataset,
    policy: Policy,
    champion: Scorable | None,
    champion_version: int | None,
    metrics: tuple[dict[str, float], dict[str, float]],
) -> list[GateResult]:
    """The paired gates: the challenger against the champion, or (a first model) against the
    hold-out's base rate, the model that knows nothing but how often the label is 1."""
    metric, y = policy.primary_metric, holdout.y
    ours = _row_losses(challenger, holdout, metric) if metrics[0] else None
    if champion is None:
        rate = float(np.mean(y)) if holdout.rows else 0.5
        theirs = row_losses(y, np.full(holdout.rows, rate), metric)
        rival = f"the hold-out's base rate {rate:.3f}"
        others = ""
    else:
        theirs = _row_losses(champion, holdout, metric)
        rival = f"champion v{champion_version or 0}"
        others = beside(*metrics, metric)
    if ours is None or theirs is None:
        who = "challenger" if ours is None else rival
        detail = f"{metric} could not be computed for the {who} on the {holdout.rows}-row hold-out"
        return [_gate("champion_delta", False, None, policy.promotion_margin, detail)]
    test = PairedTest.of(theirs, ours)
    return paired_gates(
        test,
        policy,
        ours=float(ours.mean()) if ours.size else math.nan,
        rival=rival,
        theirs=float(theirs.mean()) if theirs.size else math.nan,
        others=others,
    )


def _row_losses(model: Scorable, holdout: Dataset, metric: str) -> np.ndarray | None:
    if missing_features(model, holdout):
        return None
    try:
        losses = row_losses(holdout.y, scores_of(model, holdout), metric)  # type: ignore[arg-type]
    except Exception:  # untrusted model code: a crash is a verdict
        return None
    return losses if np.isfinite(losses).all() else None


def load_failure(what: str, error: str) -> Verdict:
    """The verdict when an artifact or the hold-out cannot be loaded or fails its sha256."""
    gate = _gate("load", False, None, None, f"could not load the {what}: {error}")
    return Verdict("reject", [f"load failed: {gate.detail}"], [gate])
