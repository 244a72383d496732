"""Basic structural checks on Arrow tables: required columns and their types."""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

from loopline.errors import ContractError

__all__ = ["require_columns"]

_FAMILIES: dict[str, tuple[str, ...]] = {
    "integer": ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"),
    "number": (
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "halffloat",
        "float",
        "double",
    ),
    "string": ("string", "large_string", "string_view"),
    "timestamp": ("timestamp",),
}


def _type_name(data_type: pa.DataType) -> str:
    return "timestamp" if pa.types.is_timestamp(data_type) else str(data_type)


def _expected_type(name: str, expected: str) -> pa.DataType | None:
    """The Arrow type that ``expected`` names, or None for a family."""
    if expected in _FAMILIES:
        return None
    try:
        # Aliases too: "float64" is double, "date32" is date32[day], "utf8" is string.
        return pa.type_for_alias(expected)
    except ValueError:
        raise ContractError(
            f"The 'columns' parameter of require_columns must map each name to an Arrow type "
            f"name such as 'int64' or 'double', or a family: {', '.join(_FAMILIES)}. "
            f"Got {expected!r} for column {name!r}.",
            column=name,
        ) from None


def require_columns(table: pa.Table, columns: Mapping[str, str], *, source: str) -> pa.Table:
    """Check that ``table`` has every column in ``columns`` with a compatible type.

    ``columns`` maps a name to an Arrow type name (``"int64"``, ``"double"``) or a family:
    ``"integer"``, ``"number"``, ``"string"``, ``"timestamp"``. Every problem is reported
    at once in one ``ContractError``; the table is returned unchanged when all is well.

    Examples
    --------
    >>> t = pa.table({"month": [1, 2], "carrier": ["UA", "AA"]})
    >>> require_columns(t, {"month": "integer", "carrier": "string"}, source="flights").num_rows
    2
    >>> require_columns(t, {"dep_delay": "number"}, source="flights")
    Traceback (most recent call last):
    ...
    loopline.errors.ContractError: flights does not have the expected columns: ...
    """
    exact = {name: _expected_type(name, expected) for name, expected in columns.items()}
    problems: list[str] = []
    for name, expected in columns.items():
        count = table.column_names.count(name)
        if count == 0:
            problems.append(f"missing required column {name!r} ({expected})")
            continue
        if count > 1:
            problems.append(f"column {name!r} appears {count} times")
            continue
        actual = table.schema.field(name).type
        wanted = exact[name]
        fits = _type_name(actual) in _FAMILIES[expected] if wanted is None else actual == wanted
        if not fits and not (pa.types.is_null(actual) and table.num_rows == 0):
            problems.append(f"column {name!r} has type {actual}, expected {expected}")
    if problems:
        raise ContractError(
            f"{source} does not have the expected columns: {'; '.join(problems)}. Columns present: "
            f"{', '.join(table.column_names)}. Fix the source or the expected types.",
            source=source,
            problems=problems,
        )
    return table
