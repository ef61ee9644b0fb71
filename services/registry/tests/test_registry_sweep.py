"""No version stays ``registered`` silently: the sweep re-announces a version without a
verdict (a new event id, the current champion) up to the limit, then marks it ``stale``; a
version whose verdict could not be applied is ``stale`` at once; each step is audited with its
reason and is a compare-and-set (two sweeping replicas act once)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from modelbus_contracts import ModelRegistered
from modelbus_contracts.events import Rollout
from modelbus_registry.domain import sweep_action

MODEL = "churn"
TIMEOUT = 900.0


async def _register(wired, mk, seed=0):
    ref = await mk.put_artifact(wired.store, MODEL, seed=seed)
    return await wired.service.register(mk.trained(MODEL, ref))


async def _sweep(wired, max_reannounce=2):
    return await wired.service.sweep_registered(timeout_s=TIMEOUT, max_reannounce=max_reannounce)


def _wait(wired, seconds=TIMEOUT):
    wired.service.clock.now += timedelta(seconds=seconds)


async def _actions(wired):
    return [(r.action, r.version) for r in reversed(await wired.service.audit(MODEL, 100))]


async def test_a_version_without_a_verdict_is_re_announced_then_marked_stale(wired, mk):
    first = await _register(wired, mk)
    assert await _sweep(wired) == []  # within the timeout: nothing
    _wait(wired)
    assert await _sweep(wired) == [(MODEL, 1, "reannounce")]
    assert await _sweep(wired) == []  # the timeout counts again from the re-announcement
    again = wired.published.of(ModelRegistered)[-1]
    assert again.event_id != first.event_id  # a new id: a consumer's ledger lets it through
    assert (again.version, again.run_id, again.artifact) == (1, first.run_id, first.artifact)
    assert (again.correlation_id, again.causation_id) == (first.correlation_id, first.causation_id)
    _wait(wired)
    assert await _sweep(wired) == [(MODEL, 1, "reannounce")]
    _wait(wired)
    assert await _sweep(wired) == [(MODEL, 1, "stale")]  # two re-announcements: the limit
    assert len(wired.published.of(ModelRegistered)) == 3
    assert (await wired.service.get_version(MODEL, 1)).status == "stale"
    assert await _actions(wired) == [
        ("registered", 1),
        ("registration_reannounced", 1),
        ("registration_reannounced", 1),
        ("version_stale", 1),
    ]
    [stale] = [r for r in await wired.service.audit(MODEL, 10) if r.action == "version_stale"]
    assert "no verdict from the deployer" in stale.reason
    _wait(wired)
    assert await _sweep(wired) == []  # stale is final for the sweep


async def test_a_re_announcement_carries_the_champion_of_now(wired, mk):
    await _register(wired, mk, seed=0)
    await wired.service.record_evaluation(mk.evaluated(MODEL, 1, None))
    await _register(wired, mk, seed=1)
    _wait(wired)
    assert await _sweep(wired) == [(MODEL, 2, "reannounce")]  # v1 is champion: not swept
    again = wired.published.of(ModelRegistered)[-1]
    assert again.version == 2 and again.champion.version == 1


async def test_a_verdict_after_a_re_announcement_ends_the_sweeps(wired, mk):
    await _register(wired, mk)
    _wait(wired)
    await _sweep(wired)
    await wired.service.record_evaluation(mk.evaluated(MODEL, 1, None, decision="reject"))
    _wait(wired, 10 * TIMEOUT)
    assert await _sweep(wired) == []
    assert (await wired.service.get_version(MODEL, 1)).status == "rejected"


async def test_a_verdict_that_could_not_apply_is_stale_at_once_with_its_cause(wired, mk):
    for seed in (0, 1):
        await _register(wired, mk, seed=seed)
    await wired.service.record_evaluation(mk.evaluated(MODEL, 2, None))
    await wired.service.record_evaluation(mk.evaluated(MODEL, 1, None))  # older: refused
    assert (await wired.service.get_version(MODEL, 1)).status == "registered"
    _wait(wired)
    assert await _sweep(wired) == [(MODEL, 1, "stale")]  # no re-announcement: decided once
    assert len(wired.published.of(ModelRegistered)) == 2
    [stale] = [r for r in await wired.service.audit(MODEL, 20) if r.action == "version_stale"]
    assert "'promote'" in stale.reason and "promotion_refused" in stale.reason
    assert stale.details["refusal"] == "promotion_refused"


async def test_a_version_waiting_for_a_person_or_rolling_out_is_not_swept(wired, mk):
    await _register(wired, mk, seed=0)
    await wired.service.record_evaluation(mk.evaluated(MODEL, 1, None))  # champion
    await _register(wired, mk, seed=1)
    await _register(wired, mk, seed=2)
    await wired.service.record_evaluation(mk.evaluated(MODEL, 2, 1, decision="pending_approval"))
    shadow = mk.evaluated(MODEL, 3, 1, decision="shadow").model_copy(
        update={"rollout": Rollout(mode="shadow")}
    )
    await wired.service.record_evaluation(shadow)
    assert (await wired.service.aliases(MODEL)).challenger == 3
    _wait(wired, 10 * TIMEOUT)
    assert await _sweep(wired) == []


async def test_two_replicas_sweeping_at_once_act_once(wired, mk):
    await _register(wired, mk)
    _wait(wired)
    done = await asyncio.gather(_sweep(wired), _sweep(wired), _sweep(wired))
    assert sorted(len(d) for d in done) == [0, 0, 1]
    assert len(wired.published.of(ModelRegistered)) == 2
    assert [a for a, _ in await _actions(wired)].count("registration_reannounced") == 1


async def test_a_verdict_arriving_during_a_sweep_wins(wired, mk):
    await _register(wired, mk)
    _wait(wired)
    read = await wired.repo.versions_in_status("registered", 10)  # the sweep reads ...
    await wired.service.record_evaluation(mk.evaluated(MODEL, 1, None, decision="reject"))

    async def before_the_verdict(status, limit):
        return read

    wired.repo.versions_in_status = before_the_verdict  # ... then the verdict lands
    assert await _sweep(wired) == []
    assert await wired.service.sweep_registered(timeout_s=TIMEOUT, max_reannounce=0) == []
    assert len(wired.published.of(ModelRegistered)) == 1
    assert (await wired.service.get_version(MODEL, 1)).status == "rejected"
    assert [a for a, _ in await _actions(wired)] == ["registered", "evaluated", "rejected"]


async def test_a_late_verdict_on_a_stale_version_still_applies(wired, mk):
    for seed in (0, 1):
        await _register(wired, mk, seed=seed)
    _wait(wired)
    await wired.service.sweep_registered(timeout_s=TIMEOUT, max_reannounce=0)
    assert {v.status for v in await wired.service.list_versions(MODEL)} == {"stale"}
    await wired.service.record_evaluation(mk.evaluated(MODEL, 1, None, decision="reject"))
    await wired.service.record_evaluation(mk.evaluated(MODEL, 2, None))
    statuses = [v.status for v in await wired.service.list_versions(MODEL)]
    assert statuses == ["rejected", "champion"]


def test_the_sweep_rule():
    doc = {
        "version": 4,
        "status": "registered",
        "created_at": "2026-01-01T00:00:00+00:00",
        "evaluation": None,
    }
    t0 = datetime(2026, 1, 1, tzinfo=UTC)  # when it was announced
    aliases = {"champion": 1, "challenger": None, "previous": None}
    assert sweep_action(doc, aliases, t0 + timedelta(seconds=899), 900, 3) is None
    step = sweep_action(doc, aliases, t0 + timedelta(seconds=900), 900, 3)
    assert step.action == "reannounce" and "1 of 3" in step.reason
    late = {**doc, "reannounced": 3, "announced_at": "2026-01-01T01:00:00+00:00"}
    assert sweep_action(late, aliases, t0 + timedelta(seconds=4000), 900, 3) is None
    assert sweep_action(late, aliases, t0 + timedelta(seconds=4500), 900, 3).action == "stale"
    assert (
        sweep_action({**doc, "status": "rejected"}, aliases, t0 + timedelta(days=9), 900, 3) is None
    )
