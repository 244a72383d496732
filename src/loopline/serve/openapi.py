"""The OpenAPI 3 description of the server's routes, served at ``/openapi.json``.

Written by hand from the Open Inference Protocol v2 REST specification (its request and
response bodies) and ``/predict``; a schemathesis run in the tests checks the server
against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loopline import __version__
from loopline.serve.protocol import DATATYPES

__all__ = ["openapi_document"]

_ERROR = {
    "description": "An error, as the protocol writes it.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_RETRY = {
    "description": "The model is loading; retry after the Retry-After seconds.",
    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


_DATATYPE = {"type": "string", "enum": list(DATATYPES)}
_HEADER_LENGTH = "Inference-Header-Content-Length"


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def _path_params(models: Sequence[str], version: bool) -> list[dict[str, Any]]:
    # Another name, or a version that is not a registry version number, gets 404.
    params: list[dict[str, Any]] = [
        {
            "name": "name",
            "in": "path",
            "required": True,
            "description": "A model this server serves.",
            "schema": {"type": "string", "enum": list(models)},
        },
    ]
    if version:
        params.append(
            {
                "name": "version",
                "in": "path",
                "required": True,
                "description": "A version number in the registry, such as 3.",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        )
    return params


def _model_routes(prefix: str, models: Sequence[str], version: bool) -> dict[str, Any]:
    params = _path_params(models, version)
    common = {"400": _ERROR, "404": _ERROR, "503": _RETRY}
    return {
        prefix: {
            "get": {
                "summary": "Model metadata: its inputs (one per feature) and outputs.",
                "parameters": params,
                "responses": {"200": _json("ModelMetadata", "The model's metadata."), **common},
            }
        },
        f"{prefix}/ready": {
            "get": {
                "summary": "Whether the model is ready.",
                "parameters": params,
                "responses": {"200": _json("ModelReady", "The model is ready."), **common},
            }
        },
        f"{prefix}/infer": {
            "post": {
                "summary": "Inference with named tensors (JSON or the binary tensor extension).",
                "parameters": [
                    *params,
                    {
                        "name": _HEADER_LENGTH,
                        "in": "header",
                        "description": "With binary tensor data: the length of the JSON header "
                        "that starts the body.",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/InferRequest"}
                        },
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                    },
                },
                "responses": {
                    "200": {
                        "description": "The outputs; with binary outputs, a JSON header and "
                        "then their bytes.",
                        "headers": {
                            _HEADER_LENGTH: {
                                "description": "Sent with binary outputs: the length of the "
                                "JSON header.",
                                "schema": {"type": "integer", "minimum": 0},
                            }
                        },
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/InferResponse"}
                            },
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                        },
                    },
                    "413": _ERROR,
                    **common,
                },
            }
        },
    }


_TENSOR_DATA = {
    "description": "The values, flat or nested in row-major order.",
    "type": "array",
    "items": {},
}

_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": _DATATYPE,
        "parameters": {"type": "object"},
        "data": _TENSOR_DATA,
    },
}
"""A tensor in a request's inputs or a response's outputs (the same shape both ways)."""

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
        "additionalProperties": False,
    },
    "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
    "Ready": {
        "type": "object",
        "required": ["ready"],
        "properties": {"ready": {"type": "boolean"}},
    },
    "ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": _DATATYPE,
            "shape": {
                "description": "Sizes; -1 for a size that varies.",
                "type": "array",
                "items": {"type": "integer", "minimum": -1},
            },
        },
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["name", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorMetadata"}},
            "outputs": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/TensorMetadata"},
            },
        },
    },
    "ModelReady": {
        "type": "object",
        "required": ["name", "version", "ready"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "ready": {"type": "boolean"},
        },
    },
    "RequestInput": _TENSOR,
    "RequestOutput": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
    },
    "InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/RequestInput"}},
            "outputs": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/RequestOutput"},
            },
        },
    },
    "ResponseOutput": _TENSOR,
    "InferResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/ResponseOutput"},
            },
        },
    },
    "PredictRow": {
        "type": "object",
        "description": "Entity keys and request fields; each value is one scalar or null.",
        "additionalProperties": {
            "nullable": True,
            "oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}],
        },
    },
    "Predictions": {
        "type": "object",
        "required": ["request_id", "model", "version", "predictions"],
        "properties": {
            "request_id": {"type": "string"},
            "model": {"type": "string"},
            "version": {"type": "integer"},
            "predictions": {"type": "array", "items": {"type": "number"}},
        },
    },
}


def openapi_document(models: Sequence[str]) -> dict[str, Any]:
    """The OpenAPI 3.0 document of a server serving ``models``."""
    paths: dict[str, Any] = {
        "/v2/health/live": {
            "get": {
                "summary": "Liveness.",
                "responses": {"200": _json("Live", "The server is live.")},
            }
        },
        "/v2/health/ready": {
            "get": {
                "summary": "Readiness: every served model is loaded.",
                "responses": {"200": _json("Ready", "Ready."), "503": _RETRY},
            }
        },
        "/v2": {
            "get": {
                "summary": "Server metadata.",
                "responses": {"200": _json("ServerMetadata", "The server's metadata.")},
            }
        },
        **_model_routes("/v2/models/{name}", models, version=False),
        **_model_routes("/v2/models/{name}/versions/{version}", models, version=True),
        "/predict": {
            "post": {
                "summary": "Predict from entity keys: features come from the online store.",
                "parameters": [
                    {
                        "name": "model",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(models)},
                    },
                    {"name": "version", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "at",
                        "in": "query",
                        "schema": {"type": "string", "format": "date-time"},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/PredictRow"},
                                    {
                                        "type": "array",
                                        "minItems": 1,
                                        "items": {"$ref": "#/components/schemas/PredictRow"},
                                    },
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json("Predictions", "One prediction per row, in order."),
                    "400": _ERROR,
                    "404": _ERROR,
                    "413": _ERROR,
                    "503": _RETRY,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document.",
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.0 description of this server's routes.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["openapi", "info", "paths"],
                                }
                            }
                        },
                    }
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics.",
                "responses": {
                    "200": {
                        "description": "The text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "loopline model server", "version": __version__},
        "paths": paths,
        "components": {"schemas": _SCHEMAS},
    }
