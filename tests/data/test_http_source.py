"""HTTPSource: a JSON API read page by page, against a real local server.

The server (stdlib ``http.server`` in a thread, one per module) answers every kind of
pagination, failing and misbehaving pages. Tests that retry pass a ``sleep`` that records
the waits instead of sleeping, so the suite stays fast and the waits are checked exactly.
"""

from __future__ import annotations

import email.utils
import json
import pickle
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.data.sources import (
    LOCATION,
    Chunk,
    CursorPagination,
    HTTPSource,
    NextLinkPagination,
    OffsetPagination,
    Source,
)
from loopline.errors import SourceError

SECRET = "tok-3x4mple"

# Fixed pages served by /fixed/<name>?page=i, chained with "next_page".
FIXED: dict[str, list[list[Any]]] = {
    "keys": [
        [{"a": 1, "b": "x"}, {"a": 2}],
        [{"a": 3, "c": True}],
        [{"c": False, "b": "z"}],
    ],
    "kinds": [
        [
            {
                "n": 1,
                "f": 1.5,
                "mixed": 1,
                "nested": {"k": [1, 2]},
                "list": [1, "a"],
                "big": 2**70,
                "none": None,
                "flag": True,
            }
        ],
        [
            {
                "n": 2.5,
                "f": 2,
                "mixed": "one",
                "nested": None,
                "list": [],
                "big": 3,
                "none": None,
                "flag": False,
            }
        ],
    ],
    "not_object": [[{"id": 1}, 2]],
    "empty_objects": [[{}, {}], [{"a": 1}]],
    "location": [[{"_location": 5}]],
}


class Handler(BaseHTTPRequestHandler):
    """The test API. Query parameters shape each answer; counters live on the server."""

    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        with self.server.lock:
            self.server.requests[query.get("run", parts.path)] += 1
            count = self.server.requests[query.get("run", parts.path)]
        route = getattr(self, "route_" + parts.path.strip("/").split("/")[0], None)
        if route is None:
            self.answer(404, {"error": "no such endpoint"})
            return
        route(parts.path, query, count)

    # -- helpers ---------------------------------------------------------------------------

    def answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    @staticmethod
    def records(start: int, stop: int) -> list[dict[str, Any]]:
        return [{"id": i, "name": f"n{i}"} for i in range(start, stop)]

    # -- pagination ------------------------------------------------------------------------

    def route_cursor(self, path: str, q: dict[str, str], count: int) -> None:
        total, size, start = int(q["total"]), int(q["size"]), int(q.get("cursor", 0))
        stop = min(start + size, total)
        following = str(stop) if stop < total else None
        self.answer(200, {"data": self.records(start, stop), "next_cursor": following})

    def route_offset(self, path: str, q: dict[str, str], count: int) -> None:
        total, offset, limit = int(q["total"]), int(q["offset"]), int(q["limit"])
        self.answer(200, {"data": self.records(offset, min(offset + limit, total))})

    def route_next(self, path: str, q: dict[str, str], count: int) -> None:
        total, size, start = int(q["total"]), int(q["size"]), int(q.get("start", 0))
        stop = min(start + size, total)
        link = None
        if stop < total:
            link = "/next?" + urlencode({**q, "start": stop})
            if q.get("absolute") == "1":
                link = self.base() + link
        self.answer(200, {"results": self.records(start, stop), "links": {"next": link}})

    def route_link(self, path: str, q: dict[str, str], count: int) -> None:
        total, size, start = int(q["total"]), int(q["size"]), int(q.get("start", 0))
        stop = min(start + size, total)
        headers = {}
        if stop < total:
            following = self.base() + "/link?" + urlencode({**q, "start": stop})
            headers["Link"] = f'<{following}>; rel="next", <{self.base()}/link>; rel="first"'
        self.answer(200, self.records(start, stop), headers)

    def route_fixed(self, path: str, q: dict[str, str], count: int) -> None:
        pages = FIXED[path.split("/")[2]]
        page = int(q.get("page", 0))
        following = page + 1 if page + 1 < len(pages) else None
        self.answer(200, {"data": pages[page], "next_page": following})

    def route_loop(self, path: str, q: dict[str, str], count: int) -> None:
        self.answer(200, {"data": [{"id": count}], "next_cursor": "again"})

    # -- failures --------------------------------------------------------------------------

    def route_flaky(self, path: str, q: dict[str, str], count: int) -> None:
        """``fail`` failing answers (``status``, optional ``retry_after``), then the data."""
        if count <= int(q.get("fail", 1)):
            headers = {}
            if "retry_after" in q:
                headers["Retry-After"] = q["retry_after"]
            if "retry_in" in q:  # an HTTP date that many seconds from now
                when = time.time() + float(q["retry_in"])
                headers["Retry-After"] = email.utils.formatdate(when, usegmt=True)
            self.answer(int(q.get("status", 500)), {"error": "try later"}, headers)
            return
        self.answer(200, {"data": [{"id": 1, "try": count}]})

    def route_drop(self, path: str, q: dict[str, str], count: int) -> None:
        """Close the connection without an answer, ``fail`` times."""
        if count <= int(q.get("fail", 1)):
            self.close_connection = True
            return
        self.answer(200, {"data": [{"id": 1}]})

    def route_status(self, path: str, q: dict[str, str], count: int) -> None:
        self.answer(int(q["code"]), {"error": f"says {q['code']}"})

    def route_html(self, path: str, q: dict[str, str], count: int) -> None:
        raw = b"<html><body>Please log in</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def route_nested(self, path: str, q: dict[str, str], count: int) -> None:
        self.answer(200, {"result": {"items": self.records(0, 3), "total": 3}})

    def route_echo(self, path: str, q: dict[str, str], count: int) -> None:
        self.answer(200, {"data": [{"auth": self.headers.get("Authorization"), **q}]})


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()


