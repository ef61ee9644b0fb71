"""Unit tests of the deployer's service layer on fakes: one decision per version, stored with
its event (published by the relay, later if the broker is down), load failures as rejects,
policy overrides."""

from __future__ import annotations

from modelbus_contracts import (
    DatasetRef,
    ModelEvaluated,
)
from modelbus_deployer.adapters import ObjectStoreModels
from modelbus_deployer.config import DeployerSettings, ModelPolicy
from modelbus_deployer.service import DeployerService
from modelbus_deployer.testing import MemoryDecisionStore
from modelbus_platform.policies import Policies
from modelbus_platform.stores import sha256_hex
from modelbus_platform.testing import (
    FakeRegistry,
    InlineRelay,
    MemoryObjectStore,
    RecordingPublisher,
)


async def test_same_event_twice_gives_one_decision_and_one_event(world):
    service = world.service()
    event = await world.registered(world.models.good)

    assert await service.handle_registered(event) == "decided"
    assert await service.handle_registered(event) == "duplicate"

    assert len(world.decisions.docs) == 1
    [evaluated] = world.publisher.of(ModelEvaluated)
    assert evaluated.decision == "promote"
    assert evaluated.producer == "deployer"
    assert evaluated.model_name == "churn"
    assert evaluated.correlation_id == event.correlation_id
    assert evaluated.causation_id == event.event_id
    assert evaluated.champion_version is None
    assert evaluated.holdout == event.lineage.holdout
    doc = await world.decisions.get("churn", 1)
    assert doc["published"] is True
    assert doc["event_id"] == str(evaluated.event_id)
    assert set(doc["timings"]) == {"load_ms", "judge_ms", "total_ms"}
    assert doc["latency"]["samples"] == 200


async def test_a_redelivery_with_a_new_event_id_is_still_one_decision(world):
    service = world.service()
    first = await world.registered(world.models.good)
    again = first.model_copy(update={"event_id": first.event_id.__class__(int=1)})

    await service.handle_registered(first)
    await service.handle_registered(again)

    assert len(world.publisher.events) == 1


async def test_a_broker_outage_after_the_decision_delays_its_event_never_loses_it(
    world, flaky_publisher
):
    event = await world.registered(world.models.good)
    flaky = flaky_publisher(failures=1)
    service = world.service(flaky)

    assert await service.handle_registered(event) == "decided"
    stored = await world.decisions.get("churn", 1)
    assert stored["published"] is False and flaky.events == []
    assert await service.handle_registered(event) == "duplicate"
    await service.events.drain()  # the relay's next attempt

    [evaluated] = flaky.events
    assert str(evaluated.event_id) == stored["event_id"]
    assert (await world.decisions.get("churn", 1))["published"] is True


async def test_worse_challenger_is_rejected_with_the_champion_metrics(world):
    event = await world.registered(world.models.bad, version=2, champion=(world.models.good, 1))

    await world.service().handle_registered(event)

    [evaluated] = world.publisher.of(ModelEvaluated)
    assert evaluated.decision == "reject"
    assert evaluated.champion_version == 1
    assert evaluated.champion_metrics["auc"] > 0.9
    assert evaluated.challenger_metrics["auc"] < 0.5
    assert evaluated.reasons[0].startswith("champion_delta failed: log_loss ")
    assert evaluated.reasons[1].startswith("paired_test failed: ")
    assert "of champion v1" in evaluated.reasons[0]
    gates = {g.name: g for g in evaluated.gates}
    assert not gates["champion_delta"].passed
    assert gates["holdout_size"].passed


async def test_tampered_artifact_is_a_reject_not_a_crash(world):
    event = await world.registered(world.models.good)
    await world.store.put(event.artifact.uri, b'{"format": "evil"}')

    assert await world.service().handle_registered(event) == "decided"

    [evaluated] = world.publisher.of(ModelEvaluated)
    assert evaluated.decision == "reject"
    assert evaluated.gates[0].name == "load"
    assert "challenger artifact" in evaluated.reasons[0]
    assert "integrity check failed" in evaluated.reasons[0]


async def test_an_untrusted_artifact_is_a_reject_before_a_byte_is_read(world, tmp_path):
    """With trusted keys, an unsigned challenger is rejected with the reason; a pickle (here
    with an exec payload) is refused while the model's policy does not allow pickles."""
    import json
    import pickle

    from modelbus_ml.flavors import MAGIC, PICKLE_FORMAT
    from modelbus_platform.artifacts import ArtifactTrust
    from modelbus_platform.signing import Signer, Verifier, keypair, private_key, public_key

    private, public = keypair()
    trust = ArtifactTrust(
        Signer("trainer", private_key(private)), Verifier({"trainer": public_key(public)})
    )
    asked: list[str] = []

    async def allow_pickle(name: str) -> bool:
        asked.append(name)
        return False

    service = world.service()
    service.models = ObjectStoreModels(world.store, trust, allow_pickle)
    unsigned = await world.registered(world.models.good)
    assert await service.handle_registered(unsigned) == "decided"

    proof = tmp_path / "pwned"
    header = json.dumps({"format": PICKLE_FORMAT, "feature_names": ["x"]}).encode()
    payload = pickle.dumps(
        type("P", (), {"__reduce__": lambda s: (exec, (f"open({str(proof)!r}, 'w')",))})()
    )
    data = MAGIC + header + b"\n" + payload
    ref = trust.sign(
        unsigned.artifact.model_copy(
            update={
                "uri": "artifacts/churn/evil.pkl",
                "sha256": sha256_hex(data),
                "size_bytes": len(data),
                "format": PICKLE_FORMAT,
            }
        )
    )
    await world.store.put(ref.uri, data)
    hostile = unsigned.model_copy(update={"version": 2, "artifact": ref})
    assert await service.handle_registered(hostile) == "decided"

    first, second = world.publisher.of(ModelEvaluated)
    assert first.decision == second.decision == "reject"
    assert "unsigned artifact" in first.reasons[0]
    assert "allow_pickle" in second.reasons[0]
    assert asked == ["churn"] and not proof.exists()


