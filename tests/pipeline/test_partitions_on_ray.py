"""Partitioned data work on Ray gives what the local engine gives, byte for byte.

Each test does the same work twice, into separate stores: once with the ``local``
engine (partitions one after another in this process) and once with ``ray`` (one Ray
task per partition on the session's two-CPU cluster), and compares what was stored:
ingestion (parts, quarantine, profiles, contract verdicts) and training sets.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import psutil
import pytest
import ray

from loopline.config import Settings
from loopline.data.contract import Column, Contract, Freshness
from loopline.data.ingest import IngestResult, ingest, read_dataset, read_quarantine
from loopline.data.parallel import ONE_THREAD, _Fanout, map_partitions, on_ray
from loopline.data.sources.files import FileSource
from loopline.data.workspace import Workspace
from loopline.errors import ContractError
from loopline.features import Aggregate, Entity, FeatureView, WindowView, training_set
from loopline.pipeline.runner import Runner

pytestmark = pytest.mark.usefixtures("ray_cluster")
# Ray's workers cannot import this test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

NOW = datetime(2026, 1, 2, tzinfo=UTC)
CONTRACT = Contract(
    "events",
    {
        "id": Column("int64"),
        "at": Column("datetime"),
        "kind": Column("string", allowed=["a", "b", "c"]),
        "value": Column("float64", min=0),
    },
    max_bad_fraction=0.2,
    freshness=Freshness("at", timedelta(days=30)),
)


def _write(folder: Path, files: int, rows: int) -> Path:
    folder.mkdir(parents=True)
    for f in range(files):
        ids = range(f * rows, (f + 1) * rows)
        frame = pl.DataFrame(
            {
                "id": [str(i) for i in ids],
                "at": [f"2025-12-{1 + (i % 28):02d}T{i % 24:02d}:00:00Z" for i in ids],
                # every 17th row breaks a rule, in a different way per file
                "kind": ["z" if i % 17 == f else "abc"[i % 3] for i in ids],
                "value": ["x" if i % 17 == f + 5 else str((i % 100) - (i % 23 == 0)) for i in ids],
            }
        )
        frame.write_csv(folder / f"part-{f:02d}.csv")
    return folder


def _ingest(
    root: Path, files: Path, engine: str, split_bytes: int | None = None, **kwargs: Any
) -> tuple[IngestResult, Workspace]:
    ws = Workspace(f"sqlite:///{root}/meta.db", str(root / "artifacts"), engine=engine)
    source = FileSource(str(files / "*.csv"), split_bytes=split_bytes)
    return ingest(source, contract=CONTRACT, now=NOW, workspace=ws, **kwargs), ws


def _stored(result: IngestResult, ws: Workspace) -> dict[str, Any]:
    dataset = result.dataset
    parts = ws.metadata.dataset_parts(dataset.id)
    return {
        "hash": dataset.content_hash,
        "profile": dataset.profile_hash,
        "rows": (dataset.rows, dataset.rows_quarantined, dataset.rows_read),
        "warnings": result.warnings,
        "status": dataset.status,
        "parts": [
            (
                p.position,
                Path(p.partition_key).name,
                p.content_hash,
                p.quarantine_hash,
                p.profile_hash,
            )
            for p in parts
        ],
        "data": read_dataset(dataset, workspace=ws).to_pylist()[:5],
        "quarantine": read_quarantine(dataset, workspace=ws).drop_columns(["source"]).to_pylist(),
    }


@pytest.fixture
def one_task_per_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules["loopline.data.ingest"], "PARTITION_BYTES", 1)


def test_partitions_run_as_ray_tasks_in_order(tmp_path: Path) -> None:
    ws = Workspace(f"sqlite:///{tmp_path}/meta.db", str(tmp_path / "artifacts"), engine="ray")
    assert on_ray(ws)
    assert not on_ray(Workspace(ws.metadata_url, ws.artifact_url))
    pids = map_partitions(_pid_after, [0.3, 0.0, 0.1], name="pids", workspace=ws)
    assert [value for value, _ in pids] == [0.3, 0.0, 0.1]
    assert os.getpid() not in {pid for _, pid in pids}


def test_inside_a_task_the_caller_takes_partitions_too(tmp_path: Path) -> None:
    """A step's task on one Polars thread holds a CPU: Ray tasks take items, one per
    other CPU, and the caller the next one; the results still come in item order."""
    ws = Workspace(f"sqlite:///{tmp_path}/meta.db", str(tmp_path / "artifacts"), engine="ray")
    items = [0.4, 0.3, 0.2, 0.1, 0.0, 0.05]

    @ray.remote(num_cpus=1, runtime_env=ONE_THREAD)
    def step() -> tuple[int, list[tuple[float, int]]]:
        return os.getpid(), map_partitions(_pid_after, items, name="help", workspace=ws)

    caller, done = ray.get(step.remote())
    assert [value for value, _ in done] == items
    # Two CPUs: one Ray task takes item 0, the caller item 1 before any task returns.
    assert done[0][1] != caller
    assert done[1][1] == caller
    assert caller != os.getpid()


def test_the_largest_items_start_first(tmp_path: Path) -> None:
    ws = Workspace(f"sqlite:///{tmp_path}/meta.db", str(tmp_path / "artifacts"), engine="ray")
    items = [0.0, 0.05, 0.4, 0.3]

    @ray.remote(num_cpus=1, runtime_env=ONE_THREAD)
    def step() -> tuple[int, list[tuple[float, int]]]:
        done = map_partitions(_pid_after, items, name="big", workspace=ws, cost=lambda s: s)
        return os.getpid(), done

    caller, done = ray.get(step.remote())
    assert [value for value, _ in done] == items
    assert done[2][1] != caller  # the largest, to the Ray task
    assert done[3][1] == caller  # the next largest, to the caller at once


def test_an_error_in_the_callers_partition_is_raised_as_itself(tmp_path: Path) -> None:
    ws = Workspace(f"sqlite:///{tmp_path}/meta.db", str(tmp_path / "artifacts"), engine="ray")

    @ray.remote(num_cpus=1, runtime_env=ONE_THREAD)
    def step() -> list[int]:
        # A Ray task takes item 0; the caller takes 1.
        return map_partitions(_fails_on_one, [0, 1, 2], name="fails", workspace=ws)

    with pytest.raises(ContractError, match="partition 1 broke"):
        ray.get(step.remote())


def test_a_caller_on_more_polars_threads_lends_its_cpu(tmp_path: Path) -> None:
    """A step's process with a Polars thread per CPU (as on the local cluster; the
    session's cluster leaves Polars its default) computes no item: it waits in ray.get,
    which frees its CPU, so two items run side by side on the two CPUs while the step
    holds one of them."""
    ws = Workspace(f"sqlite:///{tmp_path}/meta.db", str(tmp_path / "artifacts"), engine="ray")
    folder = str(tmp_path)

    @ray.remote(num_cpus=1)
    def step() -> tuple[int, int, list[tuple[bool, int]]]:
        items = [(folder, "a", "b"), (folder, "b", "a")]
        done = map_partitions(_meet, items, name="lend", workspace=ws)
        return os.getpid(), pl.thread_pool_size(), done

    caller, threads, done = ray.get(step.remote())
    assert threads > 1
    assert [met for met, _ in done] == [True, True], "the items did not run at the same time"
    assert caller not in {pid for _, pid in done}
    assert done[0][1] != done[1][1]


def _meet(item: tuple[str, str, str]) -> tuple[bool, int]:
    """Leave a mark, and wait (up to a minute) for the other item's: both ran at once."""
    folder, mine, other = item
    Path(folder, mine).touch()
    deadline = time.monotonic() + 60
    while not Path(folder, other).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return Path(folder, other).exists(), os.getpid()


