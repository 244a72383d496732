"""The ASGI app: Open Inference Protocol v2 REST, ``/predict`` with online features, metrics.

Routes (``create_app``):

- ``GET /v2/health/live``, ``GET /v2/health/ready``: liveness, and readiness (every
  served model loaded; 503 with Retry-After until then).
- ``GET /v2``: server metadata. ``GET /v2/models/{name}[/versions/{v}]``: model metadata
  (its inputs, one per feature, and its output). ``GET .../ready``.
- ``POST /v2/models/{name}[/versions/{v}]/infer``: inference with named tensors, one
  input per feature, JSON or the binary tensor extension (``loopline.serve.protocol``).
- ``POST /predict``: a JSON object, or a list of them, holding entity keys and request
  fields; the server reads the model's features from the online store, computes the
  on-demand ones and answers the predictions with the model name and version and a
  request id. ``?model=NAME`` picks a model, ``?at=ISO-8601`` the time the features
  are read as of (now by default).
- ``GET /metrics``: Prometheus metrics. ``GET /openapi.json``: this API's description.

Every error is a JSON ``{"error": "..."}`` with a 4xx status (503 with Retry-After
while a model loads); a request never gets a 500 for what it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from loopline import __version__
from loopline.errors import (
    AuthError,
    FeatureError,
    LooplineError,
    ModelFailedError,
    ModelNotFoundError,
    ModelNotReadyError,
    OnlineStoreError,
    ProtocolError,
    TrainingError,
    UnknownEntityError,
)
from loopline.features.definition import OnDemand, View
from loopline.serve.batching import Batching, MicroBatcher
from loopline.serve.cache import MAX_ROWS as CACHE_MAX_ROWS
from loopline.serve.cache import PredictionCache, PredictionCacheCollector, cache_key
from loopline.serve.metrics import CONTENT_TYPE_LATEST, ServerMetrics
from loopline.serve.openapi import openapi_document
from loopline.serve.predlog import PredictionLog, PredictionLogCollector, RowFeatures
from loopline.serve.protocol import (
    InferRequest,
    Tensor,
    TensorSpec,
    decodes_as_itself,
    encode_infer_response,
    error_body,
    metadata_model,
    metadata_server,
    parse_infer_request,
)
from loopline.serve.repository import ModelRepository, ServedModel
from loopline.serve.rollout import Rollout
from loopline.store.online import OnlineStore

__all__ = ["DEFAULT_MAX_BODY_BYTES", "Batching", "ServingApp", "create_app"]

log = logging.getLogger("loopline.serve")

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
"""Requests with a larger body get 413."""

_JSON = "application/json"
_JSON_HEADER = (b"content-type", b"application/json")
_THREADPOOL_ROWS = 2048  # larger batches are predicted off the event loop
_END_OF_TIME = datetime(9999, 12, 31, tzinfo=UTC)
_FEW_VALUES = 16  # a tensor this small is handed on as a list (see Preprocessor)
Handler = Callable[[Request], Awaitable[Response]]
_Encoded = tuple[np.ndarray, Mapping[str, Sequence[Any]], int]
"""A request's rows for one model: the encoded matrix (1-D for one row), the feature
columns as the model saw them (for the prediction log) and the row count."""
_Answer = tuple[bytes, list[tuple[bytes, bytes]], Callable[[], None] | None]
"""A prediction route's answer: the body, its headers, and what to run after sending."""


