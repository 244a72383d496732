"""Profiles: per-column statistics of a dataset version, mergeable across partitions.

A ``Profile`` is computed for each chunk of a dataset (``profile_table``) and the profiles
of the chunks merge (``Profile.merge``) into the profile of the whole, so the work fans
out over partitions and no step gathers the data. Merging is associative:

- exact for row, null, NaN and infinity counts, for min and max, for booleans, and for the
  category counts of a string column while it has at most ``EXACT_DISTINCT`` values;
- within float tolerance for mean and standard deviation (Chan et al.'s parallel update);
- within the KLL rank error for quantiles (``QuantileSketch.rank_error``, 1.33% at the
  default k of 200); for a string column with more values, within ``frequent_error``
  rows (at most rows / 1,025) for the top values, and within about 1.6% for the distinct
  count (exact below ``DISTINCT_K`` values but for 64-bit hash collisions).

Histograms are not stored: they are computed from the quantile sketch on demand, at any
bin edges (``QuantileSketch.histogram``), so that a drift check can bin two versions at
the same edges (the reference's quantiles, say) and compare them.

The JSON form (``Profile.to_json``) round-trips exactly and is deterministic: the same
data in the same chunks gives the same bytes, so a profile step rebuilt from the same
dataset version stores the same artifact. That is why the quantile sketch is our own
KLL (see docs/decisions/0009-profile-sketches.md), and why the string sketches are too
(vectorized, see docs/decisions/0012-ingest-throughput.md).

Examples
--------
>>> profile = profile_table(pa.table({"delay": [3.0, None, 12.5], "carrier": ["UA", "AA", "UA"]}))
>>> profile["delay"].nulls, profile["delay"].max
(1, 12.5)
>>> profile["carrier"].top(1)
[('UA', 2)]
>>> whole = profile.merge(profile_table(pa.table({"delay": [40.0]})))
>>> whole.rows, whole["delay"].count, whole["carrier"].nulls
(4, 3, 1)
>>> Profile.from_json(whole.to_json()) == whole
True
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import cached_property
from typing import Any, ClassVar, Literal, Self, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import datasketches
import numpy as np
import numpy.typing as npt
import orjson
import polars as pl
import pyarrow as pa
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from loopline.data.sources.base import LOCATION
from loopline.errors import ContractError

__all__ = [
    "DEFAULT_K",
    "DISTINCT_K",
    "EXACT_DISTINCT",
    "FREQUENT_ITEMS",
    "BooleanProfile",
    "ColumnProfile",
    "Moments",
    "NullProfile",
    "NumericProfile",
    "OtherProfile",
    "Profile",
    "QuantileSketch",
    "StringProfile",
    "TemporalProfile",
    "profile_table",
    "render_profile",
]

FORMAT = "loopline.profile/2"
DEFAULT_K = 200
"""The quantile sketch's size parameter: about 3k values kept, rank error 1.33%."""
EXACT_DISTINCT = 1024
"""A string column keeps exact counts per value while it has at most this many values."""
FREQUENT_ITEMS = 1024
"""The values a sketched string column's frequent-items summary keeps at most: its counts
are within rows / 1,025 of the true counts."""
DISTINCT_K = 4096
"""The hashes a sketched string column keeps for its distinct count: about 1.6% error."""

_MIN_CAPACITY = 8
_SHRINK = 2 / 3
_SKETCH_HEADER = struct.Struct("<4sIQI")
_SKETCH_MAGIC = b"LLQ1"


# -- quantiles ----------------------------------------------------------------------------


def _capacity(k: int, height: int, levels: int) -> int:
    """KLL's level capacities: k at the top, shrinking by 2/3 per level below."""
    return max(_MIN_CAPACITY, int(k * _SHRINK ** (levels - 1 - height) + 0.5))


