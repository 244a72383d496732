"""Data contracts: coercion, every rule kind, quarantine rows, schema evolution, dataset checks.

Chunks are built as sources build them (``Chunk.of``): CSV-like chunks hold text columns,
typed chunks hold Arrow types. Reasons are compared word for word: they are what a person
reads in ``loopline quarantine``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.data import contract as contract_module
from loopline.data.contract import (
    RULE_ORDER,
    Checked,
    Column,
    Contract,
    Freshness,
    SchemaChange,
    Summary,
    TypeChange,
    Validator,
    Volume,
    _duplicates,
    _edges_are_clean,
    _is_one_of,
    _KeySet,
)
from loopline.data.files import Files
from loopline.data.sources.base import LOCATION, QUARANTINE_SCHEMA, Chunk, rejects_table
from loopline.errors import ContractError, LooplineError

NOW = datetime(2024, 1, 10, 12, tzinfo=UTC)


def chunk(
    columns: dict[str, Any] | pa.Table,
    *,
    start: int = 2,
    locations: Sequence[int] | None = None,
    source: str = "data.csv",
    rejects: pa.Table | None = None,
) -> Chunk:
    table = columns if isinstance(columns, pa.Table) else pa.table(columns)
    where = list(locations) if locations is not None else list(range(start, start + len(table)))
    return Chunk.of(table, source=source, locations=where, rejects=rejects)


def check(contract: Contract, columns: dict[str, Any] | pa.Table, **kwargs: Any) -> Checked:
    return contract.validator().check(chunk(columns, **kwargs))


def one(column: Column, values: list[Any], *, name: str = "x", **kwargs: Any) -> Checked:
    """Check one column's values under a contract with that column only."""
    return check(Contract("t", {name: column}, **kwargs), {name: values})


def passed(checked: Checked, name: str = "x") -> list[Any]:
    return checked.passed.column(name).to_pylist()


def reasons(checked: Checked) -> dict[int, str]:
    rows = checked.quarantined.to_pylist()
    return {row["location"]: row["reason"] for row in rows}


def rules(checked: Checked) -> dict[int, tuple[str, str | None]]:
    rows = checked.quarantined.to_pylist()
    return {row["location"]: (row["rule"], row["column"]) for row in rows}


# -- coercion from text ----------------------------------------------------------------------------


def test_digit_grouping_is_a_type_violation_without_thousands() -> None:
    checked = one(Column("int64"), ["1,234", "1234", "1.234", "12"])
    assert passed(checked) == [1234, 12]
    assert reasons(checked) == {
        2: "column 'x': '1,234' is not a valid int64",
        4: "column 'x': '1.234' is not a valid int64",
    }
    assert rules(checked)[2] == ("type", "x")


def test_thousands_accepts_valid_grouping_only() -> None:
    values = ["1,234", "-1,234,567", "+1234", "12,34", "1,23", "1234,567", ",123", "1,,234"]
    checked = one(Column("int64", thousands=","), values)
    assert passed(checked) == [1234, -1234567, 1234]
    assert reasons(checked) == {
        loc: f"column 'x': {values[loc - 2]!r} is not a valid int64 (',' groups thousands)"
        for loc in range(5, 10)
    }


def test_thousands_and_decimal_mark_in_floats() -> None:
    checked = one(
        Column("float64", thousands=".", decimal=","), ["1.234,5", "1,5", "-,5", "12.34", "1e3"]
    )
    assert passed(checked) == [1234.5, 1.5, -0.5, 1000.0]
    assert reasons(checked) == {
        5: "column 'x': '12.34' is not a valid float64 ('.' groups thousands, ',' is the "
        "decimal mark)"
    }


def test_float_syntax_is_strict() -> None:
    checked = one(Column("float64"), ["1.5", ".5", "1.", "-2e-3", "+3", "1,5", "0x10", "1_000"])
    assert passed(checked) == [1.5, 0.5, 1.0, -0.002, 3.0]
    assert set(reasons(checked)) == {7, 8, 9}


@pytest.mark.parametrize("text", ["NaN", "nan", "inf", "-inf", "Infinity", "1e400"])
def test_non_finite_text_is_a_violation_unless_allowed(text: str) -> None:
    refused = one(Column("float64"), [text])
    assert passed(refused) == []
    assert reasons(refused) == {
        2: f"column 'x': {text!r} is not a finite number (set allow_non_finite to accept it)"
    }
    [accepted] = passed(one(Column("float64", allow_non_finite=True), [text]))
    if text.lower() == "nan":
        assert math.isnan(accepted)
    else:
        assert accepted == (-math.inf if text.startswith("-") else math.inf)


def test_null_values_become_null_before_other_checks() -> None:
    column = Column("int64", nullable=False, null_values=("", "NA", "-"))
    checked = one(column, ["NA", "", "-", "5", None])
    assert passed(checked) == [5]
    assert set(rules(checked).values()) == {("nullable", "x")}
    assert reasons(checked)[2] == "column 'x': null, but the column is not nullable"
    # Strings: "" is null by default, kept as text when null_values is empty.
    assert passed(one(Column("string"), ["", "a"])) == [None, "a"]
    assert passed(one(Column("string", null_values=()), ["", "a"])) == ["", "a"]


def test_whitespace_around_numbers_is_ignored_but_strings_are_kept() -> None:
    assert passed(one(Column("int32"), [" 7", "8 ", "\t9"])) == [7, 8, 9]
    assert passed(one(Column("string"), [" a "])) == [" a "]


def test_edges_are_clean_only_when_stripping_would_change_nothing() -> None:
    assert _edges_are_clean(pa.array(["1", "2.5", None, "", "2013-01-01T00:00:00"]))
    assert _edges_are_clean(pa.array(["a b", "x"], pa.large_string()))
    for dirty in (" 1", "1 ", "\t1", "1\r", "\u00a01", "1\u3000", "é"):
        assert not _edges_are_clean(pa.array(["7", dirty, "8"]))
    sliced = pa.array([" 1", "2", "3 "])
    assert _edges_are_clean(sliced.slice(1, 1))
    assert not _edges_are_clean(sliced.slice(1, 2))
    assert not _edges_are_clean(pa.array(["1"]).dictionary_encode())  # not looked into


_texts = st.lists(
    st.one_of(
        st.none(),
        st.text(alphabet=" \t\u00a0\u20070123456789.-+eEnaxT:", max_size=8),
        st.sampled_from(["1", "-2", "3.5", "1e3", "nan", "inf", "2013-01-01", "", " 4 "]),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(_texts, min_size=1, max_size=3))
def test_columns_without_white_space_at_the_ends_parse_as_if_stripped(
    parts: list[list[str | None]],
) -> None:
    contract = Contract(
        "t",
        {
            "i": Column("int64"),
            "f": Column("float64"),
            "d": Column("date"),
            "t": Column("datetime"),
            "b": Column("bool", true_values=("1",), false_values=("-2",)),
        },
        max_bad_fraction=1.0,
    )

    def outcome() -> list[tuple[Any, Any]]:
        validator, start, results = contract.validator(), 2, []
        for values in parts:
            table = pa.table({name: pa.array(values, pa.string()) for name in "ifdtb"})
            checked = validator.check(chunk(table, start=start))
            results.append((checked.passed.to_pylist(), checked.quarantined.to_pylist()))
            start += len(values)
        return results

    fast = outcome()
    with pytest.MonkeyPatch.context() as always_strip:
        always_strip.setattr(contract_module, "_edges_are_clean", lambda array: False)
        assert outcome() == fast


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.none(), st.sampled_from(["EUR", "USD", "", "eur", "NOK "])), max_size=20
    ),
    allowed=st.lists(st.text(alphabet="EURSDNOK ", max_size=4), min_size=1, max_size=12),
)
def test_a_few_allowed_strings_are_compared_as_a_lookup_would(
    values: list[str | None], allowed: list[str]
) -> None:
    frame = pl.DataFrame({"v": pl.Series(values, dtype=pl.String)})
    reference = pl.Series(allowed, dtype=pl.String)
    found = frame.select(_is_one_of(pl.col("v"), reference)).to_series().to_list()
    assert found == frame.select(pl.col("v").is_in(reference.implode())).to_series().to_list()


