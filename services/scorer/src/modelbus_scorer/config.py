"""Settings of the scorer service (env prefix ``MODELBUS_``), built once at start-up."""

from __future__ import annotations

from pydantic import Field

from modelbus_platform.settings import ServiceSettings


class ScorerSettings(ServiceSettings):
    service_name: str = Field(default="scorer", description="name in logs, metrics, events")
    http_port: int = Field(default=8004, ge=0, le=65535, description="HTTP port of the scorer")
    sync_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="periodic resync of every champion with the registry (safety net for "
        "missed control events)",
    )
    prediction_log_queue: int = Field(
        default=10_000,
        ge=1,
        description="predictions waiting to be published as PredictionMade; beyond this they "
        "are dropped and counted so HTTP never waits on Kafka",
    )
    prediction_log_linger_s: float = Field(
        default=0.005,
        ge=0,
        le=1,
        description="how long the prediction log waits after the first queued prediction "
        "before publishing (Kafka's linger.ms): bigger batches, less CPU per prediction",
    )
    max_instances_per_request: int = Field(
        default=10_000, ge=1, description="largest batch one HTTP request may score"
    )
    fast_http: bool = Field(
        default=True,
        description="route the scoring routes (v2 infer, native predict) with the data plane's "
        "own router, before FastAPI's; false lets FastAPI's router find them. Same middleware "
        "chain and same answers either way, at a fraction of the cost",
    )
