"""Files as a source: CSV, TSV, Parquet and JSON Lines, local or behind any fsspec URL.

Every matched file is one partition (a zip archive: one partition per member), whose
fingerprint is the sha256 of the file's bytes (``loopline.data.files``); with
``split_bytes``, a larger file is split into partitions of about that size where it can
be (docs/decisions/0025-splitting-large-files.md). Reading a partition yields chunks of
about ``block_size`` bytes of input, so memory stays flat however large the file is.

CSV and TSV values are delivered as strings, exactly as written: turning them into
numbers or dates is the contract's job. Rows that cannot be parsed (broken quoting, a
wrong number of fields, bytes that are not valid in the file's encoding, a repeated
header line, a bare carriage return) go to ``Chunk.rejects`` with their line number, their
raw text and the reason; they never stop the read. How lines are numbered, and how that
stays fast, is decided in docs/decisions/0007-csv-locations.md.

Examples
--------
>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "a.csv").write_text('id,note\\n1,ok\\n2,"two\\nlines"\\n3\\n')
>>> source = FileSource(str(folder / "*.csv"))
>>> [partition] = source.partitions()
>>> [chunk] = source.read(partition)
>>> chunk.batch.to_pydict()
{'id': ['1', '2'], 'note': ['ok', 'two\\nlines'], '_location': [2, 3]}
>>> chunk.rejects.to_pylist()
[{'location': 5, 'raw': '3', 'reason': 'expected 2 fields, found 1'}]
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import functools
import hashlib
import io
import os
import posixpath
import zipfile
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import unquote

import fsspec
import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from loopline.data.files import _MEMO_LOCK, Files, _file_digest, _stat, _StatKey
from loopline.data.sources.base import LOCATION, Chunk, Partition, Span, rejects_table
from loopline.errors import SourceError

__all__ = ["FileSource"]

_MIB = 1 << 20
_FORMATS = ("csv", "tsv", "parquet", "jsonl")
_FORMAT_ALIASES = {"ndjson": "jsonl"}
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_COMPRESSIONS = ("gzip", "zstd", "zip")
_COMPRESSION_EXTENSIONS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}
# A record (a row with its quoted line breaks) may span at most this many bytes, or
# block_size if larger; past it an open quote counts as never closed (see 0007).
_MIN_MAX_RECORD = _MIB
# The raw text kept for a line too long to hold in memory.
_MAX_RAW = 64 * 1024
_BOM = b"\xef\xbb\xbf"
_NL, _CR = 10, 13
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
# (stat data, reading options) -> the pieces of a split file: list them once per process.
_PIECES_MEMO: dict[tuple[_StatKey, tuple[Any, ...]], list[Partition]] = {}

_Ints = npt.NDArray[np.int64]


class FileSource:
    """Rows from files: CSV, TSV, Parquet or JSON Lines, plain or compressed.

    Each file is a partition, fingerprinted by the sha256 of its bytes; a zip archive
    gives one partition per member, and a file larger than ``split_bytes`` one per piece.
    ``read`` yields chunks of about ``block_size`` bytes of (decompressed) input, with
    each row's location: the physical line where it starts in a CSV, TSV or JSON Lines
    file (the header is line 1), the row number in a Parquet file. Rows that cannot be
    parsed are in ``Chunk.rejects`` with their raw text and the reason; none is dropped.

    Parameters
    ----------
    patterns : str or sequence of str
        Paths, globs (``data/*.csv``, ``data/**/*.parquet``) or fsspec URLs
        (``s3://bucket/flights/*.csv.gz``, ``memory://...``).
    format : {'csv', 'tsv', 'parquet', 'jsonl'}, optional
        The file format. By default it follows each file's extension (``.csv``, ``.tsv``,
        ``.parquet`` or ``.pq``, ``.jsonl`` or ``.ndjson``, under ``.gz``, ``.zst`` or
        ``.zip``).
    delimiter : str, optional
        The field separator of CSV and TSV files: ``,`` and a tab by default.
    quote : str or None, default '"'
        The quote character of CSV and TSV files (doubled inside a quoted field); None
        reads every quote as an ordinary character.
    header : bool, default True
        Whether the first line of a CSV or TSV file names the columns. Without a header
        the columns are ``column_1``, ``column_2``, ... as many as the first row has.
    encoding : str, default 'utf-8'
        The text encoding of CSV, TSV and JSON Lines files; other encodings are
        transcoded to UTF-8. A byte-order mark at the start is dropped.
    compression : {'gzip', 'zstd', 'zip'}, optional
        By default it follows the extension (``.gz``, ``.zst``, ``.zip``); none otherwise.
    hive_partitioning : bool, default True
        Add ``key=value`` folder names in a file's path (``year=2013/month=1/part.csv``)
        as string columns, after the file's own columns.
    block_size : int, default 16 MiB
        Bytes of (decompressed) input read at a time, and so the size of a chunk. A read
        holds a few blocks at once (one per worker thread, see
        docs/decisions/0007-csv-locations.md): about 15 times this at its peak, however
        large the file. A CSV record may span at most ``max(block_size, 1 MiB)`` bytes.
    split_bytes : int, optional
        Split a file larger than this into partitions of about this many bytes, which
        ingestion reads in parallel on Ray and, incrementally, re-reads one by one (a file
        that grows: only its last ones): an uncompressed UTF-8 CSV, TSV or JSON Lines file
        at record starts, found by a pass over the file with the reader's own record
        splitter (about half the time of a plain read on a quoted CSV: the price of
        splitting), a Parquet file between row groups. Rows keep their location in the
        whole file. Compressed files, other encodings and zip members stay whole. By
        default every file is one partition.
    name : str, optional
        A short name for messages and dataset records; the first pattern by default.

    Examples
    --------
    >>> import tempfile, pathlib, gzip
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "year=2013"
    >>> folder.mkdir()
    >>> _ = (folder / "a.csv.gz").write_bytes(gzip.compress(b"x;y\\n1;2\\n1;2;3\\n"))
    >>> source = FileSource(str(folder / "*.csv.gz"), delimiter=";")
    >>> [chunk] = source.read(source.partitions()[0])
    >>> chunk.batch.to_pylist()
    [{'x': '1', 'y': '2', 'year': '2013', '_location': 2}]
    >>> chunk.rejects.column("reason").to_pylist()
    ['expected 2 fields, found 3']
    """

    def __init__(
        self,
        patterns: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        format: str | None = None,
        delimiter: str | None = None,
        quote: str | None = '"',
        header: bool = True,
        encoding: str = "utf-8",
        compression: str | None = None,
        hive_partitioning: bool = True,
        block_size: int = 16 * _MIB,
        split_bytes: int | None = None,
        name: str | None = None,
    ) -> None:
        listed = [patterns] if isinstance(patterns, str | os.PathLike) else list(patterns or [])
        if not listed or not all(isinstance(p, str | os.PathLike) and str(p) for p in listed):
            raise SourceError(
                "The 'patterns' parameter of FileSource must be a path, glob or URL such as "
                f"'data/*.csv', or a list of them. Got {patterns!r}."
            )
        self.patterns = tuple(os.fspath(p) for p in listed)
        fmt = _FORMAT_ALIASES.get(format, format) if isinstance(format, str) else format
        if fmt is not None and fmt not in _FORMATS:
            raise SourceError(
                f"The 'format' parameter of FileSource must be one of {', '.join(_FORMATS)} "
                f"(or None to follow the extension). Got {format!r}."
            )
        if fmt in ("parquet", "jsonl") and delimiter is not None:
            raise SourceError(
                f"The 'delimiter' parameter of FileSource applies to CSV and TSV files only. "
                f"Got delimiter={delimiter!r} with format={fmt!r}."
            )
        for label, char in (("delimiter", delimiter), ("quote", quote)):
            if char is not None and (
                not isinstance(char, str) or len(char) != 1 or not char.isascii() or char in "\r\n"
            ):
                raise SourceError(
                    f"The {label!r} parameter of FileSource must be one ASCII character other "
                    f"than a line break, such as ','. Got {char!r}."
                )
        if delimiter is not None and delimiter == quote:
            raise SourceError(
                f"The 'delimiter' and 'quote' parameters of FileSource must differ. "
                f"Got {delimiter!r} for both."
            )
        if not isinstance(header, bool):
            raise SourceError(
                f"The 'header' parameter of FileSource must be True or False. Got {header!r}."
            )
        try:
            codecs.lookup(encoding)
        except (LookupError, TypeError) as exc:
            raise SourceError(
                f"The 'encoding' parameter of FileSource must be a text encoding such as "
                f"'utf-8' or 'latin-1'. Got {encoding!r}."
            ) from exc
        if compression is not None and compression not in _COMPRESSIONS:
            raise SourceError(
                f"The 'compression' parameter of FileSource must be one of "
                f"{', '.join(_COMPRESSIONS)} (or None to follow the extension). "
                f"Got {compression!r}."
            )
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise SourceError(
                f"The 'block_size' parameter of FileSource must be a positive number of bytes "
                f"such as 16777216. Got {block_size!r}."
            )
        if split_bytes is not None and (
            isinstance(split_bytes, bool) or not isinstance(split_bytes, int) or split_bytes < 1
        ):
            raise SourceError(
                f"The 'split_bytes' parameter of FileSource must be a positive number of "
                f"bytes such as 268435456 (256 MiB), or None to keep every file whole. "
                f"Got {split_bytes!r}."
            )
        self.format = fmt
        self.delimiter = delimiter
        self.quote = quote
        self.header = header
        self.encoding = encoding
        self.compression = compression
        self.hive_partitioning = hive_partitioning
        self.block_size = block_size
        self.split_bytes = split_bytes
        if name is None:
            more = len(self.patterns) - 1
            name = self.patterns[0] + (f" (+{more} more)" if more else "")
        self.name = name

    def __repr__(self) -> str:
        return f"FileSource({', '.join(map(repr, self.patterns))}, name={self.name!r})"

    # -- the Source protocol --------------------------------------------------------------

    def partitions(self) -> list[Partition]:
        """One partition per file (per member of a zip archive), in path order; a file
        larger than ``split_bytes`` one per piece, in file order.

        Raises ``SourceError`` when a pattern matches no file or a file's format cannot
        be told from its name.
        """
        found: list[Partition] = []
        for url in Files(*self.patterns).paths():
            compression, inner = self._compression_of(url)
            if compression != "zip":
                fmt = self._format_of(url, inner)
                pieces = self._pieces(url, fmt) if compression is None else []
                if pieces:
                    found += pieces
                    continue
                size, sha = _file_digest(url)
                found.append(Partition(source=url, key=url, fingerprint=sha, size_bytes=size))
                continue
            _, sha = _file_digest(url)
            for member in _zip_members(url):
                self._format_of(f"zip://{member.filename}::{url}", member.filename)
                key = f"zip://{member.filename}::{url}"
                member_sha = hashlib.sha256(f"{sha}\0{member.filename}".encode()).hexdigest()
                found.append(
                    Partition(
                        source=key, key=key, fingerprint=member_sha, size_bytes=member.compress_size
                    )
                )
        return found

    def read(self, partition: Partition) -> Iterator[Chunk]:
        """Yield the partition's rows in chunks of about ``block_size`` bytes of input.

        Raises ``SourceError`` when the file is missing, changed since ``partitions()``
        fingerprinted it, disappears or changes while it is read, or is not a valid
        compressed stream or Parquet file. The chunks already yielded then belong to an
        incomplete read and must be discarded.
        """
        if partition.span is not None:
            yield from self._read_piece(partition, partition.span)
            return
        url, member = _split_key(partition.key)
        compression, inner = self._compression_of(url)
        fmt = self._format_of(partition.key, member if member is not None else inner)
        hive = _hive_values(url, member) if self.hive_partitioning else {}
        with _reading(partition.key), _Opened(url, partition.fingerprint, member) as opened:
            if fmt == "parquet":
                if compression in ("gzip", "zstd"):
                    raise SourceError(
                        f"{partition.key!r} is a Parquet file inside {compression}: Parquet "
                        f"needs random access. Store it uncompressed (Parquet compresses its "
                        f"own pages) or in a zip archive.",
                        path=partition.key,
                    )
                yield from _parquet_chunks(opened.handle, partition.source, hive, self.block_size)
            else:
                codec = compression if compression in ("gzip", "zstd") else None
                text = _utf8_blocks(_blocks(opened.handle, codec, self.block_size), self.encoding)
                reader = self._text_reader(partition.source, fmt, hive)
                yield from _drive(reader, text, self._max_record(), pa.cpu_count())
            opened.finish()

    # -- large files in pieces ---------------------------------------------------------------

    def _pieces(self, url: str, fmt: str) -> list[Partition]:
        """The partitions of a file split at ``split_bytes``; none when it stays whole.

        Memoized by the file's stat data, like its sha256 (data/files.py): listing the
        partitions of an unchanged file again does not read it again.
        """
        if self.split_bytes is None:
            return []
        if fmt != "parquet" and codecs.lookup(self.encoding).name not in ("utf-8", "utf-8-sig"):
            return []
        stat, size = _stat(url)
        if size <= self.split_bytes:
            return []
        options = (fmt, self.delimiter, self.quote, self.header, self.block_size, self.split_bytes)
        memo = (stat, options) if stat is not None else None
        with _MEMO_LOCK:
            known = _PIECES_MEMO.get(memo) if memo is not None else None
        if known is not None:
            return known
        fs, path = fsspec.core.url_to_fs(url)
        with _reading(url), fs.open(path, "rb") as handle:
            if fmt == "parquet":
                pieces = self._parquet_pieces(url, handle, size, self.split_bytes)
            else:
                pieces = self._text_pieces(url, fmt, handle, size, self.split_bytes)
        if memo is not None:
            with _MEMO_LOCK:
                _PIECES_MEMO[memo] = pieces
        return pieces

    def _text_pieces(
        self, url: str, fmt: str, handle: Any, size: int, split_bytes: int
    ) -> list[Partition]:
        """Cut where the reader itself finds a record start after every ``split_bytes``
        (a walk over the whole file with its record splitter, no parsing), and
        fingerprint each piece in the same pass."""
        bom = len(_BOM) if handle.read(len(_BOM)) == _BOM else 0
        handle.seek(0)
        reader = self._text_reader(url, fmt, {})
        # Records start where they do whatever the blocks (the property test of the CSV
        # reader reads every file at many block sizes): blocks well below split_bytes
        # let cuts land within an eighth of it.
        raw = _Kept(_blocks(handle, None, max(1, min(self.block_size, split_bytes // 8))))
        cuts = [(0, 1, hashlib.sha256())]  # where each piece starts, its line, its digest
        for place in _walk(reader, _utf8_blocks(iter(raw), "utf-8"), self._max_record()):
            at = place.offset + bom
            if place.clean and reader.started and at - cuts[-1][0] >= split_bytes and at < size:
                raw.hash_to(at, cuts[-1][2])
                cuts.append((at, place.line, hashlib.sha256()))
            raw.hash_to(at, cuts[-1][2])  # what lies before the next record is this piece's
        if len(cuts) < 2:
            return []
        raw.hash_to(size, cuts[-1][2])
        names = getattr(reader, "names", None)
        pieces = []
        for (start, first, digest), stop in zip(
            cuts, [c[0] for c in cuts[1:]] + [size], strict=True
        ):
            fingerprint = _text_fingerprint(names, first, digest)
            pieces.append(_piece(url, Span(start, stop, first), fingerprint, "bytes", stop - start))
        return pieces

    def _parquet_pieces(
        self, url: str, handle: Any, size: int, split_bytes: int
    ) -> list[Partition]:
        """Runs of row groups of at least ``split_bytes`` (compressed) each."""
        meta = pq.ParquetFile(handle).metadata
        runs: list[tuple[int, int, int]] = []  # row groups [start, stop), bytes
        start = got = 0
        for index in range(meta.num_row_groups):
            start_byte, stop_byte = _group_bytes(meta, index)
            got += stop_byte - start_byte
            if got >= split_bytes or index + 1 == meta.num_row_groups:
                runs.append((start, index + 1, got))
                start, got = index + 1, 0
        if len(runs) < 2:
            return []
        footer = _parquet_footer(handle, size)
        pieces = []
        first = 1
        for start, stop, got in runs:
            span = Span(start, stop, first)
            fingerprint = _parquet_fingerprint(handle, meta, footer, span, self.block_size, url)
            pieces.append(_piece(url, span, fingerprint, "row groups", got))
            first += sum(meta.row_group(i).num_rows for i in range(start, stop))
        return pieces

    def _read_piece(self, partition: Partition, span: Span) -> Iterator[Chunk]:
        """Read one piece of a split file, and check it is the piece fingerprinted."""
        url = partition.source
        _, inner = self._compression_of(url)
        fmt = self._format_of(url, inner)
        hive = _hive_values(url, None) if self.hive_partitioning else {}
        changed = SourceError(
            f"File {url!r} changed after its partitions were listed: the content of "
            f"{partition.key} no longer matches its fingerprint. List the partitions again "
            f"and read those; nothing read from this one should be kept.",
            path=url,
        )
        with _reading(partition.key), _Opened(url, None, None) as opened:
            handle = opened.handle
            if fmt == "parquet":
                parquet = pq.ParquetFile(handle)
                footer = _parquet_footer(handle, opened.fs.size(opened.path))
                if (
                    parquet.metadata.num_row_groups < span.stop
                    or _parquet_fingerprint(
                        handle, parquet.metadata, footer, span, self.block_size, url
                    )
                    != partition.fingerprint
                ):
                    raise changed
                groups = range(span.start, span.stop)
                yield from _parquet_chunks(
                    handle, url, hive, self.block_size, row_groups=groups, first=span.first
                )
            else:
                reader = self._text_reader(url, fmt, hive)
                if span.start and not reader.started:
                    # The header names this piece's columns: read it as the whole file would.
                    head = _utf8_blocks(_blocks(handle, None, self.block_size), "utf-8")
                    for _ in _walk(reader, head, self._max_record()):
                        if reader.started:
                            break
                digest = hashlib.sha256()
                handle.seek(span.start)
                text = _hashed(_range(handle, span.stop - span.start, self.block_size, url), digest)
                if not span.start:
                    text = _utf8_blocks(text, "utf-8")
                chunks = _drive(reader, text, self._max_record(), pa.cpu_count(), span.first)
                yield from chunks
                if _text_fingerprint(getattr(reader, "names", None), span.first, digest) != (
                    partition.fingerprint
                ):
                    raise changed
            opened.finish()

    def _text_reader(self, source: str, fmt: str, hive: dict[str, str | None]) -> _TextReader:
        if fmt == "jsonl":
            return _JsonReader(source, hive, self.encoding)
        delimiter = self.delimiter or ("\t" if fmt == "tsv" else ",")
        return _CsvReader(
            source, hive, self.encoding, delimiter, self.quote, self.header, self._max_record()
        )

    def _max_record(self) -> int:
        return max(self.block_size, _MIN_MAX_RECORD)

    # -- what a file is ------------------------------------------------------------------

    def _compression_of(self, url: str) -> tuple[str | None, str]:
        """The file's compression and its name without the compression extension."""
        base = _basename(url)
        stem, ext = posixpath.splitext(base)
        by_name = "zip" if ext.lower() == ".zip" else _COMPRESSION_EXTENSIONS.get(ext.lower())
        compression = self.compression or by_name
        return compression, (stem if by_name else base)

    def _format_of(self, where: str, name: str) -> str:
        if self.format is not None:
            return self.format
        ext = posixpath.splitext(name)[1].lower()
        if ext in _EXTENSIONS:
            return _EXTENSIONS[ext]
        raise SourceError(
            f"Cannot tell the format of {where!r} from its name. Name it with one of "
            f"{', '.join(_EXTENSIONS)} (optionally under .gz, .zst or .zip), or pass "
            f"format='csv' (or 'tsv', 'parquet', 'jsonl') to FileSource.",
            path=where,
        )


