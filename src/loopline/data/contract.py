"""Data contracts: declared columns and rules, checked chunk by chunk, with a quarantine.

A ``Contract`` names a source's columns (``Column``: type, nullability, range, allowed
values, pattern, uniqueness, and how text is parsed into the type), composite keys, row
rules, and dataset-level checks (``Freshness``, ``Volume``, the tolerated fraction of bad
rows). It is declared in Python or in YAML (``Contract.from_yaml``; the format is in
docs/contracts.md, the semantics in docs/decisions/0006-contract-semantics.md).

``Contract.validator()`` checks the chunks of one ingest: ``Validator.check(chunk)`` splits a
chunk into rows that passed (typed, in declared column order, ``_location`` last) and
quarantine rows (``QUARANTINE_SCHEMA``: the first rule broken, its column, every reason in
words, the row as read). Every check is a Polars expression over the whole chunk; nothing
loops over rows in Python. ``Validator.finish`` runs the dataset-level checks and
reconciles the counts: rows read = rows passed + rows quarantined, always.

Examples
--------
>>> contract = Contract(
...     "orders",
...     {"id": Column("int64", unique=True), "amount": Column("float64", min=0)},
... )
>>> table = pa.table({"id": ["1", "2", "2", "x"], "amount": ["9.5", "-1", "3", "4"]})
>>> validator = contract.validator()
>>> checked = validator.check(Chunk.of(table, source="orders.csv", locations=[2, 3, 4, 5]))
>>> checked.passed.to_pydict()
{'id': [1, 2], 'amount': [9.5, 3.0], '_location': [2, 4]}
>>> for row in checked.quarantined.select(["location", "rule", "reason"]).to_pylist():
...     print(row)
{'location': 3, 'rule': 'min', 'reason': "column 'amount': -1.0 is below the minimum 0.0"}
{'location': 5, 'rule': 'type', 'reason': "column 'id': 'x' is not a valid int64"}
>>> summary = validator.finish(now=datetime(2024, 1, 1, tzinfo=UTC), previous_rows=None)
Traceback (most recent call last):
...
loopline.errors.ContractError: Contract 'orders' failed: 2 of 4 rows (50.00%) were ...
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import math
import operator
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeAlias, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import fsspec
import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import yaml

from loopline.data.files import Files
from loopline.data.profile import _to_polars
from loopline.data.sources.base import (
    LOCATION,
    QUARANTINE_SCHEMA,
    Chunk,
    quarantined_rejects,
)
from loopline.errors import ContractError, SourceError

__all__ = [
    "RULE_ORDER",
    "TYPES",
    "Checked",
    "Column",
    "Contract",
    "Freshness",
    "FreshnessResult",
    "SchemaChange",
    "Summary",
    "TypeChange",
    "Validator",
    "Violation",
    "Volume",
    "VolumeResult",
]

Bound: TypeAlias = int | float | str | date | datetime
"""A value a column is compared with: a limit, or one of the allowed values."""

AllowedFrom: TypeAlias = Any
"""Where allowed values come from: a Series, a list, a callable returning either, or
``(path_or_Files, column)``."""

TYPES: dict[str, tuple[pl.DataType, pa.DataType]] = {
    "int32": (pl.Int32(), pa.int32()),
    "int64": (pl.Int64(), pa.int64()),
    "float64": (pl.Float64(), pa.float64()),
    "string": (pl.String(), pa.string()),
    "bool": (pl.Boolean(), pa.bool_()),
    "date": (pl.Date(), pa.date32()),
    "datetime": (pl.Datetime("us", "UTC"), pa.timestamp("us", tz="UTC")),
}
"""The column types a contract declares, with their Polars and Arrow types. A datetime is
always stored in UTC, with microseconds."""

RULE_ORDER = (
    "parse",
    "type",
    "nullable",
    "min",
    "max",
    "allowed",
    "pattern",
    "rule",
    "unique",
)
"""The order rules are checked in: a quarantined row's ``rule`` is the first it broke
(row rules appear as ``rule:<name>``, in declared order; within a kind, columns go in
declared order)."""

_INT_RANGE = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_DEFAULT_FORMATS = {
    "date": ("%Y-%m-%d",),
    "datetime": (
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d",
    ),
}
_DIRECTIVES = set("YyCmbBhdeaAwujUWGgVHkIlPpMSfzZTRFDsnt%")
_RX_META = set("\\.+*?()|[]{}^$#&-~")
_NAN_RX = r"(?i)^[+-]?nan$"
_PINF_RX = r"(?i)^\+?inf(inity)?$"
_NINF_RX = r"(?i)^-inf(inity)?$"
_SEEDS = (0x2545F4914F6CDD1D, 0x5DEECE66D1CE4E5B)
_PRIVATE = "\x00"  # internal column names start with it; declared names may not
_IDX = f"{_PRIVATE}i"
_BAD = f"{_PRIVATE}bad"
_ROW = f"{_PRIVATE}row"
_FIRST = f"{_PRIVATE}first"
_SHOWN_VALUES = 5


def _bad_param(owner: str, param: str, expected: str, got: object) -> NoReturn:
    raise ContractError(
        f"The {param!r} parameter of {owner} must be {expected}. Got {got!r}.", param=param
    )


# -- declarations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One declared column: its type, how text becomes that type, and its value rules.

    Parameters
    ----------
    type : str
        One of ``TYPES``: ``int32``, ``int64``, ``float64``, ``string``, ``bool``, ``date``,
        ``datetime`` (UTC, microseconds).
    nullable : bool
        Whether null is allowed (after ``null_values`` are turned into null).
    min, max : int, float, str, date or datetime, optional
        Inclusive bounds. Dates and datetimes may be ISO strings; a naive datetime bound is
        taken in ``timezone``. NaN is neither above nor below a bound.
    allowed : sequence, optional
        The only values allowed (null is governed by ``nullable``).
    allowed_from : optional
        Allowed values taken from another table: a Polars Series or a list; a callable
        returning one (called once per contract); or a tuple ``(path_or_Files, column)``
        naming a CSV, TSV, Parquet or JSON Lines file (compressed or not, any fsspec URL
        or glob), read once, when the first chunk is checked. CSV values are parsed with
        this column's own settings. Not together with ``allowed``.
    pattern : str, optional
        A regular expression (Rust syntax) the whole value must match; strings only.
    unique : bool
        No two passed rows have the same non-null value.
    thousands : str, optional
        The digit-grouping character in text numbers (``","`` accepts ``"1,234"``, never
        ``"12,34"``). Without it, any grouping is a type violation.
    decimal : str
        The decimal mark in text floats.
    formats : sequence of str
        Date or datetime formats (strftime syntax), tried in order for each text value.
        A format with ``%z`` reads an explicit offset (``Z``, ``+02:00``, ``+0200``).
    timezone : str, optional
        The IANA time zone naive datetimes are in (default UTC); all are stored in UTC.
        A local time skipped or repeated by a daylight-saving change is a type violation.
    allow_non_finite : bool
        Accept NaN and infinities in a float column.
    null_values : sequence of str
        Text values that mean null (compared exactly, before anything else).
    true_values, false_values : sequence of str
        Text values of a bool column.

    Columns compare equal whatever their ``allowed_from`` (a Series or a callable has no
    useful equality); ``to_dict`` shows it where it can.

    Examples
    --------
    >>> Column("int64", min=1, max=12).max
    12
    >>> Column("int64", thousands=",").thousands
    ','
    >>> Column("int64", pattern="^a")
    Traceback (most recent call last):
    ...
    loopline.errors.ContractError: The 'pattern' parameter of Column applies only to string ...
    """

    type: str
    nullable: bool = True
    min: Bound | None = None
    max: Bound | None = None
    allowed: Sequence[Any] | None = None
    allowed_from: AllowedFrom = field(default=None, compare=False)
    pattern: str | None = None
    unique: bool = False
    thousands: str | None = None
    decimal: str = "."
    formats: Sequence[str] = ()
    timezone: str | None = None
    allow_non_finite: bool = False
    null_values: Sequence[str] = ("",)
    true_values: Sequence[str] = ("true", "True", "1")
    false_values: Sequence[str] = ("false", "False", "0")

    def __post_init__(self) -> None:
        owner = "Column"
        kind = self.type
        if not isinstance(kind, str) or kind not in TYPES:
            _bad_param(owner, "type", f"one of {', '.join(TYPES)}", kind)
        for flag in ("nullable", "unique", "allow_non_finite"):
            if not isinstance(getattr(self, flag), bool):
                _bad_param(owner, flag, "true or false", getattr(self, flag))
        for name in ("null_values", "true_values", "false_values", "formats"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Sequence):
                _bad_param(owner, name, "a list of strings such as ['NA', '']", value)
            bad = [v for v in value if not isinstance(v, str)]
            if bad:
                _bad_param(
                    owner, name, "a list of strings (quote values such as 'yes' in YAML)", bad[0]
                )
            object.__setattr__(self, name, tuple(value))
        self._check_applies()
        self._check_text_settings()
        for name in ("min", "max"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, self._scalar(name, value))
        if self.min is not None and self.max is not None and self.min > self.max:  # type: ignore[operator]
            raise ContractError(
                f"The 'min' parameter of Column must not exceed 'max'. "
                f"Got min={self.min!r}, max={self.max!r}.",
                param="min",
            )
        if self.allowed is not None:
            if isinstance(self.allowed, str) or not isinstance(self.allowed, Iterable):
                _bad_param(
                    owner, "allowed", "a list of values such as ['EWR', 'JFK']", self.allowed
                )
            values = tuple(self._scalar("allowed", v) for v in self.allowed)
            if not values:
                _bad_param(owner, "allowed", "a non-empty list of values", list(values))
            object.__setattr__(self, "allowed", values)
            if self.allowed_from is not None:
                _bad_param(owner, "allowed_from", "unset when 'allowed' is given", "both")
        if self.allowed_from is not None:
            object.__setattr__(self, "allowed_from", _check_reference(self.allowed_from))
        if self.pattern is not None:
            if not isinstance(self.pattern, str):
                _bad_param(owner, "pattern", "a regular expression", self.pattern)
            try:
                pl.Series([""], dtype=pl.String).str.contains(_anchored(self.pattern))
            except pl.exceptions.PolarsError as exc:
                first = str(exc).strip().splitlines()
                _bad_param(
                    owner,
                    "pattern",
                    f"a regular expression in Rust syntax ({' '.join(first[:4])})",
                    self.pattern,
                )

    def _check_applies(self) -> None:
        kind = self.type
        rules = {
            "thousands": (self.thousands is not None, ("int32", "int64", "float64")),
            "decimal": (self.decimal != ".", ("float64",)),
            "allow_non_finite": (self.allow_non_finite, ("float64",)),
            "formats": (bool(self.formats), ("date", "datetime")),
            "timezone": (self.timezone is not None, ("datetime",)),
            "pattern": (self.pattern is not None, ("string",)),
            "true_values": (self.true_values != ("true", "True", "1"), ("bool",)),
            "false_values": (self.false_values != ("false", "False", "0"), ("bool",)),
            "min": (self.min is not None, tuple(t for t in TYPES if t != "bool")),
            "max": (self.max is not None, tuple(t for t in TYPES if t != "bool")),
        }
        for name, (given, types) in rules.items():
            if given and kind not in types:
                raise ContractError(
                    f"The {name!r} parameter of Column applies only to {', '.join(types)} "
                    f"columns; this column is {kind}. Remove it, or change the column's type.",
                    param=name,
                )

    def _check_text_settings(self) -> None:
        for name in ("thousands", "decimal"):
            mark = getattr(self, name)
            if mark is None:
                continue
            if not isinstance(mark, str) or len(mark) != 1 or mark.isdigit() or mark in "+-eE":
                _bad_param("Column", name, "one character such as ',' or '.'", mark)
        if self.type == "float64" and self.thousands == self.decimal:
            _bad_param("Column", "thousands", "different from 'decimal'", self.thousands)
        overlap = set(self.true_values) & set(self.false_values)
        if overlap:
            _bad_param("Column", "true_values", "disjoint from 'false_values'", sorted(overlap))
        if self.timezone is not None:
            if not isinstance(self.timezone, str):
                _bad_param(
                    "Column", "timezone", "an IANA time zone such as 'Europe/Paris'", self.timezone
                )
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                _bad_param(
                    "Column", "timezone", "an IANA time zone such as 'Europe/Paris'", self.timezone
                )
        for fmt in self.formats:
            _check_format(fmt, self.type)

    def _scalar(self, param: str, value: object) -> Bound:
        """``value`` as a Python value of this column's type, or a ContractError."""
        kind = self.type
        if kind in ("int32", "int64"):
            low, high = _INT_RANGE[kind]
            if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
                return value
            _bad_param("Column", param, f"an integer that fits {kind}", value)
        if kind == "float64":
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if number and not math.isnan(cast(float, value)):
                return float(cast(float, value))
            _bad_param("Column", param, "a number", value)
        if kind == "string":
            if isinstance(value, str):
                return value
            _bad_param("Column", param, "a string (quote values such as 'NO' in YAML)", value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            _bad_param("Column", param, "true or false", value)
        if kind == "date":
            if isinstance(value, date) and not isinstance(value, datetime):
                return value
            if isinstance(value, str):
                try:
                    return date.fromisoformat(value)
                except ValueError:
                    pass
            _bad_param("Column", param, "a date such as '2013-01-31'", value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = datetime.fromisoformat(value)
        if isinstance(value, date) and not isinstance(value, datetime):
            value = datetime(value.year, value.month, value.day)  # midnight, in the time zone
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=ZoneInfo(self.timezone or "UTC"))
            return value.astimezone(UTC)
        _bad_param("Column", param, "a datetime such as '2013-01-31T08:00:00+00:00'", value)

    @property
    def dtype(self) -> pl.DataType:
        """The Polars type of the column's values."""
        return TYPES[self.type][0]

    @property
    def arrow_type(self) -> pa.DataType:
        """The Arrow type of the column's values."""
        return TYPES[self.type][1]

    def to_dict(self) -> dict[str, Any]:
        """The column as ``Contract.from_dict`` reads it: its type and non-default settings."""
        out: dict[str, Any] = {"type": self.type}
        for spec in fields(self)[1:]:
            value = getattr(self, spec.name)
            if value == spec.default and spec.name != "allowed_from":
                continue
            if spec.name == "allowed_from":
                if value is not None:
                    out["allowed_from"] = _reference_to_dict(value)
            elif spec.name in ("min", "max"):
                out[spec.name] = _plain(value)
            elif isinstance(value, tuple):
                out[spec.name] = [_plain(v) for v in value]
            else:
                out[spec.name] = value
        return out


@dataclass(frozen=True)
class Freshness:
    """The newest event in ``column`` must be at most ``max_age`` old at ``now``.

    Examples
    --------
    >>> Freshness("time_hour", timedelta(days=2)).max_age
    datetime.timedelta(days=2)
    """

    column: str
    max_age: timedelta

    def __post_init__(self) -> None:
        if not isinstance(self.column, str) or not self.column:
            _bad_param("Freshness", "column", "a column name", self.column)
        if not isinstance(self.max_age, timedelta) or self.max_age <= timedelta(0):
            _bad_param(
                "Freshness",
                "max_age",
                "a positive timedelta such as timedelta(days=2)",
                self.max_age,
            )


@dataclass(frozen=True)
class Volume:
    """Bounds on the number of rows passed: absolute, and relative to the previous version.

    Examples
    --------
    >>> Volume(min_rows=1, max_ratio=2.0).max_ratio
    2.0
    """

    min_rows: int | None = None
    max_rows: int | None = None
    min_ratio: float | None = None
    max_ratio: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_rows", "max_rows"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                _bad_param("Volume", name, "a count of rows (an integer, 0 or more)", value)
        for name in ("min_ratio", "max_ratio"):
            value = getattr(self, name)
            if value is not None:
                if (
                    not isinstance(value, int | float)
                    or isinstance(value, bool)
                    or not value >= 0
                    or math.isinf(value)
                ):
                    _bad_param("Volume", name, "a finite ratio, 0 or more, such as 0.5", value)
                object.__setattr__(self, name, float(value))
        if all(getattr(self, f.name) is None for f in fields(self)):
            _bad_param("Volume", "min_rows", "set, or another bound", None)
        for low, high in (("min_rows", "max_rows"), ("min_ratio", "max_ratio")):
            a, b = getattr(self, low), getattr(self, high)
            if a is not None and b is not None and a > b:
                _bad_param("Volume", low, f"at most {high} ({b})", a)


@dataclass(frozen=True, eq=False)
class Contract:
    """What a source's rows must satisfy, and what to do when they do not.

    Parameters
    ----------
    name : str
        A name for messages and records.
    columns : mapping of str to Column
        The declared columns, in output order.
    unique : sequence of sequences of str
        Composite keys; no two passed rows share a key (a key with a null is never a
        duplicate). A plain string is a one-column key.
    rules : mapping of str to str or polars.Expr
        Row rules that must not be false (a null result passes, as in SQL CHECK). A string
        is parsed with ``polars.sql_expr``, such as ``"dep_time <= 2400"``.
    freshness : Freshness, optional
    volume : Volume, optional
    max_bad_fraction : float
        The fraction of rows read that may be quarantined.
    on_bad : "fail" or "warn"
        What ``Validator.finish`` does when the bad fraction, freshness or volume fails:
        raise ``ContractError``, or return a summary with warnings.
    schema : "fail" or "additive"
        The schema-evolution policy: "fail" refuses any change against the declared
        columns; "additive" accepts added columns (left out of the output) and widened
        types (checked value by value), and refuses dropped or changed ones.

    Examples
    --------
    >>> contract = Contract.from_yaml('''
    ... name: flights
    ... columns:
    ...   month: {type: int32, min: 1, max: 12}
    ...   dep_time: {type: int32, min: 0, max: 2400}
    ...   arr_time: {type: int32, min: 0, max: 2400}
    ...   origin: {type: string, allowed: [EWR, JFK, LGA]}
    ... rules:
    ...   no_zero_duration: "dep_time <> arr_time"
    ... ''')
    >>> list(contract.columns), contract.on_bad
    (['month', 'dep_time', 'arr_time', 'origin'], 'fail')
    """

    name: str
    columns: Mapping[str, Column]
    unique: Sequence[Sequence[str]] = ()
    rules: Mapping[str, str | pl.Expr] = field(default_factory=dict)
    freshness: Freshness | None = None
    volume: Volume | None = None
    max_bad_fraction: float = 0.0
    on_bad: Literal["fail", "warn"] = "fail"
    schema: Literal["fail", "additive"] = "fail"
    _exprs: dict[str, pl.Expr] = field(init=False, repr=False, default_factory=dict)
    _references: dict[str, pl.Series] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        owner = f"Contract {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            _bad_param("Contract", "name", "a non-empty string", self.name)
        if not isinstance(self.columns, Mapping) or not self.columns:
            _bad_param(owner, "columns", "a non-empty mapping of names to Column", self.columns)
        for name, column in self.columns.items():
            if not isinstance(name, str) or not name or name == LOCATION or _PRIVATE in name:
                _bad_param(owner, "columns", f"keyed by column names (not {LOCATION!r})", name)
            if not isinstance(column, Column):
                _bad_param(owner, "columns", "a mapping of names to Column", column)
        object.__setattr__(self, "columns", dict(self.columns))
        object.__setattr__(self, "unique", self._check_keys())
        object.__setattr__(self, "rules", dict(self._check_rules()))
        if self.freshness is not None:
            if not isinstance(self.freshness, Freshness):
                _bad_param(owner, "freshness", "a Freshness", self.freshness)
            fresh = self.columns.get(self.freshness.column)
            if fresh is None or fresh.type not in ("date", "datetime"):
                _bad_param(
                    owner,
                    "freshness",
                    "about a declared date or datetime column",
                    self.freshness.column,
                )
        if self.volume is not None and not isinstance(self.volume, Volume):
            _bad_param(owner, "volume", "a Volume", self.volume)
        fraction = self.max_bad_fraction
        if (
            not isinstance(fraction, int | float)
            or isinstance(fraction, bool)
            or not 0 <= fraction <= 1
        ):
            _bad_param(
                owner, "max_bad_fraction", "a fraction between 0 and 1 such as 0.01", fraction
            )
        object.__setattr__(self, "max_bad_fraction", float(fraction))
        if self.on_bad not in ("fail", "warn"):
            _bad_param(owner, "on_bad", "'fail' or 'warn'", self.on_bad)
        if self.schema not in ("fail", "additive"):
            _bad_param(owner, "schema", "'fail' or 'additive'", self.schema)

    def _check_keys(self) -> tuple[tuple[str, ...], ...]:
        owner = f"Contract {self.name!r}"
        keys: list[tuple[str, ...]] = []
        if isinstance(self.unique, str) or not isinstance(self.unique, Sequence):
            _bad_param(
                owner, "unique", "a list of keys such as [['origin', 'flight']]", self.unique
            )
        for key in self.unique:
            names = (key,) if isinstance(key, str) else key
            if not isinstance(names, Sequence) or not names:
                _bad_param(owner, "unique", "a list of keys such as [['origin', 'flight']]", key)
            for name in names:
                if name not in self.columns:
                    _bad_param(owner, "unique", f"keys of declared columns ({_names(self)})", name)
            keys.append(tuple(names))
        return tuple(keys)

    def _check_rules(self) -> Iterable[tuple[str, str | pl.Expr]]:
        owner = f"Contract {self.name!r}"
        if not isinstance(self.rules, Mapping):
            _bad_param(owner, "rules", "a mapping of names to expressions", self.rules)
        empty = pl.DataFrame(schema={n: c.dtype for n, c in self.columns.items()})
        for name, rule in self.rules.items():
            if not isinstance(name, str) or not name or _PRIVATE in name:
                _bad_param(owner, "rules", "keyed by rule names", name)
            if isinstance(rule, str):
                try:
                    expr = pl.sql_expr(rule)
                except pl.exceptions.PolarsError as exc:
                    raise ContractError(
                        f"Rule {name!r} of contract {self.name!r} is not a valid SQL "
                        f"expression: {rule!r} ({exc}). Write a condition such as "
                        f"'dep_time <= 2400 AND month BETWEEN 1 AND 12'.",
                        param="rules",
                        rule=name,
                    ) from None
            elif isinstance(rule, pl.Expr):
                expr = rule
            else:
                _bad_param(owner, "rules", "a mapping of names to SQL strings or polars.Expr", rule)
            used = set(expr.meta.root_names())
            unknown = sorted(used - set(self.columns))
            if unknown or not used:
                raise ContractError(
                    f"Rule {name!r} of contract {self.name!r} must refer to declared columns "
                    f"({_names(self)}); it refers to "
                    f"{', '.join(map(repr, unknown)) if unknown else 'none'}.",
                    param="rules",
                    rule=name,
                )
            try:
                result = empty.select(expr)
            except pl.exceptions.PolarsError as exc:
                raise ContractError(
                    f"Rule {name!r} of contract {self.name!r} cannot be evaluated on the "
                    f"declared column types: {str(exc).splitlines()[0]}",
                    param="rules",
                    rule=name,
                ) from None
            if result.width != 1 or result.dtypes[0] != pl.Boolean or result.height != 0:
                raise ContractError(
                    f"Rule {name!r} of contract {self.name!r} must give true or false for "
                    f"each row, as a comparison does; it gives "
                    f"{'one value per chunk' if result.height else result.dtypes}.",
                    param="rules",
                    rule=name,
                )
            self._exprs[name] = expr
            yield name, rule

    # -- reading and writing ------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Contract:
        """A contract from plain data, as ``from_yaml`` reads it (see docs/contracts.md).

        Examples
        --------
        >>> Contract.from_dict({"name": "t", "columns": {"x": {"type": "int64"}}}).name
        't'
        """
        return _Reader(lines={}, origin=None, base=None).contract(data)

    @classmethod
    def from_yaml(cls, text_or_path: str | os.PathLike[str]) -> Contract:
        """A contract from YAML text, or from a ``.yaml``/``.yml`` file.

        A string holding a newline, or not ending in ``.yaml``/``.yml``, is YAML text.
        Relative ``allowed_from`` paths in a file are relative to the file's folder. Errors
        name the key (``columns.month.max``) and, for YAML text, its line.
        """
        origin: str | None = None
        base: Path | None = None
        is_path = isinstance(text_or_path, os.PathLike) or (
            "\n" not in text_or_path and text_or_path.strip().endswith((".yaml", ".yml"))
        )
        if is_path:
            path = Path(text_or_path)
            origin, base = str(path), path.parent
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ContractError(
                    f"Cannot read the contract file {origin}: {exc.strerror or exc}. "
                    f"Check the path.",
                    path=origin,
                ) from None
        else:
            text = str(text_or_path)
        data, lines = _load_yaml(text, origin)
        return _Reader(lines=lines, origin=origin, base=base).contract(data)

    def to_dict(self) -> dict[str, Any]:
        """The contract as plain data that ``from_dict`` reads back.

        Raises ``ContractError`` for what YAML cannot hold: rules given as ``polars.Expr``,
        and ``allowed_from`` values given as a Series, a list or a callable.
        """
        out: dict[str, Any] = {
            "name": self.name,
            "columns": {name: column.to_dict() for name, column in self.columns.items()},
        }
        if self.unique:
            out["unique"] = [list(key) for key in self.unique]
        if self.rules:
            exprs = [name for name, rule in self.rules.items() if not isinstance(rule, str)]
            if exprs:
                raise ContractError(
                    f"Rules {', '.join(map(repr, exprs))} of contract {self.name!r} are Polars "
                    f"expressions and cannot be written as YAML; write them as SQL strings.",
                    rule=exprs[0],
                )
            out["rules"] = dict(self.rules)
        if self.freshness is not None:
            out["freshness"] = {
                "column": self.freshness.column,
                "max_age": _format_duration(self.freshness.max_age),
            }
        if self.volume is not None:
            out["volume"] = {
                f.name: getattr(self.volume, f.name)
                for f in fields(self.volume)
                if getattr(self.volume, f.name) is not None
            }
        if self.max_bad_fraction:
            out["max_bad_fraction"] = self.max_bad_fraction
        if self.on_bad != "fail":
            out["on_bad"] = self.on_bad
        if self.schema != "fail":
            out["schema"] = self.schema
        return out

    def to_yaml(self) -> str:
        """The contract as YAML text that ``from_yaml`` reads back."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def fingerprint(self) -> str:
        """A hash of everything that decides which rows pass, reference values included.

        Reads the ``allowed_from`` references (once per contract). Rules given as
        ``polars.Expr`` enter by their printed form.
        """
        definition: dict[str, Any] = {
            "name": self.name,
            "columns": {},
            "unique": [list(k) for k in self.unique],
            "rules": {n: r if isinstance(r, str) else f"expr:{r}" for n, r in self.rules.items()},
            "freshness": self.freshness and [self.freshness.column, str(self.freshness.max_age)],
            "volume": self.volume and [getattr(self.volume, f.name) for f in fields(self.volume)],
            "bad": [self.max_bad_fraction, self.on_bad, self.schema],
        }
        for name, column in self.columns.items():
            described = replace(column, allowed_from=None).to_dict()
            if column.allowed_from is not None:
                values = self.reference(name)
                digest = hashlib.sha256()
                for value in values.cast(pl.String).sort().to_list():
                    digest.update(f"{value}\0".encode())
                described["allowed_from"] = digest.hexdigest()
            definition["columns"][name] = described
        text = json.dumps(definition, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    # -- checking ------------------------------------------------------------------------------

    @property
    def arrow_schema(self) -> pa.Schema:
        """The schema of the passed rows, without ``_location``."""
        return pa.schema(
            [pa.field(n, c.arrow_type, nullable=c.nullable) for n, c in self.columns.items()]
        )

    @property
    def keys(self) -> tuple[tuple[str, ...], ...]:
        """Every uniqueness key: one-column keys (``Column(unique=True)``), then ``unique``."""
        single = tuple((n,) for n, c in self.columns.items() if c.unique)
        return single + tuple(tuple(k) for k in self.unique if tuple(k) not in single)

    def compare_schema(self, schema: pa.Schema) -> SchemaChange:
        """How ``schema`` (a source's columns) differs from the declared columns.

        Text columns are parsed value by value and are no change; a type whose values all
        convert exactly (int32 into int64, any integer into float64, any timestamp into
        datetime) is no change either. A type that can hold values the declared one cannot
        (int64 into int32, float64 into int64) is ``widened``; anything else is ``changed``.

        Examples
        --------
        >>> contract = Contract("t", {"n": Column("int32"), "s": Column("string")})
        >>> change = contract.compare_schema(pa.schema([("n", pa.int64()), ("x", pa.int8())]))
        >>> for line in change.describe():
        ...     print(line)
        added column 'x' (int8)
        dropped column 's' (declared string)
        column 'n' is int64, wider than the declared int32
        """
        present = [f for f in schema if f.name != LOCATION]
        names = {f.name for f in present}
        added = tuple(f.name for f in present if f.name not in self.columns)
        added_types = tuple(str(f.type) for f in present if f.name not in self.columns)
        dropped = tuple(n for n in self.columns if n not in names)
        widened: list[TypeChange] = []
        changed: list[TypeChange] = []
        for f in present:
            column = self.columns.get(f.name)
            if column is None:
                continue
            kind = _classify(column.type, f.type)
            if kind == "widened":
                widened.append(TypeChange(f.name, column.type, str(f.type)))
            elif kind == "changed":
                changed.append(TypeChange(f.name, column.type, str(f.type)))
        return SchemaChange(
            added=added,
            dropped=dropped,
            widened=tuple(widened),
            changed=tuple(changed),
            added_types=added_types,
            declared={n: c.type for n, c in self.columns.items() if n in dropped},
        )

    def validator(self) -> Validator:
        """A new validator for the chunks of one ingest."""
        return Validator(self)

    def reference(self, column: str) -> pl.Series:
        """The distinct allowed values of ``column``'s ``allowed_from``, read once."""
        cached = self._references.get(column)
        if cached is None:
            cached = _load_reference(self.name, column, self.columns[column])
            self._references[column] = cached
        return cached


# -- schema evolution ------------------------------------------------------------------------


@dataclass(frozen=True)
class TypeChange:
    """A column whose source type differs from its declared type."""

    column: str
    declared: str
    actual: str


@dataclass(frozen=True)
class SchemaChange:
    """How a source's columns differ from a contract's (``Contract.compare_schema``)."""

    added: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    widened: tuple[TypeChange, ...] = ()
    changed: tuple[TypeChange, ...] = ()
    added_types: tuple[str, ...] = ()
    declared: Mapping[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.dropped or self.widened or self.changed)

    @property
    def additive(self) -> bool:
        """Whether the ``additive`` policy accepts it (nothing dropped or changed)."""
        return not (self.dropped or self.changed)

    def describe(self) -> list[str]:
        """Every change, in words."""
        types = dict(zip(self.added, self.added_types, strict=False))
        out = [f"added column {n!r}" + (f" ({types[n]})" if n in types else "") for n in self.added]
        out += [
            f"dropped column {n!r}"
            + (f" (declared {self.declared[n]})" if n in self.declared else "")
            for n in self.dropped
        ]
        out += [
            f"column {c.column!r} is {c.actual}, wider than the declared {c.declared}"
            for c in self.widened
        ]
        out += [
            f"column {c.column!r} changed type: declared {c.declared}, found {c.actual}"
            for c in self.changed
        ]
        return out

    def merge(self, other: SchemaChange) -> SchemaChange:
        """Both changes, each listed once."""

        def union(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
            return a + tuple(x for x in b if x not in a)

        added = union(self.added, other.added)
        types = dict(zip(other.added, other.added_types, strict=False))
        types.update(zip(self.added, self.added_types, strict=False))
        return SchemaChange(
            added=added,
            dropped=union(self.dropped, other.dropped),
            widened=union(self.widened, other.widened),
            changed=union(self.changed, other.changed),
            added_types=tuple(types[n] for n in added),
            declared={**other.declared, **self.declared},
        )


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t)) or str(t) == "string_view"


def _classify(declared: str, t: pa.DataType) -> str:
    """``same``, ``text``, ``fits``, ``widened`` or ``changed``: see ``compare_schema``."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t):
        return "fits"
    if _is_text(t):
        return "same" if declared == "string" else "text"
    if t == TYPES[declared][1]:
        return "same"
    integer, floating = pa.types.is_integer(t), pa.types.is_floating(t)
    number = integer or floating or pa.types.is_decimal(t)
    if declared in ("int32", "int64"):
        if integer:
            limit = 32 if declared == "int32" else 64
            signed = pa.types.is_signed_integer(t)
            fits = t.bit_width <= limit if signed else t.bit_width < limit
            return "fits" if fits else "widened"
        return "widened" if number else "changed"
    if declared == "float64":
        return "fits" if number else "changed"
    if declared == "date":
        if pa.types.is_date(t):
            return "fits"
        return "widened" if pa.types.is_timestamp(t) else "changed"
    if declared == "datetime":
        return "fits" if pa.types.is_timestamp(t) or pa.types.is_date(t) else "changed"
    return "changed"


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checked:
    """One chunk, checked: the rows that passed and the rows set aside."""

    passed: pa.Table
    """The declared columns in order, typed, then ``_location``."""
    quarantined: pa.Table
    """One row per bad input row (unparsable rows included), in ``QUARANTINE_SCHEMA``."""


@dataclass(frozen=True)
class Violation:
    """How many rows broke one rule on one column, with one example reason."""

    rule: str
    column: str | None
    rows: int
    example: str


@dataclass(frozen=True)
class FreshnessResult:
    """The freshness check: the newest event, its age at ``now``, and the verdict."""

    column: str
    newest: datetime | None
    age: timedelta | None
    max_age: timedelta
    ok: bool
    message: str


@dataclass(frozen=True)
class VolumeResult:
    """The volume check: rows passed against the bounds and the previous version."""

    rows: int
    previous_rows: int | None
    ratio: float | None
    ok: bool
    message: str


@dataclass(frozen=True)
class Summary:
    """The outcome of one ingest under a contract (``Validator.finish``)."""

    contract: str
    rows_read: int
    rows_passed: int
    rows_quarantined: int
    rule_counts: Mapping[str, int]
    """Quarantined rows by the first rule they broke; sums to ``rows_quarantined``."""
    violations: tuple[Violation, ...]
    """Every violation (a row can break several), most frequent first."""
    bad_fraction: float
    freshness: FreshnessResult | None
    volume: VolumeResult | None
    schema_changes: SchemaChange
    """Changes the ``additive`` policy accepted."""
    verdict: Literal["pass", "warn"]
    warnings: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.rows_read != self.rows_passed + self.rows_quarantined:
            raise RuntimeError(  # never a user's mistake: every row must be accounted for
                f"Contract {self.contract!r} read {self.rows_read} rows but accounted for "
                f"{self.rows_passed} passed and {self.rows_quarantined} quarantined. This is a "
                f"bug in loopline: please report it."
            )


# -- checking ------------------------------------------------------------------------------------


@dataclass
class _Check:
    """One vectorized check: the mask column it fills, and the message for a broken row."""

    kind: str
    rule: str
    column: str | None
    mask: str
    reason: pl.Expr


@dataclass
class _Plan:
    """What one input schema needs: the coercion, the checks, and the key expressions."""

    stage0: list[pl.Expr]
    """The coerced values, each computed once, beside the input columns."""
    stage1: list[pl.Expr]
    """The coerced values under the declared names, their type masks, locations."""
    stage2: list[pl.Expr]
    """The masks of the other value rules and the row rules."""
    checks: list[_Check]
    keys: list[tuple[tuple[str, ...], str, list[pl.Expr]]]
    originals: list[str]


class _KeySet:
    """The keys seen so far, as pairs of 64-bit values in runs sorted by the first value.

    Runs merge like a binary counter (O(log n) runs); a lookup is a binary search per run
    for queries sorted the same way. 16 bytes per distinct key.
    """

    def __init__(self) -> None:
        self._runs: list[tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]] = []

    def __len__(self) -> int:
        return sum(len(first) for first, _ in self._runs)

    def contains(
        self, h1: npt.NDArray[np.uint64], h2: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.bool_]:
        """Which (h1, h2) pairs are in the set; fastest when ``h1`` is sorted."""
        found = np.zeros(len(h1), dtype=bool)
        for r1, r2 in self._runs:
            lo = np.searchsorted(r1, h1)
            at = np.minimum(lo, len(r1) - 1)
            hit = r1[at] == h1
            found |= hit & (r2[at] == h2)
            # Equal first values with other second values next to them: a 2**-64 event.
            after = np.minimum(at + 1, len(r1) - 1)
            for i in np.flatnonzero(hit & (after != at) & (r1[after] == h1)):
                end = np.searchsorted(r1, h1[i], "right")
                found[i] |= bool(np.any(r2[lo[i] : end] == h2[i]))
        return found

    def add(
        self, h1: npt.NDArray[np.uint64], h2: npt.NDArray[np.uint64], *, ordered: bool = False
    ) -> None:
        """Add new pairs (``ordered``: already sorted by ``h1``)."""
        if not len(h1):
            return
        if not ordered:
            order = np.argsort(h1, kind="stable")
            h1, h2 = h1[order], h2[order]
        self._runs.append((h1, h2))
        while len(self._runs) > 1 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0]):
            (a1, a2), (b1, b2) = self._runs[-2], self._runs[-1]
            m1, m2 = np.concatenate([a1, b1]), np.concatenate([a2, b2])
            order = np.argsort(m1, kind="stable")  # two sorted runs: a linear merge
            self._runs[-2:] = [(m1[order], m2[order])]


def _duplicates(
    h1: npt.NDArray[np.uint64],
    h2: npt.NDArray[np.uint64],
    ok: npt.NDArray[np.bool_],
    keyset: _KeySet,
) -> npt.NDArray[np.bool_]:
    """Rows whose key was claimed before them: by a row of an earlier chunk (in ``keyset``)
    or by an earlier ``ok`` row of this chunk. Adds the keys this chunk claims to ``keyset``.
    """
    n = len(h1)
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(h1, kind="stable")  # equal keys end up together, in row order
    s1, s2 = h1[order], h2[order]
    same = np.zeros(n, dtype=bool)
    same[1:] = s1[1:] == s1[:-1]
    if np.any(same[1:] & (s2[1:] != s2[:-1])):  # equal first values, other second ones
        order = np.lexsort((h2, h1))  # stable: row order within equal keys
        s1, s2 = h1[order], h2[order]
        same[1:] = (s1[1:] == s1[:-1]) & (s2[1:] == s2[:-1])
    starts = np.flatnonzero(~same)
    # The first ok row of each group of equal keys, spread over the group.
    claim = np.minimum.reduceat(np.where(ok[order], order, n), starts)
    claimant = np.repeat(claim, np.diff(np.append(starts, n)))
    seen = keyset.contains(s1, s2)
    duplicate = np.empty(n, dtype=bool)
    duplicate[order] = seen | (claimant < order)
    new = ~seen & (claimant == order)
    keyset.add(s1[new], s2[new], ordered=True)
    return duplicate


class Validator:
    """Checks the chunks of one ingest against a contract; keeps what spans chunks.

    The state across chunks: the counts, the newest event (freshness), the schema seen,
    and, for each uniqueness key, the set of keys of the rows that passed every other
    rule, as two independent 64-bit hashes (exact values for a one-column integer, date
    or datetime key): 16 bytes per distinct key. One validator serves one ingest, in
    source order.

    Examples
    --------
    >>> contract = Contract("t", {"id": Column("int64", unique=True)})
    >>> validator = contract.validator()
    >>> for part, locations in (({"id": [1, 2]}, [1, 2]), ({"id": [2, 3]}, [3, 4])):
    ...     checked = validator.check(Chunk.of(pa.table(part), source="t", locations=locations))
    >>> checked.passed.column("id").to_pylist(), checked.quarantined.column("reason").to_pylist()
    ([3], ["column 'id': 2 repeats an earlier row"])
    >>> summary = validator.finish(now=datetime.now(UTC), previous_rows=None)
    Traceback (most recent call last):
    ...
    loopline.errors.ContractError: Contract 't' failed: 1 of 4 rows (25.00%) were quarantined, ...
    """

    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.rows_read_ = 0
        self.rows_passed_ = 0
        self.rows_quarantined_ = 0
        self.rule_counts_: dict[str, int] = {}
        self.violation_counts_: dict[tuple[str, str | None], int] = {}
        self.examples_: dict[tuple[str, str | None], str] = {}
        self.newest_: Any = None
        self.schema_changes_ = SchemaChange()
        self._types: dict[pa.Schema, dict[str, pl.DataType]] = {}
        self._plans: dict[tuple[pa.Schema, frozenset[str]], _Plan] = {}
        self._keysets = [_KeySet() for _ in contract.keys]

    def __getstate__(self) -> dict[str, Any]:
        # The plans are a cache (Polars expressions per input schema): rebuilt on demand.
        return {**self.__dict__, "_types": {}, "_plans": {}}

    @property
    def mergeable(self) -> bool:
        """Whether validators of separate partitions can ``merge``: no uniqueness keys,
        whose first-row-wins rule needs the rows of every earlier partition."""
        return not self._keysets

    def merge(self, other: Validator) -> None:
        """Add the state of ``other``, which checked the partitions that follow this one's.

        The counts add up, the first example of each violation is kept and the newest
        event wins, so checking partitions apart and merging them in source order gives
        the summary one validator gives in one pass.
        """
        if not (self.mergeable and other.mergeable) or (
            other.contract.fingerprint() != self.contract.fingerprint()
        ):
            raise ValueError(
                f"Validators of contract {self.contract.name!r} merge only when they check "
                f"the same contract and it has no uniqueness keys."
            )
        self.rows_read_ += other.rows_read_
        self.rows_passed_ += other.rows_passed_
        self.rows_quarantined_ += other.rows_quarantined_
        for rule, count in other.rule_counts_.items():
            self.rule_counts_[rule] = self.rule_counts_.get(rule, 0) + count
        for key, count in other.violation_counts_.items():
            self.violation_counts_[key] = self.violation_counts_.get(key, 0) + count
        for key, example in other.examples_.items():
            self.examples_.setdefault(key, example)
        if other.newest_ is not None and (self.newest_ is None or other.newest_ > self.newest_):
            self.newest_ = other.newest_
        self.schema_changes_ = self.schema_changes_.merge(other.schema_changes_)

    def check(self, chunk: Chunk) -> Checked:
        """Split ``chunk`` into passed rows and quarantine rows.

        Raises ``ContractError`` when the chunk's columns break the schema policy.
        """
        batch = chunk.batch
        if not batch.schema.names or batch.schema.names[-1] != LOCATION:
            raise ValueError(f"A chunk's last column must be {LOCATION!r}; got {batch.schema}.")
        plan = self._plan(batch, chunk.source)
        original = _to_polars(batch)
        frame = original.with_columns(plan.stage0).select(plan.stage1)
        if plan.stage2:
            frame = frame.with_columns(plan.stage2)
        masks = [c.mask for c in plan.checks if c.kind != "unique"]
        bad = (
            frame.select(pl.any_horizontal(masks)).to_series()
            if masks
            else pl.Series(_BAD, np.zeros(frame.height, dtype=bool))
        )
        if plan.keys:
            frame = self._unique(frame, plan, ~bad)
            masks = [c.mask for c in plan.checks]
            bad = frame.select(pl.any_horizontal(masks)).to_series()
        names = list(self.contract.columns)
        passed_frame = frame.filter(~bad).select([*names, LOCATION])
        schema = self.contract.arrow_schema.append(pa.field(LOCATION, pa.int64(), nullable=False))
        passed = passed_frame.to_arrow().cast(schema)
        quarantined = self._quarantine(chunk, plan, frame.filter(bad), original.filter(bad))
        read = chunk.rows + chunk.rejects.num_rows
        self._count(plan, frame, passed_frame, quarantined, read)
        if passed.num_rows + quarantined.num_rows != read:
            raise RuntimeError(
                f"Checking {chunk.source} read {read} rows but gave {passed.num_rows} passed "
                f"and {quarantined.num_rows} quarantined. This is a bug in loopline."
            )
        return Checked(passed=passed, quarantined=quarantined)

    def finish(self, *, now: datetime, previous_rows: int | None = None) -> Summary:
        """The dataset-level checks, after every chunk; raises or warns per ``on_bad``.

        ``now`` is the time freshness is measured at (timezone-aware); ``previous_rows``
        is the previous version's passed rows (None: no previous version, so the ratio
        bounds of ``Volume`` are not checked). The ``ContractError`` raised when the
        contract fails carries the summary as ``.summary``.
        """
        contract = self.contract
        if not isinstance(now, datetime) or now.tzinfo is None:
            _bad_param(
                "Validator.finish",
                "now",
                "a timezone-aware datetime such as datetime.now(UTC)",
                now,
            )
        if previous_rows is not None and (
            not isinstance(previous_rows, int)
            or isinstance(previous_rows, bool)
            or previous_rows < 0
        ):
            _bad_param("Validator.finish", "previous_rows", "a row count or None", previous_rows)
        read, passed, bad = self.rows_read_, self.rows_passed_, self.rows_quarantined_
        if read != passed + bad or sum(self.rule_counts_.values()) != bad:
            raise RuntimeError(
                f"Contract {contract.name!r} read {read} rows but accounted for {passed} passed "
                f"and {bad} quarantined. This is a bug in loopline: please report it."
            )
        fraction = bad / read if read else 0.0
        violations = tuple(
            sorted(
                (
                    Violation(rule, column, rows, self.examples_.get((rule, column), ""))
                    for (rule, column), rows in self.violation_counts_.items()
                    if rows
                ),
                key=lambda v: (-v.rows, _rule_rank(v.rule)),
            )
        )
        failures: list[str] = []
        if fraction > contract.max_bad_fraction:
            failures.append(_bad_rows_message(read, bad, fraction, contract, violations))
        freshness = self._freshness(now)
        if freshness is not None and not freshness.ok:
            failures.append(freshness.message)
        volume = self._volume(previous_rows)
        if volume is not None and not volume.ok:
            failures.append(volume.message)
        notes = [
            f"schema change accepted by the additive policy: {change}"
            for change in self.schema_changes_.describe()
        ]
        summary = Summary(
            contract=contract.name,
            rows_read=read,
            rows_passed=passed,
            rows_quarantined=bad,
            rule_counts=dict(sorted(self.rule_counts_.items(), key=lambda i: _rule_rank(i[0]))),
            violations=violations,
            bad_fraction=fraction,
            freshness=freshness,
            volume=volume,
            schema_changes=self.schema_changes_,
            verdict="warn" if failures or notes else "pass",
            warnings=tuple(failures + notes),
        )
        if failures and contract.on_bad == "fail":
            raise ContractError(
                f"Contract {contract.name!r} failed: {' '.join(failures)} "
                f"See the quarantine for every set-aside row and its reason; to accept this, "
                f"raise the contract's limits or set on_bad to 'warn'.",
                contract=contract.name,
                summary=summary,
            )
        return summary

    # -- per chunk -------------------------------------------------------------------------

    def _plan(self, batch: pa.RecordBatch, source: str) -> _Plan:
        """The plan for the batch's schema, without stripping the text columns that have
        no white space at their values' ends (stripping is a copy of the column)."""
        schema = batch.schema
        types = self._types.get(schema)
        if types is None:
            types = self._check_schema(schema, source)
        unstripped = frozenset(
            name
            for name, column in self.contract.columns.items()
            if column.type != "string"
            and types.get(name) == pl.String
            and _edges_are_clean(batch.column(name))
        )
        plan = self._plans.get((schema, unstripped))
        if plan is None:
            plan = _build_plan(self.contract, types, self._allowed_values(), unstripped)
            self._plans[(schema, unstripped)] = plan
        return plan

    def _check_schema(self, schema: pa.Schema, source: str) -> dict[str, pl.DataType]:
        """Check a new input schema against the policy; its columns' Polars types."""
        contract = self.contract
        names = schema.names[:-1]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ContractError(
                f"{source} has repeated column names: {', '.join(map(repr, repeated))}. "
                f"Rename them in the source.",
                source=source,
            )
        change = contract.compare_schema(schema)
        refused = change if contract.schema == "fail" else _breaking(change)
        if refused:
            advice = (
                "Update the contract to the new schema, or set schema to 'additive' to accept "
                "added columns and widened types."
                if contract.schema == "fail"
                else "The 'additive' policy accepts only added columns and widened types: "
                "update the contract to the new schema."
            )
            raise ContractError(
                f"The columns of {source} do not match contract {contract.name!r} "
                f"(schema policy {contract.schema!r}): {'; '.join(refused.describe())}. {advice}",
                source=source,
                contract=contract.name,
                changes=refused.describe(),
            )
        self.schema_changes_ = self.schema_changes_.merge(change)
        types = dict(zip(names, _polars_types(schema), strict=True))
        self._types[schema] = types
        return types

    def _allowed_values(self) -> dict[str, pl.Series]:
        return {
            name: self.contract.reference(name)
            for name, column in self.contract.columns.items()
            if column.allowed_from is not None
        }

    def _unique(self, frame: pl.DataFrame, plan: _Plan, eligible: pl.Series) -> pl.DataFrame:
        """Fill each key's mask: a non-null key seen on an earlier row that passed the rest."""
        ok_rows = eligible.to_numpy()
        for (key, mask, hashes), keyset in zip(plan.keys, self._keysets, strict=True):
            hashed = frame.select(
                pl.all_horizontal([pl.col(c).is_not_null() for c in key]).alias("present"),
                *hashes,
            )
            present = hashed.get_column("present").to_numpy()
            h1 = _as_u64(hashed.get_column("h1"))
            h2 = _as_u64(hashed.get_column("h2"))
            dup = _duplicates(h1, h2, ok_rows & present, keyset) & present
            frame = frame.with_columns(pl.Series(mask, dup))
        return frame

    def _quarantine(
        self, chunk: Chunk, plan: _Plan, bad: pl.DataFrame, original: pl.DataFrame
    ) -> pa.Table:
        rejects = quarantined_rejects(chunk)
        if bad.height == 0:
            return rejects
        # Original values of the declared columns, for messages about values as read.
        extra = original.select(
            *[pl.col(n).alias(f"{_PRIVATE}o{n}") for n in plan.originals],
            _row_json(original).alias(_ROW),
        )
        bad = pl.concat([bad, extra], how="horizontal")
        checks = plan.checks
        first = pl.coalesce([pl.when(c.mask).then(pl.lit(i)) for i, c in enumerate(checks)])
        table = (
            bad.with_columns(first.alias(_FIRST))
            .select(
                pl.lit(chunk.source, pl.String).alias("source"),
                pl.col(LOCATION).alias("location"),
                pl.col(_FIRST)
                .replace_strict(list(range(len(checks))), [c.rule for c in checks])
                .cast(pl.String)
                .alias("rule"),
                pl.col(_FIRST)
                .replace_strict(
                    list(range(len(checks))), [c.column for c in checks], return_dtype=pl.String
                )
                .alias("column"),
                pl.concat_str(
                    [pl.when(c.mask).then(c.reason) for c in checks],
                    separator="; ",
                    ignore_nulls=True,
                ).alias("reason"),
                pl.col(_ROW).alias("row"),
            )
            .to_arrow()
            .cast(QUARANTINE_SCHEMA)
        )
        missing = [
            c for c in checks if (c.rule, c.column) not in self.examples_ and bad[c.mask].any()
        ]
        if missing:
            found = bad.select(
                [
                    pl.when(c.mask).then(c.reason).drop_nulls().first().alias(str(i))
                    for i, c in enumerate(missing)
                ]
            ).row(0)
            for check, example in zip(missing, found, strict=True):
                self.examples_[(check.rule, check.column)] = str(example)
        if rejects.num_rows:
            table = pa.concat_tables([table, rejects]).sort_by("location")
            self.examples_.setdefault(("parse", None), str(rejects.column("reason")[0]))
        return table

    def _count(
        self,
        plan: _Plan,
        frame: pl.DataFrame,
        passed: pl.DataFrame,
        quarantined: pa.Table,
        read: int,
    ) -> None:
        if plan.checks:
            sums = frame.select([pl.col(c.mask).sum() for c in plan.checks]).row(0)
            for check, count in zip(plan.checks, sums, strict=True):
                key = (check.rule, check.column)
                self.violation_counts_[key] = self.violation_counts_.get(key, 0) + int(count)
        rules = quarantined.column("rule").value_counts().to_pylist()
        for item in rules:
            name = str(item["values"])
            self.rule_counts_[name] = self.rule_counts_.get(name, 0) + int(item["counts"])
            if name == "parse":
                key = ("parse", None)
                self.violation_counts_[key] = self.violation_counts_.get(key, 0) + int(
                    item["counts"]
                )
        self.rows_passed_ += passed.height
        self.rows_quarantined_ += quarantined.num_rows
        self.rows_read_ += read
        fresh = self.contract.freshness
        if fresh is not None and passed.height:
            newest = passed.get_column(fresh.column).max()
            if newest is not None and (self.newest_ is None or newest > self.newest_):
                self.newest_ = newest

    # -- dataset level ---------------------------------------------------------------------

    def _freshness(self, now: datetime) -> FreshnessResult | None:
        fresh = self.contract.freshness
        if fresh is None:
            return None
        newest = self.newest_
        if isinstance(newest, date) and not isinstance(newest, datetime):
            newest = datetime(newest.year, newest.month, newest.day, tzinfo=UTC)
        if newest is None:
            return FreshnessResult(
                fresh.column,
                None,
                None,
                fresh.max_age,
                False,
                f"Freshness: no row passed with a value in {fresh.column!r}, so the data's age "
                f"is unknown.",
            )
        age = now - newest
        ok = age <= fresh.max_age
        message = (
            f"Freshness: the newest {fresh.column!r} is {newest.isoformat()}, "
            f"{_format_age(age)} old at {now.astimezone(UTC).isoformat()}; "
            f"the maximum age is {_format_age(fresh.max_age)}."
        )
        return FreshnessResult(fresh.column, newest, age, fresh.max_age, ok, message)

    def _volume(self, previous_rows: int | None) -> VolumeResult | None:
        volume = self.contract.volume
        if volume is None:
            return None
        rows = self.rows_passed_
        problems: list[str] = []
        if volume.min_rows is not None and rows < volume.min_rows:
            problems.append(f"{rows:,} rows passed, fewer than the minimum {volume.min_rows:,}")
        if volume.max_rows is not None and rows > volume.max_rows:
            problems.append(f"{rows:,} rows passed, more than the maximum {volume.max_rows:,}")
        ratio: float | None = None
        if previous_rows is not None:
            # From nothing to something is an infinite ratio; nothing to nothing is no change.
            ratio = rows / previous_rows if previous_rows else (1.0 if rows == 0 else math.inf)
            against = f"{rows:,} rows passed against {previous_rows:,} in the previous version"
            if volume.min_ratio is not None and ratio < volume.min_ratio:
                problems.append(f"{against} (ratio {ratio:.3g}, below {volume.min_ratio:g})")
            if volume.max_ratio is not None and ratio > volume.max_ratio:
                problems.append(f"{against} (ratio {ratio:.3g}, above {volume.max_ratio:g})")
        message = "Volume: " + ("; ".join(problems) + "." if problems else f"{rows:,} rows, ok.")
        return VolumeResult(rows, previous_rows, ratio, not problems, message)


