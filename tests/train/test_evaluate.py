"""Evaluation: time splits that never leak, metrics against scikit-learn and by hand,
slices, group gaps, the baseline, the JSON round trip and the errors a user can make.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from loopline.errors import TrainingError
from loopline.train.evaluate import (
    MAX_CURVE_POINTS,
    METRICS,
    NULL_LABEL,
    Evaluation,
    Gap,
    evaluate,
    get_metric,
    rolling_origin,
    score,
    summarize_folds,
    time_holdout,
)

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _binary_data(n: int = 2_000, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * signal))).astype(np.float64)
    p = 1 / (1 + np.exp(-(signal + rng.normal(scale=0.7, size=n))))
    return y, p


# --------------------------------------------------------------------------- metrics


def test_binary_metrics_match_scikit_learn() -> None:
    y, p = _binary_data()
    overall = evaluate(y, p, threshold=0.4).overall
    called = (p >= 0.4).astype(int)
    assert overall["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert overall["pr_auc"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert overall["log_loss"] == pytest.approx(skm.log_loss(y, p), abs=1e-12)
    assert overall["brier"] == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    assert overall["precision"] == pytest.approx(skm.precision_score(y, called), abs=1e-12)
    assert overall["recall"] == pytest.approx(skm.recall_score(y, called), abs=1e-12)
    assert overall["f1"] == pytest.approx(skm.f1_score(y, called), abs=1e-12)
    assert overall["positive_prediction_rate"] == pytest.approx(called.mean(), abs=1e-12)


def test_best_f1_is_the_best_threshold_found_by_brute_force() -> None:
    y, p = _binary_data(n=150)
    overall = evaluate(y, p).overall
    best = max(skm.f1_score(y, (p >= t).astype(int)) for t in np.unique(p))
    assert overall["best_f1"] == pytest.approx(best, abs=1e-12)
    threshold = overall["best_f1_threshold"]
    assert threshold is not None
    assert skm.f1_score(y, (p >= threshold).astype(int)) == pytest.approx(best, abs=1e-12)


def test_binary_metrics_by_hand() -> None:
    y, p = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    overall = evaluate(y, p).overall
    # Of the four positive-negative pairs, only (0.35, 0.4) is ordered wrongly.
    assert overall["roc_auc"] == 0.75
    # Ranked by p: 0.8 (+), 0.4 (-), 0.35 (+): precision 1 at recall .5, 2/3 at recall 1.
    assert overall["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert overall["brier"] == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    expected_log_loss = -(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4
    assert overall["log_loss"] == pytest.approx(expected_log_loss)
    # At 0.5 only the 0.8 row is called positive: one true positive, one missed.
    assert (overall["precision"], overall["recall"]) == (1.0, 0.5)
    assert overall["f1"] == pytest.approx(2 / 3)
    assert overall["positive_prediction_rate"] == 0.25


def test_calibration_table_matches_scikit_learn_and_counts_rows() -> None:
    y, p = _binary_data()
    e = evaluate(y, p, bins=8)
    observed, predicted = calibration_curve(y, p, n_bins=8, strategy="uniform")
    assert [b.observed for b in e.calibration] == pytest.approx(list(observed), abs=1e-12)
    assert [b.mean_predicted for b in e.calibration] == pytest.approx(list(predicted), abs=1e-12)
    assert sum(b.count for b in e.calibration) == y.size
    for b in e.calibration:
        inside = (p > b.lower) & (p <= b.upper) if b.lower > 0 else p <= b.upper
        assert b.count == int(inside.sum())
    ece = sum(b.count * abs(b.mean_predicted - b.observed) for b in e.calibration) / y.size
    assert e.overall["calibration_error"] == pytest.approx(ece)


def test_calibration_by_hand() -> None:
    e = evaluate([0, 1, 0, 1, 1], [0.05, 0.15, 0.55, 0.6, 0.95], bins=2)
    assert [(b.lower, b.upper, b.count) for b in e.calibration] == [(0, 0.5, 2), (0.5, 1, 3)]
    assert e.calibration[0].mean_predicted == pytest.approx(0.1)
    assert e.calibration[0].observed == 0.5
    assert e.calibration[1].mean_predicted == pytest.approx(0.7)
    assert e.calibration[1].observed == pytest.approx(2 / 3)


def test_regression_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(5, 2, 500)
    p = y + rng.normal(0, 1, 500)
    overall = evaluate(y, p, task="regression").overall
    assert overall["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, p)))
    assert overall["mae"] == pytest.approx(skm.mean_absolute_error(y, p))
    assert overall["r2"] == pytest.approx(skm.r2_score(y, p))
    assert overall["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y, p))
    assert overall["mape_excluded_rows"] == 0


def test_mape_leaves_zero_targets_out_and_counts_them() -> None:
    y, p = [0.0, 2.0, 4.0, 0.0], [1.0, 1.0, 5.0, -3.0]
    e = evaluate(y, p, task="regression")
    assert e.overall["mape"] == pytest.approx((0.5 + 0.25) / 2)
    assert e.overall["mape_excluded_rows"] == 2
    assert e.metrics()["test_mape_excluded_rows"] == 2
    assert e.overall["mae"] == pytest.approx((1 + 1 + 1 + 3) / 4)
    only_zeros = evaluate([0.0, 0.0], [1.0, 2.0], task="regression")
    assert only_zeros.overall["mape"] is None
    assert "test_mape" not in only_zeros.metrics()


def test_regression_calibration_bins_hold_equal_shares() -> None:
    y = np.arange(100, dtype=float)
    e = evaluate(y, y + 1, task="regression", bins=4)
    assert [b.count for b in e.calibration] == [25, 25, 25, 25]
    for b in e.calibration:
        assert b.mean_predicted == pytest.approx(b.observed + 1)


def test_score_by_name_agrees_with_evaluate() -> None:
    y, p = _binary_data(n=400)
    overall = evaluate(y, p, threshold=0.3).overall
    for name, metric in METRICS.items():
        if metric.task == "binary":
            assert score(name, y, p, threshold=0.3) == overall[name]
    assert score("r2", [1.0, 2.0, 3.0], [1.0, 2.0, 4.0], task="regression") == pytest.approx(0.5)


def test_metric_directions() -> None:
    assert get_metric("roc_auc").greater_is_better is True
    assert get_metric("rmse", task="regression").greater_is_better is False
    assert get_metric("best_f1_threshold").greater_is_better is None


# --------------------------------------------------------------------------- slices, gaps


def _sliced() -> tuple[list[int], list[float], pl.DataFrame]:
    # a: perfectly ranked; b: one of two pairs wrong; c: negatives only; null: one row.
    y = [0, 1, 0, 1, 1, 0, 0, 1]
    p = [0.2, 0.8, 0.6, 0.4, 0.9, 0.7, 0.1, 0.75]
    frame = pl.DataFrame(
        {
            "origin": ["a", "a", "b", "b", "b", "c", "c", None],
            "sex": ["F", "F", "M", "M", "M", "F", "M", "F"],
        }
    )
    return y, p, frame


def test_slice_metrics_by_hand() -> None:
    y, p, frame = _sliced()
    e = evaluate(y, p, frame=frame, slices=("origin",))
    by_value = {s.value: s for s in e.slices}
    assert [s.value for s in e.slices] == ["a", "b", "c", None]  # sorted, null last
    assert (by_value["a"].rows, by_value["a"].positives) == (2, 1)
    assert by_value["a"].metrics["roc_auc"] == 1.0
    assert by_value["b"].metrics["roc_auc"] == 0.5
    assert by_value["b"].metrics["precision"] == 0.5  # 0.6 (neg) and 0.9 (pos) called
    assert by_value["b"].metrics["recall"] == 0.5
    # A slice of one class has no AUC, recall or F1, but the other metrics are there.
    c = by_value["c"].metrics
    assert (c["roc_auc"], c["pr_auc"], c["recall"], c["f1"], c["best_f1"]) == (None,) * 5
    assert c["precision"] == 0.0
    assert c["positive_prediction_rate"] == 0.5
    assert c["brier"] == pytest.approx((0.49 + 0.01) / 2)
    flat = e.metrics()
    assert flat["slice.origin=a.roc_auc"] == 1.0
    assert flat["slice.origin=b.rows"] == 3
    assert flat["slice.origin=b.positives"] == 2
    assert "slice.origin=c.roc_auc" not in flat
    assert flat[f"slice.origin={NULL_LABEL}.rows"] == 1
    assert sum(s.rows for s in e.slices) == len(y)


def test_gaps_between_groups_by_hand() -> None:
    y, p, frame = _sliced()
    e = evaluate(y, p, frame=frame, slices=(), sensitive="sex")
    assert e.slices == ()
    assert [g.value for g in e.groups] == ["F", "M"]
    # F: y 0 1 0 1 with p .2 .8 .7 .75, ranked perfectly: AUC 1.
    # M: y 0 1 1 0 with p .6 .4 .9 .1: the pair (.4, .6) is wrong: AUC 3/4.
    gaps = {g.metric: g for g in e.gaps}
    assert gaps["roc_auc"] == Gap("roc_auc", 0.25, "F", 1.0, "M", 0.75)
    # Called positive at 0.5: F .8 .7 .75 (3 of 4, both positives); M .6 .9 (2 of 4, one).
    assert gaps["positive_prediction_rate"] == Gap(
        "positive_prediction_rate", 0.25, "F", 0.75, "M", 0.5
    )
    assert gaps["recall"] == Gap("recall", 0.5, "F", 1.0, "M", 0.5)
    assert gaps["precision"].gap == pytest.approx(2 / 3 - 1 / 2)
    assert e.metrics()["gap.roc_auc"] == 0.25
    assert "gap.best_f1_threshold" not in e.metrics()  # a threshold is not compared


def test_gap_picks_the_highest_and_lowest_groups() -> None:
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    p = [0.9, 0.9, 0.9, 0.1, 0.9, 0.1, 0.1, 0.1]
    frame = pl.DataFrame({"group": ["x", "x", "y", "y", "x", "x", "y", "y"]})
    e = evaluate(y, p, frame=frame, slices=(), sensitive="group")
    recall = next(g for g in e.gaps if g.metric == "recall")
    assert (recall.highest_group, recall.highest) == ("x", 1.0)
    assert (recall.lowest_group, recall.lowest) == ("y", 0.5)
    assert recall.gap == 0.5


def test_slices_accept_arrow_tables_categoricals_and_numbers() -> None:
    y, p, frame = _sliced()
    arrow = frame.with_columns(pl.col("sex").cast(pl.Categorical)).to_arrow()
    e = evaluate(y, p, frame=arrow, slices=("sex",))
    assert [s.value for s in e.slices] == ["F", "M"]
    months = pl.DataFrame({"month": [10, 10, 9, 9, 11, 11, 11, 9]})
    e = evaluate(y, p, frame=months, slices=("month",))
    assert [s.label for s in e.slices] == ["9", "10", "11"]  # numeric order, as text


def test_slices_are_ignored_without_a_frame() -> None:
    e = evaluate([0, 1], [0.2, 0.7])
    assert e.slices == ()
    assert not any(name.startswith("slice.") for name in e.metrics())


# --------------------------------------------------------------------------- baseline


def test_default_baseline_is_the_base_rate() -> None:
    y, p = _binary_data()
    e = evaluate(y, p)
    rate = y.mean()
    assert "positive rate" in e.baseline_description
    assert e.baseline["roc_auc"] == 0.5
    assert e.baseline["pr_auc"] == pytest.approx(rate)
    entropy = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    assert e.baseline["log_loss"] == pytest.approx(entropy)
    assert e.baseline["brier"] == pytest.approx(rate * (1 - rate))
    assert e.metrics()["baseline_roc_auc"] == 0.5


def test_constant_and_given_baselines() -> None:
    y, p = _binary_data(n=500)
    constant = evaluate(y, p, baseline=0.9)
    assert constant.baseline["positive_prediction_rate"] == 1.0
    assert constant.baseline["brier"] == pytest.approx(np.mean((0.9 - y) ** 2))
    other = np.clip(p + 0.1, 0, 1)
    given_ = evaluate(y, p, baseline=other)
    assert given_.baseline == evaluate(y, other).overall
    regression = evaluate([1.0, 2.0, 3.0, 6.0], [1.0, 2.0, 3.0, 5.0], task="regression")
    assert regression.baseline["mae"] == pytest.approx((2 + 1 + 0 + 3) / 4)  # mean 3
    assert regression.baseline["r2"] == 0.0


# --------------------------------------------------------------------------- JSON


def test_json_round_trip_is_exact() -> None:
    y, p, frame = _sliced()
    e = evaluate(y, p, frame=frame, slices=("origin", "sex"), sensitive="sex", baseline=0.4)
    text = e.to_json()
    again = Evaluation.from_json(text)
    assert again == e
    assert list(again.overall) == list(e.overall)  # in METRICS order, not the sorted JSON's
    assert again.to_json() == text
    assert Evaluation.from_json(text.encode()) == e
    regression = evaluate([0.0, 2.0, 5.0], [1.0, 2.0, 4.0], task="regression", frame=frame[:3])
    assert Evaluation.from_json(regression.to_json()) == regression


def test_json_keeps_nulls_and_is_deterministic() -> None:
    y, p, frame = _sliced()
    a = evaluate(y, p, frame=frame).to_json()
    b = evaluate(y, p, frame=frame).to_json()
    assert a == b
    document = orjson.loads(a)
    c = next(s for s in document["slices"] if s["value"] == "c")
    assert c["metrics"]["roc_auc"] is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"format": 1}', "not an evaluation document"),
        ('{"format": 99}', "format 99"),
    ],
)
def test_json_errors(text: str, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        Evaluation.from_json(text)


# --------------------------------------------------------------------------- flat metrics


def test_flat_metric_names() -> None:
    y, p, frame = _sliced()
    flat = evaluate(y, p, frame=frame, sensitive="sex").metrics()
    assert flat["test_rows"] == 8
    assert flat["test_positives"] == 4
    assert {"test_roc_auc", "baseline_roc_auc", "slice.origin=a.roc_auc", "gap.roc_auc"} <= set(
        flat
    )
    assert all(isinstance(v, float) and math.isfinite(v) for v in flat.values())


def test_metric_lookup_errors() -> None:
    y, p, frame = _sliced()
    e = evaluate(y, p, frame=frame)
    assert e.metric("test_roc_auc") == e.overall["roc_auc"]
    with pytest.raises(TrainingError, match=r"no metric named 'test_roc_acu'.*'test_roc_auc'"):
        e.metric("test_roc_acu")
    with pytest.raises(TrainingError, match="undefined on the evaluated rows"):
        e.metric("slice.origin=c.roc_auc")


def test_summarize_folds() -> None:
    y, p = _binary_data(n=600)
    folds = [evaluate(y[i::3], p[i::3]) for i in range(3)]
    summary = summarize_folds(folds)
    aucs = [f.overall["roc_auc"] for f in folds]
    assert summary["cv_folds"] == 3
    assert summary["cv_mean_roc_auc"] == pytest.approx(np.mean(aucs))
    assert summary["cv_std_roc_auc"] == pytest.approx(np.std(aucs))
    with pytest.raises(TrainingError, match="at least one"):
        summarize_folds([])
    with pytest.raises(TrainingError, match="one task"):
        summarize_folds([folds[0], evaluate([1.0, 2.0], [1.0, 2.0], task="regression")])


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"y": [1, 1, 1], "p": [0.2, 0.5, 0.9]}, "one class: all 3 row"),
        ({"y": [0, 0], "p": [0.2, 0.5]}, "one class"),
        ({"y": [0, 1, 1], "p": [0.2, 0.5]}, "same length; y has 3 row"),
        ({"y": [0, 1], "p": [0.2, float("nan")]}, "predictions p hold 1 NaN"),
        ({"y": [0, float("nan"), 1], "p": [0.2, 0.3, 0.4]}, "labels y hold 1 NaN"),
        ({"y": [0, 1, 2], "p": [0.2, 0.3, 0.4]}, "only 0 and 1"),
        ({"y": [0, 1], "p": [0.2, 1.5]}, r"probabilities in \[0, 1\]"),
        ({"y": [0, 1], "p": [[0.8, 0.2], [0.3, 0.7]]}, r"p\[:, 1\]"),
        ({"y": [0, 1], "p": ["a", "b"]}, "must be numbers"),
        ({"y": [], "p": []}, "no rows"),
        ({"y": [0, 1], "p": [0.2, 0.7], "threshold": 1.0}, "strictly between 0 and 1"),
        ({"y": [0, 1], "p": [0.2, 0.7], "task": "multiclass"}, "'binary', 'regression'"),
        ({"y": [0, 1], "p": [0.2, 0.7], "bins": 0}, "'bins' parameter"),
        ({"y": [0, 1], "p": [0.2, 0.7], "baseline": 2.0}, "constant baseline"),
        ({"y": [0, 1], "p": [0.2, 0.7], "baseline": [0.5]}, "same length"),
        ({"y": [0, 1], "p": [0.2, 0.7], "sensitive": "sex"}, "needs the evaluated rows"),
        ({"y": [1.0, 2.0], "p": [1.0, math.inf], "task": "regression"}, "infinite"),
    ],
)
def test_evaluate_rejects_bad_input(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        evaluate(**kwargs)  # type: ignore[arg-type]


def test_evaluate_rejects_bad_frames() -> None:
    frame = pl.DataFrame({"origin": ["a", "b"]})
    with pytest.raises(TrainingError, match="no column 'dest' to slice by; its columns are origin"):
        evaluate([0, 1], [0.2, 0.7], frame=frame, slices=("dest",))
    with pytest.raises(TrainingError, match="no column 'sex'"):
        evaluate([0, 1], [0.2, 0.7], frame=frame, slices=(), sensitive="sex")
    with pytest.raises(TrainingError, match="frame has 2 row"):
        evaluate([0, 1, 1], [0.2, 0.7, 0.9], frame=frame)
    with pytest.raises(TrainingError, match="list of column names"):
        evaluate([0, 1], [0.2, 0.7], frame=frame, slices="origin")
    with pytest.raises(TrainingError, match="plain values"):
        evaluate([0, 1], [0.2, 0.7], frame=pl.DataFrame({"origin": [[1], [2]]}))


def test_unknown_metric_names() -> None:
    with pytest.raises(TrainingError, match=r"no binary metric named 'rocauc'\. Did you mean"):
        score("rocauc", [0, 1], [0.2, 0.7])
    with pytest.raises(TrainingError, match="no regression metric named 'roc_auc'"):
        get_metric("roc_auc", task="regression")
    with pytest.raises(TrainingError, match="one class"):
        score("log_loss", [1, 1], [0.2, 0.7])


def test_inputs_may_be_polars_series() -> None:
    y, p = _binary_data(n=200)
    assert evaluate(pl.Series(y), pl.Series(p)) == evaluate(y, p)
    with pytest.raises(TrainingError, match="null"):
        evaluate(pl.Series([0, None, 1]), [0.1, 0.2, 0.3])


def test_roc_and_pr_curves_are_bounded_and_monotone() -> None:
    y, p = _binary_data(n=5_000)
    e = evaluate(y, p)
    assert 2 <= len(e.roc_curve) <= MAX_CURVE_POINTS
    assert e.roc_curve[0] == (0.0, 0.0)
    assert e.roc_curve[-1] == (1.0, 1.0)
    fpr = [x for x, _ in e.roc_curve]
    assert fpr == sorted(fpr)
    recall = [x for x, _ in e.pr_curve]
    assert recall == sorted(recall)
    assert e.pr_curve[-1][0] == 1.0
    assert evaluate([1.0, 2.0], [1.0, 2.0], task="regression").roc_curve == ()


# --------------------------------------------------------------------------- splits


def test_time_holdout_splits_at_test_start() -> None:
    frame = pl.DataFrame({"month": [3, 10, 1, 12, 9], "x": [1, 2, 3, 4, 5]})
    train, test = time_holdout(frame, time="month", test_start=10)
    assert train["x"].to_list() == [1, 3, 5]
    assert test["x"].to_list() == [2, 4]


def test_time_holdout_on_datetimes_dates_and_strings() -> None:
    times = [datetime(2013, m, 1, tzinfo=UTC) for m in range(1, 13)]
    frame = pl.DataFrame({"at": times})
    train, test = time_holdout(frame, time="at", test_start=datetime(2013, 10, 1, tzinfo=UTC))
    assert (train.height, test.height) == (9, 3)
    train, test = time_holdout(frame, time="at", test_start="2013-10-01T00:00:00+00:00")
    assert (train.height, test.height) == (9, 3)
    days = pl.DataFrame({"day": [date(2013, 1, d) for d in range(1, 11)]})
    train, test = time_holdout(days, time="day", test_start="2013-01-08")
    assert test["day"].to_list() == [date(2013, 1, 8), date(2013, 1, 9), date(2013, 1, 10)]
    train, test = time_holdout(days.to_arrow(), time="day", test_start=date(2013, 1, 2))
    assert train.height == 1


@pytest.mark.parametrize(
    ("frame", "start", "message"),
    [
        (pl.DataFrame({"t": [1, 2, 3]}), 1, "no row before it"),
        (pl.DataFrame({"t": [1, 2, 3]}), 4, r"no row at or after it: .* runs from 1 to 3"),
        (pl.DataFrame({"u": [1, 2, 3]}), 2, "no 't' among u"),
        (pl.DataFrame({"t": [1, None, 3]}), 2, "1 null value"),
        (pl.DataFrame({"t": ["a", "b"]}), "b", "must hold dates, datetimes or numbers"),
        (pl.DataFrame({"t": [1, 2, 3]}), "2", "must be a number"),
        (pl.DataFrame({"t": [date(2013, 1, 1)]}), 5, "must be a date or datetime"),
        (pl.DataFrame({"t": [date(2013, 1, 1)]}), "soon", "such as '2013-10-01'"),
        (pl.DataFrame({"t": [datetime(2013, 1, 1, tzinfo=UTC)]}), datetime(2013, 1, 1), "naive"),
        (pl.DataFrame({"t": [datetime(2013, 1, 1)]}), datetime(2013, 1, 1, tzinfo=UTC), "aware"),
        (pl.DataFrame({"t": []}, schema={"t": pl.Int64}), 1, "empty frame"),
    ],
)
def test_time_holdout_errors(frame: pl.DataFrame, start: object, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        time_holdout(frame, time="t", test_start=start)  # type: ignore[arg-type]


def test_rolling_origin_months_by_hand() -> None:
    frame = pl.DataFrame({"month": [m for m in range(1, 13) for _ in range(2)]})
    folds = list(rolling_origin(frame, time="month", folds=3, horizon=2))
    assert [sorted(set(test["month"])) for _, test in folds] == [[7, 8], [9, 10], [11, 12]]
    assert [train["month"].max() for train, _ in folds] == [6, 8, 10]
    assert [train.height for train, _ in folds] == [12, 16, 20]


def test_rolling_origin_on_datetimes_with_a_duration_string() -> None:
    start = datetime(2013, 1, 1, tzinfo=UTC)
    frame = pl.DataFrame({"at": [start + timedelta(hours=h) for h in range(24 * 10)]})
    folds = list(rolling_origin(frame, time="at", folds=2, horizon="2d"))
    assert [test.height for _, test in folds] == [48, 48]
    assert folds[1][1]["at"].max() == start + timedelta(hours=239)
    assert folds[0][0]["at"].max() < folds[0][1]["at"].min()
    days = pl.DataFrame({"day": [date(2013, 1, d) for d in range(1, 29)]})
    folds = list(rolling_origin(days, time="day", folds=3, horizon=timedelta(weeks=1)))
    assert [(train.height, test.height) for train, test in folds] == [(7, 7), (14, 7), (21, 7)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"folds": 0, "horizon": 1}, "'folds' parameter"),
        ({"folds": 2, "horizon": 0}, "positive number"),
        ({"folds": 2, "horizon": timedelta(days=1)}, "positive number"),
        ({"folds": 2, "horizon": 1, "min_train": 0}, "'min_train'"),
        ({"folds": 5, "horizon": 2}, "train on 0 row"),
        ({"folds": 2, "horizon": 2, "min_train": 7}, "fewer than min_train=7"),
        ({"folds": 4, "horizon": 1}, "Fold 1 of 4 of rolling_origin has no rows to test"),
    ],
)
def test_rolling_origin_errors(kwargs: dict[str, object], message: str) -> None:
    frame = pl.DataFrame({"t": [1, 2, 3, 4, 5, 6, 8, 9, 10]})
    with pytest.raises(TrainingError, match=message):
        rolling_origin(frame, time="t", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("horizon", "message"),
    [("0s", "positive duration"), (3, "positive duration"), (timedelta(hours=5), "whole number")],
)
def test_rolling_origin_duration_errors(horizon: object, message: str) -> None:
    days = pl.DataFrame({"day": [date(2013, 1, d) for d in range(1, 29)]})
    with pytest.raises(TrainingError, match=message):
        rolling_origin(days, time="day", folds=2, horizon=horizon)  # type: ignore[arg-type]


@PROPERTY
@given(
    times=st.lists(st.integers(0, 60), min_size=1, max_size=80),
    folds=st.integers(1, 6),
    horizon=st.integers(1, 12),
)
def test_rolling_origin_never_leaks(times: list[int], folds: int, horizon: int) -> None:
    frame = pl.DataFrame({"t": times, "row": list(range(len(times)))})
    try:
        splits = list(rolling_origin(frame, time="t", folds=folds, horizon=horizon))
    except TrainingError:
        # Only when a fold would have no training or no test rows.
        newest = max(times)
        origins = [newest - (folds - k) * horizon for k in range(folds)]
        empty_train = not any(t <= origins[0] for t in times)
        empty_test = any(not any(o < t <= o + horizon for t in times) for o in origins)
        assert empty_train or empty_test
        return
    assert len(splits) == folds
    seen_test: set[int] = set()
    previous_end = None
    for train, test in splits:
        assert train.height > 0
        assert test.height > 0
        # Every training row is strictly older than every test row.
        assert train["t"].max() < test["t"].min()
        test_rows = set(test["row"])
        assert not test_rows & seen_test  # test windows never overlap
        assert not test_rows & set(train["row"])
        seen_test |= test_rows
        # The training set is everything before the test window (nothing dropped).
        assert set(train["row"]) == {i for i, t in enumerate(times) if t < test["t"].min()}
        if previous_end is not None:
            assert test["t"].min() > previous_end
        previous_end = test["t"].max()
    assert previous_end == max(times)  # the last window ends at the newest row


@settings(PROPERTY, max_examples=15)  # each example evaluates 8 row sets
@given(data=st.data(), n=st.integers(2, 60))
def test_slices_partition_the_rows(data: st.DataObject, n: int) -> None:
    y = data.draw(st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n))
    if len(set(y)) < 2:
        y[0], y[1] = 0, 1
    p = data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
    groups = data.draw(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=n, max_size=n))
    e = evaluate(y, p, frame=pl.DataFrame({"g": groups}), slices=("g",), sensitive="g")
    assert sum(s.rows for s in e.slices) == n
    assert sum(s.positives or 0 for s in e.slices) == sum(y)
    assert e.groups == e.slices
    for s in e.slices:
        rows = [i for i, g in enumerate(groups) if g == s.value]
        assert s.rows == len(rows)
        brier = sum((p[i] - y[i]) ** 2 for i in rows) / len(rows)
        assert s.metrics["brier"] == pytest.approx(brier)
        one_class = len({y[i] for i in rows}) == 1
        assert (s.metrics["roc_auc"] is None) == one_class
    for gap in e.gaps:
        values = [s.metrics[gap.metric] for s in e.groups if s.metrics[gap.metric] is not None]
        assert gap.gap == pytest.approx(max(values) - min(values))  # type: ignore[type-var]


def test_arrow_tables_can_be_split() -> None:
    table = pa.table({"t": [1, 2, 3, 4]})
    folds = list(rolling_origin(table, time="t", folds=2, horizon=1))
    assert [test["t"].to_list() for _, test in folds] == [[3], [4]]
