"""Trainer settings: one object built at start-up (env prefix ``MODELBUS_``) and passed down."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from modelbus_contracts.policy import TrainingSchedule
from modelbus_platform.scheduler import CronSpec
from modelbus_platform.settings import ServiceSettings


class ScheduleSpec(TrainingSchedule, CronSpec):
    """A retraining schedule (the contract's ``TrainingSchedule``), its cron checked."""


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
        description="minimum seconds between two drift incidents' first runs for one model (an "
        "incident's later attempts are paced by the monitor)",
    )
    drift_min_rows: int = Field(
        default=400,
        ge=2,
        description="labelled feedback rows since an incident's onset needed before its first "
        "retrain; its n-th attempt waits for n times as many (a ladder of growing windows). "
        "400 rows hold out 100 (holdout_fraction 0.25): the deployer's min_holdout_rows",
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
    store_wait_s: float = Field(
        default=300.0,
        ge=0,
        description="how long a finished run waits for an object store that does not answer "
        "before it fails (its snapshots and artifact are written then; 0: no wait)",
    )
    lock_ttl_s: float = Field(
        default=600.0,
        gt=0,
        description="a per-model training lock older than this may be taken over",
    )
    drift_window: Literal["after_detection", "adwin"] = Field(
        default="after_detection",
        description="drift retrain data: rows predicted since the incident's onset_at, or "
        "('adwin') also the newest DriftDetected.window_size rows before it, which ADWIN "
        "attributes to the new regime",
    )
    drift_window_back_max_rows: int = Field(
        default=2000, ge=0, description="cap on the rows taken from before onset_at ('adwin')"
    )
    train_dedupe_window_s: float = Field(
        default=600.0,
        ge=0,
        description="a training trigger (API, bus, schedule, drift) with the same model, data, "
        "effective params and seed as a run created less than this many seconds ago that is "
        "pending, running or succeeded makes no new run (0: every trigger runs)",
    )
    model_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='per-model default params incl. family, JSON: {"churn": {"family": "river", '
        '"passes": 2}}; a request\'s params["family"] overrides the family',
    )
    python_entry_points: list[str] = Field(
        default_factory=list,
        description="'module:function' entry points a request may name for the python family "
        "(those in model_params are allowed too)",
    )
    schedules: dict[str, ScheduleSpec] = Field(
        default_factory=dict,
        description='per-model retraining schedule, JSON: {"churn": {"cron": "0 3 * * *", '
        '"since_hours": 24}}',
    )
    schedule_max_sleep_s: float = Field(
        default=30.0, gt=0, description="the scheduler wakes at least this often"
    )
    code_version: str = Field(
        default="dev",
        description="version of the training code recorded in lineage (MODELBUS_CODE_VERSION)",
    )
