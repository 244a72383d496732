"""``loopline serve``: load the models once, then answer on uvicorn, in one or more workers.

With ``workers > 1`` the parent process loads every model, binds the socket, and forks
the workers, which share the loaded models (copy-on-write) and the listening socket;
the kernel spreads connections between them. Loading once matters: a bundle can take
seconds and hundreds of megabytes, and N workers loading N copies would take N times
both. Each worker opens its own database connections and online-store client after
the fork.

Every accepted connection gets ``TCP_NODELAY``: without it, a small response can wait
for the client's delayed ACK, about 40 ms a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loopline.config import Settings
from loopline.data.workspace import Workspace, after_fork
from loopline.errors import ServingError
from loopline.features.definition import OnDemand, View, definitions_in
from loopline.registry import Registry
from loopline.serve.app import DEFAULT_MAX_BODY_BYTES, Batching, create_app
from loopline.serve.cache import open_cache
from loopline.serve.predlog import PredictionLog
from loopline.serve.repository import ModelRepository, ServedModel, specs_of
from loopline.serve.rollout import Rollout
from loopline.store.online import open_online_store

__all__ = ["check_feature_versions", "load_views", "serve"]

log = logging.getLogger("loopline.serve")


def load_views(source: str) -> list[View | OnDemand]:
    """The feature definitions in a ``.py`` file or module (``loopline features`` reads
    the same)."""
    from loopline.pipeline.dag import import_source

    return definitions_in(vars(import_source(source)), source=source)


def check_feature_versions(model: ServedModel, views: Sequence[View | OnDemand]) -> None:
    """Refuse to serve a model with feature definitions other than the ones it learned from.

    A view the model's registry version names (``view@sha256``) must have the same
    version in ``views``; otherwise served features would differ from training features.
    """
    trained = dict(ref.split("@", 1) for ref in model.features if "@" in ref)
    for view in views:
        want = trained.get(view.name)
        if want is not None and want != view.version:
            raise ServingError(
                f"Model {model.name!r} version {model.version} was trained on feature view "
                f"{view.name!r} version {want[:12]}, but the definitions given have version "
                f"{view.version[:12]}. Serve it with the definitions it was trained on, or "
                f"retrain it on these.",
                model=model.name,
                view=view.name,
            )


def _protocol() -> type[Any]:
    """uvicorn's httptools protocol, setting TCP_NODELAY on every accepted connection."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class NoDelay(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)

    return NoDelay


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServingError(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Choose another --port, or "
            f"stop what uses this one."
        ) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    models: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
    features: str | None = None,
    online_url: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    refresh_seconds: float | None = 2.0,
    settings: Settings | None = None,
    log_level: str = "warning",
    ready_file: Path | None = None,
    allow_unknown: Sequence[str] = (),
    api_keys: Sequence[str] = (),
    rollout: Mapping[str, Any] | None = None,
    prediction_log: str | None = "",
    cache_size: int = 10_000,
    cache_url: str | None = None,
    cache_ttl: float = 3600.0,
    batch_max: int = 1,
    batch_wait_ms: float = 0.0,
) -> None:
    """Serve ``models`` (``NAME``, ``NAME@ALIAS`` or ``NAME@VERSION``) until interrupted.

    ``features`` names the feature definitions ``/predict`` reads (a ``.py`` file or
    module), from ``online_url`` (the configured online store by default).
    ``ready_file``, when given, is written once the server listens (for scripts).
    ``allow_unknown`` names the entities ``/predict`` may be asked about although the
    online store never held them (their features are then missing). ``api_keys``, when
    given, guard the prediction and admin routes. ``rollout`` (``Rollout.from_config``
    settings) applies to the first model. ``prediction_log`` is where predictions are
    logged: ``""`` for ``<artifact_url>/predictions``, None for nowhere.
    ``cache_size`` entries of in-process prediction cache (0: none), or Redis at
    ``cache_url`` with entries living ``cache_ttl`` seconds. ``batch_max`` > 1 turns on
    micro-batching of concurrent requests, waiting at most ``batch_wait_ms``.
    """
    import uvicorn

    if workers < 1:
        raise ServingError(f"--workers must be at least 1. Got {workers}.")
    batching = Batching(batch_max, batch_wait_ms) if batch_max > 1 else None
    open_cache(cache_size, cache_url, cache_ttl)  # refuses bad settings before the fork
    settings = settings or Settings.load()
    registry = Registry(Workspace(settings.metadata_url, settings.artifact_url))
    repository = ModelRepository(registry, specs_of(models))
    repository.load()
    rollouts = {}
    if rollout:
        first = repository.names[0]
        rollouts[first] = Rollout.from_config(registry, first, rollout)
        for side in rollouts[first].repositories():
            side.load()
    views = load_views(features) if features else None
    if views:
        for model in repository.loaded():
            check_feature_versions(model, views)
        entities = {v.entity.name for v in views if not isinstance(v, OnDemand)}
        strange = sorted(set(allow_unknown) - entities)
        if strange:
            raise ServingError(
                f"--allow-unknown names {strange[0]!r}, which is not an entity of the feature "
                f"definitions; they have: {', '.join(sorted(entities))}."
            )
    url = online_url or settings.online_url or f"sqlite:///{settings.home / 'online.db'}"
    # What is loaded now (models, libraries) lives as long as the server: out of the
    # garbage collector's sight, a full collection scans only what requests made (tens of
    # milliseconds less each), and forked workers do not copy pages by touching it.
    gc.collect()
    gc.freeze()
    sock = _bind(host, port)
    try:
        loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
        shown = ", ".join(f"{m.name}@{m.version}" for m in repository.loaded())
        where = f"{host}:{sock.getsockname()[1]}"
        print(f"Serving {shown} on http://{where} ({workers} worker(s))", flush=True)
        if ready_file is not None:
            ready_file.write_text(f"{where}\n")

        log_url = (
            f"{settings.artifact_url.rstrip('/')}/predictions"
            if prediction_log == ""
            else prediction_log
        )

        metrics_dir = None if workers == 1 else tempfile.mkdtemp(prefix="loopline-metrics-")

        def run() -> None:
            if metrics_dir is not None:
                _multiprocess_metrics(metrics_dir)
            # Made here, after the fork: each worker has its own writer thread.
            predictions = None if log_url is None else PredictionLog(log_url)
            cache = open_cache(cache_size, cache_url, cache_ttl)
            app = create_app(
                repository,
                views=views,
                online_store=open_online_store(url) if views else None,
                max_body_bytes=max_body_bytes,
                refresh_seconds=refresh_seconds,
                load=False,
                allow_unknown=allow_unknown,
                api_keys=api_keys,
                rollouts=rollouts,
                prediction_log=predictions,
                cache=cache,
                batching=batching,
                metrics_dir=metrics_dir,
            )
            config = uvicorn.Config(
                app,
                loop=loop,
                http=_protocol(),
                lifespan="on",
                access_log=False,
                log_level=log_level,
                timeout_keep_alive=30,
            )
            uvicorn.Server(config).run(sockets=[sock])

        if workers == 1:
            run()
            return
        try:
            _fork_workers(run, workers)
        finally:
            if metrics_dir is not None:
                shutil.rmtree(metrics_dir, ignore_errors=True)
    finally:
        sock.close()


def _multiprocess_metrics(folder: str) -> None:
    """Switch this worker's metrics to prometheus_client's multi-process mode: values in
    files under ``folder``, added up over every worker when scraped."""
    from prometheus_client import values

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def _fork_workers(run: Any, workers: int) -> None:
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            after_fork()
            code = 0
            try:
                run()
            except BaseException:  # the worker's own failure ends only the worker
                log.exception("worker failed")
                code = 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        children.append(pid)

    def stop(signum: int, frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        while True:
            try:
                os.waitpid(child, 0)
                break
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - retried by Python already
                continue
