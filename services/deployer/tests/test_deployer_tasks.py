"""The hold-out gates on a multiclass and a regression hold-out: the per-task default metric,
the paired test against the champion and against the no-skill prior, a metric that does not
apply, and the hold-out read with the model's task and classes. Fixed-output models keep the
numbers exact; one trained scikit-learn pipeline goes through the service end to end."""

from __future__ import annotations

import numpy as np
import pytest

from modelbus_contracts import (
    ArtifactRef,
    DatasetRef,
    FeatureSpec,
    Lineage,
    ModelRegistered,
    Signature,
)
from modelbus_deployer.adapters import read_holdout
from modelbus_deployer.domain import Policy, judge
from modelbus_deployer.ports import HoldoutSpec
from modelbus_ml import Dataset, DatasetError, from_rows, train_family
from modelbus_ml.evaluation import evaluate, prior_row_losses
from modelbus_platform.stores import sha256_hex

FEATURES = ("x1", "x2", "x3")
CLASSES = ("high", "low", "mid")
FAST = Policy(latency_samples=5)


def gate(verdict, name: str):
    return next(g for g in verdict.gates if g.name == name)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class FixedProba:
    """A multiclass model answering the given probabilities (rows in hold-out order)."""

    feature_names = FEATURES
    task = "multiclass"
    threshold = 0.5

    def __init__(self, proba: np.ndarray, classes: tuple[str, ...] = CLASSES) -> None:
        self.proba, self.classes = proba, classes

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.proba[: len(X)]


class FixedValues:
    """A regression model answering the given values (rows in hold-out order)."""

    feature_names = FEATURES
    task = "regression"
    classes = ()

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def predict_values(self, X: np.ndarray) -> np.ndarray:
        return self.values[: len(X)]


def multiclass_world(rows: int, seed: int) -> tuple[Dataset, np.ndarray]:
    """A hold-out whose classes are drawn from known logits (returned)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, size=(rows, 3))
    p = softmax(logits)
    y = np.array([rng.choice(3, p=row) for row in p], dtype=np.int64)
    return Dataset(FEATURES, rng.normal(size=(rows, 3)), y, "multiclass", CLASSES), logits


def regression_world(rows: int, seed: int) -> tuple[Dataset, np.ndarray]:
    """A hold-out y = signal + noise (the signal returned)."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(10, 3, size=rows)
    y = signal + rng.normal(0, 1, size=rows)
    return Dataset(FEATURES, rng.normal(size=(rows, 3)), y, "regression"), signal


# --- multiclass ------------------------------------------------------------------------------


def test_multiclass_better_challenger_is_promoted_on_log_loss(fast_clock):
    holdout, logits = multiclass_world(400, seed=1)
    rng = np.random.default_rng(2)
    challenger = FixedProba(softmax(logits + rng.normal(0, 0.3, size=logits.shape)))
    champion = FixedProba(softmax(logits + rng.normal(0, 2.0, size=logits.shape)))

    verdict = judge(challenger, holdout, FAST, champion, 1, fast_clock)

    assert verdict.decision == "promote", verdict.reasons
    assert gate(verdict, "task").detail == (
        "a multiclass model (classes ['high', 'low', 'mid']) judged on log_loss "
        "(the multiclass default)"
    )
    delta = gate(verdict, "champion_delta")
    assert delta.observed == pytest.approx(
        verdict.champion_metrics["log_loss"] - verdict.challenger_metrics["log_loss"]
    )
    assert "beside it: accuracy" in delta.detail and "macro_auc" in delta.detail
    assert set(verdict.challenger_metrics) == {"accuracy", "log_loss", "brier", "macro_auc", "rows"}
    assert verdict.task == "multiclass"
    # the reverse is a rejection with both halves failing
    worse = judge(champion, holdout, FAST, challenger, 1, fast_clock)
    assert worse.decision == "reject"
    assert not gate(worse, "champion_delta").passed and not gate(worse, "paired_test").passed


