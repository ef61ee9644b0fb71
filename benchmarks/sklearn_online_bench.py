"""Online serving of a scikit-learn model: the scorer serving it through ONNX Runtime (the
``sklearn`` family's artifact) against MLServer 1.7's scikit-learn runtime (``mlserver-sklearn``)
serving the same estimator, in one run.

The model: ``GradientBoostingClassifier`` (the ``sklearn`` family's default: 150 trees of
depth 3) fitted on 5,000 rows of 4 features with a non-linear label. The scorer's artifact is
made by the trainer's own code (``train_family``); MLServer gets the same estimator, fitted in
its own venv with the same data, parameters and seed and saved with joblib (as its runtime
expects). The request is the online bench's: one row of 4 FP64 features as a [1, 4] input
(MLServer is also asked for its ``predict_proba`` output). Each server runs alone on the server
core, the load generator (wrk) on the client core; rounds are interleaved.

Results: build/bench/sklearn_online.json. Run: ``uv run python benchmarks/sklearn_online_bench.py``
(MLServer: ``make bench-mlserver-venv`` first; without it only the scorer is measured).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
from typing import Any

import harness as h
import numpy as np
from online_bench import MLSERVER_VENV, median_of, serve_with_mlserver

from modelbus_contracts import ArtifactRef
from modelbus_embedded.testing import version_view
from modelbus_ml import Dataset, train_family

MODEL = "bench"
PATH = f"/v2/models/{MODEL}/infer"
ROWS, SEED = 5000, 11
FIT = """
import sys, joblib, numpy as np
from sklearn.ensemble import GradientBoostingClassifier
data = np.loadtxt(sys.argv[1], delimiter=",")
est = GradientBoostingClassifier(n_estimators=150, max_depth=3, learning_rate=0.1,
                                 min_samples_leaf=5, random_state={seed})
est.fit(data[:, :4], data[:, 4].astype(int))
joblib.dump(est, sys.argv[2])
"""


def dataset() -> Dataset:
    rng = np.random.default_rng(SEED)
    X = rng.normal(0, 1, (ROWS, 4))
    y = (((X[:, 0] > 0) ^ (X[:, 1] > 0)) | (X[:, 2] > 1.5)).astype(np.int8)
    return Dataset(h.FEATURES, X, y)


async def publish_onnx(env: h.Env, data: bytes) -> None:
    view = version_view(MODEL, 1, data, h.FEATURES)
    ref = ArtifactRef(
        uri=view.artifact.uri.replace(".json", ".onnx"),
        sha256=view.artifact.sha256,
        size_bytes=len(data),
        format="modelbus.onnx.v1",
    )
    view = view.model_copy(update={"artifact": ref})
    await env.store.put(ref.uri, data)
    env.registry.champions[MODEL] = view.model_dump(mode="json")


def start_scorer(env: h.Env) -> tuple[int, Any]:
    port, proc = env.start_scorer("bench-sklearn")
    h.wait_http_ok(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready")
    return port, proc


def start_mlserver(env: h.Env, ds: Dataset) -> tuple[int, Any]:
    """MLServer's scikit-learn runtime on the same estimator, fitted in MLServer's venv (same
    data, params, seed) and saved with joblib, as that runtime loads models."""
    folder = h.OUT / "mlserver-sklearn"
    (folder / MODEL).mkdir(parents=True, exist_ok=True)
    csv = folder / "train.csv"
    np.savetxt(csv, np.c_[ds.X, ds.y], delimiter=",")
    joblib_path = folder / MODEL / "model.joblib"
    python = str(MLSERVER_VENV / "bin" / "python")
    subprocess.run([python, "-c", FIT.format(seed=SEED), str(csv), str(joblib_path)], check=True)
    return serve_with_mlserver(
        env, "mlserver-sklearn", "mlserver_sklearn.SKLearnModel", joblib_path, {}
    )


def body(target: str) -> bytes:
    payload = json.loads(h.v2_body())
    if target == "mlserver":
        payload["outputs"] = [{"name": "predict_proba"}]
    return json.dumps(payload).encode()


def probability(port: int, target: str) -> float:
    import httpx

    response = httpx.post(f"http://127.0.0.1:{port}{PATH}", content=body(target), timeout=5)
    response.raise_for_status()
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    return float(outputs["score"][0] if target == "scorer" else outputs["predict_proba"][1])


def mlserver_sklearn_available() -> bool:
    python = MLSERVER_VENV / "bin" / "python"
    if not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", "import mlserver_sklearn"], capture_output=True)
    return probe.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    h.pin_self()
    targets = ["scorer"]
    notes: dict[str, Any] = {}
    if mlserver_sklearn_available():
        targets.append("mlserver")
    else:
        notes["mlserver"] = "skipped: mlserver-sklearn not installed (make bench-mlserver-venv)"
    ds = dataset()
    trained = train_family(ds, {"family": "sklearn"}, SEED)
    env = h.Env().start()
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
    answers: dict[str, float] = {}
    try:
        asyncio.run(publish_onnx(env, trained.artifact))
        h.OUT.mkdir(parents=True, exist_ok=True)
        for round_no in range(args.rounds):
            for target in targets:
                port, proc = start_scorer(env) if target == "scorer" else start_mlserver(env, ds)
                try:
                    answers[target] = probability(port, target)
                    h.load(port, PATH, body(target), args.warmup, args.connections)
                    result = h.load(port, PATH, body(target), args.duration, args.connections)
                finally:
                    env.stop_proc(proc)
                print(f"round {round_no + 1} {target:9s} {h.describe(result)}", flush=True)
                runs[target].append(result)
    finally:
        env.stop()
    summary = {t: median_of(r) for t, r in runs.items()}
    ratios = {}
    if "mlserver" in summary:
        s, m = summary["scorer"], summary["mlserver"]
        ratios["scorer_vs_mlserver_sklearn"] = {
            "throughput": s["rps"] / m["rps"],
            "p50": s["p50_ms"] / m["p50_ms"],
            "p99": s["p99_ms"] / m["p99_ms"],
        }
    X = np.asarray([h.ROW])
    data = {
        "bench": "sklearn_online",
        "model": "GradientBoostingClassifier(150 trees, depth 3)",
        "artifact_bytes": len(trained.artifact),
        "same_answer": answers,
        "local_onnx_probability": float(trained.model.predict_proba(X)[0]),
        "machine": h.machine_notes(),
        "settings": vars(args),
        "notes": notes,
        "summary": summary,
        "ratios": ratios,
        "runs": runs,
    }
    path = h.write_json("sklearn_online.json", data)
    print(json.dumps({"summary": summary, "ratios": ratios, "answers": answers}, indent=2))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
