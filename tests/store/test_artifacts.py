"""The artifact store, one suite run over every filesystem (a local folder, fsspec memory).

Value conventions pinned down here, identical on every filesystem:

- The content hash is the sha256 of the stored bytes, so equal values get equal hashes
  in any store, and dict key order does not matter (keys are written sorted).
- JSON tuples come back as lists; NaN and infinities are kept, written as ``NaN`` and
  ``Infinity`` as Python's json module does (strict JSON has no spelling for them).
- A value is written once: a second ``put`` of the same content leaves the stored
  object alone, and no temporary file outlives a ``put``, whether it succeeds or fails.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import fsspec
import lightgbm as lgb
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from loopline.errors import (
    ArtifactCorruptedError,
    ArtifactError,
    ArtifactNotFoundError,
    LooplineError,
    UnsupportedArtifactError,
)
from loopline.store import artifacts as artifacts_module
from loopline.store.artifacts import (
    ArtifactStore,
    PendingArtifact,
    StoredArtifact,
    register_codec,
)

IMPLEMENTATIONS = ["local", "memory"]

MISSING_HASH = "0" * 64


@pytest.fixture
def system_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder ``tempfile`` uses for this test, so leftovers outside the store show up."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def memory_url() -> Iterator[str]:
    """A fresh root in fsspec's process-wide memory filesystem, removed afterwards."""
    url = f"memory://loopline-test-{uuid.uuid4().hex}"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture(params=IMPLEMENTATIONS)
def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, system_tmp: Path, memory_url: str
) -> str:
    if request.param == "local":
        return str(tmp_path / "artifacts")
    return memory_url


@pytest.fixture
def store(store_url: str) -> ArtifactStore:
    return ArtifactStore(store_url)


def temp_files(store: ArtifactStore) -> list[str]:
    """Every temporary file a put could have left: in the store's tmp/ and the system's."""
    folders = [Path(tempfile.gettempdir())]
    if store.local:
        folders.append(Path(store.root, "tmp"))
    return sorted(str(p) for folder in folders for p in folder.rglob("*") if p.is_file())


def stored_objects(store: ArtifactStore) -> list[str]:
    objects = f"{store.root}/objects"
    if not store.fs.exists(objects):
        return []
    return sorted(store.fs.find(objects))


def sample_table() -> pa.Table:
    return pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "name": pa.array(["a", None, "ç"], pa.string()),
            "score": pa.array([0.5, float("inf"), None], pa.float64()),
        }
    )


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    rng = np.random.default_rng(7)
    features = rng.normal(size=(60, 3))
    target = features[:, 0] * 2.0 + rng.normal(scale=0.1, size=60)
    dataset = lgb.Dataset(features, label=target, params={"verbose": -1})
    params = {
        "objective": "regression",
        "verbose": -1,
        "min_data_in_leaf": 5,
        "num_threads": 1,
        "seed": 7,
    }
    return lgb.train(params, dataset, num_boost_round=5)


# -- round trips --------------------------------------------------------------------------


def test_arrow_table_round_trips(store: ArtifactStore) -> None:
    table = sample_table()

    stored = store.put(table)

    assert stored.kind == "arrow"
    restored = store.get(stored.content_hash, stored.kind)
    assert isinstance(restored, pa.Table)
    assert restored.schema.equals(table.schema)
    assert restored.equals(table)


def test_polars_frame_round_trips(store: ArtifactStore) -> None:
    frame = pl.DataFrame({"id": [1, 2, 3], "name": ["x", None, "z"], "ok": [True, False, None]})

    stored = store.put(frame)

    assert stored.kind == "polars"
    restored = store.get(stored.content_hash, stored.kind)
    assert isinstance(restored, pl.DataFrame)
    assert_frame_equal(restored, frame)


