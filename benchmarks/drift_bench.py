"""Drift-detection bench: modelbus's detector stack vs River's detectors used directly with their
default settings, on synthetic streams with known change points, many seeded trials.

Streams (values already standardised by the reference, as the monitor feeds them):
  mean_0.5  N(0,1) -> N(0.5,1)            mean_1.0  N(0,1) -> N(1,1)
  var_x2    N(0,1) -> N(0,2) (variance x2) gradual   mean ramps 0 -> 1 sigma over 1,000 points
  err_up    Bernoulli(0.10) -> 0.20        err_down  Bernoulli(0.20) -> 0.10 (must NOT alarm)
  stationary N(0,1), chunks of 100k points (false alarms per 1M points; the KSWIN stacks,
             ~300 us/point, run 3 chunks and 20 trials by default; scaled to per 1M)

Each change stream has ``PRE`` points before the change and ``HORIZON`` after; the delay is the
first alarm at or after the change minus the change index; no alarm within the horizon is a miss
(for err_down an alarm is the failure: "wrong-direction alarms"). Alarms before the change are
counted as early (false) alarms.

Stacks:
  modelbus[adwin]         the monitor's default per-feature stack: ADWIN on z and the variance
                          CUSUM on |z|,
                          every streaming alarm confirmed by a two-sample KS test (alpha 0.001)
                          against the stream's reference sample; on errors: ADWIN + one-sided
                          two-proportion z-test
  modelbus[page_hinkley]  / modelbus[kswin]: the same with that detector on z;
                          modelbus[ddm] on errors: River DDM + the proportion test
  river.ADWIN / river.KSWIN / river.PageHinkley / river.DDM: River 0.26, default settings,
                          on the raw value (DDM only on the 0/1 error streams)

The modelbus stacks are built with ``DetectorConfig().stream(...)``: exactly what the service
runs. Results: build/bench/drift.json and a printed table.
Run: ``uv run python benchmarks/drift_bench.py`` (about 5-8 minutes on 2 cores;
``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import river
from river import drift
from river.drift import binary

from modelbus_monitor.config import DetectorConfig
from modelbus_monitor.detectors import ERROR_STREAM

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "bench" / "drift.json"
PRE = 1500
HORIZON = 2000
CHUNK = 100_000

CONTINUOUS = ("mean_0.5", "mean_1.0", "var_x2", "gradual")
BINARY = ("err_up", "err_down")
INPUT_STACKS = (
    "modelbus[adwin]",
    "modelbus[page_hinkley]",
    "modelbus[kswin]",
    "river.ADWIN",
    "river.PageHinkley",
    "river.KSWIN",
)
ERROR_STACKS = ("modelbus[adwin]", "modelbus[ddm]", "river.ADWIN", "river.DDM")


# -- streams -----------------------------------------------------------------------------------


def make_stream(scenario: str, seed: int) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    n = PRE + HORIZON
    if scenario == "stationary":
        return rng.standard_normal(CHUNK), -1
    if scenario in BINARY:
        before, after = (0.10, 0.20) if scenario == "err_up" else (0.20, 0.10)
        p = np.where(np.arange(n) < PRE, before, after)
        return (rng.random(n) < p).astype(float), PRE
    x = rng.standard_normal(n)
    if scenario == "mean_0.5":
        x[PRE:] += 0.5
    elif scenario == "mean_1.0":
        x[PRE:] += 1.0
    elif scenario == "var_x2":
        x[PRE:] *= np.sqrt(2.0)
    elif scenario == "gradual":
        x[PRE:] += np.minimum(np.arange(HORIZON) / 1000.0, 1.0)
    return x, PRE


# -- stacks: each returns the indices (0-based) of its alarms ----------------------------------


def alarms_modelbus(detector: str, values: np.ndarray, binary_stream: bool) -> list[int]:
    if binary_stream:
        config = DetectorConfig(error_detector=detector)
        streams = [config.stream("bench", ERROR_STREAM, "error")]
    else:
        config = DetectorConfig(feature_detector=detector)
        streams = [config.stream("bench", "x", "mean"), config.stream("bench", "x", "scale")]
    out = []
    if binary_stream:
        (stream,) = streams
        for i, v in enumerate(values.tolist()):
            if stream.update(v) is not None:
                out.append(i)
        return out
    mean, scale = streams
    for i, v in enumerate(values.tolist()):
        a = mean.update(v)
        b = scale.update(abs(v))
        if a is not None or b is not None:
            out.append(i)
    return out


def river_detector(name: str, seed: int) -> Any:
    if name == "river.ADWIN":
        return drift.ADWIN()
    if name == "river.KSWIN":
        return drift.KSWIN(seed=seed)
    if name == "river.PageHinkley":
        return drift.PageHinkley()
    if name == "river.DDM":
        return binary.DDM()
    raise ValueError(name)


def alarms_river(name: str, values: np.ndarray, seed: int) -> list[int]:
    detector = river_detector(name, seed)
    out = []
    update = detector.update
    for i, v in enumerate(values.tolist()):
        update(v)
        if detector.drift_detected:
            out.append(i)
    return out


def run_stack(stack: str, values: np.ndarray, binary_stream: bool, seed: int) -> list[int]:
    if stack.startswith("modelbus["):
        return alarms_modelbus(stack[len("modelbus[") : -1], values, binary_stream)
    return alarms_river(stack, values, seed)


def trial(job: tuple[str, str, int]) -> dict[str, Any]:
    stack, scenario, seed = job
    values, change = make_stream(scenario, seed)
    started = time.perf_counter()
    alarms = run_stack(stack, values, scenario in BINARY, seed)
    seconds = time.perf_counter() - started
    if change < 0:
        return {"points": len(values), "alarms": len(alarms), "seconds": seconds}
    early = [a for a in alarms if a < change]
    late = [a for a in alarms if a >= change]
    return {
        "early": len(early),
        "delay": (late[0] - change) if late else None,
        "points": len(values),
        "seconds": seconds,
    }


# -- summary -----------------------------------------------------------------------------------


def pct(values: list[int], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise(scenario: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = sum(r["seconds"] for r in results)
    points = sum(r["points"] for r in results)
    if scenario == "stationary":
        alarms = sum(r["alarms"] for r in results)
        return {
            "points": points,
            "false_alarms": alarms,
            "false_alarms_per_1M": alarms * 1e6 / points,
            "us_per_point": seconds / points * 1e6,
        }
    delays = [r["delay"] for r in results if r["delay"] is not None]
    out = {
        "trials": len(results),
        "detected": len(delays),
        "misses": len(results) - len(delays),
        "median_delay": pct(delays, 50),
        "p90_delay": pct(delays, 90),
        "early_alarms": sum(r["early"] for r in results),
        "pre_change_points": PRE * len(results),
        "us_per_point": seconds / points * 1e6,
    }
    if scenario == "err_down":
        out["wrong_direction_alarms"] = len(delays)
    return out


def jobs(
    trials: int, chunks: int, kswin_chunks: int, kswin_trials: int
) -> list[tuple[str, str, int]]:
    out = []
    for stack in INPUT_STACKS:
        n_trials = min(trials, kswin_trials) if "kswin" in stack.lower() else trials
        for scenario in CONTINUOUS:
            out += [(stack, scenario, 1000 + s) for s in range(n_trials)]
        n = min(chunks, kswin_chunks) if "kswin" in stack.lower() else chunks
        out += [(stack, "stationary", 50_000 + s) for s in range(n)]
    for stack in ERROR_STACKS:
        for scenario in BINARY:
            out += [(stack, scenario, 2000 + s) for s in range(trials)]
    return out


def fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def print_table(summary: dict[str, dict[str, dict[str, Any]]]) -> None:
    print()
    header = f"{'stack':24} {'scenario':10} {'median':>7} {'p90':>7} {'miss':>5} {'early':>6}"
    print(header + f" {'FA/1M':>8} {'us/pt':>6}")
    for stack, scenarios in summary.items():
        for scenario, s in scenarios.items():
            if scenario == "stationary":
                print(
                    f"{stack:24} {scenario:10} {'':>7} {'':>7} {'':>5} {'':>6} "
                    f"{fmt(s['false_alarms_per_1M'], 1):>8} {fmt(s['us_per_point'], 2):>6}"
                )
                continue
            miss = f"{s['misses']}/{s['trials']}"
            if scenario == "err_down":
                miss = f"!{s['wrong_direction_alarms']}"
            print(
                f"{stack:24} {scenario:10} {fmt(s['median_delay'], 0):>7} "
                f"{fmt(s['p90_delay'], 0):>7} {miss:>5} {s['early_alarms']:>6} {'':>8} "
                f"{fmt(s['us_per_point'], 2):>6}"
            )
    print("(err_down: '!n' = alarms on an error rate that went DOWN; should be 0)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40, help="seeded trials per change stream")
    parser.add_argument("--chunks", type=int, default=10, help="stationary chunks of 100k")
    parser.add_argument(
        "--kswin-chunks", type=int, default=3, help="stationary chunks for the (slow) KSWIN stacks"
    )
    parser.add_argument("--kswin-trials", type=int, default=20, help="trials for KSWIN stacks")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--quick", action="store_true", help="5 trials, 1 chunk")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.chunks, args.kswin_chunks, args.kswin_trials = 5, 1, 1, 5
    todo = jobs(args.trials, args.chunks, args.kswin_chunks, args.kswin_trials)
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(trial, todo, chunksize=4))
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for (stack, scenario, _), result in zip(todo, results, strict=True):
        key = f"{stack} (errors)" if scenario in BINARY else stack
        grouped.setdefault(key, {}).setdefault(scenario, []).append(result)
    summary = {
        stack: {scenario: summarise(scenario, rs) for scenario, rs in scenarios.items()}
        for stack, scenarios in grouped.items()
    }
    elapsed = time.perf_counter() - started
    report = {
        "bench": "drift",
        "river": river.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "trials": args.trials,
        "stationary_points_per_stack": args.chunks * CHUNK,
        "stationary_points_kswin_stacks": min(args.chunks, args.kswin_chunks) * CHUNK,
        "pre_change_points": PRE,
        "horizon": HORIZON,
        "elapsed_s": round(elapsed, 1),
        "modelbus_config": {
            k: v for k, v in DetectorConfig().__dict__.items() if not isinstance(v, dict)
        },
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_table(summary)
    print(f"\n{len(todo)} runs in {elapsed:.0f}s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