class _Call:
    """A request to a prediction route, read straight off the ASGI scope."""

    __slots__ = ("_headers", "model", "params", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive, params: Mapping[str, str]) -> None:
        self.scope = scope
        self.receive = receive
        self.params = params
        self.model = ("", "")  # (name, version) for the latency metric, once known
        self._headers: dict[str, str] | None = None

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (lower case), or None."""
        headers = self._headers
        if headers is None:
            headers = self._headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.scope["headers"]
            }
        return headers.get(name)

    def query(self) -> dict[str, str]:
        """The query parameters (the last of a repeated one)."""
        raw = self.scope.get("query_string", b"")
        return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True)) if raw else {}

    async def body(self, limit: int) -> bytes:
        """The whole body; 413 beyond ``limit`` bytes."""
        return await _read_body(self.header("content-length"), self._chunks(), limit)

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ProtocolError("The client closed the connection before the body ended.")
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return


HotHandler = Callable[[_Call], Awaitable[_Answer]]
HotRoute = Callable[[_Call, Send], Awaitable[None]]


class _HotEndpoint:
    """A prediction route as an ASGI app: Starlette routes to it with the path's
    parameters, and ``ServingApp`` calls it directly."""

    def __init__(self, answer: HotRoute) -> None:
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.answer(_Call(scope, receive, scope.get("path_params", {})), send)


class ServingApp:
    """The serving ASGI app: ``POST /predict`` and ``POST .../infer`` straight to their
    handlers, everything else through Starlette.

    Starlette's routing tries each route's pattern in turn and wraps every request and
    response in objects; for the two prediction routes that is a third of a request's
    time. The Starlette app (``app``) still has them, for the other methods' 405s and
    for anyone who mounts it.
    """

    def __init__(self, app: Starlette, predict: _HotEndpoint, infer: _HotEndpoint) -> None:
        self.app = app
        self.state = app.state
        self._predict = predict.answer
        self._infer = infer.answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path == "/predict":
                await self._predict(_Call(scope, receive, {}), send)
                return
            if path.endswith("/infer") and path.startswith("/v2/models/"):
                params = _infer_params(path)
                if params is not None:
                    await self._infer(_Call(scope, receive, params), send)
                    return
        await self.app(scope, receive, send)


def _infer_params(path: str) -> dict[str, str] | None:
    """``{name[, version]}`` of ``/v2/models/{name}[/versions/{version}]/infer``."""
    parts = path[len("/v2/models/") : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return {"name": parts[0]}
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return {"name": parts[0], "version": parts[2]}
    return None


async def _read_body(declared: str | None, chunks: AsyncIterator[bytes], limit: int) -> bytes:
    if declared is not None and _is_count(declared) and int(declared) > limit:
        raise _too_large(int(declared), limit)
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class _Server:
    """What the route handlers share: models, features, metrics, limits."""

    def __init__(
        self,
        repository: ModelRepository,
        *,
        views: Sequence[View | OnDemand] | None,
        online: OnlineStore | None,
        max_body_bytes: int,
        allow_unknown: Collection[str] = (),
        api_keys: Collection[str] = (),
        rollouts: Mapping[str, Rollout] | None = None,
        prediction_log: PredictionLog | None = None,
        cache: PredictionCache | None = None,
        batching: Batching | None = None,
        metrics_dir: str | None = None,
    ) -> None:
        self.repository = repository
        self.cache = cache
        self.batching = batching
        self.prediction_log = prediction_log
        self.allow_unknown = frozenset(allow_unknown)
        self.api_keys = tuple(k.encode() for k in api_keys if k)
        self.rollouts: dict[str, Rollout] = dict(rollouts or {})
        self.views = list(views) if views else None
        self.online = online
        self.max_body_bytes = int(max_body_bytes)
        self.metrics = ServerMetrics(metrics_dir)
        self.default = repository.names[0]
        self._counters: dict[tuple[str, int, str], tuple[Any, Any]] = {}
        self._batch_sizes: dict[str, Callable[[int], None]] = {}
        self._batchers: dict[tuple[str, int], MicroBatcher] = {}
        self._published: set[tuple[str, str, str]] = set()

    # -- plumbing ---------------------------------------------------------------------------

    def route(self, name: str, handler: Handler, *, guarded: bool = False) -> Handler:
        """Wrap a Starlette ``handler``: time it, turn every error into a JSON answer, and,
        when it is ``guarded`` and API keys are configured, require one."""
        latency, errors = self.metrics.latency, self.metrics.errors
        timers: dict[tuple[str, str], Any] = {}  # labelled children, looked up once
        check = guarded and bool(self.api_keys)

        async def answer(request: Request) -> Response:
            start = time.perf_counter()
            request.state.model = ("", "")
            try:
                if check:
                    self.authorize(request.headers.get)
                response = await handler(request)
            except Exception as exc:  # every error becomes an answer
                response = _error_response(exc)
                errors.labels(name, str(response.status_code), _kind(exc)).inc()
            key = request.state.model
            timer = timers.get(key)
            if timer is None:
                timer = timers[key] = latency.labels(name, *key)
            timer.observe(time.perf_counter() - start)
            return response

        return answer

    def hot(self, name: str, handler: HotHandler) -> HotRoute:
        """``route`` for a prediction route answered on raw ASGI (see ``ServingApp``):
        the same timing, errors and keys, without Starlette's request and response."""
        latency, errors = self.metrics.latency, self.metrics.errors
        timers: dict[tuple[str, str], Any] = {}
        check = bool(self.api_keys)

        async def answer(call: _Call, send: Send) -> None:
            start = time.perf_counter()
            after = None
            try:
                if check:
                    self.authorize(call.header)
                body, headers, after = await handler(call)
                status = 200
            except Exception as exc:  # every error becomes an answer
                status, body, headers = _error_parts(exc)
                errors.labels(name, str(status), _kind(exc)).inc()
            key = call.model
            timer = timers.get(key)
            if timer is None:
                timer = timers[key] = latency.labels(name, *key)
            timer.observe(time.perf_counter() - start)
            headers.append((b"content-length", b"%d" % len(body)))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            if after is not None:  # the shadow's copy, once the answer is out
                await run_in_threadpool(after)

        return answer

    def authorize(self, header: Callable[[str], str | None]) -> None:
        """Accept ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` with a configured key."""
        sent = header("x-api-key")
        if sent is None:
            scheme, _, token = (header("authorization") or "").partition(" ")
            sent = token.strip() if scheme.lower() == "bearer" else None
        if sent is None:
            raise AuthError("This server requires an API key: send 'Authorization: Bearer KEY'.")
        given = sent.encode()
        if not any(hmac.compare_digest(given, key) for key in self.api_keys):
            raise AuthError("The API key is not valid for this server.")

    async def body(self, request: Request) -> bytes:
        return await _read_body(
            request.headers.get("content-length"), request.stream(), self.max_body_bytes
        )

    def predicted(self, model: ServedModel, rows: int, role: str) -> None:
        """Count a request's predictions and the role its model answered in."""
        key = (model.name, model.version, role)
        counters = self._counters.get(key)
        if counters is None:  # labelled children, looked up once per key
            version = str(model.version)
            counters = self._counters[key] = (
                self.metrics.predictions.labels(model.name, version),
                self.metrics.routed.labels(model.name, version, role),
            )
        counters[0].inc(rows)
        counters[1].inc()

    def batched(self, model: str) -> Callable[[int], None]:
        """Observe the rows of one model call of ``model`` (the batch-size histogram)."""
        observe = self._batch_sizes.get(model)
        if observe is None:
            observe = self._batch_sizes[model] = self.metrics.batch_size.labels(model).observe
        return observe

    def publish_models(self) -> None:
        """Set ``loopline_model_loaded``: 1 for each loaded version, 0 for those gone."""
        gauge = self.metrics.loaded
        status = self.repository.status()
        now = {
            (m.name, str(m.version), "true" if status.get(m.name) == m.version else "false")
            for m in self.repository.loaded()
        }
        for labels in self._published - now:
            gauge.labels(*labels).set(0)
        for labels in now:
            gauge.labels(*labels).set(1)
        self._published |= now

    # -- health and metadata ----------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        return _json({"live": True})

    async def ready(self, request: Request) -> Response:
        if not self.repository.ready():
            raise ModelNotReadyError("The server is loading its models; retry shortly.")
        return _json({"ready": True})

    async def server_metadata(self, request: Request) -> Response:
        return _json(metadata_server(name="loopline", version=__version__))

    def _model(self, request: Request) -> ServedModel:
        params = request.path_params
        model = self.repository.get(params["name"], params.get("version"))
        request.state.model = (model.name, str(model.version))
        return model

    async def model_metadata(self, request: Request) -> Response:
        model = self._model(request)
        return _json(
            metadata_model(
                model.name,
                versions=[str(model.version)],
                platform=f"loopline_{model.bundle.model.kind}",
                inputs=[TensorSpec(name, datatype, (-1,)) for name, datatype in model.inputs()],
                outputs=[TensorSpec(model.output, "FP64", (-1,))],
            )
        )

    async def model_ready(self, request: Request) -> Response:
        model = self._model(request)
        return _json({"name": model.name, "version": str(model.version), "ready": True})

    # -- inference --------------------------------------------------------------------------

    async def infer(self, call: _Call) -> _Answer:
        params = call.params
        name, version = params["name"], params.get("version")
        main = self.repository.get(name, version)
        call.model = (main.name, str(main.version))
        body = await call.body(self.max_body_bytes)
        header = call.header("inference-header-content-length")
        if header is not None and not _is_count(header):
            raise ProtocolError(
                f"The Inference-Header-Content-Length header must be a byte count. Got {header!r}."
            )
        rollout = self.rollouts.get(name) if version is None else None
        one = _one_row(body, main.input_types) if header is None and rollout is None else None
        if one is not None:  # one JSON value per feature: no tensors to build
            sent_id, row = one

            request_id = sent_id or _request_id()
            model, predictions, _ = await self._answer(
                main, None, "", _row_encoder(row), request_id
            )
            output = Tensor(model.output, "FP64", (1,), predictions)
            content, headers = encode_infer_response(
                model_name=model.name,
                model_version=str(model.version),
                outputs=[output],
                id=sent_id,
            )
            return content, [(b"content-type", headers["content-type"].encode())], None
        length = None if header is None else int(header.strip())
        parsed = parse_infer_request(body, header_length=length)
        request_id = parsed.id or _request_id()
        key = _infer_key(call.header, parsed, rollout, request_id)

        def encode(model: ServedModel) -> _Encoded:
            columns, rows = _columns(model, parsed)
            return model.bundle.preprocessor.transform_columns(columns), columns, rows

        model, predictions, role = await self._answer(main, rollout, key, encode, request_id)
        rows = len(predictions)
        output = Tensor(model.output, "FP64", (rows,), predictions)
        content, headers = encode_infer_response(
            model_name=model.name,
            model_version=str(model.version),
            outputs=[output],
            request=parsed,
            id=parsed.id,
            parameters=None if role == "main" else {"loopline_route": role},
        )
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        return content, raw, self._shadow(rollout, encode)

    async def predict(self, call: _Call) -> _Answer:
        query = call.query()
        name, version = query.get("model") or self.default, query.get("version")
        main = self.repository.get(name, version)
        call.model = (main.name, str(main.version))
        at = _instant(query.get("at"))
        rows = _rows(await call.body(self.max_body_bytes))
        request_id = call.header("x-request-id") or _request_id()
        rollout = self.rollouts.get(name) if version is None else None
        key = _predict_key(call.header, rows, rollout, request_id)
        encode: Callable[[ServedModel], _Encoded]
        if len(rows) == 1:  # one row: the request's fields, and its online features
            row = rows[0]
            if self.views is not None:
                row = {name: values[0] for name, values in (await self._features(rows, at)).items()}
            encode = _row_encoder(row)
        else:
            frame = await self._request_frame(rows, at)

            def encode(model: ServedModel) -> _Encoded:
                features = model.bundle.features
                columns = {n: frame[n] for n in features if n in frame}
                matrix = model.bundle.preprocessor.transform_columns(columns)
                return matrix, columns, len(rows)

        model, predictions, role = await self._answer(main, rollout, key, encode, request_id)
        answer: dict[str, Any] = {
            "request_id": request_id,
            "model": model.name,
            "version": model.version,
            "predictions": predictions.tolist(),
        }
        if role != "main":
            answer["route"] = role
        return orjson.dumps(answer), [_JSON_HEADER], self._shadow(rollout, encode)

    async def _answer(
        self,
        main: ServedModel,
        rollout: Rollout | None,
        key: str,
        encode: Callable[[ServedModel], _Encoded],
        request_id: str,
    ) -> tuple[ServedModel, np.ndarray, str]:
        """Predict with the canary or the main model (or the cache); on a model failure,
        the fallback.

        Bad input (a missing feature, a value of the wrong type) raises as it is: a
        fallback is for a model that fails, not for a request that is wrong.
        """
        chosen = rollout.choose(key) if rollout is not None else None
        model, role = (chosen, "canary") if chosen is not None else (main, "main")
        matrix, features, rows = encode(model)
        cache = self.cache if rows <= CACHE_MAX_ROWS else None
        predictions = None
        if cache is not None:
            stored = cache_key(model.name, model.version, matrix)
            predictions = await cache.get(stored)
        if predictions is None:
            timeout = None if rollout is None else rollout.timeout_ms
            try:
                predictions = await self._call(model, matrix, rows, timeout)
            except (TrainingError, FeatureError, ProtocolError):
                raise
            except Exception as exc:  # the model failed or ran out of time
                reason = "timeout" if isinstance(exc, TimeoutError) else "error"
                self.metrics.fallbacks.labels(main.name, reason).inc()
                log.warning(
                    "model %s version %s failed (%s): %r", model.name, model.version, reason, exc
                )
                model, predictions = self._fallback(main, rollout, encode, rows, exc)
                role = "fallback"
                if model is not (chosen or main):  # the previous version: its own features
                    features = encode(model)[1]
                cache = None  # a fallback's answer is not the model's
            if cache is not None:
                await cache.put(stored, predictions)
        self.predicted(model, rows, role)
        if self.prediction_log is not None:  # a queue append: never blocks, never raises
            self.prediction_log.log(
                request_id=request_id,
                model=model.name,
                version=model.version,
                features=features,
                outputs=predictions,
            )
        return model, predictions, role

    async def _call(
        self, model: ServedModel, matrix: np.ndarray, rows: int, timeout_ms: float | None
    ) -> np.ndarray:
        """The model's predictions of the encoded ``matrix`` (1-D for one row)."""
        adapter = model.bundle.model
        if timeout_ms is not None:
            self.batched(model.name)(rows)
            call = run_in_threadpool(adapter.predict_encoded, _two_d(matrix))
            return await asyncio.wait_for(call, timeout_ms / 1000)
        batcher = self._batcher(model) if self.batching is not None else None
        if batcher is not None and rows < batcher.max_batch:
            return await batcher.predict(_two_d(matrix))
        self.batched(model.name)(rows)
        if matrix.ndim == 1:
            return np.array([adapter.predict_row(matrix)], dtype=np.float64)
        if rows >= _THREADPOOL_ROWS:
            return await run_in_threadpool(adapter.predict_encoded, matrix)
        return adapter.predict_encoded(matrix)

    def _batcher(self, model: ServedModel) -> MicroBatcher:
        key = (model.name, model.version)
        batcher = self._batchers.get(key)
        if batcher is None:
            assert self.batching is not None
            adapter = model.bundle.model
            batcher = self._batchers[key] = MicroBatcher(
                adapter.predict_encoded,
                adapter.predict_row,
                self.batching,
                on_batch=self.batched(model.name),
            )
            live = {(m.name, m.version) for m in self.repository.loaded()}
            for old in [k for k in self._batchers if k not in live and k != key]:
                del self._batchers[old]  # a version no longer served
        return batcher

    def _fallback(
        self,
        main: ServedModel,
        rollout: Rollout | None,
        encode: Callable[[ServedModel], _Encoded],
        rows: int,
        error: BaseException,
    ) -> tuple[ServedModel, np.ndarray]:
        fallback = None if rollout is None else rollout.fallback
        if fallback == "previous":
            previous = self.repository.previous(main.name)
            if previous is not None:
                matrix = _two_d(encode(previous)[0])
                return previous, previous.bundle.model.predict_encoded(matrix)
        elif isinstance(fallback, float):
            return main, np.full(rows, fallback, dtype=np.float64)
        raise ModelFailedError(
            f"Model {main.name!r} failed to answer ({type(error).__name__}) and has no "
            f"fallback{' version loaded' if fallback == 'previous' else ''}; retry shortly.",
            model=main.name,
        ) from error

    def _shadow(
        self, rollout: Rollout | None, encode: Callable[[ServedModel], _Encoded]
    ) -> Callable[[], None] | None:
        """The shadow's copy of the request, run after the answer has gone out."""
        shadow = None if rollout is None else rollout.shadow_model()
        if shadow is None:
            return None

        def score() -> None:
            try:
                matrix, _, rows = encode(shadow)
                shadow.bundle.model.predict_encoded(_two_d(matrix))
            except Exception as exc:  # a shadow never affects the request
                self.metrics.shadow_errors.labels(shadow.name, type(exc).__name__).inc()
                return
            self.metrics.shadow_predictions.labels(shadow.name, str(shadow.version)).inc(rows)

        return score

    async def _request_frame(
        self, rows: list[dict[str, Any]], at: datetime | None
    ) -> Mapping[str, list[Any]]:
        """The request's columns, with the online features when the server has views."""
        if self.views is None:
            sent = set(rows[0]) if len(rows) == 1 else set().union(*rows)
            return {name: [row.get(name) for row in rows] for name in sent}
        return await self._features(rows, at)

    async def _features(
        self, rows: list[dict[str, Any]], at: datetime | None
    ) -> Mapping[str, list[Any]]:
        from loopline.features.materialize import online_feature_columns

        assert self.views is not None
        start = time.perf_counter()
        columns = online_feature_columns(self.views, rows, at=at, store=self.online)
        self.metrics.feature_lookup.observe(time.perf_counter() - start)
        self._check_known(rows, columns)
        return columns

    def _check_known(self, rows: list[dict[str, Any]], columns: Mapping[str, list[Any]]) -> None:
        """Refuse a request for an entity the online store has never held (404).

        A row whose features of a view are all missing is either expired (older than the
        view's TTL, or newer than ``at``) or unknown; the store is asked again without
        time bounds to tell which. Entities named in ``allow_unknown`` are let through
        with their features missing.
        """
        assert self.views is not None
        assert self.online is not None
        for view in self.views:
            if isinstance(view, OnDemand) or view.entity.name in self.allow_unknown:
                continue
            blank = [
                i
                for i in range(len(rows))
                if all(columns[name][i] is None for name in view.feature_names)
            ]
            if not blank:
                continue
            keys = [tuple(rows[i].get(k) for k in view.keys) for i in blank]
            ever = self.online.read(view.name, keys, features=view.feature_names, at=_END_OF_TIME)
            for key, found in zip(keys, ever, strict=True):
                if found is None:
                    shown = ", ".join(f"{k}={v!r}" for k, v in zip(view.keys, key, strict=True))
                    raise UnknownEntityError(
                        f"Unknown {view.entity.name}: {shown}. The online store has no row of "
                        f"view {view.name!r} for it; check the key, materialize the view "
                        f"('loopline materialize'), or serve with --allow-unknown "
                        f"{view.entity.name} to predict with its features missing.",
                        entity=view.entity.name,
                        view=view.name,
                    )

    # -- admin ------------------------------------------------------------------------------

    async def reload(self, request: Request) -> Response:
        """Ask the registry now where every followed alias points (as the poll does)."""
        switched = await run_in_threadpool(self.refresh)
        return _json({"switched": [{"model": n, "from": a, "to": b} for n, a, b in switched]})

    def refresh(self) -> list[tuple[str, int | None, int]]:
        switched = self.repository.refresh()
        for rollout in list(self.rollouts.values()):
            for repository in rollout.repositories():
                switched += repository.refresh() if repository.ready() else []
        for name, _old, _new in switched:
            self.metrics.switches.labels(name).inc()
        if switched:
            self.publish_models()
        return switched

    async def rollouts_page(self, request: Request) -> Response:
        return _json({name: r.describe() for name, r in self.rollouts.items()})

    async def set_rollout(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.repository.get(name)  # a 404 for a model this server does not serve
        try:
            config = orjson.loads(await self.body(request))
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"The rollout is not valid JSON: {exc}.") from exc
        if not isinstance(config, dict):
            raise ProtocolError(
                'A rollout is a JSON object such as {"canary": "challenger", "percent": 10, '
                '"key": "tailnum", "shadow": "challenger", "fallback": "previous"}.'
            )
        rollout = Rollout.from_config(self.repository.registry, name, config)
        for repository in rollout.repositories():
            await run_in_threadpool(repository.load)  # a bad alias is refused now, not later
        old = self.rollouts.get(name)
        self.rollouts = {**self.rollouts, name: rollout}
        if old is not None:
            old.close()
        return _json(rollout.describe())

    async def clear_rollout(self, request: Request) -> Response:
        name = request.path_params["name"]
        rollouts = dict(self.rollouts)
        old = rollouts.pop(name, None)
        self.rollouts = rollouts
        if old is not None:
            old.close()
        return _json({"model": name, "rollout": None})

    async def metrics_page(self, request: Request) -> Response:
        self.publish_models()
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, request: Request) -> Response:
        return _json(openapi_document(self.repository.names))


