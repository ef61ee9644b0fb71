"""Settings of the batch scoring service (env prefix ``MODELBUS_``), built once at start-up."""

from __future__ import annotations

from pydantic import Field, model_validator

from modelbus_platform.settings import ServiceSettings

from .domain import DEFAULT_PREFIXES, BadJob, BatchSchedule, StoreBounds, job_keys


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
    batch_input_prefixes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PREFIXES),
        description='key prefixes batch jobs may read, JSON: ["batch/", "in/"]; anything else '
        "is refused (422 outside_prefixes)",
    )
    batch_output_prefixes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PREFIXES),
        description="key prefixes batch jobs may write (outputs and their .errors.csv), JSON; "
        "never under datasets/ or artifacts/ (refused at start)",
    )

    @model_validator(mode="after")
    def _schedules_inside_the_bounds(self) -> BatchSettings:
        """Refuse to start with a prefix that is not a clean key prefix, an output prefix over
        datasets/ or artifacts/, or a cron schedule that reads or writes outside the bounds:
        a schedule that could never run is a configuration error, not a nightly failed job."""
        bounds = self.store_bounds()
        for model, spec in self.batch_schedules.items():
            try:
                job_keys(spec.input_uri, spec.output_uri, bounds)
            except BadJob as exc:
                raise ValueError(
                    f"batch_schedules[{model!r}]: {exc.reason}: {exc.message}"
                ) from exc
        return self

    def store_bounds(self) -> StoreBounds:
        """Where jobs may read and write: the prefixes above, in the service's bucket."""
        return StoreBounds(self.bucket, self.batch_input_prefixes, self.batch_output_prefixes)
