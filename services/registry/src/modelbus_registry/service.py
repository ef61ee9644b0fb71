"""The registry's service layer: registration of trained models, evaluations and promotions,
alias compare-and-set, rollback, and the read side. Every decision is written to the audit log
with its reasons and numbers, and every state change that others care about is an event.

Dependencies are injected (repository port, object store, the event relay, clock); nothing here
knows about Kafka, MongoDB or HTTP. Events are never published "after" a write: they go into the
write that changes the state (the repository's ``events``), and the relay publishes them.
"""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import structlog

from modelbus_contracts import (
    ArtifactRef,
    DatasetRef,
    Event,
    FeatureSpec,
    FeatureStats,
    ModelEvaluated,
    ModelPolicyChanged,
    ModelPromoted,
    ModelRegistered,
    ModelRollbackRequested,
    ModelRolledBack,
    ModelRolloutChanged,
    ModelSummary,
    ModelTrained,
    Signature,
)
from modelbus_contracts.api import (
    AliasesView,
    AliasUpdate,
    AuditRecord,
    ModelView,
    RollbackRequest,
    VersionView,
)
from modelbus_contracts.envelope import utcnow
from modelbus_contracts.policy import PolicyUpdate, PolicyView
from modelbus_ml import (
    ArtifactError,
    Dataset,
    DatasetError,
    feature_stats,
    from_csv_bytes,
)
from modelbus_ml.mlflow import read_mlflow_zip
from modelbus_ml.onnx import ONNX_FORMAT, load_onnx, vet_import_isolated
from modelbus_platform.artifacts import ArtifactTrust
from modelbus_platform.outbox import Notifier
from modelbus_platform.scheduler import is_cron
from modelbus_platform.stores import (
    IntegrityError,
    ObjectConflict,
    ObjectNotFound,
    ObjectStore,
    get_verified,
    sha256_hex,
)

from . import domain
from .domain import (
    AliasMove,
    ArtifactRejected,
    Conflict,
    NotFound,
    PolicyRejected,
    RegistryError,
)
from .ports import RegistryRepository

log = structlog.get_logger(__name__)

EVENT_ACTOR = "registry"
API_ACTOR = "registry-api"
# audit actions that keep a deployer's verdict from applying to a version
REFUSALS = (
    "promotion_refused",
    "promotion_conflict",
    "rollout_refused",
    "rollout_conflict",
    "artifact_unverified",
)


