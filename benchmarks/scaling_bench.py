"""Scaling bench: what one scorer absorbs, and what a second one adds.

1. **Online load curve** (one scorer, ``python -m modelbus_scorer``, pinned to the server core):
   ``POST /v2/models/{name}/infer`` (one row of 4 FP64 features) at increasing concurrency
   (closed loop, wrk on the client core; one warm-up, then a fixed duration per level):
   requests/s, p50, p99, errors. Shows the saturation throughput and where latency starts to
   climb (beyond the knee more connections only queue: p50 ~ connections / throughput).
2. **Stream scale-out**: 1, then 2 scorer processes in the consumer group ``scorer`` on a fresh
   Tansu broker (3 partitions per topic). Before counting, one probe ScoringRequested per
   partition is published and we watch which instance's
   ``modelbus_scorer_predictions_total{source="stream"}`` moves: that maps partitions to
   instances; the group counts as settled after two identical rounds that cover every instance.
   Then the backlog (N events, pre-encoded, partition ``i % 3``) is published, and the rate is
   the backlog's PredictionMade count over the span of their broker timestamps (as in
   stream_bench). Per instance: predictions (from its partitions' outputs and its /metrics), its
   own rate, and the aggregate rate while every instance was busy.
3. **Online scale-out**: the same scorer alone, then with a second instance on the other core,
   each instance driven by its own wrk (the "balancer" is one load generator per instance:
   perfect round-robin); aggregate requests/s for 1 vs 2.

Pinning: instance 0 on the server core (0), instance 1 on the client core (1), where the broker,
S3, MongoDB-wire, the fake registry, this process and the load generators also run. On a 2-core
machine a second instance therefore shares a core with the rest of the system: the figures show
the mechanics of scaling out, not what two dedicated machines would give.

Results: build/bench/scaling.json. Run: ``uv run python benchmarks/scaling_bench.py [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import harness as h
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from modelbus_contracts import PredictionMade, ScoringFailed, ScoringRequested, encode
from modelbus_embedded.servers import free_port, wait_for_port
from modelbus_platform.bus import all_topics, ensure_topics

MODEL = "bench"
PATH = f"/v2/models/{MODEL}/infer"
PARTITIONS = 3
STREAM_METRIC = "modelbus_scorer_predictions_total"
DROPPED_METRIC = "modelbus_scorer_prediction_log_dropped_total"


T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - T0:5.0f} s] {message}", flush=True)


def instance_core(index: int) -> str:
    """Instance 0 on the server core, instance 1 on the client core (one per core)."""
    return h.SERVER_CORE if index % 2 == 0 else h.CLIENT_CORE


def start_scorers(env: h.Env, instances: list[tuple[str, str]]) -> list[int]:
    """``python -m modelbus_scorer`` per (instance id, core), pinned (Env.spawn always uses the
    server core), all spawned at once (a scorer takes many seconds before it binds its port),
    then each waited for until it serves the bench model. Returns their HTTP ports."""
    logs = h.OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started: list[tuple[str, str, int, subprocess.Popen]] = []
    for instance, core in instances:
        port = free_port()
        with (logs / f"scorer-{instance}.log").open("wb") as logfile:
            proc = subprocess.Popen(
                h.pinned(core, [sys.executable, "-m", "modelbus_scorer"]),
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env.scorer_env(instance, port),
                cwd=h.ROOT,
            )
        env.procs.append(proc)
        started.append((instance, core, port, proc))
    for instance, core, port, proc in started:
        wait_for_port(port, 120, proc)
        h.wait_http_ok(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready")
        log(f"scorer {instance} ready on core {core}, port {port}")
    return [port for _, _, port, _ in started]


def stream_count(text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(STREAM_METRIC + "{") and 'source="stream"' in line
    )


# --- load generation (several wrk processes at once) --------------------------------------------


def load_many(ports: list[int], connections: int, duration_s: float) -> list[dict[str, Any]]:
    """One closed-loop generator per port, all at once (``connections`` each), on the client
    core. wrk if installed, else the harness's asyncio generator (all ports in one loop)."""
    body = h.v2_body()
    if not h.have_wrk():

        async def run_all() -> list[list[h.Sample]]:
            return await asyncio.gather(
                *(h.python_load(p, PATH, body, duration_s, connections) for p in ports)
            )

        return [h.summarise(s, duration_s) for s in asyncio.run(run_all())]
    h.OUT.mkdir(parents=True, exist_ok=True)
    script, body_file = h.OUT / "scaling-post.lua", h.OUT / "scaling-body.json"
    script.write_text(h.WRK_LUA)
    body_file.write_bytes(body)
    seconds = f"-d{max(1, round(duration_s))}s"
    procs = [
        subprocess.Popen(
            h.pinned(
                h.CLIENT_CORE,
                [
                    *("wrk", "-t1", f"-c{connections}", seconds, "-s", str(script)),
                    f"http://127.0.0.1:{port}{PATH}",
                ],
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "BENCH_BODY_FILE": str(body_file)},
        )
        for port in ports
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=duration_s + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {err[-500:]}")
        results.append(h.parse_wrk(out))
    return results


# --- 1. online load curve -----------------------------------------------------------------------


def online_curve(port: int, args: argparse.Namespace) -> dict[str, Any]:
    levels = [int(c) for c in args.levels.split(",") if c]
    load_many([port], max(levels), args.warmup)
    rows = []
    for connections in levels:
        dropped = h.scrape(port, DROPPED_METRIC)
        result = load_many([port], connections, args.duration)[0]
        result["connections"] = connections
        result["prediction_log_dropped"] = h.scrape(port, DROPPED_METRIC) - dropped
        rows.append(result)
        log(f"online c={connections:3d} {h.describe(result)}")
    best = max(rows, key=lambda r: r["rps"])
    knee = next(r for r in rows if r["rps"] >= 0.9 * best["rps"])
    base_p50 = rows[0]["p50_ms"]
    climb = next((r for r in rows if r["p50_ms"] > 2 * base_p50), None)
    return {
        "levels": rows,
        "saturation": {
            "max_rps": best["rps"],
            "at_connections": best["connections"],
            "knee_connections": knee["connections"],
            "knee_rule": "fewest connections reaching 90% of the maximum throughput",
            "knee_rps": knee["rps"],
            "knee_p50_ms": knee["p50_ms"],
            "knee_p99_ms": knee["p99_ms"],
            "p50_doubles_at_connections": climb["connections"] if climb else None,
            "p50_doubles_rule": "first level whose p50 is over twice the p50 at the first level",
        },
    }


# --- 3. online scale-out ------------------------------------------------------------------------


def online_scale_out(first_port: int, second_port: int, args: argparse.Namespace) -> dict[str, Any]:
    c = args.lb_connections
    load_many([first_port], c, args.warmup)
    single = load_many([first_port], c, args.duration)
    load_many([first_port, second_port], c, args.warmup)
    pair = load_many([first_port, second_port], c, args.duration)
    out: dict[str, Any] = {}
    for k, results in ((1, single), (2, pair)):
        out[str(k)] = {
            "instances": k,
            "connections_per_instance": c,
            "rps": sum(r["rps"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "per_instance": [
                {"core": instance_core(i), **r} for i, r in enumerate(results, start=0)
            ],
        }
        each = ", ".join(f"{r['rps']:.0f}" for r in results)
        log(
            f"online {k} instance(s): {out[str(k)]['rps']:8.0f} req/s aggregate "
            f"({each}) errors {out[str(k)]['errors']}",
        )
    out["speedup_2_vs_1"] = out["2"]["rps"] / out["1"]["rps"] if out["1"]["rps"] else None
    return out


# --- 2. stream scale-out ------------------------------------------------------------------------


def request_record(request_id: str) -> tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]:
    event = ScoringRequested(
        producer="bench",
        model_name=MODEL,
        request_id=request_id,
        features=dict(zip(h.FEATURES, h.ROW, strict=True)),
    )
    record = encode(event)
    headers = [(k, v.encode()) for k, v in record.headers.items()]
    return record.topic, record.value, record.key, headers


async def send(producer: AIOKafkaProducer, request_id: str, partition: int) -> None:
    topic, value, key, headers = request_record(request_id)
    await (await producer.send(topic, value, key=key, partition=partition, headers=headers))


async def counts(client: httpx.AsyncClient, ports: list[int]) -> list[float]:
    texts = await asyncio.gather(*(client.get(f"http://127.0.0.1:{p}/metrics") for p in ports))
    return [stream_count(t.text) for t in texts]


async def probe_round(
    producer: AIOKafkaProducer, client: httpx.AsyncClient, ports: list[int], round_no: int
) -> dict[int, int | None]:
    """One probe per partition, one at a time: which instance scored it (None: unclear)."""
    mapping: dict[int, int | None] = {}
    for partition in range(PARTITIONS):
        before = await counts(client, ports)
        await send(producer, f"probe-{round_no}-{partition}", partition)
        deadline = time.monotonic() + 5.0
        deltas = [0.0] * len(ports)
        while time.monotonic() < deadline:
            deltas = [a - b for a, b in zip(await counts(client, ports), before, strict=True)]
            if sum(deltas) >= 1:
                break
            await asyncio.sleep(0.05)
        winners = [i for i, d in enumerate(deltas) if d > 0]
        mapping[partition] = winners[0] if sum(deltas) == 1 and len(winners) == 1 else None
    return mapping


async def settle(
    producer: AIOKafkaProducer, client: httpx.AsyncClient, ports: list[int], timeout_s: float
) -> tuple[dict[int, int], int, float]:
    """Probe rounds until two identical complete mappings cover every instance."""
    started = time.monotonic()
    previous: dict[int, int | None] | None = None
    round_no = 0
    while time.monotonic() - started < timeout_s:
        mapping = await probe_round(producer, client, ports, round_no)
        round_no += 1
        complete = all(v is not None for v in mapping.values())
        covers = set(mapping.values()) == set(range(len(ports)))
        if complete and covers and mapping == previous:
            return (
                {p: int(v) for p, v in mapping.items() if v is not None},
                round_no,
                (time.monotonic() - started),
            )
        previous = mapping
        if not (complete and covers):
            await asyncio.sleep(0.5)
    raise TimeoutError(f"group did not settle on {len(ports)} instances in {timeout_s}s")


async def wait_served(
    client: httpx.AsyncClient, ports: list[int], before: list[float], n: int, timeout_s: float
) -> float:
    """Until the instances' stream counters rose by ``n`` (the broker's end offsets are not
    exact enough on Tansu to count records by); returns the number counted."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = sum(await counts(client, ports)) - sum(before)
        if done >= n or time.monotonic() > deadline:
            return done
        await asyncio.sleep(0.25)


async def read_outputs(bootstrap: str, n: int, timeout_s: float) -> tuple[list, int]:
    """(broker timestamp ms, request id) of every PredictionMade of the backlog (ids ``r<i>``),
    read from the start until all ``n`` were seen (then one more poll for late duplicates), and
    the number of ScoringFailed."""
    consumer = AIOKafkaConsumer(
        PredictionMade.topic,
        ScoringFailed.topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    outputs: list[tuple[int, str]] = []
    seen: set[str] = set()
    failed = 0
    try:
        deadline = time.monotonic() + timeout_s
        idle = 0
        while time.monotonic() < deadline and idle < 2:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if not batch:
                idle += 1 if len(seen) >= n else 0
                continue
            for messages in batch.values():
                for m in messages:
                    if m.topic == ScoringFailed.topic:
                        failed += 1
                        continue
                    request_id = json.loads(m.value)["request_id"]
                    if request_id.startswith("r"):
                        outputs.append((m.timestamp, request_id))
                        seen.add(request_id)
            if len(seen) >= n:
                idle = max(idle, 1)  # one more poll for duplicates, then stop
    finally:
        await consumer.stop()
    return outputs, failed


def rate(count: int, first_ms: int, last_ms: int) -> float | None:
    span = (last_ms - first_ms) / 1000
    return count / span if span > 0 else None


async def stream_phase(env: h.Env, ports: list[int], args: argparse.Namespace) -> dict[str, Any]:
    n = args.n
    backlog = [request_record(f"r{i}") for i in range(n)]  # encoded before anything is timed
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap, linger_ms=5)
    await producer.start()
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            assignment, rounds, settle_s = await settle(producer, client, ports, args.settle)
            log(
                f"stream {len(ports)} instance(s): group settled after {rounds} probe rounds "
                f"({settle_s:.1f} s), partitions -> instance {assignment}",
            )
            before = await counts(client, ports)
            published_at = time.time()
            futures = []
            for i, (topic, value, key, headers) in enumerate(backlog):
                futures.append(
                    await producer.send(
                        topic, value, key=key, partition=i % PARTITIONS, headers=headers
                    )
                )
            await asyncio.gather(*futures)
            publish_s = time.time() - published_at
            served = await wait_served(client, ports, before, n, args.timeout)
            outputs, failed = await read_outputs(env.bootstrap, n, 30.0)
            after = await counts(client, ports)
    finally:
        await producer.stop()
    mine = [(ts, rid) for ts, rid in outputs if rid.startswith("r")]
    unique = {rid for _, rid in mine}
    stamps = [ts for ts, _ in mine]
    result: dict[str, Any] = {
        "instances": len(ports),
        "backlog": n,
        "predictions": len(mine),
        "unique_requests": len(unique),
        "duplicates": len(mine) - len(unique),
        "lost": n - len(unique),
        "failed": failed,
        "served_metric_total": served,
        "publish_s": publish_s,
        "publish_per_s": n / publish_s if publish_s > 0 else None,
        "settle_probe_rounds": rounds,
        "settle_s": settle_s,
        "assignment": {str(p): i for p, i in assignment.items()},
    }
    if len(stamps) < 2:
        result["predictions_per_s"] = 0.0
        return result
    first, last = min(stamps), max(stamps)
    result["span_s"] = (last - first) / 1000
    result["predictions_per_s"] = rate(len(stamps), first, last)
    result["publish_done_after_first_output_s"] = published_at + publish_s - first / 1000
    per: list[dict[str, Any]] = []
    for index in range(len(ports)):
        parts = sorted(p for p, i in assignment.items() if i == index)
        own = [ts for ts, rid in mine if int(rid[1:]) % PARTITIONS in parts]
        per.append(
            {
                "instance": index,
                "core": instance_core(index),
                "partitions": parts,
                "predictions": len(own),
                "share": len(own) / len(mine),
                "served_metric": after[index] - before[index],
                "first_ms": min(own) if own else None,
                "last_ms": max(own) if own else None,
                "predictions_per_s": rate(len(own), min(own), max(own)) if len(own) > 1 else None,
            }
        )
    result["per_instance"] = per
    if all(p["first_ms"] is not None for p in per):
        lo = max(p["first_ms"] for p in per)
        hi = min(p["last_ms"] for p in per)
        both = sum(1 for ts in stamps if lo <= ts <= hi)
        result["all_busy_window_s"] = (hi - lo) / 1000
        result["all_busy_predictions_per_s"] = rate(both, lo, hi) if hi - lo >= 200 else None
    return result


def stream_run(k: int, args: argparse.Namespace) -> dict[str, Any]:
    env = h.Env().start()
    log("servers started")
    try:
        asyncio.run(ensure_topics(env.bootstrap, all_topics(), PARTITIONS))
        asyncio.run(env.publish_model(MODEL, 1, h.bench_model()))
        ports = start_scorers(env, [(f"scale-stream-{i}", instance_core(i)) for i in range(k)])
        result = asyncio.run(stream_phase(env, ports, args))
    finally:
        env.stop()
    shares = ", ".join(
        f"#{p['instance']} (core {p['core']}, partitions {p['partitions']}): {p['predictions']} "
        f"= {p['share']:.0%}, metric {p['served_metric']:.0f}"
        for p in result.get("per_instance", [])
    )
    log(
        f"stream {k} instance(s): {result['predictions_per_s']:8.0f} predictions/s over "
        f"{result.get('span_s', float('nan')):.2f} s ({result['predictions']} predictions, "
        f"{result['duplicates']} duplicates, {result['lost']} lost, {result['failed']} failed); "
        f"{shares}",
    )
    return result


# --- report -------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(data: dict[str, Any]) -> None:
    curve = data.get("online_curve")
    if curve:
        print("\nonline load curve, one scorer on core", h.SERVER_CORE)
        print(
            f"{'conns':>5s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s} "
            f"{'log drops':>9s}"
        )
        for r in curve["levels"]:
            print(
                f"{r['connections']:5d} {r['rps']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
                f"{r['errors']:7d} {r['prediction_log_dropped']:9.0f}"
            )
        s = curve["saturation"]
        print(
            f"saturation {s['max_rps']:.0f} req/s (at {s['at_connections']} connections); "
            f"90% of it from {s['knee_connections']} connections (p50 {s['knee_p50_ms']:.2f} ms, "
            f"p99 {s['knee_p99_ms']:.2f} ms); p50 doubles at "
            f"{s['p50_doubles_at_connections'] or '-'} connections"
        )
    stream = data.get("stream_scale_out")
    if stream:
        print("\nstream scale-out, consumer group 'scorer', 3 partitions")
        print(
            f"{'inst':>4s} {'pred/s':>9s} {'all-busy/s':>10s} {'span s':>7s} {'dups':>5s} "
            f"{'per instance (partitions: predictions, own rate/s)':s}"
        )
        for k in ("1", "2"):
            r = stream.get(k)
            if not r:
                continue
            per = "; ".join(
                f"{p['partitions']}: {p['predictions']}, {fmt(p['predictions_per_s'])}"
                for p in r.get("per_instance", [])
            )
            print(
                f"{k:>4s} {r['predictions_per_s']:9.0f} "
                f"{fmt(r.get('all_busy_predictions_per_s')):>10s} "
                f"{r.get('span_s', float('nan')):7.2f} {r['duplicates']:5d} {per}"
            )
        sp = stream.get("speedup_2_vs_1", {})
        print(
            f"speed-up 2 vs 1: backlog drain {fmt(sp.get('drain'), '.2f')}x, "
            f"while both busy {fmt(sp.get('all_busy'), '.2f')}x"
        )
    lb = data.get("online_scale_out")
    if lb:
        print("\nonline scale-out, one wrk per instance")
        for k in ("1", "2"):
            r = lb[k]
            per = ", ".join(f"core {p['core']}: {p['rps']:.0f}" for p in r["per_instance"])
            print(f"{k} instance(s): {r['rps']:8.0f} req/s aggregate ({per}), errors {r['errors']}")
        print(f"speed-up 2 vs 1: {fmt(lb['speedup_2_vs_1'], '.2f')}x")


NOTES = [
    "2-core machine: instance 0 runs on core {server}, instance 1 on core {client}, which it "
    "shares with the broker, S3, MongoDB-wire, the fake registry, the bench process and the load "
    "generators. Two instances cannot double throughput here; the speed-ups measure the "
    "mechanics (group rebalance, partition split, per-instance share), not two machines.",
    "Stream: 3 partitions over 2 instances split 2:1, so one instance drains two thirds of the "
    "backlog; the backlog drain rate is bounded by that instance (at best 1.5x with equal "
    "instances). 'all_busy_predictions_per_s' is the aggregate while every instance still had "
    "work (the capacity of the group).",
    "Stream: the backlog is published after the group has settled (probe rounds), by this process "
    "on core {client} while the instances consume; 'publish_done_after_first_output_s' says how "
    "long the publisher overlapped the measurement. Requests are spread with an explicit "
    "partition (i % 3): their key (the model name) would put them all on one partition.",
    "Online scale-out: no balancer process; each instance gets its own closed-loop wrk (the "
    "outcome of a perfect round-robin without a proxy hop). Both wrk processes run on core "
    "{client}.",
    "Other processes may share the machine during a run: see loadavg_start / loadavg_end.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    parser.add_argument("--levels", default="1,2,4,8,16,32,64", help="online connections")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds")
    parser.add_argument("--lb-connections", type=int, default=16, help="per instance")
    parser.add_argument("-n", type=int, default=60_000, help="stream backlog (ScoringRequested)")
    parser.add_argument("--settle", type=float, default=60.0, help="group settle timeout (s)")
    parser.add_argument("--timeout", type=float, default=300.0, help="stream output timeout (s)")
    parser.add_argument("--parts", default="online,stream,lb", help="online,stream,lb")
    args = parser.parse_args()
    if args.quick:
        args.levels, args.duration, args.warmup, args.n = "1,4,16,64", 2.0, 1.0, 6_000
    parts = set(args.parts.split(","))
    h.OUT.mkdir(parents=True, exist_ok=True)
    h.pin_self()
    data: dict[str, Any] = {
        "bench": "scaling",
        "route": f"POST {PATH}",
        "machine": h.machine_notes(),
        "loadavg_start": os.getloadavg(),
        "settings": vars(args),
        "layout": {
            "instance_cores": {"0": instance_core(0), "1": instance_core(1)},
            "client_core": h.CLIENT_CORE,
            "on_client_core": "broker, S3, MongoDB-wire, fake registry, bench process, wrk",
            "online_second_instance": "started with the first (start-up is slow) and idle, in "
            "the group with nothing to consume, during the one-instance measurements",
        },
        "notes": [n.format(server=h.SERVER_CORE, client=h.CLIENT_CORE) for n in NOTES],
    }
    if parts & {"online", "lb"}:
        log("online: a broker, scorer instance 0 on core " + h.SERVER_CORE)
        env = h.Env().start()
        log("servers started")
        try:
            asyncio.run(env.publish_model(MODEL, 1, h.bench_model()))
            wanted = 2 if "lb" in parts else 1
            ports = start_scorers(
                env, [(f"scale-online-{i}", instance_core(i)) for i in range(wanted)]
            )
            if "online" in parts:
                data["online_curve"] = online_curve(ports[0], args)
            if "lb" in parts:
                data["online_scale_out"] = online_scale_out(ports[0], ports[1], args)
        finally:
            env.stop()
    if "stream" in parts:
        log(f"stream: backlog {args.n}, a fresh broker per run")
        stream: dict[str, Any] = {str(k): stream_run(k, args) for k in (1, 2)}
        one, two = stream["1"], stream["2"]
        busy1 = one.get("all_busy_predictions_per_s") or one["predictions_per_s"]
        busy2 = two.get("all_busy_predictions_per_s")
        stream["speedup_2_vs_1"] = {
            "drain": two["predictions_per_s"] / one["predictions_per_s"]
            if one["predictions_per_s"]
            else None,
            "all_busy": busy2 / busy1 if busy1 and busy2 else None,
        }
        data["stream_scale_out"] = stream
    data["loadavg_end"] = os.getloadavg()
    data["run_s"] = time.monotonic() - T0
    path = h.write_json("scaling.json", data)
    print_table(data)
    print(f"\nrun {data['run_s']:.0f} s; results: {path}")


if __name__ == "__main__":
    main()