def test_int32_overflow_is_a_type_violation() -> None:
    checked = one(Column("int32"), ["2147483647", "2147483648"])
    assert passed(checked) == [2147483647]
    assert reasons(checked) == {3: "column 'x': '2147483648' is not a valid int32"}


def test_bools_read_only_the_declared_words() -> None:
    checked = one(Column("bool"), ["true", "False", "1", "0", "yes", "TRUE"])
    assert passed(checked) == [True, False, True, False]
    assert reasons(checked)[6] == (
        "column 'x': 'yes' is not a valid bool (true: 'true', 'True', '1'; "
        "false: 'false', 'False', '0')"
    )
    custom = Column("bool", true_values=("Y",), false_values=("N",))
    assert passed(one(custom, ["Y", "N", "true"])) == [True, False]


def test_dates_in_mixed_formats() -> None:
    column = Column("date", formats=("%Y-%m-%d", "%d/%m/%Y"))
    checked = one(column, ["2013-01-31", "31/01/2013", "2013/01/31", "2013-02-30"])
    assert passed(checked) == [date(2013, 1, 31), date(2013, 1, 31)]
    assert reasons(checked) == {
        4: "column 'x': '2013/01/31' does not match the date formats '%Y-%m-%d', '%d/%m/%Y'",
        5: "column 'x': '2013-02-30' does not match the date formats '%Y-%m-%d', '%d/%m/%Y'",
    }


def test_datetimes_with_offsets_are_converted_and_naive_ones_taken_in_the_time_zone() -> None:
    column = Column(
        "datetime",
        formats=("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%z", "%d.%m.%Y %H:%M"),
        timezone="Europe/Paris",
    )
    values = [
        "2013-07-01 12:00:00",  # naive, Paris summer time (UTC+2)
        "2013-07-01T12:00:00+02:00",
        "2013-07-01T10:00:00Z",
        "2013-07-01T05:00:00-0500",
        "01.07.2013 12:00",
        "2013-01-01 12:00:00",  # Paris winter time (UTC+1)
    ]
    checked = one(column, values)
    ten = datetime(2013, 7, 1, 10, tzinfo=UTC)
    assert passed(checked) == [ten] * 5 + [datetime(2013, 1, 1, 11, tzinfo=UTC)]
    assert checked.passed.schema.field("x").type == pa.timestamp("us", tz="UTC")


def test_local_times_skipped_or_repeated_by_a_clock_change_are_violations() -> None:
    column = Column("datetime", formats=("%Y-%m-%d %H:%M",), timezone="Europe/Paris")
    checked = one(column, ["2013-03-31 02:30", "2013-10-27 02:30", "2013-10-27 04:30", "x"])
    assert passed(checked) == [datetime(2013, 10, 27, 3, 30, tzinfo=UTC)]
    gap = "is not a single local time in Europe/Paris (skipped or repeated by a clock change)"
    assert reasons(checked) == {
        2: f"column 'x': '2013-03-31 02:30' {gap}",
        3: f"column 'x': '2013-10-27 02:30' {gap}",
        5: "column 'x': 'x' does not match the datetime formats '%Y-%m-%d %H:%M'",
    }


def test_default_datetime_formats_read_iso_8601_in_utc() -> None:
    values = [
        "2013-01-01T10:00:00",
        "2013-01-01 10:00:00.250",
        "2013-01-01T11:00:00+01:00",
        "2013-01-01T10:00:00Z",
        "2013-01-01",
    ]
    got = passed(one(Column("datetime"), values))
    ten = datetime(2013, 1, 1, 10, tzinfo=UTC)
    assert got == [ten, ten + timedelta(milliseconds=250), ten, ten, ten - timedelta(hours=10)]


def test_python_fraction_directive_reads_microseconds() -> None:
    column = Column("datetime", formats=("%Y-%m-%d %H:%M:%S.%f",))
    assert passed(one(column, ["2013-01-01 10:00:00.123456"])) == [
        datetime(2013, 1, 1, 10, 0, 0, 123456, tzinfo=UTC)
    ]


# -- typed inputs ----------------------------------------------------------------------------------


def test_typed_columns_widen_safely() -> None:
    contract = Contract(
        "t",
        {
            "i": Column("int64"),
            "f": Column("float64"),
            "t": Column("datetime"),
            "d": Column("date"),
        },
    )
    table = pa.table(
        {
            "i": pa.array([1, None], pa.int32()),
            "f": pa.array([3, 2**53], pa.int64()),
            "t": pa.array([date(2013, 1, 1), None], pa.date32()),
            "d": pa.array([date(2013, 1, 2), None], pa.date32()),
        }
    )
    assert not contract.compare_schema(table.schema)
    checked = check(contract, table)
    assert checked.passed.drop_columns([LOCATION]).to_pydict() == {
        "i": [1, None],
        "f": [3.0, float(2**53)],
        "t": [datetime(2013, 1, 1, tzinfo=UTC), None],
        "d": [date(2013, 1, 2), None],
    }


def test_an_int_that_a_float_cannot_hold_exactly_is_a_violation() -> None:
    checked = one(Column("float64"), pa.array([2**53 + 1, -(2**62) - 1, 5], pa.int64()))
    assert passed(checked) == [5.0]
    assert reasons(checked)[2] == (
        "column 'x': 9007199254740993 (int64) cannot be converted to float64 without loss"
    )


def test_widened_types_are_checked_value_by_value_under_additive() -> None:
    contract = Contract("t", {"i": Column("int64"), "s": Column("int32")}, schema="additive")
    table = pa.table(
        {
            "i": pa.array([1.0, 1.5, float("nan"), 1e30], pa.float64()),
            "s": pa.array([2**31 - 1, 2**31, 0, 0], pa.int64()),
        }
    )
    checked = check(contract, table)
    assert checked.passed.drop_columns([LOCATION]).to_pylist() == [{"i": 1, "s": 2**31 - 1}]
    assert reasons(checked) == {
        3: "column 'i': 1.5 (float64) cannot be converted to int64 without loss; "
        "column 's': 2147483648 (int64) cannot be converted to int32 without loss",
        4: "column 'i': NaN (float64) cannot be converted to int64 without loss",
        5: "column 'i': 1e+30 (float64) cannot be converted to int64 without loss",
    }


def test_typed_nan_and_infinity_are_violations_unless_allowed() -> None:
    values = pa.array([1.0, float("nan"), float("inf")])
    checked = one(Column("float64"), values)
    assert passed(checked) == [1.0]
    assert reasons(checked) == {
        3: "column 'x': NaN is not a finite number (set allow_non_finite to accept it)",
        4: "column 'x': inf is not a finite number (set allow_non_finite to accept it)",
    }
    assert len(passed(one(Column("float64", allow_non_finite=True), values))) == 3


