"""Files: file inputs fingerprinted by their paths and contents.

Stat data (size, mtime, change time, inode, ETag) only decides whether a file is hashed
again in this process (docs/decisions/0001-file-fingerprint.md). A freshly written file
is always hashed; tests that need the memo to answer use the ``settled`` fixture, which
trusts every file's stat data as if it had been written long ago.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import polars as pl
import pyarrow.csv as pa_csv
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline import Files, step
from loopline.config import Settings
from loopline.data import files as files_module
from loopline.errors import LooplineError, SourceError
from loopline.pipeline.dag import Pipeline
from loopline.pipeline.runner import Runner
from loopline.types import Fingerprinted


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _after_the_next_tick(path: Path) -> None:
    """Return once a new write gets a later change time than ``path`` has.

    Kernels without fine-grained timestamps stamp every write in the same clock tick
    (a few ms) alike; waiting for the tick keeps the tests below about the memo key,
    not about that race (which ``test_a_rewrite_within_one_timestamp_tick_is_seen``
    covers).
    """
    probe = path.with_name(path.name + ".tick")
    before = path.stat().st_ctime_ns
    for _ in range(1_000_000):
        probe.write_bytes(b"")
        if probe.stat().st_ctime_ns > before:
            probe.unlink()
            return
    pytest.fail(f"The change time of files next to {path} never moved past {before}.")


def _calls_to_open(
    monkeypatch: pytest.MonkeyPatch, filesystem: type[Any] = LocalFileSystem
) -> list[str]:
    """Record every path ``filesystem`` (the local one by default) opens from now on."""
    opened: list[str] = []
    original = filesystem._open

    def counting(self: Any, path: str, *args: Any, **kwargs: Any) -> Any:
        opened.append(path)
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(filesystem, "_open", counting)
    return opened


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust stat data at once, as for files last written long before they are read."""
    monkeypatch.setattr(files_module, "_RACY_S", -math.inf)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A folder with two small CSV files."""
    folder = tmp_path / "data"
    _write(folder / "a.csv", "x\n1\n2\n")
    _write(folder / "b.csv", "x\n3\n")
    return folder


# -- the value object -----------------------------------------------------------------------


def test_files_needs_at_least_one_pattern() -> None:
    with pytest.raises(SourceError, match="at least one path, glob or URL"):
        Files()


def test_files_is_a_fingerprinted_value_that_pickles(data: Path) -> None:
    files = Files(data / "*.csv", str(data / "a.csv"))
    assert isinstance(files, Fingerprinted)
    assert files.patterns == (str(data / "*.csv"), str(data / "a.csv"))
    assert files.to_param() == [str(data / "*.csv"), str(data / "a.csv")]
    assert repr(files) == f"Files({str(data / '*.csv')!r}, {str(data / 'a.csv')!r})"
    assert pickle.loads(pickle.dumps(files)) == files
    assert hash(files) == hash(Files(str(data / "*.csv"), data / "a.csv"))
    assert files != Files(data / "*.csv")
    assert files != files.patterns


# -- which files -----------------------------------------------------------------------------


def test_paths_are_sorted_whatever_the_order_of_creation_or_of_the_patterns(
    tmp_path: Path,
) -> None:
    for name in ("c.csv", "a.csv", "b.csv"):
        _write(tmp_path / name, name)
    expected = [str(tmp_path / name) for name in ("a.csv", "b.csv", "c.csv")]
    assert Files(tmp_path / "*.csv").paths() == expected
    forwards = Files(*(tmp_path / n for n in ("a.csv", "b.csv", "c.csv")))
    backwards = Files(*(tmp_path / n for n in ("c.csv", "b.csv", "a.csv")))
    assert forwards.paths() == backwards.paths() == expected
    assert forwards.fingerprint() == backwards.fingerprint()
    assert forwards.fingerprint() == Files(tmp_path / "*.csv").fingerprint()


def test_a_file_matched_by_two_patterns_is_listed_once(data: Path) -> None:
    files = Files(data / "a.csv", data / "*.csv", data / "?.csv")
    assert files.paths() == [str(data / "a.csv"), str(data / "b.csv")]
    assert files.fingerprint() == Files(data / "*.csv").fingerprint()


def test_relative_patterns_are_found_from_the_working_directory(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(data.parent)
    assert Files("data/*.csv").paths() == [str(data / "a.csv"), str(data / "b.csv")]


def test_a_recursive_glob_reaches_into_subfolders(data: Path) -> None:
    _write(data / "2024" / "c.csv", "x\n4\n")
    assert Files(data / "**" / "*.csv").paths() == [
        str(data / "2024" / "c.csv"),
        str(data / "a.csv"),
        str(data / "b.csv"),
    ]


def test_a_glob_skips_the_folders_it_matches(data: Path) -> None:
    _write(data / "archive" / "old.csv", "x\n0\n")
    files = Files(data / "*")
    assert files.paths() == [str(data / "a.csv"), str(data / "b.csv")]
    assert files.fingerprint() == Files(data / "*.csv").fingerprint()


def test_a_folder_is_not_a_file_and_the_error_says_to_use_a_glob(data: Path) -> None:
    with pytest.raises(SourceError, match=r"is a folder, not a file") as caught:
        Files(data).paths()
    assert f"'{data}/*.csv'" in str(caught.value)
    assert caught.value.path == str(data)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "pattern",
    ["missing.csv", "*.parquet", "nowhere/*.csv", "only-folders/*"],
)
def test_a_pattern_that_matches_no_file_is_a_source_error_naming_it(
    data: Path, pattern: str
) -> None:
    (data / "only-folders" / "sub").mkdir(parents=True)
    missing = str(data / pattern)
    files = Files(data / "a.csv", missing)
    for action in (files.paths, files.fingerprint):
        with pytest.raises(SourceError) as caught:
            action()
        message = str(caught.value)
        assert message.startswith(f"No file matches {missing!r}.")
        assert "'-p STEP.PARAM=PATH'" in message
        assert caught.value.path == missing  # type: ignore[attr-defined]
    assert isinstance(caught.value, OSError)
    assert isinstance(caught.value, LooplineError)


def test_a_file_that_disappears_before_it_is_hashed_is_a_source_error(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = str(data / "gone.csv")
    monkeypatch.setattr(Files, "paths", lambda self: [gone])
    with pytest.raises(SourceError, match="disappeared while it was being read") as caught:
        Files(data / "*.csv").fingerprint()
    assert caught.value.path == gone  # type: ignore[attr-defined]


def test_the_paths_are_what_readers_need(data: Path) -> None:
    frames = [pl.read_csv(path) for path in Files(data / "*.csv").paths()]
    assert pl.concat(frames)["x"].to_list() == [1, 2, 3]


# -- fingerprint -----------------------------------------------------------------------------


def test_unchanged_files_keep_their_fingerprint(data: Path) -> None:
    files = Files(data / "*.csv")
    first = files.fingerprint()
    assert len(first) == 64
    assert int(first, 16) >= 0
    assert files.fingerprint() == first
    assert Files(str(data / "*.csv")).fingerprint() == first


@pytest.mark.usefixtures("settled")
def test_touching_a_file_keeps_its_fingerprint(data: Path) -> None:
    files = Files(data / "*.csv")
    before = files.fingerprint()
    stat = (data / "a.csv").stat()
    os.utime(data / "a.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert files.fingerprint() == before


def test_a_content_change_of_the_same_size_changes_the_fingerprint(data: Path) -> None:
    files = Files(data / "*.csv")
    before = files.fingerprint()
    _write(data / "a.csv", "x\n1\n9\n")
    changed = files.fingerprint()
    assert changed != before
    _write(data / "a.csv", "x\n1\n2\n")
    assert files.fingerprint() == before


@pytest.mark.usefixtures("settled")
@pytest.mark.parametrize("how", ["rewritten in place", "replaced by a rename"])
def test_a_same_size_rewrite_with_the_old_mtime_is_seen_by_the_memo(
    data: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The staleness case: size and mtime restored (``cp -p``, ``rsync -t``), content not."""
    path = data / "a.csv"
    files = Files(data / "*.csv")
    opened = _calls_to_open(monkeypatch)
    before = files.fingerprint()
    assert files.fingerprint() == before
    assert opened.count(str(path)) == 1  # the memo answered the second time
    old = path.stat()

    _after_the_next_tick(path)
    if how == "rewritten in place":
        path.write_text("x\n1\n9\n")
    else:
        _write(data / "incoming.tmp", "x\n1\n9\n")
        os.replace(data / "incoming.tmp", path)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    new = path.stat()
    assert (new.st_size, new.st_mtime_ns) == (old.st_size, old.st_mtime_ns)

    assert files.fingerprint() != before
    assert opened.count(str(path)) == 2