# -- the plan: expressions for one input schema ---------------------------------------------------


def _edges_are_clean(array: pa.Array) -> bool:
    """Whether no value of a string array starts or ends with white space.

    Reads only each value's first and last byte, from the Arrow buffers. Any byte that
    may be (part of) white space as ``str.strip_chars`` sees it answers False (strip, to
    be safe): a control character or space (up to 32) or a byte of a non-ASCII character
    (128 and up); so does any array type but ``string`` and ``large_string``.
    """
    if array.type == pa.string():
        width: type[np.signedinteger[Any]] = np.int32
    elif array.type == pa.large_string():
        width = np.int64
    else:
        return False
    if not len(array):
        return True
    _, offsets_buffer, data_buffer = array.buffers()
    size = np.dtype(width).itemsize
    offsets = np.frombuffer(
        offsets_buffer, dtype=width, count=len(array) + 1, offset=array.offset * size
    )
    starts, ends = offsets[:-1], offsets[1:]
    filled = ends > starts  # null slots and empty values have no ends to look at
    if not filled.all():
        starts, ends = starts[filled], ends[filled]
    if not len(starts):
        return True
    data = np.frombuffer(data_buffer, dtype=np.uint8)
    printable = np.uint8(33), np.uint8(127 - 33)  # 33..126 once shifted: 0..93, else > 93
    for edge in (np.take(data, starts), np.take(data, ends - 1)):
        if np.any((edge - printable[0]) > printable[1]):
            return False
    return True