@pytest.fixture(scope="module")
def server() -> Iterator[ApiServer]:
    httpd = ApiServer()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def api(server: ApiServer) -> str:
    """The base URL of the test API."""
    return f"http://127.0.0.1:{server.server_port}"


def _unique(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name}-{time.monotonic_ns()}"


def _chunks(source: HTTPSource) -> list[Chunk]:
    [partition] = source.partitions()
    return list(source.read(partition))


def _rows(source: HTTPSource) -> list[dict[str, Any]]:
    return [row for chunk in _chunks(source) for row in chunk.batch.to_pylist()]


# -- pagination ------------------------------------------------------------------------------


def test_http_source_is_a_source_with_one_fresh_partition(api: str) -> None:
    source = HTTPSource(f"{api}/cursor?total=3&size=2", pagination=CursorPagination())
    assert isinstance(source, Source)
    assert source.name == "127.0.0.1"
    [first] = source.partitions()
    [second] = source.partitions()
    assert first.source == second.source == f"{api}/cursor?total=3&size=2"
    assert first.fingerprint != second.fingerprint  # never answered from the cache


def test_cursor_pagination_reads_every_page(api: str) -> None:
    source = HTTPSource(
        f"{api}/cursor", params={"total": 5, "size": 2}, pagination=CursorPagination()
    )
    chunks = _chunks(source)
    assert [chunk.rows for chunk in chunks] == [2, 2, 1]
    rows = [row for chunk in chunks for row in chunk.batch.to_pylist()]
    assert rows == [{"id": i, "name": f"n{i}", LOCATION: i + 1} for i in range(5)]
    assert chunks[0].source == f"{api}/cursor"


def test_offset_pagination_stops_on_a_short_page(api: str, server: ApiServer) -> None:
    source = HTTPSource(
        f"{api}/offset",
        params={"total": 7, "run": "offset-short"},
        pagination=OffsetPagination(limit=3),
    )
    assert [row["id"] for row in _rows(source)] == list(range(7))
    assert server.requests["offset-short"] == 3


