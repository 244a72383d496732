"""Data: sources, contracts, quarantine, dataset versions and profiles."""

from loopline.data.contract import Column, Contract, Freshness, Volume
from loopline.data.files import Files
from loopline.data.ingest import Dataset, IngestResult, ingest, read_dataset, read_quarantine
from loopline.data.query import Query
from loopline.data.schema import require_columns
from loopline.data.sources import (
    CursorPagination,
    HTTPSource,
    NextLinkPagination,
    OffsetPagination,
    SQLSource,
)
from loopline.data.sources.files import FileSource

__all__ = [
    "Column",
    "Contract",
    "CursorPagination",
    "Dataset",
    "FileSource",
    "Files",
    "Freshness",
    "HTTPSource",
    "IngestResult",
    "NextLinkPagination",
    "OffsetPagination",
    "Query",
    "SQLSource",
    "Volume",
    "ingest",
    "read_dataset",
    "read_quarantine",
    "require_columns",
]