def _polars_types(schema: pa.Schema) -> list[pl.DataType]:
    empty = pl.from_arrow(schema.empty_table())
    assert isinstance(empty, pl.DataFrame)  # a Table always gives a DataFrame
    return list(empty.dtypes)[:-1]


def _build_plan(
    contract: Contract,
    types: Mapping[str, pl.DataType],
    references: Mapping[str, pl.Series],
    unstripped: frozenset[str] = frozenset(),
) -> _Plan:
    """The expressions for one input schema; text in ``unstripped`` columns is parsed as it
    is (none of it has white space to strip)."""
    stage0: list[pl.Expr] = []
    stage1: list[pl.Expr] = []
    stage2: list[pl.Expr] = []
    by_kind: dict[str, list[_Check]] = {kind: [] for kind in RULE_ORDER}
    for i, (name, column) in enumerate(contract.columns.items()):
        source = types[name]
        value, finish, bad, reason = _coerce(
            name,
            column,
            source,
            original=pl.col(f"{_PRIVATE}o{name}"),
            strip=name not in unstripped,
        )
        type_mask, coerced = f"{_PRIVATE}type{i}", f"{_PRIVATE}v{i}"
        stage0.append(value.alias(coerced))
        finished = finish(pl.col(coerced))
        stage1 += [
            finished.alias(name),
            bad(finished).fill_null(False).alias(type_mask),
        ]
        by_kind["type"].append(_Check("type", "type", name, type_mask, reason))
        v = pl.col(name)
        shown = _show(v, column.dtype)
        prefix = f"column {name!r}: "

        def add(kind: str, mask: pl.Expr, reason: pl.Expr, i: int = i, name: str = name) -> None:
            label = f"{_PRIVATE}{kind}{i}"
            stage2.append(mask.fill_null(False).alias(label))
            by_kind[kind].append(_Check(kind, kind, name, label, reason))

        if not column.nullable:
            add(
                "nullable",
                v.is_null() & ~pl.col(type_mask),
                pl.lit(f"{prefix}null, but the column is not nullable"),
            )
        ranged = v.is_not_nan() if column.type == "float64" else pl.lit(True)
        if column.min is not None:
            limit = _literal(column.min)
            add(
                "min",
                ranged & (v < pl.lit(column.min, column.dtype)),
                _text(prefix, shown, f" is below the minimum {limit}"),
            )
        if column.max is not None:
            limit = _literal(column.max)
            add(
                "max",
                ranged & (v > pl.lit(column.max, column.dtype)),
                _text(prefix, shown, f" is above the maximum {limit}"),
            )
        allowed: pl.Series | None = None
        if column.allowed is not None:
            allowed = pl.Series(list(column.allowed), dtype=column.dtype)
            described = f"one of the allowed values {_preview(allowed)}"
        elif name in references:
            allowed = references[name]
            described = f"among {_describe_reference(column.allowed_from, allowed)}"
        if allowed is not None:
            add(
                "allowed",
                v.is_not_null() & ~_is_one_of(v, allowed),
                _text(prefix, shown, f" is not {described}"),
            )
        if column.pattern is not None:
            add(
                "pattern",
                v.is_not_null() & ~v.str.contains(_anchored(column.pattern)),
                _text(prefix, shown, f" does not match the pattern {column.pattern!r}"),
            )
    for i, (name, rule) in enumerate(contract.rules.items()):
        label = f"{_PRIVATE}rule{i}"
        stage2.append(contract._exprs[name].not_().fill_null(False).alias(label))
        said = f"rule {name!r} is false" + (f": {rule}" if isinstance(rule, str) else "")
        by_kind["rule"].append(_Check("rule", f"rule:{name}", None, label, pl.lit(said)))
    keys: list[tuple[tuple[str, ...], str, list[pl.Expr]]] = []
    for i, key in enumerate(contract.keys):
        label = f"{_PRIVATE}unique{i}"
        if len(key) == 1:
            reason = _text(
                f"column {key[0]!r}: ",
                _show(pl.col(key[0]), contract.columns[key[0]].dtype),
                " repeats an earlier row",
            )
        else:
            parts: list[pl.Expr | str] = [f"key ({', '.join(key)}) = ("]
            for j, n in enumerate(key):
                parts += [", "] if j else []
                parts.append(_show(pl.col(n), contract.columns[n].dtype).fill_null("null"))
            parts.append(") repeats an earlier row")
            reason = _text(*parts)
        by_kind["unique"].append(_Check("unique", "unique", ", ".join(key), label, reason))
        keys.append((key, label, _key_hashes(key, contract)))
    stage1 += [pl.col(LOCATION), pl.int_range(pl.len(), dtype=pl.Int64).alias(_IDX)]
    checks = [check for kind in RULE_ORDER for check in by_kind[kind]]
    return _Plan(stage0, stage1, stage2, checks, keys, list(contract.columns))


