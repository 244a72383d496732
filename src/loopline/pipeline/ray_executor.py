"""The Ray executor: each step's attempts run as one Ray task (``engine = "ray"``).

A task is ``run_task`` itself: the worker loads the pipeline from its source, reads the
step's inputs from the artifact store, runs its attempts (loopline's own retries and
timeout) and writes its output back there, so only the small ``StepResult`` returns to
the driver. Ray's part of fault tolerance is the worker: a task whose worker process
dies is run again (``max_retries``); an exception is never retried by Ray, since
``run_task`` reports a step's failures in its result instead of raising them.

``engine = "ray"`` starts a Ray cluster on this machine for the run (``max_workers``
CPUs, one per step) and stops it afterwards; ``ray://host:port`` joins a running
cluster through its client server and only disconnects. A Ray connection this process
already has (``ray.init`` called by the caller) is used as it is and left open.

Ray is imported when an executor is made, so loopline imports without it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from loopline.data.parallel import ONE_THREAD
from loopline.errors import ConfigError, PipelineError
from loopline.pipeline.executor import ShutsDown, StepResult, StepTask, run_task

__all__ = ["WORKER_RETRIES", "RayExecutor"]

WORKER_RETRIES = 3
"""How often Ray runs a task again when its worker process dies (a crash, OOM kill)."""


class RayExecutor(ShutsDown):
    """Steps as Ray tasks, on a cluster started here (``address=None``) or joined.

    Parameters
    ----------
    address
        ``None`` for a cluster on this machine, or ``ray://host:port`` to join one.
    num_cpus
        CPUs of a cluster started here (default: every CPU); one step takes one.
    """

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None) -> None:
        self.address = address
        self.num_cpus = num_cpus
        ray = _import_ray()
        self._connected = not ray.is_initialized()
        if self._connected:
            _connect(ray, address, num_cpus)
        self._ray = ray
        # A cluster started here is warmed (see _warm_up), and its step processes import
        # LightGBM beside their first step; a joined cluster's long-lived workers are not
        # made to import anything.
        local = self._connected and address is None
        self._remote = ray.remote(num_cpus=1, max_retries=WORKER_RETRIES, retry_exceptions=False)(
            _step if local else _joined_step
        )
        self._pending: dict[Future[StepResult], Any] = {}
        self._lock = threading.Lock()

    def submit(self, task: StepTask) -> Future[StepResult]:
        ref = self._remote.options(name=f"loopline:{task.step}").remote(task)
        future: Future[StepResult] = ref.future()
        with self._lock:
            self._pending[future] = ref
        future.add_done_callback(self._forget)
        return future

    def shutdown(self, *, cancel: bool = False) -> None:
        with self._lock:
            refs = list(self._pending.values())
        if refs and cancel:
            for ref in refs:
                self._ray.cancel(ref)
        elif refs:
            self._ray.wait(refs, num_returns=len(refs))
        if self._connected:
            # For a cluster started here this stops it; for a joined one it disconnects.
            self._ray.shutdown()
            self._connected = False

    def _forget(self, future: Future[StepResult]) -> None:
        with self._lock:
            self._pending.pop(future, None)


WORKER_PROCESSES = 2
"""Idle worker processes a local cluster keeps, per CPU. Steps and the partitions they
fan out run in processes of two environments (Polars on every CPU, or on one), and a
step waiting for its partitions holds a process while every CPU runs one in another, so
a busy cluster uses more processes than CPUs; Ray's default keeps one per CPU and kills
the others once idle, and the next partitioned step waits seconds for new ones to start
and import loopline."""


def _warm_up(ray: Any, processes: int) -> list[Any]:
    """Have ``processes`` worker processes for partitions and distributed fits (their
    ``ONE_THREAD`` environment), and one for a step, start and import loopline now, in
    the background, rather than when a step's partitions (or a distributed fit) first
    need them (see ``WORKER_PROCESSES``). The tasks take no CPU and overlap (each
    imports for seconds), so each gets a process of its own; the run does not wait for
    them (their references are returned for a caller that does)."""
    warm = ray.remote(num_cpus=0, max_retries=0)(_prepare_worker)
    refs = [warm.options(name="loopline:warm-up").remote()]  # a second step's
    for _ in range(processes):
        refs.append(warm.options(name="loopline:warm-up", runtime_env=ONE_THREAD).remote())
    return refs


def _step(task: StepTask) -> StepResult:
    """A step's task on a cluster started here: ``run_task``, with the model libraries
    imported beside it the first time a process runs one (``_import_in_background``)."""
    _import_in_background()
    return _joined_step(task)


def _joined_step(task: StepTask) -> StepResult:
    """A step's task: ``run_task``, with Arrow's threads as many as Polars'.

    Ray sets ``OMP_NUM_THREADS`` to a task's CPUs (one), which Arrow takes for its own
    pool, so a step's Parquet reads and writes (every frame artifact) ran on one thread
    while Polars ran on every CPU of the node."""
    import polars as pl
    import pyarrow as pa

    pa.set_cpu_count(pl.thread_pool_size())
    return run_task(task)


_IMPORTING: list[threading.Thread] = []


def _import_in_background() -> None:
    """Import LightGBM in a background thread of this process, once.

    The warm-up reaches the processes that are idle when the cluster starts, not the one
    that takes the first step, which then runs every step after it: a training step
    there would import LightGBM (4 s with scikit-learn and SciPy) while its distributed
    fit's workers use every CPU. Imported beside the first step instead, the work lands
    where a CPU is free (the first steps rarely use them all). Only a library that never
    imports loopline, so that it never waits for a module the step is importing.
    """
    if _IMPORTING:
        return
    thread = threading.Thread(target=_import_libraries, name="loopline:imports", daemon=True)
    _IMPORTING.append(thread)
    thread.start()


def _import_libraries() -> None:
    with contextlib.suppress(ImportError):
        importlib.import_module("lightgbm")


def _prepare_worker() -> None:
    """In a Ray worker process: Polars frames as Arrow, and the code partitions and
    distributed fits run imported (loopline's data, features and training, and LightGBM:
    about 6 s on a small machine, which the first partition or fit to reach a fresh
    process would otherwise wait for)."""
    from loopline.data.parallel import frames_as_arrow

    frames_as_arrow()
    for module in ("loopline.data.ingest", "loopline.features", "loopline.train"):
        importlib.import_module(module)
    _import_libraries()


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """``values`` in ``os.environ`` for the block (for processes started in it)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "The 'ray' engine needs Ray: pip install 'loopline[ray]', or set engine = "
            '"local" in loopline.toml (or LOOPLINE_ENGINE=local).',
        ) from exc
    return ray


