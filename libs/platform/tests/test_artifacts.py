"""Signed artifacts: a loader verifies the writer's signature over the sha256 and format before
it reads a byte, and a pickle is loaded only when the model's policy allows it and a trusted
artifact writer signed it. The pickles here carry an ``exec`` payload: it must never run."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from modelbus_contracts import ArtifactSignature
from modelbus_ml.examples import GaussianNB
from modelbus_ml.flavors import MAGIC, PICKLE_FORMAT, dump_pickled
from modelbus_ml.serving import LoadFailed
from modelbus_platform.artifacts import ArtifactTrust, refuse_pickle
from modelbus_platform.serving import load_version
from modelbus_platform.settings import ServiceSettings
from modelbus_platform.signing import keypair
from modelbus_platform.stores import sha256_hex
from modelbus_platform.testing import MemoryObjectStore

from .test_serving import FEATURES, model, view

KEYS = {name: keypair() for name in ("trainer", "registry", "scorer", "impostor")}
TRUSTED = json.dumps({n: KEYS[n][1] for n in ("trainer", "registry", "scorer")})


def trust(service: str = "scorer", trusted: str | None = TRUSTED) -> ArtifactTrust:
    """``service``'s trust; "impostor" signs as the trainer with a key nobody trusts."""
    name = "trainer" if service == "impostor" else service
    settings = ServiceSettings(
        service_name=name, signing_key=KEYS[service][0], trusted_keys=trusted
    )
    return ArtifactTrust.from_settings(settings)


NO_TRAINER = json.dumps({"registry": KEYS["registry"][1]})


class Payload:
    """Unpickling it writes a file: the proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


def hostile_pickle(path: Path) -> bytes:
    header = {"format": PICKLE_FORMAT, "family": "python", "feature_names": list(FEATURES)}
    line = json.dumps(header, sort_keys=True).encode()
    return MAGIC + line + b"\n" + pickle.dumps(Payload(str(path)))


def good_pickle() -> bytes:
    estimator = GaussianNB(
        prior=np.array([0.5, 0.5]), mean=np.array([[0.0, 0.0], [1.0, 1.0]]), var=np.ones((2, 2))
    )
    return dump_pickled(PICKLE_FORMAT, family="python", feature_names=FEATURES, estimator=estimator)


async def stored(data: bytes, signer: ArtifactTrust | None, fmt: str | None = None):
    store, record = MemoryObjectStore(), view(data, fmt=fmt)
    if signer is not None:
        record = record.model_copy(update={"artifact": signer.sign(record.artifact)})
    await store.put(record.artifact.uri, data)
    return store, record


async def allow(name: str) -> bool:
    return True


async def test_a_trainer_signed_artifact_loads_and_every_forgery_is_refused():
    data = model().to_bytes()
    store, record = await stored(data, trust("trainer"))
    assert record.artifact.signature.signer == "trainer"
    served = await load_version(store, record, trust())
    assert served.sha256 == sha256_hex(data)

    ref = record.artifact
    forged = {
        "unsigned": ref.model_copy(update={"signature": None}),
        "not an artifact writer": trust("scorer").sign(ref),
        "impostor": trust("impostor").sign(ref),
        "other bytes": ref.model_copy(update={"sha256": sha256_hex(b"x")}),
        "other format": ref.model_copy(update={"format": "modelbus.onnx.v1"}),
        "garbage": ref.model_copy(
            update={"signature": ArtifactSignature(signer="trainer", signature="!!")}
        ),
    }
    reasons = {what: trust().problem(bad) for what, bad in forged.items()}
    assert all(reasons.values()), reasons
    assert "unsigned" in reasons["unsigned"]
    assert "does not write artifacts" in reasons["not an artifact writer"]
    assert "does not verify" in reasons["impostor"]
    assert "not trusted" in trust(trusted=NO_TRAINER).problem(ref)
    assert "does not verify" in reasons["other bytes"] and "does not verify" in reasons["garbage"]
    for bad in forged.values():
        with pytest.raises(LoadFailed, match="untrusted artifact"):
            await load_version(store, record.model_copy(update={"artifact": bad}), trust())
    never = refuse_pickle  # a code-free artifact: the policy is not what refuses it
    assert "unsigned" in await trust().refusal(forged["unsigned"], "m", never)


async def test_without_trusted_keys_only_code_free_artifacts_load_unsigned():
    data = model().to_bytes()
    store, record = await stored(data, None)
    assert (await load_version(store, record, ArtifactTrust())).version == 3
    store, record = await stored(good_pickle(), trust("trainer"), PICKLE_FORMAT)
    with pytest.raises(LoadFailed, match="trusts no keys"):
        await load_version(store, record, ArtifactTrust(), allow)


@pytest.mark.parametrize(
    ("signed_by", "allowed", "refusal"),
    [
        ("trainer", False, "allow_pickle"),  # policy says no: refused, signature or not
        (None, True, "unsigned artifact"),  # allowed, but nobody trusted signed it
        ("impostor", True, "does not verify"),
        ("scorer", True, "does not write artifacts"),
    ],
)
async def test_a_hostile_pickle_never_runs(tmp_path, signed_by, allowed, refusal):
    proof = tmp_path / "pwned"
    signer = trust(signed_by) if signed_by else None
    store, record = await stored(hostile_pickle(proof), signer, PICKLE_FORMAT)
    asked: list[str] = []

    async def policy(name: str) -> bool:
        asked.append(name)
        return allowed

    with pytest.raises(LoadFailed, match=refusal):
        await load_version(store, record, trust(), policy)
    assert not proof.exists()  # refused before a byte was unpickled
    assert asked == ["m"]  # the policy is read for a pickle


async def test_an_allowed_signed_pickle_loads_and_a_code_free_model_never_asks_the_policy():
    store, record = await stored(good_pickle(), trust("trainer"), PICKLE_FORMAT)
    served = await load_version(store, record, trust(), allow)
    assert served.score(np.array([[0.0, 0.0], [1.0, 1.0]])).labels.tolist() == [0, 1]

    async def never(name: str) -> bool:
        raise AssertionError("a code-free artifact needs no policy read")

    store, record = await stored(model().to_bytes(), trust("registry"))
    assert (await load_version(store, record, trust(), never)).version == 3


def test_the_payload_is_real(tmp_path):
    """The hostile pickle does run code when unpickled: the tests above prove something."""
    proof = tmp_path / "pwned"
    data = hostile_pickle(proof)
    pickle.loads(data.split(b"\n", 2)[2])
    assert proof.read_text() == "pwned"
    os.remove(proof)
