"""Loop bench: does the loop close on drifts it has never seen, with the default settings?

Each scenario streams labelled traffic through the public interfaces only, as an upstream
system would: a dataset PUT to the trainer's API and a TrainingRequested on Kafka for the first
model, then ScoringRequested events at ``--rate`` per second and a LabelObserved for every
PredictionMade (CloudEvents on Kafka). Part-way the concept changes; the stack (embedded
default, no setting changed) has to notice, retrain, judge and serve a new champion, and keep
retraining until the live accuracy is back. Every scenario also runs stationary (the same
stream without the change) to count false DriftDetected.

Scenarios (binary classification on numeric features: what modelbus serves today):
  linear_boundary_moves  four standard normal features, the decision threshold moves
  nonlinear_switch       age and salary, five orders of magnitude apart, an XOR-like rule that
                         switches abruptly to another rule (a linear model cannot learn either)
  gradual                the linear concept rotates to another one over 4,000 points
  class_balance          prior shift: P(y=1) 0.5 -> 0.2 with the same class-conditional inputs

Per scenario: detection delay (points from the onset to the first DriftDetected), whether a new
champion serves, onset -> new champion serving (s), the served predictions' accuracy before the
drift (the last 2,000 before it), just after (the first 1,000 after) and at the end (the last
3,000), the incident's final state (monitor API), and false alarms on the stationary stream.
Beside them two baselines computed offline on the same streams with the same default family
(``auto``): "never retrain" (the first model forever) and "retrain nightly on all data" (a
retrain on every row so far at each "night", every ``--night`` points).

Results: build/bench/loop.json and a printed table.
Run: ``uv run python benchmarks/loop_bench.py`` (about 10 minutes on 2 cores; ``--quick`` for
two scenarios and shorter streams).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from modelbus_contracts import DriftDetected, PredictionMade, ScoringRequested
from modelbus_embedded.simulator import ScenarioConfig, Upstream, raise_if_refused
from modelbus_embedded.stack import build_stack, free_ports
from modelbus_ml import train_family
from modelbus_ml.dataset import from_rows, matrix_of
from modelbus_ml.outputs import outputs_of

OUT = Path("build/bench/loop.json")


# -- scenarios -----------------------------------------------------------------------------------


Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    """A stream: ``sample(n, t, rng) -> (rows, labels)`` at stream position ``t`` (0 .. total),
    with the change at ``onset`` (``drifts`` False: the stationary version, the "before" concept
    only). ``task`` says how a served prediction is judged: accuracy, or RMSE for a regression."""

    name: str
    features: tuple[str, ...]
    onset: int
    total: int
    drifts: bool = True
    task: str = "binary"

    def sample(self, n: int, t: int, rng: np.random.Generator) -> tuple[Rows, list[Any]]:
        phase = 0.0 if not self.drifts or t < self.onset else 1.0
        return self.draw(n, phase, t, rng)

    def draw(
        self, n: int, phase: float, t: int, rng: np.random.Generator
    ) -> tuple[Rows, list[Any]]:
        raise NotImplementedError

    def stationary(self) -> Scenario:
        return dataclasses.replace(self, drifts=False)

    def rows(self, X: np.ndarray) -> Rows:
        return [dict(zip(self.features, row, strict=True)) for row in X.tolist()]


def _noisy(z: np.ndarray, rng: np.random.Generator, flip: float = 0.03) -> list[int]:
    y = (z > 0).astype(np.int8)
    flips = rng.random(len(y)) < flip
    return np.where(flips, 1 - y, y).astype(np.int8).tolist()


class LinearBoundaryMoves(Scenario):
    def draw(self, n, phase, t, rng):
        X = rng.normal(0, 1, (n, 4))
        bias = -1.2 * phase  # the same direction, a threshold 1.2 further on
        z = X @ np.array([1.6, -1.1, 0.9, 0.0]) + bias + rng.normal(0, 0.3, n)
        return self.rows(X), _noisy(z, rng)


class NonlinearSwitch(Scenario):
    def draw(self, n, phase, t, rng):
        age = rng.uniform(18, 80, n)
        salary = rng.uniform(1e4, 2e5, n)
        X = np.c_[age, salary]
        if phase < 1:
            z = np.where((age > 45) ^ (salary > 1e5), 1.0, -1.0)
        else:
            z = np.where((age < 35) | ((salary > 1.4e5) & (age > 55)), 1.0, -1.0)
        return self.rows(X), _noisy(z, rng)


class Gradual(Scenario):
    SPAN = 4000

    def sample(self, n, t, rng):
        phase = 0.0 if not self.drifts else min(1.0, max(0.0, (t - self.onset) / self.SPAN))
        return self.draw(n, phase, t, rng)

    def draw(self, n, phase, t, rng):
        X = rng.normal(0, 1, (n, 4))
        before, after = np.array([1.6, -1.1, 0.9, 0.0]), np.array([-0.4, 1.2, 0.9, 1.3])
        w = (1 - phase) * before + phase * after
        return self.rows(X), _noisy(X @ w + rng.normal(0, 0.3, n), rng)


class ClassBalance(Scenario):
    def draw(self, n, phase, t, rng):
        p = 0.5 - 0.3 * phase
        y = (rng.random(n) < p).astype(np.int8)
        means = np.where(y[:, None] == 1, 0.9, -0.9) * np.array([1.0, -0.6, 0.4, 0.0])
        return self.rows(means + rng.normal(0, 1, (n, 4))), y.tolist()


CHANNELS = ("web", "store", "phone", "partner")


class CategoricalDrift(Scenario):
    """Two numbers and a sales channel (a category): the channel mix moves (web 40% -> 10%,
    partner 10% -> 40%) and what a channel means flips (partner customers now buy, web
    customers no longer), so both the category's frequencies and the concept change."""

    SHARES = ((0.4, 0.3, 0.2, 0.1), (0.1, 0.2, 0.3, 0.4))
    OFFSETS = ((0.9, -0.6, 0.0, -1.5), (-0.9, -0.6, 0.0, 1.5))

    def draw(self, n, phase, t, rng):
        after = int(phase >= 1)
        X = rng.normal(0, 1, (n, 2))
        channel = rng.choice(len(CHANNELS), size=n, p=self.SHARES[after])
        z = 1.2 * X[:, 0] - 0.8 * X[:, 1] + np.asarray(self.OFFSETS[after])[channel]
        rows = [
            {"x1": a, "x2": b, "channel": CHANNELS[c]}
            for (a, b), c in zip(X.tolist(), channel.tolist(), strict=True)
        ]
        return rows, _noisy(z + rng.normal(0, 0.3, n), rng)


