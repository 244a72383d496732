"""Point-in-time join and a 24h window aggregate, vs Feast 0.67 and DuckDB.

The data (``generate``, fixed seed): a feature table of ``FEATURES`` rows over
``FEATURES // 100`` entities and 30 days (event times in microseconds, so no entity has
two rows at one time), with 5 float features, and ``LABELS`` label rows (a random entity
and a random time in the same 30 days). Feature values are multiples of 1/1024 below
1,000, so that every sum below is exact in float64 whatever order it is taken in, and
the checksums of two engines agree exactly when their joined values do.

Measured in the same run, each in its own fresh process (so that peak memory is its
own), timed from after its imports; every program reads the two Parquet files itself:

- the join (ttl 7 days) with loopline: ``training_set(labels, [FeatureView(...)])``;
- the same with Feast 0.67 on its default offline store (``offline_store: file``, dask),
  ``get_historical_features(...).to_df()``, timed after ``apply``;
- the same with DuckDB: ``ASOF LEFT JOIN ... ON l.entity_id = r.entity_id AND l.t >=
  r.ts``, then the TTL as a ``CASE`` on the matched row;
- ``sum`` and ``count`` of ``f0`` over each label's [t - 24h, t), with loopline's
  ``WindowView`` and with DuckDB (a range join and ``GROUP BY``, the plain SQL for it).

``LOOPLINE_BENCH_PIT_ROWS`` sets ``LABELS,FEATURES`` (default ``1000000,10000000``);
``100000,1000000`` is a quick smoke run.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS_ENV = "LOOPLINE_BENCH_PIT_ROWS"
DEFAULT_ROWS = (1_000_000, 10_000_000)
EVENTS_PER_ENTITY = 100
DAYS = 30
TTL_DAYS = 7
FEATURES = ["f0", "f1", "f2", "f3", "f4"]
START_US = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z
SPAN_US = DAYS * 86_400 * 1_000_000

GOAL_FEAST = 30.0
GOAL_DUCKDB = 1.5
GOAL_PEAK_MB = 2_000.0


def generate(folder: Path, labels: int, features: int, *, seed: int = 11) -> tuple[Path, Path]:
    """Write ``labels.parquet`` and ``features.parquet`` into ``folder``; return their paths."""
    rng = np.random.default_rng(seed)
    entities = max(1, features // EVENTS_PER_ENTITY)
    utc = pa.timestamp("us", tz="UTC")
    feature_path, label_path = folder / "features.parquet", folder / "labels.parquet"
    columns: dict[str, pa.Array] = {
        "entity_id": pa.array(rng.integers(0, entities, features), pa.int64()),
        "ts": pa.array(START_US + rng.integers(0, SPAN_US, features), pa.int64()).cast(utc),
    }
    for name in FEATURES:
        columns[name] = pa.array(rng.integers(0, 1_024_000, features) / 1024.0, pa.float64())
    pq.write_table(pa.table(columns), feature_path)
    del columns
    pq.write_table(
        pa.table(
            {
                "label_id": pa.array(np.arange(labels), pa.int64()),
                "entity_id": pa.array(rng.integers(0, entities, labels), pa.int64()),
                "t": pa.array(START_US + rng.integers(0, SPAN_US, labels), pa.int64()).cast(utc),
                "label": pa.array(rng.integers(0, 2, labels), pa.int64()),
            }
        ),
        label_path,
    )
    return label_path, feature_path


# -- the measured programs, each run in a fresh process ---------------------------------------
# Each sets ``rows`` and ``checksum`` (see _CHECKSUM), from a frame with label_id and the
# value columns.

_CHECKSUM = """
def checksum(frame, columns):
    # Weighted by the label id, so that values on the wrong label row change it too.
    import polars as pl
    frame = pl.from_pandas(frame) if not isinstance(frame, pl.DataFrame) else frame
    weight = (pl.col("label_id") % 13 + 1).cast(pl.Float64)
    parts = [(pl.col(c).fill_null(0).cast(pl.Float64) * weight).sum().alias(f"s_{c}")
             for c in columns]
    counts = [pl.col(c).is_not_null().sum().alias(f"n_{c}") for c in columns]
    values = frame.select(parts + counts).row(0)
    return [float(sum(values[: len(columns)])), int(sum(values[len(columns):]))]
"""

_LOOPLINE_JOIN = """
import sys
import polars as pl
from loopline.features import Entity, FeatureView, training_set
start()
labels = pl.read_parquet(sys.argv[1])
features = pl.read_parquet(sys.argv[2])
view = FeatureView("stats", entity=Entity("e", keys=["entity_id"]), source=features,
                   timestamp="ts", ttl="7d", features=["f0", "f1", "f2", "f3", "f4"])
