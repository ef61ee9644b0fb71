"""Unit tests of the rollout stage machine and the live rules (pure, no servers)."""

from __future__ import annotations

import pytest

from modelbus_deployer.domain import Policy
from modelbus_deployer.rollout import LiveWindow, after_pass, first_stage, judge_live

CANARY = Policy(rollout="canary", canary_steps=(0.1, 0.5), canary_step_predictions=200)
SHADOW = Policy(rollout="shadow", shadow_min_predictions=300)


def window(
    predictions=0, fallbacks=0, latency=1.0, labelled=0, correct=0, agree=None, champion=None
):
    """A live window; ``champion`` = (labelled, correct) of the champion on the same traffic."""
    w = LiveWindow()
    for _ in range(predictions):
        w.arm.predicted(latency)
    w.fallbacks = fallbacks
    for i in range(labelled):
        w.arm.labelled_as(i < correct)
    if champion is not None:
        for i in range(champion[0]):
            w.baseline.labelled_as(i < champion[1])
    if agree is not None:
        compared, agreed = agree
        for i in range(compared):
            w.compare(i < agreed)
    return w


def test_stage_machine_immediate_shadow_canary_and_approval():
    assert first_stage(Policy(), has_champion=True).decision == "promote"
    assert first_stage(SHADOW, has_champion=False).decision == "promote"  # nothing to shadow
    shadow = first_stage(SHADOW, has_champion=True)
    assert (shadow.decision, shadow.rollout.mode, shadow.live) == ("shadow", "shadow", "shadow")
    canary = first_stage(CANARY, has_champion=True)
    assert (canary.decision, canary.rollout.fraction, canary.rollout.step) == ("canary", 0.1, 0)
    step2 = after_pass(CANARY, canary.rollout)
    assert (step2.decision, step2.rollout.fraction, step2.rollout.step) == ("canary", 0.5, 1)
    assert after_pass(CANARY, step2.rollout).decision == "promote"
    assert after_pass(SHADOW, shadow.rollout).live == "watch"
    gated = Policy(require_approval=True, rollout="canary")
    assert first_stage(gated, has_champion=True).decision == "pending_approval"
    assert first_stage(gated, has_champion=True, approved=True).decision == "canary"


def test_waits_until_the_sample_then_passes_with_numbers():
    assert judge_live(window(199), CANARY, "canary", None, "v2").outcome == "wait"

    verdict = judge_live(window(200), CANARY, "canary", None, "v2")

    assert verdict.outcome == "pass"
    size = verdict.gates[0]
    assert (size.name, size.observed, size.threshold) == ("live_sample_size", 200, 200)
    assert {g.name for g in verdict.gates} >= {"fallback_rate", "live_latency_p99"}
    assert verdict.evidence["predictions"] == 200
    assert verdict.evidence["latency_p99_ms"] == pytest.approx(1.0)


def test_fallback_burst_fails_before_the_sample_is_complete():
    verdict = judge_live(window(90, fallbacks=30), Policy(), "watch", None, "v2")

    assert verdict.outcome == "fail"
    assert verdict.reasons[0].startswith("fallback_rate failed: fallback rate 0.250 > maximum")
    assert verdict.evidence["fallback_rate"] == 0.25


def test_too_few_predictions_judge_nothing():
    verdict = judge_live(window(10, fallbacks=10), Policy(), "watch", None, "v2")
    assert verdict.outcome == "wait" and verdict.gates == []


def test_latency_p99_over_budget_fails():
    verdict = judge_live(window(150, latency=400.0), Policy(), "watch", None, "v3")
    assert verdict.outcome == "fail"
    assert "live latency p99 400.00 ms > budget 250 ms" in verdict.reasons[0]


def test_live_accuracy_against_the_holdout_once_enough_labels():
    few = window(150, labelled=100, correct=10)
    assert judge_live(few, Policy(), "watch", 0.9, "v2").outcome == "wait"
    bad = window(150, labelled=200, correct=150)  # 0.75 < 0.9 - 0.05
    verdict = judge_live(bad, Policy(), "watch", 0.9, "v2")
    assert verdict.outcome == "fail"
    [gate] = [g for g in verdict.gates if g.name == "live_accuracy"]
    noise = 2 * (0.75 * 0.25 / 200) ** 0.5
    assert gate.observed == 0.75 and gate.threshold == pytest.approx(0.85 - noise)
    fine = window(150, labelled=200, correct=176)
    assert judge_live(fine, Policy(), "watch", 0.9, "v2").outcome == "wait"
    # 0.825 is within noise when the hold-out had only 20 rows
    noisy = judge_live(window(150, labelled=200, correct=165), Policy(), "watch", 0.9, "v2", 20)
    assert noisy.outcome == "wait"
    assert "sampling noise" in next(g for g in noisy.gates if g.name == "live_accuracy").detail


def test_agreement_is_only_a_floor_that_catches_a_broken_shadow():
    verdict = judge_live(window(300, agree=(300, 120)), SHADOW, "shadow", None, "v2")
    assert verdict.outcome == "fail"
    assert (
        "shadow agrees with the champion on 0.400 of 300 requests < floor 0.5"
        in (verdict.reasons[0])
    )
    good = judge_live(window(300, agree=(300, 290)), SHADOW, "shadow", None, "v2")
    assert good.outcome == "pass"
    assert good.evidence["agreement"] == pytest.approx(290 / 300)


