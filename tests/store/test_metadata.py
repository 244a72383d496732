"""The metadata store, one suite run over every backend (SQLite file, PostgreSQL schema).

Value conventions pinned down here, identical on every backend:

- Parameters are stored as JSON (orjson): JSON-able values round-trip exactly, tuples come
  back as lists, and NaN and infinities become ``None`` (JSON has no spelling for them).
- Metrics are floats: infinities round-trip, NaN is stored as NULL and reads back as
  ``None``, booleans and NumPy scalars are coerced to ``float``.
"""

from __future__ import annotations

import hashlib
import math
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.errors import DatasetNotFoundError, MetadataStoreError, RunNotFoundError
from loopline.store import metadata as metadata_module
from loopline.store import schema
from loopline.store.metadata import (
    ArtifactRecord,
    AttemptRecord,
    DatasetPartRecord,
    MetadataStore,
    StepOutcome,
    new_id,
)

MIGRATIONS = Path(metadata_module.__file__).parent / "migrations"

# Hypothesis runs many examples against one store; the fixture is safe to share because
# every example writes under a fresh run id.
DB_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture
def store(metadata_url: str) -> Iterator[MetadataStore]:
    with MetadataStore(metadata_url) as opened:
        yield opened


# -- helpers --------------------------------------------------------------------------------


def _artifact(artifact_id: str | None = None, *, content_hash: str | None = None) -> ArtifactRecord:
    aid = artifact_id or new_id()
    digest = content_hash or hashlib.sha256(aid.encode()).hexdigest()
    return ArtifactRecord(
        id=aid,
        content_hash=digest,
        uri=f"/artifacts/objects/{digest[:2]}/{digest}",
        size=12,
        kind="json",
        created_at=time.time(),
    )


def _produce(
    store: MetadataStore,
    run_id: str,
    name: str,
    *,
    artifact: ArtifactRecord | None = None,
    cache_key: str | None = None,
    metrics: Sequence[tuple[str, float, int]] = (),
    inputs: Mapping[str, str] | None = None,
) -> tuple[str, ArtifactRecord]:
    """Start and finish one succeeded step with an output artifact; return both ids."""
    step_id = store.start_step(run_id, name, cache_key=cache_key)
    output = artifact or _artifact()
    now = time.time()
    store.finish_step(
        run_id,
        step_id,
        StepOutcome(
            status="succeeded",
            ended_at=now,
            artifact=output,
            attempts=[AttemptRecord(1, "succeeded", now, now)],
            metrics=metrics,
            inputs=inputs or {},
            cache_key=cache_key,
        ),
    )
    return step_id, output