TIERS = ("bronze", "silver", "gold")


class MulticlassDrift(Scenario):
    """Three classes cut from a linear score (bronze < -0.6 < silver < 0.6 < gold); the score's
    weights rotate at the onset."""

    WEIGHTS = (np.array([1.4, -0.9, 0.6, 0.0]), np.array([-0.2, 0.8, 0.6, 1.3]))

    def draw(self, n, phase, t, rng):
        X = rng.normal(0, 1, (n, 4))
        score = X @ self.WEIGHTS[int(phase >= 1)] + rng.normal(0, 0.25, n)
        tier = np.digitize(score, (-0.6, 0.6))
        return self.rows(X), [TIERS[k] for k in tier.tolist()]


REGIONS = ("north", "south", "east")


class RegressionDrift(Scenario):
    """A value from three numbers (one of them squared) and a region: at the onset the first
    coefficient changes sign and the regions' levels move."""

    def draw(self, n, phase, t, rng):
        after = phase >= 1
        X = rng.normal(0, 1, (n, 3))
        region = rng.choice(len(REGIONS), size=n)
        level = np.array([5.0, 0.0, -5.0] if not after else [-3.0, 4.0, 0.0])[region]
        w1 = -2.0 if after else 3.0
        y = w1 * X[:, 0] - 2.0 * X[:, 1] + X[:, 2] ** 2 + level + rng.normal(0, 1.0, n)
        rows = [
            {"x1": a, "x2": b, "x3": c, "region": REGIONS[r]}
            for (a, b, c), r in zip(X.tolist(), region.tolist(), strict=True)
        ]
        return rows, y.tolist()