def test_a_better_shadow_that_disagrees_where_the_champion_is_wrong_passes():
    """The issue's case: +0.043 better on the hold-out, live agreement 0.862 (the old default
    floor 0.9 rejected it). Labels show it right where the champion is wrong."""
    w = window(300, agree=(300, 259), labelled=300, correct=282, champion=(300, 243))
    verdict = judge_live(w, SHADOW, "shadow", 0.94, "v2")
    assert verdict.outcome == "pass"
    vs = next(g for g in verdict.gates if g.name == "live_vs_champion")
    assert vs.passed and vs.observed == pytest.approx(282 / 300 - 243 / 300)


def test_a_shadow_significantly_worse_than_the_champion_on_labels_fails():
    w = window(300, agree=(300, 260), labelled=300, correct=210, champion=(300, 270))
    verdict = judge_live(w, SHADOW, "shadow", None, "v2")
    assert verdict.outcome == "fail"
    assert any(r.startswith("live_vs_champion failed") for r in verdict.reasons)
    close = window(300, agree=(300, 260), labelled=300, correct=265, champion=(300, 270))
    assert judge_live(close, SHADOW, "shadow", None, "v2").outcome == "pass"  # noise


def test_a_load_failure_fails_at_once():
    w = window(0)
    w.load_failures.append("scorer-a: integrity: sha256 mismatch")
    verdict = judge_live(w, Policy(), "watch", None, "v2")
    assert verdict.outcome == "fail"
    assert "could not load v2: scorer-a: integrity" in verdict.reasons[0]


def failing_shadow(compared: int, errors: int, predictions: int | None = None) -> LiveWindow:
    w = window(compared if predictions is None else predictions, agree=(compared, compared))
    for i in range(errors):
        w.shadow_failed(f"req-{i}: ValueError: boom")
    return w


def test_a_shadow_that_raises_too_often_fails_with_its_rate():
    # 4 of 300 requests = 0.013 > 0.01, judged before the shadow sample is complete
    verdict = judge_live(failing_shadow(296, 4, predictions=296), SHADOW, "shadow", None, "v2")

    assert verdict.outcome == "fail"
    [gate] = [g for g in verdict.gates if g.name == "shadow_error_rate"]
    assert not gate.passed
    assert gate.observed == pytest.approx(4 / 300) and gate.threshold == 0.01
    assert "shadow v2 raised on 4 of 300 requests (rate 0.013 > maximum 0.01)" in gate.detail
    assert "first error: req-0: ValueError: boom" in gate.detail
    assert verdict.evidence["shadow_errors"] == 4
    assert verdict.evidence["shadow_error_rate"] == round(4 / 300, 6)


def test_a_few_shadow_errors_within_the_rate_pass():
    verdict = judge_live(failing_shadow(300, 3), SHADOW, "shadow", None, "v2")  # 3/303 < 0.01

    assert verdict.outcome == "pass"
    [gate] = [g for g in verdict.gates if g.name == "shadow_error_rate"]
    assert gate.passed and gate.observed == pytest.approx(3 / 303)


def test_a_shadow_that_never_answers_fails_even_with_a_lenient_rate():
    lenient = Policy(rollout="shadow", shadow_min_predictions=300, max_shadow_error_rate=1.0)
    assert judge_live(failing_shadow(0, 299), lenient, "shadow", None, "v2").outcome == "wait"

    verdict = judge_live(failing_shadow(0, 300), lenient, "shadow", None, "v2")

    assert verdict.outcome == "fail"
    assert "never answered once in 300 attempts" in verdict.reasons[0]
    assert verdict.gates[-1].observed == 1.0


def test_shadow_errors_need_data_and_are_judged_in_shadow_only():
    few = judge_live(failing_shadow(0, 99), SHADOW, "shadow", None, "v2")
    assert few.outcome == "wait" and few.gates == []  # below min_live_predictions
    canary = judge_live(failing_shadow(200, 100), CANARY, "canary", None, "v2")
    assert "shadow_error_rate" not in {g.name for g in canary.gates}


def test_a_window_survives_its_checkpoint_and_merges_what_another_copy_counted():
    w = window(3, fallbacks=1, latency=7.0, labelled=2, correct=1, agree=(2, 1))
    w.shadow_failed("r: boom")
    w.load_failures.append("s1: integrity")
    restored = LiveWindow.from_dict(w.to_dict())
    assert restored.to_dict() == w.to_dict()
    assert restored.evidence() == w.evidence()

    base = w.copy()
    for latency in (20.0, 30.0):
        w.arm.predicted(latency)
    w.compare(True)
    w.shadow_failed("r2: boom")
    delta = w.since(base)
    assert (delta.arm.predictions, list(delta.arm.latencies), delta.compared) == (2, [20, 30], 1)
    assert (delta.arm.labelled, delta.shadow_errors, delta.load_failures) == (0, 1, [])

    other = window(5, latency=1.0)
    other.absorb(delta)
    assert (other.arm.predictions, other.compared, other.shadow_errors) == (7, 1, 1)
    assert sorted(other.arm.latencies)[-2:] == [20.0, 30.0]
