"""Settings of the registry service (env prefix ``MODELBUS_``), built once at start-up."""

from __future__ import annotations

from pydantic import Field

from modelbus_platform.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    service_name: str = Field(default="registry", description="name in logs, metrics, events")
    http_port: int = Field(default=8001, ge=0, le=65535, description="port of the HTTP API")
    consumer_group: str = Field(
        default="registry", description="Kafka consumer group of the registry's subscribers"
    )
    audit_page_limit: int = Field(
        default=1000, ge=1, description="most audit records one API call may return"
    )
    registered_timeout_s: float = Field(
        default=900.0,
        ge=0,
        description="a version still 'registered' this long after its ModelRegistered went out "
        "(and not awaiting approval or rolling out) is swept: re-announced without a verdict, "
        "else marked 'stale' (0: no sweep)",
    )
    registered_reannounce_max: int = Field(
        default=3,
        ge=0,
        description="re-announcements of a version without a verdict before it is 'stale'",
    )
    registered_sweep_interval_s: float = Field(
        default=60.0, gt=0, description="how often versions left 'registered' are swept"
    )