def test_offset_pagination_stops_on_an_empty_page(api: str, server: ApiServer) -> None:
    source = HTTPSource(
        f"{api}/offset",
        params={"total": 6, "run": "offset-empty"},
        pagination=OffsetPagination(offset_param="offset", limit_param="limit", limit=3),
    )
    assert [row[LOCATION] for row in _rows(source)] == list(range(1, 7))
    assert server.requests["offset-empty"] == 3


@pytest.mark.parametrize("absolute", ["0", "1"])
def test_next_link_in_the_body_relative_or_absolute(api: str, absolute: str) -> None:
    source = HTTPSource(
        f"{api}/next?total=5&size=2&absolute={absolute}",
        items="results",
        pagination=NextLinkPagination(field="links.next"),
    )
    assert [row["id"] for row in _rows(source)] == list(range(5))


def test_next_link_in_the_link_header(api: str) -> None:
    source = HTTPSource(
        f"{api}/link?total=5&size=2", items="", pagination=NextLinkPagination(field=None)
    )
    assert [row["id"] for row in _rows(source)] == list(range(5))


def test_no_pagination_reads_one_page_at_a_dotted_path(api: str) -> None:
    source = HTTPSource(f"{api}/nested", items="result.items")
    assert [row["id"] for row in _rows(source)] == [0, 1, 2]


def test_pages_are_requested_only_as_chunks_are_read(api: str, server: ApiServer) -> None:
    source = HTTPSource(
        f"{api}/cursor",
        params={"total": 100, "size": 10, "run": "lazy"},
        pagination=CursorPagination(),
    )
    chunks = source.read(source.partitions()[0])
    assert next(chunks).rows == 10
    assert server.requests["lazy"] == 1
    chunks.close()


def test_page_size_cuts_pages_into_smaller_chunks(api: str) -> None:
    source = HTTPSource(f"{api}/cursor?total=7&size=5", pagination=CursorPagination(), page_size=2)
    chunks = _chunks(source)
    assert [chunk.rows for chunk in chunks] == [2, 2, 1, 2]
    assert [row[LOCATION] for c in chunks for row in c.batch.to_pylist()] == list(range(1, 8))


def test_no_records_yield_one_empty_chunk(api: str) -> None:
    chunks = _chunks(HTTPSource(f"{api}/cursor?total=0&size=5", pagination=CursorPagination()))
    assert [chunk.rows for chunk in chunks] == [0]
    assert chunks[0].batch.schema.names == [LOCATION]


PAGINATIONS = {
    "cursor": ("/cursor", "data", CursorPagination()),
    "offset": ("/offset", "data", None),
    "next": ("/next", "results", NextLinkPagination(field="links.next")),
    "link": ("/link", "", NextLinkPagination(field=None)),
}


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(sorted(PAGINATIONS)),
    total=st.integers(0, 45),
    size=st.integers(1, 12),
    page_size=st.none() | st.integers(1, 7),
)
def test_every_item_is_read_once_in_order_with_its_location(
    server: ApiServer, kind: str, total: int, size: int, page_size: int | None
) -> None:
    path, items, pagination = PAGINATIONS[kind]
    source = HTTPSource(
        f"http://127.0.0.1:{server.server_port}{path}",
        items=items,
        params={"total": total, "size": size},
        pagination=pagination or OffsetPagination(limit=size),
        page_size=page_size,
    )
    chunks = _chunks(source)
    rows = [row for chunk in chunks for row in chunk.batch.to_pylist()]
    assert [row["id"] for row in rows] == list(range(total))
    assert [row[LOCATION] for row in rows] == list(range(1, total + 1))
    assert all(chunk.rows <= min(size, page_size or size) for chunk in chunks)


# -- records to Arrow ------------------------------------------------------------------------