def test_timestamps_convert_to_utc_and_refuse_lost_precision() -> None:
    zoned = pa.array([datetime(2013, 7, 1, 12)], pa.timestamp("ms", tz="Europe/Paris"))
    assert passed(one(Column("datetime"), zoned)) == [datetime(2013, 7, 1, 12, tzinfo=UTC)]
    naive = pa.array([datetime(2013, 7, 1, 12)], pa.timestamp("s"))
    paris = Column("datetime", timezone="Europe/Paris")
    assert passed(one(paris, naive)) == [datetime(2013, 7, 1, 10, tzinfo=UTC)]
    nanos = pa.array([1_000, 1_001], pa.timestamp("ns"))
    checked = one(Column("datetime"), nanos)
    assert passed(checked) == [datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC)]
    assert reasons(checked) == {
        3: "column 'x': 1970-01-01T00:00:00.000001001 (timestamp[ns]) cannot be converted "
        "to datetime without loss"
    }


def test_an_all_null_column_fits_any_type() -> None:
    checked = one(Column("date"), pa.nulls(2))
    assert passed(checked) == [None, None]


# -- value rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "good", "bad", "rule", "reason"),
    [
        (Column("int64", min=1), "1", "0", "min", "column 'x': 0 is below the minimum 1"),
        (Column("int64", max=12), "12", "13", "max", "column 'x': 13 is above the maximum 12"),
        (
            Column("float64", min=0.5),
            "0.5",
            "0.25",
            "min",
            "column 'x': 0.25 is below the minimum 0.5",
        ),
        (
            Column("date", max="2013-12-31"),
            "2013-12-31",
            "2014-01-01",
            "max",
            "column 'x': 2014-01-01 is above the maximum 2013-12-31",
        ),
        (
            Column("datetime", min=datetime(2013, 1, 1, 1), timezone="Europe/Paris"),
            "2013-01-01 01:00:00",
            "2013-01-01 00:59:59",
            "min",
            "column 'x': 2012-12-31T23:59:59+00:00 is below the minimum 2013-01-01T00:00:00+00:00",
        ),
        (Column("string", min="b"), "b", "a", "min", "column 'x': 'a' is below the minimum 'b'"),
        (
            Column("string", allowed=["EWR", "JFK", "LGA"]),
            "JFK",
            "XYZ",
            "allowed",
            "column 'x': 'XYZ' is not one of the allowed values 'EWR', 'JFK', 'LGA'",
        ),
        (
            Column("int32", allowed=[1, 2, 3, 4, 5, 6, 7]),
            "7",
            "8",
            "allowed",
            "column 'x': 8 is not one of the allowed values 1, 2, 3, 4, 5 and 2 more",
        ),
        (
            Column("string", pattern="N[0-9]+[A-Z]*"),
            "N123AB",
            "XN123",
            "pattern",
            "column 'x': 'XN123' does not match the pattern 'N[0-9]+[A-Z]*'",
        ),
        (
            Column("string", nullable=False),
            "a",
            None,
            "nullable",
            "column 'x': null, but the column is not nullable",
        ),
    ],
)
def test_each_value_rule_passes_and_fails_with_its_reason(
    column: Column, good: str | None, bad: str | None, rule: str, reason: str
) -> None:
    checked = one(column, [good, bad])
    assert checked.passed.column(LOCATION).to_pylist() == [2]
    assert rules(checked) == {3: (rule, "x")}
    assert reasons(checked) == {3: reason}


def test_pattern_must_match_the_whole_value() -> None:
    checked = one(Column("string", pattern="[a-z]+"), ["abc", "abc1", "1abc", None])
    assert passed(checked) == ["abc", None]


def test_nan_is_neither_below_nor_above_a_bound() -> None:
    column = Column("float64", min=0, max=1, allow_non_finite=True)
    checked = one(column, ["NaN", "inf", "-inf", "0.5"])
    assert checked.passed.column(LOCATION).to_pylist() == [2, 5]
    assert rules(checked) == {3: ("max", "x"), 4: ("min", "x")}


def test_allowed_from_a_list_a_series_and_a_callable() -> None:
    calls: list[int] = []

    def codes() -> pl.Series:
        calls.append(1)
        return pl.Series(["AA", "UA"])

    for reference in (["AA", "UA"], pl.Series(["AA", "UA", "AA"]), codes):
        contract = Contract("t", {"x": Column("string", allowed_from=reference)})
        for _ in range(2):
            checked = check(contract, {"x": ["AA", "DL", None]})
            assert passed(checked) == ["AA", None]
            assert reasons(checked) == {
                3: "column 'x': 'DL' is not among the 2 values allowed ('AA', 'UA')"
            }
    assert calls == [1]  # called once per contract, not per chunk or validator


def test_allowed_from_a_csv_file_is_read_once_and_parsed_like_the_column(tmp_path: Path) -> None:
    path = tmp_path / "months.csv"
    path.write_text("month,name\n1,January\n2,February\n12,December\n")
    contract = Contract("t", {"m": Column("int32", allowed_from=(str(path), "month"))})
    checked = check(contract, {"m": ["1", "12", "13"]})
    assert passed(checked, "m") == [1, 12]
    assert reasons(checked) == {
        4: f"column 'm': 13 is not among the 3 values of column 'month' in {path}"
    }
    path.unlink()  # read once: a second validator does not read it again
    assert passed(check(contract, {"m": ["2"]}), "m") == [2]