_FEW_ALLOWED = 8
"""Up to this many allowed strings are compared one by one rather than looked up."""


def _is_one_of(value: pl.Expr, allowed: pl.Series) -> pl.Expr:
    """Whether ``value`` is among ``allowed`` (null where it is null).

    A few strings are compared one by one: comparing a string with one value is a few
    byte comparisons, looking it up hashes it first (four times as long for three codes).
    """
    if allowed.dtype == pl.String and 0 < len(allowed) <= _FEW_ALLOWED and not allowed.has_nulls():
        first, *others = (value == pl.lit(item, pl.String) for item in allowed.to_list())
        return functools.reduce(operator.or_, others, first)
    return value.is_in(allowed.implode())


def _key_hashes(key: tuple[str, ...], contract: Contract) -> list[pl.Expr]:
    """Two 64-bit values per row: the exact value of a one-column integer-like key, else
    two hashes of the key under independent seeds."""
    if len(key) == 1 and contract.columns[key[0]].type in ("int32", "int64", "date", "datetime"):
        exact = pl.col(key[0]).to_physical().cast(pl.Int64).fill_null(0)
        return [exact.alias("h1"), pl.lit(0, pl.Int64).alias("h2")]
    row = pl.struct([pl.col(n) for n in key])
    return [row.hash(_SEEDS[0]).alias("h1"), row.hash(_SEEDS[1]).alias("h2")]