def test_a_frame_that_items_share_goes_to_the_object_store_once(tmp_path: Path) -> None:
    ws = Workspace(f"sqlite:///{tmp_path}/meta.db", str(tmp_path / "artifacts"), engine="ray")
    rows, other = pl.DataFrame({"x": [1, 2, 3]}), pl.DataFrame({"x": [4]})
    items = [(rows, 0), (rows, 1), (other, 2)]
    assert map_partitions(_height_and_tag, items, name="shared", workspace=ws) == [
        (3, 6, 0),
        (3, 6, 1),
        (1, 4, 2),
    ]
    fanout = _Fanout(ray, _height_and_tag, None, "shared", ws)
    first, second, third = (fanout._ship(item) for item in items)
    assert first[0].ref == second[0].ref != third[0].ref
    assert first[1:] == (0,)


def _height_and_tag(item: tuple[pl.DataFrame, int]) -> tuple[int, int, int]:
    frame, tag = item
    return frame.height, int(frame["x"].sum()), tag


def _pid_after(seconds: float) -> tuple[float, int]:
    time.sleep(seconds)
    return seconds, os.getpid()


def test_an_error_in_a_partition_is_raised_as_itself(tmp_path: Path) -> None:
    ws = Workspace(f"sqlite:///{tmp_path}/meta.db", str(tmp_path / "artifacts"), engine="ray")
    with pytest.raises(ContractError, match="partition 1 broke") as caught:
        map_partitions(_fails_on_one, [0, 1, 2], name="fails", workspace=ws)
    assert caught.value.context == {"source": "p1"}