def test_allowed_from_parquet_files_and_globs(tmp_path: Path) -> None:
    pq.write_table(pa.table({"code": ["AA", "UA"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"code": ["DL"]}), tmp_path / "b.parquet")
    column = Column("string", allowed_from=(Files(str(tmp_path / "*.parquet")), "code"))
    checked = check(Contract("t", {"x": column}), {"x": ["AA", "DL", "B6"]})
    assert passed(checked) == ["AA", "DL"]


def test_allowed_from_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "codes.csv"
    path.write_text("code\n1\nx\n")
    contract = Contract("t", {"n": Column("int64", allowed_from=(str(path), "code"))})
    with pytest.raises(ContractError, match=r"1 values that are not valid int64.*'x'"):
        check(contract, {"n": ["1"]})
    contract = Contract("t", {"n": Column("int64", allowed_from=(str(path), "codes"))})
    with pytest.raises(ContractError, match=r"names column 'codes'.*Its columns: 'code'"):
        check(contract, {"n": ["1"]})
    contract = Contract("t", {"n": Column("int64", allowed_from=(str(tmp_path / "no.csv"), "c"))})
    with pytest.raises(LooplineError, match="No file matches"):
        check(contract, {"n": ["1"]})


# -- row rules -------------------------------------------------------------------------------------


def test_row_rules_as_sql_strings_and_expressions() -> None:
    contract = Contract(
        "t",
        {"dep": Column("int32"), "arr": Column("int32")},
        rules={"in_day": "dep BETWEEN 0 AND 2400", "order": pl.col("dep") <= pl.col("arr")},
    )
    checked = check(
        contract, {"dep": ["100", "2500", "300", None], "arr": ["200", "2600", "200", "5"]}
    )
    assert checked.passed.column(LOCATION).to_pylist() == [2, 5]  # a null result passes
    assert rules(checked) == {3: ("rule:in_day", None), 4: ("rule:order", None)}
    assert reasons(checked) == {
        3: "rule 'in_day' is false: dep BETWEEN 0 AND 2400",
        4: "rule 'order' is false",
    }


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("x >", "is not a valid SQL expression"),
        ("y > 1", "must refer to declared columns \\('x'\\); it refers to 'y'"),
        ("x + 1", "must give true or false for each row"),
        (pl.col("x").sum() > 1, "must give true or false for each row.*one value per chunk"),
        (pl.lit(True), "it refers to none"),
    ],
)
def test_bad_rules_are_refused_when_the_contract_is_made(rule: Any, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        Contract("t", {"x": Column("int64")}, rules={"r": rule})


def test_rule_order_and_every_reason() -> None:
    contract = Contract(
        "t",
        {
            "a": Column("string", allowed=["x", "y"], pattern="[a-z]"),
            "b": Column("int64", min=0, max=9, nullable=False),
            "c": Column("int64"),
        },
        rules={"r1": "b > 5", "r2": "a = 'x'"},
    )
    checked = check(
        contract,
        {
            "a": ["Z", "z", "y", "x"],
            "b": ["10", "-1", "3", None],
            "c": ["q", "1", "1", "1"],
        },
    )
    assert rules(checked) == {
        2: ("type", "c"),
        3: ("min", "b"),
        4: ("rule:r1", None),
        5: ("nullable", "b"),
    }
    assert reasons(checked)[2] == (
        "column 'c': 'q' is not a valid int64; column 'b': 10 is above the maximum 9; "
        "column 'a': 'Z' is not one of the allowed values 'x', 'y'; "
        "column 'a': 'Z' does not match the pattern '[a-z]'; rule 'r2' is false: a = 'x'"
    )
    assert reasons(checked)[3] == (
        "column 'b': -1 is below the minimum 0; column 'a': 'z' is not one of the allowed "
        "values 'x', 'y'; rule 'r1' is false: b > 5; rule 'r2' is false: a = 'x'"
    )
    assert reasons(checked)[4] == "rule 'r1' is false: b > 5; rule 'r2' is false: a = 'x'"
    assert RULE_ORDER == (
        "parse", "type", "nullable", "min", "max", "allowed", "pattern", "rule", "unique"
    )  # fmt: skip


def test_a_value_that_fails_its_type_is_not_also_reported_as_null() -> None:
    checked = one(Column("int64", nullable=False, min=0), ["x"])
    assert reasons(checked) == {2: "column 'x': 'x' is not a valid int64"}


# -- uniqueness ------------------------------------------------------------------------------------


def test_unique_column_within_and_across_chunks() -> None:
    validator = Contract("t", {"id": Column("int64", unique=True)}).validator()
    first = validator.check(chunk({"id": ["1", "2", "1", None, None]}))
    second = validator.check(chunk({"id": ["2", "3", "3", "1,0"]}, start=7))
    assert passed(first, "id") == [1, 2, None, None]  # a null key is never a duplicate
    assert passed(second, "id") == [3]
    assert rules(first) == {4: ("unique", "id")}
    assert reasons(second) == {
        7: "column 'id': 2 repeats an earlier row",
        9: "column 'id': 3 repeats an earlier row",
        10: "column 'id': '1,0' is not a valid int64",
    }


def test_composite_key() -> None:
    contract = Contract(
        "t", {"a": Column("string"), "b": Column("date"), "n": Column("int64")}, unique=[["a", "b"]]
    )
    validator = contract.validator()
    first = validator.check(
        chunk(
            {
                "a": ["x", "x", "y", "x", None],
                "b": ["2013-01-01", "2013-01-02"] * 2 + [None],
                "n": ["1", "2", "3", "4", "5"],
            }
        )
    )
    second = validator.check(
        chunk({"a": ["y", "y"], "b": ["2013-01-01", "2013-01-02"], "n": ["6", "7"]}, start=7)
    )
    assert passed(first, "n") == [1, 2, 3, 5]
    assert reasons(first) == {5: "key (a, b) = ('x', 2013-01-02) repeats an earlier row"}
    assert rules(first) == {5: ("unique", "a, b")}
    assert passed(second, "n") == [7]


def test_a_key_is_claimed_only_by_a_row_that_passes_the_other_rules() -> None:
    contract = Contract("t", {"id": Column("int64", unique=True), "v": Column("int64", min=0)})
    checked = check(contract, {"id": ["1", "1", "1"], "v": ["-5", "2", "-1"]})
    assert passed(checked, "v") == [2]
    assert reasons(checked) == {
        2: "column 'v': -5 is below the minimum 0",
        4: "column 'v': -1 is below the minimum 0; column 'id': 1 repeats an earlier row",
    }


def test_keys_of_text_columns_across_many_chunks() -> None:
    validator = Contract("t", {"k": Column("string", unique=True)}).validator()
    total = 0
    for i in range(40):
        keys = [f"key{(i * 37 + j) % 1500}" for j in range(100)]
        total += len(passed(validator.check(chunk({"k": keys}, start=i * 100)), "k"))
    assert total == 1500
    assert len(validator._keysets[0]) == 1500


def test_key_set_tells_keys_apart_when_the_first_halves_collide() -> None:
    keys = _KeySet()
    u = np.uint64
    keys.add(np.array([5, 5, 7], dtype=u), np.array([1, 2, 1], dtype=u))
    keys.add(np.array([5], dtype=u), np.array([3], dtype=u))
    found = keys.contains(
        np.array([5, 5, 5, 5, 7, 8], dtype=u), np.array([1, 2, 3, 4, 1, 1], dtype=u)
    )
    assert found.tolist() == [True, True, True, False, True, False]


def test_duplicates_are_told_apart_when_the_first_halves_collide() -> None:
    u = np.uint64
    keys = _KeySet()
    keys.add(np.array([9], dtype=u), np.array([1], dtype=u))
    h1 = np.array([5, 5, 5, 7, 9, 9, 5], dtype=u)
    h2 = np.array([1, 2, 1, 1, 1, 2, 2], dtype=u)
    ok = np.array([False, True, True, True, True, True, True])
    found = _duplicates(h1, h2, ok, keys)
    # (5, 1): row 0 is not ok, so row 2 claims it; (5, 2): row 1 claims it, row 6 repeats it;
    # (9, 1) was claimed by an earlier chunk.
    assert found.tolist() == [False, False, False, False, True, False, True]
    assert len(keys) == 5


# -- quarantine rows -------------------------------------------------------------------------------


def test_quarantine_rows_keep_the_values_as_read() -> None:
    contract = Contract(
        "t", {"n": Column("int64", max=5), "f": Column("float64")}, schema="additive"
    )
    table = pa.table(
        {
            "n": pa.array(["1,000", " 9 "]),
            "f": pa.array([float("nan"), -float("inf")]),
            "note": pa.array(['say "hi"\n', None]),
        }
    )
    checked = check(contract, table)
    rows = [json.loads(r) for r in checked.quarantined.column("row").to_pylist()]
    assert rows == [
        {"n": "1,000", "f": "NaN", "note": 'say "hi"\n'},
        {"n": " 9 ", "f": "-Infinity", "note": None},
    ]
    assert checked.quarantined.schema == QUARANTINE_SCHEMA
    assert set(checked.quarantined.column("source").to_pylist()) == {"data.csv"}


def test_unparsable_rows_are_quarantined_in_location_order() -> None:
    rejects = rejects_table([3, 6], ['a,"b', "x,y,z"], ["unclosed quote", "3 fields, expected 1"])
    checked = check(
        Contract("t", {"n": Column("int64")}),
        {"n": ["1", "x", "3"]},
        locations=[2, 4, 5],
        rejects=rejects,
    )
    quarantined = checked.quarantined.to_pylist()
    assert [(r["location"], r["rule"], r["row"]) for r in quarantined] == [
        (3, "parse", 'a,"b'),
        (4, "type", '{"n":"x"}'),
        (6, "parse", "x,y,z"),
    ]
    assert passed(checked, "n") == [1, 3]


def test_passed_rows_have_the_declared_columns_types_and_order() -> None:
    contract = Contract(
        "t",
        {"b": Column("bool", nullable=False), "a": Column("string"), "d": Column("date")},
        schema="additive",
    )
    checked = check(contract, {"a": ["x"], "extra": ["e"], "d": ["2013-01-01"], "b": ["1"]})
    assert checked.passed.schema == pa.schema(
        [
            pa.field("b", pa.bool_(), nullable=False),
            pa.field("a", pa.string()),
            pa.field("d", pa.date32()),
            pa.field(LOCATION, pa.int64(), nullable=False),
        ]
    )
    assert checked.passed.schema.remove(3) == contract.arrow_schema


def test_an_empty_chunk_and_a_chunk_of_rejects_only() -> None:
    contract = Contract("t", {"n": Column("int64")})
    validator = contract.validator()
    empty = validator.check(chunk({"n": pa.array([], pa.string())}))
    assert (empty.passed.num_rows, empty.quarantined.num_rows) == (0, 0)
    only = validator.check(
        chunk(
            {"n": pa.array([], pa.string())}, rejects=rejects_table([2], ["\\xff"], ["bad utf-8"])
        )
    )
    assert only.quarantined.column("rule").to_pylist() == ["parse"]
    assert (validator.rows_read_, validator.rows_passed_, validator.rows_quarantined_) == (1, 0, 1)


# -- schema evolution ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "actual", "kind"),
    [
        ("int64", pa.string(), None),
        ("int64", pa.int32(), None),
        ("int64", pa.uint32(), None),
        ("int64", pa.uint64(), "widened"),
        ("int32", pa.int64(), "widened"),
        ("int64", pa.float64(), "widened"),
        ("float64", pa.int64(), None),
        ("float64", pa.float32(), None),
        ("datetime", pa.timestamp("ns"), None),
        ("datetime", pa.date32(), None),
        ("date", pa.timestamp("s"), "widened"),
        ("string", pa.int64(), "changed"),
        ("int64", pa.bool_(), "changed"),
        ("bool", pa.int8(), "changed"),
        ("date", pa.int32(), "changed"),
        ("string", pa.large_string(), None),
        ("int64", pa.null(), None),
    ],
)
def test_compare_schema_classifies_types(
    declared: str, actual: pa.DataType, kind: str | None
) -> None:
    change = Contract("t", {"x": Column(declared)}).compare_schema(pa.schema([("x", actual)]))
    expected = [TypeChange("x", declared, str(actual))]
    assert change.widened == tuple(expected if kind == "widened" else [])
    assert change.changed == tuple(expected if kind == "changed" else [])
    assert bool(change) == (kind is not None)


