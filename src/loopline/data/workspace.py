"""The stores that data code records into: the running step's, or the configured ones.

Ingestion records dataset versions in the metadata store and writes Parquet into the
artifact store. Inside a pipeline step those are the run's stores, and the versions are
linked to the run and step; anywhere else (a script, a notebook) they are the stores
``loopline.toml`` names. The pipeline runner sets the workspace for each step it runs, in
whatever thread or process the step runs; data code asks ``current_workspace()``.

Open stores are kept per process and URL, so a step does not pay for opening the
database (and checking its migrations) each time.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from loopline.config import Settings
from loopline.store.artifacts import ArtifactStore
from loopline.store.metadata import MetadataStore

__all__ = [
    "Workspace",
    "after_fork",
    "artifact_store",
    "current_workspace",
    "forget_stores",
    "metadata_store",
    "register_stores",
    "use_workspace",
]


@dataclass(frozen=True)
class Workspace:
    """Where data code records what it makes, and on whose behalf."""

    metadata_url: str
    artifact_url: str
    run_id: str | None = None
    step_id: str | None = None
    engine: str = "local"
    """Where partitioned work runs (``loopline.data.parallel``): ``local`` or a Ray engine."""

    @property
    def metadata(self) -> MetadataStore:
        return metadata_store(self.metadata_url)

    @property
    def artifacts(self) -> ArtifactStore:
        return artifact_store(self.artifact_url)


_current: contextvars.ContextVar[Workspace | None] = contextvars.ContextVar(
    "loopline_workspace", default=None
)
_LOCK = threading.Lock()
_METADATA: dict[str, MetadataStore] = {}
_ARTIFACTS: dict[str, ArtifactStore] = {}


def current_workspace() -> Workspace:
    """The running step's workspace, or one on the configured stores."""
    workspace = _current.get()
    if workspace is not None:
        return workspace
    settings = Settings.load()
    return Workspace(settings.metadata_url, settings.artifact_url, engine=settings.engine)


@contextmanager
def use_workspace(workspace: Workspace) -> Iterator[Workspace]:
    """Make ``workspace`` current in this thread (and what it starts) for the block."""
    token = _current.set(workspace)
    try:
        yield workspace
    finally:
        _current.reset(token)


def register_stores(metadata: MetadataStore, artifacts: ArtifactStore) -> None:
    """Share stores that are already open (the runner's) with data code in this process."""
    with _LOCK:
        _METADATA.setdefault(metadata.url, metadata)
        _ARTIFACTS.setdefault(artifacts.url, artifacts)


def forget_stores(metadata: MetadataStore, artifacts: ArtifactStore) -> None:
    """Stop sharing stores that are about to close."""
    with _LOCK:
        if _METADATA.get(metadata.url) is metadata:
            del _METADATA[metadata.url]
        if _ARTIFACTS.get(artifacts.url) is artifacts:
            del _ARTIFACTS[artifacts.url]


def after_fork() -> None:
    """In a forked child process: let every open metadata store reconnect on its own."""
    with _LOCK:
        for store in _METADATA.values():
            store.after_fork()


def metadata_store(url: str) -> MetadataStore:
    """The metadata store at ``url``, opened once per process."""
    with _LOCK:
        store = _METADATA.get(url)
        if store is None:
            store = _METADATA[url] = MetadataStore(url)
        return store


def artifact_store(url: str) -> ArtifactStore:
    """The artifact store at ``url``, opened once per process."""
    with _LOCK:
        store = _ARTIFACTS.get(url)
        if store is None:
            store = _ARTIFACTS[url] = ArtifactStore(url)
        return store