def test_fields_that_come_and_go_become_the_union_of_columns(api: str) -> None:
    source = HTTPSource(
        f"{api}/fixed/keys", pagination=CursorPagination(param="page", next_field="next_page")
    )
    chunks = _chunks(source)
    assert [chunk.batch.schema.names for chunk in chunks] == [
        ["a", "b", LOCATION],
        ["a", "b", "c", LOCATION],
        ["a", "b", "c", LOCATION],
    ]
    assert pa.Table.from_batches([chunks[2].batch]).column("a").type == pa.int64()
    whole = pa.concat_tables(
        [pa.Table.from_batches([chunk.batch]) for chunk in chunks], promote_options="default"
    )
    assert whole.to_pylist() == [
        {"a": 1, "b": "x", "c": None, LOCATION: 1},
        {"a": 2, "b": None, "c": None, LOCATION: 2},
        {"a": 3, "b": None, "c": True, LOCATION: 3},
        {"a": None, "b": "z", "c": False, LOCATION: 4},
    ]


def test_value_kinds_map_to_arrow_and_only_widen(api: str) -> None:
    source = HTTPSource(
        f"{api}/fixed/kinds", pagination=CursorPagination(param="page", next_field="next_page")
    )
    first, second = (chunk.batch for chunk in _chunks(source))
    assert {f.name: f.type for f in first.schema} == {
        "n": pa.int64(),
        "f": pa.float64(),
        "mixed": pa.int64(),
        "nested": pa.string(),
        "list": pa.string(),
        "big": pa.string(),  # beyond int64: kept exactly, as its JSON text
        "none": pa.null(),
        "flag": pa.bool_(),
        LOCATION: pa.int64(),
    }
    assert first.to_pylist()[0] | {"big": None} == {
        "n": 1,
        "f": 1.5,
        "mixed": 1,
        "nested": '{"k":[1,2]}',
        "list": '[1,"a"]',
        "big": None,
        "none": None,
        "flag": True,
        LOCATION: 1,
    }
    assert first.column("big").to_pylist() == [str(2**70)]
    assert {f.name: f.type for f in second.schema} == {
        "n": pa.float64(),  # an int column widens when a float comes
        "f": pa.float64(),  # and stays float when ints come
        "mixed": pa.string(),  # numbers and text: text
        "nested": pa.string(),
        "list": pa.string(),
        "big": pa.string(),
        "none": pa.null(),
        "flag": pa.bool_(),
        LOCATION: pa.int64(),
    }
    assert second.to_pylist() == [
        {
            "n": 2.5,
            "f": 2.0,
            "mixed": "one",
            "nested": None,
            "list": "[]",
            "big": "3",
            "none": None,
            "flag": False,
            LOCATION: 2,
        }
    ]


def test_records_without_fields_are_still_rows(api: str) -> None:
    source = HTTPSource(
        f"{api}/fixed/empty_objects",
        pagination=CursorPagination(param="page", next_field="next_page"),
    )
    assert _rows(source) == [{LOCATION: 1}, {LOCATION: 2}, {"a": 1, LOCATION: 3}]


def test_a_record_that_is_not_an_object_is_a_source_error(api: str) -> None:
    source = HTTPSource(
        f"{api}/fixed/not_object", pagination=CursorPagination(param="page", next_field="x")
    )
    with pytest.raises(
        SourceError, match=r"record 2 of the page at .*/fixed/not_object is a number"
    ):
        _chunks(source)


def test_a_field_named_like_the_location_column_is_a_source_error(api: str) -> None:
    with pytest.raises(SourceError, match="field named '_location'"):
        _chunks(HTTPSource(f"{api}/fixed/location"))


# -- retries ---------------------------------------------------------------------------------


def test_a_500_then_200_is_retried_after_the_backoff(
    api: str, request: pytest.FixtureRequest
) -> None:
    sleeps: list[float] = []
    source = HTTPSource(f"{api}/flaky?run={_unique(request)}&fail=2", sleep=sleeps.append)
    assert _rows(source) == [{"id": 1, "try": 3, LOCATION: 1}]
    assert sleeps == [0.5, 1.0]


def test_backoff_doubles_and_is_capped(api: str, request: pytest.FixtureRequest) -> None:
    sleeps: list[float] = []
    source = HTTPSource(
        f"{api}/flaky?run={_unique(request)}&fail=5&status=502",
        backoff=0.25,
        max_backoff=1.5,
        sleep=sleeps.append,
    )
    assert _rows(source)[0]["try"] == 6
    assert sleeps == [0.25, 0.5, 1.0, 1.5, 1.5]