def _connect(ray: Any, address: str | None, num_cpus: int | None) -> list[Any]:
    """Start a cluster here (``address=None``) or join one; for a cluster started here,
    the references of its warm-up tasks."""
    if address is None:
        cpus = num_cpus or os.cpu_count() or 1
        # A step's process runs Polars on every CPU: what it does apart from its
        # partitions (reading its inputs, splitting them, joining and writing the
        # result) runs while no partition does. Its partitions and distributed fits run
        # on one thread each (ONE_THREAD). Set in the environment the cluster's
        # processes inherit, not as the job's runtime_env: Ray starts a worker per CPU
        # with the cluster, and uses those only for jobs without one.
        with _environment(POLARS_MAX_THREADS=str(cpus)):
            ray.init(
                # "local": a new cluster, even where 'ray start' left one running here.
                address="local",
                num_cpus=cpus,
                include_dashboard=False,
                log_to_driver=False,
                _system_config={"num_workers_soft_limit": WORKER_PROCESSES * cpus},
            )
        return _warm_up(ray, cpus)
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        raise PipelineError(
            f"Cannot join the Ray cluster at {address}: {exc}. Check that it runs ('ray "
            f"status' on its head node) and that its client server listens on that port "
            f"(10001 unless 'ray start --ray-client-server-port' says otherwise).",
        ) from exc
    return []
