"""Online serving bench: requests/s and p50/p99 of ``POST /v2/models/{name}/infer`` (one row of
4 FP64 features per request) on the scorer, started as production starts it
(``python -m modelbus_scorer``, fed by a real broker, S3 and a fake registry), against a bare
ASGI app and MLServer 1.7 serving the same model with the same payload.

Each server runs alone on the server core (taskset), the load generator (wrk, 1 thread, 16
connections) on the client core; warm-up, then a fixed duration; rounds are interleaved.
Results: build/bench/online.json. Run: ``uv run python benchmarks/online_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import harness as h

from modelbus_embedded.servers import free_port

MODEL = "bench"
PATH = f"/v2/models/{MODEL}/infer"
MLSERVER_VENV = h.ROOT / "build" / "mlserver-venv"


def start_scorer(env: h.Env) -> tuple[int, Any]:
    port, proc = env.start_scorer("bench-online")
    h.wait_http_ok(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready")
    return port, proc


def start_bare(env: h.Env, artifact: Path) -> tuple[int, Any]:
    port = free_port()
    argv = [
        sys.executable,
        str(h.ROOT / "benchmarks" / "bare_asgi.py"),
        str(artifact),
        str(port),
        MODEL,
    ]
    proc = env.spawn("bare-asgi", argv, dict(__import__("os").environ), port)
    h.wait_http_ok(f"http://127.0.0.1:{port}/ready")
    return port, proc


def start_mlserver(env: h.Env, artifact: Path) -> tuple[int, Any]:
    """MLServer serving the bench's logistic model through ``mlserver_model.LogRegModel``."""
    pythonpath = f"{h.ROOT / 'benchmarks'}:{h.ROOT / 'libs' / 'ml' / 'src'}"
    return serve_with_mlserver(
        env, "mlserver", "mlserver_model.LogRegModel", artifact, {"PYTHONPATH": pythonpath}
    )


