"""Storage: the metadata database, the content-addressed artifact store, the online store."""

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
from loopline.store.online import (
    OnlineStore,
    RedisOnlineStore,
    SQLiteOnlineStore,
    open_online_store,
)

__all__ = [
    "ArtifactRecord",
    "ArtifactStore",
    "AttemptRecord",
    "MetadataStore",
    "MetricRecord",
    "OnlineStore",
    "RedisOnlineStore",
    "RunRecord",
    "SQLiteOnlineStore",
    "StepOutcome",
    "StepRecord",
    "StoredArtifact",
    "open_online_store",
    "register_codec",
]