def _fails_on_one(item: int) -> int:
    if item == 1:
        raise ContractError("partition 1 broke", source="p1")
    return item


def test_ingest_on_ray_stores_what_the_local_engine_stores(
    tmp_path: Path, one_task_per_file: None
) -> None:
    files = _write(tmp_path / "in", files=4, rows=3_000)
    local = _stored(*_ingest(tmp_path / "local", files, "local"))
    on_ray = _stored(*_ingest(tmp_path / "ray", files, "ray"))
    assert on_ray == local
    assert len(local["parts"]) == 4
    assert local["rows"][1] > 0


def test_one_large_file_in_pieces_is_ingested_on_ray_as_on_the_local_engine(
    tmp_path: Path, one_task_per_file: None
) -> None:
    files = _write(tmp_path / "in", files=1, rows=20_000)
    local = _stored(*_ingest(tmp_path / "local", files, "local", split_bytes=150_000))
    on_ray = _stored(*_ingest(tmp_path / "ray", files, "ray", split_bytes=150_000))
    assert on_ray == local
    assert len(local["parts"]) > 3
    whole = _stored(*_ingest(tmp_path / "whole", files, "local"))
    assert len(whole["parts"]) == 1
    for key in ("rows", "data", "quarantine", "warnings", "status"):
        assert local[key] == whole[key]


def test_a_failing_contract_fails_the_same_way_on_ray(
    tmp_path: Path, one_task_per_file: None
) -> None:
    files = _write(tmp_path / "in", files=3, rows=1_000)
    strict = Contract("events", CONTRACT.columns, max_bad_fraction=0.01)
    messages = []
    for engine in ("local", "ray"):
        ws = Workspace(f"sqlite:///{tmp_path}/{engine}.db", str(tmp_path / engine), engine=engine)
        with pytest.raises(ContractError) as caught:
            ingest(FileSource(str(files / "*.csv")), contract=strict, now=NOW, workspace=ws)
        # the same but for the failed version's id
        messages.append(re.sub(r"quarantine [0-9a-f]+", "quarantine ID", str(caught.value)))
    assert messages[0] == messages[1]
    assert "rows (" in messages[0]


def test_a_killed_worker_is_replaced_and_the_result_is_the_same(
    tmp_path: Path, one_task_per_file: None
) -> None:
    """Kill the worker process of a running ingest partition: Ray runs it again."""
    files = _write(tmp_path / "in", files=3, rows=50_000)
    with _Killer(victim="loopline:ingest[1]") as killer:
        on_ray = _stored(*_ingest(tmp_path / "ray", files, "ray"))
    assert killer.killed, "the test never saw the partition's worker to kill it"
    local = _stored(*_ingest(tmp_path / "local", files, "local"))
    assert on_ray == local


