"""Batch scoring throughput: the batch service's job path vs a bare pyarrow + numpy script.

Both score the same Parquet file (``--rows`` rows, an ``id`` and 8 float features) with the
same model, on this machine, in the same run, alternating, ``--reps`` times each:

- batch: ``BatchService.submit`` -> job runs to the end (registry lookup on the fake, artifact
  fetched and sha256-verified from a local-folder object store on every job, input read from
  the store,
  50k-row chunks decoded/validated/predicted in a worker thread, progress recorded per chunk in
  the in-memory job store, output Parquet put into the store, BatchScoringCompleted built);
- bare: ``pq.read_table`` -> ``np.column_stack`` -> ``predict_proba`` -> ``pq.write_table`` of
  id, score, label (no validation, no per-row errors, no job record);
- bare chunked: the same script predicting 50k-row batches (``iter_batches`` ->
  ``ParquetWriter``). Predicting 1M x 8 at once makes 64 MB temporaries and is memory-bound, so
  the plain bare script is slower than chunking; the second ratio isolates the job's overhead.

Prints rows/s (median of the repetitions) and the ratio batch/bare (target >= 0.7), and writes
``build/bench/batch.json``. Run: ``make bench-batch`` or
``uv run python benchmarks/batch_bench.py --rows 1000000 --reps 7``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from modelbus_batch.service import BatchMetrics, BatchService
from modelbus_batch.testing import MemoryJobStore
from modelbus_contracts import ArtifactRef, DatasetRef, Lineage
from modelbus_contracts.api import VersionView
from modelbus_ml import LogisticModel
from modelbus_platform.stores import LocalObjectStore, sha256_hex
from modelbus_platform.testing import FakeRegistry, InlineRelay, RecordingPublisher

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "bench" / "batch.json"
MODEL = "bench"
FEATURES = tuple(f"f{i}" for i in range(8))
TARGET = 0.7


def bench_model() -> LogisticModel:
    rng = np.random.default_rng(1)
    k = len(FEATURES)
    return LogisticModel(
        feature_names=FEATURES,
        coef=rng.normal(size=k),
        intercept=0.1,
        mean=rng.normal(size=k),
        scale=np.abs(rng.normal(size=k)) + 0.5,
        threshold=0.5,
    )


def write_input(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    columns = {"id": np.arange(rows, dtype=np.int64)}
    columns |= {name: rng.normal(size=rows) for name in FEATURES}
    pq.write_table(pa.table(columns), path)


def view_for(data: bytes) -> VersionView:
    digest = sha256_hex(data)
    ref = DatasetRef(uri=f"datasets/{MODEL}/{'0' * 64}.csv", sha256="0" * 64, rows=1)
    return VersionView(
        model_name=MODEL,
        version=1,
        run_id="bench",
        artifact=ArtifactRef(
            uri=f"artifacts/{MODEL}/{digest}.json", sha256=digest, size_bytes=len(data)
        ),
        feature_names=list(FEATURES),
        lineage=Lineage(dataset=ref, holdout=ref, seed=0, code_version="bench", trigger="manual"),
        status="champion",
        created_at=datetime.now(UTC),
    )


def bare_chunked(model: LogisticModel, src: Path, dst: Path, chunk_rows: int) -> float:
    """The stronger baseline: the same script, but predicting 50k-row batches and writing
    without dictionary pages for the all-distinct columns (what the job does), so the ratio
    against it isolates the job machinery's own cost."""
    started = time.perf_counter()
    source = pq.ParquetFile(src)
    writer = None
    for batch in source.iter_batches(batch_size=chunk_rows):
        X = np.column_stack([batch.column(name).to_numpy() for name in FEATURES])
        scores = model.predict_proba(X)
        labels = (scores >= model.threshold).astype(np.int64)
        out = pa.record_batch([batch.column("id"), scores, labels], ["id", "score", "label"])
        writer = writer or pq.ParquetWriter(dst, out.schema, use_dictionary=["label"])
        writer.write_batch(out)
    if writer is not None:
        writer.close()
    return time.perf_counter() - started


def bare(model: LogisticModel, src: Path, dst: Path) -> float:
    started = time.perf_counter()
    table = pq.read_table(src)
    X = np.column_stack([table[name].to_numpy() for name in FEATURES])
    scores = model.predict_proba(X)
    labels = (scores >= model.threshold).astype(np.int64)
    pq.write_table(pa.table({"id": table["id"], "score": scores, "label": labels}), dst)
    return time.perf_counter() - started


