"""Unit tests of the promotion gates: pure functions, fake clocks, no servers. The default
policy (log loss, paired test) and the margin-only policies (AUC, accuracy) alike."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelbus_contracts import GateResult
from modelbus_deployer.domain import (
    Policy,
    champion_delta_gate,
    judge,
    load_failure,
)
from modelbus_ml import Dataset, LogisticModel, evaluate

POLICY = Policy()
AUC = Policy(primary_metric="auc", promotion_margin=0.01)


def gate(verdict, name: str) -> GateResult:
    return next(g for g in verdict.gates if g.name == name)


class ConstantModel:
    """A broken model: returns ``value`` for every row."""

    feature_names = ("x1", "x2", "x3")
    threshold = 0.5

    def __init__(self, value: float) -> None:
        self.value = value

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.full(X.shape[0], self.value)


def test_auc_promotes_a_challenger_better_by_the_margin(models, fast_clock):
    verdict = judge(models.good, models.holdout, AUC, models.bad, 1, fast_clock)

    assert verdict.decision == "promote"
    assert [g.name for g in verdict.gates] == [
        "holdout_size",
        "task",
        "output_sanity",
        "latency_budget",
        "champion_delta",
    ]
    assert all(g.passed for g in verdict.gates)
    delta = gate(verdict, "champion_delta")
    expected = (
        evaluate(models.good, models.holdout)["auc"] - evaluate(models.bad, models.holdout)["auc"]
    )
    assert delta.observed == pytest.approx(expected)
    assert delta.threshold == 0.01
    assert "on the same 300-row hold-out" in delta.detail
    assert verdict.champion_metrics["auc"] < 0.5 < verdict.challenger_metrics["auc"]
    assert len(verdict.reasons) == 5


def test_rejects_a_challenger_worse_than_the_champion(models, fast_clock):
    verdict = judge(models.bad, models.holdout, POLICY, models.good, 3, fast_clock)

    assert verdict.decision == "reject"
    delta, paired = gate(verdict, "champion_delta"), gate(verdict, "paired_test")
    assert not delta.passed and not paired.passed
    assert delta.observed is not None and delta.observed < 0
    assert verdict.reasons == [
        f"champion_delta failed: {delta.detail}",
        f"paired_test failed: {paired.detail}",
    ]
    assert "of champion v3" in delta.detail
    assert verdict.champion_metrics["auc"] > 0.9


def test_auc_rejects_a_challenger_within_the_margin(models, fast_clock):
    verdict = judge(models.good, models.holdout, AUC, models.good, 1, fast_clock)

    assert verdict.decision == "reject"
    delta = gate(verdict, "champion_delta")
    assert delta.observed == pytest.approx(0.0)
    assert "+0.000 < margin 0.01" in delta.detail


def test_reason_sentence_carries_the_numbers():
    result = champion_delta_gate({"auc": 0.912}, {"auc": 0.701}, 4, 750, AUC)

    assert result.passed
    assert result.detail == (
        "auc 0.912 vs champion v4 0.701 on the same 750-row hold-out: +0.211 >= margin 0.01"
    )


def test_exactly_the_margin_is_enough_despite_float_error():
    assert champion_delta_gate({"auc": 0.71}, {"auc": 0.70}, 1, 500, AUC).passed
    assert not champion_delta_gate({"auc": 0.7099}, {"auc": 0.70}, 1, 500, AUC).passed


def test_auc_holds_a_first_model_to_the_absolute_threshold(models, fast_clock):
    good = judge(models.good, models.holdout, AUC, clock=fast_clock)
    bad = judge(models.bad, models.holdout, AUC, clock=fast_clock)

    assert good.decision == "promote"
    assert gate(good, "absolute_quality").passed
    assert bad.decision == "reject"
    quality = gate(bad, "absolute_quality")
    assert quality.threshold == 0.6
    assert quality.observed == pytest.approx(bad.challenger_metrics["auc"])
    assert "< minimum 0.6 for a first model" in quality.detail
    assert bad.champion_metrics == {}


def test_latency_budget_breach_rejects(models, step_clock):
    verdict = judge(models.good, models.holdout, POLICY, clock=step_clock(12.0))

    assert verdict.decision == "reject"
    latency = gate(verdict, "latency_budget")
    assert latency.observed == pytest.approx(12.0)
    assert latency.threshold == 5.0
    assert "p99 12.000 ms > budget 5 ms over 200 calls" in latency.detail
    assert "best of 3 rounds" in latency.detail  # slow every time: slow
    assert verdict.latency is not None and verdict.latency.samples == 200
    assert verdict.latency.rounds == 3


def test_a_host_hiccup_during_the_timing_does_not_reject_a_fast_model(models, step_clock):
    class Hiccup(step_clock):
        """The first round's calls take 12 ms (a busy host); every later one 0.05 ms."""

        def __call__(self) -> float:
            self.calls = getattr(self, "calls", 0) + 1
            self.t += self.step_s if self.calls <= 400 else 0.00005
            return self.t

    verdict = judge(models.good, models.holdout, POLICY, clock=Hiccup(12.0))

    latency = gate(verdict, "latency_budget")
    assert latency.passed and latency.observed == pytest.approx(0.05)
    assert "best of 2 rounds" in latency.detail
    assert verdict.latency is not None and verdict.latency.rounds == 2