def _coin(items: np.ndarray, height: int, n: int) -> int:
    """Which half a compaction keeps: a bit hashed from the data, not from a clock.

    The library's KLL draws this bit from a generator seeded with the time, so the same
    data gives different sketches on every run; a hash of (a sample of) the sorted items
    is as good a coin for data that is not adversarial, and the same on every run.
    """
    step = max(1, len(items) // 64)
    digest = hashlib.blake2b(
        items[::step].tobytes(), digest_size=8, salt=struct.pack("<QQ", height, n)
    ).digest()
    return digest[0] & 1


def _compress(levels: list[np.ndarray], k: int, n: int) -> list[np.ndarray]:
    """Compact levels, lowest first, until the retained items fit the total capacity."""
    while True:
        depth = len(levels)
        if sum(map(len, levels)) <= sum(_capacity(k, h, depth) for h in range(depth)):
            return levels
        height = next(h for h in range(depth) if len(levels[h]) >= _capacity(k, h, depth))
        if height == depth - 1:
            levels.append(np.empty(0, np.float64))
        items = levels[height]
        kept = items[:0]
        if len(items) % 2:
            kept, items = items[:1], items[1:]
        if len(items) > 1 and not bool(np.all(items[:-1] <= items[1:])):
            # A level made of one promoted half is sorted already: checking is O(n),
            # sorting again is not (a chunk of n values is halved about log2(n/k) times).
            items = np.sort(items)
        # Every other item, at twice the weight: each query's rank moves by at most one
        # item's weight, up or down with the coin.
        promoted = items[_coin(items, height, n) :: 2]
        levels[height] = kept
        levels[height + 1] = np.concatenate([levels[height + 1], promoted])


@dataclass(frozen=True)
class QuantileSketch:
    """A KLL quantile sketch (Karnin, Lang and Liberty) that is deterministic and mergeable.

    Items at level ``h`` stand for ``2**h`` values each. The algorithm and its level
    capacities are those of Apache DataSketches' ``kll_doubles_sketch``, and so is its
    rank error (``rank_error``); only the compaction coin differs (see ``_coin``).

    Examples
    --------
    >>> sketch = QuantileSketch.of(np.arange(1.0, 101.0))
    >>> sketch.quantiles([0.0, 0.5, 1.0])
    [1.0, 50.0, 100.0]
    >>> sketch.cdf([10.0])
    [0.1]
    >>> sketch.histogram([25.0, 75.0])
    [25.0, 50.0, 25.0]
    """

    k: int = DEFAULT_K
    n: int = 0
    levels: tuple[bytes, ...] = ()
    """Little-endian float64 items per level; level ``h`` weighs ``2**h``."""

    @classmethod
    def of(cls, values: np.ndarray, *, k: int = DEFAULT_K) -> QuantileSketch:
        """A sketch of ``values`` (float64, without NaN; ±inf are ordered as usual)."""
        array = np.ascontiguousarray(values, dtype=np.float64)
        return cls._from_levels([array], k=k, n=len(array))

    @classmethod
    def _from_levels(cls, levels: list[np.ndarray], *, k: int, n: int) -> QuantileSketch:
        levels = _compress(levels, k, n)
        while levels and not len(levels[-1]):
            levels.pop()
        return cls(k=k, n=n, levels=tuple(level.astype("<f8").tobytes() for level in levels))

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """The sketch of both inputs; ``k`` must match."""
        if other.k != self.k:
            raise ContractError(
                f"Quantile sketches with k={self.k} and k={other.k} cannot be merged: "
                "profile both datasets with the same k."
            )
        if not other.n:
            return self
        if not self.n:
            return other
        mine, theirs = self._arrays, other._arrays
        depth = max(len(mine), len(theirs))
        levels = [
            np.concatenate([side[h] for side in (mine, theirs) if h < len(side)])
            for h in range(depth)
        ]
        return QuantileSketch._from_levels(levels, k=self.k, n=self.n + other.n)

    @property
    def rank_error(self) -> float:
        """The normalized rank error of ``quantiles`` and ``cdf`` (99% confidence)."""
        return float(datasketches.kll_doubles_sketch.get_normalized_rank_error(self.k, False))

    @cached_property
    def _arrays(self) -> list[np.ndarray]:
        return [np.frombuffer(level, dtype="<f8") for level in self.levels]

    @cached_property
    def _sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """All items in order, and the cumulative weight up to and including each."""
        items = np.concatenate([*self._arrays, np.empty(0, np.float64)])
        weights = np.concatenate(
            [np.full(len(a), 1 << h, np.int64) for h, a in enumerate(self._arrays)]
            + [np.empty(0, np.int64)]
        )
        order = np.argsort(items, kind="stable")
        return items[order], np.cumsum(weights[order])

    def quantiles(self, ranks: Sequence[float]) -> list[float]:
        """The smallest value whose rank (share of values <= it) reaches each of ``ranks``.

        NaN for every rank when the sketch is empty.
        """
        if not self.n:
            return [math.nan] * len(ranks)
        items, cumulative = self._sorted
        # The relative slack keeps r * n from rounding up past an exact boundary.
        targets = np.asarray(ranks, np.float64) * self.n * (1 - 1e-12)
        index = np.minimum(np.searchsorted(cumulative, targets, side="left"), len(items) - 1)
        return [float(v) for v in items[index]]

    def cdf(self, points: Sequence[float]) -> list[float]:
        """The share of values <= each point; NaN for every point when empty."""
        if not self.n:
            return [math.nan] * len(points)
        items, cumulative = self._sorted
        index = np.searchsorted(items, np.asarray(points, np.float64), side="right")
        below = np.where(index > 0, cumulative[np.maximum(index - 1, 0)], 0)
        return [float(v) / self.n for v in below]

    def histogram(self, edges: Sequence[float]) -> list[float]:
        """Estimated counts in the bins ``(-inf, e0], (e0, e1], ..., (e_last, inf)``.

        Two sketches binned at the same edges (a reference version's deciles, say) give
        comparable histograms, whatever their sizes; exact while nothing was compacted.
        """
        bounds = np.asarray(edges, np.float64)
        if np.isnan(bounds).any() or (np.diff(bounds) < 0).any():
            raise ValueError(
                "The 'edges' parameter of QuantileSketch.histogram must be increasing numbers. "
                f"Got {list(edges)!r}."
            )
        if not self.n:
            return [0.0] * (len(edges) + 1)
        shares = np.diff(np.concatenate([[0.0], self.cdf(edges), [1.0]]))
        return [float(v) * self.n for v in shares]

    def to_bytes(self) -> bytes:
        """A compact, deterministic binary form."""
        sizes = struct.pack(f"<{len(self.levels)}I", *(len(b) // 8 for b in self.levels))
        header = _SKETCH_HEADER.pack(_SKETCH_MAGIC, self.k, self.n, len(self.levels))
        return header + sizes + b"".join(self.levels)

    @classmethod
    def from_bytes(cls, data: bytes) -> QuantileSketch:
        magic, k, n, depth = _SKETCH_HEADER.unpack_from(data)
        if magic != _SKETCH_MAGIC:
            raise ValueError("not a loopline quantile sketch")
        offset = _SKETCH_HEADER.size
        sizes = struct.unpack_from(f"<{depth}I", data, offset)
        offset += 4 * depth
        levels = []
        for size in sizes:
            levels.append(data[offset : offset + 8 * size])
            offset += 8 * size
        if offset != len(data) or sum(len(b) // 8 << h for h, b in enumerate(levels)) != n:
            raise ValueError("quantile sketch bytes are truncated or inconsistent")
        return cls(k=k, n=n, levels=tuple(levels))


# -- moments ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations of finite values, merged exactly enough.

    Examples
    --------
    >>> a, b = Moments.of(np.array([1.0, 2.0])), Moments.of(np.array([3.0, 4.0]))
    >>> a.merge(b).mean, round(a.merge(b).std or 0, 6)
    (2.5, 1.290994)
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        """Moments of finite float64 ``values``: two passes, pairwise sums."""
        if not len(values):
            return cls()
        with np.errstate(over="ignore", invalid="ignore"):  # near float64's limits: inf
            mean = float(values.mean())
            m2 = float(np.square(values - mean).sum())
        return cls(n=len(values), mean=mean, m2=m2)

    def merge(self, other: Moments) -> Moments:
        """Chan, Golub and LeVeque's parallel update: stable for partitions of any size."""
        if not other.n:
            return self
        if not self.n:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + delta * delta * (self.n / n) * other.n
        return Moments(n=n, mean=mean, m2=m2)

    @property
    def std(self) -> float | None:
        """The sample standard deviation (n - 1 in the denominator); None below 2 values."""
        return math.sqrt(max(self.m2, 0.0) / (self.n - 1)) if self.n > 1 else None


# -- columns ------------------------------------------------------------------------------

Number = int | float


def _union_dtype(a: str, b: str) -> str:
    """Both type names when partitions disagree (int64 here, float64 there)."""
    if a == b:
        return a
    return " | ".join(sorted(set(a.split(" | ")) | set(b.split(" | "))))


_N = TypeVar("_N", bound=float)


def _lesser(a: _N | None, b: _N | None) -> _N | None:
    return b if a is None else a if b is None else min(a, b)


def _greater(a: _N | None, b: _N | None) -> _N | None:
    return b if a is None else a if b is None else max(a, b)


@dataclass(frozen=True)
class ColumnProfile:
    """What every column's profile has: its name, type, rows and nulls."""

    kind: ClassVar[str] = ""
    name: str
    dtype: str
    """The column's type, as Polars names it in short (``int64``, ``datetime[us, UTC]``)."""
    rows: int
    nulls: int

    @property
    def count(self) -> int:
        """Rows with a value (for numbers: neither null nor NaN)."""
        return self.rows - self.nulls

    def merge(self, other: ColumnProfile) -> ColumnProfile:
        """The profile of both partitions' values of this column.

        A column that is all null and typeless in one partition (``NullProfile``) takes
        the other's kind. Otherwise the kinds must match.
        """
        if other.name != self.name:
            raise ValueError(f"Cannot merge column {other.name!r} into column {self.name!r}.")
        if isinstance(other, NullProfile):
            return self.with_nulls(other.rows)
        if isinstance(self, NullProfile):
            return other.with_nulls(self.rows)
        if type(other) is not type(self):
            raise ContractError(
                f"Column {self.name!r} is {self.dtype} ({self.kind}) in one profile and "
                f"{other.dtype} ({other.kind}) in the other, so they cannot be merged. "
                "Cast the column to one type in every partition (or in the contract) and "
                "profile again.",
                column=self.name,
            )
        return self._merge(other)

    def with_nulls(self, rows: int) -> Self:
        """This profile with ``rows`` more rows that are null (a partition lacking it)."""
        return replace(self, rows=self.rows + rows, nulls=self.nulls + rows)

    def _merge(self, other: Self) -> Self:
        return replace(
            self,
            dtype=_union_dtype(self.dtype, other.dtype),
            rows=self.rows + other.rows,
            nulls=self.nulls + other.nulls,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "dtype": self.dtype,
            "rows": self.rows,
            "nulls": self.nulls,
        }

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(**_common(data))


def _common(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": str(data["name"]),
        "dtype": str(data["dtype"]),
        "rows": int(data["rows"]),
        "nulls": int(data["nulls"]),
    }


@dataclass(frozen=True)
class NullProfile(ColumnProfile):
    """A column with no type of its own (Polars' Null): every value is null."""

    kind: ClassVar[str] = "null"


@dataclass(frozen=True)
class OtherProfile(ColumnProfile):
    """A column of a kind not profiled beyond counts (lists, structs, binary, durations)."""

    kind: ClassVar[str] = "other"


@dataclass(frozen=True)
class BooleanProfile(ColumnProfile):
    """A boolean column: how many values are true."""

    kind: ClassVar[str] = "boolean"
    trues: int = 0

    @property
    def falses(self) -> int:
        return self.count - self.trues

    def _merge(self, other: Self) -> Self:
        return replace(super()._merge(other), trues=self.trues + other.trues)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "trues": self.trues}

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(**_common(data), trues=int(data["trues"]))


def _encode_number(value: Number | None) -> Any:
    """A number as JSON: NaN, infinities and integers beyond 64 bits as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return str(value)
    return value


def _decode_number(value: Any) -> Number | None:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return float(value)
    if value is None or isinstance(value, int | float):
        return value
    raise ValueError(f"expected a number, got {value!r}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass(frozen=True)
class _Distribution(ColumnProfile):
    """Shared by numbers and times: min, max, moments and a quantile sketch."""

    min: Number | None = None
    max: Number | None = None
    moments: Moments = field(default_factory=Moments)
    sketch: QuantileSketch = field(default_factory=QuantileSketch)

    @property
    def mean(self) -> float | None:
        return self.moments.mean if self.moments.n else None

    @property
    def std(self) -> float | None:
        return self.moments.std

    def quantiles(self, ranks: Sequence[float]) -> list[float]:
        """Approximate quantiles (within ``sketch.rank_error``); NaN when there are none."""
        return self.sketch.quantiles(ranks)

    def _merge(self, other: Self) -> Self:
        return replace(
            super()._merge(other),
            min=_lesser(self.min, other.min),
            max=_greater(self.max, other.max),
            moments=self.moments.merge(other.moments),
            sketch=self.sketch.merge(other.sketch),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "min": _encode_number(self.min),
            "max": _encode_number(self.max),
            "moments": [
                self.moments.n,
                _encode_number(self.moments.mean),
                _encode_number(self.moments.m2),
            ],
            "quantiles": _b64(self.sketch.to_bytes()),
        }

    @classmethod
    def _distribution(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        n, mean, m2 = data["moments"]
        return {
            **_common(data),
            "min": _decode_number(data["min"]),
            "max": _decode_number(data["max"]),
            "moments": Moments(
                n=int(n), mean=float(_decode_number(mean) or 0), m2=float(_decode_number(m2) or 0)
            ),
            "sketch": QuantileSketch.from_bytes(_unb64(data["quantiles"])),
        }


@dataclass(frozen=True)
class NumericProfile(_Distribution):
    """An integer, float or decimal column.

    ``min``, ``max`` and the quantiles cover every value that is neither null nor NaN,
    infinities included; ``mean`` and ``std`` cover the finite values only. NaN is counted
    apart from null (``nans``), and so are the infinities (``pos_inf``, ``neg_inf``).
    """

    kind: ClassVar[str] = "numeric"
    nans: int = 0
    pos_inf: int = 0
    neg_inf: int = 0

    @property
    def count(self) -> int:
        return self.rows - self.nulls - self.nans

    def _merge(self, other: Self) -> Self:
        return replace(
            super()._merge(other),
            nans=self.nans + other.nans,
            pos_inf=self.pos_inf + other.pos_inf,
            neg_inf=self.neg_inf + other.neg_inf,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "nans": self.nans,
            "pos_inf": self.pos_inf,
            "neg_inf": self.neg_inf,
        }

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            **cls._distribution(data),
            nans=int(data["nans"]),
            pos_inf=int(data["pos_inf"]),
            neg_inf=int(data["neg_inf"]),
        )


_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True)
class TemporalProfile(_Distribution):
    """A date or datetime column, profiled on the epoch scale.

    Dates count days since 1970-01-01 (``unit="day"``); datetimes count microseconds
    (``unit="us"``, UTC for a column with a time zone), so that every value is exact in
    float64. ``value_at`` turns a number on that scale back into a date or datetime.
    """

    kind: ClassVar[str] = "temporal"
    unit: Literal["day", "us"] = "us"
    tz: str | None = None

    def value_at(self, epoch: float) -> date | datetime:
        """The date or datetime ``epoch`` stands for on this column's scale.

        A datetime of a column with a time zone is shown in that zone.
        """
        if self.unit == "day":
            return (_EPOCH + timedelta(days=math.floor(epoch))).date()
        moment = _EPOCH + timedelta(microseconds=round(epoch))
        if not self.tz:
            return moment
        try:
            zone: tzinfo = ZoneInfo(self.tz)
        except (ValueError, ZoneInfoNotFoundError):  # an offset such as +02:00, or unknown
            zone = UTC
        return moment.replace(tzinfo=UTC).astimezone(zone)

    def _merge(self, other: Self) -> Self:
        if other.unit != self.unit:
            raise ContractError(
                f"Column {self.name!r} holds dates in one profile and datetimes in the "
                "other, so they cannot be merged. Cast it to one type in every partition "
                "and profile again.",
                column=self.name,
            )
        # Values are UTC instants either way; a disagreement about the zone keeps UTC.
        tz = self.tz if self.tz == other.tz else "UTC"
        return replace(super()._merge(other), tz=tz)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "unit": self.unit, "tz": self.tz}

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any]) -> Self:
        unit = data["unit"]
        if unit not in ("day", "us"):
            raise ValueError(f"unknown temporal unit {unit!r}")
        tz = data["tz"]
        return cls(**cls._distribution(data), unit=unit, tz=None if tz is None else str(tz))


Counts = tuple[tuple[str, int], ...]


def _sorted_counts(counts: Mapping[str, int]) -> Counts:
    """Most frequent first, ties by value: one order for the same counts."""
    return tuple(sorted(counts.items(), key=_by_count))


def _reduced(ranked: Counts, error: int) -> tuple[Counts, int]:
    """A frequent-items summary of at most ``FREQUENT_ITEMS`` values, from ranked counts.

    Misra and Gries' reduction, as Agarwal et al. merge it: take the count of the value
    ranked ``FREQUENT_ITEMS + 1`` off every count, and drop the values left with none.
    Every value's count falls by at most that much, added to ``error``; each reduction
    takes it from at least ``FREQUENT_ITEMS + 1`` counts, so the error never exceeds
    rows / (``FREQUENT_ITEMS`` + 1).
    """
    if len(ranked) <= FREQUENT_ITEMS:
        return ranked, error
    cut = ranked[FREQUENT_ITEMS][1]
    return tuple((v, n - cut) for v, n in ranked if n > cut), error + cut


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
_SEED = np.uint64(0x6C6F6F706C696E65)
_ALL_BITS = np.uint64(0xFFFFFFFFFFFFFFFF)
_SHIFTS = (np.uint64(30), np.uint64(27), np.uint64(31))
_LONG_TEXT = 256
"""Values longer than this (in bytes) are hashed by BLAKE2b, one call each."""


def _mix(h: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's finalizer: a bijection of 64-bit values that spreads every bit."""
    h ^= h >> _SHIFTS[0]
    h *= _MIX[0]
    h ^= h >> _SHIFTS[1]
    h *= _MIX[1]
    h ^= h >> _SHIFTS[2]
    return h


def _string_hashes(values: pa.Array) -> npt.NDArray[np.uint64]:
    """A 64-bit hash of each (non-null) string's UTF-8 bytes, the same on every machine.

    Up to ``_LONG_TEXT`` bytes, the hash mixes the length, then each 8-byte little-endian
    word (the last one zero-padded) in turn, vectorized over the values that have that
    many words; a longer value is hashed by BLAKE2b. Defined here, not borrowed from a
    library whose hash may change between versions: sketches stored by one version must
    merge with those of the next.
    """
    if values.type != pa.large_string():
        values = values.cast(pa.large_string())
    count = len(values)
    _, offset_buffer, data_buffer = values.buffers()
    offsets = np.frombuffer(offset_buffer, np.int64, count=count + 1, offset=values.offset * 8)
    data = np.zeros(0, np.uint8) if data_buffer is None else np.frombuffer(data_buffer, np.uint8)
    # Eight zero bytes past the end, so that every word can be loaded whole; then the
    # (unaligned, overlapping) 64-bit word that starts at each byte.
    padded = np.concatenate([data[: int(offsets[-1])], np.zeros(8, np.uint8)])
    words = np.ndarray(shape=(len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    lengths = np.diff(offsets)
    hashes = np.empty(count, np.uint64)
    short = np.flatnonzero(lengths <= _LONG_TEXT)
    word_counts = (lengths[short] + 7) // 8
    # Longest first: the values still being hashed at each word are a prefix.
    order = short[np.argsort(-word_counts, kind="stable")]
    at, left = offsets[order], lengths[order]
    with np.errstate(over="ignore"):
        h = _SEED ^ (left.astype(np.uint64) * _GOLDEN)
        longer = len(order) - np.cumsum(np.bincount(word_counts, minlength=1))
        for active in longer.tolist():
            if active <= 0:
                break
            word = words[at[:active]]
            tail = np.flatnonzero(left[:active] < 8)
            if len(tail):
                keep = (8 - left[tail]).astype(np.uint64) * np.uint64(8)
                word[tail] &= _ALL_BITS >> keep
            h[:active] = _mix(h[:active] ^ word)
            at[:active] += 8
            left[:active] -= 8
        hashes[order] = _mix(h + _GOLDEN)
    for index in np.flatnonzero(lengths > _LONG_TEXT).tolist():
        text = data[int(offsets[index]) : int(offsets[index + 1])].tobytes()
        digest = hashlib.blake2b(text, digest_size=8).digest()
        hashes[index] = int.from_bytes(digest, "little")
    return hashes


def _smallest(hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The ``DISTINCT_K`` smallest distinct hashes, sorted."""
    if len(hashes) > DISTINCT_K:
        smallest = np.unique(np.partition(hashes, DISTINCT_K - 1)[:DISTINCT_K])
        if len(smallest) == DISTINCT_K:
            return smallest
    return np.unique(hashes)[:DISTINCT_K]


def _hash_bytes(hashes: npt.NDArray[np.uint64]) -> bytes:
    return hashes.astype("<u8").tobytes()


def _hashes_of(data: bytes) -> npt.NDArray[np.uint64]:
    return np.frombuffer(data, dtype="<u8").astype(np.uint64)


@dataclass(frozen=True)
class StringProfile(ColumnProfile):
    """A string or categorical column: value lengths, top values and distinct values.

    While the column has at most ``EXACT_DISTINCT`` distinct values, ``counts`` holds the
    exact count of each, and merges exactly. Past that, two sketches of our own, both
    vectorized and deterministic: a frequent-items summary (``frequent``: Misra and
    Gries', at most ``FREQUENT_ITEMS`` values, each count at most ``frequent_error`` below
    the true one, which is at most rows / 1,025), and for the distinct count the
    ``DISTINCT_K`` smallest 64-bit hashes of the values (a KMV sketch: exact below
    ``DISTINCT_K`` values but for hash collisions, then within about 1.6%). See
    docs/decisions/0012-ingest-throughput.md.
    """

    kind: ClassVar[str] = "string"
    counts: Counts | None = ()
    """Exact (value, count) pairs, most frequent first; None once past ``EXACT_DISTINCT``."""
    frequent: Counts = ()
    """Once ``counts`` is None: (value, count) pairs, most frequent first, each count at
    most ``frequent_error`` below the true count; a value left out has at most
    ``frequent_error`` rows."""
    frequent_error: int = 0
    """How far the counts of ``frequent`` and of ``top`` may be from the true counts (0
    while exact)."""
    distinct_sketch: bytes | None = None
    """Once ``counts`` is None: the smallest distinct 64-bit hashes of the values, at most
    ``DISTINCT_K``, sorted, as little-endian bytes."""
    min_length: int | None = None
    max_length: int | None = None
    total_length: int = 0
    """The sum of the values' lengths in characters: ``mean_length`` is exact."""

    @property
    def distinct(self) -> int:
        """The number of distinct values (exact, or estimated when ``counts`` is None)."""
        if self.counts is not None:
            return len(self.counts)
        hashes = _hashes_of(self.distinct_sketch or b"")
        if len(hashes) < DISTINCT_K:
            return len(hashes)
        # The k-th smallest of n uniform hashes is near k / n of the range: n ~ (k - 1) / u.
        kth = (float(hashes[DISTINCT_K - 1]) + 1.0) / 2.0**64
        return round((DISTINCT_K - 1) / kth)

    @property
    def distinct_is_exact(self) -> bool:
        return self.counts is not None

    @property
    def mean_length(self) -> float | None:
        return self.total_length / self.count if self.count else None

    def top(self, n: int = 10) -> list[tuple[str, int]]:
        """The ``n`` most frequent values and their counts.

        Exact while ``counts`` is kept. Past that, only values that are surely more
        frequent than ``frequent_error`` rows are listed, with counts at most that far
        above the true ones (exact for a value that was frequent in every part): a column
        whose values are all rarer (an id, say) lists none.
        """
        if self.counts is not None:
            return list(self.counts[:n])
        error = self.frequent_error
        return [(v, c + error) for v, c in self.frequent if c > error][:n]

    def _sketches(self) -> tuple[Counts, int, npt.NDArray[np.uint64]]:
        """The frequent-items summary, its error and the hashes, made from ``counts`` if
        exact."""
        if self.counts is not None:
            return _sketch_counts(self.counts)
        return self.frequent, self.frequent_error, _hashes_of(self.distinct_sketch or b"")

    def _merge(self, other: Self) -> Self:
        merged = replace(
            super()._merge(other),
            min_length=_lesser(self.min_length, other.min_length),
            max_length=_greater(self.max_length, other.max_length),
            total_length=self.total_length + other.total_length,
        )
        if self.counts is not None and other.counts is not None:
            counts = dict(self.counts)
            for value, count in other.counts:
                counts[value] = counts.get(value, 0) + count
            ranked = _sorted_counts(counts)
            if len(ranked) <= EXACT_DISTINCT:
                return replace(merged, counts=ranked)
            frequent, error, hashes = _sketch_counts(ranked)
        else:
            (mine, my_error, my_hashes), (theirs, their_error, their_hashes) = (
                self._sketches(),
                other._sketches(),
            )
            summed = dict(mine)
            for value, count in theirs:
                summed[value] = summed.get(value, 0) + count
            frequent, error = _reduced(_sorted_counts(summed), my_error + their_error)
            hashes = np.union1d(my_hashes, their_hashes)[:DISTINCT_K]
        return replace(
            merged,
            counts=None,
            frequent=frequent,
            frequent_error=error,
            distinct_sketch=_hash_bytes(hashes),
        )

    def to_dict(self) -> dict[str, Any]:
        data = {
            **super().to_dict(),
            "min_length": self.min_length,
            "max_length": self.max_length,
            "total_length": self.total_length,
        }
        if self.counts is not None:
            data["counts"] = [list(pair) for pair in self.counts]
        else:
            data["frequent"] = [list(pair) for pair in self.frequent]
            data["frequent_error"] = self.frequent_error
            data["distinct"] = _b64(self.distinct_sketch or b"")
        return data

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any]) -> Self:
        common = {
            **_common(data),
            "min_length": None if data["min_length"] is None else int(data["min_length"]),
            "max_length": None if data["max_length"] is None else int(data["max_length"]),
            "total_length": int(data["total_length"]),
        }
        if "counts" in data:
            counts = tuple((str(value), int(count)) for value, count in data["counts"])
            return cls(**common, counts=counts)
        frequent = tuple((str(value), int(count)) for value, count in data["frequent"])
        error = int(data["frequent_error"])
        hashes = _unb64(data["distinct"])
        # Fail here, not at first use, on sketches this code cannot have written.
        if len(hashes) % 8 or len(hashes) > 8 * DISTINCT_K:
            raise ValueError(f"a distinct-value sketch of {len(hashes)} bytes")
        ordered = _hashes_of(hashes)
        if np.any(ordered[1:] <= ordered[:-1]):
            raise ValueError("a distinct-value sketch whose hashes are not sorted")
        if len(frequent) > FREQUENT_ITEMS or error < 0 or any(n <= 0 for _, n in frequent):
            raise ValueError("a frequent-items summary with impossible counts")
        return cls(
            **common, counts=None, frequent=frequent, frequent_error=error, distinct_sketch=hashes
        )


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return (-item[1], item[0])


def _sketch_counts(ranked: Counts) -> tuple[Counts, int, npt.NDArray[np.uint64]]:
    """The frequent-items summary, its error and the smallest hashes of exact counts."""
    frequent, error = _reduced(ranked, 0)
    hashes = _smallest(_string_hashes(pa.array([v for v, _ in ranked], pa.large_string())))
    return frequent, error, hashes


_KINDS: dict[str, type[ColumnProfile]] = {
    cls.kind: cls
    for cls in (
        NullProfile,
        OtherProfile,
        BooleanProfile,
        NumericProfile,
        TemporalProfile,
        StringProfile,
    )
}


# -- profiles -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """Per-column statistics of a table; profiles of partitions merge into the whole's.

    Examples
    --------
    >>> a = profile_table(pa.table({"x": [1, 2]}))
    >>> b = profile_table(pa.table({"x": [3], "y": ["new"]}))
    >>> merged = a.merge(b)
    >>> merged.rows, merged["x"].max, merged["y"].nulls
    (3, 3, 2)
    >>> Profile.empty().merge(a) == a
    True
    """

    rows: int = 0
    columns: Mapping[str, ColumnProfile] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Profile:
        """The profile of no rows: merging it changes nothing."""
        return cls()

    def __getitem__(self, name: str) -> ColumnProfile:
        try:
            return self.columns[name]
        except KeyError:
            raise KeyError(
                f"The profile has no column {name!r}; it has: {', '.join(self.columns)}."
            ) from None

    def merge(self, other: Profile) -> Profile:
        """The profile of both tables' rows. Associative; see the module's docstring.

        A column that one side lacks counts as null in that side's rows. Columns keep
        the order in which they first appear.
        """
        columns: dict[str, ColumnProfile] = {}
        for name, column in self.columns.items():
            theirs = other.columns.get(name)
            columns[name] = (
                column.with_nulls(other.rows) if theirs is None else column.merge(theirs)
            )
        for name, column in other.columns.items():
            if name not in columns:
                columns[name] = column.with_nulls(self.rows)
        return Profile(rows=self.rows + other.rows, columns=columns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "rows": self.rows,
            "columns": [column.to_dict() for column in self.columns.values()],
        }

    def to_json(self) -> bytes:
        """The profile as JSON bytes: the same profile always gives the same bytes."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes | str) -> Profile:
        """The profile ``to_json`` wrote."""
        try:
            raw = orjson.loads(data)
            if raw.get("format") != FORMAT:
                raise ValueError(
                    f"format is {raw.get('format')!r}, expected {FORMAT!r} (a profile an "
                    "older loopline wrote is rebuilt by ingesting the dataset again)"
                )
            columns: dict[str, ColumnProfile] = {}
            for item in raw["columns"]:
                column = _KINDS[item["kind"]]._from_dict(item)
                columns[column.name] = column
            return cls(rows=int(raw["rows"]), columns=columns)
        except (
            LookupError,
            TypeError,
            ValueError,
            AttributeError,
            struct.error,
        ) as exc:
            raise ContractError(
                f"These bytes are not a loopline profile ({FORMAT}): {exc!s}. Profile the "
                "dataset again with 'loopline profile DATASET'.",
            ) from exc


def profile_table(table: pa.Table | pa.RecordBatch | pl.DataFrame) -> Profile:
    """The profile of one table, batch or chunk (its ``_location`` column left out).

    Every statistic is a vectorized Polars or NumPy aggregate over whole columns; profile
    large datasets chunk by chunk and ``merge`` the results.
    """
    if isinstance(table, pa.Table | pa.RecordBatch):
        names = table.schema.names
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ContractError(
                f"The table to profile has repeated column names: {', '.join(repeated)}. "
                "Rename them so that each column has one name.",
            )
        frame = _to_polars(table)
    elif isinstance(table, pl.DataFrame):
        frame = table
    else:
        raise TypeError(
            "The 'table' parameter of profile_table must be a pyarrow Table or "
            f"RecordBatch, or a polars DataFrame. Got {type(table).__name__}."
        )
    columns = {
        name: _profile_series(frame.get_column(name)) for name in frame.columns if name != LOCATION
    }
    return Profile(rows=frame.height, columns=columns)


def _to_polars(table: pa.Table | pa.RecordBatch) -> pl.DataFrame:
    """An Arrow table or batch as a DataFrame, its text columns by way of ``string_view``.

    Polars holds text as views; Arrow builds them from ``string`` columns in half the time
    Polars' own conversion takes, and Polars then takes them without a copy.
    """
    text = (pa.string(), pa.large_string())
    if any(kind in text for kind in table.schema.types):
        fields = [
            pa.field(f.name, pa.string_view(), f.nullable, f.metadata) if f.type in text else f
            for f in table.schema
        ]
        table = table.cast(pa.schema(fields, metadata=table.schema.metadata))
    converted = pl.from_arrow(table)
    return converted if isinstance(converted, pl.DataFrame) else converted.to_frame()


def _dtype_name(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Datetime):
        zone = f", {dtype.time_zone}" if dtype.time_zone else ""
        return f"datetime[{dtype.time_unit}{zone}]"
    if isinstance(dtype, pl.Decimal):
        return f"decimal({dtype.precision},{dtype.scale})"
    if isinstance(dtype, pl.Enum):
        return "enum"
    if dtype == pl.Boolean:
        return "bool"
    return str(dtype).lower()


def _profile_series(series: pl.Series) -> ColumnProfile:
    dtype = series.dtype
    common: dict[str, Any] = {
        "name": series.name,
        "dtype": _dtype_name(dtype),
        "rows": series.len(),
        "nulls": series.null_count(),
    }
    if dtype == pl.Null:
        return NullProfile(**common)
    if dtype == pl.Boolean:
        return BooleanProfile(**common, trues=int(series.sum()))
    if dtype.is_numeric():
        return _profile_numbers(series, common)
    if dtype == pl.Date or isinstance(dtype, pl.Datetime):
        return _profile_times(series, common)
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return _profile_strings(series.cast(pl.String), common)
    return OtherProfile(**common)


def _scalar(value: Any) -> Number | None:
    """A Polars min or max as a plain int or float (decimals become floats)."""
    if value is None or isinstance(value, int | float):
        return value
    return float(value)


def _profile_numbers(series: pl.Series, common: dict[str, Any]) -> NumericProfile:
    values = series.drop_nulls()
    nans = 0
    if values.dtype.is_float():
        is_nan = values.is_nan()
        nans = int(is_nan.sum())
        values = values.filter(~is_nan)
    array = values.cast(pl.Float64).to_numpy()
    finite = np.isfinite(array)
    return NumericProfile(
        **common,
        min=_scalar(values.min()),
        max=_scalar(values.max()),
        moments=Moments.of(array[finite]),
        sketch=QuantileSketch.of(array),
        nans=nans,
        pos_inf=int(np.count_nonzero(array == math.inf)),
        neg_inf=int(np.count_nonzero(array == -math.inf)),
    )


def _profile_times(series: pl.Series, common: dict[str, Any]) -> TemporalProfile:
    values = series.drop_nulls()
    dtype = series.dtype
    if isinstance(dtype, pl.Datetime):
        epoch, unit, tz = values.dt.cast_time_unit("us").cast(pl.Int64), "us", dtype.time_zone
    else:
        epoch, unit, tz = values.cast(pl.Int64), "day", None
    array = epoch.cast(pl.Float64).to_numpy()
    return TemporalProfile(
        **common,
        min=_scalar(epoch.min()),
        max=_scalar(epoch.max()),
        moments=Moments.of(array),
        sketch=QuantileSketch.of(array),
        unit=unit,  # type: ignore[arg-type]
        tz=tz,
    )


def _profile_strings(series: pl.Series, common: dict[str, Any]) -> StringProfile:
    values = series.drop_nulls()
    lengths = values.str.len_chars()
    length_stats: dict[str, Any] = {
        "min_length": lengths.min(),
        "max_length": lengths.max(),
        "total_length": int(lengths.sum()),
    }
    by_count = ["len", "value"], [True, False]
    if values.n_unique() <= EXACT_DISTINCT:
        grouped = pl.DataFrame({"value": values}).group_by("value").len()
        grouped = grouped.sort(by_count[0], descending=by_count[1])
        pairs = zip(grouped["value"].to_list(), grouped["len"].to_list(), strict=True)
        return StringProfile(**common, counts=tuple(pairs), **length_stats)
    # Many values: count them by hash (grouping them by value took three times as long),
    # then count by value only the few above the cut. Two values whose hashes collide
    # count as one here, which may move the cut but keeps its bound: every cut is still
    # taken from at least FREQUENT_ITEMS + 1 counts, and what is kept is exact by value.
    hashes = _string_hashes(values.to_arrow())
    distinct, counts = np.unique(hashes, return_counts=True)
    cut = _cut(counts)
    heavy = np.flatnonzero(np.isin(hashes, distinct[counts > cut]))
    kept = (
        pl.DataFrame({"value": values.gather(heavy)})
        .group_by("value")
        .len()
        .filter(pl.col("len") > cut)
        .sort(by_count[0], descending=by_count[1])
    )
    frequent = zip(kept["value"].to_list(), (kept["len"].to_numpy() - cut).tolist(), strict=True)
    return StringProfile(
        **common,
        counts=None,
        frequent=tuple(frequent),
        frequent_error=cut,
        distinct_sketch=_hash_bytes(distinct[:DISTINCT_K]),
        **length_stats,
    )


def _cut(counts: npt.NDArray[np.int64]) -> int:
    """The count ranked ``FREQUENT_ITEMS + 1`` (0 when there are no more values), which
    ``_reduced`` takes off every count."""
    if len(counts) <= FREQUENT_ITEMS:
        return 0
    # Counts are small integers: a histogram finds the rank without sorting them.
    at_least = np.cumsum(np.bincount(counts)[::-1])[::-1]  # values with count >= n
    return int(np.flatnonzero(at_least > FREQUENT_ITEMS)[-1])


# -- rendering ----------------------------------------------------------------------------


def _number(value: Number | None) -> str:
    """At most 8 characters: 3 significant digits, a short exponent when needed."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int) and abs(value) < 10**6:
        return str(value)
    text = f"{value:.3g}"
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else text


def _rows(count: int) -> str:
    """A row count as people read it: exact up to millions, then 12.3M, 4.5B."""
    if count < 10**7:
        return f"{count:,}"
    for scale, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M")):
        if count >= scale:
            return f"{count / scale:.1f}{suffix}"
    return str(count)  # pragma: no cover - every count >= 10**7 has a suffix above


_SHORT_TYPES = re.compile(r"^(u?)(int|float)(\d+)$")


def _short_type(dtype: str) -> str:
    """Polars' short type names (i64, f64, str), so the type column stays narrow."""
    match = _SHORT_TYPES.match(dtype)
    if match:
        return f"{match[1] or match[2][0]}{match[3]}"
    return {"string": "str", "categorical": "cat"}.get(dtype, dtype)


def _share(part: int, whole: int) -> str:
    if not whole:
        return "-"
    share = 100 * part / whole
    return f"{share:.0f}%" if share in (0, 100) or share >= 10 else f"{share:.1f}%"


def _when(column: TemporalProfile, epoch: Number | None) -> str:
    if epoch is None or (isinstance(epoch, float) and not math.isfinite(epoch)):
        return "-"
    try:
        value = column.value_at(epoch)
    except (OverflowError, ValueError):  # beyond what Python's datetime can show
        return _number(epoch)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return value.isoformat()


def _table(title: str, *headers: str) -> Table:
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    table.add_column("column", overflow="ellipsis", no_wrap=True, max_width=20)
    table.add_column("type", overflow="ellipsis", no_wrap=True, max_width=12)
    for header in headers:
        wide = header == "top values"
        table.add_column(header, justify="left" if wide else "right", no_wrap=not wide)
    return table


def _add_row(table: Table, column: ColumnProfile, *cells: str | Text) -> None:
    """A row that starts with the column's name, type, count and nulls.

    Names and values are ``Text`` so that a '[' in the data is not read as markup.
    """
    nulls = _share(column.nulls, column.rows)
    dtype = Text(_short_type(column.dtype))
    table.add_row(Text(column.name), dtype, _rows(column.count), nulls, *cells)


def _top_values(pairs: Sequence[tuple[str, int]], count: int, error: int = 0) -> Text:
    if not pairs and count:
        return Text(f"none above {_share(error, count)}", style="dim")
    text = Text()
    for index, (value, n) in enumerate(pairs):
        if index:
            text.append("  ")
        text.append(value if value else "«empty»")
        text.append(f" {_share(n, count)}", style="dim")
    return text


def render_profile(profile: Profile) -> Group:
    """Rich tables of a profile for ``loopline profile``: one row per column, by kind.

    Numbers show count, nulls, min, p50, p95, max, mean and std (over finite values),
    with the NaN and infinity counts under the table; dates and datetimes min,
    p50 and max; strings and booleans the distinct count (``~`` when estimated) and the
    top three values with their shares. Each table fits a 100-column terminal.

    Examples
    --------
    >>> from rich.console import Console
    >>> console = Console(width=100, record=True)
    >>> console.print(render_profile(profile_table(pa.table({"month": [1, 2, 2]}))))
    3 rows, 1 columns
    ...
    >>> "month" in console.export_text()
    True
    """
    numbers = _table("numbers", "count", "nulls", "min", "p50", "p95", "max", "mean", "std")
    times = _table("dates and times", "count", "nulls", "min", "p50", "max")
    categories = _table("strings and booleans", "count", "nulls", "distinct", "top values")
    others = _table("other columns", "count", "nulls")
    nans: list[str] = []
    infinite: list[str] = []
    for column in profile.columns.values():
        if isinstance(column, NumericProfile):
            p50, p95 = column.quantiles([0.5, 0.95])
            stats = (column.min, p50, p95, column.max, column.mean, column.std)
            _add_row(numbers, column, *map(_number, stats))
            if column.nans:
                nans.append(f"{column.name} {_rows(column.nans)}")
            for sign, n in (("+", column.pos_inf), ("-", column.neg_inf)):
                if n:
                    infinite.append(f"{column.name} {_rows(n)} {sign}inf")
        elif isinstance(column, TemporalProfile):
            (p50,) = column.quantiles([0.5])
            _add_row(times, column, *(_when(column, v) for v in (column.min, p50, column.max)))
        elif isinstance(column, StringProfile):
            distinct = f"{'' if column.distinct_is_exact else '~'}{column.distinct:,}"
            top = _top_values(column.top(3), column.count, column.frequent_error)
            _add_row(categories, column, distinct, top)
        elif isinstance(column, BooleanProfile):
            pairs = sorted([("true", column.trues), ("false", column.falses)], key=_by_count)
            distinct = str(sum(1 for _, n in pairs if n))
            _add_row(categories, column, distinct, _top_values(pairs, column.count))
        else:
            _add_row(others, column)
    notes = []
    if nans:
        notes.append(f"NaN, not counted: {', '.join(nans)}.")
    if infinite:
        notes.append(f"Infinite, left out of mean and std: {', '.join(infinite)}.")
    if notes:
        numbers.caption = Text(" ".join(notes), style="dim")
        numbers.caption_justify = "left"
    header = Text(f"{_rows(profile.rows)} rows, {len(profile.columns)} columns", style="bold")
    return Group(header, *(t for t in (numbers, times, categories, others) if t.row_count))
