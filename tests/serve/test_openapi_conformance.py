"""The server against its own OpenAPI document: a schemathesis run over every operation.

The document is the one the app serves at ``/openapi.json`` (a test checks they are
equal); each operation gets generated requests, valid and invalid, and every answer must
be no 5xx and must match the document: a documented status code, a documented content
type, and a body and headers that fit the schema. Valid inference (JSON and binary) and
the 413 answer, which random requests rarely reach, are sent by hand and checked the
same way. The run is derandomized so that CI sees the same requests each time.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette
from starlette.testclient import TestClient

from loopline.data.workspace import Workspace
from loopline.errors import ModelNotReadyError
from loopline.registry import Registry
from loopline.serve.app import create_app
from loopline.serve.openapi import openapi_document
from loopline.serve.repository import ModelRepository
from loopline.train import LightGBMModel, ModelBundle, train_bundle

MODEL = "weather-late"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _bundle(rounds: int) -> ModelBundle:
    rng = np.random.default_rng(1)
    n = 200
    city = rng.choice(["Oslo", "Bergen", "Paris", "Rome"], n)
    temp = rng.normal(10, 8, n)
    frame = pl.DataFrame(
        {"city": city, "temp": temp, "hour": rng.integers(0, 24, n), "late": temp < 5}
    )
    model = LightGBMModel(num_rounds=rounds, min_data_in_leaf=5, num_threads=1)
    return train_bundle(frame, features=["city", "temp", "hour"], label="late", model=model)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Starlette:
    home: Path = tmp_path_factory.mktemp("schema")
    registry = Registry(Workspace(f"sqlite:///{home}/meta.db", str(home / "artifacts")))
    for rounds in (5, 20):
        version = registry.register_bundle(MODEL, _bundle(rounds))
        registry.promote(MODEL, version.version, why="test")
    repository = ModelRepository(registry, [MODEL])
    repository.load()
    _load_version(repository, 1)  # so that /versions/1 answers as /versions/2 does
    _load_version(repository, 2)
    # Loaded here, so the run never meets a 503 that depends on timing.
    return create_app(repository, refresh_seconds=None, load=False, max_body_bytes=64 * 1024)


def _load_version(repository: ModelRepository, number: int) -> None:
    for _ in range(500):
        try:
            repository.get(MODEL, number)
        except ModelNotReadyError:
            time.sleep(0.01)
        else:
            return
    raise AssertionError(f"version {number} of {MODEL} never loaded")


# The document is built as the app builds it, so that pytest collects one test per operation
# (schemathesis.pytest.from_fixture, the lazy way, fails under pytest 9: it reads the
# node's private ``_nodeid``); test_the_app_serves_this_document checks it is the same.
schema = schemathesis.openapi.from_dict(openapi_document([MODEL]))


def test_the_app_serves_this_document(app: Starlette) -> None:
    client = TestClient(app)  # no lifespan: its end would close the repository
    assert client.get("/openapi.json").json() == openapi_document([MODEL])


@schema.parametrize()
@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_server_keeps_its_openapi_document(
    app: Starlette, case: schemathesis.Case[Any]
) -> None:
    case.call_and_validate(app=app, checks=CHECKS)


# -- answers random requests rarely reach ------------------------------------------------------

_INPUTS: list[dict[str, Any]] = [
    {"name": "city", "shape": [2], "datatype": "BYTES", "data": ["Oslo", "Paris"]},
    {"name": "temp", "shape": [2], "datatype": "FP64", "data": [3.5, 12.0]},
    {"name": "hour", "shape": [2, 1], "datatype": "INT64", "data": [7, 18]},
]
_BINARY_OUTPUT: dict[str, Any] = {
    "outputs": [{"name": "probability", "parameters": {"binary_data": True}}]
}


def _binary_request() -> tuple[bytes, str]:
    """An infer body with every input in the binary tensor extension, and its header length."""
    inputs, blobs = [], []
    for tensor in _INPUTS:
        if tensor["datatype"] == "BYTES":
            blob = b"".join(
                struct.pack("<I", len(v)) + v for v in (str(x).encode() for x in tensor["data"])
            )
        else:
            dtype = "<f8" if tensor["datatype"] == "FP64" else "<i8"
            blob = np.asarray(tensor["data"], dtype=dtype).tobytes()
        header = {k: v for k, v in tensor.items() if k != "data"}
        inputs.append({**header, "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    head = orjson.dumps({"inputs": inputs, **_BINARY_OUTPUT})
    return head + b"".join(blobs), str(len(head))


@pytest.mark.parametrize(
    "path", [f"/v2/models/{MODEL}/infer", f"/v2/models/{MODEL}/versions/2/infer"]
)
@pytest.mark.parametrize("kind", ["json", "json, binary outputs", "binary"])
def test_valid_inference_keeps_the_document(app: Starlette, path: str, kind: str) -> None:
    operation = schema[path.replace(MODEL, "{name}").replace("/2/", "/{version}/")]["POST"]
    params = {"name": MODEL} | ({"version": "2"} if "versions" in path else {})
    if kind == "binary":
        body, length = _binary_request()
        case = operation.Case(
            path_parameters=params,
            headers={"Inference-Header-Content-Length": length},
            body=body,
            media_type="application/octet-stream",
        )
    else:
        extra = _BINARY_OUTPUT if kind.endswith("binary outputs") else {}
        request: Any = {"inputs": _INPUTS, **extra}
        case = operation.Case(path_parameters=params, body=request, media_type="application/json")
    response = case.call_and_validate(app=app, checks=CHECKS)
    assert response.status_code == 200, response.text
    binary = kind != "json"
    assert response.headers["content-type"][0].startswith(
        "application/octet-stream" if binary else "application/json"
    )


def test_a_body_over_the_limit_keeps_the_document(app: Starlette) -> None:
    case = schema["/predict"]["POST"].Case(body=[{"city": "Oslo" * 4096}] * 8)
    response = case.call_and_validate(app=app, checks=CHECKS)
    assert response.status_code == 413


# -- what the run found in the app (fixed): isdigit() takes '\u00b2', int() does not ----


def test_a_superscript_version_is_a_404(app: Starlette) -> None:
    client = TestClient(app, raise_server_exceptions=False)
    reply = client.get(f"/v2/models/{MODEL}/versions/%C2%B2")
    assert reply.status_code == 404, reply.text


def test_a_superscript_header_length_is_a_400(app: Starlette) -> None:
    # Sent as raw ASGI: Starlette's TestClient does not pass the byte 0xB2 through as it is.
    status, body = asyncio.run(
        _call(
            app,
            f"/v2/models/{MODEL}/infer",
            headers=[(b"inference-header-content-length", b"\xb2")],  # latin-1 for '\u00b2'
            body=orjson.dumps({"inputs": _INPUTS}),
        )
    )
    assert status == 400, body


async def _call(
    app: Starlette, path: str, *, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int, bytes]:
    """POST ``body`` to ``path`` over plain ASGI; the status and body of the answer."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("testclient", 50000),
        "server": ("testserver", 80),
    }
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
