"""The registry's rules, as pure functions: artifact checks, alias moves (champion, challenger,
previous), version statuses, and the shapes of stored documents and views. No I/O here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelbus_contracts import (
    ArtifactRef,
    DatasetRef,
    Event,
    FeatureSpec,
    FeatureStats,
    Lineage,
    ModelEvaluated,
    ModelSummary,
    ModelTrained,
    Signature,
)
from modelbus_contracts.api import AliasesView, AuditRecord, ModelView, RolloutView, VersionView
from modelbus_ml import ArtifactError, describe_artifact
from modelbus_ml.dataset import name_problem
from modelbus_ml.flavors import ArtifactInfo

ALIASES = ("champion", "challenger", "previous")

STATUS_REGISTERED = "registered"
STATUS_CHAMPION = "champion"
STATUS_PREVIOUS = "previous"
STATUS_REJECTED = "rejected"
STATUS_RETIRED = "retired"
# registered, and no verdict came (or the verdict could not be applied) within the sweep's
# timeout and re-announcements: see ``sweep_action``
STATUS_STALE = "stale"


class RegistryError(Exception):
    """A refused request; ``reason`` says why in words a caller can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFound(RegistryError):
    pass


class Conflict(RegistryError):
    """The state moved under the caller (compare-and-set failed) or forbids the change."""

    def __init__(self, reason: str, action: str = "alias_conflict") -> None:
        super().__init__(reason)
        self.action = action


class ArtifactRejected(RegistryError):
    pass


class PolicyRejected(RegistryError):
    """A policy the schema accepts but that cannot work (a cron expression that is not one)."""


# --- artifacts ---------------------------------------------------------------------------------


def check_artifact(data: bytes, ref: ArtifactRef, feature_names: list[str]) -> ArtifactInfo:
    """Refuse an artifact that does not load or does not match what the event claims.

    The sha256 is checked by the caller (``get_verified``) and again by ``describe_artifact``
    before anything is parsed. A pickled artifact (River, user models) is described from its
    header and never unpickled here: the registry does not run model code.
    """
    if len(data) != ref.size_bytes:
        raise ArtifactRejected(f"artifact has {len(data)} bytes, the event says {ref.size_bytes}")
    try:
        model = describe_artifact(data, ref.format, ref.sha256)
    except ArtifactError as exc:
        raise ArtifactRejected(f"artifact does not load: {exc}") from exc
    if list(model.feature_names) != list(feature_names):
        raise ArtifactRejected(
            f"artifact features {list(model.feature_names)} differ from the event's "
            f"{list(feature_names)}"
        )
    return model


# --- aliases -----------------------------------------------------------------------------------


def empty_aliases() -> dict[str, int | None]:
    return dict.fromkeys(ALIASES)


def new_model(name: str, now: datetime) -> dict[str, Any]:
    """A new model's document: no aliases, no versions yet."""
    return {
        "name": name,
        "aliases": empty_aliases(),
        "latest_version": 0,
        "alias_revision": 0,
        "created_at": now,
        "updated_at": now,
    }


@dataclass(frozen=True)
class AliasMove:
    """One compare-and-set on a model's aliases and the version statuses that follow from it.

    ``expected`` holds the current value of every alias the move writes (the CAS filter).
    """

    new: dict[str, int | None]
    expected: dict[str, int | None]
    statuses: dict[int, str] = field(default_factory=dict)


def promotion_refusal(version: int, champion: int | None) -> str | None:
    """Why ``version`` may not become champion, or None. A champion never moves backwards."""
    if champion is None:
        return None
    if version == champion:
        return f"version {version} is already the champion"
    if version < champion:
        return f"version {version} is older than the champion version {champion}"
    return None


