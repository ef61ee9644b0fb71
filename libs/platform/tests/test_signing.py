"""Signed control events: the signature covers the envelope and the data, a consumer with
trusted keys acts only on events its services signed, and the bus dead-letters the rest."""

from __future__ import annotations

import io
import json

import pytest
from dotenv import dotenv_values

from modelbus_contracts import LabelObserved, ModelRollbackRequested, encode
from modelbus_platform.signing import (
    CONTROL_TOPICS,
    SIGNATURE,
    TRUSTED_KEYS_VARIABLE,
    Signer,
    Verifier,
    from_settings,
    keypair,
    main,
    private_key,
    public_key,
    signing_key_variable,
)


def rollback(model: str = "churn", **kw) -> ModelRollbackRequested:
    return ModelRollbackRequested(
        model_name=model, from_version=3, to_version=2, reason="p99 regressed", **kw
    )


def pair(name: str) -> tuple[Signer, dict[str, str]]:
    private, public = keypair()
    return Signer(name, private_key(private)), {name: public}


def test_a_signed_control_event_verifies_and_any_change_to_it_does_not():
    deployer, trusted = pair("deployer")
    verifier = Verifier({k: public_key(v) for k, v in trusted.items()})
    record = encode(rollback())
    headers = deployer.sign(record.topic, record.headers, record.value)
    assert verifier.problem(record.topic, headers, record.value) is None
    # the data, an envelope header, the signer: each change breaks it
    assert "does not verify" in verifier.problem(record.topic, headers, record.value + b" ")
    moved = {**headers, "ce_subject": "another-model"}
    assert "does not verify" in verifier.problem(record.topic, moved, record.value)
    claimed = {**headers, "ce_signer": "registry"}
    assert "not a trusted service" in verifier.problem(record.topic, claimed, record.value)
    assert "unsigned" in verifier.problem(record.topic, record.headers, record.value)
    # bytes headers, as Kafka hands them over
    raw = [(k, v.encode()) for k, v in headers.items()]
    assert verifier.problem(record.topic, raw, record.value) is None


def test_another_services_key_does_not_pass_for_the_deployers():
    _, trusted = pair("deployer")
    impostor, _ = pair("deployer")  # same name, its own key
    verifier = Verifier({k: public_key(v) for k, v in trusted.items()})
    record = encode(rollback())
    forged = impostor.sign(record.topic, record.headers, record.value)
    assert "does not verify" in verifier.problem(record.topic, forged, record.value)


def test_upstream_events_are_neither_signed_nor_checked():
    deployer, trusted = pair("deployer")
    verifier = Verifier({k: public_key(v) for k, v in trusted.items()})
    label = encode(LabelObserved(model_name="churn", prediction_id="p", label=1))
    assert label.topic not in CONTROL_TOPICS
    assert SIGNATURE not in deployer.sign(label.topic, label.headers, label.value)
    assert verifier.problem(label.topic, label.headers, label.value) is None


def test_keys_from_settings_are_checked():
    private, public = keypair()
    signer, verifier = from_settings("registry", private, json.dumps({"registry": public}))
    assert signer is not None and verifier is not None
    assert from_settings("registry", None, None) == (None, None)
    with pytest.raises(ValueError, match="32 raw bytes"):
        from_settings("registry", "c2hvcnQ=", None)
    with pytest.raises(ValueError, match="JSON"):
        from_settings("registry", None, "{not json")


def test_keygen_env_lines_are_a_compose_env_file_whose_keys_pair(capsys):
    assert main(["keygen", "--env", "trainer", "deployer"]) == 0
    env = dotenv_values(stream=io.StringIO(capsys.readouterr().out))
    assert set(env) == {
        signing_key_variable("trainer"),
        signing_key_variable("deployer"),
        TRUSTED_KEYS_VARIABLE,
    }
    signer, verifier = from_settings(
        "trainer", env[signing_key_variable("trainer")], env[TRUSTED_KEYS_VARIABLE]
    )
    assert set(verifier.trusted) == {"trainer", "deployer"}
    headers = signer.sign("model.trained.v1", {"ce_id": "1"}, b"{}")
    assert verifier.problem("model.trained.v1", headers, b"{}") is None
    other, _ = from_settings("deployer", env[signing_key_variable("deployer")], None)
    forged = other.sign("model.trained.v1", {"ce_id": "1"}, b"{}") | {"ce_signer": "trainer"}
    assert verifier.problem("model.trained.v1", forged, b"{}") is not None