def test_fail_policy_lists_every_change() -> None:
    contract = Contract("t", {"a": Column("int32"), "b": Column("string"), "c": Column("int64")})
    table = pa.table({"a": pa.array([1], pa.int64()), "c": [True], "z": ["new"]})
    with pytest.raises(ContractError) as info:
        check(contract, table)
    assert str(info.value) == (
        "The columns of data.csv do not match contract 't' (schema policy 'fail'): "
        "added column 'z' (string); dropped column 'b' (declared string); column 'a' is int64, "
        "wider than the declared int32; column 'c' changed type: declared int64, found bool. "
        "Update the contract to the new schema, or set schema to 'additive' to accept added "
        "columns and widened types."
    )


def test_additive_policy_accepts_added_columns_and_widened_types() -> None:
    contract = Contract("t", {"a": Column("int32")}, schema="additive", max_bad_fraction=1.0)
    validator = contract.validator()
    checked = validator.check(chunk({"a": pa.array([1, 2**40], pa.int64()), "z": ["p", "q"]}))
    assert checked.passed.column_names == ["a", LOCATION]  # added columns are not kept
    assert rules(checked) == {3: ("type", "a")}
    summary = validator.finish(now=NOW, previous_rows=None)
    assert summary.schema_changes == SchemaChange(
        added=("z",),
        widened=(TypeChange("a", "int32", "int64"),),
        added_types=("string",),
    )
    assert summary.verdict == "warn"
    assert summary.warnings == (
        "schema change accepted by the additive policy: added column 'z' (string)",
        "schema change accepted by the additive policy: column 'a' is int64, wider than the "
        "declared int32",
    )


@pytest.mark.parametrize(
    "table",
    [
        pa.table({"a": ["1"]}),  # a nullable column dropped is still dropped
        pa.table({"a": ["1"], "b": [1.5]}),
    ],
)
def test_additive_policy_refuses_dropped_and_changed_columns(table: pa.Table) -> None:
    contract = Contract("t", {"a": Column("int64"), "b": Column("string")}, schema="additive")
    with pytest.raises(ContractError, match="accepts only added columns and widened types"):
        check(contract, table)


def test_schema_is_checked_again_when_a_later_chunk_differs() -> None:
    validator = Contract("t", {"a": Column("int64")}).validator()
    validator.check(chunk({"a": ["1"]}))
    validator.check(chunk({"a": pa.array([2], pa.int32())}, start=3))
    with pytest.raises(ContractError, match="added column 'b'"):
        validator.check(chunk({"a": ["3"], "b": ["x"]}, start=4))


def test_repeated_input_columns_are_refused() -> None:
    table = pa.Table.from_arrays([pa.array(["1"]), pa.array(["2"])], names=["a", "a"])
    with pytest.raises(ContractError, match="repeated column names: 'a'"):
        check(Contract("t", {"a": Column("int64")}), table)


# -- dataset-level checks --------------------------------------------------------------------------


def finish(contract: Contract, *chunks: dict[str, Any], **kwargs: Any) -> Summary:
    validator = contract.validator()
    start = 2
    for columns in chunks:
        validator.check(chunk(columns, start=start))
        start += len(next(iter(columns.values())))
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("previous_rows", None)
    return validator.finish(**kwargs)


def test_too_many_bad_rows_fail_with_counts_and_top_reasons() -> None:
    contract = Contract("flights", {"m": Column("int32", min=1, max=12)}, max_bad_fraction=0.25)
    with pytest.raises(ContractError) as info:
        finish(contract, {"m": ["13", "0", "14"]}, {"m": ["1", "x"]})
    message = str(info.value)
    assert message.startswith(
        "Contract 'flights' failed: 4 of 5 rows (80.00%) were quarantined, above "
        "max_bad_fraction 25.00%. Most frequent: max on 'm': 2 rows (e.g. column 'm': 13 is "
        "above the maximum 12); type on 'm': 1 row (e.g. column 'm': 'x' is not a valid "
        "int32); min on 'm': 1 row (e.g. column 'm': 0 is below the minimum 1)."
    )
    assert "See the quarantine" in message
    summary = info.value.summary  # type: ignore[attr-defined]
    assert summary.rule_counts == {"type": 1, "min": 1, "max": 2}
    assert (summary.rows_read, summary.rows_passed, summary.rows_quarantined) == (5, 1, 4)


def test_bad_fraction_at_the_limit_passes() -> None:
    contract = Contract("t", {"m": Column("int32", max=12)}, max_bad_fraction=0.25)
    summary = finish(contract, {"m": ["13", "1", "2", "3"]})
    assert (summary.verdict, summary.bad_fraction, summary.warnings) == ("pass", 0.25, ())
    with pytest.raises(ContractError):
        finish(contract, {"m": ["13", "14", "2", "3"]})


