"""The artifact store: content-addressed (sha256), written once and atomically, verified on read.

Values are encoded by a codec chosen from their type: Arrow tables and Polars frames as
Parquet, JSON-able values as JSON, bytes as they are, LightGBM boosters in LightGBM's
text format. Later layers add codecs with ``register_codec``.

Examples
--------
>>> import tempfile
>>> store = ArtifactStore(tempfile.mkdtemp())
>>> stored = store.put({"auc": 0.75})
>>> stored.kind, len(stored.content_hash)
('json', 64)
>>> store.get(stored.content_hash, stored.kind)
{'auc': 0.75}
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import fsspec
import orjson

from loopline.errors import (
    ArtifactCorruptedError,
    ArtifactError,
    ArtifactNotFoundError,
    UnsupportedArtifactError,
)

__all__ = ["ArtifactStore", "Codec", "PendingArtifact", "StoredArtifact", "register_codec"]

_CHUNK = 1 << 20


class Codec(Protocol):
    """Encodes one family of values to bytes and back."""

    kind: str

    def accepts(self, value: Any) -> bool: ...

    def write(self, value: Any, handle: IO[bytes]) -> None: ...

    def read(self, data: bytes) -> Any: ...


@dataclass(frozen=True)
class StoredArtifact:
    """Where a value's bytes live and how to decode them."""

    content_hash: str
    uri: str
    size: int
    kind: str


class PendingArtifact:
    """An artifact being written by ``ArtifactStore.writer``."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self._stored: StoredArtifact | None = None

    @property
    def stored(self) -> StoredArtifact:
        """Where the bytes went; set when the ``writer`` block has finished."""
        if self._stored is None:
            raise ArtifactError("The artifact is not stored until its writer block finishes.")
        return self._stored

    @stored.setter
    def stored(self, value: StoredArtifact) -> None:
        self._stored = value


_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY


class _JSONCodec:
    kind = "json"

    def accepts(self, value: Any) -> bool:
        return value is None or isinstance(value, (bool, int, float, str, list, tuple, dict))

    def write(self, value: Any, handle: IO[bytes]) -> None:
        try:
            if not _has_non_finite(value):
                try:
                    handle.write(orjson.dumps(value, option=_ORJSON_OPTIONS))
                    return
                except TypeError as exc:
                    if "64-bit" not in str(exc):
                        raise
            # orjson writes NaN and infinities as null and refuses integers beyond 64
            # bits; Python's encoder keeps both (NaN and Infinity in its spelling).
            text = json.dumps(
                value, sort_keys=True, separators=(",", ":"), default=_plain, allow_nan=True
            )
        except TypeError as exc:
            raise UnsupportedArtifactError(
                f"The value cannot be stored as JSON: {exc}. Return JSON-able values "
                f"(str, int, float, bool, None, lists and str-keyed dicts of them).",
            ) from exc
        handle.write(text.encode())

    def read(self, data: bytes) -> Any:
        # Python's decoder, not orjson's: orjson reads integers beyond 64 bits as floats.
        return json.loads(data)


def _has_non_finite(value: Any) -> bool:
    """Whether ``value`` holds NaN or an infinity; TypeError for a key that is not a str."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("Dict key must be str")  # as orjson says; json would convert
        return _any_non_finite(value.values())
    if isinstance(value, (list, tuple)):
        return _any_non_finite(value)
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy, as orjson takes it
        return _has_non_finite(value.tolist())
    return False


def _any_non_finite(values: Iterable[Any]) -> bool:
    # Every item is visited (no short cut), so a bad key anywhere is found.
    return any([_has_non_finite(v) for v in values])  # noqa: C419


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as Python values, for the stdlib encoder."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


class _BytesCodec:
    kind = "bytes"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (bytes, bytearray, memoryview))

    def write(self, value: Any, handle: IO[bytes]) -> None:
        handle.write(bytes(value))

    def read(self, data: bytes) -> Any:
        return data


class _ArrowCodec:
    kind = "arrow"

    def accepts(self, value: Any) -> bool:
        return type(value).__module__.startswith("pyarrow") and type(value).__name__ == "Table"

    def write(self, value: Any, handle: IO[bytes]) -> None:
        import pyarrow.parquet as pq

        pq.write_table(value, handle, compression="zstd")

    def read(self, data: bytes) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        return pq.read_table(pa.BufferReader(data))


class _PolarsCodec(_ArrowCodec):
    kind = "polars"

    def accepts(self, value: Any) -> bool:
        return type(value).__module__.startswith("polars") and type(value).__name__ == "DataFrame"

    def write(self, value: Any, handle: IO[bytes]) -> None:
        super().write(value.to_arrow(), handle)

    def read(self, data: bytes) -> Any:
        import polars as pl

        # Parquet reads in batches of row groups, and Polars keeps them as chunks (over a
        # hundred at 20M rows); hashing and partitioning a frame of that many chunks is
        # several times slower than copying it once into one chunk per column.
        return pl.from_arrow(super().read(data)).rechunk()


class _LightGBMCodec:
    kind = "lightgbm"

    def accepts(self, value: Any) -> bool:
        return type(value).__module__.startswith("lightgbm") and type(value).__name__ == "Booster"

    def write(self, value: Any, handle: IO[bytes]) -> None:
        handle.write(value.model_to_string().encode())

    def read(self, data: bytes) -> Any:
        import lightgbm

        return lightgbm.Booster(model_str=data.decode())


_CODECS: list[Codec] = [
    _ArrowCodec(),
    _PolarsCodec(),
    _LightGBMCodec(),
    _BytesCodec(),
    _JSONCodec(),
]


def register_codec(codec: Codec) -> None:
    """Add a codec; it is tried before the built-in ones."""
    _CODECS.insert(0, codec)