def test_multiclass_noise_equal_challenger_is_not_promoted(fast_clock):
    """Two equally good models (the same logits, each with its own noise): the paired test
    promotes about its level at most."""
    rng = np.random.default_rng(5)
    promoted, trials = 0, 60
    for trial in range(trials):
        holdout, logits = multiclass_world(200, seed=100 + trial)
        champion, challenger = (
            FixedProba(softmax(logits + rng.normal(0, 0.7, size=logits.shape))) for _ in range(2)
        )
        promoted += judge(challenger, holdout, FAST, champion, 1, fast_clock).decision == "promote"
    assert promoted / trials <= 0.12, promoted


def test_multiclass_first_model_must_beat_the_class_frequencies(fast_clock):
    holdout, logits = multiclass_world(300, seed=3)
    freq = np.bincount(holdout.y, minlength=3) / holdout.rows

    good = judge(FixedProba(softmax(logits)), holdout, FAST, clock=fast_clock)
    prior = judge(FixedProba(np.tile(freq, (300, 1))), holdout, FAST, clock=fast_clock)

    assert good.decision == "promote"
    assert "of the hold-out's class frequencies" in gate(good, "champion_delta").detail
    assert prior.decision == "reject"
    assert gate(prior, "champion_delta").observed == pytest.approx(0.0, abs=1e-9)
    assert not gate(prior, "paired_test").passed


def test_multiclass_probabilities_that_do_not_sum_to_one_fail_sanity(fast_clock):
    holdout, _ = multiclass_world(150, seed=4)
    broken = FixedProba(np.full((150, 3), 0.5))

    verdict = judge(broken, holdout, FAST, clock=fast_clock)

    assert verdict.decision == "reject"
    sanity = gate(verdict, "output_sanity")
    assert sanity.observed == 150
    assert "150 of 150 rows of class probabilities" in sanity.detail


def test_macro_auc_is_selectable_and_auc_is_not_for_multiclass(fast_clock):
    holdout, logits = multiclass_world(300, seed=6)
    model = FixedProba(softmax(logits))

    by_macro = judge(model, holdout, Policy(primary_metric="macro_auc", latency_samples=5))
    by_auc = judge(model, holdout, Policy(primary_metric="auc", latency_samples=5))

    assert by_macro.decision == "promote"
    quality = gate(by_macro, "absolute_quality")
    assert quality.observed == pytest.approx(by_macro.challenger_metrics["macro_auc"])
    assert quality.threshold == 0.6
    assert by_auc.decision == "reject"
    assert by_auc.reasons[0] == (
        "task failed: primary metric auc does not apply to a multiclass model: one of "
        "accuracy, log_loss, brier, macro_auc"
    )


# --- regression ------------------------------------------------------------------------------


def test_regression_better_challenger_is_promoted_on_rmse(fast_clock):
    holdout, signal = regression_world(300, seed=1)
    rng = np.random.default_rng(2)
    challenger = FixedValues(signal + rng.normal(0, 0.2, size=300))
    champion = FixedValues(signal + rng.normal(0, 1.5, size=300))

    verdict = judge(challenger, holdout, FAST, champion, 2, fast_clock)

    assert verdict.decision == "promote", verdict.reasons
    assert set(verdict.challenger_metrics) == {"rmse", "mae", "r2", "rows"}
    delta, paired = gate(verdict, "champion_delta"), gate(verdict, "paired_test")
    # the margin is on the RMSE values, the test on the per-row squared errors
    assert delta.observed == pytest.approx(
        verdict.champion_metrics["rmse"] - verdict.challenger_metrics["rmse"]
    )
    assert "margin 0 on rmse (lower is better)" in delta.detail
    assert "beside it: mae" in delta.detail
    assert paired.detail.startswith("per-row squared error (mean gain +")
    assert "row by row, challenger vs champion v2" in paired.detail