def test_on_bad_warn_returns_the_failures_as_warnings() -> None:
    contract = Contract("t", {"m": Column("int32", max=12)}, on_bad="warn")
    summary = finish(contract, {"m": ["13", "1"]})
    assert summary.verdict == "warn"
    assert summary.warnings[0].startswith("1 of 2 rows (50.00%) were quarantined")
    assert summary.rule_counts == {"max": 1}
    assert [(v.rule, v.column, v.rows) for v in summary.violations] == [("max", "m", 1)]


def test_freshness() -> None:
    contract = Contract(
        "t",
        {"t": Column("datetime")},
        freshness=Freshness("t", timedelta(hours=36)),
    )
    fresh = finish(contract, {"t": ["2024-01-08T00:00:00", "2024-01-09T00:00:00Z"]})
    assert fresh.freshness is not None
    assert (fresh.freshness.ok, fresh.freshness.age) == (True, timedelta(hours=36))
    with pytest.raises(
        ContractError, match=r"the newest 't' is 2024-01-08T23:59:59\+00:00, 1d 12h 1s old"
    ):
        finish(contract, {"t": ["2024-01-08T23:59:59"]})
    with pytest.raises(ContractError, match="no row passed with a value in 't'"):
        finish(contract, {"t": [None]})
    dated = Contract("t", {"d": Column("date")}, freshness=Freshness("d", timedelta(days=2)))
    assert (
        finish(dated, {"d": ["2024-01-08"]}, now=datetime(2024, 1, 10, tzinfo=UTC)).verdict
        == "pass"
    )
    with pytest.raises(ContractError, match="timezone-aware"):
        finish(dated, {"d": ["2024-01-08"]}, now=datetime(2024, 1, 10))


def test_freshness_counts_only_rows_that_passed() -> None:
    contract = Contract(
        "t",
        {"t": Column("date"), "ok": Column("bool")},
        freshness=Freshness("t", timedelta(days=2)),
        on_bad="warn",
        max_bad_fraction=0.5,
    )
    summary = finish(contract, {"t": ["2024-01-01", "2024-01-10"], "ok": ["1", "maybe"]})
    assert summary.freshness is not None
    assert summary.freshness.newest == datetime(2024, 1, 1, tzinfo=UTC)
    assert not summary.freshness.ok


@pytest.mark.parametrize(
    ("volume", "rows", "previous", "problem"),
    [
        (Volume(min_rows=2), 2, None, None),
        (Volume(min_rows=3), 2, None, "2 rows passed, fewer than the minimum 3"),
        (Volume(max_rows=1), 2, None, "2 rows passed, more than the maximum 1"),
        (Volume(min_ratio=0.5, max_ratio=2.0), 2, None, None),  # no previous version
        (Volume(min_ratio=0.5), 2, 4, None),
        (
            Volume(min_ratio=0.5),
            2,
            5,
            "2 rows passed against 5 in the previous version (ratio 0.4, below 0.5)",
        ),
        (Volume(max_ratio=1.5), 2, 1, "(ratio 2, above 1.5)"),
        (Volume(max_ratio=1.5), 2, 0, "(ratio inf, above 1.5)"),
    ],
)
def test_volume(volume: Volume, rows: int, previous: int | None, problem: str | None) -> None:
    contract = Contract("t", {"n": Column("int64")}, volume=volume, on_bad="warn")
    summary = finish(contract, {"n": [str(i) for i in range(rows)]}, previous_rows=previous)
    assert summary.volume is not None
    assert summary.volume.ok == (problem is None)
    if problem is None:
        assert summary.verdict == "pass"
    else:
        assert problem in summary.warnings[0]
        with pytest.raises(ContractError, match=re.escape(problem)):
            finish(
                Contract("t", {"n": Column("int64")}, volume=volume),
                {"n": [str(i) for i in range(rows)]},
                previous_rows=previous,
            )


def test_counts_that_do_not_reconcile_are_an_internal_error() -> None:
    validator = Contract("t", {"n": Column("int64")}).validator()
    validator.check(chunk({"n": ["1"]}))
    validator.rows_read_ += 1
    with pytest.raises(RuntimeError, match="bug in loopline"):
        validator.finish(now=NOW, previous_rows=None)
    with pytest.raises(RuntimeError, match="read 3 rows but accounted for 1 passed and 1"):
        Summary("t", 3, 1, 1, {}, (), 0.0, None, None, SchemaChange(), "pass", ())


# -- declarations and YAML -------------------------------------------------------------------------

FLIGHTS_YAML = """\
name: flights
columns:
  year: {type: int32, nullable: false, min: 2013, max: 2013}
  month: {type: int32, min: 1, max: 12}
  dep_time: {type: int32, min: 0, max: 2400}
  carrier:
    type: string
    allowed_from: {path: airlines.csv, column: carrier}
  origin: {type: string, allowed: [EWR, JFK, LGA]}
  tailnum: {type: string, pattern: "N[0-9A-Z]+"}
  distance: {type: float64, min: 0, thousands: ","}
  time_hour:
    type: datetime
    formats: ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]
    timezone: America/New_York
  cancelled: {type: bool, true_values: ["Y"], false_values: ["N"]}
  flight_date: {type: date, min: 2013-01-01}
unique:
  - [year, month, carrier, dep_time, tailnum]
rules:
  short_hop: "distance < 5000 OR origin = 'JFK'"
freshness: {column: time_hour, max_age: 36h}
volume: {min_rows: 1, min_ratio: 0.5, max_ratio: 2}
max_bad_fraction: 0.01
on_bad: warn
schema: additive
"""


def test_yaml_round_trip(tmp_path: Path) -> None:
    (tmp_path / "airlines.csv").write_text("carrier,name\nAA,American\nUA,United\n")
    path = tmp_path / "flights.yaml"
    path.write_text(FLIGHTS_YAML)
    contract = Contract.from_yaml(path)
    assert contract.columns["carrier"].allowed_from == (str(tmp_path / "airlines.csv"), "carrier")
    assert contract.columns["flight_date"].min == date(2013, 1, 1)
    assert contract.freshness == Freshness("time_hour", timedelta(hours=36))
    assert contract.volume == Volume(min_rows=1, min_ratio=0.5, max_ratio=2.0)
    again = Contract.from_yaml(contract.to_yaml())
    assert again.to_dict() == contract.to_dict()
    assert again.columns == contract.columns
    assert again.fingerprint() == contract.fingerprint()
    data = {
        "year": ["2013", "2013"],
        "month": ["1", "13"],
        "dep_time": ["517", "600"],
        "carrier": ["UA", "ZZ"],
        "origin": ["EWR", "JFK"],
        "tailnum": ["N14228", "n1"],
        "distance": ["1,400", "1400"],
        "time_hour": ["2013-01-01 05:00:00", "2013-01-01T05:00:00-0500"],
        "cancelled": ["N", "Y"],
        "flight_date": ["2013-01-01", "2012-12-31"],
    }
    first, second = check(contract, data), check(again, data)
    assert first.passed.equals(second.passed)
    assert first.quarantined.equals(second.quarantined)
    assert passed(first, "distance") == [1400.0]
    assert passed(first, "time_hour") == [datetime(2013, 1, 1, 10, tzinfo=UTC)]
    # Kinds in rule order (min before max before allowed), columns in declared order.
    assert reasons(first)[3] == (
        "column 'flight_date': 2012-12-31 is below the minimum 2013-01-01; column 'month': 13 "
        "is above the maximum 12; column 'carrier': 'ZZ' is not among the 2 values of column "
        f"'carrier' in {tmp_path / 'airlines.csv'}; column 'tailnum': 'n1' does not match the "
        "pattern 'N[0-9A-Z]+'"
    )


