"""The service layer on fakes: registration, evaluation, promotion by CAS, aliases, rollback,
and the audit trail behind each decision."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from modelbus_contracts import ModelPromoted, ModelRegistered, ModelRolledBack
from modelbus_contracts.api import AliasUpdate, RollbackRequest
from modelbus_registry.domain import Conflict, NotFound

MODEL = "churn"


async def actions(wired, model=MODEL) -> list[str]:
    return [r.action for r in await wired.service.audit(model, 100)]


async def register(wired, mk, seed=0, run_id=None):
    ref = await mk.put_artifact(wired.store, MODEL, seed=seed)
    event = mk.trained(MODEL, ref, run_id=run_id)
    return event, await wired.service.register(event)


async def promoted_to(wired, mk, version, champion):
    return await wired.service.record_evaluation(mk.evaluated(MODEL, version, champion))


async def test_register_verifies_stores_audits_and_emits(wired, mk):
    event, registered = await register(wired, mk)
    assert isinstance(registered, ModelRegistered)
    assert registered.version == 1
    assert registered.champion is None
    assert registered.correlation_id == event.correlation_id
    assert registered.causation_id == event.event_id
    assert wired.published.of(ModelRegistered) == [registered]
    view = await wired.service.get_version(MODEL, 1)
    assert (view.status, view.run_id, view.artifact) == ("registered", event.run_id, event.artifact)
    assert await actions(wired) == ["registered"]


async def test_versions_count_up_and_carry_the_champion_summary(wired, mk):
    await register(wired, mk)
    await promoted_to(wired, mk, 1, None)
    _, second = await register(wired, mk, seed=1)
    assert second.version == 2
    assert second.champion is not None
    assert second.champion.version == 1
    assert second.champion.holdout == (await wired.service.get_version(MODEL, 1)).lineage.holdout


async def test_same_run_id_registers_once(wired, mk):
    event, _ = await register(wired, mk)
    again = event.model_copy(update={"event_id": uuid.uuid4()})
    assert await wired.service.register(again) is None
    assert len(await wired.service.list_versions(MODEL)) == 1
    assert len(wired.published.of(ModelRegistered)) == 1
    assert (await actions(wired))[0] == "registration_duplicate"


async def test_a_redelivered_event_changes_nothing_its_event_went_with_the_write(wired, mk):
    event, first = await register(wired, mk)
    assert await wired.service.register(event) is None
    assert len(await wired.service.list_versions(MODEL)) == 1
    assert wired.published.of(ModelRegistered) == [first]
    assert (await actions(wired))[0] == "registered"


@pytest.mark.parametrize("problem", ["corrupt", "missing", "unloadable"])
async def test_bad_artifacts_are_rejected_without_a_version(wired, mk, problem):
    data = mk.artifact_bytes()
    ref = mk.artifact_ref(MODEL, data)
    if problem == "corrupt":
        await wired.store.put(ref.uri, data.replace(b'"threshold"', b'"threshold" '))
    elif problem == "unloadable":
        junk = b'{"format": "modelbus.logreg.v1"}'
        ref = mk.artifact_ref(MODEL, junk)
        await wired.store.put(ref.uri, junk)
    assert await wired.service.register(mk.trained(MODEL, ref)) is None
    assert wired.published.events == []
    with pytest.raises(NotFound):
        await wired.service.list_versions(MODEL)
    audit = await wired.service.audit(MODEL, 10)
    assert [r.action for r in audit] == ["registration_rejected"]
    expected = {"corrupt": "does not match", "missing": "not found", "unloadable": "load"}
    assert expected[problem] in audit[0].reason


async def test_promote_moves_champion_and_previous_with_statuses(wired, mk):
    await register(wired, mk)
    await register(wired, mk, seed=1)
    first = await promoted_to(wired, mk, 1, None)
    assert first.previous_version is None
    evaluation = mk.evaluated(MODEL, 2, 1)
    second = await wired.service.record_evaluation(evaluation)
    assert isinstance(second, ModelPromoted)
    assert (second.version, second.previous_version) == (2, 1)
    assert second.reason == "auc gate passed"
    assert second.causation_id == evaluation.event_id
    aliases = await wired.service.aliases(MODEL)
    assert (aliases.champion, aliases.previous) == (2, 1)
    statuses = [v.status for v in await wired.service.list_versions(MODEL)]
    assert statuses == ["previous", "champion"]
    stored = (await wired.service.get_version(MODEL, 2)).evaluation
    assert stored["decision"] == "promote"
    assert stored["challenger_metrics"] == {"auc": 0.85}
    audit = await wired.service.audit(MODEL, 2)
    assert [r.action for r in audit] == ["promoted", "evaluated"]
    assert audit[1].details["gates"][0]["observed"] == 0.05
    assert audit[0].details["from"] == 1


async def test_stale_evaluation_is_a_conflict_without_event(wired, mk):
    for seed in range(3):
        await register(wired, mk, seed=seed)
    await promoted_to(wired, mk, 1, None)
    await promoted_to(wired, mk, 2, 1)
    before = len(wired.published.of(ModelPromoted))
    assert await promoted_to(wired, mk, 3, 1) is None  # judged against v1, champion is v2
    assert len(wired.published.of(ModelPromoted)) == before
    assert (await wired.service.aliases(MODEL)).champion == 2
    audit = (await wired.service.audit(MODEL, 1))[0]
    assert audit.action == "promotion_conflict"
    assert "champion is version 2" in audit.reason


async def test_an_older_version_is_never_promoted(wired, mk):
    await register(wired, mk)
    await register(wired, mk, seed=1)
    await promoted_to(wired, mk, 2, None)
    assert await promoted_to(wired, mk, 1, 2) is None
    audit = (await wired.service.audit(MODEL, 1))[0]
    assert (audit.action, audit.version) == ("promotion_refused", 1)
    assert "older" in audit.reason
    assert (await wired.service.aliases(MODEL)).champion == 2


async def test_a_redelivered_promotion_changes_nothing_and_emits_nothing_new(wired, mk):
    await register(wired, mk)
    evaluation = mk.evaluated(MODEL, 1, None)
    first = await wired.service.record_evaluation(evaluation)
    assert await wired.service.record_evaluation(evaluation) is None
    assert wired.published.of(ModelPromoted) == [first]
    assert (await actions(wired)).count("promoted") == 1


async def test_reject_marks_the_version(wired, mk):
    await register(wired, mk)
    assert await wired.service.record_evaluation(mk.evaluated(MODEL, 1, None, "reject")) is None
    assert (await wired.service.get_version(MODEL, 1)).status == "rejected"
    assert (await actions(wired))[:2] == ["rejected", "evaluated"]
    assert wired.published.of(ModelPromoted) == []


async def test_evaluation_of_an_unknown_version_is_audited(wired, mk):
    assert await wired.service.record_evaluation(mk.evaluated(MODEL, 7, None)) is None
    assert await actions(wired) == ["evaluation_ignored"]


async def test_set_champion_by_cas_emits_a_promotion(wired, mk):
    await register(wired, mk)
    view = await wired.service.set_alias(
        MODEL, "champion", AliasUpdate(version=1, expected_version=None, reason="manual"), "alice"
    )
    assert view.champion == 1
    (event,) = wired.published.of(ModelPromoted)
    assert (event.producer, event.reason, event.version) == ("registry-api", "manual", 1)
    audit = (await wired.service.audit(MODEL, 1))[0]
    assert (audit.action, audit.actor, audit.event_id) == (
        "alias_set",
        "alice",
        str(event.event_id),
    )


async def test_set_alias_conflict_changes_nothing(wired, mk):
    await register(wired, mk)
    await register(wired, mk, seed=1)
    await promoted_to(wired, mk, 1, None)
    with pytest.raises(Conflict, match="at version 1, not the expected None"):
        await wired.service.set_alias(
            MODEL, "champion", AliasUpdate(version=2, expected_version=None, reason="x")
        )
    assert (await wired.service.aliases(MODEL)).champion == 1
    assert (await actions(wired))[0] == "promotion_conflict"


async def test_set_challenger_emits_nothing(wired, mk):
    await register(wired, mk)
    view = await wired.service.set_alias(
        MODEL, "challenger", AliasUpdate(version=1, expected_version=None, reason="shadow")
    )
    assert view.challenger == 1
    assert wired.published.of(ModelPromoted) == []
    assert (await wired.service.alias_target(MODEL, "challenger")).version == 1


async def test_set_alias_to_an_unknown_version_is_not_found(wired, mk):
    await register(wired, mk)
    with pytest.raises(NotFound, match="version 5"):
        await wired.service.set_alias(
            MODEL, "champion", AliasUpdate(version=5, expected_version=None, reason="x")
        )


async def test_rollback_restores_previous(wired, mk):
    await register(wired, mk)
    await register(wired, mk, seed=1)
    await promoted_to(wired, mk, 1, None)
    await promoted_to(wired, mk, 2, 1)
    view = await wired.service.rollback(MODEL, RollbackRequest(reason="regression"))
    assert (view.champion, view.previous) == (1, None)
    (event,) = wired.published.of(ModelRolledBack)
    assert (event.from_version, event.to_version, event.reason) == (2, 1, "regression")
    assert event.artifact == (await wired.service.get_version(MODEL, 1)).artifact
    assert [v.status for v in await wired.service.list_versions(MODEL)] == ["champion", "retired"]
    assert (await actions(wired))[0] == "rolled_back"
    with pytest.raises(Conflict, match="no previous"):
        await wired.service.rollback(MODEL, RollbackRequest(reason="again"))
    assert (await actions(wired))[0] == "rollback_refused"


async def test_artifact_is_served_only_when_it_matches(wired, mk):
    await register(wired, mk)
    assert await wired.service.artifact(MODEL, 1) == mk.artifact_bytes()
    ref = (await wired.service.get_version(MODEL, 1)).artifact
    await wired.store.put(ref.uri, b"tampered")
    with pytest.raises(Conflict, match="does not match"):
        await wired.service.artifact(MODEL, 1)
    assert (await actions(wired))[0] == "artifact_integrity_failed"


async def test_reads_of_unknown_things_are_not_found(wired, mk):
    for call in (
        wired.service.get_model("nope"),
        wired.service.get_version("nope", 1),
        wired.service.aliases("nope"),
        wired.service.alias_target("nope", "champion"),
    ):
        with pytest.raises(NotFound):
            await call
    await register(wired, mk)
    with pytest.raises(NotFound, match="not set"):
        await wired.service.alias_target(MODEL, "champion")
    models = await wired.service.list_models()
    assert [(m.name, m.version_count, m.latest_version) for m in models] == [(MODEL, 1, 1)]


async def test_racing_evaluations_promote_exactly_one(wired, mk):
    for seed in range(3):
        await register(wired, mk, seed=seed)
    await promoted_to(wired, mk, 1, None)
    read_model = wired.repo.get_model

    async def yielding_get_model(name):  # let the other evaluation run between read and CAS
        model = await read_model(name)
        await asyncio.sleep(0)
        return model

    wired.repo.get_model = yielding_get_model
    results = await asyncio.gather(promoted_to(wired, mk, 2, 1), promoted_to(wired, mk, 3, 1))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    aliases = await wired.service.aliases(MODEL)
    assert (aliases.champion, aliases.previous) == (winners[0].version, 1)
    assert (await actions(wired)).count("promotion_conflict") == 1
