"""Trainer settings: one object built at start-up (env prefix ``MODELBUS_``) and passed down."""

from __future__ import annotations

from pydantic import Field

from modelbus_platform.settings import ServiceSettings


class TrainerSettings(ServiceSettings):
    service_name: str = Field(default="trainer", description="name in logs, metrics, events")
    http_port: int = Field(default=8002, ge=0, le=65535, description="HTTP API port")

    default_seed: int = Field(default=42, description="seed used when a request gives none")
    holdout_fraction: float = Field(
        default=0.25, gt=0, lt=1, description="share of each dataset held out for evaluation"
    )
    drift_cooldown_s: float = Field(
        default=60.0,
        ge=0,
        description="minimum seconds between two drift-triggered runs of the same model",
    )
    drift_min_rows: int = Field(
        default=300,
        ge=2,
        description="labelled feedback rows needed after a drift before retraining",
    )
    drift_max_rows: int = Field(
        default=5000, ge=2, description="newest labelled feedback rows used by a drift retrain"
    )
    drift_wait_timeout_s: float = Field(
        default=300.0, gt=0, description="how long a drift run waits for enough feedback"
    )
    drift_poll_interval_s: float = Field(
        default=0.5, gt=0, description="how often a waiting drift run counts its feedback"
    )
    feedback_max_rows: int = Field(
        default=20000,
        ge=2,
        description="newest feedback rows used by a training request without a dataset_uri",
    )
    lock_ttl_s: float = Field(
        default=600.0,
        gt=0,
        description="a per-model training lock older than this may be taken over",
    )
    code_version: str = Field(
        default="dev",
        description="version of the training code recorded in lineage (MODELBUS_CODE_VERSION)",
    )