FOUR = ("x1", "x2", "x3", "x4")


def scenarios(pre: int, post: int) -> list[Scenario]:
    total = pre + post
    return [
        LinearBoundaryMoves("linear_boundary_moves", FOUR, pre, total),
        NonlinearSwitch("nonlinear_switch", ("age", "salary"), pre, total),
        Gradual("gradual", FOUR, pre, total),
        ClassBalance("class_balance", FOUR, pre, total),
        CategoricalDrift("categorical_drift", ("x1", "x2", "channel"), pre, total),
        MulticlassDrift("multiclass_drift", FOUR, pre, total, task="multiclass"),
        RegressionDrift(
            "regression_drift", ("x1", "x2", "x3", "region"), pre, total, task="regression"
        ),
    ]


# -- one run through the public interfaces -------------------------------------------------------


@dataclass
class Served:
    position: int
    version: int
    predicted: Any  # the class (binary 0/1, multiclass the class) or the value
    truth: Any


class LoopRun(Upstream):
    """The simulator's upstream with the scenario's data, streaming a fixed number of points and
    recording every served prediction with its position in the stream and its truth."""

    def __init__(self, stack, scenario: Scenario, rate: float, seed: int, initial: int) -> None:
        config = ScenarioConfig(
            model_name=f"loop-{scenario.name.replace('_', '-')}-{uuid.uuid4().hex[:6]}",
            initial_rows=initial,
            rate_per_s=rate,
            drift_after_requests=scenario.onset,
            timeout_s=scenario.total / rate + 300,
            seed=seed,
        )
        super().__init__(
            stack.kafka_bootstrap,
            stack.url("trainer"),
            stack.url("scorer"),
            config,
            say=_quiet,
            api_key=stack.api_key("upstream"),
        )
        self.scenario = scenario
        self.features = scenario.features
        self.positions: dict[str, tuple[int, Any]] = {}
        self.served: list[Served] = []
        self.stream_rows: Rows = []
        self.stream_labels: list[Any] = []
        self.drift_positions: list[int] = []
        self.onset_at: float | None = None
        self.new_serving_at: float | None = None

    def first_dataset(self) -> tuple[Rows, list[Any]]:
        self.first = self.scenario.sample(self.cfg.initial_rows, 0, self.rng)
        return self.first

    def _on_prediction(self, event: PredictionMade):
        known = self.positions.pop(event.request_id or "", None)
        if known is None:
            return None
        position, truth = known
        predicted = event.value if self.scenario.task == "regression" else event.label
        self.served.append(Served(position, event.version, predicted, truth))
        new = self.first_champion is not None and event.version != self.first_champion
        if new and self.new_serving_at is None and position >= self.scenario.onset:
            self.new_serving_at = time.monotonic()
        self.truth[event.request_id or ""] = truth
        return super()._on_prediction(event)

    def _on_decision(self, event) -> None:
        if isinstance(event, DriftDetected) and event.model_name == self.cfg.model_name:
            self.drift_positions.append(self.result.requests_sent)
        super()._on_decision(event)

    async def _stream_until_new_champion_serves(self) -> None:
        interval = 20 / self.cfg.rate_per_s
        sent = 0
        started = time.monotonic()
        while sent < self.scenario.total:
            if sent >= self.scenario.onset and self.onset_at is None:
                self.onset_at = time.monotonic()
            rows, labels = self.scenario.sample(20, sent, self.rng)
            self.stream_rows += rows
            self.stream_labels += labels
            for row, label in zip(rows, labels, strict=True):
                request_id = uuid.uuid4().hex
                self.positions[request_id] = (sent, label)
                await self._send(
                    ScoringRequested(
                        model_name=self.cfg.model_name,
                        request_id=request_id,
                        features=row,
                        producer="loop-bench",
                    )
                )
                sent += 1
                self.result.requests_sent = sent
            # keep the rate: sleep to where the schedule says the next 20 should go
            ahead = started + sent / self.cfg.rate_per_s - time.monotonic()
            await asyncio.sleep(max(0.0, ahead) if ahead > 0 else interval / 10)
        await asyncio.sleep(3)  # the last labels and decisions


