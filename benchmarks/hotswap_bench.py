"""Hot swap under load: keep closed-loop load on ``POST /v2/models/{name}/infer`` while v2, v3,
... are promoted (the fake registry's champion moves, then ModelPromoted goes on the broker, as
the registry does). Reports failed requests (target 0), p99 before / during / after each swap,
the time from ModelPromoted to the first answer by the new version, and the version answering
over time (0.5 s buckets).

The load generator is the asyncio one (every response is parsed for its version), on the client
core; the scorer (``python -m modelbus_scorer``) on the server core.
Results: build/bench/hotswap.json. Run: ``uv run python benchmarks/hotswap_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import harness as h
import numpy as np
from aiokafka import AIOKafkaProducer

from modelbus_contracts import ModelPromoted, encode

MODEL = "bench"
PATH = f"/v2/models/{MODEL}/infer"
BUCKET_S = 0.5
DURING_S = 2.0


async def promote(env: h.Env, producer: AIOKafkaProducer, version: int) -> float:
    """New artifact + registry champion, then ModelPromoted; returns when it was published."""
    model = h.bench_model(intercept=0.1 * version)
    view = await env.publish_model(MODEL, version, model)
    event = ModelPromoted(
        producer="bench",
        model_name=MODEL,
        version=version,
        previous_version=version - 1,
        artifact=view.artifact,
        feature_names=list(h.FEATURES),
        reason="hotswap bench",
    )
    record = encode(event)
    headers = [(k, v.encode()) for k, v in record.headers.items()]
    await producer.send_and_wait(record.topic, record.value, key=record.key, headers=headers)
    return time.perf_counter()


async def scenario(
    env: h.Env, port: int, args: argparse.Namespace
) -> tuple[list[h.Sample], list[dict]]:
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap)
    await producer.start()
    promotions: list[dict] = []
    try:
        t0 = time.perf_counter()
        load = asyncio.create_task(
            h.python_load(port, PATH, h.v2_body(), args.duration, args.connections)
        )
        for i in range(args.swaps):
            at = args.first_swap + i * args.interval
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            version = i + 2
            published = await promote(env, producer, version)
            promotions.append({"version": version, "published_at_s": published - t0})
        samples = await load
    finally:
        await producer.stop()
    # python_load measures from its own start, a few microseconds after t0
    return samples, promotions


def version_of(sample: h.Sample) -> int | None:
    if not 200 <= sample.status < 300:
        return None
    return int(json.loads(sample.body)["model_version"])


def p99(samples: list[h.Sample]) -> float | None:
    ok = [s.latency_ms for s in samples if 200 <= s.status < 300]
    return float(np.percentile(ok, 99)) if ok else None


def analyse(samples: list[h.Sample], promotions: list[dict], duration: float) -> dict[str, Any]:
    samples.sort(key=lambda s: s.at)
    failed = [s for s in samples if not 200 <= s.status < 300]
    first = promotions[0]["published_at_s"] if promotions else duration
    windows = []
    for p in promotions:
        t, v = p["published_at_s"], p["version"]
        new = [s for s in samples if s.at >= t and version_of(s) == v]
        first_new = new[0].at if new else None
        late_old = [
            s
            for s in samples
            if first_new is not None and s.at > first_new + 0.05 and (version_of(s) or v) < v
        ]
        windows.append(
            {
                **p,
                "swap_visible_after_s": (first_new - t) if first_new is not None else None,
                "p99_during_ms": p99([s for s in samples if t <= s.at < t + DURING_S]),
                "requests_during": sum(1 for s in samples if t <= s.at < t + DURING_S),
                "old_version_answers_after_first_new": len(late_old),
            }
        )
    timeline = []
    for b in range(int(duration / BUCKET_S) + 1):
        lo, hi = b * BUCKET_S, (b + 1) * BUCKET_S
        bucket = [s for s in samples if lo <= s.at < hi]
        if not bucket:
            continue
        versions: dict[str, int] = {}
        for s in bucket:
            key = str(version_of(s)) if version_of(s) is not None else "failed"
            versions[key] = versions.get(key, 0) + 1
        timeline.append(
            {"t_s": lo, "requests": len(bucket), "versions": versions, "p99_ms": p99(bucket)}
        )
    last = promotions[-1]["published_at_s"] + DURING_S if promotions else duration
    return {
        "requests": len(samples),
        "failed_requests": len(failed),
        "failed_statuses": sorted({s.status for s in failed}),
        "rps": len(samples) / duration,
        "p99_before_ms": p99([s for s in samples if 1.0 <= s.at < first]),
        "p99_after_ms": p99([s for s in samples if s.at >= last]),
        "p99_overall_ms": p99(samples),
        "swaps": windows,
        "timeline": timeline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--swaps", type=int, default=3)
    parser.add_argument("--first-swap", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=4.0)
    args = parser.parse_args()
    h.OUT.mkdir(parents=True, exist_ok=True)
    h.pin_self()
    env = h.Env().start()
    try:
        asyncio.run(env.publish_model(MODEL, 1, h.bench_model(intercept=0.1)))
        port, _ = env.start_scorer("bench-hotswap")
        h.wait_http_ok(f"http://127.0.0.1:{port}{PATH.rsplit('/', 1)[0]}/ready")
        h.load(port, PATH, h.v2_body(), 2.0, args.connections)  # warm-up
        time.sleep(6.0)  # the control consumer group joins (~5 s on Tansu)
        samples, promotions = asyncio.run(scenario(env, port, args))
        result = analyse(samples, promotions, args.duration)
        result["swaps_total_metric"] = h.scrape(port, "modelbus_scorer_model_swaps_total")
        result["load_failures_metric"] = h.scrape(port, "modelbus_scorer_model_load_failures_total")
    finally:
        env.stop()
    data = {
        "bench": "hotswap",
        "machine": {**h.machine_notes(), "loadgen": "python-asyncio"},
        "settings": vars(args),
        **result,
        "target_failed_requests": 0,
    }
    path = h.write_json("hotswap.json", data)
    print(
        f"requests {result['requests']} ({result['rps']:.0f}/s), failed {result['failed_requests']}"
    )
    print(f"p99 before {result['p99_before_ms']:.2f} ms, after {result['p99_after_ms']:.2f} ms")
    for w in result["swaps"]:
        print(
            f"  v{w['version']} at {w['published_at_s']:.1f} s: visible after "
            f"{w['swap_visible_after_s']} s, p99 during {w['p99_during_ms']} ms, "
            f"old answers after first new {w['old_version_answers_after_first_new']}"
        )
    print("timeline (t, requests, versions):")
    for b in result["timeline"]:
        print(f"  {b['t_s']:5.1f} {b['requests']:6d} {b['versions']}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