def _rows(url: str, query: str) -> list[tuple[Any, ...]]:
    """Read the database behind the store's back, through a separate engine."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(query))]
    finally:
        engine.dispose()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- runs -----------------------------------------------------------------------------------


def test_create_and_finish_run(store: MetadataStore) -> None:
    parent = store.create_run(pipeline="flights", source="pipeline.py")
    run_id = store.create_run(
        pipeline="flights",
        source="pipeline.py",
        params={"train": {"rounds": 10}},
        options={"executor": "threads", "only": ["train"]},
        parent_run_id=parent,
    )
    run = store.get_run(run_id)
    assert (run.id, run.pipeline, run.source, run.status) == (
        run_id,
        "flights",
        "pipeline.py",
        "running",
    )
    assert run.ended_at is None
    assert run.duration is None
    assert run.parent_run_id == parent
    assert run.options == {"executor": "threads", "only": ["train"]}
    assert run.host == socket.gethostname()
    assert run.pid is not None

    store.finish_run(run_id, "failed", error="train raised ValueError")
    run = store.get_run(run_id)
    assert run.status == "failed"
    assert run.error == "train raised ValueError"
    assert run.ended_at is not None
    assert run.duration is not None
    assert run.duration >= 0


def test_get_run_by_unique_prefix(store: MetadataStore) -> None:
    ids = [store.create_run(pipeline="p", source="p.py") for _ in range(3)]
    for run_id in ids:
        assert store.get_run(run_id[:10]).id == run_id


def test_ambiguous_run_prefix(store: MetadataStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = iter(["abc0000000000001", "abc0000000000002"])
    monkeypatch.setattr(metadata_module, "new_id", lambda: next(ids))
    store.create_run(pipeline="p", source="p.py")
    store.create_run(pipeline="p", source="p.py")

    with pytest.raises(RunNotFoundError, match="More than one run starts with 'abc'") as info:
        store.get_run("abc")
    assert "give more characters" in str(info.value)
    assert info.value.run_id == "abc"  # type: ignore[attr-defined]
    assert store.get_run("abc0000000000002").id == "abc0000000000002"


def test_run_prefix_is_not_a_pattern(store: MetadataStore) -> None:
    """LIKE wildcards in a prefix are matched literally, never as patterns."""
    store.create_run(pipeline="p", source="p.py")
    for prefix in ("%", "_", "%%%%"):
        with pytest.raises(RunNotFoundError):
            store.get_run(prefix)


def test_run_not_found(store: MetadataStore) -> None:
    with pytest.raises(RunNotFoundError) as info:
        store.get_run("deadbeef")
    error = info.value
    assert isinstance(error, KeyError)  # callers may catch the builtin
    assert str(error) == "No run has the id 'deadbeef'. List runs with 'loopline runs'."
    assert error.run_id == "deadbeef"  # type: ignore[attr-defined]


def test_list_runs_order_limit_and_filter(store: MetadataStore) -> None:
    ids = [store.create_run(pipeline="a" if i % 2 == 0 else "b", source="p.py") for i in range(5)]
    newest_first = list(reversed(ids))
    assert [r.id for r in store.list_runs()] == newest_first
    assert [r.id for r in store.list_runs(limit=2)] == newest_first[:2]
    assert [r.id for r in store.list_runs(pipeline="a")] == [ids[4], ids[2], ids[0]]
    assert [r.id for r in store.list_runs(pipeline="a", limit=1)] == [ids[4]]
    assert store.list_runs(pipeline="nope") == []


_NAMES = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=30
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@DB_SETTINGS
@given(params=st.dictionaries(_NAMES, st.dictionaries(_NAMES, _JSON, min_size=1, max_size=4)))
def test_params_round_trip(store: MetadataStore, params: dict[str, dict[str, Any]]) -> None:
    run_id = store.create_run(pipeline="p", source="p.py", params=params)
    assert store.run_params(run_id) == params


def test_params_without_a_json_spelling(store: MetadataStore) -> None:
    params = {"train": {"nan": math.nan, "inf": math.inf, "pair": (1, 2)}}
    run_id = store.create_run(pipeline="p", source="p.py", params=params)
    assert store.run_params(run_id) == {"train": {"nan": None, "inf": None, "pair": [1, 2]}}


def test_run_without_params(store: MetadataStore) -> None:
    run_id = store.create_run(pipeline="p", source="p.py")
    assert store.run_params(run_id) == {}
    assert store.get_run(run_id).options == {}


# -- steps ----------------------------------------------------------------------------------


def test_step_lifecycle(store: MetadataStore, metadata_url: str) -> None:
    run_id = store.create_run(pipeline="p", source="p.py")
    _, features = _produce(store, run_id, "features")

    step_id = store.start_step(run_id, "train", cache_key="k-train")
    started = store.get_step(step_id)
    assert (started.status, started.cache_key, started.cache_hit) == ("running", "k-train", False)
    assert started.started_at is not None
    assert started.ended_at is None

    model = _artifact()
    t0 = time.time()
    attempts = [
        AttemptRecord(1, "failed", t0, t0 + 1, error="ConnectionError: flaky", traceback="tb"),
        AttemptRecord(2, "succeeded", t0 + 1, t0 + 2),
    ]
    store.finish_step(
        run_id,
        step_id,
        StepOutcome(
            status="succeeded",
            ended_at=t0 + 2,
            artifact=model,
            attempts=attempts,
            metrics=[("auc", 0.75, 0), ("loss", 0.5, 3)],
            inputs={"features": features.id},
            cache_key="k-train",
        ),
    )

    step = store.get_step(step_id)
    assert (step.status, step.output_artifact_id, step.error) == ("succeeded", model.id, None)
    assert step.ended_at == t0 + 2
    assert store.get_attempts(step_id) == attempts
    assert store.get_artifact(model.id) == ArtifactRecord(
        **{**vars(model), "producer_step_id": step_id}
    )
    assert store.step_inputs(step_id) == {"features": features.id}
    assert [(m.step_name, m.key, m.value, m.step) for m in store.get_metrics(run_id)] == [
        ("train", "auc", 0.75, 0),
        ("train", "loss", 0.5, 3),
    ]
    assert store.lookup_cache("k-train") == (store.get_artifact(model.id), step_id)
    edges = _rows(
        metadata_url,
        f"SELECT src_id, dst_id, relation, src_kind, dst_kind, name FROM lineage "
        f"WHERE src_id = '{step_id}' OR dst_id = '{step_id}' ORDER BY relation",
    )
    assert edges == [
        (features.id, step_id, "input", "artifact", "step", "features"),
        (step_id, model.id, "output", "step", "artifact", None),
    ]
    assert [s.name for s in store.get_steps(run_id)] == ["features", "train"]


def test_failed_step_is_not_published_to_the_cache(store: MetadataStore) -> None:
    run_id = store.create_run(pipeline="p", source="p.py")
    step_id = store.start_step(run_id, "train", cache_key="k-failed")
    now = time.time()
    store.finish_step(
        run_id,
        step_id,
        StepOutcome(
            status="failed",
            ended_at=now,
            error="ValueError: bad",
            attempts=[AttemptRecord(1, "failed", now, now, error="ValueError: bad")],
            cache_key="k-failed",
        ),
    )
    step = store.get_step(step_id)
    assert (step.status, step.error, step.output_artifact_id) == ("failed", "ValueError: bad", None)
    assert store.lookup_cache("k-failed") is None


def test_record_cached_step_copies_metrics(store: MetadataStore) -> None:
    first = store.create_run(pipeline="p", source="p.py")
    _, features = _produce(store, first, "features")
    source_step, model = _produce(
        store,
        first,
        "train",
        cache_key="k-train",
        metrics=[("auc", 0.75, 0), ("auc", 0.8, 1)],
        inputs={"features": features.id},
    )

    second = store.create_run(pipeline="p", source="p.py")
    cached = store.record_cached_step(
        second,
        "train",
        cache_key="k-train",
        artifact_id=model.id,
        source_step_id=source_step,
        inputs={"features": features.id},
    )
    step = store.get_step(cached)
    assert (step.status, step.cache_hit, step.source_step_id, step.output_artifact_id) == (
        "cached",
        True,
        source_step,
        model.id,
    )
    assert step.duration == 0
    assert store.step_inputs(cached) == {"features": features.id}
    assert [(m.step_name, m.key, m.value, m.step) for m in store.get_metrics(second)] == [
        ("train", "auc", 0.75, 0),
        ("train", "auc", 0.8, 1),
    ]
    assert len(store.get_metrics(first)) == 2  # the source run's metrics are untouched


def test_record_skipped_step(store: MetadataStore) -> None:
    run_id = store.create_run(pipeline="p", source="p.py")
    _produce(store, run_id, "features")
    skipped = store.record_skipped_step(run_id, "train", reason="upstream 'features' failed")
    step = store.get_step(skipped)
    assert (step.status, step.error, step.cache_hit) == (
        "skipped",
        "upstream 'features' failed",
        False,
    )
    assert step.started_at is None
    assert step.duration is None
    assert [s.name for s in store.get_steps(run_id)] == ["features", "train"]  # unstarted last


def test_get_step_not_found(store: MetadataStore) -> None:
    with pytest.raises(RunNotFoundError, match="No step has the id 'nope'"):
        store.get_step("nope")


# -- cache ----------------------------------------------------------------------------------


def test_cache_upsert_and_forget(store: MetadataStore) -> None:
    run_id = store.create_run(pipeline="p", source="p.py")
    assert store.lookup_cache("k") is None

    first_step, first = _produce(store, run_id, "train", cache_key="k")
    hit = store.lookup_cache("k")
    assert hit is not None
    assert (hit[0].id, hit[1]) == (first.id, first_step)

    # Publishing the same key again replaces the entry instead of failing on the key.
    second_step, second = _produce(store, run_id, "train", cache_key="k")
    hit = store.lookup_cache("k")
    assert hit is not None
    assert (hit[0].id, hit[1]) == (second.id, second_step)

    store.forget_cache("k")
    assert store.lookup_cache("k") is None
    store.forget_cache("k")  # forgetting an absent key is not an error
    _produce(store, run_id, "train", cache_key="k")
    assert store.lookup_cache("k") is not None


# -- artifacts and lineage ------------------------------------------------------------------


def test_get_artifact_by_prefix_and_hash(store: MetadataStore) -> None:
    run_id = store.create_run(pipeline="p", source="p.py")
    shared_hash = "c" * 64
    _produce(store, run_id, "a", artifact=_artifact("aaaa000000000001", content_hash=shared_hash))
    _produce(store, run_id, "b", artifact=_artifact("aaaa000000000002", content_hash=shared_hash))
    _, other = _produce(store, run_id, "c", artifact=_artifact("bbbb000000000003"))

    assert store.get_artifact("aaaa000000000001").id == "aaaa000000000001"
    assert store.get_artifact("bbbb").id == other.id
    assert store.get_artifact(other.content_hash).id == other.id
    # Two records of the same bytes: asking by hash is not ambiguous.
    assert store.get_artifact(shared_hash).content_hash == shared_hash

    with pytest.raises(RunNotFoundError, match="More than one artifact starts with 'aaaa'"):
        store.get_artifact("aaaa")
    with pytest.raises(RunNotFoundError, match="'loopline show RUN' lists") as info:
        store.get_artifact("ffff")
    assert info.value.artifact_id == "ffff"  # type: ignore[attr-defined]


def test_add_lineage(store: MetadataStore, metadata_url: str) -> None:
    store.add_lineage("src", "dst", relation="derived", src_kind="run", dst_kind="model")
    assert _rows(
        metadata_url, "SELECT src_id, dst_id, relation, src_kind, dst_kind FROM lineage"
    ) == [("src", "dst", "derived", "run", "model")]


# -- metrics and tags -----------------------------------------------------------------------


_METRICS = st.lists(
    st.tuples(_NAMES, st.floats(allow_nan=False), st.integers(0, 2**31 - 1)), max_size=8
)


@DB_SETTINGS
@given(metrics=_METRICS)
def test_metrics_round_trip(store: MetadataStore, metrics: list[tuple[str, float, int]]) -> None:
    run_id = store.create_run(pipeline="p", source="p.py")
    store.log_metrics(run_id, metrics)
    assert [(m.step_name, m.key, m.value, m.step) for m in store.get_metrics(run_id)] == [
        (None, key, value, step) for key, value, step in metrics
    ]


def test_metric_values_are_coerced_the_same_on_every_backend(store: MetadataStore) -> None:
    run_id = store.create_run(pipeline="p", source="p.py")
    store.log_metrics(
        run_id, [("nan", math.nan, 0), ("inf", math.inf, 0), ("flag", True, 0), ("n", 3, 0)]
    )
    values = {m.key: m.value for m in store.get_metrics(run_id)}
    assert values == {"nan": None, "inf": math.inf, "flag": 1.0, "n": 3.0}
    assert all(type(v) is float for k, v in values.items() if k != "nan")


def test_metric_must_be_a_number(store: MetadataStore) -> None:
    run_id = store.create_run(pipeline="p", source="p.py")
    with pytest.raises(ValueError, match=r"Metric 'auc' must be a number\. Got 'high'"):
        store.log_metrics(run_id, [("auc", "high", 0)])  # type: ignore[list-item]
    assert store.get_metrics(run_id) == []


def test_tags_set_and_overwrite(store: MetadataStore) -> None:
    run_id = store.create_run(pipeline="p", source="p.py")
    assert store.get_tags("run", run_id) == {}
    store.set_tag("run", run_id, "stage", "staging")
    store.set_tag("run", run_id, "owner", "ana")
    store.set_tag("run", run_id, "stage", "production")
    store.set_tag("model", run_id, "stage", "archived")
    assert store.get_tags("run", run_id) == {"stage": "production", "owner": "ana"}
    assert store.get_tags("model", run_id) == {"stage": "archived"}


def test_invalid_status_is_rejected(store: MetadataStore) -> None:
    run_id = store.create_run(pipeline="p", source="p.py")
    with pytest.raises(ValueError, match="status must be one of"):
        store.finish_run(run_id, "done")
    step_id = store.start_step(run_id, "train", cache_key=None)
    with pytest.raises(ValueError, match="status must be one of"):
        store.finish_step(run_id, step_id, StepOutcome(status="ok", ended_at=time.time()))
    assert store.get_run(run_id).status == "running"
    assert store.get_step(step_id).status == "running"


# -- opening, errors, migrations ------------------------------------------------------------


def test_unreachable_postgres_is_a_short_store_error() -> None:
    url = f"postgresql://root:s3cret@127.0.0.1:{_closed_port()}/test"
    with pytest.raises(MetadataStoreError) as info:
        MetadataStore(url)
    message = str(info.value)
    assert "127.0.0.1" in message
    assert "LOOPLINE_METADATA_URL" in message
    assert "s3cret" not in message  # the password never reaches logs
    assert "\n" not in message
    assert len(message) < 400


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("bogus://host/db", "names a 'bogus' database"),
        ("mysql://root@localhost/db", "loopline keeps its metadata in SQLite or PostgreSQL"),
        ("not a url", "is not a database URL"),
        ("postgresql+nodriver://root@localhost/db", "No database driver"),
    ],
)
def test_invalid_url_is_a_store_error(url: str, expected: str) -> None:
    with pytest.raises(MetadataStoreError, match=expected) as info:
        MetadataStore(url)
    assert "sqlite:///" in str(info.value) or "postgresql+psycopg://" in str(info.value)


def test_sqlite_folder_is_created(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "deeper" / "metadata.db"
    with MetadataStore(f"sqlite:///{path}") as store:
        store.create_run(pipeline="p", source="p.py")
    assert path.is_file()


def test_sqlite_folder_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(MetadataStoreError, match="Cannot create the folder") as info:
        MetadataStore(f"sqlite:///{blocker / 'metadata.db'}")
    assert "LOOPLINE_METADATA_URL" in str(info.value)


def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(MetadataStoreError, match="file is not a database"):
        MetadataStore(f"sqlite:///{path}")


def test_migration_head_is_the_schema_revision() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    scripts = ScriptDirectory.from_config(config)
    assert scripts.get_heads() == [schema.HEAD_REVISION]


def test_reopening_does_not_migrate_again(
    metadata_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with MetadataStore(metadata_url) as store:
        run_id = store.create_run(pipeline="p", source="p.py", params={"s": {"k": 1}})
    assert _rows(metadata_url, "SELECT version_num FROM alembic_version") == [
        (schema.HEAD_REVISION,)
    ]

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a database at the head revision must not be migrated again")

    monkeypatch.setattr("alembic.command.upgrade", fail)
    with MetadataStore(metadata_url) as store:
        assert store.get_run(run_id).pipeline == "p"
        assert store.run_params(run_id) == {"s": {"k": 1}}


def test_database_from_a_newer_loopline(metadata_url: str) -> None:
    MetadataStore(metadata_url).close()
    engine = sa.create_engine(metadata_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(MetadataStoreError, match="schema revision '9999'") as info:
        MetadataStore(metadata_url)
    assert "newer loopline" in str(info.value)


def _type_signature(type_: Any) -> tuple[str, int | None]:
    """Backend-neutral type: PostgreSQL reflects Float as DOUBLE PRECISION, for instance."""
    generic = type_.as_generic()
    name = "Float" if isinstance(generic, sa.Float) else type(generic).__name__
    return name, getattr(generic, "length", None)


def test_migrations_create_the_declared_schema(store: MetadataStore, metadata_url: str) -> None:
    engine = sa.create_engine(metadata_url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            assert set(inspector.get_table_names()) - {"alembic_version"} == set(
                schema.METADATA.tables
            )
            for name, table in schema.METADATA.tables.items():
                reflected = {
                    c["name"]: (_type_signature(c["type"]), c["nullable"])
                    for c in inspector.get_columns(name)
                }
                declared = {c.name: (_type_signature(c.type), c.nullable) for c in table.columns}
                assert reflected == declared, name
                primary = inspector.get_pk_constraint(name)["constrained_columns"]
                assert primary == [c.name for c in table.primary_key], name
                uniques = {
                    u["name"]: u["column_names"] for u in inspector.get_unique_constraints(name)
                }
                assert uniques == {
                    u.name: [c.name for c in u.columns]
                    for u in table.constraints
                    if isinstance(u, sa.UniqueConstraint)
                }
                # PostgreSQL reflects a unique constraint as an index of the same name too.
                indexes = {
                    i["name"]: i["column_names"]
                    for i in inspector.get_indexes(name)
                    if i["name"] not in uniques
                }
                assert indexes == {i.name: [c.name for c in i.columns] for i in table.indexes}
            # Alembic's own comparison catches whatever the checks above do not look at.
            assert compare_metadata(MigrationContext.configure(conn), schema.METADATA) == []
    finally:
        engine.dispose()


# -- datasets ------------------------------------------------------------------------------


def _part(position: int, *, rows: int = 3, quarantined: int = 1) -> DatasetPartRecord:
    return DatasetPartRecord(
        position=position,
        partition_key=f"file:///data/part-{position}.csv",
        partition_fingerprint=f"{position:064x}",
        content_hash=f"{position + 100:064x}",
        size=1000 + position,
        rows=rows,
        rows_read=rows + quarantined,
        rows_quarantined=quarantined,
        quarantine_hash=f"{position + 200:064x}" if quarantined else None,
        profile_hash=None,
    )


def test_dataset_versions_are_numbered_per_name(store: MetadataStore) -> None:
    run_id = store.create_run(pipeline="p", source="p.py")
    common: dict[str, Any] = {
        "columns": [("id", "int64"), ("city", "string")],
        "source": "data/*.csv",
        "source_fingerprint": "f" * 64,
    }
    first = store.add_dataset_version(
        name="trips",
        content_hash="a" * 64,
        parts=[_part(0), _part(1, rows=5, quarantined=0)],
        contract="trips",
        contract_hash="c" * 64,
        cursor={"updated_at": "2013-01-01T00:00:00"},
        warnings=["2 rows quarantined"],
        run_id=run_id,
        **common,
    )
    second = store.add_dataset_version(name="trips", content_hash="b" * 64, parts=[], **common)
    other = store.add_dataset_version(name="planes", content_hash="d" * 64, parts=[], **common)
    failed = store.add_dataset_version(
        name="trips", content_hash="e" * 64, parts=[], status="failed", **common
    )

    assert (first.version, second.version, other.version, failed.version) == (1, 2, 1, 3)
    assert (first.status, failed.status) == ("ok", "failed")
    assert (first.rows, first.rows_read, first.rows_quarantined) == (8, 9, 1)
    assert first.columns == [("id", "int64"), ("city", "string")]
    assert first.cursor == {"updated_at": "2013-01-01T00:00:00"}
    assert first.warnings == ["2 rows quarantined"]
    assert first.ref == "trips@1"
    assert store.dataset_parts(first.id) == [_part(0), _part(1, rows=5, quarantined=0)]
    assert store.dataset_parts(second.id) == []
    assert store.get_dataset("trips") == second  # the newest that did not fail
    assert store.latest_dataset("trips") == second
    assert store.latest_dataset("nothing") is None
    assert store.get_dataset("trips@3") == failed
    assert store.get_dataset("trips@1") == first
    assert store.get_dataset("trips", version=1) == first
    assert store.get_dataset(first.id[:8]) == first
    assert [d.ref for d in store.list_datasets()] == ["trips@3", "planes@1", "trips@2", "trips@1"]
    assert [d.ref for d in store.list_datasets(name="trips", limit=1)] == ["trips@3"]
    assert store.datasets_of_run(run_id) == [first]


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nothing", "There is no dataset 'nothing'. 'loopline datasets' lists"),
        ("trips@9", "There is no version 9 of dataset 'trips'."),
        ("trips@x", "'trips@x' is not a dataset version: write NAME@VERSION with a number"),
    ],
)
def test_unknown_dataset_versions(store: MetadataStore, ref: str, message: str) -> None:
    store.add_dataset_version(
        name="trips",
        content_hash="a" * 64,
        columns=[],
        source="s",
        source_fingerprint="f",
        parts=[],
    )

    with pytest.raises(DatasetNotFoundError) as info:
        store.get_dataset(ref)
    assert message in str(info.value)
    assert isinstance(info.value, KeyError)


# -- several processes ----------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import pathlib, sys, time
    from loopline.store.metadata import AttemptRecord, MetadataStore, StepOutcome

    url, worker, count, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    folder = pathlib.Path(folder)
    (folder / f"ready-{worker}").touch()
    deadline = time.monotonic() + 60
    while not (folder / "go").exists():
        if time.monotonic() > deadline:
            sys.exit("never told to start")
        time.sleep(0.005)
    # Both processes open a fresh database at once, so they also race to migrate it.
    with MetadataStore(url) as store:
        run_id = store.create_run(pipeline=f"writer-{worker}", source="test")
        for i in range(count):
            step_id = store.start_step(run_id, f"step-{i}", cache_key=None)
            now = time.time()
            outcome = StepOutcome(
                status="succeeded",
                ended_at=now,
                attempts=[AttemptRecord(1, "succeeded", now, now)],
                metrics=[("rows", float(i), 0)],
            )
            store.finish_step(run_id, step_id, outcome)
        store.finish_run(run_id, "succeeded")
    """
)


