"""Hyperparameter search: the space's checks, seeding, resumption, workers, pruning, budgets."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.data.workspace import Workspace, use_workspace
from loopline.errors import MetadataStoreError, TrainingError
from loopline.store import schema
from loopline.train.search import (
    CategoricalParam,
    FloatParam,
    IntParam,
    MedianPruning,
    SearchSpace,
    SearchTrial,
    lightgbm_objective,
    search,
)

SPACE = SearchSpace.from_config(
    {
        "num_leaves": {"type": "int", "low": 15, "high": 255, "log": True},
        "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
        "min_data_in_leaf": {"type": "int", "low": 20, "high": 500, "step": 10},
        "feature_fraction": {"type": "float", "low": 0.5, "high": 1.0},
        "boosting": {"type": "categorical", "choices": ["gbdt", "dart"]},
    }
)


def quadratic(trial: SearchTrial) -> float:
    """A smooth objective of SPACE's parameters, best near the middle of each range."""
    p = trial.params
    return -(
        (np.log(p["num_leaves"]) - 4.0) ** 2
        + (np.log(p["learning_rate"]) + 3.0) ** 2
        + ((p["min_data_in_leaf"] - 100) / 100) ** 2
        + (p["feature_fraction"] - 0.8) ** 2
        + (0.0 if p["boosting"] == "gbdt" else 0.5)
    )


def sqlite_url(folder: Path, name: str = "metadata.db") -> str:
    return f"sqlite:///{folder / name}"


# -- the space -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"num_leaves": {"type": "int", "low": 255, "high": 15}},
            "The 'low' of search parameter 'num_leaves' must be at most its 'high' (15). Got 255.",
        ),
        (
            {"learning_rate": {"type": "float", "low": 0.0, "high": 0.3, "log": True}},
            "The 'low' of search parameter 'learning_rate' must be positive when 'log' is true",
        ),
        (
            {"num_leaves": {"type": "int", "low": 0, "high": 10, "log": True}},
            "The 'low' of search parameter 'num_leaves' must be positive when 'log' is true",
        ),
        (
            {"boosting": {"type": "categorical", "choices": []}},
            "The 'choices' of search parameter 'boosting' must be a non-empty list such as "
            "['gbdt', 'dart']. Got ().",
        ),
        (
            {"boosting": {"type": "categorical", "choices": ["gbdt", "gbdt"]}},
            "must be a list without repeated values",
        ),
        (
            {"num_leaves": {"type": "integer", "low": 1, "high": 2}},
            "The 'type' of search parameter 'num_leaves' must be one of 'int', 'float', "
            "'categorical'. Got 'integer'.",
        ),
        (
            {"num_leaves": {"type": "int", "low": 1, "hi": 2}},
            "Search parameter 'num_leaves' of type 'int' has unknown key(s) 'hi'. Valid keys: "
            "type, low, high, log, step.",
        ),
        (
            {"num_leaves": {"type": "int", "low": 1}},
            "Search parameter 'num_leaves' of type 'int' needs 'high'.",
        ),
        (
            {"num_leaves": {"type": "int", "low": 1.5, "high": 2}},
            "The 'low' of search parameter 'num_leaves' must be an integer such as 15. Got 1.5.",
        ),
        (
            {"num_leaves": {"type": "int", "low": 10, "high": 25, "step": 10}},
            "The 'high' of search parameter 'num_leaves' must be 'low' (10) plus a multiple of "
            "'step' (10), such as 20. Got 25.",
        ),
        (
            {"rate": {"type": "float", "low": 0.1, "high": 0.45, "step": 0.1}},
            "The 'high' of search parameter 'rate' must be 'low' (0.1) plus a multiple",
        ),
        (
            {"rate": {"type": "float", "low": 0.1, "high": 1.0, "log": True, "step": 0.1}},
            "The 'step' of search parameter 'rate' must be absent when 'log' is true. Got 0.1.",
        ),
        (
            {"rate": {"type": "float", "low": float("nan"), "high": 1.0}},
            "The 'low' of search parameter 'rate' must be a finite number",
        ),
        (
            {"rate": {"type": "float", "low": 0, "high": True}},
            "The 'high' of search parameter 'rate' must be a finite number such as 0.1. Got True.",
        ),
        ({"rate": [0.1, 0.2]}, "Search parameter 'rate' must be a table such as"),
    ],
)
def test_impossible_spaces_are_refused_with_the_parameter_named(
    config: dict[str, Any], message: str
) -> None:
    with pytest.raises(TrainingError) as info:
        SearchSpace.from_config(config)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_space_from_code_is_checked_where_it_is_made() -> None:
    with pytest.raises(TrainingError, match=r"'low' of search parameter 'x' must be at most"):
        SearchSpace({"x": IntParam(10, 5)})
    with pytest.raises(TrainingError, match=r"SearchSpace.from_config"):
        SearchSpace({"x": {"type": "int", "low": 1, "high": 2}})  # type: ignore[dict-item]
    assert SearchSpace({"x": IntParam(3, 3)})["x"] == IntParam(3, 3)  # one value is a range