class BatchPath:
    def __init__(self, root: Path, model: LogisticModel) -> None:
        self.store = LocalObjectStore(root)
        self.model = model
        self.registry = FakeRegistry()
        self.publisher = RecordingPublisher()
        self.jobs = MemoryJobStore()
        self.service = self.new_service()

    def new_service(self) -> BatchService:
        """A service that has loaded no model yet: its first job loads and verifies one."""
        return BatchService(
            jobs=self.jobs,
            store=self.store,
            registry=self.registry,
            events=InlineRelay([self.jobs.outbox], self.publisher),
            metrics=BatchMetrics("bench-batch"),
            producer="bench",
            instance="bench",
        )

    async def setup(self) -> None:
        data = self.model.to_bytes()
        view = view_for(data)
        await self.store.put(view.artifact.uri, data)
        self.registry.put(view, champion=True)
        await self.service.start()

    async def run(self, key: str, out_key: str) -> tuple[float, int, int]:
        self.service = self.new_service()  # every job loads and verifies the artifact
        started = time.perf_counter()
        job, _ = await self.service.submit(model_name=MODEL, input_uri=key, output_uri=out_key)
        await self.service.idle()
        seconds = time.perf_counter() - started
        done = await self.service.get(job.job_id)
        if done is None or done.state != "succeeded":
            raise RuntimeError(f"batch job did not succeed: {done}")
        return seconds, done.rows_done, done.failed_rows


async def main(rows: int, reps: int) -> dict:
    model = bench_model()
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        root = Path(tmp)
        src = root / "in" / "day.parquet"
        src.parent.mkdir(parents=True)
        write_input(src, rows)
        size_mb = src.stat().st_size / 1e6
        path = BatchPath(root, model)
        await path.setup()
        # warm-up (imports, allocator, page cache) for both, not measured
        bare(model, src, root / "bare.parquet")
        await path.run("in/day.parquet", "out/warm.parquet")
        chunk_rows = path.service.chunk_rows
        bare_chunked(model, src, root / "chunked.parquet", chunk_rows)
        batch_s, bare_s, chunked_s = [], [], []
        for i in range(reps):
            seconds, done, failed = await path.run("in/day.parquet", f"out/run{i}.parquet")
            assert (done, failed) == (rows, 0)
            batch_s.append(seconds)
            bare_s.append(bare(model, src, root / f"bare{i}.parquet"))
            chunked_s.append(bare_chunked(model, src, root / f"chunked{i}.parquet", chunk_rows))
        check = pq.read_table(root / "out" / "run0.parquet")
        expect = pq.read_table(root / "bare0.parquet")
        np.testing.assert_allclose(check["score"].to_numpy(), expect["score"].to_numpy())
    batch_rps = rows / statistics.median(batch_s)
    bare_rps = rows / statistics.median(bare_s)
    chunked_rps = rows / statistics.median(chunked_s)
    return {
        "benchmark": "batch",
        "when": datetime.now(UTC).isoformat(),
        "rows": rows,
        "features": len(FEATURES),
        "input_mb": round(size_mb, 1),
        "reps": reps,
        "chunk_rows": path.service.chunk_rows,
        "store": "local folder",
        "batch_seconds": [round(s, 4) for s in batch_s],
        "bare_seconds": [round(s, 4) for s in bare_s],
        "bare_chunked_seconds": [round(s, 4) for s in chunked_s],
        "batch_rows_per_s": round(batch_rps),
        "bare_rows_per_s": round(bare_rps),
        "bare_chunked_rows_per_s": round(chunked_rps),
        "ratio": round(batch_rps / bare_rps, 3),
        "ratio_vs_bare_chunked": round(batch_rps / chunked_rps, 3),
        "target_ratio": TARGET,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pyarrow": pa.__version__,
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings+
    result = asyncio.run(main(args.rows, args.reps))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"rows={result['rows']} reps={result['reps']} "
        f"batch={result['batch_rows_per_s']:,} rows/s bare={result['bare_rows_per_s']:,} rows/s "
        f"ratio={result['ratio']} (target >= {TARGET})"
    )
    print(
        f"bare chunked={result['bare_chunked_rows_per_s']:,} rows/s "
        f"ratio vs bare chunked={result['ratio_vs_bare_chunked']}"
    )
    print(f"wrote {OUT.relative_to(ROOT)}")
