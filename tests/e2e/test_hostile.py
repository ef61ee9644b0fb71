"""A hostile run against the whole stack with authentication on (issue 11): the attacks replayed
through the public interfaces, each with the system's answer asserted and what it changed read
back with the admin key.

- unauthenticated writes (no credentials, a made-up key): 401, nothing changed;
- forged control events on the bus (unsigned, signed by an unknown service, signed with a key
  that is not the one trusted for its signer): none acted on, each dead-lettered for its
  signature;
- batch outputs outside the allowed prefixes: 422 with the documented reason, no job, the
  dataset's bytes unchanged;
- out-of-range versions in paths and a NUL in a column name: 4xx, the version counter unmoved;
- one event id with different content on scoring.requested: scored once, the second refused;
- code from an artifact: a pickle with an ``exec`` payload written into the store and announced
  by a ModelTrained that a trusted service signed (the scorer's key: a service that writes no
  artifacts), its artifact signed with that key, unsigned, or signed as the trainer with
  another key; and the champion's bytes replaced in the store: never registered, never made
  champion (409 artifact_unverified), never unpickled (the payload's file never appears).

The module ends with a table: attack, attempts, accepted (0 for every attack).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import httpx
import pytest

from modelbus_contracts import (
    ModelEvaluated,
    ModelPromoted,
    ModelRollbackRequested,
    PredictionMade,
    ScoringFailed,
    ScoringRequested,
    decode,
)
from modelbus_embedded.testing import EventTap, collect, publish, trained_event, until
from modelbus_platform.auth import new_secret
from modelbus_platform.signing import Signer, keypair, private_key
from modelbus_platform.stores import S3ObjectStore

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

MODEL = f"hostile-{uuid.uuid4().hex[:8]}"
# attack -> [attempts, accepted]
TALLY: dict[str, list[int]] = {}


def tally(attack: str, accepted: bool) -> None:
    counts = TALLY.setdefault(attack, [0, 0])
    counts[0] += 1
    counts[1] += int(accepted)


def store_of(secured) -> S3ObjectStore:
    env = secured.stack.env
    return S3ObjectStore(
        env["MODELBUS_S3_ENDPOINT"], "modelbus", "modelbus-secret", env["MODELBUS_BUCKET"]
    )


@pytest.fixture(scope="module")
async def admin(secured):
    async with httpx.AsyncClient(headers=secured.admin, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
async def seeded(secured, admin) -> dict:
    """MODEL with v1 the champion (served by the scorer) and v2 rejected by the deployer: both
    trained as the trainer would (its ModelTrained, signed with its key)."""
    store = store_of(secured)
    trainer = Signer("trainer", private_key(secured.stack.signing_key("trainer")))
    registry = secured.url("registry")
    good = await trained_event(store, MODEL, seed=1, signer=trainer)
    await publish(secured.stack.kafka_bootstrap, good, signer=trainer)

    async def champion_is_1():
        answer = await admin.get(f"{registry}/models/{MODEL}/aliases")
        return answer.status_code == 200 and answer.json().get("champion") == 1

    await until(champion_is_1)
    bad = await trained_event(store, MODEL, seed=2, flip=True, signer=trainer)
    await publish(secured.stack.kafka_bootstrap, bad, signer=trainer)

    async def v2_rejected():
        answer = await admin.get(f"{registry}/models/{MODEL}/versions/2")
        return answer.status_code == 200 and answer.json()["status"] == "rejected"

    await until(v2_rejected)

    async def served():
        answer = await admin.get(f"{secured.url('scorer')}/v2/models/{MODEL}/ready")
        return answer.status_code == 200

    await until(served)
    return {"holdout": good.lineage.holdout.uri}


async def state(secured, admin) -> dict:
    """What any of the attacks could change, read with the admin key."""
    reads = {
        "model": ("registry", f"/models/{MODEL}"),
        "versions": ("registry", f"/models/{MODEL}/versions"),
        "policy": ("registry", f"/models/{MODEL}/policy"),
        "audit": ("registry", f"/models/{MODEL}/audit"),
        "keys": ("registry", "/admin/keys"),
        "runs": ("trainer", f"/runs?model_name={MODEL}"),
        "decision": ("deployer", f"/decisions/{MODEL}/2"),
        "jobs": ("batch", "/batch-jobs"),
        "incidents": ("monitor", "/incidents"),
    }
    found = {}
    for name, (service, path) in reads.items():
        answer = await admin.get(secured.url(service) + path)
        assert answer.status_code == 200, (name, answer.text)
        found[name] = answer.json()
    return found


async def test_unauthenticated_writes_are_401_and_change_nothing(secured, admin, seeded):
    registry, deployer = secured.url("registry"), secured.url("deployer")
    trainer, batch = secured.url("trainer"), secured.url("batch")
    writes = [
        ("PUT", f"{registry}/models/{MODEL}/aliases/champion", {"json": {"version": 2}}),
        ("POST", f"{registry}/models/{MODEL}/rollback", {"json": {"reason": "pwned"}}),
        ("POST", f"{deployer}/decisions/{MODEL}/2/approve", {"json": {"reason": "pwned"}}),
        ("POST", f"{trainer}/models/{MODEL}/train", {"json": {}}),
        (
            "PUT",
            f"{trainer}/datasets/{MODEL}",
            {"content": b"x1,x2,label\n1,2,1\n", "headers": {"content-type": "text/csv"}},
        ),
        (
            "POST",
            f"{batch}/batch-jobs",
            {"json": {"model_name": MODEL, "input_uri": f"batch/{MODEL}/in.csv"}},
        ),
        ("PUT", f"{registry}/models/{MODEL}/policy", {"json": {"approval": "required"}}),
        ("POST", f"{registry}/admin/keys", {"json": {"name": "mallory", "role": "admin"}}),
    ]
    before = await state(secured, admin)
    async with httpx.AsyncClient(timeout=30) as anonymous:
        for method, url, options in writes:
            made_up = {"Authorization": f"Bearer {new_secret()}"}
            for credentials in ({}, made_up):
                headers = {**options.get("headers", {}), **credentials}
                kwargs = {**options, "headers": headers}
                answer = await anonymous.request(method, url, **kwargs)
                tally("unauthenticated write", answer.status_code != 401)
                assert answer.status_code == 401, (method, url, answer.text)
                assert answer.json()["reason"] == "unauthenticated"
    assert await state(secured, admin) == before


async def test_forged_control_events_are_dead_lettered_and_not_acted_on(secured, admin, seeded):
    verdicts = await collect(secured.stack.kafka_bootstrap, ModelEvaluated.topic, MODEL, 2)
    rejected = next(
        e
        for e in (decode(r.headers, r.value) for r in verdicts)
        if e.version == 2 and e.decision == "reject"
    )
    # the deployer's own verdict on v2, turned into a promotion by anyone on the network
    evaluated = rejected.model_copy(update={"event_id": uuid.uuid4(), "decision": "promote"})
    version_2 = (await admin.get(f"{secured.url('registry')}/models/{MODEL}/versions/2")).json()
    promoted = ModelPromoted(
        producer="registry",
        model_name=MODEL,
        version=2,
        previous_version=1,
        artifact=version_2["artifact"],
        feature_names=version_2["feature_names"],
        reason="forged",
    )
    forged = {  # (event, its signer or None, the reason it must be dead-lettered with)
        "unsigned ModelEvaluated(promote)": (
            evaluated,
            None,
            "signature: unsigned control event",
        ),
        "unsigned ModelRollbackRequested": (
            ModelRollbackRequested(
                producer="deployer", model_name=MODEL, from_version=1, reason="forged"
            ),
            None,
            "signature: unsigned control event",
        ),
        "ModelPromoted signed by an unknown service": (
            promoted,
            Signer("mallory", private_key(keypair()[0])),
            "signature: signed by 'mallory', which is not a trusted service",
        ),
        "ModelPromoted signed as the registry, another key": (
            promoted.model_copy(update={"event_id": uuid.uuid4()}),
            Signer("registry", private_key(keypair()[0])),
            "signature: the signature of 'registry' does not verify",
        ),
    }
    before = await state(secured, admin)
    for event, signer, _ in forged.values():
        await publish(secured.stack.kafka_bootstrap, event, signer=signer)

    async def dead_letters():
        topics = {event.topic for event, _, _ in forged.values()}
        found = await asyncio.gather(
            *(collect(secured.stack.kafka_bootstrap, t + ".dlq", MODEL, 2) for t in topics)
        )
        by_id: dict[str, list[str]] = {}
        for record in (r for records in found for r in records):
            headers = {k: v.decode() for k, v in record.headers}
            by_id.setdefault(headers["ce_id"], []).append(headers["x-dlq-reason"])
        ids = {str(event.event_id) for event, _, _ in forged.values()}
        return by_id if ids <= set(by_id) else None

    reasons = await until(dead_letters)
    await asyncio.sleep(2)  # anything acted on would show by now: every consumer had it
    after = await state(secured, admin)
    for attack, (event, _, reason) in forged.items():
        dead = reasons[str(event.event_id)]
        acted = not all(r.startswith(reason) for r in dead)
        tally("forged control event", acted)
        assert not acted, (attack, dead)
    assert after == before
    assert after["model"]["aliases"]["champion"] == 1


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_batch_outputs_outside_the_allowed_prefixes_are_refused(secured, admin, seeded):
    store = store_of(secured)
    dataset = seeded["holdout"]
    dataset_sha = sha(await store.get(dataset))
    outputs = {
        dataset: "protected_prefix",
        "file:///etc/x": "bad_scheme",
        "s3://other/x.csv": "wrong_bucket",
        "/abs/path.csv": "bad_uri",
        "http://169.254.169.254/latest": "bad_scheme",
    }
    before = (await admin.get(f"{secured.url('batch')}/batch-jobs")).json()
    for output, reason in outputs.items():
        answer = await admin.post(
            f"{secured.url('batch')}/batch-jobs",
            json={"model_name": MODEL, "input_uri": f"batch/{MODEL}/in.csv", "output_uri": output},
        )
        tally("batch output outside the prefixes", answer.status_code < 400)
        assert (answer.status_code, answer.json()["reason"]) == (422, reason), output
    assert (await admin.get(f"{secured.url('batch')}/batch-jobs")).json() == before
    assert sha(await store.get(dataset)) == dataset_sha


async def test_out_of_range_versions_and_nul_column_names_are_4xx(secured, admin, seeded):
    registry, deployer, scorer = (secured.url(s) for s in ("registry", "deployer", "scorer"))
    latest = (await admin.get(f"{registry}/models/{MODEL}")).json()["latest_version"]
    for version in (2**63, 2**70, -1, 0):
        requests = [
            ("GET", f"{registry}/models/{MODEL}/versions/{version}", {}),
            ("GET", f"{registry}/models/{MODEL}/versions/{version}/artifact", {}),
            ("PUT", f"{registry}/models/{MODEL}/aliases/champion", {"json": {"version": version}}),
            ("GET", f"{deployer}/decisions/{MODEL}/{version}", {}),
            ("POST", f"{deployer}/decisions/{MODEL}/{version}/approve", {"json": {}}),
            ("GET", f"{scorer}/v2/models/{MODEL}/versions/{version}", {}),
            ("POST", f"{scorer}/v2/models/{MODEL}/versions/{version}/infer", {"json": {}}),
        ]
        for method, url, options in requests:
            answer = await admin.request(method, url, **options)
            tally("version out of range", not 400 <= answer.status_code < 500)
            assert 400 <= answer.status_code < 500, (method, url, answer.text)
    nul = b"x1,x\x002,label\n1,2,1\n3,4,0\n"
    answer = await admin.put(
        f"{secured.url('trainer')}/datasets/{MODEL}",
        content=nul,
        headers={"content-type": "text/csv"},
    )
    tally("NUL in a column name", answer.status_code != 422)
    assert answer.status_code == 422, answer.text
    answer = await admin.post(
        f"{registry}/models/{MODEL}/versions",
        params={"feature_names": ["x1", "x\x002"], "holdout_uri": seeded["holdout"]},
        content=b"onnx",
        headers={"content-type": "application/octet-stream"},
    )
    tally("NUL in a column name", answer.status_code != 422)
    assert answer.status_code == 422, answer.text
    assert (await admin.get(f"{registry}/models/{MODEL}")).json()["latest_version"] == latest


async def test_one_event_id_with_other_content_is_scored_once(secured, seeded):
    first = ScoringRequested(model_name=MODEL, request_id="r-1", features={"x1": 0.5, "x2": 0.1})
    second = first.model_copy(update={"features": {"x1": 9.0, "x2": 9.0}})
    topics = [PredictionMade.topic, ScoringFailed.topic]
    tap = EventTap(secured.stack.kafka_bootstrap, MODEL, topics)
    await tap.start()
    try:
        await publish(secured.stack.kafka_bootstrap, first, second)
        refused = await tap.wait_for(
            lambda e: isinstance(e, ScoringFailed) and e.request_id == "r-1", timeout=30
        )
        await asyncio.sleep(1)
    finally:
        await tap.stop()
    made = [e for e in tap.events if isinstance(e, PredictionMade) and e.request_id == "r-1"]
    assert refused.error.startswith("event_id_conflict"), refused.error
    assert refused.causation_id == first.event_id
    tally("same event id, other content", len(made) != 1)
    assert [m.features for m in made] == [{"x1": 0.5, "x2": 0.1}]


class Payload:
    """Unpickled, it writes ``path``: the proof that code from an artifact ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


