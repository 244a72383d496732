"""Executors: where a step's attempts run.

A ``StepTask`` names the pipeline (by its source), the step, the content hashes of its
inputs and its parameters; the step reads its inputs from the artifact store and writes
its output there. Nothing passes through shared memory, so an executor can run a task
in this thread pool, in another process or on a Ray cluster (``ray_executor``). An
executor is anything with ``submit(task) -> Future[StepResult]`` and ``shutdown()``.

Examples
--------
>>> with make_executor("threads", max_workers=2) as executor:
...     type(executor).__name__
'ThreadExecutor'
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

from loopline.data.workspace import Workspace, artifact_store, use_workspace
from loopline.errors import LooplineError, StepTimeoutError
from loopline.pipeline.context import step_context
from loopline.pipeline.dag import load_pipeline
from loopline.pipeline.step import Step
from loopline.store.artifacts import ArtifactStore, StoredArtifact
from loopline.store.metadata import AttemptRecord

__all__ = [
    "Executor",
    "InputRef",
    "ProcessExecutor",
    "StepResult",
    "StepTask",
    "ThreadExecutor",
    "make_executor",
    "run_task",
]


@dataclass(frozen=True)
class InputRef:
    """An upstream output, as a step receives it: stored bytes and how to decode them."""

    artifact_id: str
    content_hash: str
    kind: str


@dataclass(frozen=True)
class StepTask:
    """Everything needed to run one step anywhere: picklable, no live objects but params."""

    pipeline: str
    step: str
    inputs: Mapping[str, InputRef]
    params: Mapping[str, Any]
    artifact_url: str
    metadata_url: str | None = None
    """With ``run_id`` and ``step_id``: the workspace data code in the step records into."""
    run_id: str | None = None
    step_id: str | None = None
    engine: str = "local"
    """The run's engine: where the step's partitioned work fans out."""


@dataclass(frozen=True)
class StepResult:
    status: str
    """``succeeded`` or ``failed``."""
    output: StoredArtifact | None = None
    attempts: tuple[AttemptRecord, ...] = ()
    metrics: tuple[tuple[str, float, int], ...] = ()
    error: str | None = None
    traceback: str | None = field(default=None, repr=False)


class Executor(Protocol):
    def submit(self, task: StepTask) -> Future[StepResult]: ...

    def shutdown(self, *, cancel: bool = False) -> None: ...


class ShutsDown(ABC):
    """``with executor:``: shut down on leaving, cancelling what is queued on an error."""

    @abstractmethod
    def shutdown(self, *, cancel: bool = False) -> None:
        """Wait for the submitted tasks (or, with ``cancel``, drop the queued ones)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown(cancel=exc is not None)


class _PoolExecutor(ShutsDown):
    _pool: ThreadPoolExecutor | ProcessPoolExecutor

    def submit(self, task: StepTask) -> Future[StepResult]:
        return self._pool.submit(run_task, task)

    def shutdown(self, *, cancel: bool = False) -> None:
        # Threads cannot be killed: a cancelled run stops queued steps, not running ones.
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)


class ThreadExecutor(_PoolExecutor):
    """Steps in a thread pool of this process (the default: no start-up cost)."""

    def __init__(self, max_workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="loopline-step")


class ProcessExecutor(_PoolExecutor):
    """Steps in worker processes (``spawn``): for CPU-bound Python that holds the GIL."""

    def __init__(self, max_workers: int = 4) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers, mp_context=multiprocessing.get_context("spawn")
        )


def make_executor(kind: str, max_workers: int, *, engine: str = "local") -> Executor:
    """The executor for the ``engine`` setting; for ``local``, the ``kind`` of pool."""
    if engine == "ray" or engine.startswith("ray://"):
        # Imported here: Ray is an optional extra, and slow to import.
        from loopline.pipeline.ray_executor import RayExecutor

        address = None if engine == "ray" else engine
        return RayExecutor(address=address, num_cpus=max_workers)
    if engine != "local":
        raise LooplineError(
            f"The 'engine' setting must be 'local', 'ray' or 'ray://host:port'. Got {engine!r}."
        )
    if kind == "threads":
        return ThreadExecutor(max_workers)
    if kind == "processes":
        return ProcessExecutor(max_workers)
    raise LooplineError(
        f"The 'executor' setting must be 'threads' or 'processes'. Got {kind!r}.",
    )