def _as_u64(series: pl.Series) -> npt.NDArray[np.uint64]:
    array = series.to_numpy()
    return array.view(np.uint64) if array.dtype == np.int64 else array.astype(np.uint64)


Mask: TypeAlias = Callable[[pl.Expr], pl.Expr]
"""Given the column of coerced values, the mask of type violations."""

Finish: TypeAlias = Callable[[pl.Expr], pl.Expr]
"""Given the column of parsed values, the coerced values."""


def _never(_: pl.Expr) -> pl.Expr:
    return pl.lit(False)


def _identity(value: pl.Expr) -> pl.Expr:
    return value


def _coerce(
    name: str, column: Column, source: pl.DataType, *, original: pl.Expr, strip: bool = True
) -> tuple[pl.Expr, Finish, Mask, pl.Expr]:
    """The coerced value, what finishes it, its type violations, and the violation's message.

    The value is computed once into its own column, and finished from there (a float
    parsed from text loses its non-finite values: parsing twice, once for the test and
    once for the value, cost as much as the parse); the mask reads the finished value
    (and the input from ``name``). The message reads the value as read from ``original``.
    ``strip=False``: no text value has white space at either end (``_edges_are_clean``),
    so stripping it would change nothing and is left out.
    """
    x = pl.col(name)
    target = column.dtype
    prefix = f"column {name!r}: "
    if source == pl.Null:
        return x.cast(target), _identity, _never, pl.lit("")
    if source in (pl.String, pl.Categorical) or isinstance(source, pl.Enum):
        raw = x.cast(pl.String) if source != pl.String else x
        text = (
            pl.when(~raw.is_in(list(column.null_values))).then(raw) if column.null_values else raw
        )
        if column.type == "string":
            return text, _identity, _never, pl.lit("")
        finish = _identity
        if column.type == "float64" and not column.allow_non_finite:
            finish = _finite
        return (
            _parse(column, text.str.strip_chars() if strip else text),
            finish,
            lambda value: text.is_not_null() & value.is_null(),
            _text_reason(column, prefix, original.cast(pl.String)),
        )
    # A typed source: convert, and call any value that does not survive the round trip lossy.
    shown = _text(prefix, _show(original, source), f" ({_type_name(source)}) cannot be ")
    lossy = _text(shown, f"converted to {column.type} without loss")
    if column.type == "datetime":
        if source == pl.Date:
            return (
                _localize(x.cast(pl.Datetime("us")), column.timezone),
                _identity,
                lambda value: x.is_not_null() & value.is_null(),
                _text(shown, f"taken as midnight in {column.timezone or 'UTC'}"),
            )
        if isinstance(source, pl.Datetime):
            unit = source.time_unit
            utc = (
                x.dt.convert_time_zone("UTC")
                if source.time_zone
                else _localize(x, column.timezone, cast_unit=False)
            )
            return (
                utc.dt.cast_time_unit("us"),
                _identity,
                lambda value: (
                    x.is_not_null()
                    & ~value.dt.cast_time_unit(unit).eq_missing(utc).fill_null(False)
                ),
                lossy,
            )
    if column.type == "date" and isinstance(source, pl.Datetime):
        naive = x.dt.convert_time_zone("UTC").dt.replace_time_zone(None) if source.time_zone else x
        unit = source.time_unit
        return (
            naive.dt.date(),
            _identity,
            lambda value: (
                x.is_not_null() & ~value.cast(pl.Datetime(unit)).eq_missing(naive).fill_null(False)
            ),
            lossy,
        )
    if source == target:
        if column.type == "float64" and not column.allow_non_finite:
            return (
                x,
                _identity,
                lambda value: value.is_not_null() & ~value.is_finite(),
                _non_finite_reason(prefix, original),
            )
        return x, _identity, _never, pl.lit("")
    if source.is_numeric() and column.type in ("int32", "int64", "float64"):
        finite = column.type != "float64" or column.allow_non_finite

        def lost(value: pl.Expr) -> pl.Expr:
            back = value.cast(source, strict=False)
            mask = x.is_not_null() & (value.is_null() | back.ne_missing(x))
            # A float source's own NaN survives the round trip; refuse it here.
            return mask if finite else mask | (x.is_not_null() & ~value.is_finite())

        return x.cast(target, strict=False), _identity, lost, lossy
    raise ContractError(  # compare_schema calls this "changed", refused by every policy
        f"Column {name!r} of type {_type_name(source)} cannot be read as {column.type}.",
        column=name,
    )


