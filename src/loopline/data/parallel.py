"""Partitioned work: one function mapped over partitions, here or as Ray tasks.

Data code that splits its work into independent partitions (ingestion's source
partitions, a training set's entity-hash partitions, batch scoring's input files) calls
``map_partitions(fn, items)`` and gets the results in the order of ``items``, whatever
ran where. In a step on the ``ray`` engine the items are Ray tasks (one CPU, Polars
held to that many threads, run again by Ray when its worker process dies), and the
step's own process takes items too or lends its CPU to them (``map_partitions``);
anywhere else the items run one after another in this thread, which keeps memory to
one partition at a time. The function, its items
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

import bisect
import contextlib
import importlib
import pickle
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from loopline.data.workspace import Workspace, current_workspace, use_workspace

__all__ = [
    "ONE_THREAD",
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

ONE_THREAD: dict[str, Any] = {"env_vars": {"POLARS_MAX_THREADS": "1"}}
"""The ``runtime_env`` of a Ray task that holds one CPU and computes: Polars with one
thread there, as Ray gives OpenMP one. A partition, a distributed fit's rank and the
processes warmed for them share it, so they share Ray's worker processes for it; a
step's own process, which holds a CPU but splits and joins the data alone while no
partition runs, keeps the cluster's setting (every CPU of the node on a local cluster)."""


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
    items: Iterable[_T],
    *,
    name: str,
    workspace: Workspace | None = None,
    cost: Callable[[_T], float] | None = None,
) -> list[_R]:
    """``[fn(item) for item in items]``, as Ray tasks when ``on_ray()``; in item order.

    ``fn`` runs with ``workspace`` (the current one by default) as its workspace, so
    artifacts it writes and records it makes land where the step's would. ``name``
    names the tasks (``loopline:NAME[i]``) in Ray's tools and process titles.

    ``items`` may be a generator: on Ray, each item goes out as soon as it is made,
    so Ray tasks compute the first partitions while the caller makes the rest (splits
    the next view's rows, say). Items start in the order they come, or largest
    ``cost(item)`` first among those made when given (the rows a partition holds, say):
    the small ones left for the end even out the CPUs' finishing times.

    Called inside a Ray task (a step on the ``ray`` engine), the calling process holds
    a CPU of its own. Where it runs Polars on one thread (a one-CPU node), it works too:
    once every item is made, Ray tasks take them, one per other CPU of the cluster, and
    the caller the next one, until none is left; on a one-CPU cluster it does the whole
    list itself. Where it runs Polars on more (a step's process on a local cluster
    uses every CPU of the node for the work before and after its partitions), it would
    take CPU from the tasks beside it, so it lends its CPU to one more task instead,
    waiting in ``ray.get``. A frame that several tuple items share (two views'
    partitions of the same rows) goes to Ray's object store once, and stays there until
    the map ends.
    """
    ws = workspace or current_workspace()
    if not on_ray(ws) or (isinstance(items, Sequence) and len(items) < 2):
        with use_workspace(ws):
            return [fn(item) for item in items]
    import ray

    frames_as_arrow()
    return _Fanout(ray, fn, cost, name, ws).run(iter(items))


