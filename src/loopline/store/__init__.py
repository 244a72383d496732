"""Storage: the metadata database and the content-addressed artifact store."""

from loopline.store.artifacts import ArtifactStore, StoredArtifact, register_codec
from loopline.store.metadata import (
    ArtifactRecord,
    AttemptRecord,
    MetadataStore,
    MetricRecord,
    RunRecord,
    StepOutcome,
    StepRecord,
)

__all__ = [
    "ArtifactRecord",
    "ArtifactStore",
    "AttemptRecord",
    "MetadataStore",
    "MetricRecord",
    "RunRecord",
    "StepOutcome",
    "StepRecord",
    "StoredArtifact",
    "register_codec",
]