def _codec_for(value: Any) -> Codec:
    for codec in _CODECS:
        if codec.accepts(value):
            return codec
    kinds = ", ".join(sorted({c.kind for c in _CODECS}))
    raise UnsupportedArtifactError(
        f"No codec can store a value of type {type(value).__module__}.{type(value).__qualname__}. "
        f"Return one of the supported kinds ({kinds}): for example a pyarrow.Table, a "
        f"polars.DataFrame, a dict, or a lightgbm.Booster.",
        value_type=type(value).__qualname__,
    )


def _codec_named(kind: str) -> Codec:
    for codec in _CODECS:
        if codec.kind == kind:
            return codec
    raise ArtifactError(f"No codec is registered for artifact kind {kind!r}.", kind=kind)


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, target: IO[bytes]) -> None:
        self._target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self._target.write(view)
        self.size += len(view)
        return len(view)


def filesystem(url: str) -> tuple[Any, str, bool, str]:
    """The fsspec filesystem of ``url``, the path in it, whether it is local, and the
    ``protocol://`` prefix that turns a path back into a URL (empty when local)."""
    fs, root = fsspec.core.url_to_fs(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    local = protocol in ("file", "local")
    return fs, root, local, "" if local else f"{protocol}://"


class ArtifactStore:
    """Content-addressed blobs under ``<root>/objects/<h[:2]>/<h>`` on any fsspec filesystem."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        self.url = os.fspath(url)
        self.fs, self.root, self.local, self._prefix = filesystem(self.url)
        if self.local:
            Path(self.root, "tmp").mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    def path(self, content_hash: str) -> str:
        return f"{self.root}/objects/{content_hash[:2]}/{content_hash}"

    def uri(self, content_hash: str) -> str:
        return self._prefix + self.path(content_hash)

    def exists(self, content_hash: str) -> bool:
        return bool(self.fs.exists(self.path(content_hash)))

    def put(self, value: Any) -> StoredArtifact:
        """Encode ``value`` and store it under its content hash (a no-op if already there)."""
        codec = _codec_for(value)
        return self._store(codec.kind, lambda handle: codec.write(value, handle))

    def put_bytes(self, data: bytes, kind: str = "bytes") -> StoredArtifact:
        return self._store(kind, lambda handle: handle.write(data))

    def _store(self, kind: str, write: Callable[[IO[bytes]], Any]) -> StoredArtifact:
        with self.writer(kind) as pending:
            write(pending.handle)
        return pending.stored

    @contextmanager
    def writer(self, kind: str) -> Iterator[PendingArtifact]:
        """Stream bytes into the store: write to ``pending.handle``; on a clean exit the
        bytes are published under their hash and ``pending.stored`` says where.

        Nothing is published when the block raises, and no temporary file is left behind.
        """
        tmp_dir = Path(self.root, "tmp") if self.local else None
        fd, tmp_name = tempfile.mkstemp(prefix="put-", dir=tmp_dir)
        try:
            with os.fdopen(fd, "wb") as raw:
                hashing = _HashingWriter(raw)
                with io.BufferedWriter(hashing, buffer_size=_CHUNK) as buffered:
                    pending = PendingArtifact(buffered)
                    yield pending
            content_hash = hashing.sha.hexdigest()
            final = self.path(content_hash)
            if not self.fs.exists(final):
                if self.local:
                    Path(final).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp_name, final)  # atomic: readers see all bytes or none
                else:
                    self.fs.put_file(tmp_name, final)  # object stores publish a PUT whole
            pending.stored = StoredArtifact(
                content_hash, self.uri(content_hash), hashing.size, kind
            )
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)

    @contextmanager
    def open(self, content_hash: str) -> Iterator[IO[bytes]]:
        """Open stored bytes for streaming reads, after checking them against their hash."""
        self.verify(content_hash)
        with self.fs.open(self.path(content_hash), "rb") as handle:
            yield handle

    def discard(self, content_hash: str) -> None:
        """Remove a stored object (a corrupted one, so that the next put rewrites it)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(content_hash))

    def read_bytes(self, content_hash: str) -> bytes:
        """Return the stored bytes after checking that they still hash to ``content_hash``."""
        path = self.path(content_hash)
        try:
            with self.fs.open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError as exc:
            raise ArtifactNotFoundError(
                f"Artifact {content_hash[:12]} is not in the artifact store {self.url}. It was "
                f"deleted or the store moved; run the pipeline again (or 'loopline resume RUN') "
                f"to rebuild it.",
                content_hash=content_hash,
                path=path,
            ) from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != content_hash:
            raise ArtifactCorruptedError(
                f"Artifact {content_hash[:12]} at {path} is corrupted: its bytes hash to "
                f"{actual[:12]}. Delete the file and run the pipeline again (or 'loopline "
                f"resume RUN') to rebuild it.",
                content_hash=content_hash,
                path=path,
            )
        return bytes(data)

    def get(self, content_hash: str, kind: str) -> Any:
        """Read, verify and decode an artifact."""
        return _codec_named(kind).read(self.read_bytes(content_hash))

    def verify(self, content_hash: str) -> None:
        """Raise if the stored bytes are missing or do not match their hash."""
        sha = hashlib.sha256()
        path = self.path(content_hash)
        try:
            with self.fs.open(path, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    sha.update(chunk)
        except FileNotFoundError as exc:
            raise ArtifactNotFoundError(
                f"Artifact {content_hash[:12]} is not in the artifact store {self.url}.",
                content_hash=content_hash,
            ) from exc
        if sha.hexdigest() != content_hash:
            raise ArtifactCorruptedError(
                f"Artifact {content_hash[:12]} at {path} is corrupted. Delete the file and "
                f"run the pipeline again to rebuild it.",
                content_hash=content_hash,
                path=path,
            )
