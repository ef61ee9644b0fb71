"""Monitor throughput bench: predictions/s with 20 features through the monitor's whole service
path vs River's detectors alone on the same values, pre-parsed, in one process.

Service path (what is measured): encoded CloudEvents Kafka records (binary mode: ce_* headers +
JSON value, exactly what ``modelbus_contracts.encode`` produces) are fed to the real
``EventBus.process_batch`` with the monitor's real subscriptions (``handlers.subscribe``), in
batches of 1,000 records like the Kafka consumer gives them: the contracts' batch decoder
(CloudEvents headers per column, the JSON by the event's derived msgspec struct; pydantic only
for records that are not plainly valid) -> the batch handler -> per-model lock -> join with
the label -> standardisation -> per feature ADWIN on z, and the variance CUSUM on |z| of all
features in one numpy pass (+ confirmation tests when a detector fires) -> quality
checks (missing, schema, range, robust outliers) -> daily windows -> error stream. Every
prediction is followed by its label (also decoded and joined). No broker and no database: the
registry, incident store and publisher are the in-memory fakes, so this is CPU cost only.

Baselines (one process, values already parsed into Python floats):
  river_adwin_per_feature   one River ADWIN per feature (20 updates per prediction)
  river_same_detectors      41 River ADWINs per prediction: on z and on |z| per feature plus one
                            on the error (the monitor's stack before the variance CUSUM replaced
                            ADWIN on |z|; kept as the heavier River reference)

Service and River runs are interleaved (best of ``--repeat`` each), so on a shared host both see
the same load. Also reported: the handlers alone on pre-decoded columns, decode alone (the
contracts' batch decoder vs one pydantic event per record), and each step of the signal kernel
alone on the same batches (``us_per_prediction_by_kernel_step``: the join with eligibility and
the error stream, i.e. the kernel without a reference; building the feature matrix; ADWIN on z;
the variance CUSUMs; the quality screen; the daily windows; the error stream alone). Those
figures are where the handler time goes; the code says why it is shaped as it is, this bench
says how much it costs.

Results: build/bench/monitor.json and a printed table.
Run: ``uv run python benchmarks/monitor_bench.py`` (about a minute; ``--n`` to change the size).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import river
from river import drift

from modelbus_contracts import (
    ArtifactRef,
    Columns,
    DatasetRef,
    FeatureStats,
    LabelObserved,
    Lineage,
    PredictionMade,
    decode_batch,
    encode,
)
from modelbus_contracts.api import VersionView
from modelbus_monitor.bootstrap import GROUP, SPEC
from modelbus_monitor.config import MonitorSettings
from modelbus_monitor.daily import DailyBook
from modelbus_monitor.detectors import update_columns
from modelbus_monitor.kernel import SignalKernel
from modelbus_monitor.metrics import MonitorMetrics
from modelbus_monitor.quality import BatchScreen, bounds_for, feature_matrix
from modelbus_monitor.service import MonitorService, detector_config
from modelbus_monitor.testing import MemoryIncidentStore
from modelbus_platform.bus import EventBus, MemoryProcessedEvents
from modelbus_platform.kit import bind
from modelbus_platform.testing import FakeRegistry, InlineRelay, RecordingPublisher

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "bench" / "monitor.json"
FEATURES = [f"f{i:02d}" for i in range(20)]
MODEL = "bench"
BATCH = 1000
SHA = "0" * 64
Q = {"p01": -2.33, "p05": -1.64, "p25": -0.67, "p50": 0.0, "p75": 0.67, "p95": 1.64, "p99": 2.33}


@dataclass
class Raw:
    """What aiokafka hands the bus: topic, partition, offset, headers, value."""

    topic: str
    partition: int
    offset: int
    headers: list[tuple[str, bytes]]
    value: bytes


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, len(FEATURES)))
    predicted = (rng.random(n) < 0.5).astype(int)
    wrong = rng.random(n) < 0.1
    truth = np.where(wrong, 1 - predicted, predicted)
    return x, predicted, truth


def records(x: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> list[list[Raw]]:
    """Encoded batches: 1,000 predictions, then their 1,000 labels, and so on."""
    batches: list[list[Raw]] = []
    offset = 0
    for start in range(0, len(x), BATCH):
        preds, labels = [], []
        for i in range(start, min(start + BATCH, len(x))):
            pid = f"p{i}-{uuid.uuid4().hex[:8]}"
            prediction = PredictionMade(
                producer="scorer",
                model_name=MODEL,
                prediction_id=pid,
                version=1,
                features=dict(zip(FEATURES, x[i].tolist(), strict=True)),
                score=0.5,
                label=int(predicted[i]),
                latency_ms=1.0,
            )
            label = LabelObserved(
                producer="upstream", model_name=MODEL, prediction_id=pid, label=int(truth[i])
            )
            for event, out in ((prediction, preds), (label, labels)):
                rec = encode(event)
                headers = [(k, v.encode()) for k, v in rec.headers.items()]
                out.append(Raw(rec.topic, 0, offset, headers, rec.value))
                offset += 1
        batches += [preds, labels]
    return batches


def fake_registry() -> FakeRegistry:
    registry = FakeRegistry()
    stats = FeatureStats(count=10_000, mean=0.0, std=1.0, min=-4.5, max=4.5, quantiles=Q)
    reference = {name: stats for name in FEATURES}
    dataset = DatasetRef(uri="datasets/b/x.csv", sha256=SHA, rows=10)
    lineage = Lineage(dataset=dataset, holdout=dataset, seed=1, code_version="b", trigger="api")
    view = VersionView(
        model_name=MODEL,
        version=1,
        run_id="r",
        artifact=ArtifactRef(uri="artifacts/b/x.json", sha256=SHA, size_bytes=1),
        feature_names=FEATURES,
        lineage=lineage,
        reference=reference,
        status="champion",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    registry.put(view, champion=True)
    return registry


async def run_service(batches: list[list[Raw]]) -> dict[str, Any]:
    settings = MonitorSettings()
    metrics = MonitorMetrics("monitor-bench")
    publisher = RecordingPublisher()
    incidents = MemoryIncidentStore()
    service = MonitorService(
        detector_config(settings),
        publisher=publisher,
        events=InlineRelay([incidents.outbox], publisher),
        incidents=incidents,
        registry=fake_registry(),
        metrics=metrics,
    )
    await service.rebuild()
    bus = EventBus(
        "127.0.0.1:1", service="monitor-bench", metrics=metrics, processed=MemoryProcessedEvents()
    )
    bind(bus, SPEC, service, MonitorSettings())
    routes = bus._groups[GROUP]  # the monitor's real batch routes
    started = time.perf_counter()
    for batch in batches:
        await bus.process_batch(GROUP, routes, batch)
    seconds = time.perf_counter() - started
    status = service.status(MODEL)
    assert status is not None and status["joined"] == sum(len(b) for b in batches) // 2
    return {
        "seconds": seconds,
        "joined": status["joined"],
        "incidents": service.open_count(),
        "quality_alerts": len(publisher.events),
    }


def decoded(batches: list[list[Raw]]) -> list[Columns]:
    """The batches as the contracts' batch decoder hands them to the handlers."""
    out: list[Columns] = []
    for batch in batches:
        event_cls = PredictionMade if batch[0].topic == PredictionMade.topic else LabelObserved
        payload, accepted, rejected = decode_batch(event_cls, batch)
        assert len(accepted) == len(batch) and not rejected
        out.append(payload)
    return out


