"""Online reads: 1 entity x 20 features, and batches of 1,000 entities, beside Feast.

The same data everywhere: 100,000 entities (int64 ids) x 20 float64 features, one event
each. Measured in one process, one store after the other:

- loopline ``SQLiteOnlineStore`` (a temporary file, in-process);
- loopline ``RedisOnlineStore`` on the local Redis (a fresh key prefix, deleted after);
- Feast 0.67 ``FeatureStore.get_online_features(...).to_dict()`` with its SQLite online
  store and the local provider, in a temporary repo, the rows written with
  ``write_to_online_store``.

Each store gets the same seeded random ids: ``LOOPLINE_BENCH_ONLINE_READS`` single reads
(default 10000) and ``LOOPLINE_BENCH_ONLINE_BATCHES`` batches of 1,000 (default 300),
every call timed on its own (``perf_counter_ns``). ``LOOPLINE_BENCH_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``) names the Redis server. Run alone: ``python -m bench
online_read``.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from loopline.errors import OnlineStoreError
from loopline.store.online import OnlineStore, RedisOnlineStore, SQLiteOnlineStore

ENTITIES = 100_000
FEATURES = 20
BATCH = 1_000
READS_ENV = "LOOPLINE_BENCH_ONLINE_READS"
BATCHES_ENV = "LOOPLINE_BENCH_ONLINE_BATCHES"
REDIS_ENV = "LOOPLINE_BENCH_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
VIEW = "bench"
EVENT_TIME = datetime(2024, 5, 1, tzinfo=UTC)
NAMES = [f"f{i:02d}" for i in range(FEATURES)]

GOAL_SINGLE_MS = {"loopline SQLite (in-process)": 0.1, "loopline Redis (local)": 0.5}
GOAL_BATCH_MS = 5.0


@dataclass
class Result:
    store: str
    write_s: float | None = None
    single_ms: list[float] = field(default_factory=list)
    batch_ms: list[float] = field(default_factory=list)
    note: str | None = None
    """Why there are no figures (not installed, unavailable), when there are none."""


def _table() -> pa.Table:
    rng = np.random.default_rng(11)
    columns: dict[str, Any] = {
        "id": pa.array(np.arange(ENTITIES, dtype=np.int64)),
        "event_timestamp": pa.array([EVENT_TIME] * ENTITIES, pa.timestamp("us", tz="UTC")),
    }
    for name in NAMES:
        columns[name] = pa.array(rng.random(ENTITIES))
    return pa.table(columns)


def _ids(reads: int, batches: int) -> tuple[list[int], list[list[int]]]:
    rng = np.random.default_rng(23)
    single = [int(i) for i in rng.integers(ENTITIES, size=reads)]
    many = [[int(i) for i in rng.integers(ENTITIES, size=BATCH)] for _ in range(batches)]
    return single, many


def _timed(call: Callable[[Any], object], inputs: Sequence[Any]) -> list[float]:
    """Milliseconds of each call, after a few untimed warm-up calls."""
    for value in inputs[:5]:
        call(value)
    out = []
    for value in inputs:
        start = time.perf_counter_ns()
        call(value)
        out.append((time.perf_counter_ns() - start) / 1e6)
    return out


def _loopline(
    name: str, store: OnlineStore, table: pa.Table, single: list[int], many: list[list[int]]
) -> tuple[Result, dict[str, float] | None]:
    start = time.perf_counter()
    store.write(VIEW, table, keys=["id"], timestamp="event_timestamp")
    result = Result(name, write_s=time.perf_counter() - start)
    result.single_ms = _timed(lambda i: store.read(VIEW, [(i,)]), single)
    result.batch_ms = _timed(lambda ids: store.read(VIEW, [(i,) for i in ids]), many)
    sample = store.read(VIEW, [(7,)])[0]
    return result, sample


def _sqlite(
    table: pa.Table, single: list[int], many: list[list[int]], folder: Path
) -> tuple[Result, dict[str, float] | None]:
    with SQLiteOnlineStore(f"sqlite:///{folder / 'loopline-online.db'}") as store:
        return _loopline("loopline SQLite (in-process)", store, table, single, many)


def _redis(
    table: pa.Table, single: list[int], many: list[list[int]]
) -> tuple[Result, dict[str, float] | None]:
    name = "loopline Redis (local)"
    base = os.environ.get(REDIS_ENV) or DEFAULT_REDIS_URL
    try:
        store = RedisOnlineStore(f"{base}?prefix=loopline-bench-{uuid.uuid4().hex[:8]}:")
    except OnlineStoreError as exc:
        return Result(name, note=f"unavailable ({exc.message.split('.')[0]})"), None
    try:
        return _loopline(name, store, table, single, many)
    finally:
        store.delete(VIEW)
        store.close()


def _feast(
    table: pa.Table, single: list[int], many: list[list[int]], folder: Path
) -> tuple[Result, dict[str, float] | None]:
    name = f"Feast {_version('feast')} SQLite online store"
    try:
        import feast  # noqa: F401
    except ImportError:
        return Result("Feast", note="not installed"), None
    with warnings.catch_warnings():
        # Feast and its dependencies deprecate each other's APIs; none of it is measured.
        warnings.simplefilter("ignore")
        return _feast_measured(name, table, single, many, folder / "feast")


def _feast_measured(
    name: str, table: pa.Table, single: list[int], many: list[list[int]], repo: Path
) -> tuple[Result, dict[str, float] | None]:
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
    from feast.types import Float64

    repo.mkdir()
    frame = table.to_pandas()
    frame.head(10).to_parquet(repo / "source.parquet")
    entity = Entity(name="id", join_keys=["id"], value_type=ValueType.INT64)
    view = FeatureView(
        name=VIEW,
        entities=[entity],
        ttl=timedelta(0),
        source=FileSource(
            name="source", path=str(repo / "source.parquet"), timestamp_field="event_timestamp"
        ),
        schema=[Field(name=n, dtype=Float64) for n in NAMES],
    )
    config = RepoConfig(
        project="bench",
        provider="local",
        registry=str(repo / "registry.db"),
        offline_store={"type": "file"},
        online_store={"type": "sqlite", "path": str(repo / "online.db")},
        entity_key_serialization_version=3,
        repo_path=str(repo),
    )
    store = FeatureStore(config=config, repo_path=str(repo))
    store.apply([entity, view])
    start = time.perf_counter()
    store.write_to_online_store(VIEW, frame)
    result = Result(name, write_s=time.perf_counter() - start)
    refs = [f"{VIEW}:{n}" for n in NAMES]

    def one(i: int) -> dict[str, Any]:
        return store.get_online_features(features=refs, entity_rows=[{"id": i}]).to_dict()

    def batch(ids: list[int]) -> dict[str, Any]:
        return store.get_online_features(features=refs, entity_rows={"id": ids}).to_dict()

    result.single_ms = _timed(one, single)
    result.batch_ms = _timed(batch, many)
    answer = one(7)
    return result, {n: answer[n][0] for n in NAMES}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def _ms(value: float) -> str:
    return f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"


def _row(result: Result) -> str:
    if result.note is not None:
        return f"| {result.store} | {result.note} | | | | |"
    write = f"{result.write_s:.2f} s" if result.write_s is not None else ""
    return (
        f"| {result.store} | {write} | {_ms(_pct(result.single_ms, 50))} | "
        f"{_ms(_pct(result.single_ms, 99))} | {_ms(_pct(result.batch_ms, 50))} | "
        f"{_ms(_pct(result.batch_ms, 99))} |"
    )


def _ratios(results: list[Result]) -> list[str]:
    feast = next((r for r in results if r.store.startswith("Feast") and r.note is None), None)
    if feast is None:
        return ["Feast is not installed, so there are no ratios to it."]
    lines = []
    for result in results:
        if result is feast or result.note is not None:
            continue
        parts = [
            f"{label} {_pct(getattr(feast, attr), q) / _pct(getattr(result, attr), q):.0f}x"
            for label, attr, q in [
                ("1 entity p50", "single_ms", 50),
                ("p99", "single_ms", 99),
                ("1,000 entities p50", "batch_ms", 50),
                ("p99", "batch_ms", 99),
            ]
        ]
        assert feast.write_s is not None
        assert result.write_s is not None
        parts.append(f"bulk write {feast.write_s / result.write_s:.0f}x")
        lines.append(f"- Feast's time / {result.store}'s: {', '.join(parts)}.")
    return lines


def _goals(results: list[Result]) -> list[str]:
    lines = []
    for result in results:
        goal = GOAL_SINGLE_MS.get(result.store)
        if goal is None:
            continue
        if result.note is not None:
            lines.append(f"- {result.store}: {result.note}, goals not checked.")
            continue
        single, many = _pct(result.single_ms, 99), _pct(result.batch_ms, 99)
        lines.append(
            f"- {result.store}: 1 entity p99 {_ms(single)} (goal under {goal} ms: "
            f"{'met' if single < goal else 'missed'}); 1,000 entities p99 {_ms(many)} "
            f"(goal under {GOAL_BATCH_MS:.0f} ms: {'met' if many < GOAL_BATCH_MS else 'missed'})."
        )
    return lines


def run() -> str:
    reads = int(os.environ.get(READS_ENV) or 10_000)
    batches = int(os.environ.get(BATCHES_ENV) or 300)
    table = _table()
    single, many = _ids(reads, batches)
    results: list[Result] = []
    samples: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="loopline-bench-online-") as folder:
        for measure in (
            lambda: _sqlite(table, single, many, Path(folder)),
            lambda: _redis(table, single, many),
            lambda: _feast(table, single, many, Path(folder)),
        ):
            result, sample = measure()
            results.append(result)
            if sample is not None:
                samples[result.store] = sample
    expected = {n: table.column(n)[7].as_py() for n in NAMES}
    agree = all(sample == expected for sample in samples.values())
    lines = [
        "## Online reads: 1 entity x 20 features, and batches of 1,000",
        "",
        textwrap.dedent(
            f"""\
            {ENTITIES:,} entities (int64 ids) x {FEATURES} float64 features, one event
            each, written once (the bulk write time below), then read with the same
            seeded random ids: {reads:,} reads of 1 entity and {batches:,} reads of
            {BATCH:,} entities, each call timed on its own, in one process. A read
            returns the features as Python values: loopline's ``read`` a dict per
            entity; Feast's ``get_online_features(...).to_dict()`` (its SQLite online
            store, local provider, a temporary repo; rows written with
            ``write_to_online_store``). Goals: 1 entity p99 under 0.1 ms on SQLite
            in-process and under 0.5 ms on local Redis; 1,000 entities under 5 ms.
            """
        ),
        "| store | bulk write (100k rows) | 1 entity p50 | 1 entity p99 | "
        "1,000 entities p50 | 1,000 entities p99 |",
        "|---|---:|---:|---:|---:|---:|",
        *(_row(r) for r in results),
        "",
        *_ratios(results),
        *_goals(results),
        f"- Entity 7 read back from every store: "
        f"{'the written values, exactly' if agree else 'MISMATCH: ' + repr(samples)}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
