"""Partitioned work: one function mapped over partitions, here or as Ray tasks.

Data code that splits its work into independent partitions (ingestion's source
partitions, a training set's entity-hash partitions, batch scoring's input files) calls
``map_partitions(fn, items)`` and gets the results in the order of ``items``, whatever
ran where. In a step on the ``ray`` engine the items are Ray tasks (one CPU, Polars
held to that many threads, run again by Ray when its worker process dies), and the
step's own process takes items too; anywhere else the items run one after another in
this thread, which keeps memory to one partition at a time. The function, its items
and its results travel through Ray's object store, so they should be small records or
Arrow/Polars data, never open files.
Polars frames travel as Arrow tables: Ray passes their buffers without pickling them
(tens of times faster than a frame's own pickle, which copies and encodes every column),
and they come back as Polars frames of the same schema.

An exception raised by ``fn`` is raised again here as itself (not wrapped by Ray), so
callers handle a failed partition as they would locally.

Examples
--------
>>> map_partitions(abs, [-1, 2, -3], name="demo")
[1, 2, 3]
"""

from __future__ import annotations

import collections
import importlib
import pickle
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from loopline.data.workspace import Workspace, current_workspace, use_workspace

__all__ = [
    "WORKER_RETRIES",
    "frames_as_arrow",
    "map_partitions",
    "on_ray",
    "ray_cpus",
]

_T = TypeVar("_T")
_R = TypeVar("_R")

WORKER_RETRIES = 3
"""How often Ray runs a partition again when its worker process dies (a crash, OOM kill)."""


def on_ray(workspace: Workspace | None = None) -> bool:
    """Whether partitioned work fans out on Ray: the engine says so and Ray is connected."""
    ws = workspace or current_workspace()
    if ws.engine == "local":
        return False
    try:
        import ray
    except ImportError:
        return False
    return bool(ray.is_initialized())


def ray_cpus() -> int:
    """The CPUs of the Ray cluster this process is connected to (at least 1)."""
    ray: Any = importlib.import_module("ray")
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def map_partitions(
    fn: Callable[[_T], _R],
    items: Sequence[_T],
    *,
    name: str,
    workspace: Workspace | None = None,
) -> list[_R]:
    """``[fn(item) for item in items]``, as Ray tasks when ``on_ray()``; in item order.

    ``fn`` runs with ``workspace`` (the current one by default) as its workspace, so
    artifacts it writes and records it makes land where the step's would. ``name``
    names the tasks (``loopline:NAME[i]``) in Ray's tools and process titles.

    Called inside a Ray task (a step on the ``ray`` engine), the calling process works
    too: it holds a CPU of its own, so Ray tasks take items from the front of the list,
    one per other CPU of the cluster, while the caller takes them from the back until
    none is left. A worker that starts slowly costs the caller nothing, and on a
    one-CPU cluster the caller does the whole list itself.
    """
    ws = workspace or current_workspace()
    if len(items) < 2 or not on_ray(ws):
        with use_workspace(ws):
            return [fn(item) for item in items]
    import ray

    frames_as_arrow()
    return _Fanout(ray, fn, items, name, ws).run()


class _Fanout:
    """One ``map_partitions`` on Ray: items out to tasks (and to the caller), results in."""

    def __init__(
        self, ray: Any, fn: Callable[[Any], Any], items: Sequence[Any], name: str, ws: Workspace
    ) -> None:
        self.ray, self.fn, self.items, self.name, self.ws = ray, fn, items, name, ws
        self.remote = ray.remote(
            num_cpus=1,
            max_retries=WORKER_RETRIES,
            retry_exceptions=False,
        )(_partition)
        # A driver holds no CPU of the cluster, and may be a laptop: it only waits.
        self.helping = ray.get_runtime_context().get_task_id() is not None
        self.slots = ray_cpus() - 1 if self.helping else len(items)
        self.todo = collections.deque(range(len(items)))
        self.running: dict[Any, int] = {}

    def run(self) -> list[Any]:
        results: dict[int, Any] = {}
        try:
            self._top_up()
            while self.todo or self.running:
                if self.helping and self.todo:
                    index = self.todo.pop()
                    with use_workspace(self.ws):
                        results[index] = self.fn(self.items[index])
                    ready = self._ready(timeout=0)
                else:
                    ready = self._ready(timeout=None)
                for ref in ready:
                    failed, value = self.ray.get(ref)
                    if failed:
                        raise _error(value)
                    results[self.running.pop(ref)] = value
                self._top_up()
        except BaseException:
            for ref in self.running:
                self.ray.cancel(ref)
            raise
        return [results[index] for index in range(len(self.items))]

    def _top_up(self) -> None:
        while self.todo and len(self.running) < self.slots:
            index = self.todo.popleft()
            ref = self.remote.options(name=f"loopline:{self.name}[{index}]").remote(
                self.fn, self.items[index], self.ws
            )
            self.running[ref] = index

    def _ready(self, *, timeout: float | None) -> list[Any]:
        if not self.running:
            return []
        pending = list(self.running)
        ready, _ = self.ray.wait(
            pending, num_returns=len(pending) if timeout == 0 else 1, timeout=timeout
        )
        return list(ready)


def _partition(fn: Callable[[Any], Any], item: Any, ws: Workspace) -> tuple[bool, Any]:
    """One partition on a Ray worker: ``(failed, value or pickled exception)``."""
    frames_as_arrow()
    try:
        with use_workspace(ws):
            return False, fn(item)
    except Exception as exc:
        try:
            return True, pickle.dumps(exc)
        except Exception:  # an exception that does not pickle: keep its text
            return True, pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))


_ARROW_REGISTERED = False


def frames_as_arrow() -> None:
    """Have Ray serialize Polars frames in this process as Arrow tables (once per process).

    Ray's serializer for Arrow hands the column buffers to the object store as they are;
    the frame's own pickle would encode them into one byte string first. A frame with an
    ``Object`` column, which neither can hold, is refused with a ``TypeError``.
    """
    global _ARROW_REGISTERED
    if _ARROW_REGISTERED:
        return
    import polars as pl
    import ray.util

    ray.util.register_serializer(pl.DataFrame, serializer=_frame_out, deserializer=_frame_in)
    _ARROW_REGISTERED = True


def _frame_out(frame: Any) -> Any:
    import polars as pl

    objects = [name for name, dtype in frame.schema.items() if dtype == pl.Object]
    if objects:
        # Arrow would hold them as raw pointers, and Polars cannot pickle them either; an
        # error raised here would be lost in Ray's fallbacks, so the receiver raises it.
        return (
            f"A Polars frame with Object column(s) {objects} cannot travel between Ray "
            "processes; cast them to a Polars type (a string, a struct) first."
        )
    return frame.to_arrow()


def _frame_in(table: Any) -> Any:
    import polars as pl

    if isinstance(table, str):
        raise TypeError(table)
    return pl.from_arrow(table, rechunk=False)


def _error(data: bytes) -> BaseException:
    exc = pickle.loads(data)
    return exc if isinstance(exc, BaseException) else RuntimeError(repr(exc))
