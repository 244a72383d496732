"""File inputs that the pipeline cache fingerprints by content."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from typing import Any

import fsspec

from loopline.errors import SourceError

__all__ = ["Files"]

_CHUNK = 1 << 20
# (protocol, path, size, mtime) -> sha256; re-hash only files whose size or mtime moved.
_HASH_MEMO: dict[tuple[str, str, int, float], str] = {}
_MEMO_LOCK = threading.Lock()


class Files:
    """One or more files (paths, globs or fsspec URLs) read by a step.

    As a step parameter, ``Files`` makes the step's cache key depend on the files'
    contents: the fingerprint is the sorted list of (path, size, sha256). A file's
    modification time only decides whether it must be hashed again, so touching a file
    without changing it keeps the cache, and changing it always invalidates it.

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
            matches = fs.glob(path) if _is_glob(path) else ([path] if fs.isfile(path) else [])
            if not matches:
                raise SourceError(
                    f"No file matches {pattern!r}. Check the path, or pass another one with "
                    f"'-p STEP.PARAM=PATH'.",
                    path=pattern,
                )
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


def _file_digest(url: str) -> tuple[int, str]:
    fs, path = fsspec.core.url_to_fs(url)
    try:
        info = fs.info(path)
    except FileNotFoundError as exc:
        raise SourceError(f"File {url!r} disappeared while it was being read.", path=url) from exc
    size = int(info.get("size") or 0)
    mtime = float(info.get("mtime") or info.get("LastModified", 0) or 0)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    key = (protocol, path, size, mtime)
    with _MEMO_LOCK:
        known = _HASH_MEMO.get(key)
    if known is not None:
        return size, known
    sha = hashlib.sha256()
    try:
        with fs.open(path, "rb") as handle:
            for chunk in _chunks(handle):
                sha.update(chunk)
    except FileNotFoundError as exc:
        raise SourceError(f"File {url!r} disappeared while it was being read.", path=url) from exc
    with _MEMO_LOCK:
        _HASH_MEMO[key] = sha.hexdigest()
    return size, sha.hexdigest()


def _chunks(handle: Any) -> Iterable[bytes]:
    while chunk := handle.read(_CHUNK):
        yield chunk