@pytest.mark.parametrize(
    "value",
    [
        {"auc": 0.75, "n": 3, "ok": True, "none": None},
        {"nested": {"list": [1, 2.5, "three", [None, {"deep": -1e-300}]], "empty": {}}},
        [0.1, 1e308, -0.0, 2**63 - 1, -(2**63)],
        "just a string with unicode: ✓",
        42,
        3.141592653589793,
        True,
        None,
        [],
        {},
    ],
    ids=[
        "flat-dict",
        "nested",
        "floats-and-ints",
        "str",
        "int",
        "float",
        "bool",
        "null",
        "[]",
        "{}",
    ],
)
def test_json_values_round_trip(store: ArtifactStore, value: Any) -> None:
    stored = store.put(value)

    assert stored.kind == "json"
    assert store.get(stored.content_hash, "json") == value


def test_json_tuples_come_back_as_lists(store: ArtifactStore) -> None:
    stored = store.put({"pair": (1, "two")})

    assert store.get(stored.content_hash, "json") == {"pair": [1, "two"]}


def test_json_keeps_nan_and_infinities(store: ArtifactStore) -> None:
    value = {"nan": float("nan"), "inf": [float("inf"), -float("inf")], "ok": 1.5}
    stored = store.put(value)

    back = store.get(stored.content_hash, "json")
    assert math.isnan(back["nan"])
    assert back["inf"] == [float("inf"), -float("inf")]
    assert back["ok"] == 1.5
    assert store.put({"ok": 1.5, "inf": [float("inf"), -float("inf")], "nan": float("nan")}) == (
        stored
    )


def test_json_keeps_non_finite_numpy_values(store: ArtifactStore) -> None:
    stored = store.put({"scores": np.array([0.5, np.nan]), "top": np.float32("inf")})

    back = store.get(stored.content_hash, "json")
    assert back["scores"][0] == 0.5
    assert math.isnan(back["scores"][1])
    assert back["top"] == float("inf")


def test_numpy_values_inside_json_are_stored_as_plain_json(store: ArtifactStore) -> None:
    stored = store.put({"counts": np.array([1, 2, 3]), "mean": np.float32(0.5)})

    assert store.get(stored.content_hash, "json") == {"counts": [1, 2, 3], "mean": 0.5}


@pytest.mark.parametrize(
    "value", [b"\x00\x01binary\xff", bytearray(b"mutable"), memoryview(b"view"), b""]
)
def test_bytes_round_trip_as_bytes(store: ArtifactStore, value: bytes | bytearray) -> None:
    stored = store.put(value)

    assert stored.kind == "bytes"
    assert stored.size == len(bytes(value))
    restored = store.get(stored.content_hash, "bytes")
    assert type(restored) is bytes
    assert restored == bytes(value)


def test_put_bytes_stores_the_exact_bytes_under_their_sha256(store: ArtifactStore) -> None:
    data = b"already encoded"

    stored = store.put_bytes(data, kind="json-lines")

    assert stored == StoredArtifact(
        content_hash=hashlib.sha256(data).hexdigest(),
        uri=store.uri(hashlib.sha256(data).hexdigest()),
        size=len(data),
        kind="json-lines",
    )
    assert store.read_bytes(stored.content_hash) == data


def test_lightgbm_booster_round_trips(store: ArtifactStore, booster: lgb.Booster) -> None:
    probe = np.array([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]])

    stored = store.put(booster)

    assert stored.kind == "lightgbm"
    restored = store.get(stored.content_hash, "lightgbm")
    assert isinstance(restored, lgb.Booster)
    assert restored.num_trees() == booster.num_trees()
    np.testing.assert_array_equal(restored.predict(probe), booster.predict(probe))
    assert store.put(restored).content_hash == stored.content_hash


def test_uri_locates_the_stored_bytes(store: ArtifactStore) -> None:
    stored = store.put({"where": "here"})

    with fsspec.open(stored.uri, "rb") as handle:
        data = handle.read()

    assert hashlib.sha256(data).hexdigest() == stored.content_hash
    assert stored.size == len(data)
    assert stored.uri.endswith(f"/objects/{stored.content_hash[:2]}/{stored.content_hash}")


def test_memory_uri_keeps_its_protocol(memory_url: str, system_tmp: Path) -> None:
    store = ArtifactStore(memory_url)

    stored = store.put([1, 2, 3])

    assert not store.local
    assert stored.uri.startswith("memory://")
    assert ArtifactStore(memory_url).get(stored.content_hash, "json") == [1, 2, 3]


