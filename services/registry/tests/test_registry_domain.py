"""Pure rules: artifact checks, promotion refusals and alias moves."""

from __future__ import annotations

import json

import pytest

from modelbus_registry import domain
from modelbus_registry.domain import ArtifactRejected, Conflict, NotFound


def test_check_artifact_accepts_a_real_model(mk):
    data = mk.artifact_bytes()
    model = domain.check_artifact(data, mk.artifact_ref("m", data), mk.features)
    assert model.feature_names == tuple(mk.features)


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda d: b"not json at all", "does not load"),
        (lambda d: json.dumps({**json.loads(d), "format": "pickle"}).encode(), "not a"),
        (lambda d: json.dumps({**json.loads(d), "feature_names": ["a", "b"]}).encode(), "differ"),
    ],
)
def test_check_artifact_rejects_bad_bytes(mk, mutate, words):
    data = mutate(mk.artifact_bytes())
    with pytest.raises(ArtifactRejected, match=words):
        domain.check_artifact(data, mk.artifact_ref("m", data), mk.features)


def test_check_artifact_rejects_a_size_mismatch(mk):
    data = mk.artifact_bytes()
    ref = mk.artifact_ref("m", data).model_copy(update={"size_bytes": len(data) + 1})
    with pytest.raises(ArtifactRejected, match="bytes"):
        domain.check_artifact(data, ref, mk.features)


@pytest.mark.parametrize(
    ("version", "champion", "refused"),
    [(1, None, False), (3, 2, False), (2, 2, True), (1, 2, True)],
)
def test_a_champion_never_moves_backwards(version, champion, refused):
    assert (domain.promotion_refusal(version, champion) is not None) is refused


def test_first_promotion_keeps_previous_unset():
    move = domain.plan_promotion(domain.empty_aliases(), 1, None)
    assert move.new == {"champion": 1}
    assert move.expected == {"champion": None}
    assert move.statuses == {1: "champion"}


def test_promotion_moves_the_old_champion_to_previous_and_clears_challenger():
    aliases = {"champion": 2, "challenger": 3, "previous": 1}
    move = domain.plan_promotion(aliases, 3, 2)
    assert move.new == {"champion": 3, "previous": 2, "challenger": None}
    assert move.expected == {"champion": 2, "previous": 1, "challenger": 3}
    assert move.statuses == {3: "champion", 2: "previous"}


def test_rollback_swaps_previous_in_and_retires_the_champion():
    move = domain.plan_rollback({"champion": 3, "challenger": None, "previous": 2})
    assert move.new == {"champion": 2, "previous": None}
    assert move.expected == {"champion": 3, "previous": 2}
    assert move.statuses == {2: "champion", 3: "retired"}


@pytest.mark.parametrize(
    "aliases", [domain.empty_aliases(), {"champion": 1, "challenger": None, "previous": None}]
)
def test_rollback_needs_a_champion_and_a_previous(aliases):
    with pytest.raises(Conflict, match="roll back"):
        domain.plan_rollback(aliases)


def test_alias_set_checks_the_expected_value():
    aliases = {"champion": 2, "challenger": None, "previous": 1}
    with pytest.raises(Conflict, match="champion is at version 2, not the expected 1") as err:
        domain.plan_alias_set(aliases, "champion", 3, 1)
    assert err.value.action == "promotion_conflict"
    with pytest.raises(Conflict, match="older") as err:
        domain.plan_alias_set(aliases, "champion", 1, 2)
    assert err.value.action == "promotion_refused"
    with pytest.raises(NotFound):
        domain.plan_alias_set(aliases, "king", 1, None)
    move = domain.plan_alias_set(aliases, "challenger", 3, None)
    assert (move.new, move.expected, move.statuses) == ({"challenger": 3}, {"challenger": None}, {})


def test_follow_up_ids_are_deterministic(mk):
    event = mk.trained("m", mk.artifact_ref("m", mk.artifact_bytes()))
    first = domain.follow_up_id(event, "model.registered.v1")
    assert first == domain.follow_up_id(event, "model.registered.v1")
    assert first != domain.follow_up_id(event, "model.promoted.v1")
