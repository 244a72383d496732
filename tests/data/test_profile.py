"""Profiles: exact statistics on known data, every column kind, and the merge property.

The property tests split random data at random points, profile each piece and merge:
the result must be the whole's profile, exactly for counts, min and max, within float
tolerance for mean and std, and within the sketch's rank error for quantiles.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import re
from datetime import UTC, date, datetime, timedelta

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from loopline.data.profile import (
    EXACT_DISTINCT,
    FREQUENT_ITEMS,
    BooleanProfile,
    NullProfile,
    NumericProfile,
    OtherProfile,
    Profile,
    QuantileSketch,
    StringProfile,
    TemporalProfile,
    _string_hashes,
    profile_table,
    render_profile,
)
from loopline.errors import ContractError

RANKS = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0]
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _numeric(profile: Profile, name: str) -> NumericProfile:
    column = profile[name]
    assert isinstance(column, NumericProfile)
    return column


def _strings(profile: Profile, name: str) -> StringProfile:
    column = profile[name]
    assert isinstance(column, StringProfile)
    return column


def _merged(table: pa.Table, cuts: list[int]) -> Profile:
    """The profile of ``table`` built from pieces cut at ``cuts`` and merged in order."""
    bounds = [0, *sorted(cuts), table.num_rows]
    total = Profile.empty()
    for start, stop in itertools.pairwise(bounds):
        total = total.merge(profile_table(table.slice(start, stop - start)))
    return total


def assert_rank_error(values: np.ndarray, sketch: QuantileSketch) -> None:
    """Each quantile's true rank is within the sketch's rank error of the one asked for."""
    ordered = np.sort(values)
    n = len(ordered)
    for rank, value in zip(RANKS, sketch.quantiles(RANKS), strict=True):
        below = np.searchsorted(ordered, value, side="left") / n
        at_or_below = np.searchsorted(ordered, value, side="right") / n
        assert below - sketch.rank_error <= rank <= at_or_below + sketch.rank_error, (
            rank,
            value,
            below,
            at_or_below,
        )


def assert_same_distribution(
    merged: NumericProfile, whole: NumericProfile, values: np.ndarray
) -> None:
    """``merged`` agrees with ``whole``: exactly where promised, else within tolerance."""
    for attribute in ("rows", "nulls", "nans", "pos_inf", "neg_inf", "count", "min", "max"):
        assert getattr(merged, attribute) == getattr(whole, attribute), attribute
    finite = values[np.isfinite(values)]
    scale = float(np.abs(finite).max()) if len(finite) else 0.0
    assert merged.moments.n == whole.moments.n == len(finite)
    if len(finite):
        assert merged.mean == pytest.approx(float(finite.mean()), rel=1e-9, abs=1e-12 * scale)
    if len(finite) > 1:
        expected = float(finite.std(ddof=1))
        assert merged.std == pytest.approx(expected, rel=1e-6, abs=1e-9 * scale)
    assert merged.sketch.n == len(values)
    if len(values):
        assert_rank_error(values, merged.sketch)


# -- exact statistics on known data ------------------------------------------------------------


def test_integer_column_statistics_are_exact() -> None:
    profile = profile_table(pa.table({"month": [1, 2, 3, 4, None]}))
    month = _numeric(profile, "month")
    assert (profile.rows, month.rows, month.nulls, month.count) == (5, 5, 1, 4)
    assert (month.min, month.max) == (1, 4)
    assert isinstance(month.min, int)
    assert month.mean == 2.5
    assert month.std == pytest.approx(math.sqrt(5 / 3))
    assert month.quantiles([0.0, 0.25, 0.5, 0.75, 1.0]) == [1.0, 1.0, 2.0, 3.0, 4.0]
    assert month.dtype == "int64"


def test_nan_and_infinities_are_counted_apart_from_nulls() -> None:
    values = [1.0, math.nan, math.inf, -math.inf, None, 3.0, math.nan]
    delay = _numeric(profile_table(pa.table({"delay": values})), "delay")
    assert (delay.rows, delay.nulls, delay.nans, delay.pos_inf, delay.neg_inf) == (7, 1, 2, 1, 1)
    assert delay.count == 4  # -inf, 1, 3, inf
    assert (delay.min, delay.max) == (-math.inf, math.inf)
    # Mean and std cover the finite values only.
    assert delay.mean == 2.0
    assert delay.std == pytest.approx(math.sqrt(2))
    assert delay.quantiles([0.0, 0.5, 1.0]) == [-math.inf, 1.0, math.inf]


def test_quantile_sketch_is_exact_until_it_compacts() -> None:
    values = np.random.default_rng(7).normal(size=150)
    sketch = QuantileSketch.of(values)
    expected = np.quantile(values, RANKS, method="inverted_cdf")
    assert sketch.quantiles(RANKS) == pytest.approx(list(expected))
    edges = [-1.0, 0.0, 1.0]
    counts = np.histogram(values, bins=[-np.inf, *edges, np.inf])[0]
    assert sketch.histogram(edges) == pytest.approx(list(counts))
    assert sketch.cdf([0.0]) == [np.count_nonzero(values <= 0) / 150]


def test_quantile_sketch_of_a_million_values_is_small_and_within_its_rank_error() -> None:
    values = np.random.default_rng(3).lognormal(0, 2, size=1_000_000)
    sketch = QuantileSketch.of(values)
    assert sketch.n == 1_000_000
    assert len(sketch.to_bytes()) < 8 * 3 * sketch.k + 256
    assert sketch.rank_error == pytest.approx(0.0133, abs=1e-4)
    assert_rank_error(values, sketch)


def test_quantile_sketch_checks_what_it_is_given() -> None:
    sketch = QuantileSketch.of(np.arange(10.0))
    with pytest.raises(ValueError, match="'edges' parameter"):
        sketch.histogram([2.0, 1.0])
    with pytest.raises(ContractError, match="k=200 and k=100"):
        sketch.merge(QuantileSketch.of(np.arange(3.0), k=100))
    with pytest.raises(ValueError, match="truncated"):
        QuantileSketch.from_bytes(sketch.to_bytes()[:-8])
    empty = QuantileSketch()
    assert all(math.isnan(q) for q in empty.quantiles([0.5]))
    assert empty.histogram([1.0]) == [0.0, 0.0]
    assert empty.merge(sketch) == sketch == sketch.merge(empty)


def test_boolean_column() -> None:
    flag = profile_table(pa.table({"cancelled": [True, False, None, True]}))["cancelled"]
    assert isinstance(flag, BooleanProfile)
    assert (flag.rows, flag.nulls, flag.trues, flag.falses) == (4, 1, 2, 1)


def test_string_column_counts_lengths_and_top_values() -> None:
    values = ["UA", "AA", "UA", None, "", "B6", "UA", "AA"]
    carrier = _strings(profile_table(pa.table({"carrier": values})), "carrier")
    assert (carrier.rows, carrier.nulls, carrier.count) == (8, 1, 7)
    assert carrier.top(2) == [("UA", 3), ("AA", 2)]
    assert carrier.top() == [("UA", 3), ("AA", 2), ("", 1), ("B6", 1)]
    assert (carrier.distinct, carrier.distinct_is_exact, carrier.frequent_error) == (4, True, 0)
    assert (carrier.min_length, carrier.max_length, carrier.total_length) == (0, 2, 12)
    assert carrier.mean_length == pytest.approx(12 / 7)


@pytest.mark.parametrize(
    "array",
    [
        pa.array(["b", "a", None, "b"]).dictionary_encode(),
        pa.array(["b", "a", None, "b"], pa.large_string()),
        pa.array(["b", "a", None, "b"], pa.string_view()),
    ],
    ids=["dictionary", "large_string", "string_view"],
)
def test_categorical_and_other_string_types_are_strings(array: pa.Array) -> None:
    column = _strings(profile_table(pa.table({"c": array})), "c")
    assert (column.nulls, column.top()) == (1, [("b", 2), ("a", 1)])


def test_polars_enum_and_categorical_are_strings() -> None:
    frame = pl.DataFrame(
        {
            "enum": pl.Series(["x", "y", "x"], dtype=pl.Enum(["x", "y"])),
            "cat": pl.Series(["p", "p", None], dtype=pl.Categorical),
        }
    )
    profile = profile_table(frame)
    assert _strings(profile, "enum").top() == [("x", 2), ("y", 1)]
    assert _strings(profile, "cat").top() == [("p", 2)]


def test_a_column_with_many_values_is_sketched() -> None:
    rng = np.random.default_rng(11)
    ids = [f"user-{i}" for i in rng.integers(0, 20_000, size=60_000)] + ["hot"] * 6_000
    column = _strings(profile_table(pa.table({"user": ids})), "user")
    true_distinct = len(set(ids))
    assert not column.distinct_is_exact
    assert column.counts is None
    assert column.distinct == pytest.approx(true_distinct, rel=0.05)
    # Only values surely above the sketch's error are listed, with their counts within it.
    (value, count), *_ = column.top()
    assert value == "hot"
    assert abs(count - 6_000) <= column.frequent_error


def test_dates_and_datetimes_use_the_epoch_scale() -> None:
    table = pa.table(
        {
            "day": pa.array([date(2013, 1, 1), date(2013, 1, 3), None]),
            "at": pa.array(
                [datetime(2013, 1, 1, 5, tzinfo=UTC), datetime(2013, 1, 1, 7, tzinfo=UTC), None],
                pa.timestamp("ns", tz="UTC"),
            ),
            "naive": pa.array([datetime(1969, 12, 31, 23, 59)], pa.timestamp("s")).take([0, 0, 0]),
        }
    )
    profile = profile_table(table)
    day, at, naive = profile["day"], profile["at"], profile["naive"]
    assert isinstance(day, TemporalProfile)
    assert isinstance(at, TemporalProfile)
    assert isinstance(naive, TemporalProfile)
    assert (day.unit, day.min, day.max, day.nulls) == ("day", 15706, 15708, 1)
    assert day.value_at(day.quantiles([0.5])[0]) == date(2013, 1, 1)
    assert day.value_at(day.mean or 0) == date(2013, 1, 2)
    assert (at.unit, at.tz, at.dtype) == ("us", "UTC", "datetime[ns, UTC]")
    assert at.value_at(at.max or 0) == datetime(2013, 1, 1, 7, tzinfo=UTC)
    assert at.std == pytest.approx(timedelta(hours=math.sqrt(2)).total_seconds() * 1e6)
    assert naive.value_at(naive.min or 0) == datetime(1969, 12, 31, 23, 59)


def test_a_datetime_with_a_time_zone_is_shown_in_that_zone() -> None:
    new_york = pa.array(
        [datetime(2013, 1, 1, 5, tzinfo=UTC)], pa.timestamp("us", "America/New_York")
    )
    column = profile_table(pa.table({"at": new_york}))["at"]
    assert isinstance(column, TemporalProfile)
    shown = column.value_at(column.min or 0)
    assert isinstance(shown, datetime)
    assert shown.utcoffset() == timedelta(hours=-5)
    assert shown.astimezone(UTC) == datetime(2013, 1, 1, 5, tzinfo=UTC)
    fixed = pa.array([datetime(2013, 1, 1, tzinfo=UTC)], pa.timestamp("us", "+02:00"))
    offset = profile_table(pa.table({"at": fixed}))["at"]
    assert isinstance(offset, TemporalProfile)
    assert offset.value_at(offset.min or 0) == datetime(2013, 1, 1, tzinfo=UTC)


def test_other_kinds_null_columns_and_the_location_column() -> None:
    table = pa.table(
        {
            "tags": pa.array([[1], None, []]),
            "nothing": pa.nulls(3),
            "blob": pa.array([b"x", b"y", None]),
            "_location": pa.array([2, 3, 4], pa.int64()),
        }
    )
    profile = profile_table(table)
    assert list(profile.columns) == ["tags", "nothing", "blob"]
    assert isinstance(profile["tags"], OtherProfile)
    assert isinstance(profile["nothing"], NullProfile)
    assert (profile["tags"].nulls, profile["nothing"].nulls, profile["blob"].nulls) == (1, 3, 1)


def test_empty_table_and_all_null_columns() -> None:
    empty = profile_table(
        pa.table({"x": pa.array([], pa.float64()), "s": pa.array([], pa.string())})
    )
    assert empty.rows == 0
    x = _numeric(empty, "x")
    assert (x.count, x.min, x.max, x.mean, x.std) == (0, None, None, None, None)
    assert all(math.isnan(q) for q in x.quantiles([0.5]))
    s = _strings(empty, "s")
    assert (s.count, s.distinct, s.top(), s.min_length, s.mean_length) == (0, 0, [], None, None)

    nulls = profile_table(pa.table({"x": pa.array([None, None], pa.float64())}))
    x = _numeric(nulls, "x")
    assert (x.rows, x.nulls, x.count, x.min, x.mean) == (2, 2, 0, None, None)
    assert Profile.from_json(nulls.to_json()) == nulls

    nothing = profile_table(pa.table({}))
    assert (nothing.rows, dict(nothing.columns)) == (0, {})
    assert Profile.from_json(nothing.to_json()) == nothing


def test_polars_and_arrow_input_give_the_same_profile() -> None:
    table = pa.table({"x": [1.5, None, 2.5], "s": ["a", "b", None], "b": [True, None, False]})
    assert profile_table(pl.from_arrow(table)).to_json() == profile_table(table).to_json()  # type: ignore[arg-type]
    assert profile_table(table.to_batches()[0]) == profile_table(table)


def test_bad_input_is_reported() -> None:
    with pytest.raises(TypeError, match="'table' parameter of profile_table"):
        profile_table([1, 2])  # type: ignore[arg-type]
    repeated = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
    with pytest.raises(ContractError, match="repeated column names: a"):
        profile_table(repeated)
    with pytest.raises(KeyError, match="has no column 'b'; it has: x"):
        profile_table(pa.table({"x": [1]}))["b"]


# -- merging ------------------------------------------------------------------------------------

MAYBE_FLOATS = st.one_of(
    st.none(),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0]),
    st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
)


@PROPERTY
@given(
    values=st.lists(MAYBE_FLOATS, max_size=300),
    cuts=st.lists(st.integers(0, 300), max_size=6),
)
def test_merged_float_partitions_give_the_whole_profile(
    values: list[float | None], cuts: list[int]
) -> None:
    table = pa.table({"x": pa.array(values, pa.float64())})
    cuts = [min(c, len(values)) for c in cuts]
    whole, merged = profile_table(table), _merged(table, cuts)
    present = np.array([v for v in values if v is not None and not math.isnan(v)], np.float64)
    assert_same_distribution(_numeric(merged, "x"), _numeric(whole, "x"), present)


SHAPES = ["normal", "lognormal", "integers", "constant", "bimodal"]


def _sample(rng: np.random.Generator, shape: str, size: int) -> np.ndarray:
    if shape == "normal":
        return rng.normal(5, 3, size)
    if shape == "lognormal":
        return rng.lognormal(0, 3, size)
    if shape == "integers":
        return rng.integers(-5, 50, size).astype(np.float64)
    if shape == "constant":
        return np.full(size, 7.25)
    return np.concatenate([rng.normal(0, 1, size // 2), rng.normal(1e9, 1, size - size // 2)])


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 20_000),
    pieces=st.integers(1, 40),
    shape=st.sampled_from(SHAPES),
)
def test_merged_large_partitions_keep_quantiles_within_the_rank_error(
    seed: int, size: int, pieces: int, shape: str
) -> None:
    rng = np.random.default_rng(seed)
    values = _sample(rng, shape, size)
    table = pa.table({"x": values})
    cuts = sorted(rng.integers(0, size + 1, pieces - 1).tolist())
    merged = _numeric(_merged(table, cuts), "x")
    assert_same_distribution(merged, _numeric(profile_table(table), "x"), values)


@pytest.mark.parametrize("shape", SHAPES)
def test_many_chunks_of_a_large_column_merge_within_the_rank_error(shape: str) -> None:
    rng = np.random.default_rng(len(shape))
    values = _sample(rng, shape, 300_000)
    table = pa.table({"x": values})
    cuts = sorted(rng.integers(0, len(values) + 1, 63).tolist())
    merged = _numeric(_merged(table, cuts), "x")
    assert len(merged.sketch.to_bytes()) < 8 * 3 * merged.sketch.k + 256
    assert_same_distribution(merged, _numeric(profile_table(table), "x"), values)


@PROPERTY
@given(
    values=st.lists(st.one_of(st.none(), st.integers(-(2**62), 2**62)), max_size=200),
    cuts=st.lists(st.integers(0, 200), max_size=5),
)
def test_merged_integer_partitions_keep_exact_min_and_max(
    values: list[int | None], cuts: list[int]
) -> None:
    table = pa.table({"n": pa.array(values, pa.int64())})
    merged = _numeric(_merged(table, [min(c, len(values)) for c in cuts]), "n")
    present = [v for v in values if v is not None]
    assert (merged.count, merged.nulls) == (len(present), len(values) - len(present))
    assert (merged.min, merged.max) == ((min(present), max(present)) if present else (None, None))


@PROPERTY
@given(
    values=st.lists(
        st.one_of(st.none(), st.sampled_from(["UA", "AA", "B6", "", "é"])), max_size=200
    ),
    flags=st.lists(st.one_of(st.none(), st.booleans()), min_size=200, max_size=200),
    cuts=st.lists(st.integers(0, 200), max_size=5),
)
def test_merged_string_and_boolean_partitions_are_exact(
    values: list[str | None], flags: list[bool | None], cuts: list[int]
) -> None:
    table = pa.table({"carrier": pa.array(values, pa.string()), "flag": flags[: len(values)]})
    merged = _merged(table, [min(c, len(values)) for c in cuts])
    # Exact below EXACT_DISTINCT values: the same bytes as the whole's profile.
    assert merged.to_json() == profile_table(table).to_json()


def test_merging_past_the_exact_limit_switches_to_sketches() -> None:
    half = EXACT_DISTINCT // 2 + 100
    first = pa.table({"v": [f"a{i}" for i in range(half)] + ["hot"] * 500})
    second = pa.table({"v": [f"b{i}" for i in range(half)] + ["hot"] * 500})
    a, b = profile_table(first), profile_table(second)
    assert _strings(a, "v").distinct_is_exact
    assert _strings(b, "v").distinct_is_exact
    merged = _strings(a.merge(b), "v")
    assert not merged.distinct_is_exact
    assert merged.distinct == pytest.approx(2 * half + 1, rel=0.05)
    assert merged.top(1) == [("hot", 1000)]
    assert (merged.count, merged.total_length) == (2 * half + 1000, a["v"].total_length * 2)  # type: ignore[attr-defined]

    # A sketched side absorbs an exact side, in either order.
    exact = profile_table(pa.table({"v": ["hot"] * 10 + ["new"]}))
    for combined in (a.merge(b).merge(exact), exact.merge(a.merge(b))):
        column = _strings(combined, "v")
        assert column.top(1) == [("hot", 1010)]
        assert column.distinct == pytest.approx(2 * half + 2, rel=0.05)


def test_string_hashes_are_pinned_and_independent_of_the_array_layout() -> None:
    # Sketches stored by one version merge with the next one's only if the hash stays.
    values = ["", "a", "loopline", "é" * 5, "x" * 300]
    assert [hex(h) for h in _string_hashes(pa.array(values)).tolist()] == [
        "0xa4cf055a784af0ea",
        "0x289f5d6298b9916e",
        "0xe1ee9239dc514d4d",
        "0x719df96e41447dd8",
        "0x1546d9cac139b512",
    ]
    long = hashlib.blake2b(b"x" * 300, digest_size=8).digest()
    assert int(_string_hashes(pa.array(["x" * 300]))[0]) == int.from_bytes(long, "little")
    texts = ["".join(chr(97 + (i * j) % 26) for j in range(i)) for i in range(300)]
    whole = _string_hashes(pa.array(texts, pa.large_string()))
    assert len(set(whole.tolist())) == len(texts)
    assert np.array_equal(_string_hashes(pa.array(texts[5:50])), whole[5:50])
    assert np.array_equal(_string_hashes(pa.array(texts).slice(5, 45)), whole[5:50])


def test_distinct_counts_past_the_exact_limit_are_exact_below_the_sketch_size() -> None:
    values = [f"v{i % 3_000}" for i in range(9_000)]
    table = pa.table({"v": values})
    whole = _strings(profile_table(table), "v")
    assert (whole.distinct_is_exact, whole.distinct) == (False, 3_000)
    # The smallest hashes of a union do not depend on how the rows were split.
    for cuts in ([1], [4_500], [100, 2_000, 8_999]):
        assert _strings(_merged(table, cuts), "v").distinct_sketch == whole.distinct_sketch


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    exponent=st.floats(1.05, 2.5),
    cuts=st.lists(st.integers(0, 6_000), max_size=6),
)
def test_frequent_values_of_merged_parts_stay_within_the_stated_error(
    seed: int, exponent: float, cuts: list[int]
) -> None:
    rng = np.random.default_rng(seed)
    values = np.char.add("k", rng.zipf(exponent, 6_000).astype(str))
    table = pa.table({"v": pa.array(values)})
    truth = dict(zip(*np.unique(values, return_counts=True), strict=True))
    column = _strings(_merged(table, cuts), "v")
    if column.counts is not None:
        assert dict(column.counts) == truth
        return
    error = column.frequent_error
    assert error <= len(values) / (FREQUENT_ITEMS + 1)
    listed = dict(column.frequent)
    for value, count in truth.items():
        assert listed.get(value, 0) <= count <= listed.get(value, 0) + error
    top = column.top(len(truth))
    for value, reported in top:
        assert error < reported - error <= truth[value] <= reported
    # Every value more frequent than twice the error is surely listed.
    assert {v for v, n in truth.items() if n > 2 * error} <= {v for v, _ in top}


def test_merge_is_associative() -> None:
    rng = np.random.default_rng(5)
    size = 30_000

    def piece() -> pa.Table:
        return pa.table(
            {
                "x": rng.normal(100, 15, size),
                "s": pa.array(rng.choice(["a", "b", "c"], size)),
                "day": pa.array(rng.integers(15000, 16000, size).astype("datetime64[D]")),
            }
        )

    a, b, c = (profile_table(piece()) for _ in range(3))
    left, right = a.merge(b).merge(c), a.merge(b.merge(c))
    assert left["s"] == right["s"]
    for name in ("x", "day"):
        one, other = left[name], right[name]
        assert isinstance(one, NumericProfile | TemporalProfile)
        assert isinstance(other, NumericProfile | TemporalProfile)
        assert (one.rows, one.nulls, one.min, one.max) == (
            other.rows,
            other.nulls,
            other.min,
            other.max,
        )
        assert one.mean == pytest.approx(other.mean, rel=1e-12)
        assert one.std == pytest.approx(other.std, rel=1e-9)
        ranks = [0.05, 0.5, 0.95]
        # Both within the rank error of the truth, so within twice of each other.
        bound = 2 * one.sketch.rank_error
        for q_one, q_other in zip(one.quantiles(ranks), other.quantiles(ranks), strict=True):
            assert abs(one.sketch.cdf([q_other])[0] - one.sketch.cdf([q_one])[0]) <= bound


def test_columns_missing_from_a_partition_count_as_null() -> None:
    a = profile_table(pa.table({"x": [1, 2], "only_a": ["p", "q"]}))
    b = profile_table(pa.table({"only_b": [True], "x": [3]}))
    merged = a.merge(b)
    assert list(merged.columns) == ["x", "only_a", "only_b"]
    assert (merged["only_a"].rows, merged["only_a"].nulls) == (3, 1)
    assert (merged["only_b"].rows, merged["only_b"].nulls) == (3, 2)
    assert Profile.empty().merge(a) == a == a.merge(Profile.empty())


def test_a_typeless_null_partition_takes_the_other_kind() -> None:
    typed = profile_table(pa.table({"x": [1.5, 2.5]}))
    typeless = profile_table(pa.table({"x": pa.nulls(3)}))
    for merged in (typed.merge(typeless), typeless.merge(typed)):
        x = _numeric(merged, "x")
        assert (x.rows, x.nulls, x.min, x.max, x.dtype) == (5, 3, 1.5, 2.5, "float64")


def test_ints_and_floats_merge_and_record_both_types() -> None:
    merged = profile_table(pa.table({"x": [1, 5]})).merge(profile_table(pa.table({"x": [2.5]})))
    x = _numeric(merged, "x")
    assert (x.dtype, x.min, x.max, x.mean) == ("float64 | int64", 1, 5, pytest.approx(17 / 6))


def test_incompatible_kinds_do_not_merge() -> None:
    numbers = profile_table(pa.table({"x": [1]}))
    with pytest.raises(
        ContractError, match=r"Column 'x' is int64 \(numeric\) in one profile and string"
    ):
        numbers.merge(profile_table(pa.table({"x": ["1"]})))
    dates = profile_table(pa.table({"x": [date(2013, 1, 1)]}))
    moments = profile_table(pa.table({"x": pa.array([0], pa.timestamp("us"))}))
    with pytest.raises(ContractError, match="dates in one profile and datetimes"):
        dates.merge(moments)


# -- JSON -------------------------------------------------------------------------------------


def _every_kind(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "f": np.where(rng.random(rows) < 0.1, np.nan, rng.normal(0, 1e3, rows)),
            "i": pa.array(rng.integers(0, 10, rows)),
            "u64": pa.array(np.full(rows, 2**64 - 1, np.uint64)),
            "b": pa.array(rng.random(rows) < 0.5),
            "s": pa.array(rng.choice(["x", "y", "[bold]z"], rows)),
            "id": pa.array([f"id{i}" for i in rng.integers(0, 5000, rows)]),
            "d": pa.array(rng.integers(0, 20000, rows).astype("datetime64[D]")),
            "t": pa.array(rng.integers(0, 2**40, rows).astype("datetime64[us]")),
            "l": pa.array([[1, 2]] * rows),
            "n": pa.nulls(rows),
            "inf": pa.array(np.full(rows, np.inf)),
        }
    )


def test_json_round_trips_exactly_and_is_deterministic() -> None:
    table = _every_kind(20_000)
    profile = _merged(table, [5_000, 12_345])
    data = profile.to_json()
    again = Profile.from_json(data)
    assert again == profile
    assert again.to_json() == data
    assert _merged(table, [5_000, 12_345]).to_json() == data  # same data and chunks: same bytes
    assert profile_table(table).to_json() == profile_table(table).to_json()
    decoded = orjson.loads(data)
    assert decoded["format"] == "loopline.profile/2"
    assert [c["kind"] for c in decoded["columns"]] == [
        "numeric",
        "numeric",
        "numeric",
        "boolean",
        "string",
        "string",
        "temporal",
        "temporal",
        "other",
        "null",
        "numeric",
    ]
    assert _numeric(again, "u64").max == 2**64 - 1
    assert _numeric(again, "inf").min == math.inf


def test_integers_beyond_64_bits_round_trip() -> None:
    big = pl.DataFrame({"x": pl.Series([-(2**100), 2**100], dtype=pl.Int128)})
    profile = profile_table(big)
    assert Profile.from_json(profile.to_json()) == profile
    assert (_numeric(profile, "x").min, _numeric(profile, "x").max) == (-(2**100), 2**100)


def _with_column(**fields: object) -> bytes:
    """A profile whose one column has the common fields and ``fields``."""
    common = {"name": "x", "dtype": "?", "rows": 1, "nulls": 0, "min": 1, "max": 1}
    column = {**common, "moments": [1, 1.0, 0.0], "min_length": 1, "max_length": 1}
    column = {**column, "total_length": 1, **fields}
    return orjson.dumps({"format": "loopline.profile/2", "rows": 1, "columns": [column]})


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"format": "something/else", "rows": 0, "columns": []}',
        b'{"format": "loopline.profile/1", "rows": 0, "columns": []}',  # the DataSketches era
        b'{"format": "loopline.profile/2", "rows": 1, "columns": [{"kind": "mystery"}]}',
        b'{"format": "loopline.profile/2", "rows": 1, "columns": [{"kind": "numeric"}]}',
        _with_column(kind="numeric", nans=0, pos_inf=0, neg_inf=0, quantiles="AAAA"),
        _with_column(kind="string", frequent="AAAA", frequent_error=0, distinct=""),
        _with_column(kind="string", frequent=[["a", 0]], frequent_error=0, distinct=""),
        _with_column(kind="string", frequent=[], frequent_error=-1, distinct=""),
        _with_column(kind="string", frequent=[], frequent_error=0, distinct="AAAA"),
        # two hashes, not in increasing order
        _with_column(
            kind="string", frequent=[], frequent_error=0, distinct="AgAAAAAAAAABAAAAAAAAAA=="
        ),
    ],
)
def test_bytes_that_are_not_a_profile_are_reported(data: bytes) -> None:
    with pytest.raises(ContractError, match="not a loopline profile"):
        Profile.from_json(data)


# -- rendering --------------------------------------------------------------------------------


def _render(profile: Profile) -> str:
    console = Console(width=100, record=True, file=io.StringIO())
    console.print(render_profile(profile))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


def test_render_shows_every_column_with_its_statistics_in_100_columns() -> None:
    text = _render(profile_table(_every_kind(5_000)))
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100
    assert lines[0] == "5,000 rows, 11 columns"
    for heading in ("numbers", "dates and times", "strings and booleans", "other columns"):
        assert heading in lines
    for header in ("count", "nulls", "min", "p50", "p95", "max", "mean", "std", "top values"):
        assert header in text
    rows = {line.split()[0]: line for line in lines if line and not line.startswith(" ")}
    for name in ("f", "i", "u64", "b", "s", "id", "d", "t", "l", "n", "inf"):
        assert name in rows, name
    assert rows["s"].split()[1:3] == ["str", "5,000"]
    assert "[bold]z" in rows["s"]  # data is never read as markup
    assert "~" in rows["id"].split()[4]  # an estimated distinct count
    assert rows["i"].split()[1] == "i64"
    notes = r"NaN, not counted: f [\d,]+\. Infinite, left out of mean and std: inf 5,000 \+inf\."
    assert re.search(notes, text)


def test_render_of_known_values() -> None:
    table = pa.table(
        {
            "delay": [1.0, 2.0, 3.0, 4.0, None],
            "carrier": ["UA", "UA", "AA", None, "UA"],
            "day": [date(2013, 1, 1), date(2013, 1, 2), None, None, date(2013, 2, 1)],
        }
    )
    rows = {
        line.split()[0]: line.split() for line in _render(profile_table(table)).splitlines() if line
    }
    assert rows["delay"] == ["delay", "f64", "4", "20%", "1", "2", "4", "4", "2.5", "1.29"]
    assert rows["carrier"] == ["carrier", "str", "4", "20%", "2", "UA", "75%", "AA", "25%"]
    assert rows["day"] == ["day", "date", "3", "40%", "2013-01-01", "2013-01-02", "2013-02-01"]


def test_render_of_an_empty_profile() -> None:
    text = _render(profile_table(pa.table({"x": pa.array([], pa.float64())})))
    assert text.splitlines()[0] == "0 rows, 1 columns"
    assert "x" in text


def test_profiles_of_many_columns_stay_readable() -> None:
    wide = pa.table({f"column_with_a_long_name_{i}": np.arange(10.0) * 1e6 for i in range(100)})
    text = _render(profile_table(wide))
    assert max(map(len, text.splitlines())) <= 100
    assert text.count("column_with_a_long_") == 100