class RegistryService:
    def __init__(
        self,
        repo: RegistryRepository,
        store: ObjectStore,
        events: Notifier,
        *,
        clock: Callable[[], datetime] = utcnow,
        on_decision: Callable[[str], None] | None = None,
        trust: ArtifactTrust | None = None,
    ) -> None:
        # signs what is imported; verifies what is registered and what becomes champion
        self.trust = trust or ArtifactTrust()
        self.repo = repo
        self.store = store
        self.events = events
        self.clock = clock
        self.on_decision = on_decision or (lambda action: None)

    # -- ModelTrained ---------------------------------------------------------------------------

    async def register(self, event: ModelTrained) -> ModelRegistered | None:
        """Verify the artifact and register the next version; idempotent on (model, run_id),
        and one version per artifact: bytes identical to a version's make no new one."""
        name = event.model_name
        existing = await self.repo.find_version_by_run(name, event.run_id)
        if existing is not None:
            await self._registration_duplicate(event, existing)
            return None
        same = await self.repo.find_version_by_artifact(name, event.artifact.sha256)
        if same is not None:
            await self._duplicate_artifact(event, same)
            return None
        try:
            await self._check_trusted(name, event.artifact)
            data = await get_verified(self.store, event.artifact.uri, event.artifact.sha256)
            domain.check_artifact(data, event.artifact, event.feature_names)
        except (ObjectNotFound, IntegrityError, ArtifactRejected) as exc:
            reason = _reason(exc)
            await self._audit(
                name,
                "registration_rejected",
                reason=reason,
                cause=event,
                details=_trained_details(event),
            )
            log.warning("registration.rejected", model=name, run_id=event.run_id, reason=reason)
            return None
        version = await self.repo.allocate_version(name, self.clock())
        doc = domain.version_doc(event, version, self.clock())
        registered = await self._registered_event(
            doc, domain.follow_up_id(event, ModelRegistered.event_type)
        )
        if not await self.repo.insert_version(doc, events=[registered]):
            # a concurrent delivery of the same run, or a run with the same artifact, won
            same = await self.repo.find_version_by_artifact(name, event.artifact.sha256)
            if same is not None and same["run_id"] != event.run_id:
                await self._duplicate_artifact(event, same, lost_version=version)
            else:
                log.info("registration.lost_race", model=name, run_id=event.run_id, version=version)
            return None
        await self.events.notify()
        await self._audit(
            name,
            "registered",
            version=version,
            cause=event,
            reason=f"run {event.run_id} registered as version {version}",
            details=_trained_details(event),
        )
        log.info("registration.registered", model=name, version=version, run_id=event.run_id)
        return registered

    async def _registration_duplicate(self, event: ModelTrained, existing: dict[str, Any]) -> None:
        if existing.get("registered_by") == str(event.event_id):
            return  # this very event registered it (a redelivery): its event is in the outbox
        await self._audit(
            event.model_name,
            "registration_duplicate",
            version=existing["version"],
            cause=event,
            reason=f"run {event.run_id} is already version {existing['version']}",
        )
        log.info("registration.duplicate_run", model=event.model_name, run_id=event.run_id)

    async def _duplicate_artifact(
        self, event: ModelTrained, same: dict[str, Any], *, lost_version: int | None = None
    ) -> None:
        """A run whose artifact is byte-identical to version ``same``'s: no new version,
        nothing emitted; audited with the version it duplicates."""
        sha = event.artifact.sha256
        reason = (
            f"run {event.run_id}'s artifact (sha256 {sha[:12]}…) is byte-identical to version "
            f"{same['version']}'s (run {same['run_id']}): no new version"
        )
        details = {**_trained_details(event), "existing_run_id": same["run_id"]}
        if lost_version is not None:  # a concurrent registration of the same bytes won
            details["unused_version_number"] = lost_version
        await self._audit(
            event.model_name,
            "registration_duplicate_artifact",
            version=same["version"],
            cause=event,
            reason=reason,
            details=details,
        )
        log.info(
            "registration.duplicate_artifact",
            model=event.model_name,
            run_id=event.run_id,
            version=same["version"],
            artifact_sha256=sha,
        )

    async def _registered_event(self, doc: dict[str, Any], event_id: uuid.UUID) -> ModelRegistered:
        """The ModelRegistered announcing version ``doc``, caused by the ModelTrained that
        registered it, with the champion as it is now (what the deployer compares against)."""
        view = domain.version_view(doc)
        return ModelRegistered(
            event_id=event_id,
            producer=EVENT_ACTOR,
            correlation_id=doc["correlation_id"],
            causation_id=doc["registered_by"],
            model_name=view.model_name,
            version=view.version,
            run_id=view.run_id,
            artifact=view.artifact,
            feature_names=view.feature_names,
            metrics=view.metrics,
            lineage=view.lineage,
            signature=view.signature,
            champion=await self._champion_summary(view.model_name, view.version),
        )

    # -- versions left in ``registered`` ----------------------------------------------------------

    async def sweep_registered(
        self, *, timeout_s: float, max_reannounce: int, limit: int = 10_000
    ) -> list[tuple[str, int, str]]:
        """Nothing stays ``registered`` silently: a version without a verdict
        ``timeout_s`` after its announcement is announced again (a new event id, the current
        champion), up to ``max_reannounce`` times, then marked ``stale``; one whose verdict
        could not be applied is ``stale`` (``domain.sweep_action``). Each step is a
        compare-and-set on the version (replicas sweep at once safely) and audited with its
        reason. Returns what it did: (model, version, action)."""
        now = self.clock()
        aliases: dict[str, dict[str, int | None]] = {}
        done: list[tuple[str, int, str]] = []
        for doc in await self.repo.versions_in_status(domain.STATUS_REGISTERED, limit):
            name = doc["model_name"]
            if name not in aliases:
                aliases[name] = await self._current_aliases(name)
            step = domain.sweep_action(doc, aliases[name], now, timeout_s, max_reannounce)
            if step is None:
                continue
            if step.action == "reannounce":
                acted = await self._reannounce(doc, step.reason, now)
            else:
                acted = await self._mark_stale(doc, step.reason, now)
            if acted:
                done.append((name, doc["version"], step.action))
        return done

    async def _reannounce(self, doc: dict[str, Any], reason: str, now: datetime) -> bool:
        name, version, before = doc["model_name"], doc["version"], domain.reannouncements(doc)
        event = await self._registered_event(doc, domain.reannounce_id(doc, before + 1))
        fields = {"reannounced": before + 1, "announced_at": now.isoformat()}
        if not await self.repo.sweep_version(name, version, before, fields, events=[event]):
            return False  # a verdict came, or another replica swept it
        await self.events.notify()
        await self._audit(
            name,
            "registration_reannounced",
            version=version,
            reason=reason,
            details={
                "attempt": before + 1,
                "emitted_event_id": str(event.event_id),
                "first_announced_at": domain.as_utc(doc["created_at"]).isoformat(),
            },
        )
        log.warning("registration.reannounced", model=name, version=version, attempt=before + 1)
        return True

    async def _mark_stale(self, doc: dict[str, Any], reason: str, now: datetime) -> bool:
        name, version = doc["model_name"], doc["version"]
        refusal = await self._last_refusal(name, version)
        if refusal is not None:
            reason = f"{reason}; {refusal.action}: {refusal.reason}"
        fields = {"status": domain.STATUS_STALE, "stale_at": now.isoformat()}
        if not await self.repo.sweep_version(name, version, domain.reannouncements(doc), fields):
            return False
        await self._audit(
            name,
            "version_stale",
            version=version,
            reason=reason,
            details={
                "reannounced": domain.reannouncements(doc),
                "decision": (doc.get("evaluation") or {}).get("decision"),
                "refusal": refusal.action if refusal else None,
            },
        )
        log.warning("registration.stale", model=name, version=version, reason=reason)
        return True

    async def _last_refusal(self, name: str, version: int) -> AuditRecord | None:
        """The newest audit record of what kept the verdict on ``version`` from applying."""
        for record in await self.audit(name, 500):
            if record.version == version and record.action in REFUSALS:
                return record
        return None

    async def run_sweeps(self, interval_s: float, timeout_s: float, max_reannounce: int) -> None:
        """The background task: ``sweep_registered`` every ``interval_s`` (a failed sweep is
        logged and the next one runs)."""
        while True:
            try:
                await self.sweep_registered(timeout_s=timeout_s, max_reannounce=max_reannounce)
            except Exception:
                log.exception("registration.sweep_failed")
            await asyncio.sleep(interval_s)

    async def _champion_summary(self, name: str, exclude: int) -> ModelSummary | None:
        model = await self.repo.get_model(name)
        champion = domain.aliases_of(model)["champion"] if model else None
        if champion is None or champion == exclude:
            return None
        doc = await self.repo.get_version(name, champion)
        return domain.summary(doc) if doc else None

    # -- a model trained elsewhere -------------------------------------------------------------

    async def import_mlflow(
        self,
        name: str,
        archive: bytes,
        *,
        feature_names: list[str] | None = None,
        signature: Signature | None = None,
        task: str | None = None,
        classes: list[str] | None = None,
        **kwargs: Any,
    ) -> tuple[VersionView, bool]:
        """``import_model`` for a zipped MLflow model directory with an ``onnx`` flavor: the
        feature names, kinds (a ``string`` column is a category) and nullability come from its
        column signature; ``feature_names`` or a ``signature`` given too must agree with it."""
        try:
            found = await asyncio.to_thread(read_mlflow_zip, archive)
        except ArtifactError as exc:
            raise ArtifactRejected(f"not an importable MLflow model: {exc}") from exc
        names = list(found.feature_names or ())
        given = feature_names or (
            [f.name for f in signature.features] if signature is not None else None
        )
        if given and names and list(given) != names:
            raise ArtifactRejected(
                f"feature names {list(given)} differ from the MLflow signature's {names}"
            )
        if not names and not given:
            raise ArtifactRejected(
                "the MLflow model has no column signature: give feature_names in input order"
            )
        spec = domain.import_spec(names or given, signature, task, classes)
        from_mlflow = {
            n: FeatureSpec(name=n, kind=k, **({"nullable": True} if nullable else {}))
            for n, k, nullable in zip(names, found.kinds, found.nullable, strict=True)
        }
        spec = replace(spec, features={**from_mlflow, **spec.features})
        source = kwargs.pop("source", "") or f"mlflow {found.info.get('run_id', '')}".strip()
        return await self._import(name, found.onnx, spec, source=source, **kwargs)

    async def import_model(
        self,
        name: str,
        data: bytes,
        *,
        feature_names: list[str] | None = None,
        signature: Signature | None = None,
        task: str | None = None,
        classes: list[str] | None = None,
        **kwargs: Any,
    ) -> tuple[VersionView, bool]:
        """Register a model exported to ONNX by any tool (binary, multiclass or regression,
        number and category inputs), described by ``signature`` or by ``feature_names`` with
        an optional ``task`` and ``classes``; see ``_import``."""
        spec = domain.import_spec(feature_names, signature, task, classes)
        return await self._import(name, data, spec, **kwargs)

    async def _import(
        self,
        name: str,
        data: bytes,
        spec: domain.ImportSpec,
        *,
        threshold: float = 0.5,
        holdout_uri: str | None = None,
        source: str = "",
        actor: str = API_ACTOR,
    ) -> tuple[VersionView, bool]:
        """Checked and given the modelbus header (no code runs), stored content-addressed,
        evaluated on the hold-out (``holdout_uri``, a labelled CSV already in the object store,
        e.g. from the trainer's ``PUT /datasets/{name}``; else the champion's hold-out) and
        registered like a trained version with its signature (kinds from the model's inputs,
        task and classes from the model, nullable and categories as given or as the hold-out
        shows them), so the deployer judges it with the same gates and the scorer enforces the
        signature. (the version, whether it is new); ``ArtifactRejected`` with the reason."""
        names = spec.names
        kinds = await asyncio.to_thread(declared_kinds, data, names)
        domain.check_kinds(spec, kinds)
        champion = await self._champion_summary(name, exclude=0)
        task = spec.task or (champion.signature.task if champion and champion.signature else None)
        holdout_ref, holdout = await self._import_holdout(name, holdout_uri, names, kinds, task)
        if spec.task is None and holdout.task == "multiclass" and not spec.classes:
            unnamed = [c for c in holdout.classes if not c.isdigit()]
            if unnamed:
                raise ArtifactRejected(
                    f"the hold-out's classes {list(holdout.classes)[:10]} are not the model's "
                    "output indexes: give classes in the order of the model's probabilities"
                )
        vet_spec = {"task": spec.task or holdout.task, "classes": list(spec.classes)}
        try:
            # the model comes from outside: it is checked and run in a process of its own,
            # with a memory and a time limit, so one that crashes or hangs takes nothing down
            artifact, metrics = await asyncio.to_thread(
                vet_import_isolated, data, names, threshold, holdout, vet_spec
            )
            model = await asyncio.to_thread(load_onnx, artifact)
        except ArtifactError as exc:
            read_as = (
                ""
                if spec.task
                else f" (the hold-out's labels read as {holdout.task}: give task if the model "
                "is another)"
            )
            raise ArtifactRejected(f"not an importable ONNX model: {exc}{read_as}") from exc
        if champion is not None:
            refusal = domain.import_task_refusal(model.task, champion.signature, champion.version)
            if refusal:
                raise ArtifactRejected(refusal)
        signature = domain.imported_signature(
            spec, model.kinds, model.task, model.classes, holdout.signature()
        )
        digest = sha256_hex(artifact)
        uri = f"artifacts/{name}/{digest}.onnx"
        try:  # write-once: the same bytes imported again are a no-op
            await self.store.put_once(uri, artifact, "application/octet-stream")
        except ObjectConflict as exc:  # someone replaced the stored bytes under this sha256
            raise Conflict(str(exc), "artifact_conflict") from exc
        reference = {k: FeatureStats(**v) for k, v in feature_stats(holdout).items()}
        ref = self.trust.sign(
            ArtifactRef(uri=uri, sha256=digest, size_bytes=len(artifact), format=ONNX_FORMAT)
        )
        params = {
            "family": "onnx",
            "threshold": threshold,
            "source": source[:200],
            "task": model.task,
        }
        event = domain.imported_event(
            name,
            ref,
            list(names),
            metrics=metrics,
            holdout=holdout_ref,
            reference=reference,
            params=params,
            actor=actor,
            signature=signature,
        )
        existing = await self.repo.find_version_by_run(
            name, event.run_id
        ) or await self.repo.find_version_by_artifact(name, digest)
        if existing is not None:  # these bytes were imported, or trained, before
            return domain.version_view(existing), False
        registered = await self.register(event)
        if registered is None:
            raced = await self.repo.find_version_by_run(
                name, event.run_id
            ) or await self.repo.find_version_by_artifact(name, digest)
            if raced is None:
                raise ArtifactRejected("the imported artifact was refused (see the audit log)")
            return domain.version_view(raced), False
        return await self.get_version(name, registered.version), True

    async def _import_holdout(
        self,
        name: str,
        uri: str | None,
        names: tuple[str, ...],
        kinds: dict[str, str],
        task: str | None,
    ) -> tuple[DatasetRef, Dataset]:
        """The hold-out an import is judged on, with its reference, restricted to the model's
        features and read as the model takes them (``kinds``) for ``task`` (None: as its labels
        say): the given object, else the champion's hold-out."""
        if uri:
            key = uri.split("/", 3)[3] if uri.startswith("s3://") else uri.lstrip("/")
            try:
                data = await self.store.get(key)
            except ObjectNotFound as exc:
                raise ArtifactRejected(f"hold-out {uri!r} not found in the object store") from exc
            digest = sha256_hex(data)
        else:
            champion = await self._champion_summary(name, exclude=0)
            if champion is None:
                raise ArtifactRejected(
                    "a first model needs a hold-out to be judged on: upload a labelled CSV "
                    "(the trainer's PUT /datasets/{name}) and give its uri as holdout_uri"
                )
            doc = await self.repo.get_version(name, champion.version)
            ref = DatasetRef.model_validate((doc or {})["lineage"]["holdout"])
            key, digest = ref.uri, ref.sha256
            try:
                data = await get_verified(self.store, key, digest)
            except (ObjectNotFound, IntegrityError) as exc:
                raise ArtifactRejected(f"the champion's hold-out is unusable: {exc}") from exc
        try:
            ds = await asyncio.to_thread(read_holdout, data, names, kinds, task)
        except DatasetError as exc:
            raise ArtifactRejected(f"bad hold-out: {exc}") from exc
        return DatasetRef(uri=key, sha256=digest, rows=ds.rows), ds

    # -- policies -------------------------------------------------------------------------------

    async def policy(self, name: str) -> PolicyView:
        """The model's newest policy revision (revision 0 and an empty policy: none set)."""
        doc = await self.repo.latest_policy(name)
        return PolicyView.model_validate(doc) if doc else PolicyView(model_name=name, revision=0)

    async def all_policies(self) -> list[PolicyView]:
        """The newest revision of every model's policy."""
        return [PolicyView.model_validate(d) for d in await self.repo.latest_policies()]

    async def policy_revisions(self, name: str, limit: int) -> list[PolicyView]:
        return [PolicyView.model_validate(d) for d in await self.repo.list_policies(name, limit)]

    async def put_policy(self, name: str, update: PolicyUpdate, *, actor: str) -> PolicyView:
        """Store the next revision if ``expected_revision`` is still the newest (else Conflict
        ``policy_conflict`` with the current one), with its audit record and a
        ModelPolicyChanged in the same write."""
        schedule = update.policy.training.schedule
        if schedule is not None and not is_cron(schedule.cron):
            raise PolicyRejected(
                f"training.schedule.cron is not a cron expression: {schedule.cron!r}"
            )
        current = await self.policy(name)
        if current.revision != update.expected_revision:
            raise Conflict(
                f"policy of {name} is at revision {current.revision}, not "
                f"{update.expected_revision}",
                action="policy_conflict",
            )
        revision = current.revision + 1
        view = PolicyView(
            model_name=name,
            revision=revision,
            policy=update.policy,
            updated_at=self.clock(),
            updated_by=actor,
            reason=update.reason,
        )
        changed = ModelPolicyChanged(
            producer=EVENT_ACTOR,
            model_name=name,
            revision=revision,
            actor=actor,
            reason=update.reason,
        )
        if not await self.repo.insert_policy(view.model_dump(), events=[changed]):
            raise Conflict(
                f"policy of {name} moved past revision {current.revision}", action="policy_conflict"
            )
        await self.events.notify()
        await self._audit(
            name,
            "policy_changed",
            actor=actor,
            reason=update.reason,
            details={
                "revision": revision,
                "previous_revision": current.revision,
                "policy": update.policy.model_dump(mode="json", exclude_defaults=True),
            },
        )
        log.info("policy.changed", model=name, revision=revision, actor=actor)
        return view

    # -- ModelEvaluated -------------------------------------------------------------------------

    async def record_evaluation(self, event: ModelEvaluated) -> ModelPromoted | None:
        """Store the verdict; on ``promote`` move the champion by compare-and-set."""
        name, version = event.model_name, event.version
        doc = await self.repo.get_version(name, version)
        model = await self.repo.get_model(name)
        if doc is None or model is None:
            await self._audit(
                name,
                "evaluation_ignored",
                version=version,
                cause=event,
                reason=f"version {version} of {name} is not registered",
            )
            return None
        aliases = domain.aliases_of(model)
        if _already_handled(doc, event) and aliases["champion"] == version:
            return None  # a redelivery after the promotion: its event is in the outbox
        await self.repo.update_version(
            name, version, {"evaluation": domain.evaluation_doc(event, self.clock())}
        )
        await self._audit(
            name,
            "evaluated",
            version=version,
            cause=event,
            reason="; ".join(event.reasons),
            details=_evaluation_details(event),
        )
        if event.decision == "reject":
            await self._reject(event, doc)
            await self._end_rollout(event, model)
            return None
        if event.decision == "pending_approval":
            await self._audit(
                name,
                "approval_pending",
                version=version,
                cause=event,
                reason="; ".join(event.reasons),
            )
            return None
        if event.decision in ("shadow", "canary"):
            await self._start_rollout(event, aliases)
            return None
        return await self._promote(event, doc, model)

    # -- rollouts (shadow / canary) -------------------------------------------------------------

    async def _start_rollout(
        self, event: ModelEvaluated, aliases: dict[str, int | None]
    ) -> ModelRolloutChanged | None:
        """challenger := version by compare-and-set (the champion must still be the one the
        deployer compared against), store the rollout state, tell the scorers."""
        name, version = event.model_name, event.version
        refusal = domain.rollout_refusal(version, aliases)
        if refusal:
            await self._audit(name, "rollout_refused", version=version, cause=event, reason=refusal)
            log.warning("rollout.refused", model=name, version=version, reason=refusal)
            return None
        move = domain.plan_challenger(aliases, version, event.champion_version)
        rollout = domain.rollout_doc(event)
        changed = self._rollout_event(event, rollout, "; ".join(event.reasons))
        moved = await self.repo.cas_aliases(
            name, move.expected, move.new, self.clock(), rollout=rollout, events=[changed]
        )
        if moved is None:
            current = await self._current_aliases(name)
            reason = f"aliases moved: {current}, the evaluation expected {move.expected}"
            await self._audit(name, "rollout_conflict", version=version, cause=event, reason=reason)
            log.warning("rollout.conflict", model=name, version=version, reason=reason)
            return None
        await self._rollout_changed(event, changed, rollout)
        return changed

    async def _end_rollout(self, event: ModelEvaluated, model: dict[str, Any]) -> None:
        """A rejected challenger that was rolling out leaves live traffic."""
        name, version = event.model_name, event.version
        ends = domain.rollout_of(model)["version"] == version
        rollout = dict(domain.NO_ROLLOUT)
        reason = f"rollout of version {version} ended: rejected"
        changed = self._rollout_event(event, rollout, reason) if ends else None
        events = [changed] if changed is not None else []
        moved = None
        if domain.aliases_of(model)["challenger"] == version:
            moved = await self.repo.cas_aliases(
                name,
                {"challenger": version},
                {"challenger": None},
                self.clock(),
                rollout=rollout if ends else None,
                events=events,
            )
        if changed is None:
            return
        if moved is None:  # no challenger alias to clear (or it moved meanwhile)
            await self.repo.set_rollout(name, rollout, self.clock(), events=events)
        await self._rollout_changed(event, changed, rollout)

    def _rollout_event(
        self, event: ModelEvaluated, rollout: dict[str, Any], reason: str
    ) -> ModelRolloutChanged:
        return event.caused(
            ModelRolloutChanged,
            producer=EVENT_ACTOR,
            event_id=domain.follow_up_id(event, ModelRolloutChanged.event_type),
            model_name=event.model_name,
            version=rollout["version"],
            champion_version=event.champion_version,
            mode=rollout["mode"],
            fraction=rollout["fraction"],
            reason=reason[:2000],
        )

    async def _rollout_changed(
        self, event: ModelEvaluated, changed: ModelRolloutChanged, rollout: dict[str, Any]
    ) -> None:
        """Audit a rollout change whose event was written with it, and get it published."""
        await self._audit(
            event.model_name,
            "rollout_changed",
            version=event.version,
            cause=event,
            reason=changed.reason,
            details={
                "rollout": rollout,
                "live_metrics": dict(event.live_metrics),
                "emitted_event_id": str(changed.event_id),
            },
        )
        log.info("rollout.changed", model=event.model_name, **rollout)
        await self.events.notify()

    # -- ModelRollbackRequested -----------------------------------------------------------------

    async def request_rollback(self, event: ModelRollbackRequested) -> ModelRolledBack | None:
        """The deployer's automatic rollback: champion := previous by compare-and-set, only if
        the champion is still ``from_version`` (a second request for the same promotion, or a
        request after a newer promotion, changes nothing)."""
        try:
            return await self._rollback(
                event.model_name,
                event.reason,
                actor="deployer",
                cause=event,
                expected_from=event.from_version,
                details={"evidence": dict(event.evidence), "requested_to": event.to_version},
            )
        except (Conflict, NotFound) as exc:
            log.warning(
                "rollback.request_refused",
                model=event.model_name,
                from_version=event.from_version,
                reason=exc.reason,
            )
            return None

    async def _reject(self, event: ModelEvaluated, doc: dict[str, Any]) -> None:
        if doc["status"] in (domain.STATUS_REGISTERED, domain.STATUS_STALE):
            await self.repo.update_version(
                event.model_name, event.version, {"status": domain.STATUS_REJECTED}
            )
        await self._audit(
            event.model_name,
            "rejected",
            version=event.version,
            cause=event,
            reason="; ".join(event.reasons),
            details=_evaluation_details(event),
        )
        log.info("evaluation.rejected", model=event.model_name, version=event.version)

    async def _promote(
        self, event: ModelEvaluated, doc: dict[str, Any], model: dict[str, Any]
    ) -> ModelPromoted | None:
        name, version = event.model_name, event.version
        aliases = domain.aliases_of(model)
        refusal = domain.promotion_refusal(version, aliases["champion"])
        if refusal:
            await self._audit(
                name,
                "promotion_refused",
                version=version,
                cause=event,
                reason=refusal,
                details={"champion": aliases["champion"]},
            )
            log.warning("promotion.refused", model=name, version=version, reason=refusal)
            return None
        refusal = await self._champion_refusal(name, doc)
        if refusal:
            await self._audit(
                name, "artifact_unverified", version=version, cause=event, reason=refusal
            )
            log.warning("promotion.refused", model=name, version=version, reason=refusal)
            return None
        move = domain.plan_promotion(aliases, version, event.champion_version)
        rollout = domain.rollout_of(model)
        ends_rollout = rollout["mode"] != "none" and (rollout["version"] or 0) <= version
        promoted = self._promoted_event(event, doc, event.champion_version)
        updated = await self.repo.cas_aliases(
            name,
            move.expected,
            move.new,
            self.clock(),
            rollout=dict(domain.NO_ROLLOUT) if ends_rollout else None,
            events=[promoted],
        )
        if updated is None:
            current = await self._current_aliases(name)
            reason = (
                f"champion is version {current['champion']}, the evaluation expected "
                f"{event.champion_version}"
            )
            await self._audit(
                name,
                "promotion_conflict",
                version=version,
                cause=event,
                reason=reason,
                details={"current": current, "expected": move.expected},
            )
            log.warning("promotion.conflict", model=name, version=version, reason=reason)
            return None
        await self.events.notify()
        await self._apply_statuses(name, move)
        await self._audit(
            name,
            "promoted",
            version=version,
            cause=event,
            reason=promoted.reason,
            details={
                "from": event.champion_version,
                "to": version,
                "aliases": domain.aliases_of(updated),
                "emitted_event_id": str(promoted.event_id),
            },
        )
        log.info("promotion.promoted", model=name, version=version, previous=event.champion_version)
        return promoted

    def _promoted_event(
        self, event: ModelEvaluated, doc: dict[str, Any], previous: int | None
    ) -> ModelPromoted:
        view = domain.version_view(doc)
        return event.caused(
            ModelPromoted,
            producer=EVENT_ACTOR,
            event_id=domain.follow_up_id(event, ModelPromoted.event_type),
            model_name=event.model_name,
            version=event.version,
            previous_version=previous,
            artifact=view.artifact,
            feature_names=view.feature_names,
            reason="; ".join(event.reasons) or "promoted by evaluation",
            signature=view.signature,
        )

    # -- commands from the API ------------------------------------------------------------------

    async def set_alias(
        self, name: str, alias: str, update: AliasUpdate, actor: str = API_ACTOR
    ) -> AliasesView:
        """Compare-and-set one alias. Moving ``champion`` is a promotion (event + rules)."""
        model = await self._model(name)
        doc = await self._version_doc(name, update.version)
        try:
            move = domain.plan_alias_set(
                domain.aliases_of(model), alias, update.version, update.expected_version
            )
        except Conflict as exc:
            await self._audit(
                name,
                exc.action,
                version=update.version,
                actor=actor,
                reason=exc.reason,
                details={"alias": alias, "request": update.model_dump()},
            )
            raise
        promoted = None
        if alias == "champion":
            await self._refuse_unverified(name, doc, actor=actor)
            promoted = ModelPromoted(
                producer=API_ACTOR,
                model_name=name,
                version=update.version,
                previous_version=update.expected_version,
                artifact=doc["artifact"],
                feature_names=doc["feature_names"],
                reason=update.reason,
                signature=doc.get("signature"),
            )
        updated = await self.repo.cas_aliases(
            name, move.expected, move.new, self.clock(), events=[promoted] if promoted else []
        )
        if updated is None:
            current = (await self._current_aliases(name)).get(alias)
            action = "promotion_conflict" if alias == "champion" else "alias_conflict"
            reason = f"{alias} is at version {current}, not the expected {update.expected_version}"
            await self._audit(
                name,
                action,
                version=update.version,
                actor=actor,
                reason=reason,
                details={"alias": alias, "request": update.model_dump()},
            )
            raise Conflict(reason, action=action)
        await self.events.notify()
        await self._apply_statuses(name, move)
        await self._audit(
            name,
            "alias_set",
            version=update.version,
            actor=actor,
            reason=update.reason,
            cause=promoted,
            details={
                "alias": alias,
                "from": update.expected_version,
                "to": update.version,
                "aliases": domain.aliases_of(updated),
            },
        )
        log.info("alias.set", model=name, alias=alias, version=update.version)
        return domain.aliases_view(updated)

    async def rollback(
        self, name: str, request: RollbackRequest, actor: str = API_ACTOR
    ) -> AliasesView:
        """champion := previous by compare-and-set; the rolled-back version is retired."""
        await self._rollback(name, request.reason, actor=actor)
        return domain.aliases_view(await self._model(name))

    async def _rollback(
        self,
        name: str,
        reason: str,
        *,
        actor: str,
        cause: Event | None = None,
        expected_from: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> ModelRolledBack:
        model = await self._model(name)
        aliases = domain.aliases_of(model)
        try:
            if expected_from is not None and aliases["champion"] != expected_from:
                raise Conflict(
                    f"champion is version {aliases['champion']}, not {expected_from}: "
                    "nothing to roll back",
                    action="rollback_skipped",
                )
            move = domain.plan_rollback(aliases)
        except Conflict as exc:
            await self._audit(name, exc.action, actor=actor, reason=exc.reason, cause=cause)
            raise
        from_version, to_version = move.expected["champion"], move.new["champion"]
        target = await self._version_doc(name, to_version)
        await self._refuse_unverified(name, target, actor=actor, cause=cause)
        data = dict(
            model_name=name,
            from_version=from_version,
            to_version=to_version,
            artifact=target["artifact"],
            feature_names=target["feature_names"],
            reason=reason,
            signature=target.get("signature"),
        )
        if cause is None:
            rolled_back = ModelRolledBack(producer=API_ACTOR, **data)
        else:
            rolled_back = cause.caused(
                ModelRolledBack,
                producer=EVENT_ACTOR,
                event_id=domain.follow_up_id(cause, ModelRolledBack.event_type),
                **data,
            )
        updated = await self.repo.cas_aliases(
            name, move.expected, move.new, self.clock(), events=[rolled_back]
        )
        if updated is None:
            reason = f"aliases moved during the rollback: {await self._current_aliases(name)}"
            await self._audit(name, "rollback_conflict", actor=actor, reason=reason)
            raise Conflict(reason, action="rollback_conflict")
        await self.events.notify()
        await self._apply_statuses(name, move)
        await self._audit(
            name,
            "rolled_back",
            version=to_version,
            actor=actor,
            reason=reason,
            cause=rolled_back,
            details={"from": from_version, "to": to_version, **(details or {})},
        )
        log.info("rollback.done", model=name, from_version=from_version, to_version=to_version)
        return rolled_back

    # -- artifacts a champion may have ---------------------------------------------------------

    async def _check_trusted(self, name: str, ref: ArtifactRef) -> None:
        """ArtifactRejected if the artifact's signature or format is refused (a pickle only if
        the model's policy allows it), before a byte of it is read."""
        refusal = await self.trust.refusal(ref, name, self._allows_pickle)
        if refusal is not None:
            raise ArtifactRejected(f"untrusted artifact: {refusal}")

    async def _allows_pickle(self, name: str) -> bool:
        return (await self.policy(name)).policy.artifacts.allow_pickle

    async def _champion_refusal(self, name: str, doc: dict[str, Any]) -> str | None:
        """Why version ``doc`` must not become champion now: its artifact fails verification
        (signature, pickle policy, the stored bytes against the sha256, the model's features).
        None if a scorer can load it."""
        ref = ArtifactRef.model_validate(doc["artifact"])
        try:
            await self._check_trusted(name, ref)
            data = await get_verified(self.store, ref.uri, ref.sha256)
            domain.check_artifact(data, ref, doc["feature_names"])
        except ObjectNotFound:
            return f"version {doc['version']}'s artifact {ref.uri} is missing from the store"
        except (IntegrityError, ArtifactRejected) as exc:
            return f"version {doc['version']}'s artifact fails verification: {_reason(exc)}"
        return None

    async def _refuse_unverified(
        self, name: str, doc: dict[str, Any], *, actor: str, cause: Event | None = None
    ) -> None:
        """Conflict ``artifact_unverified`` (audited) if ``doc`` cannot be made champion."""
        refusal = await self._champion_refusal(name, doc)
        if refusal is None:
            return
        await self._audit(
            name,
            "artifact_unverified",
            version=doc["version"],
            actor=actor,
            cause=cause,
            reason=refusal,
        )
        log.warning("champion.refused", model=name, version=doc["version"], reason=refusal)
        raise Conflict(refusal, action="artifact_unverified")

    # -- queries --------------------------------------------------------------------------------

    async def list_models(self) -> list[ModelView]:
        models = await self.repo.list_models()
        return [domain.model_view(m, await self.repo.count_versions(m["name"])) for m in models]

    async def get_model(self, name: str) -> ModelView:
        model = await self._model(name)
        return domain.model_view(model, await self.repo.count_versions(name))

    async def list_versions(self, name: str) -> list[VersionView]:
        await self._model(name)
        return [domain.version_view(d) for d in await self.repo.list_versions(name)]

    async def get_version(self, name: str, version: int) -> VersionView:
        return domain.version_view(await self._version_doc(name, version))

    async def aliases(self, name: str) -> AliasesView:
        return domain.aliases_view(await self._model(name))

    async def alias_target(self, name: str, alias: str) -> VersionView:
        if alias not in domain.ALIASES:
            raise NotFound(f"unknown alias {alias!r}")
        version = domain.aliases_of(await self._model(name))[alias]
        if version is None:
            raise NotFound(f"alias {alias} of {name} is not set")
        return await self.get_version(name, version)

    async def artifact(self, name: str, version: int) -> bytes:
        """The version's artifact bytes, only if their sha256 matches the record."""
        doc = await self._version_doc(name, version)
        ref = doc["artifact"]
        try:
            return await get_verified(self.store, ref["uri"], ref["sha256"])
        except ObjectNotFound as exc:
            raise NotFound(f"artifact {ref['uri']} is missing from object storage") from exc
        except IntegrityError as exc:
            await self._audit(
                name, "artifact_integrity_failed", version=version, actor=API_ACTOR, reason=str(exc)
            )
            raise Conflict(str(exc), action="artifact_integrity_failed") from exc

    async def audit(self, model_name: str | None, limit: int) -> list[AuditRecord]:
        rows = await self.repo.list_audit(model_name, limit)
        return [AuditRecord.model_validate(r) for r in rows]

    # -- helpers --------------------------------------------------------------------------------

    async def _model(self, name: str) -> dict[str, Any]:
        model = await self.repo.get_model(name)
        if model is None:
            raise NotFound(f"model {name!r} is not registered")
        return model

    async def _version_doc(self, name: str, version: int) -> dict[str, Any]:
        doc = await self.repo.get_version(name, version)
        if doc is None:
            raise NotFound(f"version {version} of model {name!r} is not registered")
        return doc

    async def _current_aliases(self, name: str) -> dict[str, int | None]:
        model = await self.repo.get_model(name)
        return domain.aliases_of(model) if model else domain.empty_aliases()

    async def _apply_statuses(self, name: str, move: AliasMove) -> None:
        for version, status in move.statuses.items():
            await self.repo.update_version(name, version, {"status": status})

    async def _audit(
        self,
        name: str,
        action: str,
        *,
        version: int | None = None,
        actor: str = EVENT_ACTOR,
        reason: str = "",
        cause: Event | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        record = domain.audit_doc(
            at=self.clock(),
            model_name=name,
            action=action,
            actor=actor,
            version=version,
            reason=reason,
            cause=cause,
            details=details,
        )
        await self.repo.append_audit(record)
        self.on_decision(action)


def declared_kinds(data: bytes, names: tuple[str, ...]) -> dict[str, str]:
    """Each feature's kind as the ONNX graph declares its inputs (a string input is a
    category, anything else a number), read from the protobuf without running the graph."""
    import onnx

    try:
        graph = onnx.load_from_string(data).graph
    except Exception as exc:  # any protobuf failure: not an ONNX model
        raise ArtifactRejected(f"not an ONNX model: {type(exc).__name__}: {exc}") from exc
    strings = {
        i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.STRING
    }
    return {n: "category" if n in strings else "number" for n in names}


def read_holdout(
    data: bytes, names: tuple[str, ...], kinds: dict[str, str], task: str | None
) -> Dataset:
    """A labelled CSV's columns ``names`` (DatasetError naming the missing ones), read as
    ``kinds`` for ``task``."""
    header = next(csv.reader(io.StringIO(data[:65536].decode("utf-8", "replace"))), [])
    missing = [n for n in names if n not in header]
    if missing:
        raise DatasetError(f"the hold-out has no column for the features {missing}")
    return from_csv_bytes(data, task=task, kinds=kinds).select(names)


def _reason(exc: Exception) -> str:
    if isinstance(exc, RegistryError):
        return exc.reason
    if isinstance(exc, ObjectNotFound):
        return f"artifact {exc.args[0]} not found in object storage"
    return f"{type(exc).__name__}: {exc}"


def _already_handled(doc: dict[str, Any], event: Event) -> bool:
    return (doc.get("evaluation") or {}).get("event_id") == str(event.event_id)


def _trained_details(event: ModelTrained) -> dict[str, Any]:
    return {
        "run_id": event.run_id,
        "artifact": event.artifact.model_dump(mode="json"),
        "metrics": dict(event.metrics),
        "dataset_sha256": event.lineage.dataset.sha256,
        "trigger": event.lineage.trigger,
    }


def _evaluation_details(event: ModelEvaluated) -> dict[str, Any]:
    return {
        "decision": event.decision,
        "champion_version": event.champion_version,
        "challenger_metrics": dict(event.challenger_metrics),
        "champion_metrics": dict(event.champion_metrics),
        "gates": [g.model_dump(mode="json") for g in event.gates],
        "holdout_sha256": event.holdout.sha256,
    }
