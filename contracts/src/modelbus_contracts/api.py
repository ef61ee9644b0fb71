"""HTTP API models shared between services: the registry's views (read by scorer and monitor)
and the one error body every service answers with.

Views ignore unknown fields so a newer server never breaks an older client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .events import ArtifactRef, DatasetRef, FeatureStats, Lineage, RolloutMode, Signature

Alias = Literal["champion", "challenger", "previous"]
# The largest model version anything accepts: every version fits a JSON number exactly (2**53,
# what a JavaScript client reads without rounding) and a store's int64, so a path or body
# beyond it is a 422 at the edge rather than an overflow (a 500) in a store.
VERSION_MAX = 2**53


class View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)


class VersionView(View):
    model_name: str
    version: int
    run_id: str
    artifact: ArtifactRef
    feature_names: list[str]
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: Lineage
    reference: dict[str, FeatureStats] = Field(default_factory=dict)
    signature: Signature | None = None
    status: str = Field(
        description="registered | champion | previous | rejected | retired | stale (no verdict "
        "came, or it could not be applied: see the audit log)"
    )
    created_at: datetime
    evaluation: dict[str, Any] | None = None

    @property
    def holdout(self) -> DatasetRef:
        return self.lineage.holdout


class AliasesView(View):
    model_name: str
    champion: int | None = None
    challenger: int | None = None
    previous: int | None = None


class RolloutView(View):
    """The live exposure of a challenger (scorers serve it in shadow or as a canary)."""

    mode: RolloutMode = "none"
    version: int | None = None
    champion_version: int | None = None
    fraction: float = 0.0
    step: int = 0


class ModelView(View):
    name: str
    aliases: AliasesView
    rollout: RolloutView | None = None
    latest_version: int | None = None
    version_count: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None


class AliasUpdate(View):
    """Compare-and-set: move ``alias`` to ``version`` only if it still points at ``expected``."""

    version: int = Field(ge=1, le=VERSION_MAX)
    expected_version: int | None = Field(
        ge=1, le=VERSION_MAX, description="what the alias must point at now (null: unset)"
    )
    reason: str = Field(min_length=1, max_length=2000)


class RollbackRequest(View):
    reason: str = Field(min_length=1, max_length=2000)


class AuditRecord(View):
    at: datetime
    model_name: str
    action: str = Field(
        description="registered | promoted | rejected | rolled_back | alias_set | ..."
    )
    version: int | None = None
    actor: str
    reason: str = ""
    event_id: str | None = None
    correlation_id: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(View):
    """The body of every error answer (4xx, 5xx) of every service.

    ``error`` is what the Open Inference Protocol v2 error body requires, so v2 clients
    (tritonclient) read it; ``reason`` is a short, stable code that clients and metrics can
    branch on."""

    error: str = Field(description="human-readable message")
    reason: str = Field(
        description="short machine code: not_found, validation_error, unknown_model, ..."
    )
    details: list[dict[str, Any]] | None = Field(
        default=None,
        description="the individual problems, e.g. each failed validation as {loc, msg, type}",
    )