def test_from_dict_and_the_python_form_agree() -> None:
    built = Contract(
        "t",
        {"id": Column("int64", unique=True), "d": Column("date", formats=("%d/%m/%Y",))},
        rules={"pos": "id > 0"},
        max_bad_fraction=0.1,
    )
    read = Contract.from_dict(
        {
            "name": "t",
            "columns": {
                "id": {"type": "int64", "unique": True},
                "d": {"type": "date", "formats": ["%d/%m/%Y"]},
            },
            "rules": {"pos": "id > 0"},
            "max_bad_fraction": 0.1,
        }
    )
    assert read.to_dict() == built.to_dict()
    assert read.fingerprint() == built.fingerprint()
    assert Contract.from_dict({"name": "t", "columns": {"x": "int64"}}).columns == {
        "x": Column("int64")
    }


YAML_ERRORS = [
    (
        "name: t\ncolumns:\n  a: {type: int64, maxx: 3}\n",
        "contract, line 3, at columns.a.maxx: 'maxx' is not a known key. Did you mean 'max'?",
    ),
    (
        "name: t\ncolumns:\n  a:\n    type: int64\n    max: three\n",
        "contract, line 5, at columns.a.max: The 'max' parameter of Column must be an integer "
        "that fits int64. Got 'three'.",
    ),
    ("name: t\ncolumns:\n  a: {type: int64\n", "contract, line 4, column 1: not valid YAML"),
    (
        "name: t\ncolumns:\n  a: int65\n",
        "contract, line 3, at columns.a.type: The 'type' parameter of Column must be one of int32",
    ),
    (
        "name: t\ncolumns:\n  a: string\nrules:\n  r1: a >\n",
        "contract, line 5, at rules.r1: Rule 'r1' of contract 't' is not a valid SQL expression",
    ),
    (
        "name: t\ncolumns:\n  a: {type: string, allowed: [NO, SE]}\n",
        "at columns.a.allowed: The 'allowed' parameter of Column must be a string (quote values "
        "such as 'NO' in YAML). Got False.",
    ),
    (
        "name: t\ncolumns:\n  a: {type: bool, true_values: [yes]}\n",
        "must be a list of strings (quote values such as 'yes' in YAML). Got True.",
    ),
    ("name: t\ncolumns:\n  a: string\n  a: int64\n", "line 4: key 'a' appears twice in columns"),
    (
        "name: t\ncolumns:\n  a: date\nfreshness: {column: a, max_age: 2 days}\n",
        "contract, line 4, at freshness.max_age: A duration must be a number with a unit",
    ),
    (
        "name: t\ncolumns:\n  a: date\nvolume: {min_row: 3}\n",
        "at volume.min_row: 'min_row' is not a known key. Did you mean 'min_rows'?",
    ),
    (
        "name: t\ncolumns:\n  a: date\nunique: [[b]]\n",
        "contract, line 4, at unique: The 'unique' parameter of Contract 't' must be keys of "
        "declared columns ('a'). Got 'b'.",
    ),
    (
        "name: t\ncolumns:\n  a: date\non_bad: stop\n",
        "at on_bad: The 'on_bad' parameter of Contract 't' must be 'fail' or 'warn'. Got 'stop'.",
    ),
    ("columns:\n  a: date\n", "contract, line 1: the key 'name' is missing."),
    ("- a\n", "expected a mapping with keys such as name, columns, unique"),
    ("", "expected a mapping"),
]


@pytest.mark.parametrize(("text", "message"), YAML_ERRORS)
def test_bad_yaml_names_the_key_and_line(text: str, message: str) -> None:
    with pytest.raises(ContractError) as info:
        Contract.from_yaml(text)
    assert message in str(info.value)


def test_a_yaml_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("name: t\ncolumns:\n  a: {type: int64, min: 5, max: 1}\n")
    with pytest.raises(ContractError) as info:
        Contract.from_yaml(str(path))
    assert str(info.value).startswith(f"{path}, line 3, at columns.a.min: The 'min' parameter")
    assert (info.value.line, info.value.path) == (3, str(path))  # type: ignore[attr-defined]
    with pytest.raises(ContractError, match="Cannot read the contract file"):
        Contract.from_yaml(tmp_path / "missing.yaml")


def test_what_yaml_cannot_hold_is_refused_when_written() -> None:
    with pytest.raises(ContractError, match="Polars expressions and cannot be written as YAML"):
        Contract("t", {"x": Column("int64")}, rules={"r": pl.col("x") > 0}).to_yaml()
    with pytest.raises(ContractError, match="cannot be written as YAML"):
        Contract("t", {"x": Column("int64", allowed_from=[1, 2])}).to_yaml()


def test_the_fingerprint_follows_the_definition_and_the_reference_values(tmp_path: Path) -> None:
    path = tmp_path / "codes.csv"
    path.write_text("code\nAA\n")

    def make(**kwargs: Any) -> Contract:
        column = Column("string", allowed_from=(str(path), "code"), **kwargs)
        return Contract("t", {"c": column})

    base = make().fingerprint()
    assert make().fingerprint() == base
    assert make(nullable=False).fingerprint() != base
    path.write_text("code\nAA\nUA\n")
    assert make().fingerprint() != base


COLUMN_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"type": "integer"}, "'type' parameter of Column must be one of int32"),
    (
        {"type": "string", "thousands": ","},
        "'thousands' parameter of Column applies only to int32, int64, float64 columns",
    ),
    ({"type": "int64", "thousands": "1"}, "'thousands' parameter of Column must be one character"),
    (
        {"type": "float64", "thousands": ",", "decimal": ","},
        "'thousands' parameter of Column must be different from 'decimal'",
    ),
    ({"type": "int64", "min": 5, "max": 1}, "'min' parameter of Column must not exceed 'max'"),
    ({"type": "int32", "max": 2**31}, "'max' parameter of Column must be an integer that fits"),
    ({"type": "int64", "min": True}, "an integer that fits int64. Got True"),
    ({"type": "bool", "min": True}, "'min' parameter of Column applies only to int32"),
    (
        {"type": "string", "pattern": "(?<=a)b"},
        "'pattern' parameter of Column must be a regular expression in Rust syntax",
    ),
    (
        {"type": "datetime", "timezone": "Mars/Olympus"},
        "'timezone' parameter of Column must be an IANA time zone",
    ),
    ({"type": "date", "timezone": "UTC"}, "'timezone' parameter of Column applies only to"),
    ({"type": "date", "formats": ["%Y-%m-%Q"]}, "'formats' parameter of Column must be strftime"),
    ({"type": "datetime", "formats": ["%Y-%m-%d %H"]}, "must be a valid format"),
    ({"type": "datetime", "formats": "%Y"}, "'formats' parameter of Column must be a list of"),
    ({"type": "bool", "true_values": ["1"], "false_values": ["1"]}, "disjoint from 'false_values'"),
    (
        {"type": "string", "allowed": ["a"], "allowed_from": ["a"]},
        "'allowed_from' parameter of Column must be unset",
    ),
    (
        {"type": "string", "allowed_from": ("a", "b", "c")},
        "'allowed_from' parameter of Column must be a Series",
    ),
    ({"type": "string", "nullable": "no"}, "'nullable' parameter of Column must be true or false"),
]


