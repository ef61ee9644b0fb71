"""Rollouts and automatic rollback in the registry, on fakes: shadow/canary decisions set the
challenger by compare-and-set and announce ModelRolloutChanged; ModelRollbackRequested rolls the
champion back only while it is still the version the deployer watched, once."""

from __future__ import annotations

from modelbus_contracts import (
    ModelPromoted,
    ModelRollbackRequested,
    ModelRolledBack,
    ModelRolloutChanged,
    Rollout,
)

MODEL = "churn"


async def actions(wired) -> list[str]:
    return [r.action for r in await wired.service.audit(MODEL, 100)]


async def three_versions_champion_1(wired, mk) -> None:
    for seed in range(3):
        ref = await mk.put_artifact(wired.store, MODEL, seed=seed)
        await wired.service.register(mk.trained(MODEL, ref))
    await wired.service.record_evaluation(mk.evaluated(MODEL, 1, None))


def stage(mk, version, champion, decision, mode, fraction=0.0, step=0):
    event = mk.evaluated(MODEL, version, champion, "promote")
    return event.model_copy(
        update={"decision": decision, "rollout": Rollout(mode=mode, fraction=fraction, step=step)}
    )


def rollback_request(from_version, to_version=1):
    return ModelRollbackRequested(
        producer="deployer",
        model_name=MODEL,
        from_version=from_version,
        to_version=to_version,
        reason="fallback_rate 0.4 > 0.05",
        evidence={"fallback_rate": 0.4},
    )


async def test_canary_sets_the_challenger_and_announces_the_rollout(wired, mk):
    await three_versions_champion_1(wired, mk)

    await wired.service.record_evaluation(stage(mk, 2, 1, "canary", "canary", 0.1))
    await wired.service.record_evaluation(stage(mk, 2, 1, "canary", "canary", 0.5, 1))

    model = await wired.service.get_model(MODEL)
    assert model.aliases.challenger == 2 and model.aliases.champion == 1
    assert (model.rollout.mode, model.rollout.version, model.rollout.fraction) == ("canary", 2, 0.5)
    first, second = wired.published.of(ModelRolloutChanged)
    assert (first.mode, first.fraction, second.fraction) == ("canary", 0.1, 0.5)
    assert (await actions(wired))[0] == "rollout_changed"

    promoted = await wired.service.record_evaluation(mk.evaluated(MODEL, 2, 1))

    assert isinstance(promoted, ModelPromoted)
    model = await wired.service.get_model(MODEL)
    assert (model.aliases.champion, model.aliases.challenger) == (2, None)
    assert model.rollout.mode == "none"


async def test_a_rejected_shadow_leaves_live_traffic(wired, mk):
    await three_versions_champion_1(wired, mk)
    await wired.service.record_evaluation(stage(mk, 2, 1, "shadow", "shadow"))

    await wired.service.record_evaluation(mk.evaluated(MODEL, 2, 1, "reject"))

    model = await wired.service.get_model(MODEL)
    assert model.aliases.challenger is None
    assert model.rollout.mode == "none"
    assert [e.mode for e in wired.published.of(ModelRolloutChanged)] == ["shadow", "none"]


async def test_rollout_of_a_stale_or_old_version_is_refused(wired, mk):
    await three_versions_champion_1(wired, mk)
    await wired.service.record_evaluation(mk.evaluated(MODEL, 3, 1))  # champion 3

    await wired.service.record_evaluation(stage(mk, 2, 1, "shadow", "shadow"))

    assert wired.published.of(ModelRolloutChanged) == []
    assert (await actions(wired))[0] == "rollout_refused"
    assert (await wired.service.get_model(MODEL)).aliases.challenger is None


async def test_pending_approval_changes_nothing_but_the_audit(wired, mk):
    await three_versions_champion_1(wired, mk)

    await wired.service.record_evaluation(mk.evaluated(MODEL, 2, 1, "pending_approval"))

    assert (await wired.service.aliases(MODEL)).champion == 1
    assert (await actions(wired))[0] == "approval_pending"
    assert (await wired.service.get_version(MODEL, 2)).status == "registered"


async def test_rollback_request_rolls_back_once_and_never_over_a_newer_champion(wired, mk):
    await three_versions_champion_1(wired, mk)
    await wired.service.record_evaluation(mk.evaluated(MODEL, 2, 1))
    request = rollback_request(2)

    rolled = await wired.service.request_rollback(request)
    again = await wired.service.request_rollback(rollback_request(2))

    assert isinstance(rolled, ModelRolledBack)
    assert (rolled.from_version, rolled.to_version) == (2, 1)
    assert rolled.causation_id == request.event_id
    assert rolled.reason == "fallback_rate 0.4 > 0.05"
    assert again is None
    assert len(wired.published.of(ModelRolledBack)) == 1
    audit = await wired.service.audit(MODEL, 100)
    assert audit[0].action == "rollback_skipped"
    assert audit[1].action == "rolled_back"
    assert audit[1].details["evidence"] == {"fallback_rate": 0.4}
    assert (await wired.service.aliases(MODEL)).champion == 1

    await wired.service.record_evaluation(mk.evaluated(MODEL, 3, 1))
    assert await wired.service.request_rollback(rollback_request(1)) is None
    assert (await wired.service.aliases(MODEL)).champion == 3
