"""Shared type aliases and small protocols used across layers."""

from __future__ import annotations

from typing import Any, Protocol, TypeAlias, runtime_checkable

__all__ = ["Fingerprinted", "JSONValue", "Params"]

JSONValue: TypeAlias = Any
"""A value that orjson can encode: None, bool, int, float, str, lists and str-keyed dicts."""

Params: TypeAlias = dict[str, Any]


@runtime_checkable
class Fingerprinted(Protocol):
    """A parameter that stands for external data (files, a SQL query).

    The pipeline cache calls ``fingerprint()`` before deciding whether a step's stored
    output is still valid, so fresh data is never answered from the cache.
    """

    def fingerprint(self) -> str:
        """Return a string that changes whenever the data it stands for changes."""
        ...

    def to_param(self) -> JSONValue:
        """Return a JSON-able description recorded with the run's parameters."""
        ...