async def run_service_predecoded(batches: list[Columns]) -> float:
    """The handler path alone (records already decoded into columns): where the time goes."""
    settings = MonitorSettings()
    publisher, incidents = RecordingPublisher(), MemoryIncidentStore()
    service = MonitorService(
        detector_config(settings),
        publisher=publisher,
        events=InlineRelay([incidents.outbox], publisher),
        incidents=incidents,
        registry=fake_registry(),
        metrics=MonitorMetrics(f"monitor-bench-{uuid.uuid4().hex[:6]}"),
    )
    await service.rebuild()
    started = time.perf_counter()
    for batch in batches:
        if isinstance(batch, Columns[PredictionMade]):
            await service.on_prediction_batch(batch)
        else:
            await service.on_label_batch(batch)
    return time.perf_counter() - started


def kernel_stages(batches: list[Columns], repeat: int) -> dict[str, float]:
    """Where the handler time goes: each step of the signal kernel alone, on the same
    pre-decoded batches, with fresh state per run (best of ``repeat``); seconds per step."""
    config = detector_config(MonitorSettings())
    reference = fake_registry().versions[(MODEL, 1)].reference
    names = sorted(reference)
    means = np.array([reference[n].mean for n in names])
    stds = np.array([reference[n].std for n in names])
    predictions = [b for b in batches if isinstance(b, Columns[PredictionMade])]
    labels = [b for b in batches if isinstance(b, Columns[LabelObserved])]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    matrices = [feature_matrix(b.features, names) for b in predictions]
    zs = [(m - means) / stds for m in matrices]
    predicted = {
        pid: p for b in predictions for pid, p in zip(b.prediction_id, b.label, strict=True)
    }
    errors = [
        [
            float(predicted[pid] != label)
            for pid, label in zip(b.prediction_id, b.label, strict=True)
        ]
        for b in labels
    ]

    def join_and_error_stream() -> None:  # the kernel without a reference: no feature work
        kernel = SignalKernel(MODEL, config)
        kernel.reset(1)
        for p, lab in zip(predictions, labels, strict=True):
            kernel.predictions(
                now,
                prediction_ids=p.prediction_id,
                versions=p.version,
                served_by=p.served_by,
                labels=p.label,
                features=p.features,
                event_ids=p.event_id,
            )
            kernel.labels(
                now, prediction_ids=lab.prediction_id, labels=lab.label, event_ids=lab.event_id
            )

    def matrix() -> None:
        for b in predictions:
            feature_matrix(b.features, names)

    def adwin_on_z() -> None:
        streams = [config.stream(MODEL, n, "mean") for n in names]
        for z in zs:
            for stream, column in zip(streams, z.T.tolist(), strict=True):
                stream.update_many(column)

    def variance_cusum() -> None:
        streams = [config.stream(MODEL, n, "scale") for n in names]
        for z in zs:
            update_columns(streams, np.abs(z))

    def quality_screen() -> None:
        screen = BatchScreen(names, bounds_for(reference), config.outlier_z)
        for m in matrices:
            screen.flagged(m)

    def daily_windows() -> None:
        book = DailyBook(MODEL, reference)
        for m in matrices:
            book.add(names, m, now)

    def error_stream() -> None:
        stream = config.stream(MODEL, "__error__", "error")
        for column in errors:
            stream.update_many(column)

    steps = (
        join_and_error_stream,
        matrix,
        adwin_on_z,
        variance_cusum,
        quality_screen,
        daily_windows,
        error_stream,
    )
    out = {}
    for step in steps:
        best = math.inf
        for _ in range(repeat):
            started = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - started)
        out[step.__name__] = best
    return out