def test_local_store_accepts_a_path_and_keeps_files_under_it(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")

    stored = store.put({"a": 1})

    assert store.local
    assert Path(stored.uri).is_file()
    assert Path(stored.uri).is_relative_to(tmp_path / "artifacts" / "objects")


# -- content addressing -------------------------------------------------------------------


def test_identical_content_gets_the_same_hash_and_uri(store: ArtifactStore) -> None:
    first = store.put(sample_table())
    second = store.put(sample_table())

    assert second == first
    assert stored_objects(store) == [store.path(first.content_hash)]


def test_different_content_gets_different_hashes(store: ArtifactStore) -> None:
    assert store.put({"a": 1}).content_hash != store.put({"a": 2}).content_hash


def test_dict_key_order_does_not_change_the_hash(store: ArtifactStore) -> None:
    forwards = store.put({"a": 1, "b": {"x": 1, "y": 2}})
    backwards = store.put({"b": {"y": 2, "x": 1}, "a": 1})

    assert backwards.content_hash == forwards.content_hash


def test_second_put_of_the_same_content_does_not_rewrite_it(
    tmp_path: Path, system_tmp: Path
) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    stored = store.put(sample_table())
    path = Path(store.path(stored.content_hash))
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = path.stat()

    again = store.put(sample_table())

    after = path.stat()
    assert again == stored
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, 1_000_000_000)
    assert temp_files(store) == []


def test_hash_is_the_same_in_two_store_instances(tmp_path: Path, memory_url: str) -> None:
    stores = [
        ArtifactStore(tmp_path / "one"),
        ArtifactStore(tmp_path / "two"),
        ArtifactStore(memory_url),
    ]
    values = [sample_table(), pl.DataFrame({"a": [1, 2]}), {"k": [1.5, None]}, b"raw"]

    for value in values:
        hashes = {store.put(value).content_hash for store in stores}
        assert len(hashes) == 1, f"{type(value).__name__} hashed differently: {hashes}"


def test_exists_reports_stored_objects(store: ArtifactStore) -> None:
    stored = store.put("present")

    assert store.exists(stored.content_hash)
    assert not store.exists(MISSING_HASH)


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda data: data[:-1], id="truncated"),
        pytest.param(lambda data: bytes([data[0] ^ 0xFF]) + data[1:], id="flipped-byte"),
        pytest.param(lambda data: b"", id="emptied"),
    ],
)
def test_corrupted_object_raises_corrupted_error(store: ArtifactStore, corrupt: Any) -> None:
    stored = store.put({"metric": 0.9, "rows": list(range(20))})
    path = store.path(stored.content_hash)
    store.fs.pipe_file(path, corrupt(store.fs.cat_file(path)))

    with pytest.raises(ArtifactCorruptedError) as info:
        store.get(stored.content_hash, stored.kind)

    error = info.value
    assert isinstance(error, ArtifactError)
    assert error.content_hash == stored.content_hash  # type: ignore[attr-defined]
    assert error.path == path  # type: ignore[attr-defined]
    message = str(error)
    assert stored.content_hash[:12] in message
    assert path in message
    assert "corrupted" in message
    assert "Delete the file and run the pipeline again" in message


def test_verify_detects_corruption_and_accepts_good_objects(store: ArtifactStore) -> None:
    good = store.put(b"good")
    bad = store.put(b"bad")
    store.fs.pipe_file(store.path(bad.content_hash), b"tampered")

    store.verify(good.content_hash)
    with pytest.raises(ArtifactCorruptedError, match=bad.content_hash[:12]):
        store.verify(bad.content_hash)


def test_missing_object_raises_not_found(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFoundError) as info:
        store.get(MISSING_HASH, "json")

    error = info.value
    assert isinstance(error, KeyError)
    assert error.content_hash == MISSING_HASH  # type: ignore[attr-defined]
    message = str(error)
    assert f"Artifact {MISSING_HASH[:12]} is not in the artifact store {store.url}" in message
    assert "run the pipeline again" in message