def _finite(value: pl.Expr) -> pl.Expr:
    return pl.when(value.is_finite()).then(value)


def _localize(value: pl.Expr, timezone: str | None, *, cast_unit: bool = True) -> pl.Expr:
    """Naive datetimes taken in ``timezone``, as UTC; a skipped or repeated local time is
    null."""
    if cast_unit:
        value = value.dt.cast_time_unit("us")
    zone = timezone or "UTC"
    local = value.dt.replace_time_zone(zone, ambiguous="null", non_existent="null")
    return local if zone == "UTC" else local.dt.convert_time_zone("UTC")


def _parse(column: Column, t: pl.Expr) -> pl.Expr:
    """Text (never null-valued, and without white space at its ends) as the column's type;
    null where it does not parse.

    A float64 keeps its non-finite values here, whatever ``allow_non_finite`` says
    (``_coerce`` finishes it).
    """
    kind = column.type
    if kind in ("int32", "int64"):
        if column.thousands is None:
            # Polars reads exactly [+-]?[0-9]+ here (the tests hold it to that): no regex.
            return t.cast(column.dtype, strict=False)
        valid = t.str.contains(f"^[+-]?(?:{_digits(column.thousands)})$")
        t = t.str.replace_all(column.thousands, "", literal=True)
        return pl.when(valid).then(t).cast(column.dtype, strict=False)
    if kind == "float64":
        if column.thousands is None and column.decimal == ".":
            # Polars reads decimals, exponents and the words NaN and inf[inity]: no regex.
            value = t.cast(pl.Float64, strict=False)
        else:
            valid = t.str.contains(_float_rx(column))
            if column.thousands is not None:
                t = t.str.replace_all(column.thousands, "", literal=True)
            if column.decimal != ".":
                t = t.str.replace(column.decimal, ".", literal=True)
            value = pl.when(valid).then(t).cast(pl.Float64, strict=False)
            if column.allow_non_finite:
                value = (
                    pl.when(t.str.contains(_NAN_RX))
                    .then(pl.lit(math.nan))
                    .when(t.str.contains(_PINF_RX))
                    .then(pl.lit(math.inf))
                    .when(t.str.contains(_NINF_RX))
                    .then(pl.lit(-math.inf))
                    .otherwise(value)
                )
        return value  # non-finite values are nulled by ``_finite``, from the parsed column
    if kind == "bool":
        return (
            pl.when(t.is_in(list(column.true_values)))
            .then(pl.lit(True))
            .when(t.is_in(list(column.false_values)))
            .then(pl.lit(False))
            .otherwise(pl.lit(None, pl.Boolean))
        )
    formats = [_chrono(f) for f in (column.formats or _DEFAULT_FORMATS[kind])]
    if kind == "date":
        return pl.coalesce([t.str.to_date(f, strict=False) for f in formats])
    # A value matches formats with an offset or formats without, never both: the naive ones
    # are read first and taken in the time zone once (the costly step). Polars' cache of
    # parsed values pays only when few values repeat very often; timestamps rarely do (it
    # doubled the parse on the ingest benchmark, and still cost 35% at 720 distinct values
    # in 172,000).
    parsed = [t.str.to_datetime(f, strict=False, time_unit="us", cache=False) for f in formats]
    aware = [p for f, p in zip(formats, parsed, strict=True) if _has_offset(f)]
    naive = [p for f, p in zip(formats, parsed, strict=True) if not _has_offset(f)]
    if naive:
        aware.append(_localize(pl.coalesce(naive), column.timezone))
    return pl.coalesce(aware)