def _quiet(_: str) -> None:
    return None


def model_kinds(model: Any) -> tuple[str, ...] | None:
    return getattr(model, "kinds", None)


def _quality(predicted: list[Any], truth: list[Any], task: str) -> float | None:
    """Accuracy (classes compared as strings), or RMSE for a regression."""
    if not predicted:
        return None
    if task == "regression":
        errors = np.asarray(predicted, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
        return float(np.sqrt(np.mean(errors**2)))
    return sum(str(p) == str(t) for p, t in zip(predicted, truth, strict=True)) / len(predicted)


def _served_quality(served: list[Served], lo: int, hi: int, task: str) -> float | None:
    rows = [s for s in served if lo <= s.position < hi]
    return _quality([s.predicted for s in rows], [s.truth for s in rows], task)


async def _incident_state(stack, model: str) -> dict[str, Any] | None:
    viewer = stack.auth_headers("viewer")
    async with httpx.AsyncClient(base_url=stack.url("monitor"), timeout=10, headers=viewer) as http:
        response = await http.get("/incidents", params={"model_name": model})
        raise_if_refused(response)
        incidents = response.json() if response.status_code == 200 else []
    if not incidents:
        return None
    first = incidents[-1]
    keys = (
        "state",
        "attempts",
        "metric",
        "baseline_accuracy",
        "live_accuracy",
        "baseline_value",
        "live_value",
    )
    return {**{k: first.get(k) for k in keys if k in first}, "incidents": len(incidents)}


async def run_one(stack, scenario: Scenario, args) -> dict[str, Any]:
    run = LoopRun(stack, scenario, args.rate, args.seed, args.initial)
    started = time.monotonic()
    await run.run()
    onset, total = scenario.onset, scenario.total
    versions = sorted({s.version for s in run.served})
    result: dict[str, Any] = {
        "scenario": scenario.name,
        "drifts": scenario.drifts,
        "model_name": run.cfg.model_name,
        "points": run.result.requests_sent,
        "served": len(run.served),
        "versions_serving": versions,
        "drift_detected": len(run.drift_positions),
        "seconds": round(time.monotonic() - started, 1),
    }
    if scenario.drifts:
        after = [p - onset for p in run.drift_positions if p >= onset]
        result.update(
            detection_delay_points=after[0] if after else None,
            early_alarms=sum(1 for p in run.drift_positions if p < onset),
            new_champion_serving=run.new_serving_at is not None,
            onset_to_new_champion_s=(
                round(run.new_serving_at - run.onset_at, 1)
                if run.new_serving_at and run.onset_at
                else None
            ),
            metric="rmse" if scenario.task == "regression" else "accuracy",
            quality_before=_served_quality(run.served, onset - 2000, onset, scenario.task),
            quality_just_after=_served_quality(run.served, onset, onset + 1000, scenario.task),
            quality_end=_served_quality(run.served, total - 3000, total, scenario.task),
            incident=await _incident_state(stack, run.cfg.model_name),
        )
        rows0, labels0 = run.first
        result["baselines"] = baselines(
            scenario, rows0, labels0, run.stream_rows, run.stream_labels, args.night, args.seed
        )
    return result


def baselines(
    scenario: Scenario,
    rows0: Rows,
    labels0: list[Any],
    rows: Rows,
    labels: list[Any],
    night: int,
    seed: int,
) -> dict[str, float | None]:
    """Accuracy (RMSE) on the last 3,000 points of the same stream: the first model forever,
    and a retrain on every row so far (first dataset + stream) at every ``night`` points."""
    names, task = scenario.features, scenario.task

    def fit(r: Rows, y: list[Any]) -> Any:
        return train_family(from_rows(names, r, y, task=task), {}, seed).model

    def predict(model: Any, r: Rows) -> list[Any]:
        return outputs_of(model, matrix_of(names, r, model_kinds(model))).label_list()

    end = len(rows) - 3000
    first = fit(rows0, labels0)
    never = _quality(predict(first, rows[end:]), labels[end:], task)
    model, predicted, truth = first, [], []
    for start in range(0, len(rows), night):
        stop = min(len(rows), start + night)
        lo = max(start, end)
        if lo < stop:
            predicted += predict(model, rows[lo:stop])
            truth += labels[lo:stop]
        model = fit(rows0 + rows[:stop], labels0 + labels[:stop])
    return {"never_retrain": never, "nightly_all_data": _quality(predicted, truth, task)}


def table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'scenario':24} {'delay':>6} {'served':>6} {'onset->new':>10} {'metric':>6} "
        f"{'before':>7} {'after':>7} {'end':>7} {'never':>7} {'nightly':>7} {'incident':>12} "
        f"{'false':>5}"
    )
    lines = [head, "-" * len(head)]
    stationary = {r["scenario"]: r for r in results if not r["drifts"]}

    def f(v: Any, spec: str = ".3f") -> str:
        return "-" if v is None else format(v, spec)

    for r in (r for r in results if r["drifts"]):
        s = stationary.get(r["scenario"], {})
        inc = r.get("incident") or {}
        lines.append(
            f"{r['scenario']:24} {f(r['detection_delay_points'], 'd'):>6} "
            f"{'yes' if r['new_champion_serving'] else 'no':>6} "
            f"{f(r['onset_to_new_champion_s'], '.1f'):>10} {r['metric'][:4]:>6} "
            f"{f(r['quality_before']):>7} "
            f"{f(r['quality_just_after']):>7} {f(r['quality_end']):>7} "
            f"{f(r['baselines']['never_retrain']):>7} {f(r['baselines']['nightly_all_data']):>7} "
            f"{inc.get('state', '-')!s:>12} {f(s.get('drift_detected'), 'd'):>5}"
        )
    return "\n".join(lines)


async def main(args) -> list[dict[str, Any]]:
    chosen = scenarios(args.pre, args.post)
    if args.only:
        chosen = [s for s in chosen if s.name in args.only]
    if args.quick:
        chosen = chosen[:2]
    results = []
    with tempfile.TemporaryDirectory() as data:
        stack = build_stack(Path(data), object_store="s3", ports=free_ports())
        stack.start()
        try:
            for scenario in chosen:
                for variant in (scenario, scenario.stationary()):
                    result = await run_one(stack, variant, args)
                    results.append(result)
                    print(json.dumps(result), flush=True)
        finally:
            stack.stop()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--pre", type=int, default=4000, help="points before the change")
    parser.add_argument("--post", type=int, default=16000, help="points after the change")
    parser.add_argument("--initial", type=int, default=3000, help="rows of the first dataset")
    parser.add_argument("--night", type=int, default=5000, help="points between nightly retrains")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.pre, args.post = 3000, 9000
    results = asyncio.run(main(args))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": sys.version.split()[0], "machine": platform.machine(), "args": vars(args)}
    OUT.write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))
    print(table(results))