frame = training_set(labels, [view], timestamp="t").frame
stop()
rows = frame.height
checksum = checksum(frame, ["f0", "f1", "f2", "f3", "f4"])
"""

_LOOPLINE_WINDOW = """
import sys
import polars as pl
from loopline.features import Aggregate, Entity, WindowView, training_set
start()
labels = pl.read_parquet(sys.argv[1])
features = pl.read_parquet(sys.argv[2])
view = WindowView("win", entity=Entity("e", keys=["entity_id"]), source=features,
                  timestamp="ts",
                  aggregations=[Aggregate("f0", "sum", "24h"), Aggregate("f0", "count", "24h")])
frame = training_set(labels, [view], timestamp="t").frame
stop()
rows = frame.height
checksum = checksum(frame, ["f0_sum_24h", "f0_count_24h"])
"""

_DUCKDB_JOIN = """
import sys
import duckdb
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
start()
frame = con.sql(f'''
    SELECT l.*,
           {", ".join(f"CASE WHEN r.ts >= l.t - INTERVAL 7 DAY THEN r.{c} END AS {c}"
                      for c in ["f0", "f1", "f2", "f3", "f4"])}
    FROM read_parquet('{sys.argv[1]}') l
    ASOF LEFT JOIN read_parquet('{sys.argv[2]}') r
      ON l.entity_id = r.entity_id AND l.t >= r.ts
''').to_arrow_table()
stop()
import polars as pl
frame = pl.from_arrow(frame)
rows = frame.height
checksum = checksum(frame, ["f0", "f1", "f2", "f3", "f4"])
"""

_DUCKDB_WINDOW = """
import sys
import duckdb
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
start()
frame = con.sql(f'''
    SELECT l.label_id, l.entity_id, l.t, l.label,
           COALESCE(SUM(r.f0), 0) AS f0_sum_24h, COUNT(r.f0) AS f0_count_24h
    FROM read_parquet('{sys.argv[1]}') l
    LEFT JOIN read_parquet('{sys.argv[2]}') r
      ON r.entity_id = l.entity_id AND r.ts >= l.t - INTERVAL 24 HOUR AND r.ts < l.t
    GROUP BY ALL
''').to_arrow_table()
stop()
import polars as pl
frame = pl.from_arrow(frame)
rows = frame.height
checksum = checksum(frame, ["f0_sum_24h", "f0_count_24h"])
"""

_FEAST_JOIN = """
import sys, warnings
from datetime import timedelta
warnings.filterwarnings("ignore")
import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
from feast.types import Float64
repo = sys.argv[3]
config = RepoConfig(project="bench", provider="local", registry=f"{repo}/registry.db",
                    offline_store={"type": "file"},
                    online_store={"type": "sqlite", "path": f"{repo}/online.db"},
                    entity_key_serialization_version=3, repo_path=repo)
store = FeatureStore(config=config, repo_path=repo)
entity = Entity(name="entity_id", join_keys=["entity_id"], value_type=ValueType.INT64)
source = FileSource(name="stats_source", path=sys.argv[2], timestamp_field="ts")
view = FeatureView(name="stats", entities=[entity], ttl=timedelta(days=7), source=source,
                   schema=[Field(name=c, dtype=Float64) for c in ["f0", "f1", "f2", "f3", "f4"]])
store.apply([entity, view])
start()
labels = pd.read_parquet(sys.argv[1]).rename(columns={"t": "event_timestamp"})
frame = store.get_historical_features(
    entity_df=labels, features=[f"stats:{c}" for c in ["f0", "f1", "f2", "f3", "f4"]]
).to_df()
stop()
rows = len(frame)
checksum = checksum(frame, ["f0", "f1", "f2", "f3", "f4"])
"""

_WRAPPER = """
import json, time

def _peak_mb():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")

t0 = t1 = time.perf_counter()

def start():
    # The clock starts after the imports: start-up is the same at every size.
    global t0
    t0 = time.perf_counter()

def stop():
    # The checksum after the clock stops is the bench's, not the engine's.
    global t1
    t1 = time.perf_counter()

{checksum}
{body}
print(json.dumps({{"seconds": t1 - t0, "peak_mb": _peak_mb(), "rows": rows,
                  "checksum": checksum}}))