def test_a_space_round_trips_through_its_configuration() -> None:
    assert SearchSpace.from_config(SPACE.to_config()) == SPACE
    assert SPACE.to_config()["min_data_in_leaf"] == {
        "type": "int",
        "low": 20,
        "high": 500,
        "log": False,
        "step": 10,
    }


_ranges = st.tuples(st.integers(-1000, 1000), st.integers(0, 1000))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ints=_ranges,
    step=st.integers(1, 7),
    floats=st.tuples(st.floats(1e-3, 1e3), st.floats(0, 1e3)),
    log=st.booleans(),
    choices=st.lists(st.text(max_size=3), min_size=1, max_size=4, unique=True),
)
def test_every_sampled_value_lies_in_its_parameter(
    ints: tuple[int, int],
    step: int,
    floats: tuple[float, float],
    log: bool,
    choices: list[str],
) -> None:
    low, width = ints
    high = low + width - width % step
    flow, fwidth = floats
    space = SearchSpace(
        {
            "i": IntParam(low, high, step=step),
            "f": FloatParam(flow, flow + fwidth, log=log),
            "c": CategoricalParam(choices),
        }
    )
    result = search(lambda t: 0.0, space, study="s", storage="sqlite://", n_trials=4)
    for trial in result.trials:
        i, f, c = trial.params["i"], trial.params["f"], trial.params["c"]
        assert isinstance(i, int)
        assert low <= i <= high
        assert (i - low) % step == 0
        assert flow <= f <= flow + fwidth
        assert c in choices


# -- seeding and resumption ------------------------------------------------------------------


def _params(result: Any) -> list[dict[str, Any]]:
    return [t.params for t in sorted(result.trials, key=lambda t: t.number)]


def test_a_seeded_search_is_reproducible_on_sqlite(tmp_path: Path) -> None:
    runs = [
        search(
            quadratic, SPACE, study="repro", storage=sqlite_url(tmp_path, f"{n}.db"), n_trials=12
        )
        for n in range(2)
    ]
    assert runs[0].best_params == runs[1].best_params
    assert _params(runs[0]) == _params(runs[1])  # trial by trial, past the random start-up
    other = search(
        quadratic, SPACE, study="repro", storage=sqlite_url(tmp_path, "x.db"), n_trials=12, seed=1
    )
    assert _params(other) != _params(runs[0])


