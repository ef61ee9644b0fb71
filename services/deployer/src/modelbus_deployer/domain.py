"""Promotion gates: the pure judgement of a challenger model, optionally against a champion.

No I/O here. Everything is computed on ONE hold-out (the challenger's, read with its task and
classes), so the champion and the challenger are compared on the same rows. Each gate is a
``GateResult`` carrying the observed value, the threshold and a sentence with the numbers; the
decision is promote iff every gate passes. The clock used for the latency gate is injected so
tests can simulate a slow model.

Every task is judged (binary, multiclass, regression). The primary metric defaults per task
(``modelbus_ml.evaluation.DEFAULT_METRIC``): log loss for a classifier, RMSE for a regression;
a policy's metric that does not apply to the model's task (AUC for a regression) rejects it
with that reason (gate ``task``). Log loss and Brier see a moved decision threshold, which a
ranking metric such as AUC cannot. With a per-row metric (log loss, Brier, RMSE, MAE) the
challenger is compared row by row with the champion (or, for a first model, with the no-skill
prior of the hold-out: the base rate, the class frequencies, the mean) by a one-sided paired
test: it must be better by at least the margin and significantly so, so that noise cannot
promote. The margin is on the metric's value (for RMSE: in the target's units, the root of the
mean squared error), the test on the per-row losses (for RMSE: the squared errors); the reasons
say which. AUC, macro AUC and accuracy stay selectable, judged on the margin alone, and a first
model on them must reach ``min_primary_metric``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

import numpy as np

from modelbus_contracts import GateResult
from modelbus_contracts.policy import MetricName, RolloutPolicy
from modelbus_ml import Dataset, evaluate
from modelbus_ml.evaluation import (
    DEFAULT_METRIC,
    LOWER_IS_BETTER,
    METRICS_BY_TASK,
    REGRESSION_ERRORS,
    ROW_METRICS,
    prior_row_losses,
    row_losses_of,
    summarise,
)
from modelbus_ml.outputs import PROBABILITY_SLACK, classes_of, outputs_of, task_of

Decision = Literal["promote", "reject"]
EPSILON = 1e-12  # float slack so "better by exactly the margin" passes
# the selectable metrics that apply to each task, in METRICS_BY_TASK order
APPLICABLE: dict[str, tuple[str, ...]] = {
    task: tuple(m for m in names if m in get_args(MetricName))
    for task, names in METRICS_BY_TASK.items()
}
ROW_LOSS_NAMES = {"rmse": "squared error", "mae": "absolute error"}

Clock = Callable[[], float]


class Scorable(Protocol):
    """What the gates need from a model: any ``modelbus_ml.ServableModel`` (its ``task`` and
    ``classes`` are read when present: absent, a binary model)."""

    feature_names: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    """The effective promotion policy for one model.

    ``primary_metric`` None: the task's default (log_loss for a classifier, rmse for a
    regression). ``min_primary_metric`` is the floor of a first model on a higher-is-better
    metric (auc, macro_auc, accuracy: 0.6 by default); with a lower-is-better metric (log_loss,
    brier, rmse, mae, whose scale depends on the data) it does not apply: a first model must
    beat the hold-out's no-skill prior by the paired test instead. ``accuracy_tolerance`` is in
    accuracy points for a classifier and, for a regression, the fraction by which live RMSE (or
    MAE) may exceed the hold-out's."""

    primary_metric: MetricName | None = None
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
    def metric(self) -> str:
        """The primary metric (a classifier's default when unset; see ``for_task``)."""
        return self.primary_metric or DEFAULT_METRIC["binary"]

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER

    @property
    def paired(self) -> bool:
        """A per-row metric: judged by a paired test, not by the margin alone."""
        return self.metric in ROW_METRICS

    def metric_for(self, task: str) -> str:
        return self.primary_metric or DEFAULT_METRIC.get(task, DEFAULT_METRIC["binary"])

    def for_task(self, task: str) -> Policy:
        """This policy with its primary metric resolved for ``task``."""
        return dataclasses.replace(self, primary_metric=self.metric_for(task))  # type: ignore[arg-type]

    def live_metric(self, task: str) -> str:
        """What live labels are judged on: accuracy for a classifier; for a regression MAE
        when it is the primary metric, else RMSE."""
        if task != "regression":
            return "accuracy"
        return "mae" if self.primary_metric == "mae" else "rmse"

    def with_overrides(self, overrides: dict[str, Any]) -> Policy:
        if "canary_steps" in overrides:
            overrides = {**overrides, "canary_steps": tuple(overrides["canary_steps"])}
        return dataclasses.replace(self, **overrides)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["canary_steps"] = list(self.canary_steps)
        by_task = {task: self.metric_for(task) for task in METRICS_BY_TASK}
        higher = self.higher_is_better if self.primary_metric else None
        return {**data, "higher_is_better": higher, "metric_by_task": by_task}


