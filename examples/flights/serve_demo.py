"""Serve the flights champion and send it real flights, as ``make demo`` does at its end.

Run it after the pipeline, in the same folder::

    loopline run examples/flights/pipeline.py
    python examples/flights/serve_demo.py

It does what a deployment does, on the embedded defaults:

1. writes the features as of ``AS_OF`` (noon UTC on 30 December 2013) into the online
   store (``loopline materialize`` does the same from the command line);
2. starts ``loopline serve`` on the champion of ``flights-delay``, with the feature
   definitions, on a free port;
3. sends one request per flight scheduled in the three hours after ``AS_OF``, each
   holding only what a booking system knows about the flight (carrier, origin,
   destination, tail number, date, scheduled time, distance): the server reads the
   weather, the plane and the delay windows from the online store (a plane missing from
   the aircraft register is allowed, with its age missing; any other unknown entity
   would be refused with 404);
4. prints a few predictions beside what happened, and the latency percentiles.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from features import SCHEDULED, SCHEDULED_DEPARTURE, VIEWS  # noqa: E402
from loopline import read_dataset  # noqa: E402
from loopline.features.materialize import materialize  # noqa: E402
from pipeline import MODEL_NAME  # noqa: E402

AS_OF = datetime(2013, 12, 30, 12, 0, tzinfo=UTC)
"""When the features are materialized; the flights scored leave in the 3 hours after."""
WINDOW = timedelta(hours=3)
REQUEST_FIELDS = ("carrier", "origin", "dest", "tailnum", "year", "month", "day")
REQUEST_FIELDS += ("sched_dep_time", "distance")


def flights_to_score() -> pl.DataFrame:
    """The flights scheduled in [AS_OF, AS_OF + WINDOW) that departed, in schedule order.

    They come from the ``flights`` dataset the pipeline ingested (its newest version).
    """
    table = pl.from_arrow(read_dataset("flights"))
    assert isinstance(table, pl.DataFrame)
    table = table.with_columns(SCHEDULED_DEPARTURE)
    due = (pl.col(SCHEDULED) >= AS_OF) & (pl.col(SCHEDULED) < AS_OF + WINDOW)
    return table.filter(due & pl.col("dep_delay").is_not_null()).sort(SCHEDULED)


def start_server(folder: Path) -> tuple[subprocess.Popen[str], str]:
    ready = folder / "ready"
    command = [
        sys.executable,
        "-m",
        "loopline",
        "serve",
        "--model",
        f"{MODEL_NAME}@champion",
        "--features",
        str(HERE / "features.py"),
        # The aircraft register lacks about one plane in six: such a plane has no age.
        "--allow-unknown",
        "plane",
        "--port",
        "0",
        "--ready-file",
        str(ready),
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (ready.exists() and ready.read_text().strip()):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit("The server did not start; see its output above.")
        time.sleep(0.05)
    return server, f"http://{ready.read_text().strip()}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def main() -> None:
    flights = flights_to_score()
    print(f"Materializing {len(VIEWS)} feature definitions as of {AS_OF:%Y-%m-%d %H:%M} UTC ...")
    materialize(VIEWS, end=AS_OF)
    with tempfile.TemporaryDirectory() as folder:
        server, url = start_server(Path(folder))
        try:
            results = send(url, flights)
        finally:
            server.terminate()
            server.wait(timeout=30)
    report(flights, results)


def send(url: str, flights: pl.DataFrame) -> list[tuple[float, dict[str, Any]]]:
    """One single-row request per flight, as of its scheduled departure."""
    results = []
    with httpx.Client(base_url=url, timeout=10) as client:
        rows = flights.select(*REQUEST_FIELDS, SCHEDULED).to_dicts()
        for row in rows[:5]:  # warm-up: first requests pay for lazy imports
            client.post("/predict", json={k: row[k] for k in REQUEST_FIELDS})
        for row in rows:
            at = row.pop(SCHEDULED).strftime("%Y-%m-%dT%H:%M:%SZ")
            start = time.perf_counter()
            reply = client.post("/predict", params={"at": at}, json=row)
            elapsed = (time.perf_counter() - start) * 1000
            if reply.status_code != 200:
                raise SystemExit(f"The server answered {reply.status_code}: {reply.text}")
            results.append((elapsed, reply.json()))
    return results


def report(flights: pl.DataFrame, results: list[tuple[float, dict[str, Any]]]) -> None:
    model = results[0][1]
    print(f"Scored {len(results)} flights with {model['model']}@{model['version']}:")
    shown = flights.head(len(results)).with_columns(
        pl.Series("p_delayed", [r["predictions"][0] for _, r in results])
    )
    worst = shown.sort("p_delayed", descending=True)
    print(" flight     route     scheduled (UTC)   P(delay > 15 min)  actual delay")
    for row in [*worst.head(4).iter_rows(named=True), *worst.tail(2).iter_rows(named=True)]:
        print(
            f" {row['carrier']}{row['flight']:<6}  {row['origin']}-{row['dest']}   "
            f"{row[SCHEDULED]:%m-%d %H:%M}       {row['p_delayed']:6.3f}            "
            f"{row['dep_delay']:>4} min"
        )
    latencies = [ms for ms, _ in results]
    print(
        f"Latency over {len(latencies)} requests (HTTP round trip on loopback, online "
        f"features included): p50 {percentile(latencies, 0.5):.2f} ms, p90 "
        f"{percentile(latencies, 0.9):.2f} ms, p99 {percentile(latencies, 0.99):.2f} ms, "
        f"mean {statistics.fmean(latencies):.2f} ms"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
