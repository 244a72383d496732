"""Records of a paginated JSON API, read page by page as Arrow record batches.

``HTTPSource`` asks an API for one page at a time (cursor, offset or next-link
pagination), retries what a busy or failing server answers (429, 5xx, dropped
connections) with exponential backoff and the server's ``Retry-After``, and turns each
page's records into a chunk. The choices (nested values, changing fields, the
fingerprint) are in docs/decisions/0008-api-and-sql-sources.md.

Examples
--------
>>> import json, threading
>>> from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
>>> class Flights(BaseHTTPRequestHandler):
...     def do_GET(self):
...         offset = int(self.path.split("offset=")[1].split("&")[0])
...         rows = [{"id": i, "origin": "JFK"} for i in range(offset, min(offset + 2, 3))]
...         body = json.dumps({"data": rows}).encode()
...         self.send_response(200)
...         self.send_header("Content-Type", "application/json")
...         self.send_header("Content-Length", str(len(body)))
...         self.end_headers()
...         self.wfile.write(body)
...     def log_message(self, *args):
...         pass
>>> server = ThreadingHTTPServer(("127.0.0.1", 0), Flights)
>>> thread = threading.Thread(target=server.serve_forever, daemon=True)
>>> thread.start()
>>> source = HTTPSource(
...     f"http://127.0.0.1:{server.server_port}/flights",
...     pagination=OffsetPagination(limit=2),
... )
>>> [partition] = source.partitions()
>>> chunks = list(source.read(partition))
>>> [chunk.rows for chunk in chunks]
[2, 1]
>>> chunks[1].batch.to_pylist()
[{'id': 2, 'origin': 'JFK', '_location': 3}]
>>> server.shutdown()
>>> server.server_close()
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import httpx
import numpy as np
import orjson
import pyarrow as pa

from loopline.data.sources.base import LOCATION, Chunk, Partition
from loopline.errors import SourceError

__all__ = [
    "CursorPagination",
    "HTTPSource",
    "NextLinkPagination",
    "OffsetPagination",
    "Pagination",
]

_INT64 = (-(2**63), 2**63 - 1)
# A run of 20 digits: maybe an integer beyond 64 bits (also in a string, which is harmless).
_LONG_NUMBER = re.compile(rb"[0-9]{20}")
_SNIPPET = 200
# Query parameters whose values never appear in messages or partitions.
_SECRET_PARAM = re.compile(r"key|token|secret|passw|auth|signature|sig$|credential", re.I)


def _check_name(owner: str, parameter: str, value: object, example: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise SourceError(
            f"The {parameter!r} parameter of {owner} must be a non-empty name such as "
            f"{example!r}. Got {value!r}."
        )


@dataclass(frozen=True)
class CursorPagination:
    """Each page names the next: send it back as query parameter ``param``.

    ``next_field`` is a dotted path in the page's body (``"next_cursor"``,
    ``"meta.next"``); the last page has none, or null, or an empty string.

    Examples
    --------
    >>> CursorPagination(param="after", next_field="paging.next")
    CursorPagination(param='after', next_field='paging.next')
    """

    param: str = "cursor"
    next_field: str = "next_cursor"

    def __post_init__(self) -> None:
        _check_name("CursorPagination", "param", self.param, "cursor")
        _check_name("CursorPagination", "next_field", self.next_field, "next_cursor")


@dataclass(frozen=True)
class OffsetPagination:
    """Pages by ``offset`` and ``limit`` query parameters; a short or empty page is the last.

    Examples
    --------
    >>> OffsetPagination(limit=500)
    OffsetPagination(offset_param='offset', limit_param='limit', limit=500)
    """

    offset_param: str = "offset"
    limit_param: str = "limit"
    limit: int = 100

    def __post_init__(self) -> None:
        _check_name("OffsetPagination", "offset_param", self.offset_param, "offset")
        _check_name("OffsetPagination", "limit_param", self.limit_param, "limit")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise SourceError(
                "The 'limit' parameter of OffsetPagination must be a positive number of "
                f"items per page such as 100. Got {self.limit!r}."
            )


@dataclass(frozen=True)
class NextLinkPagination:
    """Each page links the next: a URL at ``field`` in the body (dotted path), or, with
    ``field=None``, the ``Link: <...>; rel="next"`` header. Relative links are resolved
    against the page's URL; the last page has no link.

    Examples
    --------
    >>> NextLinkPagination(field=None)
    NextLinkPagination(field=None)
    """

    field: str | None = "next"

    def __post_init__(self) -> None:
        if self.field is not None:
            _check_name("NextLinkPagination", "field", self.field, "next")


Pagination: TypeAlias = CursorPagination | OffsetPagination | NextLinkPagination
"""How an API splits its records into pages."""


class HTTPSource:
    """A JSON API's records, read page by page; one chunk per page (or per ``page_size``).

    One partition: pages are read in sequence, each asked for only when the previous
    one has been consumed, so memory holds one page at a time. Each record (a JSON
    object) becomes a row; its location is its 1-based item number across all pages.
    Fields become columns in the order first seen: a field missing from a record, or
    from a whole page, is null there. Nested objects and lists come through as their
    JSON text; a field whose values mix kinds (numbers and text) comes through as text
    from the page where the mix appears (numbers as JSON text); integers widen to
    float when a float appears. A read that finds no records yields one empty chunk.

    Parameters
    ----------
    url : str
        The ``http://`` or ``https://`` URL of the first page.
    items : str, default "data"
        The dotted path to the list of records in each page's body (``"data"``,
        ``"result.items"``); ``""`` when the body itself is the list.
    pagination : CursorPagination, OffsetPagination or NextLinkPagination, optional
        How to ask for the next page. None: the URL answers everything in one page.
    params : mapping, optional
        Query parameters sent with every request (a next link carries its own).
    headers : mapping, optional
        Headers sent with every request, such as ``{"Authorization": "Bearer ..."}``.
        They never appear in messages.
    page_size : int, optional
        The most records one chunk holds: a bigger page is cut into several chunks.
        None: one chunk per page. (The API's own page size is set by the pagination,
        such as ``OffsetPagination(limit=500)``, or by ``params``.)
    retries : int, default 5
        How many times a request is tried again after a 429, a 5xx or a connection
        error, before the read fails.
    backoff : float, default 0.5
        Seconds to wait before the first retry; each later retry waits twice as long.
        A ``Retry-After`` header (seconds or an HTTP date) replaces the computed wait.
    max_backoff : float, default 30.0
        The longest wait between two tries, whatever ``Retry-After`` asks for.
    timeout : float, default 30.0
        Seconds to wait for the server to connect, send or answer.
    name : str, optional
        A short name for messages and dataset records; by default the URL's host.
    sleep : callable, default time.sleep
        How to wait between tries (tests pass a recorder).
    """

    def __init__(
        self,
        url: str,
        *,
        items: str = "data",
        pagination: Pagination | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        page_size: int | None = None,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 30.0,
        name: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parsed = _parse_url(url)
        if not isinstance(items, str):
            raise SourceError(
                "The 'items' parameter of HTTPSource must be the dotted path to the records "
                f"in a page, such as 'data' or 'result.items' ('' for a list). Got {items!r}."
            )
        if pagination is not None and not isinstance(
            pagination, CursorPagination | OffsetPagination | NextLinkPagination
        ):
            raise SourceError(
                "The 'pagination' parameter of HTTPSource must be CursorPagination(), "
                f"OffsetPagination() or NextLinkPagination(), or None. Got {pagination!r}."
            )
        for parameter, mapping in (("params", params), ("headers", headers)):
            if mapping is not None and not isinstance(mapping, Mapping):
                raise SourceError(
                    f"The {parameter!r} parameter of HTTPSource must be a mapping of names to "
                    f"values. Got {type(mapping).__name__}."
                )
        if page_size is not None and (
            isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1
        ):
            raise SourceError(
                "The 'page_size' parameter of HTTPSource must be a positive number of records "
                f"such as 1000, or None. Got {page_size!r}."
            )
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise SourceError(
                "The 'retries' parameter of HTTPSource must be a number of retries such as 5 "
                f"(0: never retry). Got {retries!r}."
            )
        for parameter, seconds, low in (
            ("backoff", backoff, 0.0),
            ("max_backoff", max_backoff, 0.0),
            ("timeout", timeout, None),
        ):
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, int | float)
                or not math.isfinite(seconds)
                or (seconds < low if low is not None else seconds <= 0)
            ):
                need = "a non-negative" if low is not None else "a positive"
                raise SourceError(
                    f"The {parameter!r} parameter of HTTPSource must be {need} number of "
                    f"seconds such as 0.5. Got {seconds!r}."
                )
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise SourceError(
                f"The 'name' parameter of HTTPSource must be a non-empty string. Got {name!r}."
            )
        self.url = url
        self.items = items
        self.pagination = pagination
        self.params: dict[str, Any] = dict(params or {})
        self.headers: dict[str, str] = dict(headers or {})
        self.page_size = page_size
        self.retries = retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.timeout = float(timeout)
        self.name: str = name if name is not None else parsed.host
        self.sleep = sleep

    def __repr__(self) -> str:
        pagination = "" if self.pagination is None else f", pagination={self.pagination!r}"
        return f"HTTPSource({_redact(self.url)!r}, items={self.items!r}{pagination})"

    # -- the Source protocol ------------------------------------------------------------

    def partitions(self) -> list[Partition]:
        """The one partition: all pages, in order.

        An API offers no cheap identity of its content, so the fingerprint is fresh on
        every call: a step that reads the API is never answered from the cache. The
        dataset version written from what was read carries the content hash.
        """
        return [
            Partition(source=self._where(), key="all pages", fingerprint=f"http-{uuid.uuid4().hex}")
        ]

    def read(self, partition: Partition) -> Iterator[Chunk]:
        """Yield each page's records as chunks, asking for a page only when needed."""
        if partition.source != self._where():
            raise ValueError(
                f"The partition of {partition.source!r} does not belong to HTTP source "
                f"{self.name!r}; read a partition from its partitions()."
            )
        where = self._where()
        columns = _Columns(self.name)
        read = 0
        headers = {"Accept": "application/json", **self.headers}
        with httpx.Client(headers=headers, timeout=self.timeout, follow_redirects=True) as client:
            for page_url, records in self._pages(client):
                step = self.page_size or max(len(records), 1)
                for start in range(0, len(records), step):
                    part = records[start : start + step]
                    batch = columns.batch(part, page_url=page_url)
                    locations = np.arange(read + 1, read + 1 + len(part), dtype=np.int64)
                    yield Chunk.of(batch, source=where, locations=pa.array(locations))
                    read += len(part)
        if read == 0:
            yield Chunk.of(pa.table({}), source=where, locations=[])

    # -- pages --------------------------------------------------------------------------

    def _pages(self, client: httpx.Client) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """Yield (page URL, records) for every page, in order."""
        pagination = self.pagination
        if isinstance(pagination, OffsetPagination):
            offset = 0
            while True:
                params = {
                    **self.params,
                    pagination.offset_param: offset,
                    pagination.limit_param: pagination.limit,
                }
                response, body = self._get(client, self.url, params)
                records = self._records(body, response)
                yield _redact(response.url), records
                if len(records) < pagination.limit:
                    return
                offset += len(records)
        elif isinstance(pagination, CursorPagination):
            params = dict(self.params)
            seen: set[str] = set()
            while True:
                response, body = self._get(client, self.url, params)
                records = self._records(body, response)
                yield _redact(response.url), records
                cursor = _at(body, pagination.next_field)
                if cursor is None or cursor == "":
                    return
                if isinstance(cursor, dict | list):
                    raise SourceError(
                        f"HTTP source {self.name!r}: the page at {_redact(response.url)} has a "
                        f"{type(cursor).__name__} at {pagination.next_field!r}, not a cursor. "
                        f"Set CursorPagination(next_field=...) to the field that holds it.",
                        url=_redact(response.url),
                        source=self.name,
                    )
                token = cursor if isinstance(cursor, str) else _json_text(cursor)
                if token in seen:
                    raise self._loop(response, f"the cursor {token!r}")
                seen.add(token)
                params = {**self.params, pagination.param: token}
        elif isinstance(pagination, NextLinkPagination):
            url: httpx.URL | str = self.url
            first = True
            visited: set[str] = set()
            while True:
                response, body = self._get(client, url, self.params if first else None)
                first = False
                records = self._records(body, response)
                yield _redact(response.url), records
                if pagination.field is None:
                    link = response.links.get("next", {}).get("url")
                else:
                    link = _at(body, pagination.field)
                if link is None or link == "":
                    return
                if not isinstance(link, str):
                    raise SourceError(
                        f"HTTP source {self.name!r}: the page at {_redact(response.url)} has "
                        f"{link!r} at {pagination.field!r}, not a URL. Set "
                        f"NextLinkPagination(field=...) to the field that holds the next "
                        f"page's URL, or field=None for the Link header.",
                        url=_redact(response.url),
                        source=self.name,
                    )
                url = response.url.join(link)
                if str(url) in visited:
                    raise self._loop(response, f"the link {_redact(url)}")
                visited.add(str(url))
        else:
            response, body = self._get(client, self.url, self.params)
            yield _redact(response.url), self._records(body, response)

    def _loop(self, response: httpx.Response, what: str) -> SourceError:
        return SourceError(
            f"HTTP source {self.name!r}: the page at {_redact(response.url)} points back to "
            f"{what}, which was already read; reading on would never end. Check the "
            f"pagination settings against the API's documentation.",
            url=_redact(response.url),
            source=self.name,
        )

    def _records(self, body: Any, response: httpx.Response) -> list[dict[str, Any]]:
        """The list of records at ``items`` in a page's body; every one must be an object."""
        page = _redact(response.url)
        records: Any = body
        where = "the body"
        for part in self.items.split(".") if self.items else ():
            if not isinstance(records, dict) or part not in records:
                found = (
                    f"its keys are {sorted(records)[:20]!r}"
                    if isinstance(records, dict)
                    else f"it is a {_kind(records)}"
                )
                raise SourceError(
                    f"HTTP source {self.name!r}: the page at {page} has no {self.items!r} "
                    f"({where} has no {part!r}; {found}). Set items= to the dotted path of "
                    f"the list of records, such as 'data' or 'result.items', or '' when the "
                    f"body is the list.",
                    url=page,
                    source=self.name,
                )
            records = records[part]
            where = repr(part) if where == "the body" else f"{where[:-1]}.{part}'"
        if not isinstance(records, list):
            raise SourceError(
                f"HTTP source {self.name!r}: the page at {page} has a {_kind(records)} at "
                f"{self.items or 'the top'!r}, not a list of records. Set items= to the "
                f"dotted path of the list.",
                url=page,
                source=self.name,
            )
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise SourceError(
                    f"HTTP source {self.name!r}: record {index + 1} of the page at {page} is "
                    f"a {_kind(record)} ({_snippet(_json_text(record))}), not an "
                    f"object. Point items= at a list of objects.",
                    url=page,
                    source=self.name,
                )
        return records

    # -- the HTTP boundary --------------------------------------------------------------

    def _get(
        self, client: httpx.Client, url: httpx.URL | str, params: Mapping[str, Any] | None
    ) -> tuple[httpx.Response, Any]:
        """GET a page, retrying 429, 5xx and connection errors; return it and its JSON."""
        tries = self.retries + 1
        # Merged, not passed as params=: httpx would replace the URL's own query with them.
        target = httpx.URL(url).copy_merge_params(params) if params else httpx.URL(url)
        shown = _redact(target)
        failure = ""
        last: httpx.TransportError | httpx.Response | None = None
        for attempt in range(tries):
            retry_after: float | None = None
            try:
                response = client.get(target)
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                raise SourceError(
                    f"HTTP source {self.name!r} cannot request {shown}: {exc}. Use an http:// "
                    f"or https:// URL.",
                    url=shown,
                    source=self.name,
                ) from exc
            except httpx.TransportError as exc:
                failure = f"failed with {type(exc).__name__} ({str(exc) or 'no detail'})"
                last = exc
            except httpx.HTTPError as exc:  # too many redirects, a bad response
                raise SourceError(
                    f"HTTP source {self.name!r} cannot read {shown}: {type(exc).__name__} "
                    f"({exc}). Check the URL in a browser or with curl.",
                    url=shown,
                    source=self.name,
                ) from exc
            else:
                status = response.status_code
                if status == 429 or 500 <= status <= 599:
                    failure = f"answered {status} {response.reason_phrase}"
                    retry_after = _retry_after(response.headers.get("Retry-After"))
                    last = response
                elif response.is_error:
                    raise self._refused(response)
                else:
                    return response, self._json(response)
            if attempt + 1 == tries:
                break
            wait = self.backoff * 2**attempt if retry_after is None else retry_after
            self.sleep(min(wait, self.max_backoff))
        status_context = last.status_code if isinstance(last, httpx.Response) else None
        if status_context == 429:
            todo = (
                "The API limits the request rate: read less often, or allow longer waits "
                "with HTTPSource(..., retries=..., max_backoff=...)."
            )
        elif status_context is not None:
            todo = (
                "The server is failing: check the API's status, then run again; to wait "
                "longer, raise HTTPSource(..., retries=..., max_backoff=...)."
            )
        else:
            todo = (
                "Check that the server is running and reachable from here, and the URL's "
                "host and port; to wait longer, raise HTTPSource(..., retries=..., timeout=...)."
            )
        error = SourceError(
            f"HTTP source {self.name!r}: {shown} {failure} on all {tries} tries. {todo}",
            url=shown,
            source=self.name,
            status=status_context,
        )
        if isinstance(last, Exception):
            raise error from last
        raise error

    def _refused(self, response: httpx.Response) -> SourceError:
        status = response.status_code
        page = _redact(response.url)
        if status in (401, 403):
            todo = "Check the credentials sent in HTTPSource(..., headers=...) or params."
        elif status == 404:
            todo = "Check the URL, the params and the pagination parameters."
        else:
            todo = "Check the request against the API's documentation."
        return SourceError(
            f"HTTP source {self.name!r}: {page} answered {status} {response.reason_phrase} "
            f"({_snippet(response.text)}). {todo}",
            url=page,
            source=self.name,
            status=status,
        )

    def _json(self, response: httpx.Response) -> Any:
        content = response.content
        try:
            if _LONG_NUMBER.search(content):
                # orjson reads integers beyond 64 bits as floats; Python's decoder keeps them.
                return json.loads(content)
            return orjson.loads(content)
        except (orjson.JSONDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            page = _redact(response.url)
            kind = response.headers.get("Content-Type", "no Content-Type")
            raise SourceError(
                f"HTTP source {self.name!r}: the page at {page} is not JSON ({kind}: {exc}; it "
                f"starts {_snippet(response.text)}). Check that the URL is the API's JSON "
                f"endpoint and that no proxy or login page answers instead.",
                url=page,
                source=self.name,
            ) from exc

    def _where(self) -> str:
        return _redact(self.url)


# -- records to Arrow ------------------------------------------------------------------------

# The kinds of JSON values a column can hold, and the Arrow type of each. A column's kind
# only ever widens (null < the others; int < float; any other mix is text).
_TYPES: dict[str, pa.DataType] = {
    "null": pa.null(),
    "bool": pa.bool_(),
    "int": pa.int64(),
    "float": pa.float64(),
    "text": pa.string(),
}


def _value_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if _INT64[0] <= value <= _INT64[1] else "text"
    if isinstance(value, float):
        return "float"
    return "text"  # strings, and objects and lists as their JSON text


def _join(a: str, b: str) -> str:
    if a == b or b == "null":
        return a
    if a == "null":
        return b
    if {a, b} == {"int", "float"}:
        return "float"
    return "text"


class _Columns:
    """The columns seen so far in one read, in first-seen order, with their kinds."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.kinds: dict[str, str] = {}

    def batch(self, records: list[dict[str, Any]], *, page_url: str) -> pa.Table:
        count = len(records)
        values: dict[str, list[Any]] = {name: [None] * count for name in self.kinds}
        for index, record in enumerate(records):
            for key, value in record.items():
                column = values.get(key)
                if column is None:
                    if key == LOCATION:
                        raise SourceError(
                            f"HTTP source {self.source!r}: the records at {page_url} have a "
                            f"field named {LOCATION!r}, the name loopline gives each row's "
                            f"location. Rename it in the API request, if it allows.",
                            url=page_url,
                            source=self.source,
                        )
                    values[key] = column = [None] * count
                    self.kinds[key] = "null"
                column[index] = value
        arrays = []
        for name, column in values.items():
            kind = self.kinds[name]
            for value in column:
                kind = _join(kind, _value_kind(value))
            self.kinds[name] = kind
            if kind == "text":
                column = [v if v is None or isinstance(v, str) else _json_text(v) for v in column]
            arrays.append(pa.array(column, _TYPES[kind]))
        if not arrays:  # records without fields: rows with no columns, still counted
            return pa.table({"": pa.nulls(count)}).drop_columns([""])
        return pa.Table.from_arrays(arrays, names=list(values))


# -- helpers ---------------------------------------------------------------------------------


def _json_text(value: Any) -> str:
    """Compact JSON text of a value; integers beyond 64 bits too (orjson refuses them)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _at(body: Any, path: str) -> Any:
    """The value at a dotted path in a JSON body, or None where the path is missing."""
    value = body
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _kind(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= _SNIPPET else text[: _SNIPPET - 3] + "...")


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _parse_url(url: object) -> httpx.URL:
    example = "'https://api.example.com/v1/flights'"
    try:
        parsed = httpx.URL(url) if isinstance(url, str) else None
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        shown = _redact(url) if isinstance(url, str) else url
        raise SourceError(
            f"The 'url' parameter of HTTPSource must be an http:// or https:// URL such as "
            f"{example}. Got {shown!r}."
        )
    return parsed


def _redact(url: httpx.URL | str) -> str:
    """The URL without its password, and with secret-looking query values as ``***``."""
    text = re.sub(r"(://[^:/@?#]*:)[^@/?#]*@", r"\1***@", str(url))
    base, mark, rest = text.partition("?")
    if not mark:
        return text
    query, hash_mark, fragment = rest.partition("#")
    pairs = []
    for pair in query.split("&"):
        key, equals, _ = pair.partition("=")
        secret = equals and _SECRET_PARAM.search(urllib.parse.unquote_plus(key))
        pairs.append(f"{key}=***" if secret else pair)
    return f"{base}?{'&'.join(pairs)}{hash_mark}{fragment}"