def plan_promotion(
    aliases: dict[str, int | None], version: int, expected_champion: int | None
) -> AliasMove:
    """champion := version, previous := the old champion (if any), challenger cleared if it
    was this version. The CAS expects the champion to still be ``expected_champion``."""
    new: dict[str, int | None] = {"champion": version}
    statuses = {version: STATUS_CHAMPION}
    if expected_champion is not None:
        new["previous"] = expected_champion
        statuses[expected_champion] = STATUS_PREVIOUS
    if aliases.get("challenger") == version:
        new["challenger"] = None
    expected = {k: aliases.get(k) for k in new}
    expected["champion"] = expected_champion
    return AliasMove(new=new, expected=expected, statuses=statuses)


def plan_rollback(aliases: dict[str, int | None]) -> AliasMove:
    """champion := previous, previous := None; the rolled-back champion is retired."""
    champion, previous = aliases.get("champion"), aliases.get("previous")
    if champion is None:
        raise Conflict("no champion to roll back from", action="rollback_refused")
    if previous is None:
        raise Conflict(
            f"no previous version to roll back to (champion is {champion})",
            action="rollback_refused",
        )
    return AliasMove(
        new={"champion": previous, "previous": None},
        expected={"champion": champion, "previous": previous},
        statuses={previous: STATUS_CHAMPION, champion: STATUS_RETIRED},
    )


NO_ROLLOUT: dict[str, Any] = {
    "mode": "none",
    "version": None,
    "champion_version": None,
    "fraction": 0.0,
    "step": 0,
}


def rollout_refusal(version: int, aliases: dict[str, int | None]) -> str | None:
    """Why ``version`` may not be exposed as the challenger, or None."""
    champion = aliases.get("champion")
    if champion is not None and version <= champion:
        return f"version {version} is not newer than the champion version {champion}"
    challenger = aliases.get("challenger")
    if challenger is not None and challenger > version:
        return f"a newer challenger (version {challenger}) is already rolling out"
    return None


def plan_challenger(
    aliases: dict[str, int | None], version: int, expected_champion: int | None
) -> AliasMove:
    """challenger := version, only while the champion is still ``expected_champion``."""
    return AliasMove(
        new={"challenger": version},
        expected={"champion": expected_champion, "challenger": aliases.get("challenger")},
    )


def rollout_doc(event: ModelEvaluated) -> dict[str, Any]:
    rollout = event.rollout
    return {
        "mode": rollout.mode if rollout else "none",
        "version": event.version,
        "champion_version": event.champion_version,
        "fraction": float(rollout.fraction) if rollout else 0.0,
        "step": int(rollout.step) if rollout else 0,
    }


def rollout_of(model: dict[str, Any]) -> dict[str, Any]:
    stored = model.get("rollout") or {}
    return {**NO_ROLLOUT, **stored}


def plan_alias_set(
    aliases: dict[str, int | None], alias: str, version: int, expected: int | None
) -> AliasMove:
    """A caller's compare-and-set of one alias; champion moves follow the promotion rules."""
    if alias not in ALIASES:
        raise NotFound(f"unknown alias {alias!r}; expected one of {', '.join(ALIASES)}")
    current = aliases.get(alias)
    if current != expected:
        action = "promotion_conflict" if alias == "champion" else "alias_conflict"
        raise Conflict(
            f"{alias} is at version {current}, not the expected {expected}", action=action
        )
    if alias == "champion":
        refusal = promotion_refusal(version, current)
        if refusal:
            raise Conflict(refusal, action="promotion_refused")
        return plan_promotion(aliases, version, current)
    return AliasMove(new={alias: version}, expected={alias: current})


# --- documents and views -----------------------------------------------------------------------


def follow_up_id(cause: Event, event_type: str) -> uuid.UUID:
    """A deterministic id for the event ``cause`` leads to, so a retried handler re-emits the
    same event (consumers dedupe it) instead of a second one."""
    return uuid.uuid5(cause.event_id, event_type)


IMPORT_NAMESPACE = uuid.UUID("0b5c7f1e-3d2a-4c6b-9e8f-7a1d2c3b4e5f")
IMPORT_TRIGGER = "import"