# -- opening, verifying and decompressing ---------------------------------------------------


def _basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _split_key(key: str) -> tuple[str, str | None]:
    """``zip://member::archive`` -> (archive, member); a plain file URL -> (url, None)."""
    if key.startswith("zip://") and "::" in key:
        member, archive = key[len("zip://") :].split("::", 1)
        return archive, member
    return key, None


def _zip_members(url: str) -> list[zipfile.ZipInfo]:
    fs, path = fsspec.core.url_to_fs(url)
    with _reading(url), fs.open(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
        return [
            info
            for info in archive.infolist()
            if not info.is_dir() and not info.filename.startswith("__MACOSX/")
        ]


def _hive_values(url: str, member: str | None) -> dict[str, str | None]:
    path = url.split("://", 1)[-1]
    folders = path.split("/")[:-1] + (member.split("/")[:-1] if member else [])
    values: dict[str, str | None] = {}
    for folder in folders:
        key, sep, value = folder.partition("=")
        if sep and key:
            text = unquote(value)
            values[unquote(key)] = None if text == _HIVE_NULL else text
    return values


@contextlib.contextmanager
def _reading(where: str) -> Iterator[None]:
    """Translate what reading a file can raise into ``SourceError`` naming the file."""
    try:
        yield
    except SourceError:
        raise
    except FileNotFoundError as exc:
        raise SourceError(
            f"File {where!r} disappeared while it was being read. Nothing read from it "
            f"should be kept: put it back (or leave it out of the patterns) and run again.",
            path=where,
        ) from exc
    except (zipfile.BadZipFile, EOFError, pa.ArrowInvalid, OSError) as exc:
        raise SourceError(
            f"File {where!r} cannot be read: {exc}. Check that it is complete and in the "
            f"format its name says, or pass format= and compression= to FileSource.",
            path=where,
        ) from exc


def _identity(info: dict[str, Any]) -> tuple[str, ...]:
    """What changes when a file is written or replaced: size, times, inode, ETag."""
    keys = ("size", "mtime", "created", "LastModified", "ino", "ETag", "etag")
    return tuple(str(info.get(k)) for k in keys)


class _Opened:
    """An open partition that checks the file is the one fingerprinted, before and after.

    On entry the file's sha256 (memoized by its stat data, see data/files.py) must equal
    the partition's fingerprint (a piece of a split file is checked by its reader, which
    hashes the bytes it reads: pass None); on ``finish`` its stat identity (size, times, inode,
    ETag) must be what it was on entry, so a file rewritten, truncated or removed while
    it was read raises instead of leaving a silent half-read.
    """

    def __init__(self, url: str, fingerprint: str | None, member: str | None) -> None:
        self.url, self.fingerprint, self.member = url, fingerprint, member
        self.where = f"zip://{member}::{url}" if member else url
        self.fs, self.path = fsspec.core.url_to_fs(url)
        self._stack = contextlib.ExitStack()
        self.handle: Any = None
        self._before: tuple[str, ...] = ()

    def __enter__(self) -> _Opened:
        self._before = _identity(self.fs.info(self.path))
        if self.fingerprint is not None:
            self._check()
        handle = self._stack.enter_context(self.fs.open(self.path, "rb"))
        if self.member is not None:
            archive = self._stack.enter_context(zipfile.ZipFile(handle))
            handle = self._stack.enter_context(archive.open(self.member))
        self.handle = handle
        return self

    def _check(self) -> None:
        _, sha = _file_digest(self.url)
        if self.member is not None:
            sha = hashlib.sha256(f"{sha}\0{self.member}".encode()).hexdigest()
        if sha != self.fingerprint:
            raise SourceError(
                f"File {self.where!r} changed after its partitions were listed: its content "
                f"no longer matches the fingerprint. List the partitions again and read those.",
                path=self.where,
            )

    def finish(self) -> None:
        """Check, after the last byte was read, that the file did not move meanwhile."""
        try:
            after = _identity(self.fs.info(self.path))
        except FileNotFoundError as exc:
            raise SourceError(
                f"File {self.where!r} disappeared while it was being read. Nothing read from "
                f"it should be kept: put it back (or leave it out of the patterns) and run "
                f"again.",
                path=self.where,
            ) from exc
        if after != self._before:
            raise SourceError(
                f"File {self.where!r} changed while it was being read. Nothing read from it "
                f"should be kept: run again once the writer is done.",
                path=self.where,
            )

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def _blocks(handle: Any, codec: str | None, block_size: int) -> Iterator[bytes]:
    """The file's (decompressed) bytes, ``block_size`` at a time."""
    stream: Any = handle
    if codec is not None:
        stream = pa.CompressedInputStream(pa.PythonFile(handle, mode="r"), codec)
    # No local name holds a yielded block: the reader alone decides how long it lives.
    ahead = [stream.read(block_size)]
    while ahead[0]:
        yield ahead.pop()
        ahead.append(stream.read(block_size))


def _range(handle: Any, length: int, block_size: int, where: str) -> Iterator[bytes]:
    """The next ``length`` bytes of ``handle``, ``block_size`` at a time."""
    while length > 0:
        block = handle.read(min(block_size, length))
        if not block:
            raise SourceError(
                f"File {where!r} ended {length} bytes before the partition read from it: it "
                f"was truncated after its partitions were listed. List them again.",
                path=where,
            )
        length -= len(block)
        yield block


class _Kept:
    """Blocks passed on and kept until hashed: ``hash_to`` feeds a digest the bytes up to
    an offset, so pieces are hashed in the pass that finds where they end."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._kept: deque[bytes] = deque()
        self._at = 0  # the offset of the first kept byte

    def __iter__(self) -> Iterator[bytes]:
        for block in self._blocks:
            self._kept.append(block)
            yield block

    def hash_to(self, offset: int, digest: Any) -> None:
        while self._kept and self._at < offset:
            block = self._kept[0]
            take = min(len(block), offset - self._at)
            digest.update(memoryview(block)[:take])
            self._at += take
            if take == len(block):
                self._kept.popleft()
            else:
                self._kept[0] = block[take:]


def _hashed(blocks: Iterator[bytes], digest: Any) -> Iterator[bytes]:
    for block in blocks:
        digest.update(block)
        yield block


def _piece(url: str, span: Span, fingerprint: str, unit: str, size: int) -> Partition:
    key = f"{url} [{unit} {span.start}-{span.stop}]"
    return Partition(source=url, key=key, fingerprint=fingerprint, size_bytes=size, span=span)


def _text_fingerprint(names: list[str] | None, first: int, digest: Any) -> str:
    """A piece of a text file: its bytes, its first line and the columns the header names."""
    header = orjson.dumps(names).decode()
    return hashlib.sha256(f"{header}\0{first}\0{digest.hexdigest()}".encode()).hexdigest()


def _parquet_footer(handle: Any, size: int) -> bytes:
    """The file's metadata as stored (its last ``8 + length`` bytes)."""
    handle.seek(size - 8)
    tail = handle.read(8)
    length = int.from_bytes(tail[:4], "little")
    handle.seek(size - 8 - length)
    return bytes(handle.read(length))


def _group_bytes(meta: pq.FileMetaData, index: int) -> tuple[int, int]:
    """Where row group ``index`` lies in the file: its column chunks, pages and all."""
    group = meta.row_group(index)
    starts, stops = [], []
    for column in range(group.num_columns):
        chunk = group.column(column)
        start = chunk.data_page_offset
        if chunk.has_dictionary_page and chunk.dictionary_page_offset:
            start = min(start, chunk.dictionary_page_offset)
        starts.append(start)
        stops.append(start + chunk.total_compressed_size)
    return (min(starts), max(stops)) if starts else (0, 0)


def _parquet_fingerprint(
    handle: Any, meta: pq.FileMetaData, footer: bytes, span: Span, block_size: int, where: str
) -> str:
    """Row groups ``span``: sha256 of the file's metadata and of the bytes they occupy."""
    lying = [_group_bytes(meta, index) for index in range(span.start, span.stop)]
    start, stop = min(w[0] for w in lying), max(w[1] for w in lying)
    digest = hashlib.sha256(footer)
    handle.seek(start)
    for block in _range(handle, stop - start, block_size, where):
        digest.update(block)
    return digest.hexdigest()


def _utf8_blocks(blocks: Iterator[bytes], encoding: str) -> Iterator[bytes]:
    """The text as UTF-8, without a leading byte-order mark.

    Bytes invalid in a non-UTF-8 ``encoding`` come out as UTF-8-encoded lone surrogates
    (U+DC80..U+DCFF, via ``surrogateescape``), which no UTF-8 validator accepts: the row
    holding them is rejected like a row with invalid UTF-8.
    """
    if codecs.lookup(encoding).name in ("utf-8", "utf-8-sig"):
        head = b""
        for block in blocks:
            head += block
            del block
            if len(head) >= len(_BOM) or not _BOM.startswith(head):
                break  # else too short to tell whether a byte-order mark starts the file
        if head.startswith(_BOM):
            head = head[len(_BOM) :]
        if head:
            yield head
        del head
        yield from blocks
        return
    decoder = codecs.getincrementaldecoder(encoding)(errors="surrogateescape")
    first = True
    for block in blocks:
        text = decoder.decode(block)
        if first and text:
            text, first = text.removeprefix("\ufeff"), False
        if text:
            yield text.encode("utf-8", "surrogatepass")
    if text := decoder.decode(b"", final=True):
        yield text.encode("utf-8", "surrogatepass")


# -- turning text blocks into chunks ---------------------------------------------------------


@dataclass
class _Reject:
    line: int
    start: int
    end: int
    """Byte offsets in the buffer: the text (without its line end)."""
    reason: str
    raw: str | None = None
    """The raw text, when it is not in the buffer."""

    def span(self) -> tuple[int, int]:
        return self.start, self.end + 1


@dataclass
class _Step:
    consumed: int
    """Bytes of the buffer fully handled; the rest is carried to the next buffer."""
    lines: int
    """Line ends within the consumed bytes."""
    job: Callable[[], list[Chunk]] | None = None
    """What turns the handled records into chunks (run on a worker thread if parallel)."""


class _TextReader(ABC):
    """Reads complete records from the start of a buffer of UTF-8 text."""

    parallel = False
    """Whether the jobs of successive steps may run at once, on worker threads."""

    def __init__(self, source: str, hive: dict[str, str | None], encoding: str) -> None:
        self.source = source
        self.hive = hive
        self.encoding = codecs.lookup(encoding).name
        self.is_utf8 = self.encoding in ("utf-8", "utf-8-sig")

    @abstractmethod
    def step(self, buf: bytes, line: int, eof: bool, force: bool) -> _Step:
        """Handle the complete records at the start of ``buf`` (``buf[0]`` is on ``line``).

        ``force``: the first record cannot be completed within the record size limit;
        reject its first line and go on with the next one.
        """

    @abstractmethod
    def rejects_only(self, rejects: list[_Reject]) -> Chunk | None:
        """A chunk with no rows carrying ``rejects``; None before the columns are known."""

    def final_chunk(self) -> Chunk | None:
        """The chunk to yield when the whole file gave none (a header and no rows)."""
        return None

    @property
    def started(self) -> bool:
        """Whether what comes next can be read on its own (a CSV file's header is read)."""
        return True

    # shared helpers ----------------------------------------------------------------------

    def reject_table(self, buf: bytes, rejects: list[_Reject]) -> pa.Table:
        rejects = sorted(rejects, key=lambda r: r.line)
        raws = [r.raw if r.raw is not None else self.raw(buf[r.start : r.end]) for r in rejects]
        return rejects_table([r.line for r in rejects], raws, [r.reason for r in rejects])

    def raw(self, data: bytes) -> str:
        """A record's text as read; bytes invalid in the encoding as ``\\xNN``."""
        data = data.removesuffix(b"\r")
        if self.is_utf8:
            return data.decode("utf-8", "backslashreplace")
        try:
            text = data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:  # cut inside a character (a line too long to keep)
            return data.decode("utf-8", "backslashreplace")
        return text.encode(self.encoding, "surrogateescape").decode(
            self.encoding, "backslashreplace"
        )

    def invalid_reason(self, record: bytes, offset: int) -> str:
        """Why a record with an invalid byte at ``offset`` (0-based) is rejected."""
        if self.is_utf8:
            return f"invalid UTF-8 at byte {offset + 1}"
        # Count the bytes before it in the file's own encoding.
        before = record[:offset].decode("utf-8", "surrogatepass")
        original = len(before.encode(self.encoding, "surrogateescape"))
        return f"invalid {self.encoding} at byte {original + 1}"

    def invalid_text(
        self, buf: bytes, upto: int, starts: _Ints, ends: _Ints, keep: npt.NDArray[np.bool_]
    ) -> list[_Reject]:
        """A reject for each kept record in ``buf[:upto]`` that is not valid UTF-8 (and
        unmark it in ``keep``). One vectorized check when all of it is valid."""
        if _valid_utf8(buf, upto):
            return []
        found: list[_Reject] = []
        view = memoryview(buf)
        at = 0
        while at < upto:
            try:
                codecs.utf_8_decode(view[at:upto], "strict", True)
                break
            except UnicodeDecodeError as exc:
                bad = at + exc.start
            index = int(np.searchsorted(starts, bad, side="right")) - 1
            if index >= 0 and bad <= ends[index]:
                start, end = int(starts[index]), int(ends[index])
                if keep[index]:
                    reason = self.invalid_reason(buf[start:end], bad - start)
                    found.append(_Reject(-1, start, end, reason))
                    keep[index] = False
                at = end + 1
            else:  # in a line already rejected for another reason
                at = bad + 1
        return found


def _valid_utf8(buf: bytes, upto: int) -> bool:
    if upto == 0:
        return True
    offsets = pa.array([0, upto], pa.int32()).buffers()[1]
    data = pa.py_buffer(buf)
    try:
        pa.Array.from_buffers(pa.string(), 1, [None, offsets, data]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


@dataclass
class _Place:
    """Where a walk over text blocks stands after a block: the stream offset and line of
    the next record, and whether that is a record start (not inside a line being
    skipped)."""

    offset: int
    line: int
    clean: bool
    jobs: list[Callable[[], list[Chunk]]]
    """What turns the records handled since the last place into chunks, in order."""


def _walk(
    reader: _TextReader, blocks: Iterator[bytes], max_record: int, line: int = 1
) -> Iterator[_Place]:
    """Feed ``reader`` buffers that start at a record; carry what it leaves to the next.

    Splitting into records is sequential (a record may continue in the next block): this
    is that part, the same for reading (``_drive``) and for finding where a large file
    can be split (``FileSource._text_pieces``). ``line`` is the line of the first byte.
    """
    carry = b""
    offset = 0  # where carry starts in the stream
    skipping = False  # inside a line too long to keep: drop bytes up to its end
    for block in blocks:
        jobs: list[Callable[[], list[Chunk]]] = []
        if skipping:
            end = block.find(b"\n")
            if end < 0:
                offset += len(block)
                yield _Place(offset, line, False, jobs)
                continue
            offset += end + 1
            block, line, skipping = block[end + 1 :], line + 1, False
        buf = carry + block if carry else block
        del block  # one copy of the text in memory, not two
        step = reader.step(buf, line, False, False)
        if step.job is not None:
            jobs.append(step.job)
        carry, line, offset = buf[step.consumed :], line + step.lines, offset + step.consumed
        while len(carry) > max_record and not skipping:
            if b"\n" in carry:
                step = reader.step(carry, line, False, True)
                if step.job is not None:
                    jobs.append(step.job)
                carry, line = carry[step.consumed :], line + step.lines
                offset += step.consumed
                continue
            raw = reader.raw(carry[:_MAX_RAW]) + "…"
            reason = f"line longer than {max_record} bytes"
            chunk = reader.rejects_only([_Reject(line, 0, 0, reason, raw=raw)])
            if chunk is None:
                raise SourceError(
                    f"The first line of {reader.source!r} is longer than {max_record} "
                    f"bytes. Is it a text file with LF or CRLF line ends? Pass a "
                    f"block_size larger than its longest line, or the right format.",
                    path=reader.source,
                )
            jobs.append(functools.partial(list, [chunk]))
            offset += len(carry)
            carry, skipping = b"", True
        yield _Place(offset, line, not skipping, jobs)
    if carry and not skipping:
        size = len(carry)
        if not carry.endswith(b"\n"):
            carry += b"\n"  # the last line has no line end: give it one
        step = reader.step(carry, line, True, False)
        jobs = [step.job] if step.job is not None else []
        yield _Place(offset + size, line + step.lines, True, jobs)


def _drive(
    reader: _TextReader, blocks: Iterator[bytes], max_record: int, workers: int, line: int = 1
) -> Iterator[Chunk]:
    """The chunks of the records ``_walk`` finds, made on up to ``workers`` threads, in
    order."""
    pool = ThreadPoolExecutor(workers) if reader.parallel and workers > 1 else None
    pending: deque[Future[list[Chunk]]] = deque()

    def ready(limit: int) -> list[Chunk]:
        out: list[Chunk] = []
        while len(pending) > limit:
            out += pending.popleft().result()
        return out

    emitted = False
    try:
        for place in _walk(reader, blocks, max_record, line):
            for job in place.jobs:
                if pool is not None:
                    pending.append(pool.submit(job))
                else:
                    done: Future[list[Chunk]] = Future()
                    done.set_result(job())
                    pending.append(done)
            for chunk in ready(workers):
                emitted = True
                yield chunk
        for chunk in ready(0):
            emitted = True
            yield chunk
        if not emitted and (last := reader.final_chunk()) is not None:
            yield last
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


# -- CSV ----------------------------------------------------------------------------------------


@dataclass
class _Records:
    """The records found at the start of a buffer (see ``_split_csv``)."""

    starts: _Ints
    ends: _Ints
    """Where each record's text ends: its final line feed (a CR before it is kept)."""
    lines: _Ints
    rejects: list[_Reject]
    consumed: int
    lines_consumed: int
    multiline: bool


_EMPTY = np.zeros(0, np.int64)


def _split_csv(
    buf: bytes,
    line: int,
    delimiter: int,
    quote: int | None,
    *,
    eof: bool,
    force: bool,
    max_record: int,
) -> _Records:
    """Find the records, and the lines with broken quoting, at the start of ``buf``.

    Vectorized over the positions of line feeds, quotes and carriage returns; see
    docs/decisions/0007-csv-locations.md for the grammar and the recovery rule.
    """
    arr = np.frombuffer(buf, np.uint8)
    n = len(arr)
    nl = np.flatnonzero(arr == _NL)
    if not len(nl):
        return _Records(_EMPTY, _EMPTY, _EMPTY, [], 0, 0, False)
    bare = _EMPTY
    if b"\r" in buf:
        cr = np.flatnonzero(arr == _CR)
        follows = cr + 1
        bare = cr[(follows < n) & (arr[np.minimum(follows, n - 1)] != _NL)]
    q = _EMPTY
    if quote is not None and bytes([quote]) in buf:
        q = np.flatnonzero(arr == quote)
    # A stretch of text read from a line start has a parity f: the index of its first
    # quote, mod 2. In it, quote j opens a field when j % 2 == f, and a position is
    # outside quotes when the number of quotes before it is == f (mod 2).
    if len(q):
        odd_nl = (np.searchsorted(q, nl) & 1).astype(bool)
        odd_cr = (np.searchsorted(q, bare) & 1).astype(bool)
        cut_index = (np.flatnonzero(~odd_nl), np.flatnonzero(odd_nl))
    else:
        odd_cr = np.zeros(len(bare), bool)
        cut_index = (np.arange(len(nl)), _EMPTY)
    cut_pos = (nl[cut_index[0]], nl[cut_index[1]])
    problems: dict[int, _Ints] = {}

    def problems_at(f: int) -> _Ints:
        """Where the text stops being RFC 4180 under parity f (computed on first need)."""
        if f not in problems:
            openers, closers = (q[0::2], q[1::2]) if f == 0 else (q[1::2], q[0::2])
            # A quote opens a field where a field starts (or is the second of a doubled
            # quote), and closes it where the field ends (or is the first of one).
            before = np.take(arr, openers - 1, mode="clip")
            bad_open = (openers != 0) & (before != delimiter) & (before != _NL) & (before != quote)
            after = np.take(arr, closers + 1, mode="clip")
            bad_close = (
                (closers + 1 < n)
                & (after != delimiter)
                & (after != _NL)
                & (after != _CR)
                & (after != quote)
            )
            found = [openers[bad_open], closers[bad_close], bare[odd_cr == bool(f)]]
            problems[f] = np.sort(np.concatenate(found))
        return problems[f]

    starts: list[_Ints] = []
    ends: list[_Ints] = []
    start_lines: list[_Ints] = []
    end_lines: list[_Ints] = []
    rejects: list[_Reject] = []
    pos = pos_line = f = 0  # the current record's offset, its line index, its parity

    def opened_at(end: int) -> int:
        """The 1-based byte, in the line from pos to end, of the quote left open."""
        return int(q[int(np.searchsorted(q, end)) - 1]) - pos + 1

    forced = force
    while True:
        problem = n
        if not forced:
            found = problems_at(f)
            index = int(np.searchsorted(found, pos))
            problem = int(found[index]) if index < len(found) else n
            cuts, cut_lines = cut_pos[f], cut_index[f]
            first, last = int(np.searchsorted(cuts, pos)), int(np.searchsorted(cuts, problem))
            if last > first:
                here, here_lines = cuts[first:last], cut_lines[first:last]
                starts.append(np.concatenate([[pos], here[:-1] + 1]))
                start_lines.append(np.concatenate([[pos_line], here_lines[:-1] + 1]))
                ends.append(here)
                end_lines.append(here_lines)
                pos, pos_line = int(here[-1]) + 1, int(here_lines[-1]) + 1
            # Past the last cut: a record still in quotes. At the end of the file (which
            # always ends with a line feed here) its quote is never closed.
            if problem == n and not (eof and pos < n):
                break
            if pos_line >= len(nl):
                break  # the broken record's first line is not complete yet
        end = int(nl[pos_line])
        if forced:
            forced = False
            reason = (
                f"broken quoting: quoted field opened at byte {opened_at(end)} is not "
                f"closed within {max_record} bytes"
            )
        elif pos <= problem < end:
            byte = problem - pos + 1
            if arr[problem] == _CR:
                reason = f"bare carriage return (CR without LF) at byte {byte}"
            elif int(np.searchsorted(q, problem)) % 2 == f:
                reason = f"broken quoting: quote inside an unquoted field at byte {byte}"
            else:
                reason = f"broken quoting: text after a closing quote at byte {byte}"
        else:
            reason = f"broken quoting: quoted field opened at byte {opened_at(end)} is never closed"
        rejects.append(_Reject(line + pos_line, pos, end, reason))
        pos, pos_line = end + 1, pos_line + 1
        f = int(np.searchsorted(q, pos)) % 2

    if starts:
        record_starts, record_ends = np.concatenate(starts), np.concatenate(ends)
        first_lines, last_lines = np.concatenate(start_lines), np.concatenate(end_lines)
    else:
        record_starts = record_ends = first_lines = last_lines = _EMPTY
    multiline = bool(len(q)) and bool(np.any(first_lines != last_lines))
    # Blank lines (nothing, or only a CR, before the LF) are no records.
    width = record_ends - record_starts
    blank = width == 0
    if b"\r" in buf:
        blank |= (width == 1) & (arr[np.minimum(record_starts, n - 1)] == _CR)
    if blank.any():
        record_starts, record_ends, first_lines = (
            record_starts[~blank],
            record_ends[~blank],
            first_lines[~blank],
        )
    return _Records(
        record_starts, record_ends, line + first_lines, rejects, pos, pos_line, multiline
    )


def _without(buf: bytes, upto: int, spans: list[tuple[int, int]]) -> bytes | pa.Buffer:
    """``buf[:upto]`` without the byte ranges ``spans`` (sorted, disjoint)."""
    if not spans:
        return pa.py_buffer(buf)[:upto]
    view = memoryview(buf)
    pieces, at = [], 0
    for start, stop in sorted(spans):
        pieces.append(view[at:start])
        at = stop
    pieces.append(view[at:upto])
    return b"".join(pieces)


def _with_hive(table: pa.Table, hive: dict[str, str | None], source: str) -> pa.Table:
    """Append the hive partition values as string columns."""
    for key, value in hive.items():
        if key in table.column_names or key == LOCATION:
            raise SourceError(
                f"Column {key!r} of {source!r} is also a partition folder name "
                f"({key}={value}). Rename one of them, or pass hive_partitioning=False.",
                path=source,
            )
        column = pa.array([value] * table.num_rows, pa.string())
        table = table.append_column(pa.field(key, pa.string()), column)
    return table


class _CsvReader(_TextReader):
    """CSV and TSV: every column a string, rows located by their first physical line."""

    parallel = True

    def __init__(
        self,
        source: str,
        hive: dict[str, str | None],
        encoding: str,
        delimiter: str,
        quote: str | None,
        header: bool,
        max_record: int,
    ) -> None:
        super().__init__(source, hive, encoding)
        self.delimiter = delimiter
        self.quote = quote
        self.header = header
        self.max_record = max_record
        self.names: list[str] | None = None

    def step(self, buf: bytes, line: int, eof: bool, force: bool) -> _Step:
        records = _split_csv(
            buf,
            line,
            ord(self.delimiter),
            ord(self.quote) if self.quote else None,
            eof=eof,
            force=force,
            max_record=self.max_record,
        )
        keep = np.ones(len(records.starts), bool)
        if self.names is None:
            if not len(records.starts) and not records.rejects:
                return _Step(records.consumed, records.lines_consumed)  # no header yet
            first = int(records.starts[0]) if len(records.starts) else len(buf)
            if records.rejects and records.rejects[0].start < first:
                self._bad_header(records.rejects[0].line, records.rejects[0].reason)
            names = self._header_names(buf[first : int(records.ends[0])], int(records.lines[0]))
            if self.header:
                self.names, keep[0] = names, False
            else:
                self.names = [f"column_{i + 1}" for i in range(len(names))]
        if not keep.any() and not records.rejects:
            return _Step(records.consumed, records.lines_consumed)
        job = functools.partial(self._chunks, buf, records, keep, self.names)
        return _Step(records.consumed, records.lines_consumed, job)

    def _chunks(
        self, buf: bytes, records: _Records, keep: npt.NDArray[np.bool_], names: list[str]
    ) -> list[Chunk]:
        """The chunk of the records ``_split_csv`` found (runs on a worker thread)."""
        starts, ends, lines = records.starts, records.ends, records.lines
        rejects = records.rejects
        for reject in self.invalid_text(buf, records.consumed, starts, ends, keep):
            reject.line = int(lines[np.searchsorted(starts, reject.start)])
            rejects.append(reject)
        kept = np.flatnonzero(keep)
        if len(kept):
            spans = [r.span() for r in rejects]
            spans += [(int(starts[i]), int(ends[i]) + 1) for i in np.flatnonzero(~keep)]
            data = _without(buf, records.consumed, spans)
            table, invalid = self._parse(names, data, len(kept), records.multiline)
        else:
            table, invalid = _empty_strings(names), []
        rows = kept
        if invalid:
            wrong = np.zeros(len(kept), bool)
            for number, found in invalid:
                index = int(kept[number])
                wrong[number] = True
                start, end = int(starts[index]), int(ends[index])
                reason = f"expected {len(names)} fields, found {found}"
                rejects.append(_Reject(int(lines[index]), start, end, reason))
            rows = kept[~wrong]
        if self.header and table.num_rows:
            repeated = _rows_equal_to(table, names)
            if repeated is not None:
                for index in rows[repeated]:
                    start, end = int(starts[index]), int(ends[index])
                    rejects.append(_Reject(int(lines[index]), start, end, "repeated header line"))
                table, rows = table.filter(pa.array(~repeated)), rows[~repeated]
        if not table.num_rows and not rejects:
            return []
        table = _with_hive(table, self.hive, self.source)
        located = lines[rows]
        return [
            Chunk.of(
                table,
                source=self.source,
                locations=located,
                rejects=self.reject_table(buf, rejects),
            )
        ]

    def rejects_only(self, rejects: list[_Reject]) -> Chunk | None:
        if self.names is None:
            return None
        table = _with_hive(_empty_strings(self.names), self.hive, self.source)
        return Chunk.of(
            table, source=self.source, locations=[], rejects=self.reject_table(b"", rejects)
        )

    def final_chunk(self) -> Chunk | None:
        return self.rejects_only([])

    @property
    def started(self) -> bool:
        return self.names is not None

    def _bad_header(self, line: int, reason: str) -> NoReturn:
        if self.header:
            what, hint = "The header", "Fix the header, or pass header=False to read it as data"
        else:
            what, hint = "The first row", "It gives the number of columns: fix it"
        raise SourceError(
            f"{what} of {self.source!r} (line {line}) cannot be read: {reason}. {hint}.",
            path=self.source,
            line=line,
        )

    def _header_names(self, record: bytes, line: int) -> list[str]:
        record = record.removesuffix(b"\r")
        try:
            text = record.decode("utf-8")
        except UnicodeDecodeError as exc:
            if self.header:
                self._bad_header(line, self.invalid_reason(record, exc.start))
            text = record.decode("utf-8", "surrogateescape")  # data: only its width counts
        reader = csv.reader(
            io.StringIO(text, newline=""),
            delimiter=self.delimiter,
            quotechar=self.quote or '"',
            quoting=csv.QUOTE_MINIMAL if self.quote else csv.QUOTE_NONE,
            strict=True,
        )
        names = next(reader)
        if not self.header:
            return names
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates or LOCATION in names:
            what = (
                f"repeats {', '.join(map(repr, duplicates))}"
                if duplicates
                else (f"uses the reserved name {LOCATION!r}")
            )
            raise SourceError(
                f"The header of {self.source!r} (line {line}) {what}. Give every column a "
                f"name of its own, or pass header=False.",
                path=self.source,
                line=line,
            )
        return names

    def _parse(
        self, names: list[str], data: bytes | pa.Buffer, count: int, multiline: bool
    ) -> tuple[pa.Table, list[tuple[int, int]]]:
        """Parse ``count`` well-quoted records; return the table and, for each record
        with the wrong number of fields, (its index among the records, its field count).

        One thread per call (blocks are parsed on worker threads side by side), which is
        also what lets pyarrow number the rows it hands to ``invalid_row_handler``.
        """
        invalid: list[tuple[int, int]] = []

        def skip(row: Any) -> str:
            invalid.append((int(row.number) - 1, int(row.actual_columns)))
            return "skip"

        table = pa_csv.read_csv(
            pa.BufferReader(data),
            read_options=pa_csv.ReadOptions(
                column_names=names, use_threads=False, block_size=len(data) + 1
            ),
            parse_options=pa_csv.ParseOptions(
                delimiter=self.delimiter,
                quote_char=self.quote or False,
                double_quote=True,
                escape_char=False,
                newlines_in_values=multiline,
                ignore_empty_lines=True,
                invalid_row_handler=skip,
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                check_utf8=False,
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        if table.num_rows + len(invalid) != count:
            raise SourceError(
                f"Internal error reading {self.source!r}: {count} records were found but "
                f"{table.num_rows} rows and {len(invalid)} bad rows came back. Please report "
                f"this with the file.",
                path=self.source,
            )
        return table, invalid


def _empty_strings(names: list[str]) -> pa.Table:
    return pa.table({name: pa.array([], pa.string()) for name in names})


def _rows_equal_to(table: pa.Table, names: list[str]) -> npt.NDArray[np.bool_] | None:
    """Which rows repeat the header, or None when none does (checked column by column)."""
    mask: Any = None
    for index, name in enumerate(names):
        equal = pc.equal(table.column(index), pa.scalar(name, pa.string()))
        mask = equal if mask is None else pc.and_(mask, equal)
        if not pc.any(mask).as_py():
            return None
    return np.asarray(mask.to_numpy(zero_copy_only=False), bool) if mask is not None else None


# -- JSON Lines ---------------------------------------------------------------------------------


class _JsonReader(_TextReader):
    """JSON Lines: one object per line, types inferred by pyarrow; bad lines rejected."""

    def __init__(self, source: str, hive: dict[str, str | None], encoding: str) -> None:
        super().__init__(source, hive, encoding)
        self.fields: dict[str, pa.DataType] = {}

    def step(self, buf: bytes, line: int, eof: bool, force: bool) -> _Step:
        arr = np.frombuffer(buf, np.uint8)
        nl = np.flatnonzero(arr == _NL)
        if not len(nl):
            return _Step(0, 0)
        return _Step(int(nl[-1]) + 1, len(nl), functools.partial(self._chunks, buf, line, nl))

    def _chunks(self, buf: bytes, line: int, nl: _Ints) -> list[Chunk]:
        consumed = int(nl[-1]) + 1
        starts = np.concatenate([[0], nl[:-1] + 1])
        ends = nl
        lines = line + np.arange(len(nl))
        width = ends - starts
        lead = np.frombuffer(buf, np.uint8)[np.minimum(starts, len(buf) - 1)]
        keep = width > 0
        # Lines of white space only are blank (pyarrow skips them too).
        for index in np.flatnonzero(keep & ((lead == 32) | (lead == 9) | (lead == _CR))):
            keep[index] = bool(buf[int(starts[index]) : int(ends[index])].strip())
        rejects = self.invalid_text(buf, consumed, starts, ends, keep)
        for reject in rejects:
            reject.line = int(lines[np.searchsorted(starts, reject.start)])
        kept = np.flatnonzero(keep)
        parts: list[tuple[pa.Table, _Ints]] = []
        if len(kept):
            data = _without(buf, consumed, [r.span() for r in rejects])
            self._parse(buf, data, starts[kept], ends[kept], lines[kept], parts, rejects)
        if not parts and rejects:
            parts.append((pa.table({}), _EMPTY))
        chunks = []
        for number, (table, located) in enumerate(parts):
            table = _with_hive(self._conform(table), self.hive, self.source)
            mine = self.reject_table(buf, rejects) if number == 0 else None
            chunks.append(Chunk.of(table, source=self.source, locations=located, rejects=mine))
        return chunks

    def rejects_only(self, rejects: list[_Reject]) -> Chunk | None:
        table = _with_hive(self._conform(pa.table({})), self.hive, self.source)
        return Chunk.of(
            table, source=self.source, locations=[], rejects=self.reject_table(b"", rejects)
        )

    def _read(self, data: bytes | pa.Buffer, count: int, longest: int) -> pa.Table | None:
        """Parse ``count`` lines, with the types seen so far, else with fresh inference."""
        # pyarrow's threads parse blocks of lines side by side; a line must fit in one.
        block = max(_MIB, longest + 2)
        known = pa.schema([(k, t) for k, t in self.fields.items() if not pa.types.is_null(t)])
        tries = [known, None] if len(known) else [None]
        for schema in tries:
            options = pa_json.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="infer"
            )
            try:
                table = pa_json.read_json(
                    pa.BufferReader(data),
                    read_options=pa_json.ReadOptions(use_threads=True, block_size=block),
                    parse_options=options,
                )
            except pa.ArrowInvalid:
                continue
            if table.num_rows == count:
                return table
        return None

    def _parse(
        self,
        buf: bytes,
        data: bytes | pa.Buffer | None,
        starts: _Ints,
        ends: _Ints,
        lines: _Ints,
        parts: list[tuple[pa.Table, _Ints]],
        rejects: list[_Reject],
    ) -> None:
        """Parse the lines; where pyarrow fails, split them in two and try each half, down
        to single lines, which are rejected with the reason."""
        if data is None:
            data = b"\n".join(buf[int(s) : int(e)] for s, e in zip(starts, ends, strict=True))
        table = self._read(data, len(starts), int((ends - starts).max()))
        if table is not None:
            for name, column in zip(table.column_names, table.columns, strict=True):
                if pa.types.is_null(self.fields.get(name, pa.null())):
                    self.fields[name] = column.type
            parts.append((table, lines))
            return
        if len(starts) == 1:
            text = buf[int(starts[0]) : int(ends[0])]
            rejects.append(_Reject(int(lines[0]), int(starts[0]), int(ends[0]), _json_reason(text)))
            return
        half = len(starts) // 2
        self._parse(buf, None, starts[:half], ends[:half], lines[:half], parts, rejects)
        self._parse(buf, None, starts[half:], ends[half:], lines[half:], parts, rejects)

    def _conform(self, table: pa.Table) -> pa.Table:
        """Every column seen so far, in the order first seen (null where absent)."""
        for name, kind in self.fields.items():
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, kind))
        order = list(self.fields) + [n for n in table.column_names if n not in self.fields]
        return table.select(order)


def _json_reason(text: bytes) -> str:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return f"invalid JSON: {exc}"
    if not isinstance(value, dict):
        return f"expected a JSON object, found {type(value).__name__}"
    return "a JSON object pyarrow cannot read (unsupported value)"


# -- Parquet ------------------------------------------------------------------------------------


def _parquet_chunks(
    handle: Any,
    source: str,
    hive: dict[str, str | None],
    block_size: int,
    *,
    row_groups: Sequence[int] | None = None,
    first: int = 1,
) -> Iterator[Chunk]:
    """Record batches of about ``block_size`` bytes (by the file's own size per row), of
    every row group or of ``row_groups``, whose first row is row ``first`` of the file."""
    parquet = pq.ParquetFile(handle)
    meta = parquet.metadata
    total = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    per_row = max(1, total // max(1, meta.num_rows))
    batch_rows = max(1, block_size // per_row)
    row = first
    for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=row_groups):
        table = _with_hive(pa.Table.from_batches([batch]), hive, source)
        count = batch.num_rows
        yield Chunk.of(table, source=source, locations=np.arange(row, row + count))
        row += count
    if row == first:
        table = _with_hive(parquet.schema_arrow.empty_table(), hive, source)
        yield Chunk.of(table, source=source, locations=[])