def run_task(task: StepTask) -> StepResult:
    """Run a step's attempts: read inputs, call it (retrying), store its output.

    Never raises for a failure of the step itself: the result says what happened, so
    that results cross process boundaries without pickling user exceptions.
    """
    try:
        step = load_pipeline(task.pipeline).steps[task.step]
        store = artifact_store(task.artifact_url)
        kwargs = dict(task.params)
        for arg, ref in task.inputs.items():
            kwargs[arg] = store.get(ref.content_hash, ref.kind)
    except Exception as exc:
        now = time.time()
        error = _describe(exc)
        attempt = AttemptRecord(1, "failed", now, now, error, traceback.format_exc())
        return StepResult("failed", attempts=(attempt,), error=error, traceback=attempt.traceback)
    workspace = (
        Workspace(task.metadata_url, task.artifact_url, task.run_id, task.step_id, task.engine)
        if task.metadata_url
        else None
    )
    return _attempts(step, kwargs, store, workspace)


def _attempts(
    step: Step, kwargs: dict[str, Any], store: ArtifactStore, workspace: Workspace | None
) -> StepResult:
    attempts: list[AttemptRecord] = []
    for number in range(1, step.retries + 2):
        started = time.time()
        try:
            value, metrics = _call_with_timeout(step, kwargs, workspace)
            output = store.put(value)
        except Exception as exc:
            error, tb = _describe(exc), traceback.format_exc()
            attempts.append(AttemptRecord(number, "failed", started, time.time(), error, tb))
            if number <= step.retries and step.is_transient(exc):
                time.sleep(step.delay(number))
                continue
            return StepResult("failed", attempts=tuple(attempts), error=error, traceback=tb)
        attempts.append(AttemptRecord(number, "succeeded", started, time.time()))
        return StepResult("succeeded", output, tuple(attempts), tuple(metrics))
    raise AssertionError("unreachable: the last attempt returns")  # pragma: no cover


def _call(
    step: Step, kwargs: Mapping[str, Any], workspace: Workspace | None
) -> tuple[Any, list[tuple[str, float, int]]]:
    # Set here, in the thread that runs the step: a new thread starts with no context.
    with contextlib.ExitStack() as stack:
        if workspace is not None:
            stack.enter_context(use_workspace(workspace))
        ctx = stack.enter_context(step_context(step.name))
        value = step.fn(**kwargs)
    return value, ctx.metrics


def _call_with_timeout(
    step: Step, kwargs: Mapping[str, Any], workspace: Workspace | None
) -> tuple[Any, list[tuple[str, float, int]]]:
    if step.timeout is None:
        return _call(step, kwargs, workspace)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = _call(step, kwargs, workspace)
        except BaseException as exc:
            box["error"] = exc

    # Python cannot stop a thread: a timed-out attempt is abandoned (a daemon thread
    # that exits with the process) and its result, if it ever comes, is ignored.
    worker = threading.Thread(target=target, name=f"loopline-{step.name}", daemon=True)
    worker.start()
    worker.join(step.timeout)
    if worker.is_alive():
        raise StepTimeoutError(
            f"Step {step.name!r} ran past its timeout of {step.timeout:g} s. Raise "
            f"timeout=... in @step, or find what it waits on.",
            step=step.name,
        )
    if "error" in box:
        raise box["error"]
    result: tuple[Any, list[tuple[str, float, int]]] = box["result"]
    return result


def _describe(exc: BaseException) -> str:
    if isinstance(exc, LooplineError):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