def imported_event(
    name: str,
    artifact: ArtifactRef,
    feature_names: list[str],
    *,
    metrics: dict[str, float],
    holdout: DatasetRef,
    reference: dict[str, FeatureStats],
    params: dict[str, Any],
    actor: str,
    signature: Signature | None = None,
) -> ModelTrained:
    """The ModelTrained of a model trained elsewhere: its run id (and event id) derive from the
    artifact's sha256, so importing the same bytes twice registers one version. The data it was
    trained on is unknown: the lineage names the hold-out it is judged on, and says so."""
    run_id = f"import-{artifact.sha256[:32]}"
    return ModelTrained(
        event_id=uuid.uuid5(IMPORT_NAMESPACE, f"{name}:{run_id}"),
        producer=actor,
        model_name=name,
        run_id=run_id,
        artifact=artifact,
        feature_names=feature_names,
        metrics=metrics,
        lineage=Lineage(
            dataset=holdout,
            holdout=holdout,
            params={**params, "imported": True, "training_data": "unknown (trained elsewhere)"},
            seed=0,
            code_version="external",
            trigger=IMPORT_TRIGGER,
        ),
        reference=reference,
        training_seconds=0.0,
        signature=signature,
    )


@dataclass(frozen=True)
class ImportSpec:
    """What the caller of an import says about the model: its features in input order, and
    optionally its task, its classes (in output order) and, per feature, what a given signature
    (or an MLflow signature) sets: kind, nullable, categories. The rest comes from the model's
    inputs and outputs and from the hold-out."""

    names: tuple[str, ...]
    task: str | None = None
    classes: tuple[str, ...] = ()
    features: dict[str, FeatureSpec] = field(default_factory=dict)


def import_spec(
    feature_names: list[str] | None,
    signature: Signature | None = None,
    task: str | None = None,
    classes: list[str] | None = None,
) -> ImportSpec:
    """The ``ImportSpec`` of a request: a signature (its unset task and classes are read from
    the model), else the feature names with an optional task and classes. What is given twice
    must agree (ArtifactRejected otherwise)."""
    classes_t = tuple(classes or ())
    if signature is not None:
        names = tuple(f.name for f in signature.features)
        if feature_names and tuple(feature_names) != names:
            raise ArtifactRejected(
                f"feature_names {list(feature_names)} differ from the signature's {list(names)}"
            )
        given_task = signature.task if "task" in signature.model_fields_set else None
        if task and given_task and task != given_task:
            raise ArtifactRejected(f"task {task!r} differs from the signature's {given_task!r}")
        if classes_t and signature.classes and classes_t != tuple(signature.classes):
            raise ArtifactRejected(
                f"classes {list(classes_t)} differ from the signature's {signature.classes}"
            )
        task, classes_t = task or given_task, classes_t or tuple(signature.classes)
        features = {f.name: f for f in signature.features}
    else:
        if not feature_names:
            raise ArtifactRejected("feature_names (or a signature) is required for an ONNX model")
        names, features = tuple(feature_names), {}
    for name in names:  # the rule a dataset's columns follow (a NUL poisons every store)
        problem = name_problem(name)
        if problem:
            raise ArtifactRejected(f"feature name {name!r} {problem}")
    if len(set(names)) != len(names):
        raise ArtifactRejected(f"feature names repeat: {list(names)}")
    if classes_t and task not in (None, "multiclass"):
        raise ArtifactRejected(f"classes are for a multiclass model, not a {task} one")
    return ImportSpec(names, task or ("multiclass" if classes_t else None), classes_t, features)


def check_kinds(spec: ImportSpec, kinds: dict[str, str]) -> None:
    """ArtifactRejected when a kind the caller set differs from the model's input."""
    for name, given in spec.features.items():
        kind = kinds.get(name)
        if kind is not None and "kind" in given.model_fields_set and given.kind != kind:
            raise ArtifactRejected(
                f"the signature says {name!r} is a {given.kind}, the model takes a {kind}"
            )