async def test_no_artifact_runs_code_or_becomes_champion_unverified(secured, admin, seeded):
    import json
    import pickle

    from modelbus_ml.flavors import MAGIC, PICKLE_FORMAT
    from modelbus_platform.artifacts import ArtifactTrust

    stack = secured.stack
    proof = stack.data_dir / "pwned"
    header = {"format": PICKLE_FORMAT, "family": "python", "feature_names": ["x1", "x2"]}
    data = MAGIC + json.dumps(header).encode() + b"\n" + pickle.dumps(Payload(str(proof)))
    store = store_of(secured)
    trainer = Signer("trainer", private_key(stack.signing_key("trainer")))
    scorer = Signer("scorer", private_key(stack.signing_key("scorer")))
    impostor = Signer("trainer", private_key(keypair()[0]))
    template = await trained_event(store, MODEL, seed=3, signer=trainer)
    uri = f"artifacts/{MODEL}/{sha(data)}.pkl"
    await store.put(uri, data, "application/octet-stream")
    ref = template.artifact.model_copy(
        update={
            "uri": uri,
            "sha256": sha(data),
            "size_bytes": len(data),
            "format": PICKLE_FORMAT,
            "signature": None,
        }
    )
    attempts = {  # artifact signer, event signer: a trusted service's event in every case
        "signed by a service that writes no artifacts": (scorer, scorer),
        "unsigned, announced by the trainer's key": (None, trainer),
        "signed as the trainer with another key": (impostor, trainer),
    }
    # an admin allows this model pickles: what refuses them now is the signature alone
    registry = secured.url("registry")
    revision = (await admin.get(f"{registry}/models/{MODEL}/policy")).json()["revision"]
    allowed = await admin.put(
        f"{registry}/models/{MODEL}/policy",
        json={
            "expected_revision": revision,
            "reason": "a python model",
            "policy": {"artifacts": {"allow_pickle": True}},
        },
    )
    assert allowed.status_code == 200, allowed.text
    before = (await admin.get(f"{registry}/models/{MODEL}/versions")).json()
    events = []
    for artifact_signer, event_signer in attempts.values():
        event = template.model_copy(
            update={
                "event_id": uuid.uuid4(),
                "run_id": uuid.uuid4().hex,
                "artifact": ArtifactTrust(artifact_signer).sign(ref),
            }
        )
        events.append(event)
        await publish(stack.kafka_bootstrap, event, signer=event_signer)

    async def refused_all():
        audit = (await admin.get(f"{secured.url('registry')}/models/{MODEL}/audit")).json()
        runs = {e.run_id for e in events}
        refused = [
            r for r in audit
            if r["action"] == "registration_rejected" and r.get("details", {}).get("run_id") in runs
        ]  # fmt: skip
        return refused if len(refused) == len(events) else None

    refusals = await until(refused_all)
    reasons = sorted(r["reason"] for r in refusals)
    expected = ("does not write artifacts", "does not verify", "unsigned artifact")
    assert all(e in r for e, r in zip(expected, reasons, strict=True)), reasons
    after = (await admin.get(f"{secured.url('registry')}/models/{MODEL}/versions")).json()
    for _ in attempts:
        tally("code from an artifact", len(after) != len(before) or proof.exists())
    assert len(after) == len(before) and not proof.exists()

    # a version's bytes replaced in the store: the operator cannot make it champion
    version_2 = (await admin.get(f"{registry}/models/{MODEL}/versions/2")).json()
    await store.put(version_2["artifact"]["uri"], data, "application/octet-stream")
    moved = await admin.put(
        f"{registry}/models/{MODEL}/aliases/champion",
        json={"version": 2, "expected_version": 1, "reason": "v2 after all"},
    )
    tally("unverified champion", moved.status_code != 409)
    assert moved.status_code == 409 and moved.json()["reason"] == "artifact_unverified"
    assert "fails verification" in moved.json()["error"]
    assert not proof.exists()


def test_the_table_of_attacks_shows_none_accepted():
    print(f"\n{'attack':<36}{'attempts':>9}{'accepted':>9}")
    for attack, (attempts, accepted) in TALLY.items():
        print(f"{attack:<36}{attempts:>9}{accepted:>9}")
    assert len(TALLY) == 8, sorted(TALLY)
    assert all(accepted == 0 and attempts > 0 for attempts, accepted in TALLY.values())