def test_latency_is_timed_on_the_real_clock_too(models):
    verdict = judge(models.good, models.holdout, Policy(latency_samples=50))

    assert verdict.latency is not None
    assert 0 < verdict.latency.p99_ms < 1000


@pytest.mark.parametrize("value", [math.nan, math.inf, 1.5, -0.1])
def test_broken_model_output_is_rejected_without_a_crash(models, fast_clock, value):
    verdict = judge(ConstantModel(value), models.holdout, POLICY, models.good, 1, fast_clock)

    assert verdict.decision == "reject"
    sanity = gate(verdict, "output_sanity")
    assert not sanity.passed
    assert sanity.observed == 300
    assert "300 of 300 scores are NaN, infinite or outside [0, 1]" in sanity.detail
    assert not gate(verdict, "champion_delta").passed
    assert verdict.challenger_metrics == {}
    assert all(math.isfinite(v) for v in verdict.champion_metrics.values())


def test_model_that_raises_is_rejected(models, fast_clock):
    class Raising(ConstantModel):
        def predict_proba(self, X):
            raise FloatingPointError("overflow")

    verdict = judge(Raising(0.5), models.holdout, POLICY, clock=fast_clock)

    assert verdict.decision == "reject"
    assert "overflow" in gate(verdict, "output_sanity").detail
    assert not gate(verdict, "latency_budget").passed


def test_log_loss_is_judged_row_by_row_with_a_paired_test(models, fast_clock):
    better = judge(models.good, models.holdout, POLICY, models.bad, 1, fast_clock)

    assert better.decision == "promote"
    assert [g.name for g in better.gates][-2:] == ["champion_delta", "paired_test"]
    delta, paired = gate(better, "champion_delta"), gate(better, "paired_test")
    assert delta.observed == pytest.approx(
        better.champion_metrics["log_loss"] - better.challenger_metrics["log_loss"]
    )
    assert (delta.threshold, paired.threshold) == (0.0, 0.05)
    assert paired.observed < 1e-6
    assert "(lower is better); beside it: auc" in delta.detail  # every other metric reported
    assert "one-sided paired test" in paired.detail and "over 300 rows" in paired.detail


