"""Model families through the trainer, the drift data window, reproduction from lineage, and
per-stage timings in the run record."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from trainer_fixtures import Harness, drift_event, feedback_events, make_dataset

from modelbus_contracts import ModelPolicyChanged, ModelTrained, TrainingRequested
from modelbus_embedded.testing import service_app
from modelbus_ml import load_model
from modelbus_trainer import api
from modelbus_trainer.domain import run_id_for
from modelbus_trainer.reproduce import redo

NB = "modelbus_ml.examples:train_gaussian_nb"
PICKLES = {"artifacts": {"allow_pickle": True}}
FAMILIES = {
    "auto": ({}, None, None),
    "logreg": ({"family": "logreg"}, "modelbus.logreg.v1", "json"),
    "sklearn": ({"family": "sklearn"}, "modelbus.onnx.v1", "onnx"),
    "lightgbm": ({"family": "lightgbm", "n_estimators": 40}, "modelbus.onnx.v1", "onnx"),
    "xgboost": ({"family": "xgboost", "n_estimators": 40}, "modelbus.onnx.v1", "onnx"),
    "river": ({"family": "river"}, "modelbus.river.v1", "pkl"),
    "python": ({"family": "python", "entry_point": NB}, "modelbus.pickle.v1", "pkl"),
}


async def _put(h: Harness, model: str, rows: int = 200, seed: int = 0) -> str:
    return (await h.service.put_dataset(model, make_dataset(rows, seed).to_csv_bytes()))["uri"]


async def _train(h: Harness, event: TrainingRequested) -> dict:
    await h.service.on_training_requested(event)
    await h.service.drain(10)
    return await h.runs.get(run_id_for(event.event_id))


@pytest.mark.parametrize("family", sorted(FAMILIES))
async def test_each_family_trains_deterministically_and_reproduces(family):
    params, fmt, ext = FAMILIES[family]
    h = Harness(python_entry_points=[NB], train_dedupe_window_s=0)  # the same run twice
    if fmt and fmt.endswith(("river.v1", "pickle.v1")):  # an admin allowed this model pickles
        h.registry.set_policy("m", PICKLES)
    uri = await _put(h, "m")
    runs = [
        await _train(h, TrainingRequested(model_name="m", dataset_uri=uri, params=params, seed=5))
        for _ in range(2)
    ]
    assert all(r["state"] == "succeeded" for r in runs), [r["reason"] for r in runs]
    assert runs[0]["artifact"]["sha256"] == runs[1]["artifact"]["sha256"]
    trained = h.publisher.of(ModelTrained)[0]
    if family == "auto":  # the choice is recorded, and the artifact is the chosen family's
        selection = trained.lineage.params["model_selection"]
        assert selection == runs[0]["selection"]
        assert [c["family"] for c in selection["candidates"]] == ["logreg", "sklearn"]
        fmt, ext = FAMILIES[selection["chosen"]][1:]
    assert trained.artifact.format == fmt
    assert trained.artifact.uri == f"artifacts/m/{trained.artifact.sha256}.{ext}"
    assert trained.lineage.params["family"] == family
    data = h.store.objects[trained.artifact.uri]
    model = load_model(data, trained.artifact.format, trained.artifact.sha256)
    assert model.feature_names == ("x1", "x2")
    assert trained.metrics["auc"] > 0.7

    outcome = await h.service.reproduce(runs[0]["run_id"])
    assert outcome["matched"] and outcome["holdout_matched"] and outcome["format_matched"]
    assert outcome["actual_sha256"] == runs[0]["artifact"]["sha256"]
    assert (await h.runs.get(runs[0]["run_id"]))["last_reproduction"]["matched"] is True


async def test_a_drift_run_is_redone_from_object_storage_alone_byte_identically():
    """Train from feedback (not a CSV) on one trainer; redo it with nothing but the store."""
    h = Harness(drift_min_rows=40, model_params={"m": {"family": "river", "passes": 2}})
    h.registry.set_policy("m", PICKLES)
    at = h.clock.now
    await h.add_feedback(feedback_events("m", 90, at + timedelta(seconds=1), seed=3))
    run = await h.service.on_drift(drift_event("m", at))
    await h.service.drain(10)
    [trained] = h.publisher.of(ModelTrained)
    assert trained.lineage.params["family"] == "river" and trained.lineage.params["passes"] == 2

    fresh_store = type(h.store)()  # a different process: only the object store is shared
    fresh_store.objects = dict(h.store.objects)
    outcome = await redo(fresh_store, trained.lineage, trained.artifact, code_version="test")
    assert outcome["matched"], outcome
    assert outcome["code_version_recorded"] == "test"
    assert (await h.runs.get(run["run_id"]))["lineage"]["dataset"]["sha256"] == (
        trained.lineage.dataset.sha256
    )


async def test_reproduce_reports_a_mismatch_and_refuses_what_it_cannot_redo():
    h = Harness()
    uri = await _put(h, "m")
    params = {"family": "logreg"}
    run = await _train(h, TrainingRequested(model_name="m", dataset_uri=uri, params=params))
    # someone "retrained" with other params under the same record: the redo must notice
    run["lineage"]["params"]["epochs"] = 7
    await h.runs.update(run["run_id"], {"lineage": run["lineage"]})
    outcome = await h.service.reproduce(run["run_id"])
    assert outcome["matched"] is False
    assert outcome["actual_sha256"] != outcome["expected_sha256"]

    failed = await _train(h, TrainingRequested(model_name="m", dataset_uri="datasets/m/none.csv"))
    app = _app(h)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        assert (await c.post("/runs/nope/reproduce")).status_code == 404
        refused = await c.post(f"/runs/{failed['run_id']}/reproduce")
        assert refused.status_code == 409 and "failed" in refused.json()["error"]
        assert refused.json()["reason"] == "not_reproducible"
        del h.store.objects[run["lineage"]["dataset"]["uri"]]
        missing = await c.post(f"/runs/{run['run_id']}/reproduce")
        assert missing.status_code == 409 and "missing" in missing.json()["error"]


async def test_reproduce_endpoint_reports_the_match():
    h = Harness()
    run = await _train(h, TrainingRequested(model_name="m", dataset_uri=await _put(h, "m")))
    app = _app(h)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        response = await c.post(f"/runs/{run['run_id']}/reproduce")
    assert response.status_code == 200
    body = response.json()
    assert body["matched"] is True and body["expected_sha256"] == run["artifact"]["sha256"]


def _app(h: Harness):
    return service_app(api.router, context=h.service)


async def test_family_is_chosen_per_request_over_the_models_setting():
    h = Harness(model_params={"m": {"family": "river", "passes": 3}})
    h.registry.set_policy("m", PICKLES)
    uri = await _put(h, "m")
    by_setting = await _train(h, TrainingRequested(model_name="m", dataset_uri=uri))
    by_request = await _train(
        h, TrainingRequested(model_name="m", dataset_uri=uri, params={"family": "logreg"})
    )
    assert by_setting["params"]["family"] == "river" and by_setting["params"]["passes"] == 3
    assert by_setting["artifact"]["format"] == "modelbus.river.v1"
    assert by_request["artifact"]["format"] == "modelbus.logreg.v1"
    assert "passes" not in by_request["params"]  # the river settings do not leak into logreg


async def test_unknown_family_and_unlisted_entry_points_fail_with_the_reason():
    h = Harness()
    uri = await _put(h, "m")
    unknown = await _train(
        h, TrainingRequested(model_name="m", dataset_uri=uri, params={"family": "xgb"})
    )
    unlisted = await _train(
        h,
        TrainingRequested(
            model_name="m", dataset_uri=uri, params={"family": "python", "entry_point": "os:system"}
        ),
    )
    assert unknown["state"] == "failed" and "unknown model family 'xgb'" in unknown["reason"]
    assert unlisted["state"] == "failed" and "'os:system' is not allowed" in unlisted["reason"]
    assert h.publisher.of(ModelTrained) == []


async def test_the_run_records_every_stage_timing():
    h = Harness()
    run = await _train(h, TrainingRequested(model_name="m", dataset_uri=await _put(h, "m")))
    timings = run["timings"]
    stages = ("load", "split", "fit", "evaluate", "store")
    assert all(timings[f"{s}_seconds"] >= 0 for s in stages), timings
    assert timings["total_seconds"] >= sum(timings[f"{s}_seconds"] for s in stages)
    assert run["stage"] == "done"


async def test_drift_window_after_detection_uses_only_rows_after_detected_at():
    h = Harness(drift_min_rows=40)
    at = h.clock.now
    await h.add_feedback(feedback_events("m", 100, at - timedelta(minutes=5)))
    await h.add_feedback(feedback_events("m", 50, at + timedelta(seconds=1), seed=4))
    run = await h.service.on_drift(drift_event("m", at))
    await h.service.drain(10)
    done = await h.runs.get(run["run_id"])
    window = done["data_window"]
    assert done["dataset"]["rows"] == 50
    assert (window["mode"], window["extended_back_rows"], window["after_rows"]) == (
        "after_detection",
        0,
        50,
    )
    assert window["first_predicted_at"] >= at.isoformat()
    [trained] = h.publisher.of(ModelTrained)
    assert trained.lineage.params["data_window"] == window


async def test_adwin_window_extends_back_by_the_detectors_window_and_starts_sooner():
    # 30 rows after the drift are below drift_min_rows=100, but ADWIN's window (100 points,
    # capped at 80) before detected_at belongs to the new regime: 80 + 30 rows, no waiting.
    h = Harness(drift_min_rows=100, drift_window="adwin", drift_window_back_max_rows=80)
    at = h.clock.now
    await h.add_feedback(feedback_events("m", 200, at - timedelta(minutes=5)))
    await h.add_feedback(feedback_events("m", 30, at + timedelta(seconds=1), seed=4))
    run = await h.service.on_drift(drift_event("m", at))  # window_size=100
    await h.service.drain(10)
    done = await h.runs.get(run["run_id"])
    assert done["state"] == "succeeded", done["reason"]
    window = done["data_window"]
    assert (window["extended_back_rows"], window["after_rows"], window["rows"]) == (80, 30, 110)
    assert window["adwin_window_size"] == 100
    assert done["dataset"]["rows"] == 110


async def test_adwin_window_respects_max_rows_dropping_the_oldest_first():
    h = Harness(drift_min_rows=20, drift_max_rows=60, drift_window="adwin")
    at = h.clock.now
    await h.add_feedback(feedback_events("m", 200, at - timedelta(minutes=5)))
    await h.add_feedback(feedback_events("m", 40, at + timedelta(seconds=1), seed=4))
    run = await h.service.on_drift(drift_event("m", at))
    await h.service.drain(10)
    window = (await h.runs.get(run["run_id"]))["data_window"]
    assert (window["extended_back_rows"], window["after_rows"], window["rows"]) == (20, 40, 60)


async def test_the_live_training_policy_chooses_the_family_without_a_restart():
    h = Harness(python_entry_points=[])
    uri = await _put(h, "m")
    before = await _train(h, TrainingRequested(model_name="m", dataset_uri=uri))
    assert before["params"]["family"] == "auto" and before["policy_revision"] == 0
    h.registry.set_policy(
        "m", {"training": {"family": "sklearn", "params": {"estimator": "extra_trees"}}}
    )
    h.policies.invalidate("m")  # what ModelPolicyChanged does
    after = await _train(h, TrainingRequested(model_name="m", dataset_uri=uri))
    assert after["state"] == "succeeded", after["reason"]
    assert after["policy_revision"] == 1
    assert after["params"]["family"] == "sklearn"
    assert after["params"]["estimator"] == "extra_trees"
    assert after["artifact"]["format"] == "modelbus.onnx.v1"
    # a request's own params still win over the policy
    asked = await _train(
        h, TrainingRequested(model_name="m", dataset_uri=uri, params={"family": "logreg"})
    )
    assert asked["params"]["family"] == "logreg"
    # a policy cannot allow code: a python entry point still needs python_entry_points
    h.registry.set_policy("m", {"training": {"family": "python", "params": {"entry_point": NB}}})
    h.policies.invalidate("m")
    refused = await _train(h, TrainingRequested(model_name="m", dataset_uri=uri))
    assert refused["state"] == "failed" and "not allowed" in refused["reason"]


async def test_an_unreachable_registry_leaves_the_settings():
    h = Harness(model_params={"m": {"family": "logreg", "epochs": 50}})
    h.registry.down = True
    uri = await _put(h, "m")
    run = await _train(h, TrainingRequested(model_name="m", dataset_uri=uri))
    assert run["state"] == "succeeded" and run["params"]["epochs"] == 50
    assert run["policy_revision"] == 0


async def test_a_policy_schedule_is_set_on_the_running_scheduler_and_fires():
    from functools import partial

    from modelbus_platform.scheduler import CronScheduler
    from modelbus_trainer import handlers
    from modelbus_trainer.config import ScheduleSpec
    from modelbus_trainer.domain import NAMESPACE

    h = Harness(schedules={"other": ScheduleSpec(cron="0 4 * * *")})
    fire = partial(handlers.schedule_fired, publisher=h.publisher)
    h.service.scheduler = scheduler = CronScheduler(
        h.settings.schedules, fire, namespace=NAMESPACE, live=True
    )
    scheduler.start_from(h.clock.now)
    schedule = {"cron": "*/5 * * * *", "since_hours": 2, "params": {"family": "logreg"}}
    h.registry.set_policy("m", {"training": {"schedule": schedule}})
    await h.service.load_schedules()
    assert scheduler.schedules["m"].cron == "*/5 * * * *"
    assert set(scheduler.schedules) == {"m", "other"}, "the settings' schedules stay"
    fired = await scheduler.fire_due(h.clock.now + timedelta(minutes=5))
    [requested] = h.publisher.of(TrainingRequested)
    assert [f.key for f in fired] == ["m"]
    assert (requested.model_name, requested.reason, requested.params) == (
        "m",
        "schedule",
        {"family": "logreg"},
    )
    # a new revision without a schedule removes it (the model has none in the settings)
    h.registry.set_policy("m", {"training": {"family": "logreg"}})
    await handlers.policy_changed(
        h.service, ModelPolicyChanged(model_name="m", revision=2, actor="alice")
    )
    assert set(scheduler.schedules) == {"other"}


async def test_a_pickled_family_trains_only_when_the_policy_allows_it_and_is_signed():
    """river and python artifacts are pickles: refused (with the way out) unless an admin set
    artifacts.allow_pickle; then the trainer signs the artifact like every other one."""
    from modelbus_platform.artifacts import ArtifactTrust
    from modelbus_platform.settings import ServiceSettings
    from modelbus_platform.signing import keypair

    private, public = keypair()
    h = Harness(python_entry_points=[NB])
    h.service.trust = ArtifactTrust.from_settings(
        ServiceSettings(
            service_name="trainer", signing_key=private, trusted_keys=f'{{"trainer": "{public}"}}'
        )
    )
    uri = await _put(h, "m")
    for params in FAMILIES["river"][0], FAMILIES["python"][0]:
        refused = await _train(h, TrainingRequested(model_name="m", dataset_uri=uri, params=params))
        assert refused["state"] == "failed" and "allow_pickle" in refused["reason"]
    # auto with a pickled candidate: refused once the chosen artifact is known to be a pickle
    auto = {"family": "auto", "candidates": ["river"]}
    refused = await _train(h, TrainingRequested(model_name="m", dataset_uri=uri, params=auto))
    assert refused["state"] == "failed" and "allow_pickle" in refused["reason"]
    assert h.publisher.of(ModelTrained) == []

    h.registry.set_policy("m", PICKLES)
    h.policies.invalidate("m")
    river = FAMILIES["river"][0]
    run = await _train(h, TrainingRequested(model_name="m", dataset_uri=uri, params=river))
    assert run["state"] == "succeeded", run["reason"]
    [trained] = h.publisher.of(ModelTrained)
    assert trained.artifact.signature.signer == "trainer"
    assert h.service.trust.problem(trained.artifact, allow_pickle=True) is None
    assert "allow_pickle" in h.service.trust.problem(trained.artifact, allow_pickle=False)
