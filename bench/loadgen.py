"""A closed-loop HTTP/1.1 load generator for loopback benchmarks (``bench/serve.py``).

``C`` keep-alive connections each send one request, wait for its answer, and send the
next, for a warm-up and then a measured window; every request of the window is timed
on its own (``perf_counter_ns``, from writing the request to reading the last byte of
the answer). The requests are prepared bytes, a POST of each body in a file of one
JSON body per line, cycled through (each connection starts at a different body). An
answer is read by its status line and ``Content-Length``, nothing else; any status but
200, a closed connection and an answer later than ``--timeout`` seconds count as
errors. It runs on uvloop when it can, and is meant to cost the server it measures as
little CPU as a Python client can.

Run: ``python -m bench.loadgen --port 8080 --path /predict --bodies FILE
--connections 16 --seconds 30 --warmup 3``. It prints one JSON object: ``requests``
(answers to requests sent in the window), ``seconds``, ``errors``, ``statuses``, the
latency percentiles in milliseconds (``p50``, ``p99``, ``p99_9``, ``max``), and the
first error answer (``first_error``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

_END = b"\r\n\r\n"
_LENGTH = b"\r\ncontent-length:"


class _Connection(asyncio.Protocol):
    """One keep-alive connection: ``send`` a request, and await its status."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.sent_ns = 0
        self.error_body: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future[int]:
        assert self.transport is not None
        self.waiter = loop.create_future()
        self.sent_ns = time.perf_counter_ns()
        self.transport.write(request)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        end = buffer.find(_END)
        if end < 0:
            return
        head = bytes(buffer[:end]).lower()
        at = head.find(_LENGTH)
        if at < 0:
            self._fail(ConnectionError("an answer without Content-Length"))
            return
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + len(_LENGTH) : stop if stop >= 0 else len(head)])
        total = end + len(_END) + length
        if len(buffer) < total:
            return
        status = int(head[9:12])
        if status != 200 and self.error_body is None:
            self.error_body = bytes(buffer[:total])
        del buffer[:total]
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"the server closed the connection ({exc})"))

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


class _Run:
    """What the connections share: the requests, the window, and what they measured."""

    def __init__(self, requests: list[bytes], start_ns: int, end_ns: int) -> None:
        self.requests = requests
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.live: list[_Connection] = []
        self.latencies = array("q")
        self.statuses: Counter[int] = Counter()
        self.first_error: str | None = None

    async def connect(self, host: str, port: int) -> _Connection | None:
        """A new connection, or None (an error noted) when the server refuses one."""
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(_Connection, host, port)
        except OSError as exc:
            self.note(f"cannot connect: {exc}")
            await asyncio.sleep(0.1)
            return None
        self.live.append(connection)
        return connection

    def note(self, error: str) -> None:
        if self.first_error is None:
            self.first_error = error[:2000]


async def _client(run: _Run, host: str, port: int, offset: int) -> None:
    loop = asyncio.get_running_loop()
    requests, count = run.requests, len(run.requests)
    latencies, statuses = run.latencies, run.statuses
    connection = await run.connect(host, port)
    i = offset
    while time.perf_counter_ns() < run.end_ns:
        if connection is None:
            connection = await run.connect(host, port)
            continue
        waiter = connection.send(requests[i % count], loop)
        start = connection.sent_ns
        i += 1
        try:
            status = await waiter
        except ConnectionError as exc:
            status = 0
            run.note(str(exc))
            connection = None
        if start >= run.start_ns:
            latencies.append(time.perf_counter_ns() - start)
            statuses[status] += 1
        if status not in (0, 200) and connection is not None and connection.error_body:
            run.note(connection.error_body.decode(errors="replace"))
    if connection is not None and connection.transport is not None:
        connection.transport.close()


async def _watchdog(run: _Run, timeout_ns: int) -> None:
    """Close a connection whose answer is late: its request counts as an error."""
    while True:
        await asyncio.sleep(0.25)
        now = time.perf_counter_ns()
        for connection in run.live:
            waiter = connection.waiter
            if waiter is not None and not waiter.done() and now - connection.sent_ns > timeout_ns:
                connection._fail(ConnectionError(f"no answer in {timeout_ns / 1e9:g} s"))


async def measure(
    *,
    host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    connections: int,
    seconds: float,
    warmup: float,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """Load ``host:port`` and return what was measured (see the module docstring)."""
    requests = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]
    start_ns = time.perf_counter_ns() + int(warmup * 1e9)
    run = _Run(requests, start_ns, start_ns + int(seconds * 1e9))
    step = max(1, len(requests) // connections)
    watchdog = asyncio.create_task(_watchdog(run, int(timeout * 1e9)))
    try:
        await asyncio.gather(*(_client(run, host, port, n * step) for n in range(connections)))
    finally:
        watchdog.cancel()
    latencies = np.frombuffer(run.latencies, dtype=np.int64) / 1e6
    figures = {
        name: float(np.percentile(latencies, q)) if len(latencies) else None
        for name, q in (("p50", 50), ("p99", 99), ("p99_9", 99.9), ("max", 100))
    }
    return {
        "requests": len(latencies),
        "seconds": seconds,
        "errors": len(latencies) - run.statuses.get(200, 0),
        "statuses": {str(k): v for k, v in sorted(run.statuses.items())},
        **figures,
        "first_error": run.first_error,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--bodies", type=Path, required=True, help="one JSON body a line")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    bodies = [line for line in args.bodies.read_bytes().splitlines() if line.strip()]
    try:
        import uvloop
    except ImportError:  # the standard event loop is slower, but measures the same
        runner: Any = asyncio.run
    else:
        runner = uvloop.run
    result = runner(
        measure(
            host=args.host,
            port=args.port,
            path=args.path,
            bodies=bodies,
            connections=args.connections,
            seconds=args.seconds,
            warmup=args.warmup,
            timeout=args.timeout,
        )
    )
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
