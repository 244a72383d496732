"""Sources of rows: files, SQL and HTTP APIs, read in partitions and bounded chunks."""

from loopline.data.sources.base import (
    LOCATION,
    QUARANTINE_SCHEMA,
    REJECT_SCHEMA,
    Chunk,
    Partition,
    Source,
    quarantined_rejects,
    rejects_table,
)

__all__ = [
    "LOCATION",
    "QUARANTINE_SCHEMA",
    "REJECT_SCHEMA",
    "Chunk",
    "Partition",
    "Source",
    "quarantined_rejects",
    "rejects_table",
]
