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