def _naive_parse(column: Column, t: pl.Expr) -> pl.Expr:
    """Text that a naive format reads (to tell a daylight-saving gap from a bad format)."""
    formats = [_chrono(f) for f in (column.formats or _DEFAULT_FORMATS["datetime"])]
    naive = [
        t.str.to_datetime(f, strict=False, time_unit="us") for f in formats if not _has_offset(f)
    ]
    return pl.coalesce(naive) if naive else pl.lit(None, pl.Datetime("us"))


def _text_reason(column: Column, prefix: str, raw: pl.Expr) -> pl.Expr:
    """Why a text value is not a valid value of the column's type."""
    quoted = _text("'", raw, "'")
    kind = column.type
    if kind in ("int32", "int64", "float64"):
        notes = []
        if column.thousands is not None:
            notes.append(f"{column.thousands!r} groups thousands")
        if column.decimal != ".":
            notes.append(f"{column.decimal!r} is the decimal mark")
        said = _text(
            prefix, quoted, f" is not a valid {kind}" + (f" ({', '.join(notes)})" if notes else "")
        )
        if kind == "float64" and not column.allow_non_finite:
            t = raw.str.strip_chars()
            # Valid syntax that still failed overflowed to an infinity, such as '1e400'.
            non_finite = (
                t.str.contains(_NAN_RX)
                | t.str.contains(_PINF_RX)
                | t.str.contains(_NINF_RX)
                | t.str.contains(_float_rx(column))
            )
            return pl.when(non_finite).then(_non_finite_reason(prefix, quoted)).otherwise(said)
        return said
    if kind == "bool":
        return _text(
            prefix,
            quoted,
            f" is not a valid bool (true: {', '.join(map(repr, column.true_values))}; "
            f"false: {', '.join(map(repr, column.false_values))})",
        )
    formats = ", ".join(repr(f) for f in (column.formats or _DEFAULT_FORMATS[kind]))
    said = _text(prefix, quoted, f" does not match the {kind} formats {formats}")
    if kind == "datetime":
        zone = column.timezone or "UTC"
        gap = _text(
            prefix,
            quoted,
            f" is not a single local time in {zone} (skipped or repeated by a clock change)",
        )
        naive = _naive_parse(column, raw.str.strip_chars())
        return pl.when(naive.is_not_null()).then(gap).otherwise(said)
    return said


def _non_finite_reason(prefix: str, shown: pl.Expr) -> pl.Expr:
    return _text(
        prefix, shown.cast(pl.String), " is not a finite number (set allow_non_finite to accept it)"
    )


def _float_rx(column: Column) -> str:
    """The syntax of a finite text float: digits (grouped by ``thousands``, if set), a
    fraction after ``decimal``, an exponent."""
    dec = _rx_escape(column.decimal)
    number = rf"^[+-]?(?:(?:{_digits(column.thousands)})(?:{dec}[0-9]*)?|{dec}[0-9]+)"
    return number + r"(?:[eE][+-]?[0-9]+)?$"


def _digits(thousands: str | None) -> str:
    if thousands is None:
        return "[0-9]+"
    sep = _rx_escape(thousands)
    return f"[0-9]{{1,3}}(?:{sep}[0-9]{{3}})+|[0-9]+"


def _rx_escape(text: str) -> str:
    return "".join("\\" + ch if ch in _RX_META else ch for ch in text)


def _anchored(pattern: str) -> str:
    return f"^(?:{pattern})$"


def _chrono(fmt: str) -> str:
    """A strftime format in the dialect Polars parses with: ``.%f`` becomes ``%.f``, and
    ``%z`` also reads ``Z`` and ``+02:00``."""
    return fmt.replace(".%f", "%.f").replace("%:z", "%#z").replace("%z", "%#z")


def _has_offset(fmt: str) -> bool:
    return "%#z" in fmt


def _check_format(fmt: str, kind: str) -> None:
    """Refuse a format with an unknown directive (Polars would give null for every value)."""
    chrono = _chrono(fmt)
    unknown = [
        m.group(0)
        for m in re.finditer(r"%([-_0^#]?[.:]?[0-9]?)([A-Za-z%+])", chrono)
        if m.group(2) not in _DIRECTIVES
    ]
    bare_f = re.search(r"(?<![.%])%f", chrono)
    if unknown or bare_f or "%" not in fmt:
        _bad_param(
            "Column",
            "formats",
            "strftime formats such as '%Y-%m-%d %H:%M:%S' ('.%f' for fractions, '%z' for "
            "an offset)",
            fmt,
        )
    try:
        probe = pl.Series(["2000-01-01"], dtype=pl.String)
        if kind == "date":
            probe.str.to_date(chrono, strict=False)
        else:
            probe.str.to_datetime(chrono, strict=False, time_unit="us")
    except pl.exceptions.PolarsError as exc:
        _bad_param("Column", "formats", f"a valid format ({str(exc).splitlines()[0]})", fmt)


def _text(*parts: pl.Expr | str) -> pl.Expr:
    """A message from literal text and expressions (null where an expression is null)."""
    return pl.concat_str([pl.lit(p) if isinstance(p, str) else p for p in parts])


