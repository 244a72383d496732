"""The gate: each rule, what a missing metric does, the first model, and the verdict."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loopline.errors import RegistryError
from loopline.registry.gate import Check, Gate, Verdict, greater_is_better, measure_latency_p99

AUC = "test_roc_auc"


def _primary(verdict: Verdict) -> Check:
    [check] = [c for c in verdict.checks if c.kind == "primary"]
    return check


# -- the primary metric against the champion --------------------------------------------------


@pytest.mark.parametrize(
    ("challenger", "champion", "margin", "passed"),
    [
        (0.80, 0.75, 0.01, True),  # better by more than the margin
        (0.76, 0.75, 0.01, True),  # better by exactly the margin (despite float rounding)
        (0.755, 0.75, 0.01, False),  # better, but within the margin
        (0.75, 0.75, 0.0, False),  # a tie never replaces the champion
        (0.7500001, 0.75, 0.0, True),  # any gain with no margin
        (0.74, 0.75, 0.0, False),  # worse
    ],
)
def test_primary_must_beat_the_champion_by_the_margin(
    challenger: float, champion: float, margin: float, passed: bool
) -> None:
    verdict = Gate(primary=AUC, min_improvement=margin).evaluate({AUC: challenger}, {AUC: champion})

    check = _primary(verdict)
    assert check.passed is passed
    assert verdict.passed is passed
    assert (check.value, check.champion) == (challenger, champion)
    assert check.threshold == pytest.approx(champion + margin)
    assert ("beats the champion's" in check.reason) is (challenger > champion)


def test_lower_is_better_primary() -> None:
    gate = Gate(primary="test_log_loss", greater_is_better=False, min_improvement=0.01)

    assert gate.evaluate({"test_log_loss": 0.38}, {"test_log_loss": 0.40}).passed
    refused = gate.evaluate({"test_log_loss": 0.395}, {"test_log_loss": 0.40})
    assert not refused.passed
    assert _primary(refused).threshold == pytest.approx(0.39)
    assert not gate.evaluate({"test_log_loss": 0.45}, {"test_log_loss": 0.40}).passed


@pytest.mark.parametrize(
    ("ours", "theirs", "reason"),
    [
        ({}, {AUC: 0.7}, "the challenger has no 'test_roc_auc'"),
        ({AUC: None}, {AUC: 0.7}, "the challenger has no 'test_roc_auc'"),
        ({AUC: math.nan}, {AUC: 0.7}, "the challenger has no 'test_roc_auc'"),
        ({AUC: 0.8}, {"test_pr_auc": 0.4}, "the champion has no 'test_roc_auc' on this holdout"),
        ({AUC: 0.8}, {AUC: math.nan}, "the champion has no 'test_roc_auc' on this holdout"),
    ],
)
def test_a_missing_primary_metric_fails(
    ours: dict[str, float | None], theirs: dict[str, float | None], reason: str
) -> None:
    verdict = Gate(primary=AUC).evaluate(ours, theirs)

    assert not verdict.passed
    assert reason in _primary(verdict).reason


def test_missing_metric_names_what_the_challenger_has() -> None:
    verdict = Gate(primary=AUC).evaluate({"test_pr_auc": 0.5, "rows": 10}, None)

    assert not verdict.passed
    assert (
        _primary(verdict).reason
        == "the challenger has no 'test_roc_auc' (it has rows, test_pr_auc)"
    )


# -- with no champion -------------------------------------------------------------------------


def test_first_model_is_judged_on_thresholds_and_guards_alone() -> None:
    gate = Gate(
        primary=AUC,
        min_improvement=0.5,  # would be impossible to meet against any champion
        thresholds={AUC: (">=", 0.7)},
        max_regression={"test_log_loss": 0.0},
        max_bundle_bytes=1000,
    )

    first = gate.evaluate({AUC: 0.72}, None, measurements={"bundle_bytes": 900})
    assert first.passed
    assert not first.champion
    assert [c.kind for c in first.checks] == ["primary", "threshold", "guard"]
    assert "no champion yet" in _primary(first).reason

    low = gate.evaluate({AUC: 0.65}, None, measurements={"bundle_bytes": 900})
    assert not low.passed
    assert [c.kind for c in low.failures] == ["threshold"]
    big = gate.evaluate({AUC: 0.72}, None, measurements={"bundle_bytes": 1001})
    assert [c.name for c in big.failures] == ["guard bundle_bytes"]
    # The primary metric must be there even with nothing to compare it with.
    assert not gate.evaluate({"test_pr_auc": 0.9}, None, measurements={"bundle_bytes": 1}).passed


# -- value thresholds -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "value", "passed"),
    [
        ((">=", 0.7), 0.7, True),
        ((">=", 0.7), 0.69, False),
        ((">", 0.7), 0.7, False),
        ((">", 0.7), 0.71, True),
        (("<=", 0.4), 0.4, True),
        (("<", 0.4), 0.4, False),
        ("<= 0.4", 0.39, True),
        (" >= 0.7 ", 0.69, False),
        (["<", 0.5], 0.49, True),
    ],
)
def test_value_thresholds(rule: Any, value: float, passed: bool) -> None:
    verdict = Gate(primary=AUC, thresholds={"m": rule}).evaluate({AUC: 0.8, "m": value}, None)

    [check] = [c for c in verdict.checks if c.kind == "threshold"]
    assert check.passed is passed
    assert check.value == value
    assert verdict.passed is passed


def test_a_missing_threshold_metric_fails() -> None:
    gate = Gate(primary=AUC, thresholds={"test_recall": (">=", 0.3)})

    for metrics in (
        {AUC: 0.8},
        {AUC: 0.8, "test_recall": None},
        {AUC: 0.8, "test_recall": math.nan},
    ):
        verdict = gate.evaluate(metrics, None)
        assert not verdict.passed
        assert verdict.failures[0].reason == "the challenger has no 'test_recall'"


# -- change thresholds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "ours", "theirs", "passed"),
    [
        ("test_log_loss", 0.41, 0.40, True),  # worse, by exactly the tolerance
        ("test_log_loss", 0.415, 0.40, False),  # worse by more
        ("test_log_loss", 0.30, 0.40, True),  # better
        ("test_pr_auc", 0.39, 0.40, True),  # higher is better: worse within tolerance
        ("test_pr_auc", 0.38, 0.40, False),
        ("test_pr_auc", 0.90, 0.40, True),
    ],
)
def test_no_metric_regresses_beyond_its_tolerance(
    metric: str, ours: float, theirs: float, passed: bool
) -> None:
    gate = Gate(primary=AUC, max_regression={metric: 0.01})

    verdict = gate.evaluate({AUC: 0.9, metric: ours}, {AUC: 0.8, metric: theirs})

    [check] = [c for c in verdict.checks if c.kind == "regression"]
    assert check.passed is passed, check.reason
    assert (check.value, check.champion) == (ours, theirs)
    sign = 1 if greater_is_better(metric) else -1
    assert check.threshold == pytest.approx(theirs - sign * 0.01)


def test_regression_of_a_missing_metric_fails_on_either_side() -> None:
    gate = Gate(primary=AUC, max_regression={"test_brier": 0.01})

    ours_missing = gate.evaluate({AUC: 0.9}, {AUC: 0.8, "test_brier": 0.1})
    theirs_missing = gate.evaluate({AUC: 0.9, "test_brier": 0.1}, {AUC: 0.8})

    assert ours_missing.failures[0].reason == "the challenger has no 'test_brier'"
    assert "the champion has no 'test_brier'" in theirs_missing.failures[0].reason
    assert not ours_missing.passed
    assert not theirs_missing.passed


def test_custom_lower_is_better_metric() -> None:
    gate = Gate(primary=AUC, max_regression={"churned_cost": 1.0}, lower_is_better={"churned_cost"})

    assert gate.evaluate({AUC: 0.9, "churned_cost": 10.5}, {AUC: 0.8, "churned_cost": 10}).passed
    assert not gate.evaluate({AUC: 0.9, "churned_cost": 12}, {AUC: 0.8, "churned_cost": 10}).passed


@pytest.mark.parametrize(
    ("metric", "higher"),
    [
        ("test_roc_auc", True),
        ("test_pr_auc", True),
        ("test_r2", True),
        ("holdout_f1", True),
        ("test_log_loss", False),
        ("test_brier", False),
        ("test_rmse", False),
        ("mae", False),
        ("test_mape", False),
        ("fairness_gap", False),
        ("latency_p99_ms", False),
        ("slice.origin=JFK.brier", False),
        ("slice.origin=JFK.roc_auc", True),
        ("slice.dest=SFO_error.roc_auc", True),  # a value is not a metric word
        ("gap.roc_auc", False),
        ("baseline_mae", False),
    ],
)
def test_metric_direction_from_its_name(metric: str, higher: bool) -> None:
    assert greater_is_better(metric) is higher


def test_metric_direction_agrees_with_the_evaluation() -> None:
    from loopline.train.evaluate import METRICS

    for name, metric in METRICS.items():
        if metric.greater_is_better is None:
            continue
        for flat in (f"test_{name}", f"baseline_{name}", f"slice.origin=JFK.{name}"):
            assert greater_is_better(flat) is metric.greater_is_better, flat


# -- guards -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameter", "measurement", "budget", "value", "passed"),
    [
        ("latency_p99_ms", "latency_p99_ms", 5.0, 4.9, True),
        ("latency_p99_ms", "latency_p99_ms", 5.0, 5.0, True),
        ("latency_p99_ms", "latency_p99_ms", 5.0, 5.1, False),
        ("max_bundle_bytes", "bundle_bytes", 1_000_000, 999_999, True),
        ("max_bundle_bytes", "bundle_bytes", 1_000_000, 1_000_001, False),
        ("max_fairness_gap", "fairness_gap", 0.1, 0.05, True),
        ("max_fairness_gap", "fairness_gap", 0.1, -0.05, True),
        ("max_fairness_gap", "fairness_gap", 0.1, -0.15, False),  # by its absolute value
        ("max_fairness_gap", "fairness_gap", 0.1, 0.15, False),
    ],
)
def test_each_guard(
    parameter: str, measurement: str, budget: float, value: float, passed: bool
) -> None:
    guard: dict[str, Any] = {parameter: budget}
    gate = Gate(primary=AUC, **guard)

    verdict = gate.evaluate({AUC: 0.9}, {AUC: 0.8}, measurements={measurement: value})

    [check] = [c for c in verdict.checks if c.kind == "guard"]
    assert check.name == f"guard {measurement}"
    assert (check.value, check.threshold, check.passed) == (value, budget, passed)
    assert verdict.passed is passed


@pytest.mark.parametrize("parameter", ["latency_p99_ms", "max_bundle_bytes", "max_fairness_gap"])
def test_an_unmeasured_guard_fails(parameter: str) -> None:
    budget: dict[str, Any] = {parameter: 1.0}
    verdict = Gate(primary=AUC, **budget).evaluate({AUC: 0.9}, {AUC: 0.8})

    assert not verdict.passed
    assert "was not measured" in verdict.failures[0].reason


def test_the_fairness_guard_reads_a_gap_of_the_evaluation() -> None:
    gate = Gate(primary=AUC, max_fairness_gap=0.1, fairness_metric="gap.recall")

    fair = gate.evaluate({AUC: 0.9, "gap.recall": 0.08, "fairness_gap": 0.5}, None)
    unfair = gate.evaluate({AUC: 0.9, "gap.recall": 0.12}, None)
    unmeasured = gate.evaluate({AUC: 0.9, "fairness_gap": 0.01}, None)

    assert fair.passed
    assert [c.name for c in unfair.failures] == ["guard gap.recall"]
    assert "'gap.recall' was not measured" in unmeasured.failures[0].reason


def test_a_guard_reads_the_challengers_metrics_too() -> None:
    gate = Gate(primary=AUC, max_fairness_gap=0.1)

    assert gate.evaluate({AUC: 0.9, "fairness_gap": 0.02}, {AUC: 0.8}).passed
    # What was measured wins over a metric of the same name.
    overridden = gate.evaluate(
        {AUC: 0.9, "fairness_gap": 0.02}, {AUC: 0.8}, measurements={"fairness_gap": 0.5}
    )
    assert not overridden.passed


# -- bad configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"primary": ""}, "The 'primary' parameter of Gate must be a metric name"),
        ({"primary": AUC, "min_improvement": -0.1}, "'min_improvement' parameter of Gate must"),
        ({"primary": AUC, "min_improvement": math.inf}, "'min_improvement' parameter"),
        ({"primary": AUC, "min_improvement": "a lot"}, "Got 'a lot'"),
        ({"primary": AUC, "thresholds": {AUC: ("=>", 0.7)}}, "threshold for 'test_roc_auc'"),
        ({"primary": AUC, "thresholds": {AUC: "about 0.7"}}, "such as ('>=', 0.7) or '>= 0.7'"),
        ({"primary": AUC, "thresholds": {AUC: (">=", "high")}}, "Got ('>=', 'high')"),
        ({"primary": AUC, "thresholds": {AUC: (">=", math.nan)}}, "threshold for"),
        ({"primary": AUC, "thresholds": {AUC: (">=",)}}, "threshold for"),
        ({"primary": AUC, "max_regression": {"m": -1}}, "max_regression['m']"),
        ({"primary": AUC, "latency_p99_ms": -5}, "'latency_p99_ms' parameter of Gate"),
        ({"primary": AUC, "max_bundle_bytes": "big"}, "'max_bundle_bytes' parameter of Gate"),
    ],
)
def test_invalid_gate_settings(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(RegistryError) as info:
        Gate(**settings)
    assert message in str(info.value)


def test_gate_from_a_config_mapping() -> None:
    gate = Gate.from_dict(
        {
            "primary": AUC,
            "min_improvement": 0.001,
            "thresholds": {AUC: ">= 0.7", "test_log_loss": ["<", 0.5]},
            "latency_p99_ms": 10,
        }
    )

    assert gate.thresholds == {AUC: (">=", 0.7), "test_log_loss": ("<", 0.5)}
    assert gate.latency_p99_ms == 10.0
    with pytest.raises(RegistryError, match="no setting 'min_improvment'") as info:
        Gate.from_dict({"primary": AUC, "min_improvment": 0.1})
    assert "min_improvement" in str(info.value).split("settings are", 1)[1]


# -- the verdict ------------------------------------------------------------------------------


def _full_verdict() -> Verdict:
    gate = Gate(
        primary=AUC,
        min_improvement=0.001,
        thresholds={AUC: (">=", 0.7)},
        max_regression={"test_log_loss": 0.01},
        latency_p99_ms=5,
        max_bundle_bytes=10**6,
    )
    return gate.evaluate(
        {AUC: 0.76, "test_log_loss": 0.45},
        {AUC: 0.75, "test_log_loss": 0.41},
        measurements={"latency_p99_ms": 1.25, "bundle_bytes": 52_000},
    )


def test_verdict_render_shows_every_check_and_its_values() -> None:
    verdict = _full_verdict()

    text = verdict.render()

    lines = text.splitlines()
    assert lines[0].split() == ["check", "value", "threshold", "champion", "result", "reason"]
    assert len(lines) == 2 + len(verdict.checks) + 1
    regression = next(line for line in lines if line.startswith("regression test_log_loss"))
    assert regression.split()[2:6] == ["0.4500", "0.4200", "0.4100", "FAIL"]
    assert "more than the tolerance 0.0100" in regression
    assert next(line for line in lines if line.startswith("guard bundle_bytes")).split()[2:4] == [
        "52000",
        "1000000",
    ]
    assert lines[-1] == "verdict: REFUSED, 1 of 5 check(s) failed"
    assert verdict.summary().startswith("refused: regression test_log_loss: 0.4500 is worse")


def test_verdict_round_trips_through_json() -> None:
    verdict = _full_verdict()

    data = verdict.to_dict()

    assert data["passed"] is False
    assert data["champion"] is True
    assert Verdict.from_json(verdict.to_json()) == verdict
    assert Verdict.from_dict(data).render() == verdict.render()


def test_an_empty_verdict_does_not_pass() -> None:
    assert not Verdict(checks=(), champion=False).passed


metric_values = st.one_of(
    st.none(), st.just(math.nan), st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
)


@given(
    ours=st.dictionaries(st.sampled_from(["a", "b", "c_loss", "fairness_gap"]), metric_values),
    theirs=st.one_of(
        st.none(), st.dictionaries(st.sampled_from(["a", "b", "c_loss"]), metric_values)
    ),
)
def test_a_missing_metric_never_passes(
    ours: dict[str, float | None], theirs: dict[str, float | None] | None
) -> None:
    gate = Gate(
        primary="a",
        thresholds={"b": (">=", 0.0)},
        max_regression={"c_loss": 0.5},
        max_fairness_gap=0.1,
    )

    verdict = gate.evaluate(ours, theirs)

    def missing(values: dict[str, float | None] | None, metric: str) -> bool:
        value = (values or {}).get(metric)
        return value is None or math.isnan(value)

    for check in verdict.checks:
        if missing(ours, check.metric) or (
            check.kind == "regression" and missing(theirs, check.metric)
        ):
            assert not check.passed, check
    assert verdict.passed == all(c.passed for c in verdict.checks)
    assert verdict.champion is (theirs is not None)
    assert {c.kind for c in verdict.checks} >= {"primary", "threshold", "guard"}


# -- latency ----------------------------------------------------------------------------------


def test_latency_p99_is_the_nearest_rank_percentile() -> None:
    fake_clock = [0.0]  # moves only when the predict functions below move it
    calls: list[object] = []

    def predict(row: object) -> None:
        calls.append(row)
        # The n timed calls take 1, 2, ..., 200 ms after 10 warm-up calls.
        fake_clock[0] += max(0, len(calls) - 10) / 1000

    p99 = measure_latency_p99(predict, {"x": 1}, n=200, clock=lambda: fake_clock[0])

    assert len(calls) == 210
    assert all(row == {"x": 1} for row in calls)
    assert p99 == pytest.approx(198.0)

    def slow(row: object) -> None:
        fake_clock[0] += 0.0025

    assert measure_latency_p99(
        slow, None, n=1, warmup=0, clock=lambda: fake_clock[0]
    ) == pytest.approx(2.5)


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_latency_needs_a_positive_number_of_calls(n: Any) -> None:
    with pytest.raises(RegistryError, match="'n' parameter of measure_latency_p99"):
        measure_latency_p99(lambda row: row, [1], n=n)
