"""The registry and signed artifacts: a registration needs a trusted writer's signature, an
import is signed by the registry itself, and no version becomes champion (by the API, by a
verdict or by a rollback) while its artifact fails verification: 409 artifact_unverified with
the reason, audited, the champion unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelbus_contracts import ArtifactRef, ModelPromoted, ModelRegistered
from modelbus_contracts.api import AliasUpdate, RollbackRequest
from modelbus_contracts.policy import ModelPolicyDoc, PolicyUpdate
from modelbus_ml.examples import GaussianNB
from modelbus_ml.flavors import PICKLE_FORMAT, dump_pickled
from modelbus_platform.artifacts import ArtifactTrust
from modelbus_platform.settings import ServiceSettings
from modelbus_platform.signing import keypair
from modelbus_platform.stores import sha256_hex
from modelbus_registry.domain import Conflict

MODEL = "churn"
KEYS = {name: keypair() for name in ("trainer", "registry")}
TRUSTED = json.dumps({name: pair[1] for name, pair in KEYS.items()})


def trust(service: str) -> ArtifactTrust:
    settings = ServiceSettings(
        service_name=service, signing_key=KEYS[service][0], trusted_keys=TRUSTED
    )
    return ArtifactTrust.from_settings(settings)


@pytest.fixture
def trusted(wired):
    wired.service.trust = trust("registry")
    return wired


async def actions(wired) -> list[tuple[str, str]]:
    return [(r.action, r.reason) for r in await wired.service.audit(MODEL, 100)]


async def register(wired, mk, seed: int = 0, *, signed: bool = True) -> ModelRegistered | None:
    ref = await mk.put_artifact(wired.store, MODEL, seed=seed)
    if signed:
        ref = trust("trainer").sign(ref)
    return await wired.service.register(mk.trained(MODEL, ref))


async def two_versions(wired, mk) -> None:
    """v1 champion, v2 registered: both signed."""
    assert (await register(wired, mk, 0)).version == 1
    assert (await register(wired, mk, 1)).version == 2
    await wired.service.record_evaluation(mk.evaluated(MODEL, 1, None))


async def tamper(wired, version: int) -> None:
    view = await wired.service.get_version(MODEL, version)
    await wired.store.put(view.artifact.uri, b'{"not": "the signed bytes"}')


async def test_an_unsigned_or_forged_artifact_is_never_registered(trusted, mk):
    assert await register(trusted, mk, signed=False) is None
    ref = await mk.put_artifact(trusted.store, MODEL, seed=1)
    forged = trust("trainer").sign(ref).model_copy(update={"sha256": sha256_hex(b"other")})
    assert await trusted.service.register(mk.trained(MODEL, forged)) is None
    assert trusted.published.of(ModelRegistered) == []
    refusals = [reason for action, reason in await actions(trusted)]
    assert any("unsigned artifact" in r for r in refusals), refusals
    assert any("does not verify" in r for r in refusals), refusals
    assert (await register(trusted, mk)).version == 1  # signed by the trainer: registered


async def test_a_tampered_artifact_is_not_made_champion_by_the_api(trusted, mk):
    await two_versions(trusted, mk)
    await tamper(trusted, 2)
    with pytest.raises(Conflict) as refused:
        await trusted.service.set_alias(
            MODEL, "champion", AliasUpdate(version=2, expected_version=1, reason="ops")
        )
    assert refused.value.action == "artifact_unverified"
    assert "fails verification" in refused.value.reason and "sha256" in refused.value.reason
    assert (await trusted.service.aliases(MODEL)).champion == 1
    assert ("artifact_unverified", refused.value.reason) in await actions(trusted)
    assert len(trusted.published.of(ModelPromoted)) == 1  # v1's only


async def test_a_verdict_does_not_promote_an_artifact_that_fails_verification(trusted, mk):
    await two_versions(trusted, mk)
    await tamper(trusted, 2)
    assert await trusted.service.record_evaluation(mk.evaluated(MODEL, 2, 1)) is None
    assert (await trusted.service.aliases(MODEL)).champion == 1
    assert "artifact_unverified" in [action for action, _ in await actions(trusted)]


async def test_a_rollback_to_a_tampered_version_is_refused(trusted, mk):
    await two_versions(trusted, mk)
    await trusted.service.record_evaluation(mk.evaluated(MODEL, 2, 1))
    assert (await trusted.service.aliases(MODEL)).champion == 2
    await tamper(trusted, 1)
    with pytest.raises(Conflict, match="fails verification") as refused:
        await trusted.service.rollback(MODEL, RollbackRequest(reason="bad"))
    assert refused.value.action == "artifact_unverified"
    assert (await trusted.service.aliases(MODEL)).champion == 2


def pickled_artifact() -> bytes:
    nb = GaussianNB(prior=np.array([0.5, 0.5]), mean=np.zeros((2, 2)), var=np.ones((2, 2)))
    return dump_pickled(PICKLE_FORMAT, family="python", feature_names=["x1", "x2"], estimator=nb)


async def set_pickles(wired, allowed: bool) -> None:
    current = (await wired.service.policy(MODEL)).revision
    doc = ModelPolicyDoc.model_validate({"artifacts": {"allow_pickle": allowed}})
    update = PolicyUpdate(policy=doc, expected_revision=current, reason="test")
    await wired.service.put_policy(MODEL, update, actor="admin")


async def test_a_pickle_needs_the_policy_at_registration_and_when_it_becomes_champion(trusted, mk):
    data = pickled_artifact()
    digest = sha256_hex(data)
    ref = ArtifactRef(
        uri=f"artifacts/{MODEL}/{digest}.pkl",
        sha256=digest,
        size_bytes=len(data),
        format=PICKLE_FORMAT,
    )
    await trusted.store.put(ref.uri, data)
    signed = trust("trainer").sign(ref)
    assert await trusted.service.register(mk.trained(MODEL, signed)) is None  # not allowed
    assert any("allow_pickle" in reason for _, reason in await actions(trusted))

    await set_pickles(trusted, True)
    registered = await trusted.service.register(mk.trained(MODEL, signed))
    assert registered is not None
    await set_pickles(trusted, False)  # the admin takes the permission back
    with pytest.raises(Conflict, match="allow_pickle") as refused:
        await trusted.service.set_alias(
            MODEL,
            "champion",
            AliasUpdate(version=registered.version, expected_version=None, reason="ops"),
        )
    assert refused.value.action == "artifact_unverified"
    assert (await trusted.service.aliases(MODEL)).champion is None