def test_regression_margin_is_in_rmse_units(fast_clock):
    holdout, signal = regression_world(300, seed=7)
    rng = np.random.default_rng(8)
    challenger = FixedValues(signal + rng.normal(0, 0.2, size=300))
    champion = FixedValues(signal + rng.normal(0, 0.6, size=300))
    gain = evaluate(champion, holdout)["rmse"] - evaluate(challenger, holdout)["rmse"]
    assert 0.05 < gain < 0.5  # significant, but below the margin set next

    policy = Policy(promotion_margin=0.5, latency_samples=5)
    verdict = judge(challenger, holdout, policy, champion, 1, fast_clock)

    assert verdict.decision == "reject"
    assert gate(verdict, "paired_test").passed
    delta = gate(verdict, "champion_delta")
    assert delta.observed == pytest.approx(gain)
    assert verdict.reasons == [f"champion_delta failed: {delta.detail}"]
    assert f"improvement {gain:+.4f} < margin 0.5 on rmse" in delta.detail


def test_regression_noise_equal_challenger_is_not_promoted(fast_clock):
    rng = np.random.default_rng(9)
    promoted, trials = 0, 60
    for trial in range(trials):
        holdout, signal = regression_world(200, seed=200 + trial)
        champion, challenger = (
            FixedValues(signal + rng.normal(0, 0.8, size=200)) for _ in range(2)
        )
        promoted += judge(challenger, holdout, FAST, champion, 1, fast_clock).decision == "promote"
    assert promoted / trials <= 0.12, promoted


@pytest.mark.parametrize("metric", ["rmse", "mae"])
def test_regression_first_model_must_beat_the_mean(fast_clock, metric):
    holdout, signal = regression_world(250, seed=10)
    policy = Policy(primary_metric=metric, latency_samples=5)  # min_primary_metric 0.6 unused

    good = judge(FixedValues(signal), holdout, policy, clock=fast_clock)
    mean = judge(FixedValues(np.full(250, holdout.y.mean())), holdout, policy, clock=fast_clock)

    assert good.decision == "promote", good.reasons
    delta = gate(good, "champion_delta")
    prior, _ = prior_row_losses(holdout, metric)
    assert f"of the hold-out's mean {holdout.y.mean():.4g}" in delta.detail
    assert good.challenger_metrics[metric] > 0.6  # an RMSE above the AUC-style floor passes
    assert "absolute_quality" not in {g.name for g in good.gates}
    assert mean.decision == "reject"
    assert not gate(mean, "paired_test").passed
    assert prior.size == 250


def test_a_classification_metric_rejects_a_regression_without_a_crash(fast_clock):
    holdout, signal = regression_world(200, seed=11)

    verdict = judge(FixedValues(signal), holdout, Policy(primary_metric="auc"), clock=fast_clock)

    assert verdict.decision == "reject"
    assert verdict.reasons == [
        "task failed: primary metric auc does not apply to a regression model: one of rmse, mae"
    ]
    assert verdict.challenger_metrics["rmse"] > 0  # still reported


def test_non_finite_regression_values_fail_sanity(fast_clock):
    holdout, signal = regression_world(120, seed=12)
    values = signal.copy()
    values[:7] = np.nan

    verdict = judge(FixedValues(values), holdout, FAST, clock=fast_clock)

    assert verdict.decision == "reject"
    sanity = gate(verdict, "output_sanity")
    assert (sanity.observed, sanity.detail) == (7, "7 of 120 values are NaN or infinite")


def test_a_model_of_another_task_is_a_task_rejection(models, fast_clock):
    holdout, _ = multiclass_world(150, seed=13)

    verdict = judge(models.good, holdout, FAST, clock=fast_clock)  # a binary model

    assert verdict.decision == "reject"
    assert gate(verdict, "task").detail == (
        "a binary model cannot be judged on a multiclass hold-out (classes ['high', 'low', 'mid'])"
    )


