"""File inputs that the pipeline cache fingerprints by content."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import fsspec

from loopline.errors import SourceError

__all__ = ["Files"]

_CHUNK = 1 << 20
# Stat data younger than this cannot vouch for the content: a rewrite within the same
# timestamp tick (coarse kernel clocks, one- or two-second mtimes) leaves it unchanged.
# Such "racily clean" files, in git's words, are hashed again rather than memoized.
_RACY_S = 3.0
# (protocol, path, size, mtime, ctime or ETag, inode) -> sha256: re-hash only what moved.
_StatKey = tuple[str, str, int, float, str, str]
_HASH_MEMO: dict[_StatKey, str] = {}
_MEMO_LOCK = threading.Lock()


class Files:
    """One or more files (paths, globs or fsspec URLs) read by a step.

    As a step parameter, ``Files`` makes the step's cache key depend on the files'
    contents: the fingerprint is the sorted list of (path, size, sha256). A file's size,
    modification and change times (or ETag) only decide whether it must be hashed again
    in this process, so touching a file without changing it keeps the cache, and
    changing it always invalidates it.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.csv").write_text("x\\n1\\n")
    >>> files = Files(str(folder / "*.csv"))
    >>> [pathlib.Path(p).name for p in files.paths()]
    ['a.csv']
    >>> before = files.fingerprint()
    >>> _ = (folder / "a.csv").write_text("x\\n2\\n")
    >>> files.fingerprint() == before
    False
    """

    def __init__(self, *patterns: str | os.PathLike[str]) -> None:
        if not patterns:
            raise SourceError("Files needs at least one path, glob or URL. Got none.")
        self.patterns = tuple(os.fspath(p) for p in patterns)

    def __repr__(self) -> str:
        return f"Files({', '.join(map(repr, self.patterns))})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Files) and other.patterns == self.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)

    def to_param(self) -> Any:
        return list(self.patterns)

    def paths(self) -> list[str]:
        """Return the matched files, sorted; raise ``SourceError`` when a pattern matches none."""
        found: list[str] = []
        for pattern in self.patterns:
            fs, path = fsspec.core.url_to_fs(pattern)
            if _is_glob(path):
                found_here = fs.glob(path, detail=True)
                matches = [m for m, info in found_here.items() if info.get("type") == "file"]
            else:
                matches = [path] if fs.isfile(path) else []
            if not matches:
                raise SourceError(_no_match(fs, path, pattern), path=pattern)
            protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            prefix = "" if protocol in ("file", "local") else f"{protocol}://"
            found.extend(prefix + m for m in matches)
        return sorted(set(found))

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path in self.paths():
            size, content = _file_digest(path)
            digest.update(f"{path}\0{size}\0{content}\n".encode())
        return digest.hexdigest()


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _no_match(fs: Any, path: str, pattern: str) -> str:
    if not _is_glob(path) and fs.isdir(path):
        return (
            f"{pattern!r} is a folder, not a file. Name the files in it with a glob such as "
            f"'{pattern.rstrip('/')}/*.csv', or pass another path with '-p STEP.PARAM=PATH'."
        )
    return (
        f"No file matches {pattern!r}. Check the path, or pass another one with "
        f"'-p STEP.PARAM=PATH'."
    )


def _seconds(value: Any) -> float:
    """A timestamp as seconds: local files give floats, object stores datetimes."""
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def _settled(info: Mapping[str, Any]) -> bool:
    """Whether the file's stat data can stand for its content in the memo (see _RACY_S)."""
    if info.get("ETag") or info.get("etag"):
        return True
    stamps = [_seconds(info.get(k)) for k in ("mtime", "created", "LastModified")]
    newest = max(stamps)
    return newest > 0 and time.time() - newest >= _RACY_S


def _stat(url: str) -> tuple[_StatKey | None, int]:
    """What identifies the file's content in a memo (None when its stat data cannot vouch
    for it yet, see ``_RACY_S``), and its size."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        info = fs.info(path)
    except FileNotFoundError as exc:
        raise SourceError(f"File {url!r} disappeared while it was being read.", path=url) from exc
    size = int(info.get("size") or 0)
    mtime = _seconds(info.get("mtime") or info.get("LastModified"))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    # Like git's index: any write moves the inode change time (which, unlike the mtime,
    # cannot be set back), and object stores give an ETag; either voids the memo.
    change = info.get("created") or info.get("ETag") or info.get("etag") or ""
    key = (protocol, path, size, mtime, str(change), str(info.get("ino") or ""))
    return (key if _settled(info) else None), size


def _file_digest(url: str) -> tuple[int, str]:
    key, size = _stat(url)
    with _MEMO_LOCK:
        known = _HASH_MEMO.get(key) if key is not None else None
    if known is not None:
        return size, known
    fs, path = fsspec.core.url_to_fs(url)
    sha = hashlib.sha256()
    try:
        with fs.open(path, "rb") as handle:
            for chunk in _chunks(handle):
                sha.update(chunk)
    except FileNotFoundError as exc:
        raise SourceError(f"File {url!r} disappeared while it was being read.", path=url) from exc
    if key is not None:
        with _MEMO_LOCK:
            _HASH_MEMO[key] = sha.hexdigest()
    return size, sha.hexdigest()


def _chunks(handle: Any) -> Iterable[bytes]:
    while chunk := handle.read(_CHUNK):
        yield chunk