def imported_signature(
    spec: ImportSpec,
    kinds: tuple[str, ...],
    task: str,
    classes: tuple[str, ...],
    holdout: dict[str, Any],
) -> Signature:
    """An imported version's signature: kinds from the model's inputs (a string input is a
    category), task and classes from the model; nullable and categories as the given signature
    sets them, else as the hold-out it was judged on shows them (``Dataset.signature()``)."""
    check_kinds(spec, dict(zip(spec.names, kinds, strict=True)))
    seen = {f["name"]: f for f in holdout["features"]}
    features = []
    for name, kind in zip(spec.names, kinds, strict=True):
        given = spec.features.get(name)
        set_ = given.model_fields_set if given is not None else set()
        from_holdout = seen.get(name, {})
        nullable = given.nullable if "nullable" in set_ else from_holdout.get("nullable", False)
        categories = (
            given.categories if "categories" in set_ else from_holdout.get("categories", [])
        )
        features.append(
            FeatureSpec(
                name=name,
                kind=kind,
                nullable=bool(nullable),
                categories=list(categories) if kind == "category" else [],
            )
        )
    return Signature(features=features, task=task, classes=list(classes))


def import_task_refusal(task: str, champion: Signature | None, champion_version: int) -> str | None:
    """Why a model of ``task`` may not join a model whose champion is ``champion`` (None: an
    older binary version), or None: the deployer compares a challenger with its champion."""
    expected = champion.task if champion else "binary"
    if task == expected:
        return None
    return (
        f"the model is a {task} model, the champion (v{champion_version}) a {expected} one: "
        "a version must be comparable with the champion"
    )


def version_doc(event: ModelTrained, version: int, now: datetime) -> dict[str, Any]:
    return {
        "model_name": event.model_name,
        "version": version,
        "run_id": event.run_id,
        "artifact": event.artifact.model_dump(mode="json"),
        # unique per model (a partial index: versions registered before it have none)
        "artifact_sha256": event.artifact.sha256,
        "feature_names": list(event.feature_names),
        "metrics": dict(event.metrics),
        "lineage": event.lineage.model_dump(mode="json"),
        "reference": {k: v.model_dump(mode="json") for k, v in event.reference.items()},
        # None for a version trained before signatures: binary, every feature a number
        "signature": event.signature.model_dump(mode="json") if event.signature else None,
        "status": STATUS_REGISTERED,
        "created_at": now,
        "evaluation": None,
        "registered_by": str(event.event_id),
        "correlation_id": str(event.correlation_id),
        "reannounced": 0,  # times the sweep announced it again (``sweep_action``)
    }


# --- versions left in ``registered`` -----------------------------------------------------------


