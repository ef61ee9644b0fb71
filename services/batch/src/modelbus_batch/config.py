"""Settings of the batch scoring service (env prefix ``MODELBUS_``), built once at start-up."""

from __future__ import annotations

from pydantic import Field

from modelbus_platform.settings import ServiceSettings

from .domain import BatchSchedule


class BatchSettings(ServiceSettings):
    service_name: str = Field(default="batch", description="name in logs, metrics, events")
    http_port: int = Field(default=8006, ge=0, le=65535, description="HTTP port of the service")
    batch_chunk_rows: int = Field(
        default=50_000, ge=1, description="rows per chunk of a batch job (one predict per chunk)"
    )
    batch_id_column: str = Field(
        default="id",
        description="if the batch input has this column, the output keeps only it (plus the "
        "scores); otherwise every input column; empty: always every column",
    )
    batch_schedules: dict[str, BatchSchedule] = Field(
        default_factory=dict,
        description='cron batch jobs, JSON: {"<model>": {"cron": "0 2 * * *", "input_uri": '
        '"...", "output_uri"?: "...", "version"?: n}}',
    )
    schedule_max_sleep_s: float = Field(
        default=30.0, gt=0, description="the cron scheduler wakes at least this often"
    )
