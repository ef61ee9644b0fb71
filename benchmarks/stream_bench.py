"""Stream bench: predictions/s through the broker. N ScoringRequested events are published to a
fresh Tansu broker, then the consumer under test starts (pinned to the server core) and we wait
for N PredictionMade. The rate is N over the span of the PredictionMade records' broker
timestamps (first to last output), so neither the start-up nor the observer is counted.

Consumers: the scorer (``python -m modelbus_scorer``, its bus: one event at a time) and a raw
aiokafka loop doing the same decode/predict/encode work (benchmarks/raw_stream.py).
Results: build/bench/stream.json. Run: ``uv run python benchmarks/stream_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import harness as h
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from modelbus_contracts import PredictionMade, ScoringFailed, ScoringRequested, encode
from modelbus_platform.bus import all_topics, ensure_topics

MODEL = "bench"


async def publish_requests(bootstrap: str, n: int) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    started = time.perf_counter()
    try:
        futures = []
        for i in range(n):
            event = ScoringRequested(
                producer="bench",
                model_name=MODEL,
                request_id=f"r{i}",
                features=dict(zip(h.FEATURES, h.ROW, strict=True)),
            )
            record = encode(event)
            headers = [(k, v.encode()) for k, v in record.headers.items()]
            futures.append(
                await producer.send(record.topic, record.value, key=record.key, headers=headers)
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def end_offset_total(consumer: AIOKafkaConsumer, topic: str) -> int:
    parts = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in parts]
    ends = await consumer.end_offsets(tps) if tps else {}
    return sum(ends.values())


async def wait_outputs(bootstrap: str, n: int, timeout_s: float) -> dict[str, Any]:
    """Poll end offsets (cheap) until n outputs exist, then read them all once."""
    topics = (PredictionMade.topic, ScoringFailed.topic)
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        last, stable_since = -1, time.monotonic()
        while True:
            await consumer.topics()  # refresh metadata
            made = await end_offset_total(consumer, PredictionMade.topic)
            failed = await end_offset_total(consumer, ScoringFailed.topic)
            now = time.monotonic()
            if made + failed != last:
                last, stable_since = made + failed, now
            # Tansu's end offsets can lag the records actually stored: stop waiting once they
            # have not moved for a few seconds, and count what can be read
            if made + failed >= n or now > deadline or now - stable_since > 5.0:
                break
            await asyncio.sleep(0.5)
        stamps: list[int] = []
        request_ids: set[str] = set()
        failed = 0
        while True:  # read until the topics are drained (not just up to the end offsets)
            batch = await consumer.getmany(timeout_ms=2000, max_records=5000)
            if not batch:
                break
            for messages in batch.values():
                for m in messages:
                    if m.topic == PredictionMade.topic:
                        stamps.append(m.timestamp)
                        request_ids.add(json.loads(m.value)["request_id"])
                    else:
                        failed += 1
    finally:
        await consumer.stop()
    span_s = (max(stamps) - min(stamps)) / 1000 if len(stamps) > 1 else float("nan")
    return {
        "predictions": len(stamps),
        "unique_requests": len(request_ids),
        "failed": failed,
        "span_s": span_s,
        "predictions_per_s": len(stamps) / span_s if span_s and span_s > 0 else 0.0,
        "first_output_ms": min(stamps) if stamps else None,
    }


def run_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    env = h.Env().start()
    try:
        asyncio.run(ensure_topics(env.bootstrap, all_topics(), 3))
        asyncio.run(env.publish_model(MODEL, 1, h.bench_model()))
        publish_s = asyncio.run(publish_requests(env.bootstrap, args.n))
        started_ms = time.time() * 1000
        if name == "scorer":
            env.start_scorer("bench-stream")
        else:
            artifact = h.OUT / "artifact.json"
            artifact.write_bytes(h.bench_model().to_bytes())
            argv = [
                sys.executable,
                str(h.ROOT / "benchmarks" / "raw_stream.py"),
                env.bootstrap,
                str(artifact),
            ]
            env.spawn("raw-stream", argv, dict(__import__("os").environ), None)
        result = asyncio.run(wait_outputs(env.bootstrap, args.n, args.timeout))
        result["publish_s"] = publish_s
        result["start_to_first_output_s"] = (
            result.pop("first_output_ms") or started_ms
        ) / 1000 - started_ms / 1000
        return result
    finally:
        env.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=50_000, help="ScoringRequested events")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after (s)")
    parser.add_argument("--variants", default="raw_loop,scorer")
    args = parser.parse_args()
    h.OUT.mkdir(parents=True, exist_ok=True)
    h.pin_self()
    results = {}
    for variant in args.variants.split(","):
        results[variant] = run_variant(variant, args)
        r = results[variant]
        print(
            f"{variant:9s} {r['predictions_per_s']:8.0f} predictions/s over {r['span_s']:.1f} s "
            f"({r['predictions']} predictions, {r['unique_requests']} unique, "
            f"{r['failed']} failed)",
            flush=True,
        )
    ratio = None
    if "scorer" in results and "raw_loop" in results and results["raw_loop"]["predictions_per_s"]:
        ratio = results["scorer"]["predictions_per_s"] / results["raw_loop"]["predictions_per_s"]
        print(
            f"scorer vs raw loop: {ratio:.2f}x "
            f"(target >= 0.7x: {'met' if ratio >= 0.7 else 'NOT met'})"
        )
    data = {
        "bench": "stream",
        "machine": h.machine_notes(),
        "settings": vars(args),
        "results": results,
        "ratio_scorer_vs_raw": ratio,
        "target_min_ratio": 0.7,
    }
    print(f"results: {h.write_json('stream.json', data)}")


if __name__ == "__main__":
    main()