def _show(value: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A value as a message shows it: text quoted, datetimes in ISO 8601."""
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return _text("'", value.cast(pl.String), "'")
    if isinstance(dtype, pl.Datetime):
        fmt = "%Y-%m-%dT%H:%M:%S%.f" + ("%:z" if dtype.time_zone else "")
        return value.dt.to_string(fmt)
    return value.cast(pl.String)


def _type_name(dtype: pl.DataType) -> str:
    """A source type as the messages name it (the contract's names where they exist)."""
    if isinstance(dtype, pl.Datetime):
        zone = f", {dtype.time_zone}" if dtype.time_zone else ""
        return f"timestamp[{dtype.time_unit}{zone}]"
    if isinstance(dtype, pl.Decimal):
        return f"decimal({dtype.precision}, {dtype.scale})"
    if dtype == pl.Boolean:
        return "bool"
    return str(dtype).lower()


def _literal(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, date | datetime):
        return value.isoformat()
    return str(value)


def _preview(values: pl.Series) -> str:
    shown = [_literal(v) for v in values.head(_SHOWN_VALUES).to_list()]
    more = len(values) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _describe_reference(reference: AllowedFrom, values: pl.Series) -> str:
    count = f"{len(values):,} value{'s' if len(values) != 1 else ''}"
    if isinstance(reference, tuple):
        where, column = reference
        return f"the {count} of column {column!r} in {_where(where)}"
    return f"the {count} allowed ({_preview(values)})"


def _row_json(frame: pl.DataFrame) -> pl.Expr:
    """Each row's values as read, as a JSON object (NaN and infinities as strings)."""
    parts: list[pl.Expr | str] = []
    columns = [n for n in frame.columns if n != LOCATION]
    for i, name in enumerate(columns):
        value = pl.col(name)
        if frame.schema[name].is_float():
            encoded = (
                pl.when(value.is_null())
                .then(pl.lit("null"))
                .when(value.is_nan())
                .then(pl.lit('"NaN"'))
                .when(value == math.inf)
                .then(pl.lit('"Infinity"'))
                .when(value == -math.inf)
                .then(pl.lit('"-Infinity"'))
                .otherwise(value.cast(pl.String))
            )
        else:
            struct = pl.struct(value.alias("v")).struct.json_encode()
            encoded = struct.str.slice(5, struct.str.len_chars() - 6)
        parts += ["," if i else "", json.dumps(name, ensure_ascii=False) + ":", encoded]
    return _text("{", *parts, "}")


def _breaking(change: SchemaChange) -> SchemaChange:
    return SchemaChange(dropped=change.dropped, changed=change.changed, declared=change.declared)


def _rule_rank(rule: str) -> int:
    return RULE_ORDER.index(rule.split(":", 1)[0]) if rule.split(":", 1)[0] in RULE_ORDER else 99


def _bad_rows_message(
    read: int, bad: int, fraction: float, contract: Contract, violations: Sequence[Violation]
) -> str:
    top = "; ".join(
        f"{v.rule}"
        + (f" on {v.column!r}" if v.column else "")
        + f": {v.rows:,} row{'s' if v.rows != 1 else ''}"
        + (f" (e.g. {v.example})" if v.example else "")
        for v in violations[:3]
    )
    return (
        f"{bad:,} of {read:,} rows ({fraction:.2%}) were quarantined, above max_bad_fraction "
        f"{contract.max_bad_fraction:.2%}. Most frequent: {top}."
    )


def _format_age(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{u}" for n, u in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return sign + (" ".join(parts) or "0s")


_DURATION_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def _parse_duration(text: object) -> timedelta:
    """``"2d"``, ``"36h"``, ``"1d12h"``, ``"90s"``: a positive duration."""
    if isinstance(text, str):
        found = re.fullmatch(r"\s*((?:\d+(?:\.\d+)?\s*[wdhms]\s*)+)", text)
        if found:
            total = sum(
                float(n) * _DURATION_UNITS[u]
                for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*([wdhms])", text)
            )
            if total > 0:
                return timedelta(seconds=total)
    raise ContractError(
        f"A duration must be a number with a unit (w, d, h, m, s) such as '2d' or '36h'. "
        f"Got {text!r}.",
        param="max_age",
    )


def _format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    if seconds != int(seconds):
        return f"{seconds}s"
    for unit, size in _DURATION_UNITS.items():
        if int(seconds) % size == 0:
            return f"{int(seconds) // size}{unit}"
    return f"{int(seconds)}s"  # pragma: no cover - the "s" unit always divides


def _plain(value: Any) -> Any:
    """A value as YAML writes it: dates and datetimes as ISO text."""
    if isinstance(value, date | datetime):
        return value.isoformat()
    return value


def _names(contract: Contract) -> str:
    return ", ".join(map(repr, contract.columns))


# -- allowed_from references --------------------------------------------------------------------


def _check_reference(reference: AllowedFrom) -> AllowedFrom:
    if isinstance(reference, pl.Series | list) or callable(reference):
        return reference
    if isinstance(reference, pa.Array | pa.ChunkedArray):
        return pl.Series(reference)
    if (
        isinstance(reference, tuple)
        and len(reference) == 2
        and isinstance(reference[0], str | os.PathLike | Files)
        and isinstance(reference[1], str)
    ):
        where = reference[0]
        return (os.fspath(where) if isinstance(where, os.PathLike) else where, reference[1])
    _bad_param(
        "Column",
        "allowed_from",
        "a Series, a list, a callable returning one, or a tuple (path_or_Files, column)",
        reference,
    )


def _where(where: str | Files) -> str:
    return ", ".join(where.patterns) if isinstance(where, Files) else where


def _reference_to_dict(reference: AllowedFrom) -> dict[str, Any]:
    if isinstance(reference, tuple):
        where, column = reference
        if isinstance(where, Files):
            path: str | list[str] = (
                where.patterns[0] if len(where.patterns) == 1 else list(where.patterns)
            )
        else:
            path = where
        return {"path": path, "column": column}
    raise ContractError(
        "An allowed_from given as a Series, a list or a callable cannot be written as YAML; "
        "use 'allowed' for literal values, or (path, column) for a table.",
        param="allowed_from",
    )


def _load_reference(contract: str, name: str, column: Column) -> pl.Series:
    """The distinct values of a column's ``allowed_from``, typed like the column."""
    reference = column.allowed_from
    described = f"allowed_from of column {name!r} in contract {contract!r}"
    if isinstance(reference, tuple):
        where, ref_column = reference
        values = _read_reference(where, ref_column, described)
    else:
        values = reference() if callable(reference) else reference
        if isinstance(values, pa.Array | pa.ChunkedArray):
            values = pl.Series(values)
        if not isinstance(values, pl.Series):
            try:
                values = pl.Series(list(values), strict=False)
            except (TypeError, ValueError, pl.exceptions.PolarsError) as exc:
                raise ContractError(
                    f"The {described} must give a list or Series of values. Got {exc}.",
                    column=name,
                ) from None
    frame = pl.DataFrame([values.alias(name), values.alias(f"{_PRIVATE}o{name}")])
    try:
        value, finish, bad, reason = _coerce(
            name, column, frame.dtypes[0], original=pl.col(f"{_PRIVATE}o{name}")
        )
        checked = frame.with_columns(finish(value).alias("value")).select(
            "value", bad(pl.col("value")).fill_null(False).alias("bad"), reason.alias("reason")
        )
    except ContractError as exc:
        raise ContractError(f"The {described} has the wrong type: {exc}", column=name) from None
    wrong = checked.filter("bad")
    if wrong.height:
        raise ContractError(
            f"The {described} holds {wrong.height:,} values that are not valid {column.type}, "
            f"such as: {wrong.item(0, 'reason')}. Fix the reference table or the column's type.",
            column=name,
        )
    return checked.get_column("value").drop_nulls().unique(maintain_order=True)


def _read_reference(where: str | Files, column: str, described: str) -> pl.Series:
    files = where if isinstance(where, Files) else Files(where)
    pieces: list[pl.Series] = []
    for path in files.paths():
        stem = re.sub(r"\.(gz|gzip|bz2|xz|zst|zstd|zip)$", "", path.lower())
        try:
            with fsspec.open(path, "rb", compression="infer") as handle:
                data = handle.read()
            if stem.endswith((".parquet", ".pq")):
                frame = pl.read_parquet(data)
            elif stem.endswith((".csv", ".tsv", ".txt")):
                separator = "\t" if stem.endswith(".tsv") else ","
                frame = pl.read_csv(data, separator=separator, infer_schema=False)
            elif stem.endswith((".jsonl", ".ndjson", ".json")):
                frame = pl.read_ndjson(data)
            else:
                raise ContractError(
                    f"The {described} names {path}, which is not CSV, TSV, Parquet or JSON "
                    f"Lines (by its extension). Convert it, or pass the values as a list.",
                    path=path,
                )
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise SourceError(
                f"Cannot read {path} for the {described}: {exc}. Check the file.", path=path
            ) from exc
        if column not in frame.columns:
            raise ContractError(
                f"The {described} names column {column!r}, which {path} does not have. Its "
                f"columns: {', '.join(map(repr, frame.columns))}.",
                path=path,
            )
        pieces.append(frame.get_column(column))
    return pl.concat(pieces) if len(pieces) > 1 else pieces[0]


# -- YAML ----------------------------------------------------------------------------------------

Path_: TypeAlias = tuple[str | int, ...]


def _load_yaml(text: str, origin: str | None) -> tuple[Any, dict[Path_, int]]:
    """The YAML document and the line of every key path, refusing repeated keys."""
    where = origin or "contract"
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        at = f", line {line}, column {mark.column + 1}" if mark is not None else ""
        raise ContractError(
            f"{where}{at}: not valid YAML ({problem}). Check the indentation and quoting there.",
            path=origin,
            line=line,
        ) from None
    lines: dict[Path_, int] = {}

    def walk(n: yaml.Node, path: Path_) -> None:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            seen: set[object] = set()
            for key_node, value_node in n.value:
                key = key_node.value
                if key in seen:
                    raise ContractError(
                        f"{where}, line {key_node.start_mark.line + 1}: key {key!r} appears "
                        f"twice in {_dotted(path) or 'the document'}. Keep one.",
                        path=origin,
                        line=key_node.start_mark.line + 1,
                    )
                seen.add(key)
                lines[(*path, key)] = key_node.start_mark.line + 1
                walk(value_node, (*path, key))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, (*path, i))

    if node is not None:
        walk(node, ())
    return data, lines


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_COLUMN_KEYS = tuple(f.name for f in fields(Column))
_CONTRACT_KEYS = tuple(f.name for f in fields(Contract) if f.init)


class _Reader:
    """Builds a contract from plain data, naming the key path and line of every error."""

    def __init__(
        self, *, lines: Mapping[Path_, int], origin: str | None, base: Path | None
    ) -> None:
        self.lines = lines
        self.origin = origin
        self.base = base

    def fail(self, path: Path_, message: str) -> NoReturn:
        line = None
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                break
        where = self.origin or "contract"
        where += f", line {line}" if line else ""
        where += f", at {_dotted(path)}" if path else ""
        raise ContractError(f"{where}: {message}", path=self.origin, line=line, key=_dotted(path))

    def mapping(self, value: object, path: Path_, known: Sequence[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.fail(
                path, f"expected a mapping with keys such as {', '.join(known[:3])}. Got {value!r}."
            )
        for key in value:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                self.fail(
                    (*path, key),
                    f"{key!r} is not a known key.{hint} Known keys: {', '.join(known)}.",
                )
        return value

    def wrapped(self, path: Path_, build: Callable[[], Any]) -> Any:
        try:
            return build()
        except ContractError as exc:
            param, rule = exc.context.get("param"), exc.context.get("rule")
            if param == "rules" and isinstance(rule, str):
                self.fail((*path, "rules", rule), exc.message)
            self.fail((*path, param) if isinstance(param, str) else path, exc.message)

    def contract(self, data: object) -> Contract:
        d = self.mapping(data, (), _CONTRACT_KEYS)
        for required in ("name", "columns"):
            if required not in d:
                self.fail((), f"the key {required!r} is missing.")
        columns_data = d["columns"]
        if not isinstance(columns_data, Mapping) or not columns_data:
            self.fail(
                ("columns",),
                f"expected a mapping of column names to settings. Got {columns_data!r}.",
            )
        columns: dict[str, Column] = {}
        for name, spec in columns_data.items():
            path: Path_ = ("columns", name)
            if not isinstance(name, str):
                self.fail(path, f"a column name must be text; quote {name!r}.")
            if isinstance(spec, str):
                spec = {"type": spec}
            spec = dict(self.mapping(spec, path, _COLUMN_KEYS))
            if "type" not in spec:
                self.fail(path, "the key 'type' is missing.")
            if "allowed_from" in spec:
                spec["allowed_from"] = self.reference(spec["allowed_from"], (*path, "allowed_from"))
            columns[name] = self.wrapped(path, functools.partial(Column, **spec))
        freshness = None
        if d.get("freshness") is not None:
            f = self.mapping(d["freshness"], ("freshness",), ("column", "max_age"))
            age = self.wrapped(("freshness",), lambda: _parse_duration(f.get("max_age")))
            freshness = self.wrapped(
                ("freshness",), lambda: Freshness(column=cast(str, f.get("column")), max_age=age)
            )
        volume = None
        if d.get("volume") is not None:
            v = self.mapping(d["volume"], ("volume",), [f.name for f in fields(Volume)])
            volume = self.wrapped(("volume",), lambda: Volume(**v))
        options = {
            k: d[k] for k in ("unique", "rules", "max_bad_fraction", "on_bad", "schema") if k in d
        }
        if isinstance(options.get("unique"), list):
            options["unique"] = [tuple(k) if isinstance(k, list) else k for k in options["unique"]]
        return cast(
            Contract,
            self.wrapped(
                (),
                lambda: Contract(
                    name=d["name"],
                    columns=columns,
                    freshness=freshness,
                    volume=volume,
                    **options,
                ),
            ),
        )

    def reference(self, value: object, path: Path_) -> tuple[str | Files, str]:
        spec = self.mapping(value, path, ("path", "column"))
        where, column = spec.get("path"), spec.get("column")
        if not isinstance(column, str):
            self.fail((*path, "column"), f"expected the reference column's name. Got {column!r}.")
        paths = [where] if isinstance(where, str) else where
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            self.fail((*path, "path"), f"expected a path, URL or glob. Got {where!r}.")
        resolved = [self._resolve(p) for p in paths]
        return (resolved[0] if len(resolved) == 1 else Files(*resolved), column)

    def _resolve(self, path: str) -> str:
        if self.base is None or "://" in path or Path(path).is_absolute():
            return path
        return str(self.base / path)
