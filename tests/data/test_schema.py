"""require_columns: required columns and their types, every problem in one ContractError."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pyarrow as pa
import pytest

from loopline import require_columns
from loopline.errors import ContractError, LooplineError

FLIGHTS = {
    "year": "integer",
    "dep_delay": "number",
    "carrier": "string",
    "time_hour": "timestamp",
}


def _flights() -> pa.Table:
    return pa.table(
        {
            "year": pa.array([2013, 2013], pa.int64()),
            "dep_delay": pa.array([2.0, -4.0], pa.float64()),
            "carrier": pa.array(["UA", "AA"], pa.string()),
            "time_hour": pa.array(
                [dt.datetime(2013, 1, 1, 5), dt.datetime(2013, 1, 1, 6)], pa.timestamp("us")
            ),
            "origin": pa.array(["EWR", "LGA"]),
        }
    )


def _column(data_type: pa.DataType, values: list[object] | None = None) -> pa.Table:
    return pa.table({"c": pa.array(values if values is not None else [None], data_type)})


def _problems(table: pa.Table, columns: dict[str, str]) -> list[str]:
    with pytest.raises(ContractError) as caught:
        require_columns(table, columns, source="flights")
    return list(caught.value.problems)  # type: ignore[attr-defined]


# -- passing ---------------------------------------------------------------------------------


def test_a_table_that_fits_is_returned_unchanged_and_extra_columns_are_allowed() -> None:
    table = _flights()
    assert require_columns(table, FLIGHTS, source="flights") is table
    assert require_columns(table, {}, source="flights") is table


def test_polars_tables_fit_the_families() -> None:
    frame = pl.DataFrame(
        {
            "year": [2013],
            "month": pl.Series([1], dtype=pl.Int8),
            "dep_delay": [2.5],
            "carrier": ["UA"],
            "time_hour": [dt.datetime(2013, 1, 1, 5, tzinfo=dt.UTC)],
        }
    )
    columns = FLIGHTS | {"month": "integer"}
    assert require_columns(frame.to_arrow(), columns, source="flights").num_rows == 1


FAMILY_MEMBERS = {
    "integer": [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint64()],
    "number": [pa.int8(), pa.uint64(), pa.float16(), pa.float32(), pa.float64()],
    "string": [pa.string(), pa.large_string(), pa.string_view()],
    "timestamp": [pa.timestamp("s"), pa.timestamp("ns"), pa.timestamp("us", tz="UTC")],
}
FAMILY_OUTSIDERS = {
    "integer": [pa.float64(), pa.string(), pa.bool_()],
    "number": [pa.string(), pa.bool_(), pa.timestamp("us")],
    "string": [pa.int64(), pa.binary(), pa.dictionary(pa.int32(), pa.string())],
    "timestamp": [pa.date32(), pa.string(), pa.int64()],
}


@pytest.mark.parametrize(
    ("family", "data_type"),
    [(family, t) for family, types in FAMILY_MEMBERS.items() for t in types],
    ids=str,
)
def test_a_family_accepts_each_of_its_types(family: str, data_type: pa.DataType) -> None:
    table = _column(data_type)
    assert require_columns(table, {"c": family}, source="s") is table


@pytest.mark.parametrize(
    ("family", "data_type"),
    [(family, t) for family, types in FAMILY_OUTSIDERS.items() for t in types],
    ids=str,
)
def test_a_family_rejects_other_types(family: str, data_type: pa.DataType) -> None:
    assert _problems(_column(data_type), {"c": family}) == [
        f"column 'c' has type {data_type}, expected {family}"
    ]


@pytest.mark.parametrize(
    ("expected", "data_type"),
    [
        ("int64", pa.int64()),
        ("double", pa.float64()),
        ("float64", pa.float64()),
        ("float32", pa.float32()),
        ("utf8", pa.string()),
        ("large_string", pa.large_string()),
        ("bool", pa.bool_()),
        ("date32", pa.date32()),
        ("timestamp[ms]", pa.timestamp("ms")),
    ],
)
def test_an_arrow_type_name_or_alias_accepts_exactly_that_type(
    expected: str, data_type: pa.DataType
) -> None:
    table = _column(data_type)
    assert require_columns(table, {"c": expected}, source="s") is table


@pytest.mark.parametrize(
    ("expected", "data_type"),
    [
        ("int64", pa.int32()),
        ("double", pa.float32()),
        ("utf8", pa.large_string()),
        ("timestamp[ms]", pa.timestamp("us")),
        ("date32", pa.timestamp("ms")),
    ],
)
def test_an_arrow_type_name_rejects_its_neighbours(expected: str, data_type: pa.DataType) -> None:
    assert _problems(_column(data_type), {"c": expected}) == [
        f"column 'c' has type {data_type}, expected {expected}"
    ]


# -- failing ---------------------------------------------------------------------------------


def test_a_missing_column_is_named_with_its_expected_type() -> None:
    table = _flights().drop_columns(["dep_delay"])
    with pytest.raises(ContractError) as caught:
        require_columns(table, FLIGHTS, source="flights")
    error = caught.value
    assert str(error) == (
        "flights does not have the expected columns: missing required column 'dep_delay' "
        "(number). Columns present: year, carrier, time_hour, origin. "
        "Fix the source or the expected types."
    )
    assert error.source == "flights"  # type: ignore[attr-defined]
    assert error.problems == ["missing required column 'dep_delay' (number)"]  # type: ignore[attr-defined]
    assert isinstance(error, ValueError)
    assert isinstance(error, LooplineError)


def test_a_wrong_type_names_the_column_the_actual_and_the_expected_type() -> None:
    table = _flights().set_column(0, "year", pa.array(["2013", "2013"]))
    message = "column 'year' has type string, expected integer"
    assert _problems(table, FLIGHTS) == [message]
    with pytest.raises(
        ContractError, match=f"^flights does not have the expected columns: {message}"
    ):
        require_columns(table, FLIGHTS, source="flights")


def test_every_problem_is_reported_at_once_in_the_order_asked() -> None:
    table = pa.table({"carrier": [1, 2], "year": [1.5, 2.5]})
    assert _problems(table, FLIGHTS) == [
        "column 'year' has type double, expected integer",
        "missing required column 'dep_delay' (number)",
        "column 'carrier' has type int64, expected string",
        "missing required column 'time_hour' (timestamp)",
    ]


def test_nulls_are_not_checked_but_an_all_null_column_has_no_type() -> None:
    with_nulls = pa.table({"dep_delay": pa.array([None, 1.0], pa.float64())})
    assert require_columns(with_nulls, {"dep_delay": "number"}, source="s") is with_nulls
    empty = pa.table({"dep_delay": pa.array([], pa.null())})
    assert require_columns(empty, {"dep_delay": "number"}, source="s") is empty
    all_null = pa.table({"dep_delay": pa.array([None, None], pa.null())})
    assert _problems(all_null, {"dep_delay": "number"}) == [
        "column 'dep_delay' has type null, expected number"
    ]


def test_a_duplicated_column_is_a_problem_not_a_key_error() -> None:
    table = pa.Table.from_arrays([pa.array([1]), pa.array(["a"])], names=["year", "year"])
    assert _problems(table, {"year": "integer"}) == ["column 'year' appears 2 times"]


@pytest.mark.parametrize(
    "table", [_flights(), pa.table({"other": [1]})], ids=["present", "missing"]
)
def test_an_unknown_type_name_is_a_parameter_error_naming_the_choices(table: pa.Table) -> None:
    with pytest.raises(ContractError) as caught:
        require_columns(table, {"year": "integr"}, source="flights")
    assert str(caught.value) == (
        "The 'columns' parameter of require_columns must map each name to an Arrow type name "
        "such as 'int64' or 'double', or a family: integer, number, string, timestamp. "
        "Got 'integr' for column 'year'."
    )
    assert caught.value.column == "year"  # type: ignore[attr-defined]