async def test_unreadable_champion_and_missing_holdout_are_rejects(world):
    event = await world.registered(world.models.good, version=2, champion=(world.models.bad, 1))
    assert event.champion is not None
    await world.store.put(event.champion.artifact.uri, b"not json")
    fixed = event.champion.artifact.model_copy(update={"sha256": sha256_hex(b"not json")})
    event = event.model_copy(
        update={"champion": event.champion.model_copy(update={"artifact": fixed})}
    )

    await world.service().handle_registered(event)
    missing = event.model_copy(
        update={
            "version": 3,
            "lineage": event.lineage.model_copy(
                update={"holdout": DatasetRef(uri="datasets/nope.csv", sha256="0" * 64, rows=1)}
            ),
        }
    )
    await world.service().handle_registered(missing)

    first, second = world.publisher.of(ModelEvaluated)
    assert first.decision == second.decision == "reject"
    assert "could not load the champion v1 artifact" in first.reasons[0]
    assert "unreadable artifact" in first.reasons[0]
    assert "could not load the hold-out: datasets/nope.csv not found" in second.reasons[0]


async def test_per_model_policy_override_is_applied(models, make_world):
    settings = DeployerSettings(policies={"churn": ModelPolicy(promotion_margin=5.0)})
    world = make_world(settings)
    event = await world.registered(models.good, version=2, champion=(models.bad, 1))

    await world.service().handle_registered(event)

    [evaluated] = world.publisher.of(ModelEvaluated)
    assert evaluated.decision == "reject"
    assert "margin 5" in evaluated.reasons[0]
    assert world.decisions.docs[("churn", 2)]["policy"]["promotion_margin"] == 5.0


async def test_a_live_policy_changes_the_next_decision_and_is_recorded(models, make_world):
    world = make_world(DeployerSettings())
    registry = FakeRegistry()
    service = world.service()
    service.live_policies = Policies(registry, ttl_s=0)
    registry.set_policy("churn", {"promotion": {"promotion_margin": 5.0}})
    event = await world.registered(models.good, version=2, champion=(models.bad, 1))

    await service.handle_registered(event)

    [evaluated] = world.publisher.of(ModelEvaluated)
    assert evaluated.decision == "reject" and "margin 5" in evaluated.reasons[0]
    doc = world.decisions.docs[("churn", 2)]
    assert (doc["policy"]["promotion_margin"], doc["policy_revision"]) == (5.0, 1)


async def test_policies_view_merges_defaults_and_overrides():
    settings = DeployerSettings(
        policies={"fraud": ModelPolicy(primary_metric="auc", latency_budget_ms=2.0)}
    )
    registry = FakeRegistry()
    service = DeployerService(
        settings=settings,
        decisions=MemoryDecisionStore(),
        models=ObjectStoreModels(MemoryObjectStore()),
        events=InlineRelay([], RecordingPublisher()),
        live_policies=Policies(registry, ttl_s=0),
    )

    view = await service.policies("churn")

    assert view["default"]["primary_metric"] is None
    assert view["default"]["higher_is_better"] is None  # it depends on the task
    assert view["default"]["metric_by_task"]["regression"] == "rmse"
    assert view["models"]["fraud"]["primary_metric"] == "auc"
    assert view["models"]["fraud"]["higher_is_better"] is True
    assert view["models"]["fraud"]["latency_budget_ms"] == 2.0
    assert view["models"]["fraud"]["promotion_margin"] == 0.0
    assert view["models"]["churn"] == view["default"]

    # the live policy (registry) goes over the settings, field by field, without a restart
    registry.set_policy("fraud", {"promotion": {"latency_budget_ms": 9.0, "rollout": "shadow"}})
    live = (await service.policies("fraud"))["models"]["fraud"]
    assert (live["latency_budget_ms"], live["rollout"], live["primary_metric"]) == (
        9.0,
        "shadow",
        "auc",
    )


def test_policies_come_from_json_in_the_environment(monkeypatch):
    monkeypatch.setenv("MODELBUS_POLICIES", '{"fraud": {"promotion_margin": 0.03}}')
    monkeypatch.setenv("MODELBUS_PRIMARY_METRIC", "brier")

    settings = DeployerSettings()

    assert settings.policy_for("fraud").promotion_margin == 0.03
    assert settings.policy_for("fraud").primary_metric == "brier"
    assert settings.policy_for("other").promotion_margin == 0.0