def test_n_trials_is_the_total_so_a_search_resumes_where_it_stopped(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    first = search(quadratic, SPACE, study="resume", storage=url, n_trials=3)
    assert (first.n_complete, first.new_trials) == (3, 3)
    second = search(quadratic, SPACE, study="resume", storage=url, n_trials=6)
    assert (second.n_complete, second.new_trials) == (6, 3)
    assert sorted(t.number for t in second.trials) == list(range(6))
    third = search(quadratic, SPACE, study="resume", storage=url, n_trials=6)
    assert (third.n_complete, third.new_trials) == (6, 0)
    # Seeds follow the trial numbers: the resumed search drew what one run would have.
    straight = search(
        quadratic, SPACE, study="resume", storage=sqlite_url(tmp_path, "s.db"), n_trials=6
    )
    assert _params(second) == _params(straight)


def test_an_interrupted_trial_is_tried_again_on_resume(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    calls = 0

    def interrupted_at_the_fourth(trial: SearchTrial) -> float:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise KeyboardInterrupt
        return quadratic(trial)

    with pytest.raises(KeyboardInterrupt):
        search(interrupted_at_the_fourth, SPACE, study="ctrl-c", storage=url, n_trials=6)
    resumed = search(quadratic, SPACE, study="ctrl-c", storage=url, n_trials=6)
    assert (resumed.n_complete, resumed.n_failed, resumed.new_trials) == (6, 1, 3)
    assert [t.state for t in resumed.trials][3] == "failed"


def test_the_study_lives_in_the_workspace_metadata_database(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "fresh")  # loopline never opened it: search migrates it first
    with use_workspace(Workspace(metadata_url=url, artifact_url=str(tmp_path / "artifacts"))):
        result = search(quadratic, SPACE, study="here", n_trials=2)
    assert str(tmp_path / "fresh" / "metadata.db") in result.storage
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
            names = conn.execute(sa.text("SELECT study_name FROM studies")).all()
    finally:
        engine.dispose()
    assert revision == [(schema.HEAD_REVISION,)]  # loopline's, not Optuna's
    assert names == [("here",)]
    again = search(quadratic, SPACE, study="here", storage=url, n_trials=2)
    assert again.new_trials == 0


def test_a_resumed_study_must_keep_its_direction_and_space(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    search(quadratic, SPACE, study="fixed", storage=url, n_trials=1)
    with pytest.raises(TrainingError, match=r"created to maximize, not to minimize"):
        search(quadratic, SPACE, study="fixed", storage=url, n_trials=2, direction="minimize")
    narrower = SearchSpace({**{n: SPACE[n] for n in SPACE}, "num_leaves": IntParam(15, 63)})
    with pytest.raises(TrainingError, match=r"created with another search space"):
        search(quadratic, narrower, study="fixed", storage=url, n_trials=2)


# -- several workers -------------------------------------------------------------------------

_WORKER = textwrap.dedent(
    """
    import pathlib, sys, time
    from loopline.train.search import FloatParam, SearchSpace, search

    url, worker, folder = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
    other = "1" if worker == "0" else "0"
    (folder / f"ready-{worker}").touch()

    def wait_for(name):
        deadline = time.monotonic() + 60
        while not (folder / name).exists():
            if time.monotonic() > deadline:
                sys.exit(f"worker {worker} waited for {name} in vain")
            time.sleep(0.005)

    wait_for(f"ready-{other}")
    started = False

    def objective(trial):
        global started
        if not started:  # each worker runs a trial before either finishes one
            started = True
            (folder / f"started-{worker}").touch()
            wait_for(f"started-{other}")
        time.sleep(0.02)
        return -(trial.params["x"] - 0.3) ** 2

    search(objective, SearchSpace({"x": FloatParam(0.0, 1.0)}), study="shared", storage=url,
           n_trials=10)
    """
)


@pytest.mark.services("postgres")
def test_two_worker_processes_share_one_study_on_postgresql(
    postgres_url: str, tmp_path: Path
) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, postgres_url, str(n), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    try:
        results = [w.communicate(timeout=120) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    for worker, (_, stderr) in zip(workers, results, strict=True):
        assert worker.returncode == 0, stderr

    space = SearchSpace({"x": FloatParam(0.0, 1.0)})
    result = search(lambda t: 0.0, space, study="shared", storage=postgres_url, n_trials=10)
    assert result.new_trials == 0
    numbers = [t.number for t in result.trials]
    assert sorted(numbers) == list(range(len(numbers)))  # no number given twice, none skipped
    assert {t.state for t in result.trials} == {"complete"}
    # Both stop at the total; the other's last trial may still finish.
    assert 10 <= result.n_complete <= 11
    assert len({t.worker for t in result.trials}) == 2
    assert all(t.worker and ":" in t.worker for t in result.trials)
    assert len({t.params["x"] for t in result.trials}) == len(numbers)  # no repeated draws


# -- pruning and budgets ---------------------------------------------------------------------


def _bad_after_three(trial: SearchTrial) -> float:
    """Trials 0-2 climb to 1; every later one is deliberately terrible from the start."""
    value = 0.0
    for step in range(20):
        value = (step + 1) / 20 if trial.number < 3 else -100.0
        trial.report(value, step)
        if trial.should_prune():
            trial.prune()
    return value


def test_median_pruning_stops_trials_worse_than_the_median() -> None:
    space = SearchSpace({"x": FloatParam(0.0, 1.0)})
    pruning = MedianPruning(startup_trials=3, warmup_steps=2)
    result = search(
        _bad_after_three, space, study="p", storage="sqlite://", n_trials=6, pruning=pruning
    )
    states = [t.state for t in sorted(result.trials, key=lambda t: t.number)]
    assert states == ["complete"] * 3 + ["pruned"] * 3
    assert all(sorted(t.intermediate) == [0, 1, 2] for t in result.trials[3:])  # at warm-up
    assert result.best_value == 1.0
    unpruned = search(
        _bad_after_three, space, study="p", storage="sqlite://", n_trials=6, pruning=False
    )
    assert unpruned.n_pruned == 0


def test_a_timeout_alone_is_a_budget() -> None:
    def slow(trial: SearchTrial) -> float:
        time.sleep(0.02)
        return trial.params["x"]

    space = SearchSpace({"x": FloatParam(0.0, 1.0)})
    result = search(slow, space, study="t", storage="sqlite://", timeout=0.2)
    assert result.n_complete >= 1
    assert result.n_complete == result.new_trials == len(result.trials)
    both = search(slow, space, study="t", storage="sqlite://", n_trials=3, timeout=600)
    assert both.n_complete == 3  # whichever budget runs out first


# -- LightGBM --------------------------------------------------------------------------------


def _flights_like(rows: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    carrier = rng.choice(["AA", "B6", "UA", "WN"], size=rows)
    hour = rng.integers(5, 23, size=rows).astype(float)
    hour[rng.random(rows) < 0.05] = np.nan
    logit = (hour - 14) / 3 + np.where(carrier == "B6", 1.5, 0.0) + rng.normal(size=rows)
    return pl.DataFrame({"carrier": carrier, "hour": hour, "delayed": (logit > 0.5).astype(int)})


def test_lightgbm_objective_reports_every_round_and_prunes_hopeless_trials() -> None:
    train, valid = _flights_like(600, 0), _flights_like(300, 1)
    objective = lightgbm_objective(
        train,
        valid,
        features=["carrier", "hour"],
        label="delayed",
        metric="log_loss",
        num_boost_round=40,
        early_stopping_rounds=5,
        report_every=1,
    )
    assert objective.direction == "minimize"
    assert objective.categorical == ("carrier",)
    space = SearchSpace({"learning_rate": CategoricalParam([0.3, 1e-6])})
    result = search(
        objective,
        space,
        study="lgb",
        storage="sqlite://",
        n_trials=6,
        pruning=MedianPruning(startup_trials=1, warmup_steps=0),
    )
    assert result.direction == "minimize"
    assert result.best_params == {"learning_rate": 0.3}
    assert result.best_value < 0.6  # log loss; a constant predictor scores about 0.69
    best = result.best
    rounds = best.attributes["best_iteration"]
    assert 1 <= rounds <= 40
    assert best.value == pytest.approx(best.intermediate[rounds - 1])
    assert list(best.intermediate) == list(range(len(best.intermediate)))  # every round
    assert result.n_pruned >= 1
    assert all(t.params["learning_rate"] == 1e-6 for t in result.trials if t.state == "pruned")
    params = objective.model_params(result.best_params)
    assert params["learning_rate"] == 0.3
    assert params["metric"] == "binary_logloss"
    assert params["deterministic"] is True


@pytest.mark.parametrize(
    "metric", ["roc_auc", "pr_auc", "log_loss", "brier", "rmse", "mae", "mape"]
)
def test_every_metric_is_reported_each_round_and_returned(metric: str) -> None:
    train, valid = _flights_like(300, 0), _flights_like(150, 1)
    if metric in ("rmse", "mae", "mape"):  # a positive numeric target (MAPE divides by it)
        train, valid = (
            t.with_columns((pl.col("hour").fill_nan(12.0) * 3 + pl.col("delayed")).alias("delay"))
            for t in (train, valid)
        )
    label = "delay" if metric in ("rmse", "mae", "mape") else "delayed"
    objective = lightgbm_objective(
        train,
        valid,
        features=["carrier", "hour"],
        label=label,
        metric=metric,
        num_boost_round=8,
        report_every=1,
    )
    result = search(objective, SearchSpace({}), study=metric, storage="sqlite://", n_trials=1)
    best = result.best
    assert np.isfinite(result.best_value)
    assert best.value == pytest.approx(best.intermediate[best.attributes["best_iteration"] - 1])
    assert result.direction == ("maximize" if metric in ("roc_auc", "pr_auc") else "minimize")


def test_reports_are_thinned_and_steps_stay_round_indexes() -> None:
    train, valid = _flights_like(300, 0), _flights_like(150, 1)
    objective = lightgbm_objective(
        train,
        valid,
        features=["carrier", "hour"],
        label="delayed",
        metric="log_loss",
        num_boost_round=10,
        early_stopping_rounds=None,
        report_every=3,
    )
    result = search(objective, SearchSpace({}), study="thin", storage="sqlite://", n_trials=1)
    assert list(result.best.intermediate) == [2, 5, 8]
    assert result.best.attributes["best_iteration"] == 10  # no early stopping: every round
    assert result.best_value < result.best.intermediate[8]  # the 10th round, not the 9th


def test_the_trial_handle_refuses_what_it_cannot_store() -> None:
    def twice(trial: SearchTrial) -> float:
        trial.report(0.5, 0)
        trial.report(0.6, 0)
        return 0.0

    space = SearchSpace({"x": FloatParam(0.0, 1.0)})
    with pytest.raises(TrainingError, match=r"Trial 0 reported step 0 twice"):
        search(twice, space, study="h", storage="sqlite://", n_trials=1)

    def unstorable(trial: SearchTrial) -> float:
        trial.set_attribute("model", object())
        return 0.0

    with pytest.raises(TrainingError, match=r"Trial attribute 'model' must be a JSON value"):
        search(unstorable, space, study="h2", storage="sqlite://", n_trials=1)


# -- bad input -------------------------------------------------------------------------------


def test_lightgbm_objective_refuses_bad_input_clearly() -> None:
    train, valid = _flights_like(50, 0), _flights_like(50, 1)
    kwargs: dict[str, Any] = {"features": ["carrier", "hour"], "label": "delayed"}
    with pytest.raises(TrainingError, match=r"Unknown metric 'accuracy'.*Valid metrics: roc_auc"):
        lightgbm_objective(train, valid, metric="accuracy", **kwargs)
    one_class = train.with_columns(pl.lit(0).alias("delayed"))
    with pytest.raises(TrainingError, match=r"'delayed' of the train split has one class only"):
        lightgbm_objective(one_class, valid, **kwargs)
    with pytest.raises(TrainingError, match=r"The valid split has no column\(s\) 'hour'"):
        lightgbm_objective(train, valid.drop("hour"), **kwargs)
    with pytest.raises(TrainingError, match=r"'num_iterations' is set by lightgbm_objective"):
        lightgbm_objective(train, valid, params={"num_iterations": 5}, **kwargs)
    with pytest.raises(TrainingError, match=r"must hold 0 and 1"):
        lightgbm_objective(train.with_columns(pl.col("delayed") * 2), valid, **kwargs)
    objective = lightgbm_objective(train, valid, **kwargs)
    with pytest.raises(TrainingError, match=r"objective's metric is to maximize"):
        search(objective, SPACE, study="x", storage="sqlite://", n_trials=1, direction="minimize")
    with pytest.raises(TrainingError, match=r"LightGBM refused to train"):
        search(
            objective,
            SearchSpace({"num_leaves": IntParam(-5, -3)}),
            study="x",
            storage="sqlite://",
            n_trials=1,
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "search needs a budget: pass n_trials"),
        ({"n_trials": 0}, "The 'n_trials' of search must be a positive integer"),
        ({"timeout": -1}, "The 'timeout' of search must be a positive number of seconds"),
        ({"n_trials": 1, "direction": "max"}, "must be 'maximize' or 'minimize'. Got 'max'."),
        ({"n_trials": 1, "seed": -1}, "The 'seed' of search must be a non-negative integer"),
        (
            {"n_trials": 1, "pruning": MedianPruning(interval_steps=0)},
            "The 'interval_steps' of MedianPruning must be an integer of at least 1. Got 0.",
        ),
    ],
)
def test_search_checks_its_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TrainingError) as info:
        search(quadratic, SPACE, study="a", storage="sqlite://", **kwargs)
    assert message in str(info.value)


def test_an_objective_that_returns_no_number_stops_the_search() -> None:
    with pytest.raises(TrainingError, match=r"must return a number; trial 0 returned 'high'"):
        search(lambda t: "high", SPACE, study="a", storage="sqlite://", n_trials=2)  # type: ignore[arg-type,return-value]


def test_an_objective_s_own_database_errors_pass_through_untranslated(tmp_path: Path) -> None:
    def reads_a_missing_table(trial: SearchTrial) -> float:
        engine = sa.create_engine(sqlite_url(tmp_path, "objective.db"))
        try:
            with engine.connect() as conn:
                return float(conn.execute(sa.text("SELECT x FROM missing")).scalar_one())
        finally:
            engine.dispose()

    with pytest.raises(sa.exc.OperationalError, match="no such table: missing"):
        search(reads_a_missing_table, SPACE, study="a", storage=sqlite_url(tmp_path), n_trials=1)


def test_an_unreachable_study_database_is_a_metadata_store_error() -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:9/nowhere"
    with pytest.raises(MetadataStoreError, match=r"127\.0\.0\.1:9"):
        search(quadratic, SPACE, study="a", storage=url, n_trials=1)