def test_a_rewrite_within_one_timestamp_tick_is_seen(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a filesystem with one-second timestamps (or a kernel with a coarse clock) two
    writes in the same second look alike; such fresh files are hashed every time."""
    stat_info = LocalFileSystem.info

    def whole_seconds(self: LocalFileSystem, path: str, **kwargs: Any) -> dict[str, Any]:
        out = dict(stat_info(self, path, **kwargs))
        out["mtime"] = out["created"] = math.floor(out["mtime"])
        return out

    monkeypatch.setattr(LocalFileSystem, "info", whole_seconds)
    files = Files(data / "a.csv")
    before = files.fingerprint()
    (data / "a.csv").write_text("x\n1\n9\n")
    assert files.fingerprint() != before


@pytest.mark.usefixtures("settled")
def test_a_settled_file_is_read_once_per_process_and_a_fresh_one_every_time(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = _calls_to_open(monkeypatch)
    files = Files(data / "a.csv")
    for _ in range(3):
        files.fingerprint()
    assert opened == [str(data / "a.csv")]

    monkeypatch.setattr(files_module, "_RACY_S", 3600.0)
    fresh = Files(_write(data / "c.csv", "x\n5\n"))
    for _ in range(3):
        fresh.fingerprint()
    assert opened.count(str(data / "c.csv")) == 3


def test_adding_or_removing_a_matched_file_changes_the_fingerprint(data: Path) -> None:
    files = Files(data / "*.csv")
    before = files.fingerprint()
    _write(data / "c.csv", "")
    with_empty_file = files.fingerprint()
    assert with_empty_file != before
    (data / "c.csv").unlink()
    assert files.fingerprint() == before
    (data / "b.csv").unlink()
    assert files.fingerprint() not in (before, with_empty_file)


def test_renaming_a_file_changes_the_fingerprint(data: Path) -> None:
    files = Files(data / "*.csv")
    before = files.fingerprint()
    (data / "b.csv").rename(data / "c.csv")
    assert files.fingerprint() != before
    (data / "c.csv").rename(data / "b.csv")
    assert files.fingerprint() == before


def test_swapping_the_contents_of_two_files_changes_the_fingerprint(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", "x\n1\n")
    _write(tmp_path / "b.csv", "x\n2\n")
    files = Files(tmp_path / "*.csv")
    before = files.fingerprint()
    _write(tmp_path / "a.csv", "x\n2\n")
    _write(tmp_path / "b.csv", "x\n1\n")
    assert files.fingerprint() != before


_CONTENTS = st.lists(st.binary(max_size=48), min_size=1, max_size=3)


def _write_parts(folder: Path, parts: list[bytes]) -> None:
    for old in folder.glob("part-*.bin"):
        old.unlink()
    for number, content in enumerate(parts):
        (folder / f"part-{number}.bin").write_bytes(content)


@settings(max_examples=60, deadline=None)
@given(first=_CONTENTS, second=_CONTENTS)
def test_the_fingerprint_is_equal_exactly_when_the_contents_are(
    tmp_path_factory: pytest.TempPathFactory, first: list[bytes], second: list[bytes]
) -> None:
    folder = tmp_path_factory.mktemp("parts")
    files = Files(folder / "part-*.bin")
    _write_parts(folder, first)
    one = files.fingerprint()
    _write_parts(folder, second)
    two = files.fingerprint()
    assert (one == two) == (first == second)
    _write_parts(folder, first)
    assert files.fingerprint() == one


# -- fsspec URLs -----------------------------------------------------------------------------


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A folder of its own on fsspec's process-wide in-memory filesystem."""
    root = f"/loopline-test-{uuid.uuid4().hex}"
    memory = fsspec.filesystem("memory")
    memory.pipe({f"{root}/a.csv": b"x\n1\n2\n", f"{root}/b.csv": b"x\n3\n"})
    yield root
    memory.rm(root, recursive=True)


def test_memory_urls_are_listed_fingerprinted_and_readable(memory_root: str) -> None:
    files = Files(f"memory://{memory_root}/*.csv")
    paths = files.paths()
    assert paths == [f"memory://{memory_root}/a.csv", f"memory://{memory_root}/b.csv"]
    before = files.fingerprint()
    assert files.fingerprint() == before

    fsspec.filesystem("memory").pipe(f"{memory_root}/a.csv", b"x\n1\n9\n")
    assert files.fingerprint() != before

    rows = []
    for path in paths:
        with fsspec.open(path, "rb") as handle:
            rows += pa_csv.read_csv(handle).column("x").to_pylist()
    assert rows == [1, 9, 3]


def test_a_missing_memory_url_is_a_source_error_naming_it(memory_root: str) -> None:
    url = f"memory://{memory_root}/missing.csv"
    with pytest.raises(SourceError, match=f"No file matches '{url}'"):
        Files(url).fingerprint()


class _ObjectStore(MemoryFileSystem):
    """An in-memory object store: ETags and ``LastModified`` datetimes, as s3fs gives."""

    protocol = "loopline-objects"
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return "/" + str(path).removeprefix(f"{cls.protocol}://").strip("/")

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        out = dict(super().info(path, **kwargs))
        if out["type"] == "file":
            out["LastModified"] = out.pop("created")
            out["ETag"] = hashlib.md5(self.cat_file(path)).hexdigest()
        return out


@pytest.fixture
def object_store() -> Iterator[_ObjectStore]:
    fsspec.register_implementation(_ObjectStore.protocol, _ObjectStore, clobber=True)
    store = _ObjectStore()
    yield store
    _ObjectStore.store.clear()


def test_object_store_files_are_memoized_by_etag(
    object_store: _ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    object_store.pipe("/bucket/a.csv", b"x\n1\n")
    read = _calls_to_open(monkeypatch, _ObjectStore)
    files = Files("loopline-objects://bucket/*.csv")
    assert files.paths() == ["loopline-objects:///bucket/a.csv"]
    before = files.fingerprint()
    assert files.fingerprint() == before
    assert len(read) == 1  # an ETag vouches for the content at once

    object_store.pipe("/bucket/a.csv", b"x\n2\n")
    assert files.fingerprint() != before


# -- in a pipeline ---------------------------------------------------------------------------


@pytest.mark.usefixtures("settled")
def test_fresh_data_is_never_answered_from_the_cache(tmp_path: Path) -> None:
    """The step re-runs after its CSV is rewritten with the same size and the old mtime."""
    csv = _write(tmp_path / "events.csv", "x\n1\n2\n")
    reads: list[list[int]] = []

    @step
    def events(source: Files = Files(csv)) -> list[int]:
        values = [int(v) for v in pl.read_csv(source.paths()[0])["x"]]
        reads.append(values)
        return values

    pipeline = Pipeline.from_steps([events])
    with Runner(Settings.load(start=tmp_path, search=False, env={})) as runner:
        first = runner.run(pipeline)
        assert first.ok, first.error
        assert runner.output(first.run_id, "events") == [1, 2]
        second = runner.run(pipeline)
        assert second.steps["events"].status == "cached"
        assert reads == [[1, 2]]

        old = csv.stat()
        _after_the_next_tick(csv)
        csv.write_text("x\n7\n8\n")
        os.utime(csv, ns=(old.st_atime_ns, old.st_mtime_ns))
        third = runner.run(pipeline)
        assert third.steps["events"].status == "succeeded"
        assert runner.output(third.run_id, "events") == [7, 8]
        assert runner.run(pipeline).steps["events"].status == "cached"
    assert reads == [[1, 2], [7, 8]]
