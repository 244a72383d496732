"""Sources of rows: files, SQL and HTTP APIs, read in partitions and bounded chunks."""

from loopline.data.sources.base import (
    LOCATION,
    QUARANTINE_SCHEMA,
    REJECT_SCHEMA,
    Chunk,
    Partition,
    Source,
    Span,
    quarantined_rejects,
    rejects_table,
)
from loopline.data.sources.files import FileSource
from loopline.data.sources.http import (
    CursorPagination,
    HTTPSource,
    NextLinkPagination,
    OffsetPagination,
    Pagination,
)
from loopline.data.sources.sql import SQLSource

__all__ = [
    "LOCATION",
    "QUARANTINE_SCHEMA",
    "REJECT_SCHEMA",
    "Chunk",
    "CursorPagination",
    "FileSource",
    "HTTPSource",
    "NextLinkPagination",
    "OffsetPagination",
    "Pagination",
    "Partition",
    "SQLSource",
    "Source",
    "Span",
    "quarantined_rejects",
    "rejects_table",
]