@pytest.mark.parametrize(("kwargs", "message"), COLUMN_ERRORS)
def test_column_parameters_are_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ContractError, match=re.escape(message)):
        Column(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"columns": {}}, "'columns' parameter of Contract 't' must be a non-empty mapping"),
        ({"columns": {LOCATION: Column("int64")}}, "keyed by column names"),
        ({"unique": [["nope"]]}, "keys of declared columns"),
        ({"freshness": Freshness("x", timedelta(days=1))}, "about a declared date or datetime"),
        ({"max_bad_fraction": 1.5}, "'max_bad_fraction' parameter of Contract 't' must be a"),
        ({"schema": "loose"}, "'schema' parameter of Contract 't' must be 'fail' or 'additive'"),
    ],
)
def test_contract_parameters_are_checked(kwargs: dict[str, Any], message: str) -> None:
    kwargs.setdefault("columns", {"x": Column("int64")})
    with pytest.raises(ContractError, match=re.escape(message)):
        Contract("t", **kwargs)


def test_dataset_check_parameters_are_checked() -> None:
    with pytest.raises(ContractError, match="'max_age' parameter of Freshness must be a positive"):
        Freshness("t", timedelta(0))
    with pytest.raises(ContractError, match="'min_rows' parameter of Volume must be set"):
        Volume()
    with pytest.raises(ContractError, match="'min_ratio' parameter of Volume must be at most"):
        Volume(min_ratio=2, max_ratio=1)


def test_a_one_column_key_may_be_written_as_a_string() -> None:
    contract = Contract("t", {"a": Column("int64"), "b": Column("int64")}, unique=["a"])
    assert contract.keys == (("a",),)
    assert passed(check(contract, {"a": ["1", "1"], "b": ["1", "2"]}), "b") == [1]


# -- the property: every row is accounted for ------------------------------------------------------

# Each column draws text values labelled with the rule they break (None: valid), with the
# value the rule sees. Valid values are drawn four times as often, so that rows passing
# every other rule (and so claiming keys) are common.
QTY_OK = st.one_of(
    st.integers(0, 100).map(lambda n: (str(n), None, n)),
    st.sampled_from([("", None, None), (" 7 ", None, 7)]),
)
QTY_BAD = st.sampled_from(
    [
        ("101", "max", 101),
        ("-1", "min", -1),
        ("abc", "type", None),
        ("9999999999", "type", None),
        ("1,5", "type", None),
    ]
)
PRICE_OK = st.one_of(
    st.floats(0, 1e6, allow_nan=False).map(lambda f: (repr(f), None, f)),
    st.sampled_from([("", None, None), ("2e3", None, 2000.0)]),
)
PRICE_BAD = st.sampled_from(
    [
        ("-0.5", "min", -0.5),
        ("NaN", "type", None),
        ("inf", "type", None),
        ("1e400", "type", None),
        ("1,5", "type", None),
    ]
)
CODE_OK = st.sampled_from([("A", None, "A"), ("B", None, "B"), ("C", None, "C")])
CODE_BAD = st.sampled_from([("D", "allowed", "D"), ("", "nullable", None)])
ID_OK = st.integers(0, 5).map(lambda n: (str(n), None, n))
ID_BAD = st.sampled_from([("", "nullable", None), ("x", "type", None), ("1.0", "type", None)])


def _mostly(ok: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keep = st.sampled_from([True, True, True, True, False])
    return st.tuples(keep, ok, bad).map(lambda t: t[1] if t[0] else t[2])


ROW = st.tuples(
    _mostly(ID_OK, ID_BAD),
    _mostly(QTY_OK, QTY_BAD),
    _mostly(PRICE_OK, PRICE_BAD),
    _mostly(CODE_OK, CODE_BAD),
)
LINE = st.tuples(st.sampled_from([True] * 5 + [False]), ROW).map(
    lambda t: t[1] if t[0] else "reject"
)

PROPERTY_CONTRACT = Contract(
    "prop",
    {
        "id": Column("int64", nullable=False, unique=True),
        "qty": Column("int32", min=0, max=100),
        "price": Column("float64", min=0),
        "code": Column("string", nullable=False, allowed=["A", "B", "C"]),
    },
    rules={"big_orders_are_a": "qty IS NULL OR qty <= 50 OR code = 'A'"},
    max_bad_fraction=1.0,
)


def _rule_holds(qty: int | None, code: str | None) -> bool:
    """SQL's three-valued OR: only a definite false breaks the rule."""
    parts = [qty is None, None if qty is None else qty <= 50, None if code is None else code == "A"]
    return any(p is True for p in parts) or not all(p is False for p in parts)


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.lists(LINE, max_size=12), min_size=1, max_size=5))
def test_every_row_is_accounted_for(chunks: list[list[Any]]) -> None:
    names = list(PROPERTY_CONTRACT.columns)
    validator = PROPERTY_CONTRACT.validator()
    lines = [line for lines_of_chunk in chunks for line in lines_of_chunk]
    outcome: dict[int, tuple[str, str, str | None]] = {}
    passed_rows: list[dict[str, Any]] = []
    lo = 0
    for lines_of_chunk in chunks:
        rows = [(i + 2, line) for i, line in enumerate(lines_of_chunk, start=lo)]
        lo += len(lines_of_chunk)
        data = [(loc, line) for loc, line in rows if line != "reject"]
        rejected = [loc for loc, line in rows if line == "reject"]
        table = pa.table(
            {
                n: pa.array([line[j][0] for _, line in data], pa.string())
                for j, n in enumerate(names)
            }
        )
        checked = validator.check(
            Chunk.of(
                table,
                source="p.csv",
                locations=[loc for loc, _ in data],
                rejects=rejects_table(rejected, ["raw"] * len(rejected), ["bad"] * len(rejected)),
            )
        )
        assert checked.passed.num_rows + checked.quarantined.num_rows == len(rows)
        for row in checked.quarantined.to_pylist():
            assert row["reason"]
            assert row["location"] not in outcome
            outcome[row["location"]] = ("quarantined", row["rule"], row["column"])
        for row in checked.passed.to_pylist():
            assert row[LOCATION] not in outcome
            outcome[row[LOCATION]] = ("passed", "", None)
            passed_rows.append(row)
    assert set(outcome) == {i + 2 for i in range(len(lines))}

    # An independent oracle: the first rule each line breaks, in the documented order.
    seen: set[int] = set()
    for i, line in enumerate(lines):
        if line == "reject":
            assert outcome[i + 2] == ("quarantined", "parse", None)
            continue
        broken = [
            (RULE_ORDER.index(label), j, label, names[j])
            for j, (_, label, _) in enumerate(line)
            if label is not None
        ]
        qty, code = line[1][2] if line[1][1] != "type" else None, line[3][2]
        expected: tuple[str, str, str | None]
        if broken:
            _, _, label, column = min(broken)
            expected = ("quarantined", label, column)
        elif not _rule_holds(qty, code):
            expected = ("quarantined", "rule:big_orders_are_a", None)
        elif line[0][2] in seen:
            expected = ("quarantined", "unique", "id")
        else:
            seen.add(line[0][2])
            expected = ("passed", "", None)
        assert outcome[i + 2] == expected, (line, outcome[i + 2])

    # Passed rows satisfy every rule.
    ids = [row["id"] for row in passed_rows]
    assert len(ids) == len(set(ids))
    assert None not in ids
    for row in passed_rows:
        assert row["qty"] is None or 0 <= row["qty"] <= 100
        assert row["price"] is None or (math.isfinite(row["price"]) and row["price"] >= 0)
        assert row["code"] in ("A", "B", "C")
        assert _rule_holds(row["qty"], row["code"])

    summary = validator.finish(now=NOW, previous_rows=None)
    assert summary.rows_read == len(lines) == summary.rows_passed + summary.rows_quarantined
    assert sum(summary.rule_counts.values()) == summary.rows_quarantined
    assert isinstance(summary, Summary)


def test_validator_is_the_public_type() -> None:
    assert isinstance(PROPERTY_CONTRACT.validator(), Validator)