def test_verify_of_a_missing_object_raises_not_found(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFoundError, match=MISSING_HASH[:12]):
        store.verify(MISSING_HASH)


def test_get_with_an_unknown_kind_names_the_kind(store: ArtifactStore) -> None:
    stored = store.put({"a": 1})

    with pytest.raises(ArtifactError, match="No codec is registered for artifact kind 'pickle'"):
        store.get(stored.content_hash, "pickle")


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (object(), "builtins.object"),
        ({1, 2}, "builtins.set"),
        (np.int64(3), "numpy.int64"),
        (threading.Lock(), "_thread.lock"),
    ],
    ids=["object", "set", "numpy-scalar", "lock"],
)
def test_value_without_a_codec_raises_unsupported(
    store: ArtifactStore, value: Any, type_name: str
) -> None:
    with pytest.raises(UnsupportedArtifactError) as info:
        store.put(value)

    error = info.value
    assert isinstance(error, TypeError)
    assert isinstance(error, LooplineError)
    message = str(error)
    assert f"No codec can store a value of type {type_name}" in message
    # Codecs registered by other modules (loopline.train's model bundles) may be listed too.
    assert re.search(r"\(arrow, bytes, json, lightgbm, (model_bundle, )?polars\)", message)
    assert stored_objects(store) == []
    assert temp_files(store) == []


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"fine": 1, "bad": object()}, "Type is not JSON serializable: object"),
        ({1: "int key"}, "Dict key must be str"),
        ([2**64, object()], "Type is not JSON serializable: object"),
    ],
    ids=["nested-object", "int-key", "huge-int-and-object"],
)
def test_json_value_that_cannot_be_encoded_raises_unsupported(
    store: ArtifactStore, value: Any, reason: str
) -> None:
    with pytest.raises(UnsupportedArtifactError) as info:
        store.put(value)

    message = str(info.value)
    assert reason in message
    assert "Return JSON-able values" in message
    assert stored_objects(store) == []
    assert temp_files(store) == []


class Exploding:
    """A value whose codec writes part of its bytes and then fails."""


class _ExplodingCodec:
    kind = "exploding"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, Exploding)

    def write(self, value: Any, handle: IO[bytes]) -> None:
        handle.write(b"x" * (3 << 20))  # past the 1 MiB buffer: bytes reach the temp file
        raise RuntimeError("serializer broke halfway")

    def read(self, data: bytes) -> Any:
        raise AssertionError("never stored")