def as_utc(value: datetime | str) -> datetime:
    """A stored time as an aware UTC datetime (a store may hand back a naive one, or a string)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def reannouncements(doc: dict[str, Any]) -> int:
    return int(doc.get("reannounced") or 0)


def last_announced(doc: dict[str, Any]) -> datetime:
    """When the version's ModelRegistered last went out: registration, or the last
    re-announcement."""
    return as_utc(doc.get("announced_at") or doc["created_at"])


def reannounce_id(doc: dict[str, Any], attempt: int) -> uuid.UUID:
    """The id of a version's ``attempt``-th re-announced ModelRegistered: new (a consumer's
    ledger would skip the first id), and the same for two registry replicas sweeping at once."""
    return uuid.uuid5(uuid.UUID(doc["registered_by"]), f"model.registered.v1/reannounce/{attempt}")


@dataclass(frozen=True)
class SweepAction:
    action: str  # "reannounce" | "stale"
    reason: str


def sweep_action(
    doc: dict[str, Any],
    aliases: dict[str, int | None],
    now: datetime,
    timeout_s: float,
    max_reannounce: int,
) -> SweepAction | None:
    """What the sweep does with a version, or None: only a version still ``registered``
    ``timeout_s`` after its last announcement is stuck, unless it waits for a person (a
    ``pending_approval`` verdict) or is rolling out (the challenger). With no verdict its
    ModelRegistered is re-announced, up to ``max_reannounce`` times, then it is ``stale``; with
    a verdict the registry could not apply (a promotion refused or in conflict, a rollout
    refused, an artifact that fails verification) it is ``stale`` at once: the deployer decides
    once per version, so nothing would change it."""
    if doc.get("status") != STATUS_REGISTERED:
        return None
    decision = (doc.get("evaluation") or {}).get("decision")
    if decision == "pending_approval" or aliases.get("challenger") == doc["version"]:
        return None
    waited = (now - last_announced(doc)).total_seconds()
    if waited < timeout_s:
        return None
    done = reannouncements(doc)
    if decision is None and done < max_reannounce:
        return SweepAction(
            "reannounce",
            f"no verdict {waited:.0f}s after version {doc['version']} was announced: "
            f"ModelRegistered re-announced ({done + 1} of {max_reannounce})",
        )
    if decision is None:
        return SweepAction(
            "stale",
            f"no verdict from the deployer {waited:.0f}s after version {doc['version']} was "
            f"announced, {done} re-announcement(s) included: check the deployer's decision on "
            "it and model.registered.v1's dead letters",
        )
    return SweepAction(
        "stale",
        f"the deployer's verdict {decision!r} on version {doc['version']} could not be "
        f"applied: it is neither champion nor challenger {waited:.0f}s after it was announced",
    )


def evaluation_doc(event: ModelEvaluated, now: datetime) -> dict[str, Any]:
    return {
        "event_id": str(event.event_id),
        "at": now.isoformat(),
        "decision": event.decision,
        "reasons": list(event.reasons),
        "gates": [g.model_dump(mode="json") for g in event.gates],
        "champion_version": event.champion_version,
        "holdout": event.holdout.model_dump(mode="json"),
        "challenger_metrics": dict(event.challenger_metrics),
        "champion_metrics": dict(event.champion_metrics),
    }


def summary(doc: dict[str, Any]) -> ModelSummary:
    view = version_view(doc)
    return ModelSummary(
        version=view.version,
        artifact=view.artifact,
        feature_names=view.feature_names,
        metrics=view.metrics,
        holdout=view.lineage.holdout,
        signature=view.signature,
    )


def version_view(doc: dict[str, Any]) -> VersionView:
    return VersionView.model_validate(doc)


def aliases_of(model: dict[str, Any]) -> dict[str, int | None]:
    stored = model.get("aliases") or {}
    return {k: stored.get(k) for k in ALIASES}


def aliases_view(model: dict[str, Any]) -> AliasesView:
    return AliasesView(model_name=model["name"], **aliases_of(model))


def model_view(model: dict[str, Any], version_count: int) -> ModelView:
    return ModelView(
        name=model["name"],
        aliases=aliases_view(model),
        rollout=RolloutView.model_validate(rollout_of(model)),
        latest_version=model.get("latest_version"),
        version_count=version_count,
        created_at=model.get("created_at"),
        updated_at=model.get("updated_at"),
    )


def audit_doc(
    *,
    at: datetime,
    model_name: str,
    action: str,
    actor: str,
    version: int | None = None,
    reason: str = "",
    cause: Event | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An audit record (validated against the contract) as a storable document."""
    record = AuditRecord(
        at=at,
        model_name=model_name,
        action=action,
        version=version,
        actor=actor,
        reason=reason,
        event_id=str(cause.event_id) if cause else None,
        correlation_id=str(cause.correlation_id) if cause else None,
        details=details or {},
    )
    doc = record.model_dump(mode="json")
    doc["at"] = at
    return doc