def decode_only(batches: list[list[Raw]], columnar: bool) -> float:
    """Decode every record: with the contracts' batch decoder, or one pydantic event each."""
    from modelbus_contracts import decode

    started = time.perf_counter()
    for batch in batches:
        if columnar:
            decoded([batch])
        else:
            for r in batch:
                decode(r.headers, r.value)
    return time.perf_counter() - started


def run_river(x: np.ndarray, errors: np.ndarray, same_detectors: bool) -> tuple[float, int]:
    rows = x.tolist()
    errs = errors.astype(float).tolist()
    mean = [drift.ADWIN() for _ in FEATURES]
    scale = [drift.ADWIN() for _ in FEATURES]
    error = drift.ADWIN()
    alarms = 0
    started = time.perf_counter()
    if same_detectors:
        for row, err in zip(rows, errs, strict=True):
            for j, v in enumerate(row):
                d = mean[j]
                d.update(v)
                alarms += d.drift_detected
                s = scale[j]
                s.update(abs(v))
                alarms += s.drift_detected
            error.update(err)
            alarms += error.drift_detected
    else:
        for row in rows:
            for j, v in enumerate(row):
                d = mean[j]
                d.update(v)
                alarms += d.drift_detected
    return time.perf_counter() - started, alarms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=30_000, help="predictions (each with a label)")
    parser.add_argument("--repeat", type=int, default=5, help="best of this many runs")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    x, predicted, truth = make_data(args.n, seed=11)
    batches = records(x, predicted, truth)
    errors = (predicted != truth).astype(int)
    service_runs, river_1, river_2 = [], [], []
    for _ in range(args.repeat):  # interleaved: every run sees the same load on a shared host
        service_runs.append(asyncio.run(run_service(batches)))
        river_1.append(run_river(x, errors, False)[0])
        river_2.append(run_river(x, errors, True)[0])
    best = min(service_runs, key=lambda r: r["seconds"])
    columns = decoded(batches)
    handler_s = min(asyncio.run(run_service_predecoded(columns)) for _ in range(args.repeat))
    stages = kernel_stages(columns, args.repeat)
    columnar_s = min(decode_only(batches, columnar=True) for _ in range(args.repeat))
    pydantic_s = min(decode_only(batches, columnar=False) for _ in range(args.repeat))
    n = args.n
    rate = {
        "service_path": n / best["seconds"],
        "service_handlers_only_predecoded": n / handler_s,
        "decode_only_columnar": 2 * n / columnar_s,
        "decode_only_pydantic": 2 * n / pydantic_s,
        "river_adwin_per_feature": n / min(river_1),
        "river_same_detectors": n / min(river_2),
    }
    report = {
        "bench": "monitor",
        "features": len(FEATURES),
        "predictions": n,
        "records": 2 * n,
        "batch_records": BATCH,
        "python": platform.python_version(),
        "river": river.__version__,
        "cpus": os.cpu_count(),
        "predictions_per_s": {k: round(v, 1) for k, v in rate.items()},
        "records_per_s_service_path": round(2 * n / best["seconds"], 1),
        "us_per_prediction": {k: round(1e6 / v, 2) for k, v in rate.items()},
        "ratio_service_vs_river_adwin_per_feature": round(
            rate["service_path"] / rate["river_adwin_per_feature"], 3
        ),
        "ratio_service_vs_river_same_detectors": round(
            rate["service_path"] / rate["river_same_detectors"], 3
        ),
        "ratio_handlers_vs_river_same_detectors": round(
            rate["service_handlers_only_predecoded"] / rate["river_same_detectors"], 3
        ),
        "us_per_prediction_by_kernel_step": {k: round(1e6 * v / n, 2) for k, v in stages.items()},
        "service_run": best,
        "target_ratio": 0.3,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{'path':36} {'predictions/s':>14} {'us/prediction':>14}")
    for key, value in rate.items():
        unit = "records/s" if key.startswith("decode_only") else ""
        print(f"{key:36} {value:14,.0f} {1e6 / value:14.2f} {unit}")
    print("signal kernel, each step alone (us per prediction and its label):")
    for key, value in report["us_per_prediction_by_kernel_step"].items():
        print(f"  {key:34} {value:14.2f}")
    print(
        "ratio service / river ADWIN per feature: "
        f"{report['ratio_service_vs_river_adwin_per_feature']}; "
        f"service / river same detectors: {report['ratio_service_vs_river_same_detectors']} "
        f"(target >= 0.3)"
    )
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