def test_concurrent_writers_from_two_processes(metadata_url: str, tmp_path: Path) -> None:
    count = 200
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, metadata_url, str(n), str(count), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready-{n}").exists() for n in range(2)):
            assert time.monotonic() < deadline, "the writer processes did not start"
            assert all(w.poll() is None for w in workers), "a writer process exited early"
            time.sleep(0.01)
        (tmp_path / "go").touch()
        results = [w.communicate(timeout=120) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    for worker, (_, stderr) in zip(workers, results, strict=True):
        assert worker.returncode == 0, stderr

    with MetadataStore(metadata_url) as store:
        runs = store.list_runs()
        assert sorted(r.pipeline for r in runs) == ["writer-0", "writer-1"]
        for run in runs:
            assert run.status == "succeeded"
            steps = store.get_steps(run.id)
            assert len(steps) == count
            assert {s.status for s in steps} == {"succeeded"}
            assert sorted(m.value for m in store.get_metrics(run.id)) == [
                float(i) for i in range(count)
            ]
    assert _rows(metadata_url, "SELECT count(*) FROM attempts") == [(2 * count,)]


# -- feature views and materializations ------------------------------------------------------


def test_feature_view_versions_are_recorded_once_each(store: MetadataStore) -> None:
    first = store.register_feature_view(
        name="carrier_delays", version="a" * 64, kind="WindowView", definition={"ttl_us": None}
    )
    again = store.register_feature_view(
        name="carrier_delays", version="a" * 64, kind="WindowView", definition={"ttl_us": None}
    )
    store.register_feature_view(
        name="carrier_delays", version="b" * 64, kind="WindowView", definition={"ttl_us": 5}
    )
    assert again == first
    assert first.definition == {"ttl_us": None}
    versions = store.feature_view_versions("carrier_delays")
    assert {v.version for v in versions} == {"a" * 64, "b" * 64}
    assert store.feature_view_versions("other") == []


def test_materializations_are_listed_newest_first(store: MetadataStore) -> None:
    older = store.add_materialization(
        view="weather",
        version="c" * 64,
        online_url="sqlite:///x.db",
        start=None,
        end=10.0,
        rows=3,
        newest_event=9.5,
    )
    newer = store.add_materialization(
        view="weather",
        version="c" * 64,
        online_url="sqlite:///x.db",
        start=10.0,
        end=20.0,
        rows=0,
        newest_event=None,
    )
    assert store.materializations("weather") == [newer, older]
    assert store.materializations("planes") == []
    assert (older.end, older.newest_event) == (10.0, 9.5)