class _Fanout:
    """One ``map_partitions`` on Ray: items out to tasks (and to the caller), results in.

    The caller makes the items; a feeder thread submits each to a Ray task as soon as a
    CPU is free (one per other CPU of the cluster when the caller holds one, else all),
    and collects finished tasks as they return, so a CPU never waits for the caller's
    own item to end. The first error, the caller's or a task's, stops both; the tasks
    still running are cancelled.
    """

    POLL = 0.05
    """Seconds the feeder waits for a task before it looks for new items or a stop."""

    def __init__(
        self,
        ray: Any,
        fn: Callable[[Any], Any],
        cost: Callable[[Any], float] | None,
        name: str,
        ws: Workspace,
    ) -> None:
        self.ray, self.fn, self.cost, self.name, self.ws = ray, fn, cost, name, ws
        self.remote = ray.remote(
            num_cpus=1,
            max_retries=WORKER_RETRIES,
            retry_exceptions=False,
            runtime_env=ONE_THREAD,
        )(_partition)
        # A driver holds no CPU of the cluster, and may be a laptop: it only waits. A
        # task computes items on one Polars thread, or lends its CPU (map_partitions).
        in_task = ray.get_runtime_context().get_task_id() is not None
        self.helping = in_task and _polars_threads() == 1
        self.lending = in_task and not self.helping
        self.slots = sys.maxsize if not in_task else ray_cpus() - int(self.helping)
        self.items: list[Any] = []  # an item is dropped (None) once it has been sent or run
        self.costs: list[float] = []
        self.todo: list[int] = []  # made, not started: largest cost first
        self.running: dict[Any, int] = {}
        self.results: dict[int, Any] = {}
        self.shared: dict[int, tuple[Any, Any]] = {}  # id(frame) -> (frame, its ref)
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.made = threading.Event()
        self.stop = threading.Event()

    def run(self, items: Iterator[Any]) -> list[Any]:
        feeder = threading.Thread(target=self._feed, name=f"loopline:{self.name}:feed")
        feeder.start()
        try:
            for item in items:
                if self.stop.is_set():
                    break  # a task failed: its error is raised below
                with self.lock:
                    self.items.append(item)
                    self.costs.append(self.cost(item) if self.cost else 0.0)
                    bisect.insort(self.todo, len(self.items) - 1, key=lambda i: -self.costs[i])
            self.made.set()
            if self.lending:
                self._lend(feeder)
            while self.helping and (mine := self._next()) is not None:
                with use_workspace(self.ws):
                    value = self.fn(self._take(mine))
                with self.lock:
                    self.results[mine] = value
        except BaseException as exc:
            self._fail(exc)
        feeder.join()
        self.shared.clear()
        if self.error is not None:
            for ref in self.running:  # any the feeder sent while the error was recorded
                self.ray.cancel(ref)
            raise self.error
        return [self.results[index] for index in range(len(self.items))]

    def _lend(self, feeder: threading.Thread) -> None:
        """Wait for the running tasks in ``ray.get`` until the feeder has collected
        them all: Ray frees the CPU of a task blocked there (not in ``ray.wait``), and
        gives it to the next item. The feeder still collects and sends."""
        waited: set[Any] = set()
        while feeder.is_alive() and not self.stop.is_set():
            with self.lock:
                ref = next((r for r in self.running if r not in waited), None)
            if ref is None:
                feeder.join(self.POLL)
                continue
            waited.add(ref)
            # Without a timeout: a get with one does not free the CPU. A failed map
            # cancels its tasks (_feed), which ends the wait; the feeder has the error.
            with contextlib.suppress(Exception):
                self.ray.get(ref)

    def _next(self) -> int | None:
        """The caller's next item, once every free CPU has one."""
        with self.lock:
            self._top_up()
            if self.stop.is_set() or not self.todo:
                return None
            return self.todo.pop(0)

    def _top_up(self) -> None:
        """Send items to Ray tasks while a CPU is free (with the lock held)."""
        while self.todo and len(self.running) < self.slots:
            index = self.todo.pop(0)
            ref = self.remote.options(name=f"loopline:{self.name}[{index}]").remote(
                self.fn, self._ship(self._take(index)), self.ws
            )
            self.running[ref] = index

    def _ship(self, item: Any) -> Any:
        """``item`` with each frame of a tuple item in the object store once: items that
        share a frame (two views' partitions of the same rows) send it one time."""
        import polars as pl

        if not isinstance(item, tuple):
            return item
        return tuple(self._shared(p) if isinstance(p, pl.DataFrame) else p for p in item)

    def _shared(self, frame: Any) -> _Shared:
        key = id(frame)
        if key not in self.shared:
            # The frame is kept with its reference, so that its id is not reused.
            self.shared[key] = (frame, self.ray.put(frame))
        return _Shared(self.shared[key][1])

    def _take(self, index: int) -> Any:
        item, self.items[index] = self.items[index], None
        return item

    def _feed(self) -> None:
        try:
            while not self.stop.is_set():
                with self.lock:
                    self._top_up()
                    pending = list(self.running)
                    if not pending and self.made.is_set():
                        return  # all sent and collected, or no CPU to send to
                if not pending:
                    self.stop.wait(self.POLL)  # the caller is still making items
                    continue
                ready, _ = self.ray.wait(pending, num_returns=1, timeout=self.POLL)
                for ref in ready:
                    failed, value = self.ray.get(ref)
                    if failed:
                        raise _error(value)
                    with self.lock:
                        self.results[self.running.pop(ref)] = value
        except BaseException as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        """Keep the first error, stop both threads and cancel the running tasks (which
        also wakes a caller waiting on one in ``_lend``)."""
        with self.lock:
            self.error = self.error or exc
            running = list(self.running)
        self.stop.set()
        for ref in running:
            self.ray.cancel(ref)


class _Shared:
    """A frame of an item, in Ray's object store (see ``_Fanout._ship``)."""

    __slots__ = ("ref",)

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def get(self) -> Any:
        ray: Any = importlib.import_module("ray")
        return ray.get(self.ref)


def _polars_threads() -> int:
    """The threads of this process's Polars pool (fixed when Polars starts)."""
    import polars as pl

    return int(pl.thread_pool_size())


def _partition(fn: Callable[[Any], Any], item: Any, ws: Workspace) -> tuple[bool, Any]:
    """One partition on a Ray worker: ``(failed, value or pickled exception)``."""
    frames_as_arrow()
    if isinstance(item, tuple):
        item = tuple(part.get() if isinstance(part, _Shared) else part for part in item)
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