@dataclass(frozen=True)
class LatencyStats:
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    rounds: int = 1  # rounds timed; the stats are those of the round with the lowest p99

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
    task: str | None = None  # the hold-out's (the model's) task; None: nothing was loaded


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
    """The hold-out's columns the model takes, in its order (float or object matrix)."""
    return holdout.select(model.feature_names).X


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


def _num(value: float | None, metric: str = "") -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.4g}" if metric in REGRESSION_ERRORS else f"{value:.3f}"


# --- gates ---------------------------------------------------------------------------------


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


def task_gate(model: Scorable, holdout: Dataset, policy: Policy) -> GateResult:
    """The model's task is the hold-out's, and the primary metric applies to it."""
    task, metric = task_of(model), policy.metric_for(holdout.task)
    classes = f" (classes {list(holdout.classes)})" if holdout.task == "multiclass" else ""
    if task != holdout.task:
        detail = f"a {task} model cannot be judged on a {holdout.task} hold-out{classes}"
        return _gate("task", False, None, None, detail)
    applicable = APPLICABLE[task]
    if metric not in applicable:
        detail = (
            f"primary metric {metric} does not apply to a {task} model: one of "
            f"{', '.join(applicable)}"
        )
        return _gate("task", False, None, None, detail)
    chosen = "the policy's" if policy.primary_metric else f"the {task} default"
    detail = f"a {task} model{classes} judged on {metric} ({chosen})"
    return _gate("task", True, None, None, detail)


def _invalid_outputs(model: Any, X: np.ndarray) -> tuple[int, str]:
    """How many rows of the model's raw outputs are nonsense, and the sentence that says so."""
    rows, task = len(X), task_of(model)
    if task == "regression":
        values = np.asarray(model.predict_values(X), dtype=np.float64)
        if values.shape != (rows,):
            return rows, f"model returned values of shape {values.shape} for {rows} rows"
        bad = int((~np.isfinite(values)).sum())
        return bad, f"{bad} of {rows} values are NaN or infinite"
    p = np.asarray(model.predict_proba(X), dtype=np.float64)
    if task == "binary":
        if p.shape != (rows,):
            return rows, f"model returned scores of shape {p.shape} for {rows} rows"
        bad = int((~np.isfinite(p) | (p < 0) | (p > 1)).sum())
        return bad, f"{bad} of {rows} scores are NaN, infinite or outside [0, 1]"
    k = len(classes_of(model))
    if p.shape != (rows, k):
        return rows, f"model returned probabilities of shape {p.shape} for {rows} rows, {k} classes"
    with np.errstate(invalid="ignore"):
        wrong = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1) | (p > 1).any(axis=1)
        wrong |= np.abs(p.sum(axis=1) - 1.0) > PROBABILITY_SLACK
    bad = int(wrong.sum())
    return bad, (
        f"{bad} of {rows} rows of class probabilities are NaN, outside [0, 1] or do not sum to 1"
    )