def moved_boundary(rows: int, seed: int, shift: float) -> Dataset:
    """Labels from the rule x1 > shift: the decision boundary has moved by ``shift``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 3))
    y = (X[:, 0] + 0.1 * rng.normal(size=rows) > shift).astype(np.int8)
    return Dataset(("x1", "x2", "x3"), X, y)


def boundary_model(at: float) -> LogisticModel:
    """A sharp logistic model of the rule x1 > ``at``."""
    return LogisticModel(
        feature_names=("x1", "x2", "x3"),
        coef=np.array([8.0, 0.0, 0.0]),
        intercept=-8.0 * at,
        mean=np.zeros(3),
        scale=np.ones(3),
        threshold=0.5,
    )


def test_a_moved_threshold_cannot_hide_behind_auc(fast_clock):
    """The champion learned x1 > 0; the world now says x1 > 0.5. Both rank the rows alike (the
    same AUC), so the AUC gate sees nothing; log loss row by row does."""
    holdout = moved_boundary(400, seed=7, shift=0.5)
    champion, challenger = boundary_model(0.0), boundary_model(0.5)

    by_auc = judge(challenger, holdout, AUC, champion, 1, fast_clock)
    by_default = judge(challenger, holdout, POLICY, champion, 1, fast_clock)

    assert by_auc.challenger_metrics["auc"] == pytest.approx(by_auc.champion_metrics["auc"])
    assert by_auc.decision == "reject"
    assert by_default.decision == "promote"
    assert by_default.challenger_metrics["accuracy"] > by_default.champion_metrics["accuracy"]


class FixedScores:
    """A model that answers the given score for each row (rows in hold-out order)."""

    feature_names = ("x1", "x2", "x3")
    threshold = 0.5

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.scores if len(X) == len(self.scores) else self.scores[: len(X)]


def test_noise_cannot_promote(fast_clock):
    """Challenger and champion equally good by construction (the same true logit, each with
    its own noise): the paired test promotes at most about its level, 5% of the time."""
    rng = np.random.default_rng(11)
    promoted, trials = 0, 200
    for _ in range(trials):
        logit = rng.normal(0, 2, size=300)
        y = (rng.random(300) < 1 / (1 + np.exp(-logit))).astype(np.int8)
        holdout = Dataset(("x1", "x2", "x3"), rng.normal(size=(300, 3)), y)
        champion, challenger = (
            FixedScores(1 / (1 + np.exp(-(logit + rng.normal(0, 0.5, size=300))))) for _ in range(2)
        )
        verdict = judge(challenger, holdout, POLICY, champion, 1, fast_clock)
        promoted += verdict.decision == "promote"
    assert promoted / trials <= 0.09, promoted


def test_a_first_model_must_beat_the_base_rate_significantly(models, fast_clock):
    good = judge(models.good, models.holdout, POLICY, clock=fast_clock)
    knows_nothing = judge(ConstantModel(0.5), models.holdout, POLICY, clock=fast_clock)

    assert good.decision == "promote"
    assert "of the hold-out's base rate" in gate(good, "champion_delta").detail
    assert knows_nothing.decision == "reject"
    assert not gate(knows_nothing, "paired_test").passed


def test_small_holdout_is_rejected(models, fast_clock):
    verdict = judge(models.good, models.holdout.tail(40), POLICY, clock=fast_clock)

    assert verdict.decision == "reject"
    size = gate(verdict, "holdout_size")
    assert (size.observed, size.threshold) == (40, 100)
    assert verdict.reasons == ["holdout_size failed: hold-out has 40 rows < minimum 100"]


def test_holdout_missing_a_feature_is_a_reject(models, fast_clock):
    holdout = models.holdout
    narrow = type(holdout)(holdout.feature_names[:2], holdout.X[:, :2], holdout.y)

    verdict = judge(models.good, narrow, POLICY, clock=fast_clock)

    assert verdict.decision == "reject"
    assert "lacks model features ['x3']" in gate(verdict, "output_sanity").detail


def test_load_failure_is_a_reject_with_the_reason():
    verdict = load_failure("challenger artifact", "integrity check failed")

    assert verdict.decision == "reject"
    assert verdict.gates[0].name == "load"
    assert verdict.reasons == [
        "load failed: could not load the challenger artifact: integrity check failed"
    ]