def test_a_429_with_retry_after_zero_is_retried_at_once(
    api: str, request: pytest.FixtureRequest
) -> None:
    # The real sleep: Retry-After 0 keeps it instant.
    source = HTTPSource(f"{api}/flaky?run={_unique(request)}&status=429&retry_after=0")
    assert _rows(source)[0]["try"] == 2


def test_retry_after_seconds_are_honoured(api: str, request: pytest.FixtureRequest) -> None:
    sleeps: list[float] = []
    source = HTTPSource(
        f"{api}/flaky?run={_unique(request)}&status=429&retry_after=1", sleep=sleeps.append
    )
    assert _rows(source)[0]["try"] == 2
    assert sleeps == [1.0]


def test_retry_after_as_an_http_date_is_honoured(api: str, request: pytest.FixtureRequest) -> None:
    sleeps: list[float] = []
    source = HTTPSource(
        f"{api}/flaky?run={_unique(request)}&status=503&retry_in=20", sleep=sleeps.append
    )
    assert _rows(source)[0]["try"] == 2
    [wait] = sleeps
    assert 17.0 < wait <= 20.0  # the date has whole seconds


def test_retry_after_is_capped_by_max_backoff(api: str, request: pytest.FixtureRequest) -> None:
    sleeps: list[float] = []
    source = HTTPSource(
        f"{api}/flaky?run={_unique(request)}&status=503&retry_after=3600",
        max_backoff=2.0,
        sleep=sleeps.append,
    )
    assert _rows(source)[0]["try"] == 2
    assert sleeps == [2.0]


def test_a_dropped_connection_is_retried(api: str, request: pytest.FixtureRequest) -> None:
    sleeps: list[float] = []
    source = HTTPSource(f"{api}/drop?run={_unique(request)}&fail=2", sleep=sleeps.append)
    assert _rows(source) == [{"id": 1, LOCATION: 1}]
    assert sleeps == [0.5, 1.0]


def test_a_permanently_failing_api_is_a_source_error_after_the_retries(
    api: str, request: pytest.FixtureRequest
) -> None:
    sleeps: list[float] = []
    url = f"{api}/flaky?run={_unique(request)}&fail=1000&status=503"
    source = HTTPSource(url, retries=3, sleep=sleeps.append, name="weather")
    with pytest.raises(SourceError) as caught:
        _chunks(source)
    message = str(caught.value)
    assert f"HTTP source 'weather': {url} answered 503 Service Unavailable on all 4 tries" in (
        message
    )
    assert "check the API's status" in message
    assert caught.value.status == 503  # type: ignore[attr-defined]
    assert len(sleeps) == 3


def test_a_rate_limit_that_never_lifts_says_so(api: str, request: pytest.FixtureRequest) -> None:
    source = HTTPSource(
        f"{api}/flaky?run={_unique(request)}&fail=1000&status=429", retries=1, sleep=lambda s: None
    )
    with pytest.raises(SourceError, match=r"429 Too Many Requests on all 2 tries.*request rate"):
        _chunks(source)


def test_an_unreachable_server_is_a_source_error_after_the_retries() -> None:
    sleeps: list[float] = []
    source = HTTPSource("http://127.0.0.1:1/data", retries=2, sleep=sleeps.append)
    with pytest.raises(
        SourceError, match=r"/data failed with ConnectError .* on all 3 tries.*server is running"
    ):
        _chunks(source)
    assert sleeps == [0.5, 1.0]


@pytest.mark.parametrize(
    ("code", "hint"),
    [(404, "Check the URL"), (401, "credentials"), (400, "documentation")],
)
def test_other_client_errors_fail_at_once(api: str, code: int, hint: str) -> None:
    sleeps: list[float] = []
    source = HTTPSource(f"{api}/status?code={code}", sleep=sleeps.append)
    with pytest.raises(SourceError, match=rf"answered {code} .*says {code}.*{hint}") as caught:
        _chunks(source)
    assert caught.value.status == code  # type: ignore[attr-defined]
    assert sleeps == []


