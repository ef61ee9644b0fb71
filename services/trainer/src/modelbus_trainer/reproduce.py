"""Redo a finished run from its lineage and object storage alone, and say whether the artifact
came out byte-identical (same sha256) to the one recorded.

Only what the lineage names is used: the dataset snapshot (fetched and sha256-verified), the
params (family, fit params, task, hold-out fraction) and the seed, and how the run read the
snapshot (its feature kinds and class order, recorded on the run as ``data_spec``: a CSV alone
cannot tell a category "75001" from a number). The hold-out split is redone from the seed and
compared with the recorded hold-out snapshot too.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from modelbus_contracts import ArtifactRef, Lineage
from modelbus_ml import DatasetError
from modelbus_platform.stores import IntegrityError, ObjectNotFound, ObjectStore, get_verified

from .domain import DataSpec, RunFailed, csv_dataset, train_snapshot


class ReproduceFailed(Exception):
    """The run cannot be redone (missing or corrupt snapshot, or training fails)."""


async def redo(
    store: ObjectStore,
    lineage: Lineage,
    expected: ArtifactRef,
    *,
    code_version: str,
    recorded: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Retrain from ``lineage`` and compare with ``expected`` (never raises on a mismatch).
    ``recorded`` is the run's ``data_spec`` (none for runs older than it: inferred)."""
    started = time.perf_counter()
    ref = lineage.dataset
    spec = DataSpec(
        task=lineage.params.get("task"),
        kinds=dict((recorded or {}).get("kinds") or {}),
        classes=tuple((recorded or {}).get("classes") or ()),
    )
    try:
        data = await get_verified(store, ref.uri, ref.sha256)
        ds = await asyncio.to_thread(csv_dataset, data, spec)
        result = await asyncio.to_thread(train_snapshot, ds, dict(lineage.params), lineage.seed)
    except ObjectNotFound as exc:
        raise ReproduceFailed(f"dataset snapshot missing: {ref.uri}") from exc
    except IntegrityError as exc:
        raise ReproduceFailed(f"dataset snapshot corrupt: {exc}") from exc
    except (DatasetError, RunFailed) as exc:
        raise ReproduceFailed(str(exc)) from exc
    return {
        "matched": result.artifact_sha256 == expected.sha256,
        "expected_sha256": expected.sha256,
        "actual_sha256": result.artifact_sha256,
        "format": result.artifact_format,
        "format_matched": result.artifact_format == expected.format,
        "holdout_matched": result.holdout_sha256 == lineage.holdout.sha256,
        "dataset_sha256": ref.sha256,
        "family": lineage.params.get("family", "logreg"),
        "seed": lineage.seed,
        "code_version_recorded": lineage.code_version,
        "code_version_now": code_version,
        "seconds": time.perf_counter() - started,
    }