def output_sanity_gate(model: Scorable, holdout: Dataset) -> GateResult:
    """One finite output per hold-out row: probabilities within [0, 1] (a multiclass row summing
    to 1), or finite values."""
    missing = missing_features(model, holdout)
    if missing:
        return _gate("output_sanity", False, None, 0, f"hold-out lacks model features {missing}")
    method = "predict_values" if task_of(model) == "regression" else "predict_proba"
    try:
        bad, detail = _invalid_outputs(model, feature_matrix(model, holdout))
    except Exception as exc:  # model code is untrusted here: a crash is a verdict
        return _gate("output_sanity", False, None, 0, f"{method} failed: {exc!r}")
    return _gate("output_sanity", bad == 0, bad, 0, detail)


LATENCY_ROUNDS = 3  # at most: a round over budget is timed again


def measure_latency(model: Scorable, row: np.ndarray, samples: int, clock: Clock) -> LatencyStats:
    """Time the model's outputs on one row ``samples`` times (after one warm-up call)."""
    outputs_of(model, row)
    timings = np.empty(samples, dtype=np.float64)
    for i in range(samples):
        started = clock()
        outputs_of(model, row)
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
    row = feature_matrix(model, holdout)[:1]
    rounds: list[LatencyStats] = []
    try:
        # a slow model is slow in every round; a busy host (a GC pause, a neighbour's burst)
        # is not: a p99 over budget is timed again, and the best round decides
        while len(rounds) < LATENCY_ROUNDS and (not rounds or rounds[-1].p99_ms > budget):
            rounds.append(measure_latency(model, row, policy.latency_samples, clock))
    except Exception as exc:
        return _gate("latency_budget", False, None, budget, f"predict failed: {exc!r}"), None
    best = min(rounds, key=lambda r: r.p99_ms)
    stats = dataclasses.replace(best, rounds=len(rounds))
    passed = stats.p99_ms <= budget
    op = "<=" if passed else ">"
    tried = f", best of {len(rounds)} rounds" if len(rounds) > 1 else ""
    detail = (
        f"single-row predict p99 {stats.p99_ms:.3f} ms {op} budget {budget:g} ms "
        f"over {stats.samples} calls (p50 {stats.p50_ms:.3f} ms{tried})"
    )
    return _gate("latency_budget", passed, stats.p99_ms, budget, detail), stats


def absolute_quality_gate(metrics: dict[str, float], rows: int, policy: Policy) -> GateResult:
    """A first model on a margin-only metric (auc, macro_auc, accuracy: higher is better) must
    reach ``min_primary_metric``; the lower-is-better branch is kept for completeness (every
    lower-is-better metric is judged by the paired test against the prior instead)."""
    metric, minimum = policy.metric, policy.min_primary_metric
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
        f"{metric} {_num(value, metric)} {op} {bound} {minimum:g} for a first model "
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
    metric, margin = policy.metric, policy.promotion_margin
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
        f"{metric} {_num(ours, metric)} vs champion v{champion_version} {_num(theirs, metric)} "
        f"on the same {rows}-row hold-out: {label}{gain:+.3f} {op} margin {margin:g}{suffix}"
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
    """The two halves of a paired judgement on the primary (per-row) metric: better by at
    least the margin on the metric's value, and significantly so row by row. For log loss,
    Brier and MAE the metric is the mean of the row losses, so both speak of the same gain; for
    RMSE the margin is on the RMSE (the target's units) and the test on the squared errors."""
    metric, margin, alpha = policy.metric, policy.promotion_margin, policy.significance
    gain = theirs - ours  # every per-row metric is lower-is-better
    better = gain >= margin - EPSILON
    significant = test.p_value < alpha
    also = f"; beside it: {others}" if others else ""
    rows_of = ROW_LOSS_NAMES.get(metric, metric)
    on = f"per-row {rows_of} (mean gain {test.gain:+.4g})" if metric in ROW_LOSS_NAMES else metric
    return [
        _gate(
            "champion_delta",
            better,
            gain,
            margin,
            f"{metric} {_num(ours, metric)} vs {_num(theirs, metric)} of {rival} on the same "
            f"{test.rows}-row hold-out: improvement {gain:+.4f} {'>=' if better else '<'} "
            f"margin {margin:g} on {metric} (lower is better){also}",
        ),
        _gate(
            "paired_test",
            significant,
            test.p_value,
            alpha,
            f"{on} row by row, challenger vs {rival}: one-sided paired test z "
            f"{test.z:.2f}, p {test.p_value:.3g} {'<' if significant else '>='} {alpha:g} "
            f"over {test.rows} rows",
        ),
    ]