class _Killer:
    """While the block runs, kill the first process whose command line (Ray's process
    title) holds ``victim``, once a process holding ``when`` runs too."""

    def __init__(self, *, victim: str, when: str | None = None) -> None:
        self.victim, self.when = victim, when
        self.killed: list[int] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._done.is_set() and not self.killed:
            titles = {
                proc: " ".join(proc.info["cmdline"] or [])
                for proc in psutil.process_iter(["pid", "cmdline"])
            }
            if self.when is None or any(self.when in title for title in titles.values()):
                for proc, title in titles.items():
                    if self.victim in title:
                        proc.kill()
                        self.killed.append(proc.pid)
                        break
            time.sleep(0.005)


TRAINING_SET_PIPELINE = """
from datetime import datetime, timedelta

import polars as pl

from loopline import step
from loopline.features import Aggregate, Entity, WindowView, training_set


@step
def killed_set(rows: int = 300_000) -> pl.DataFrame:
    start = datetime(2025, 1, 1)
    events = pl.DataFrame(
        {
            "user": [i % 5_000 for i in range(rows)],
            "ts": [start + timedelta(seconds=37 * i) for i in range(rows)],
            "amount": [float(i % 101) for i in range(rows)],
        }
    )
    labels = events.gather_every(7).select("user", pl.col("ts").alias("t"))
    view = WindowView(
        "spend",
        entity=Entity("user", keys=["user"]),
        source=events,
        timestamp="ts",
        aggregations=[Aggregate("amount", f, w) for f in ("sum", "count") for w in ("1h", "1d")],
    )
    return training_set(labels, [view], timestamp="t", partitions=6).frame
"""


def test_a_step_killed_while_its_partitions_run_is_run_again_with_the_same_result(
    tmp_path: Path,
) -> None:
    """The step's own process computes partitions too; killed while a partition task
    runs, Ray runs the step again and the stored result is the local engine's."""
    path = tmp_path / "killed.py"
    path.write_text(TRAINING_SET_PIPELINE)

    def stored(engine: str) -> str:
        home = tmp_path / engine
        home.mkdir()
        runner = Runner(Settings.load(start=home, search=False, env={}, engine=engine))
        result = runner.run(path)
        assert result.ok, result.error
        record = result.steps["killed_set"]
        assert record.output_artifact_id is not None
        return runner.metadata.get_artifact(record.output_artifact_id).content_hash

    with _Killer(victim="loopline:killed_set", when="loopline:features[") as killer:
        on_ray = stored("ray")
    assert killer.killed, "the test never saw the step's process to kill it"
    assert on_ray == stored("local")


def _events(n: int, users: int) -> pl.DataFrame:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return pl.DataFrame(
        {
            "user": [f"u{(i * 7) % users}" for i in range(n)],
            "ts": [start + timedelta(minutes=13 * i) for i in range(n)],
            "amount": [float((i * 31) % 97) if i % 11 else None for i in range(n)],
            "kind": ["abc"[i % 3] for i in range(n)],
        }
    )


def test_a_training_set_on_ray_is_the_local_one(tmp_path: Path) -> None:
    events = _events(6_000, users=40)
    user = Entity("user", keys=["user"])
    views = [
        FeatureView(
            "last",
            entity=user,
            source=events,
            timestamp="ts",
            ttl="6h",
            features=["amount", "kind"],
        ),
        WindowView(
            "spend",
            entity=user,
            source=events,
            timestamp="ts",
            aggregations=[Aggregate("amount", f, "1d") for f in ("sum", "mean", "count")],
        ),
        # The rows of "spend" exactly (same source, columns): on Ray they share its split.
        FeatureView(
            "recent",
            entity=user,
            source=events,
            timestamp="ts",
            ttl="2h",
            features=["amount"],
            prefix="recent_",
        ),
        # The same columns filtered: a split of its own.
        FeatureView(
            "big",
            entity=user,
            source=events,
            timestamp="ts",
            ttl="1d",
            features=["amount"],
            prefix="big_",
            where=pl.col("amount") > 50,
        ),
    ]
    labels = events.select("user", pl.col("ts").dt.offset_by("5m").alias("t"))[::3]
    frames = {}
    for engine, partitions in (("local", None), ("ray", None), ("ray", 3)):
        ws = Workspace(f"sqlite:///{tmp_path}/{engine}.db", str(tmp_path / engine), engine=engine)
        frames[engine, partitions] = training_set(
            labels, views, timestamp="t", partitions=partitions, workspace=ws
        ).frame
    whole = frames["local", None]
    assert whole.height == labels.height
    assert whole["amount_sum_1d"].null_count() < whole.height
    assert whole["recent_amount"].null_count() < whole["big_amount"].null_count() < whole.height
    for key, frame in frames.items():
        assert frame.equals(whole, null_equal=True), key


