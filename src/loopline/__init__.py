"""loopline: the whole machine-learning loop, from ingestion to retraining, in one package."""

from loopline.data import (
    Column,
    Contract,
    Dataset,
    Files,
    FileSource,
    HTTPSource,
    Query,
    SQLSource,
    ingest,
    read_dataset,
    require_columns,
)
from loopline.errors import LooplineError
from loopline.pipeline import log_metrics, step

__all__ = [
    "Column",
    "Contract",
    "Dataset",
    "FileSource",
    "Files",
    "HTTPSource",
    "LooplineError",
    "Query",
    "SQLSource",
    "__version__",
    "ingest",
    "log_metrics",
    "read_dataset",
    "require_columns",
    "step",
]

__version__ = "0.1.0"