def beside(challenger: dict[str, float], other: dict[str, float], primary: str) -> str:
    """Every other metric of both models, for the record."""
    names = [m for task in METRICS_BY_TASK.values() for m in task if m != primary]
    return ", ".join(
        f"{m} {_num(challenger.get(m), m)} vs {_num(other.get(m), m)}"
        for m in dict.fromkeys(names)
        if m in challenger or m in other
    )


# --- the verdict -----------------------------------------------------------------------------


def _metrics_of(model: Scorable, holdout: Dataset) -> dict[str, float]:
    """Every metric of the hold-out's task ({} if the model cannot be judged on it)."""
    if missing_features(model, holdout):
        return {}
    try:
        return finite_metrics(evaluate(model, holdout))
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
    """Run every gate for ``challenger`` (and ``champion``, if any) on the same hold-out, whose
    task and classes are the challenger's (as its signature says)."""
    fit = task_gate(challenger, holdout, policy)
    policy = policy.for_task(holdout.task)
    sanity = output_sanity_gate(challenger, holdout)
    challenger_metrics = _metrics_of(challenger, holdout) if sanity.passed else {}
    latency, stats = latency_gate(challenger, holdout, policy, clock)
    gates = [holdout_size_gate(holdout.rows, policy), fit, sanity, latency]
    champion_metrics = _metrics_of(champion, holdout) if champion is not None else {}
    metrics = (challenger_metrics, champion_metrics)
    if not fit.passed:
        pass  # no comparison on a metric that does not apply, or on labels of another task
    elif champion is not None and task_of(champion) != holdout.task:
        gates.append(_task_change(champion, champion_version, holdout, policy))
    elif policy.paired:
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
    return Verdict(
        decision, reasons, gates, challenger_metrics, champion_metrics, stats, holdout.task
    )


def _task_change(
    champion: Scorable, champion_version: int | None, holdout: Dataset, policy: Policy
) -> GateResult:
    """The champion answers another task: the two cannot be compared on the same rows; a
    change of task is a human's decision (reject, and say so)."""
    detail = (
        f"champion v{champion_version or 0} is a {task_of(champion)} model and the challenger "
        f"a {holdout.task} one: they cannot be compared on the same hold-out"
    )
    return _gate("champion_delta", False, None, policy.promotion_margin, detail)


def _paired(
    challenger: Scorable,
    holdout: Dataset,
    policy: Policy,
    champion: Scorable | None,
    champion_version: int | None,
    metrics: tuple[dict[str, float], dict[str, float]],
) -> list[GateResult]:
    """The paired gates: the challenger against the champion, or (a first model) against the
    hold-out's no-skill prior: the base rate, the class frequencies or the mean."""
    metric = policy.metric
    ours = _row_losses(challenger, holdout, metric) if metrics[0] else None
    if champion is None:
        theirs, prior = prior_row_losses(holdout, metric)
        rival = prior.replace("the ", "the hold-out's ", 1)
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
        ours=summarise(metric, ours),
        rival=rival,
        theirs=summarise(metric, theirs),
        others=others,
    )


def _row_losses(model: Scorable, holdout: Dataset, metric: str) -> np.ndarray | None:
    if missing_features(model, holdout):
        return None
    try:
        losses = row_losses_of(model, holdout, metric)
    except Exception:  # untrusted model code: a crash is a verdict
        return None
    return losses if np.isfinite(losses).all() else None


def load_failure(what: str, error: str) -> Verdict:
    """The verdict when an artifact or the hold-out cannot be loaded or fails its sha256."""
    gate = _gate("load", False, None, None, f"could not load the {what}: {error}")
    return Verdict("reject", [f"load failed: {gate.detail}"], [gate])