def test_failed_write_leaves_no_temp_file_and_no_object(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(artifacts_module, "_CODECS", list(artifacts_module._CODECS))
    register_codec(_ExplodingCodec())

    with pytest.raises(RuntimeError, match="serializer broke halfway"):
        store.put(Exploding())

    assert temp_files(store) == []
    assert stored_objects(store) == []
    assert store.put({"after": "failure"}).kind == "json"


def test_registered_codec_is_tried_before_the_built_in_ones(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    class UpperCodec:
        kind = "upper"

        def accepts(self, value: Any) -> bool:
            return isinstance(value, str)

        def write(self, value: Any, handle: IO[bytes]) -> None:
            handle.write(value.upper().encode())

        def read(self, data: bytes) -> Any:
            return data.decode()

    monkeypatch.setattr(artifacts_module, "_CODECS", list(artifacts_module._CODECS))
    register_codec(UpperCodec())

    stored = store.put("shout")

    assert stored.kind == "upper"
    assert store.get(stored.content_hash, "upper") == "SHOUT"


# -- temp files, discard, concurrency ------------------------------------------------------


def test_successful_puts_leave_no_temp_files(store: ArtifactStore) -> None:
    for value in [sample_table(), {"a": [1, 2]}, b"bytes", pl.DataFrame({"x": [1]})]:
        store.put(value)

    assert temp_files(store) == []
    assert len(stored_objects(store)) == 4


def test_discard_removes_the_object_and_is_idempotent(store: ArtifactStore) -> None:
    kept = store.put("kept")
    dropped = store.put("dropped")

    store.discard(dropped.content_hash)
    store.discard(dropped.content_hash)
    store.discard(MISSING_HASH)

    assert not store.exists(dropped.content_hash)
    assert store.exists(kept.content_hash)
    with pytest.raises(ArtifactNotFoundError):
        store.get(dropped.content_hash, "json")


def test_discard_then_put_repairs_a_corrupted_object(store: ArtifactStore) -> None:
    value = {"model": "v1", "weights": [0.25, 0.5]}
    stored = store.put(value)
    store.fs.pipe_file(store.path(stored.content_hash), b"garbage")

    assert store.put(value) == stored  # the object exists, so put does not rewrite it
    with pytest.raises(ArtifactCorruptedError):
        store.get(stored.content_hash, "json")

    store.discard(stored.content_hash)
    assert store.put(value) == stored
    assert store.get(stored.content_hash, "json") == value


def test_concurrent_writers_of_the_same_content_do_not_corrupt_it(store_url: str) -> None:
    writers = 8
    payload = np.random.default_rng(3).bytes(3 << 20)
    start = threading.Barrier(writers)

    def write() -> StoredArtifact:
        store = ArtifactStore(store_url)  # one instance each, as separate processes would
        start.wait()
        return store.put(payload)

    with ThreadPoolExecutor(max_workers=writers) as pool:
        results = list(pool.map(lambda _: write(), range(writers)))

    store = ArtifactStore(store_url)
    assert {r.content_hash for r in results} == {hashlib.sha256(payload).hexdigest()}
    assert store.get(results[0].content_hash, "bytes") == payload
    assert stored_objects(store) == [store.path(results[0].content_hash)]
    assert temp_files(store) == []


# -- properties ---------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(value=JSON_VALUES)
def test_any_json_value_round_trips_with_a_stable_hash(
    tmp_path: Path, memory_url: str, value: Any
) -> None:
    # Shared stores are safe across examples: equal values share one object by design.
    local = ArtifactStore(tmp_path / "property")
    memory = ArtifactStore(memory_url)

    first = local.put(value)
    second = local.put(value)

    assert first == second
    assert memory.put(value).content_hash == first.content_hash
    assert local.get(first.content_hash, "json") == value
    data = local.read_bytes(first.content_hash)
    assert hashlib.sha256(data).hexdigest() == first.content_hash
    assert first.size == len(data)


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, {"big": [2**70, -(2**90)], "x": 1.5}])
def test_json_keeps_integers_beyond_64_bits(store: ArtifactStore, value: Any) -> None:
    stored = store.put(value)

    assert store.get(stored.content_hash, "json") == value


@pytest.mark.parametrize("value", [{1: "a"}, {"nan": float("nan"), "inner": {2: "b"}}])
def test_json_refuses_keys_that_are_not_strings(store: ArtifactStore, value: Any) -> None:
    with pytest.raises(UnsupportedArtifactError, match="Dict key must be str"):
        store.put(value)


def test_writer_streams_bytes_into_the_store(store: ArtifactStore) -> None:
    with store.writer("bytes") as pending:
        for piece in (b"abc", b"def" * 1000):
            pending.handle.write(piece)

    data = b"abc" + b"def" * 1000
    assert pending.stored.content_hash == hashlib.sha256(data).hexdigest()
    assert pending.stored.size == len(data)
    assert store.read_bytes(pending.stored.content_hash) == data
    with store.open(pending.stored.content_hash) as handle:
        assert handle.read() == data
    assert temp_files(store) == []


def test_writer_that_fails_publishes_nothing(store: ArtifactStore) -> None:
    started: list[PendingArtifact] = []

    def write_half() -> None:
        with store.writer("bytes") as pending:
            started.append(pending)
            pending.handle.write(b"half")
            raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        write_half()
    [pending] = started

    with pytest.raises(ArtifactError, match="not stored until its writer block finishes"):
        _ = pending.stored
    assert stored_objects(store) == []
    assert temp_files(store) == []


def test_open_refuses_corrupted_bytes(store: ArtifactStore) -> None:
    stored = store.put_bytes(b"payload")
    with store.fs.open(store.path(stored.content_hash), "wb") as handle:
        handle.write(b"tampered")

    with pytest.raises(ArtifactCorruptedError), store.open(stored.content_hash):
        pass