def test_batch_scoring_on_ray_writes_what_the_local_engine_writes(tmp_path: Path) -> None:
    from loopline.data.workspace import use_workspace
    from loopline.serve.batch import predict_batch
    from loopline.train import LightGBMModel, train_bundle

    rows = pl.DataFrame(
        {
            "distance": [float((i * 37) % 2500) for i in range(9_000)],
            "carrier": [["UA", "AA", "DL"][i % 3] for i in range(9_000)],
            "delayed": [(i * 37) % 2500 > 1200 or i % 7 == 0 for i in range(9_000)],
        }
    )
    bundle = train_bundle(
        rows,
        features=["distance", "carrier"],
        label="delayed",
        model=LightGBMModel(num_rounds=5, num_threads=1),
    )
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f, start in enumerate((0, 2_500, 3_100, 7_000)):  # uneven files, several row groups
        end = (2_500, 3_100, 7_000, 9_000)[f]
        rows[start:end].drop("delayed").write_parquet(inputs / f"{f}.parquet", row_group_size=700)
    written = {}
    for engine in ("local", "ray"):
        ws = Workspace(f"sqlite:///{tmp_path}/{engine}.db", str(tmp_path / engine), engine=engine)
        with use_workspace(ws):
            for name in ("scored", "scored.parquet", "scored.csv"):
                out = tmp_path / engine / name
                result = predict_batch(bundle, inputs, out, batch_rows=1_000)
                assert result.rows == 9_000
                files = sorted(out.iterdir()) if out.is_dir() else [out]
                written[engine, name] = (result.parts, [f.read_bytes() for f in files])
    for name in ("scored", "scored.parquet", "scored.csv"):
        assert written["ray", name] == written["local", name], name
    assert written["local", "scored"][0] == 9
    assert not list((tmp_path / "ray").glob(".*"))  # no scratch left behind


def test_frames_travel_as_arrow_and_come_back_with_their_schema(tmp_path: Path) -> None:
    ws = Workspace(f"sqlite:///{tmp_path}/meta.db", str(tmp_path / "artifacts"), engine="ray")
    frame = pl.DataFrame(
        {
            "kind": pl.Series(["a", "b", None], dtype=pl.Enum(["a", "b", "c"])),
            "carrier": pl.Series(["AA", "DL", "AA"], dtype=pl.Categorical),
            "at": [datetime(2026, 1, 1, tzinfo=UTC)] * 3,
            "tags": [[1, 2], [], None],
            "pair": [{"x": 1, "y": "u"}, {"x": 2, "y": None}, None],
            "amount": [1.5, None, float("nan")],
        }
    )
    echoed = map_partitions(_echo, [frame, frame.head(1), frame.clear()], name="echo", workspace=ws)
    for sent, (back, pid) in zip([frame, frame.head(1), frame.clear()], echoed, strict=True):
        assert pid != os.getpid()
        assert back.schema == sent.schema
        assert back.equals(sent)
    # An Object column has no Arrow type (and Polars does not pickle it): refused by name.
    objects = pl.DataFrame({"n": [1, 2], "o": pl.Series([(1,), (2,)], dtype=pl.Object)})
    with pytest.raises(Exception, match=r"Object column\(s\) \['o'\] cannot travel"):
        map_partitions(_echo, [objects, objects], name="objects", workspace=ws)


def _echo(frame: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    return frame, os.getpid()
