"""Data: external inputs the pipeline fingerprints, and structural checks."""

from loopline.data.files import Files
from loopline.data.query import Query
from loopline.data.schema import require_columns

__all__ = ["Files", "Query", "require_columns"]