def create_app(
    repository: ModelRepository,
    *,
    views: Sequence[View | OnDemand] | None = None,
    online_store: OnlineStore | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    refresh_seconds: float | None = 2.0,
    load: bool = True,
    allow_unknown: Collection[str] = (),
    api_keys: Collection[str] = (),
    rollouts: Mapping[str, Rollout] | None = None,
    prediction_log: PredictionLog | None = None,
    cache: PredictionCache | None = None,
    batching: Batching | None = None,
    metrics_dir: str | None = None,
) -> ServingApp:
    """The serving app over ``repository`` (see the module docstring).

    Parameters
    ----------
    repository
        The models to serve. With ``load``, those not loaded yet are loaded when the app
        starts, off the event loop (the health routes answer meanwhile; model routes get
        503 with Retry-After).
    views, online_store
        The feature definitions ``/predict`` reads, and the online store they are read
        from (the configured one by default). Without views, ``/predict`` takes every
        feature from the request.
    max_body_bytes
        Larger request bodies get 413.
    refresh_seconds
        How often to ask the registry whether a followed alias moved (None: never).
    allow_unknown
        Entities (by name, such as ``plane``) that ``/predict`` may be asked about
        although the online store has never held them: their features are missing.
        Any other unknown entity gets 404.
    api_keys
        When given, the prediction and admin routes require one of these keys
        (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``); health, metadata,
        ``/metrics`` and ``/openapi.json`` stay open.
    rollouts
        Served model name -> its ``Rollout`` (shadow, canary, fallback); also set at
        run time with ``PUT /admin/models/{name}/rollout``.
    prediction_log
        Where every prediction (request id, time, model version, features, output) is
        written, off the request's path (``loopline.serve.predlog``); closed, after a
        last flush, when the app stops. Its counters are in ``/metrics``.
    cache
        The prediction cache (``loopline.serve.cache``): requests of up to 64 rows whose
        encoded features were seen before are answered from it. None: no cache. Its
        hit ratio is in ``/metrics``.
    batching
        Micro-batching of concurrent requests (``loopline.serve.batching``); None: each
        request is its own model call.
    metrics_dir
        With several worker processes, the folder of prometheus_client's multi-process
        mode (``loopline.serve.metrics``): ``/metrics`` adds up every worker's values.
    """
    server = _Server(
        repository,
        views=views,
        online=online_store,
        max_body_bytes=max_body_bytes,
        allow_unknown=allow_unknown,
        api_keys=api_keys,
        rollouts=rollouts,
        prediction_log=prediction_log,
        cache=cache,
        batching=batching,
        metrics_dir=metrics_dir,
    )
    metrics = server.metrics
    if metrics_dir is None:  # read from the objects when scraped
        if prediction_log is not None:
            metrics.registry.register(PredictionLogCollector(prediction_log))
        if cache is not None:
            metrics.registry.register(PredictionCacheCollector(cache))
    else:  # counted as they happen, in files every worker adds to
        if prediction_log is not None:
            prediction_log.counted = metrics.counter(
                "loopline_prediction_log_rows",
                "Prediction rows the log wrote, or dropped (full queue, bad record, failed write).",
                "outcome",
            )
            prediction_log.failed = metrics.counter(
                "loopline_prediction_log_failed_writes",
                "Prediction log parts that could not be written.",
            )
        if cache is not None:
            cache.counted = metrics.counter(
                "loopline_prediction_cache_lookups",
                "Prediction cache lookups, by result.",
                "result",
            )
    if views and online_store is None:
        from loopline.features.materialize import online_store as configured

        server.online = configured()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = []
        if load and not repository.ready():
            tasks.append(asyncio.create_task(_load(server)))
        for rollout in server.rollouts.values():
            for side in rollout.repositories():
                if not side.ready():
                    tasks.append(asyncio.create_task(run_in_threadpool(side.load)))
        if refresh_seconds:
            tasks.append(asyncio.create_task(_follow(server, float(refresh_seconds))))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            repository.close()
            for rollout in server.rollouts.values():
                rollout.close()
            if prediction_log is not None:
                await run_in_threadpool(prediction_log.close)
            if cache is not None:
                await cache.close()

    r = server.route
    infer = _HotEndpoint(server.hot("infer", server.infer))
    predict = _HotEndpoint(server.hot("predict", server.predict))
    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2/health/live", r("live", server.live), methods=["GET"]),
        Route("/v2/health/ready", r("ready", server.ready), methods=["GET"]),
        Route("/v2", r("server_metadata", server.server_metadata), methods=["GET"]),
        Route(model, r("model_metadata", server.model_metadata), methods=["GET"]),
        Route(version, r("model_metadata", server.model_metadata), methods=["GET"]),
        Route(f"{model}/ready", r("model_ready", server.model_ready), methods=["GET"]),
        Route(f"{version}/ready", r("model_ready", server.model_ready), methods=["GET"]),
        Route(f"{model}/infer", infer, methods=["POST"]),
        Route(f"{version}/infer", infer, methods=["POST"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/admin/reload", r("admin", server.reload, guarded=True), methods=["POST"]),
        Route("/admin/rollouts", r("admin", server.rollouts_page, guarded=True), methods=["GET"]),
        Route(
            "/admin/models/{name}/rollout",
            r("admin", server.set_rollout, guarded=True),
            methods=["PUT"],
        ),
        Route(
            "/admin/models/{name}/rollout",
            r("admin", server.clear_rollout, guarded=True),
            methods=["DELETE"],
        ),
        Route("/metrics", server.metrics_page, methods=["GET"]),
        Route("/openapi.json", server.openapi, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _not_allowed},
    )
    app.state.server = server
    return ServingApp(app, predict, infer)


async def _load(server: _Server) -> None:
    try:
        await run_in_threadpool(server.repository.load)
    except LooplineError as exc:
        log.error("cannot load the models: %s", exc)
    server.publish_models()


async def _follow(server: _Server, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await run_in_threadpool(server.refresh)
        except Exception:  # a failed check is retried at the next tick
            log.exception("cannot check the registry for moved aliases")


# -- requests -------------------------------------------------------------------------------


def _row_encoder(row: Mapping[str, Any]) -> Callable[[ServedModel], _Encoded]:
    """How one row (every feature in it) is encoded for a model: the one-row plan, and
    the row's features as the prediction log takes them."""

    def encode(model: ServedModel) -> _Encoded:
        bundle = model.bundle
        return bundle.preprocessor.transform_row(row), RowFeatures(bundle.features, row), 1

    return encode


def _columns(model: ServedModel, request: InferRequest) -> tuple[dict[str, Any], int]:
    """The model's feature columns from the request's tensors, one tensor per feature."""
    inputs = model.input_types
    names = [t.name for t in request.inputs]
    extra = [n for n in names if n not in inputs]
    if extra:
        raise ProtocolError(
            f"Model {model.name!r} has no input {extra[0]!r}; its inputs are one per feature: "
            f"{', '.join(inputs)}.",
            input=extra[0],
        )
    missing = [n for n in inputs if n not in names]
    if missing:
        raise ProtocolError(
            f"The request lacks the input(s) {', '.join(map(repr, missing))} of model "
            f"{model.name!r}; send one tensor per feature ({', '.join(inputs)}).",
            input=missing[0],
        )
    columns: dict[str, Any] = {}
    rows: int | None = None
    for tensor in request.inputs:
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise ProtocolError(
                f"Input {tensor.name!r} has shape {list(shape)}; a feature is a tensor of "
                f"shape [rows] or [rows, 1].",
                input=tensor.name,
            )
        if rows is None:
            rows = shape[0]
        elif shape[0] != rows:
            raise ProtocolError(
                f"Input {tensor.name!r} has {shape[0]} row(s) but the inputs before it have "
                f"{rows}; every feature needs one value per row.",
                input=tensor.name,
            )
        columns[tensor.name] = _values(tensor, inputs[tensor.name])
    if not rows:
        raise ProtocolError("The request has no rows to predict.")
    return columns, rows


_INF = math.inf


def _one_row(body: bytes, inputs: Mapping[str, str]) -> tuple[str | None, dict[str, Any]] | None:
    """The id and the one row of a JSON infer request that sends each of the model's
    inputs as one plain value (``{"name", "datatype", "shape": [1], "data": [v]}``).

    None for any other request, which the general parser reads (with its errors): a
    value is taken here only where the general path would give the model exactly it
    (text as BYTES for a categorical feature; for a numeric one, a value of a numeric
    datatype that ``decodes_as_itself``).
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if doc.__class__ is not dict or not doc.keys() <= {"id", "inputs"}:
        return None
    sent_id, tensors = doc.get("id"), doc.get("inputs")
    if (sent_id is not None and sent_id.__class__ is not str) or tensors.__class__ is not list:
        return None
    if len(tensors) != len(inputs):
        return None
    row: dict[str, Any] = {}
    for tensor in tensors:
        if tensor.__class__ is not dict or len(tensor) != 4:
            return None
        try:
            name, datatype, shape, data = (
                tensor["name"],
                tensor["datatype"],
                tensor["shape"],
                tensor["data"],
            )
            want = inputs.get(name)
        except (KeyError, TypeError):  # another key, or a name that is not text
            return None
        if want is None or name in row or shape != [1]:
            return None
        if data.__class__ is not list or len(data) != 1:
            return None
        value = data[0]
        if datatype == "BYTES" or want == "BYTES":
            if datatype != want or value.__class__ is not str:
                return None
        elif not (
            (datatype == "FP64" and value.__class__ is float and -_INF < value < _INF)
            or decodes_as_itself(datatype, value)
        ):
            return None
        row[name] = value
    return sent_id, row


def _values(tensor: Tensor, datatype: str) -> Any:
    data = tensor.data.reshape(-1)
    if datatype == "BYTES":
        if tensor.datatype != "BYTES":
            raise ProtocolError(
                f"Input {tensor.name!r} is a categorical feature: send it as BYTES (text). Got "
                f"{tensor.datatype}.",
                input=tensor.name,
            )
        try:
            return [v.decode() if isinstance(v, bytes) else str(v) for v in data]
        except UnicodeDecodeError as exc:
            raise ProtocolError(
                f"Input {tensor.name!r} holds bytes that are not UTF-8 text: {exc}.",
                input=tensor.name,
            ) from exc
    if tensor.datatype == "BYTES":
        raise ProtocolError(
            f"Input {tensor.name!r} is a numeric feature ({datatype}); send it as a number "
            f"tensor such as {datatype}. Got BYTES.",
            input=tensor.name,
        )
    few = data.size <= _FEW_VALUES
    values = data.tolist() if few else data
    if data.dtype.kind == "f" and (
        any(map(math.isinf, values)) if few else bool(np.isinf(data).any())
    ):
        raise ProtocolError(
            f"Input {tensor.name!r} holds infinity, which no feature can take; send NaN for "
            f"a missing value.",
            input=tensor.name,
        )
    return values


def _is_count(text: str) -> bool:
    """A byte count in a header: ASCII digits only (``isdigit`` alone also takes "²")."""
    text = text.strip()
    return text.isascii() and text.isdigit()


def _predict_key(
    header: Callable[[str], str | None],
    rows: list[dict[str, Any]],
    rollout: Rollout | None,
    fallback: str,
) -> str:
    """What places a /predict request in a canary: the rollout's key field, or header."""
    if rollout is None or rollout.key is None:
        return fallback
    value = rows[0].get(rollout.key)
    if value is None:
        value = header(rollout.key)
    return fallback if value is None else str(value)


def _infer_key(
    header: Callable[[str], str | None],
    parsed: InferRequest,
    rollout: Rollout | None,
    fallback: str,
) -> str:
    """The same for an infer request: an input named by the key, or a header."""
    if rollout is None or rollout.key is None:
        return fallback
    for tensor in parsed.inputs:
        if tensor.name == rollout.key and tensor.data.size:
            value = tensor.data.reshape(-1)[0]
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return header(rollout.key) or fallback


def _request_id() -> str:
    """A new request id: 128 random bits in hex (as ``uuid4().hex``, at a third of its
    cost)."""
    return os.urandom(16).hex()


def _two_d(matrix: np.ndarray) -> np.ndarray:
    return matrix.reshape(1, -1) if matrix.ndim == 1 else matrix


def _rows(body: bytes) -> list[dict[str, Any]]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"The request body is not valid JSON: {exc}.") from exc
    rows = [data] if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ProtocolError(
            "POST /predict takes a JSON object of entity keys and request fields, such as "
            '{"carrier": "UA", "origin": "EWR"}, or a non-empty list of such objects.'
        )
    for row in rows:
        for key, value in row.items():
            if isinstance(value, (dict, list)):
                raise ProtocolError(
                    f"Field {key!r} holds a JSON {type(value).__name__}; a field is one "
                    f"value (text, number, boolean or null).",
                    field=key,
                )
    return rows


def _instant(text: str | None) -> datetime | None:
    if text is None or text == "":
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ProtocolError(
            f"The 'at' parameter must be an ISO 8601 time such as 2013-12-30T15:00:00Z. Got "
            f"{text!r}."
        ) from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- answers --------------------------------------------------------------------------------


def _json(
    data: Any,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    background: BackgroundTask | None = None,
) -> Response:
    return Response(
        orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        headers=headers,
        media_type=_JSON,
        background=background,
    )


def _status(exc: BaseException) -> int:
    if isinstance(exc, ProtocolError):
        return int(exc.status)
    if isinstance(exc, (ModelNotReadyError, ModelFailedError)):
        return 503
    if isinstance(exc, AuthError):
        return 401
    if isinstance(exc, (ModelNotFoundError, UnknownEntityError)):
        return 404
    if isinstance(exc, (TrainingError, FeatureError)):
        return 400
    if isinstance(exc, OnlineStoreError):
        return 503
    if isinstance(exc, LooplineError):
        return 400
    return 500


def _error_parts(exc: BaseException) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """The status, the ``{"error"}`` body and the headers that answer ``exc``."""
    status = _status(exc)
    if status >= 500 and not isinstance(
        exc, (ModelNotReadyError, ModelFailedError, OnlineStoreError)
    ):
        log.exception("internal error", exc_info=exc)
        message = f"Internal error ({type(exc).__name__}); the server log has the details."
    else:
        message = str(exc)
    headers = [_JSON_HEADER]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    elif status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    return status, error_body(message), headers


def _error_response(exc: BaseException) -> Response:
    status, body, headers = _error_parts(exc)
    return Response(
        body,
        status_code=status,
        headers={k.decode(): v.decode() for k, v in headers[1:]},
        media_type=_JSON,
    )


def _kind(exc: BaseException) -> str:
    return type(exc).__name__


def _too_large(size: int, limit: int) -> ProtocolError:
    return ProtocolError(
        f"The request body is {size:,} bytes, more than this server's limit of {limit:,}; "
        f"send fewer rows per request.",
        status=413,
    )


async def _not_found(request: Request, exc: Exception) -> Response:
    return Response(
        error_body(f"No route {request.url.path}; see /openapi.json for this server's routes."),
        status_code=404,
        media_type=_JSON,
    )


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return Response(
        error_body(f"{request.method} is not allowed on {request.url.path}."),
        status_code=405,
        media_type=_JSON,
    )