def test_a_champion_of_another_task_cannot_be_compared(models, fast_clock):
    holdout, logits = multiclass_world(150, seed=14)

    verdict = judge(FixedProba(softmax(logits)), holdout, FAST, models.good, 3, fast_clock)

    assert verdict.decision == "reject"
    assert "champion v3 is a binary model and the challenger a multiclass one" in (
        gate(verdict, "champion_delta").detail
    )


# --- the hold-out, read as the model sees it ---------------------------------------------------


def test_holdout_classes_follow_the_models_order():
    data = b"x1,label\n1.0,mid\n2.0,high\n3.0,low\n4.0,mid\n"

    ds = read_holdout(data, HoldoutSpec("multiclass", ("low", "mid", "high")))

    assert ds.classes == ("low", "mid", "high")
    assert ds.y.tolist() == [1, 2, 0, 1]
    with pytest.raises(DatasetError, match="not classes of the model"):
        read_holdout(data, HoldoutSpec("multiclass", ("low", "mid")))


def test_holdout_task_and_kinds_come_from_the_signature():
    data = b"zip,size,label\n75001,1.5,3\n69002,2.5,4\n75001,,5\n"
    signature = Signature(
        features=[
            FeatureSpec(name="zip", kind="category"),
            FeatureSpec(name="size", nullable=True),
        ],
        task="regression",
    )

    ds = read_holdout(data, HoldoutSpec.of(signature, None))

    assert ds.task == "regression"  # integer targets, not classes
    assert ds.y.tolist() == [3.0, 4.0, 5.0]
    assert ds.feature_kinds == ("category", "number")
    assert ds.X[0, 0] == "75001"
    assert read_holdout(data, None).task == "multiclass"  # what a guess would say


async def test_a_trained_multiclass_pipeline_is_judged_end_to_end(world):
    """A scikit-learn pipeline over a category column, registered with its signature: the
    service reads the hold-out with the model's classes and kinds and promotes it over the
    class frequencies."""
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for _ in range(500):
        x, city = float(rng.normal()), str(rng.choice(["paris", "lyon", "nice"]))
        rows.append({"x": x, "city": city})
        s = x + {"paris": 1.5, "lyon": 0.0, "nice": -1.5}[city] + 0.3 * rng.normal()
        labels.append("a" if s < -0.7 else ("b" if s < 0.7 else "c"))
    ds = from_rows(["x", "city"], rows, labels)
    train, holdout = ds.take(np.arange(350)), ds.take(np.arange(350, 500))
    trained = train_family(train, {"family": "linear"}, seed=0)
    digest = sha256_hex(trained.artifact)
    await world.store.put(f"artifacts/m/{digest}", trained.artifact)
    data = holdout.to_csv_bytes()
    await world.store.put("datasets/m/h.csv", data)
    ref = DatasetRef(uri="datasets/m/h.csv", sha256=sha256_hex(data), rows=holdout.rows)
    event = ModelRegistered(
        producer="registry",
        model_name="churn",
        version=1,
        run_id="run-1",
        artifact=ArtifactRef(
            uri=f"artifacts/m/{digest}",
            sha256=digest,
            size_bytes=len(trained.artifact),
            format=trained.format,
        ),
        feature_names=["x", "city"],
        metrics={},
        lineage=Lineage(dataset=ref, holdout=ref, seed=0, code_version="t", trigger="api"),
        signature=Signature.model_validate(ds.signature()),
    )

    assert await world.service().handle_registered(event) == "decided"

    doc = world.decisions.docs[("churn", 1)]
    assert doc["task"] == "multiclass"
    assert doc["decision"] == "promote", doc["reasons"]
    assert doc["challenger_metrics"]["accuracy"] > 0.7
    assert "of the hold-out's class frequencies" in " ".join(doc["reasons"])