def serve_with_mlserver(
    env: h.Env, folder_name: str, implementation: str, uri: Path, extra_env: dict[str, str]
) -> tuple[int, Any]:
    """MLServer 1.7 (from its venv) serving one model with ``implementation`` and
    ``parameters.uri``, inference in the server process, pinned like the other servers."""
    import os

    port = free_port()
    folder = h.OUT / folder_name
    (folder / MODEL).mkdir(parents=True, exist_ok=True)
    settings = {
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": 0,  # inference in the server process, as the other two do
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": MODEL,
        "implementation": implementation,
        "parameters": {"uri": str(uri), "version": "1"},
    }
    (folder / MODEL / "model-settings.json").write_text(json.dumps(model_settings))
    env_vars = {**os.environ, **extra_env}
    env_vars.pop("VIRTUAL_ENV", None)
    argv = [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(folder)]
    proc = env.spawn(folder_name, argv, env_vars, port)
    h.wait_http_ok(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready")
    return port, proc


def mlserver_available() -> bool:
    return (MLSERVER_VENV / "bin" / "mlserver").exists()


def check_answer(port: int) -> dict[str, Any]:
    import httpx

    response = httpx.post(f"http://127.0.0.1:{port}{PATH}", content=h.v2_body("check"), timeout=5)
    response.raise_for_status()
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    return {"score": outputs["score"][0], "label": outputs["label"][0]}


def measure(port: int, args: argparse.Namespace) -> dict[str, Any]:
    h.load(port, PATH, h.v2_body(), args.warmup, args.connections)
    return h.load(port, PATH, h.v2_body(), args.duration, args.connections)


def run_target(name: str, env: h.Env, artifact: Path, args: argparse.Namespace) -> dict[str, Any]:
    starter = {
        "scorer": lambda: start_scorer(env),
        "bare_asgi": lambda: start_bare(env, artifact),
        "mlserver": lambda: start_mlserver(env, artifact),
    }[name]
    port, proc = starter()
    try:
        answer = check_answer(port)
        before = h.scrape(port, "modelbus_events_published_total") if name == "scorer" else 0
        result = measure(port, args)
        result["answer"] = answer
        if name == "scorer":
            time.sleep(1.0)  # let the prediction log drain
            result["prediction_log"] = {
                "published_during_run": h.scrape(port, "modelbus_events_published_total") - before,
                "dropped_total": h.scrape(port, "modelbus_scorer_prediction_log_dropped_total"),
                "errors_total": h.scrape(port, "modelbus_scorer_prediction_log_errors_total"),
            }
        return result
    finally:
        env.stop_proc(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per round")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per target")
    parser.add_argument("--targets", default="scorer,bare_asgi,mlserver")
    args = parser.parse_args()
    h.pin_self()
    targets = [t for t in args.targets.split(",") if t]
    notes: dict[str, Any] = {}
    if "mlserver" in targets and not mlserver_available():
        targets.remove("mlserver")
        notes["mlserver"] = f"skipped: {MLSERVER_VENV} not installed (make bench-mlserver-venv)"
    env = h.Env().start()
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
    try:
        asyncio.run(env.publish_model(MODEL, 1, h.bench_model()))
        h.OUT.mkdir(parents=True, exist_ok=True)
        artifact = h.OUT / "artifact.json"
        artifact.write_bytes(h.bench_model().to_bytes())
        for round_no in range(args.rounds):
            for target in targets:
                result = run_target(target, env, artifact, args)
                print(f"round {round_no + 1} {target:10s} {h.describe(result)}", flush=True)
                runs[target].append(result)
    finally:
        env.stop()
    summary = {t: median_of(r) for t, r in runs.items()}
    ratios = ratios_vs(summary)
    data = {
        "bench": "online",
        "route": f"POST {PATH}",
        "payload": json.loads(h.v2_body()),
        "machine": h.machine_notes(),
        "settings": vars(args),
        "notes": notes,
        "summary": summary,
        "ratios": ratios,
        "targets": {"throughput_vs_bare_min": 0.5, "p99_vs_bare_max": 2.0},
        "runs": runs,
    }
    path = h.write_json("online.json", data)
    print_table(summary, ratios)
    print(f"results: {path}")


def median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms")
    out: dict[str, Any] = {k: statistics.median(r[k] for r in results) for k in keys}
    out["errors"] = sum(r["errors"] for r in results)
    out["requests"] = sum(r["requests"] for r in results)
    return out


def ratios_vs(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ratios: dict[str, Any] = {}
    for base in ("bare_asgi", "mlserver"):
        if base not in summary or "scorer" not in summary:
            continue
        s, b = summary["scorer"], summary[base]
        ratios[f"scorer_vs_{base}"] = {
            "throughput": s["rps"] / b["rps"],
            "p50": s["p50_ms"] / b["p50_ms"],
            "p99": s["p99_ms"] / b["p99_ms"],
        }
    if "scorer_vs_bare_asgi" in ratios:
        r = ratios["scorer_vs_bare_asgi"]
        ratios["meets_targets"] = r["throughput"] >= 0.5 and r["p99"] <= 2.0
    return ratios


def print_table(summary: dict[str, dict[str, Any]], ratios: dict[str, Any]) -> None:
    print(
        f"\n{'server':12s} {'req/s':>9s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} "
        f"{'errors':>7s}"
    )
    for name, s in summary.items():
        print(
            f"{name:12s} {s['rps']:9.0f} {s['p50_ms']:8.2f} {s['p90_ms']:8.2f} "
            f"{s['p99_ms']:8.2f} {s['errors']:7d}"
        )
    for key, r in ratios.items():
        if isinstance(r, dict):
            print(
                f"{key}: throughput {r['throughput']:.2f}x, p50 {r['p50']:.2f}x, "
                f"p99 {r['p99']:.2f}x"
            )
    if "meets_targets" in ratios:
        print(
            f"targets (>= 0.5x throughput, p99 <= 2x vs bare ASGI): "
            f"{'met' if ratios['meets_targets'] else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
