"""loopline: the whole machine-learning loop, from ingestion to retraining, in one package."""

from loopline.data import Files, Query, require_columns
from loopline.errors import LooplineError
from loopline.pipeline import log_metrics, step

__all__ = [
    "Files",
    "LooplineError",
    "Query",
    "__version__",
    "log_metrics",
    "require_columns",
    "step",
]

__version__ = "0.1.0"