# -- bad pages -------------------------------------------------------------------------------


def test_a_body_that_is_not_json_is_a_source_error_with_the_page(api: str) -> None:
    with pytest.raises(SourceError, match=r"page at .*/html is not JSON \(text/html.*log in"):
        _chunks(HTTPSource(f"{api}/html"))


def test_a_missing_items_path_is_a_source_error_listing_the_keys(api: str) -> None:
    source = HTTPSource(f"{api}/nested", items="result.rows")
    with pytest.raises(
        SourceError, match=r"/nested has no 'result.rows' \('result' has no 'rows'; its keys "
    ) as caught:
        _chunks(source)
    assert "['items', 'total']" in str(caught.value)


def test_items_that_are_not_a_list_are_a_source_error(api: str) -> None:
    with pytest.raises(SourceError, match=r"has a number at 'result\.total', not a list"):
        _chunks(HTTPSource(f"{api}/nested", items="result.total"))


def test_a_cursor_that_repeats_is_a_source_error(api: str) -> None:
    with pytest.raises(SourceError, match="points back to the cursor 'again'"):
        _chunks(HTTPSource(f"{api}/loop", pagination=CursorPagination()))


# -- requests and secrets --------------------------------------------------------------------


def test_params_and_headers_are_sent_and_secrets_stay_out_of_messages(api: str) -> None:
    source = HTTPSource(
        f"{api}/echo",
        params={"api_key": SECRET, "q": "jfk"},
        headers={"Authorization": f"Bearer {SECRET}"},
    )
    assert _rows(source) == [
        {"auth": f"Bearer {SECRET}", "api_key": SECRET, "q": "jfk", LOCATION: 1}
    ]
    failing = HTTPSource(
        f"{api}/status?code=403&token={SECRET}",
        headers={"Authorization": f"Bearer {SECRET}"},
    )
    with pytest.raises(SourceError) as caught:
        _chunks(failing)
    assert SECRET not in str(caught.value)
    assert "token=***" in str(caught.value)
    assert SECRET not in repr(failing)
    assert SECRET not in failing.partitions()[0].source


def test_the_source_pickles(api: str) -> None:
    source = HTTPSource(f"{api}/cursor?total=3&size=2", pagination=CursorPagination())
    copied = pickle.loads(pickle.dumps(source))
    assert [row["id"] for row in _rows(copied)] == [0, 1, 2]


def test_a_partition_of_another_source_is_refused(api: str) -> None:
    [partition] = HTTPSource(f"{api}/nested").partitions()
    with pytest.raises(ValueError, match="does not belong"):
        next(HTTPSource(f"{api}/echo").read(partition))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ftp://example.com/x"}, "'url' parameter of HTTPSource"),
        ({"url": "not a url"}, "'url' parameter of HTTPSource"),
        ({"url": "http://h/x", "items": None}, "'items' parameter"),
        ({"url": "http://h/x", "pagination": "cursor"}, "'pagination' parameter"),
        ({"url": "http://h/x", "params": [("a", 1)]}, "'params' parameter"),
        ({"url": "http://h/x", "page_size": 0}, "'page_size' parameter"),
        ({"url": "http://h/x", "retries": -1}, "'retries' parameter"),
        ({"url": "http://h/x", "backoff": -0.1}, "'backoff' parameter"),
        ({"url": "http://h/x", "max_backoff": float("inf")}, "'max_backoff' parameter"),
        ({"url": "http://h/x", "timeout": 0}, "'timeout' parameter"),
        ({"url": "http://h/x", "name": ""}, "'name' parameter"),
    ],
)
def test_invalid_parameters_are_source_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SourceError, match=message):
        HTTPSource(**kwargs)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: OffsetPagination(limit=0), "'limit' parameter of OffsetPagination"),
        (lambda: CursorPagination(param=""), "'param' parameter of CursorPagination"),
        (lambda: NextLinkPagination(field=""), "'field' parameter of NextLinkPagination"),
    ],
)
def test_invalid_paginations_are_source_errors(make: Any, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        make()