"""


def _measure(body: str, labels: Path, features: Path, scratch: Path) -> dict[str, Any]:
    program = _WRAPPER.format(checksum=_CHECKSUM, body=textwrap.dedent(body))
    repo = tempfile.mkdtemp(dir=scratch)
    done = subprocess.run(
        [sys.executable, "-c", program, str(labels), str(features), repo],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {done.returncode}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _rows() -> tuple[int, int]:
    text = os.environ.get(ROWS_ENV, "")
    if not text.strip():
        return DEFAULT_ROWS
    labels, features = (int(s.replace("_", "")) for s in text.split(","))
    return labels, features


def run() -> str:
    n_labels, n_features = _rows()
    entities = max(1, n_features // EVENTS_PER_ENTITY)
    with tempfile.TemporaryDirectory(prefix="loopline-bench-pit-") as folder:
        scratch = Path(folder)
        labels, features = generate(scratch, n_labels, n_features)
        join = {
            "loopline": _measure(_LOOPLINE_JOIN, labels, features, scratch),
            "DuckDB ASOF JOIN": _measure(_DUCKDB_JOIN, labels, features, scratch),
            "Feast 0.67 (file offline store)": _measure(_FEAST_JOIN, labels, features, scratch),
        }
        window = {
            "loopline": _measure(_LOOPLINE_WINDOW, labels, features, scratch),
            "DuckDB range join + GROUP BY": _measure(_DUCKDB_WINDOW, labels, features, scratch),
        }
    lines = [
        "## Point-in-time join and window aggregate vs Feast and DuckDB",
        "",
        textwrap.dedent(
            f"""\
            {n_labels:,} label rows joined with a feature view of {n_features:,} rows
            ({entities:,} entities, {DAYS} days, 5 float features, TTL {TTL_DAYS} days),
            generated with a fixed seed and read from Parquet by each program. Each
            figure is one run in a fresh process, timed from after its imports (Feast:
            after `apply`) to the joined frame in memory; "peak" is the process's
            maximum resident memory. loopline returns one row per label row in label
            order; DuckDB's ASOF join returns them in its own order; Feast's file store
            returns them in its own order and drops some (one row per entity and time,
            and none for a label whose entity has only later feature rows). The checksum
            is the sum of all joined values weighted by label id, and their count; equal
            checksums mean equal joined values. The window aggregate is `sum` and
            `count` of `f0` over each label's [t - 24h, t). Goals: at least
            {GOAL_FEAST:.0f}x faster than Feast, within {GOAL_DUCKDB}x of DuckDB's ASOF
            join, peak memory under {GOAL_PEAK_MB / 1000:.0f} GB. Versions: Feast
            {_version("feast")}, DuckDB {_version("duckdb")}, Polars {_version("polars")}.
            """
        ),
        "| task | engine | time | peak memory | rows | checksum (sum, count) | vs loopline |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [_row("point-in-time join", name, r, join["loopline"]) for name, r in join.items()]
    lines += [_row("24h window", name, r, window["loopline"]) for name, r in window.items()]
    lines += ["", *_verdicts(join, window), ""]
    return "\n".join(lines)


def _row(task: str, engine: str, result: dict[str, Any], ours: dict[str, Any]) -> str:
    if "error" in result:
        return f"| {task} | {engine} | failed: {result['error']} | | | | |"
    seconds = float(result["seconds"])
    ratio = ""
    if "seconds" in ours and result is not ours:
        ratio = f"{seconds / float(ours['seconds']):.2f}x the time"
    total, count = result["checksum"]
    return (
        f"| {task} | {engine} | {seconds:.2f} s | {result['peak_mb']:,.0f} MB | "
        f"{result['rows']:,} | {total:,.4f}, {count:,} | {ratio} |"
    )


def _verdicts(join: dict[str, dict[str, Any]], window: dict[str, dict[str, Any]]) -> list[str]:
    ours, duck = join["loopline"], join["DuckDB ASOF JOIN"]
    feast = join["Feast 0.67 (file offline store)"]
    lines = []
    if "seconds" in ours and "seconds" in feast:
        speedup = float(feast["seconds"]) / float(ours["seconds"])
        lines.append(_goal(f"Feast / loopline: {speedup:.1f}x", speedup >= GOAL_FEAST))
    if "seconds" in ours and "seconds" in duck:
        ratio = float(ours["seconds"]) / float(duck["seconds"])
        lines.append(_goal(f"loopline / DuckDB ASOF: {ratio:.2f}x", ratio <= GOAL_DUCKDB))
    for task, results in (("join", join), ("window", window)):
        if "peak_mb" in results["loopline"]:
            peak = float(results["loopline"]["peak_mb"])
            lines.append(_goal(f"loopline {task} peak: {peak:,.0f} MB", peak < GOAL_PEAK_MB))
    for task, results, peer in (
        ("join", join, "DuckDB ASOF JOIN"),
        ("window", window, "DuckDB range join + GROUP BY"),
    ):
        a, b = results["loopline"].get("checksum"), results[peer].get("checksum")
        if a is not None and b is not None:
            agree = a == b and results["loopline"]["rows"] == results[peer]["rows"]
            lines.append(
                f"- {task}: loopline and DuckDB checksums {'agree' if agree else 'DIFFER'}"
            )
    return lines


def _goal(text: str, met: bool) -> str:
    return f"- {text} ({'goal met' if met else 'goal missed'})"


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    started = time.perf_counter()
    print(run())
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
