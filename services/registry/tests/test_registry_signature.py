"""A version's signature (features with kinds, task, classes): stored with the version, returned
in its view, and carried by every event that tells the scorer and the monitor what to serve
(ModelRegistered and its champion summary, ModelPromoted, ModelRolledBack). Versions stored
before signatures keep working (no signature: binary, every feature a number)."""

from __future__ import annotations

from modelbus_contracts import ModelPromoted, ModelRegistered, ModelRolledBack, Signature
from modelbus_contracts.api import AliasUpdate, RollbackRequest

SIGNATURE = Signature.model_validate(
    {
        "features": [
            {"name": "x1", "kind": "number", "nullable": True},
            {"name": "x2", "kind": "category", "categories": ["a", "b"]},
        ],
        "task": "multiclass",
        "classes": ["high", "low", "mid"],
    }
)


async def _register(wired, mk, seed: int, signature: Signature | None = SIGNATURE) -> int:
    ref = await mk.put_artifact(wired.store, "m", seed)
    event = mk.trained("m", ref).model_copy(update={"signature": signature})
    registered = await wired.service.register(event)
    assert registered is not None
    return registered.version


async def test_the_signature_is_stored_returned_and_announced(wired, mk):
    version = await _register(wired, mk, 0)

    view = await wired.service.get_version("m", version)
    assert view.signature == SIGNATURE
    stored = await wired.repo.get_version("m", version)
    assert stored["signature"]["task"] == "multiclass"
    assert stored["signature"]["features"][1]["categories"] == ["a", "b"]
    [registered] = wired.published.of(ModelRegistered)
    assert registered.signature == SIGNATURE and registered.champion is None


async def test_the_champion_summary_promotion_and_rollback_carry_their_signatures(wired, mk):
    first = await _register(wired, mk, 0)
    await wired.service.record_evaluation(mk.evaluated("m", first, None))
    second_signature = SIGNATURE.model_copy(update={"classes": ["high", "low", "mid", "none"]})
    second = await _register(wired, mk, 1, second_signature)

    registered = wired.published.of(ModelRegistered)[-1]
    assert registered.signature == second_signature
    assert registered.champion is not None and registered.champion.version == first
    assert registered.champion.signature == SIGNATURE

    await wired.service.record_evaluation(mk.evaluated("m", second, first))
    promoted = wired.published.of(ModelPromoted)
    assert [p.signature for p in promoted] == [SIGNATURE, second_signature]

    await wired.service.rollback("m", RollbackRequest(reason="bad live accuracy"))
    [rolled_back] = wired.published.of(ModelRolledBack)
    assert rolled_back.to_version == first and rolled_back.signature == SIGNATURE


async def test_a_champion_set_through_the_api_is_announced_with_its_signature(wired, mk):
    version = await _register(wired, mk, 0)
    await wired.service.set_alias(
        "m", "champion", AliasUpdate(version=version, expected_version=None, reason="by hand")
    )
    [promoted] = wired.published.of(ModelPromoted)
    assert promoted.signature == SIGNATURE


async def test_a_version_without_a_signature_keeps_working(wired, mk):
    version = await _register(wired, mk, 0, signature=None)
    del wired.repo.versions[("m", version)]["signature"]  # stored before versions had one

    view = await wired.service.get_version("m", version)
    assert view.signature is None
    await wired.service.record_evaluation(mk.evaluated("m", version, None))
    [promoted] = wired.published.of(ModelPromoted)
    assert promoted.signature is None
