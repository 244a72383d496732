"""Serving: the Open Inference Protocol v2 codec, the ASGI app, its models and server."""

from loopline.serve.app import DEFAULT_MAX_BODY_BYTES, ServingApp, create_app
from loopline.serve.batch import BatchResult, predict_batch
from loopline.serve.batching import Batching, MicroBatcher
from loopline.serve.cache import PredictionCache, RedisPredictionCache, open_cache
from loopline.serve.predlog import (
    ParquetSink,
    PredictionLog,
    PredictionLogCollector,
    PredictionSink,
    read_predictions,
)
from loopline.serve.protocol import (
    BINARY_CONTENT_TYPE,
    DATATYPES,
    EXTENSIONS,
    HEADER_LENGTH,
    JSON_CONTENT_TYPE,
    InferRequest,
    RequestedOutput,
    Tensor,
    TensorSpec,
    datatype_of,
    encode_infer_response,
    error_body,
    metadata_model,
    metadata_server,
    parse_infer_request,
)
from loopline.serve.repository import ModelRepository, ModelSpec, ServedModel
from loopline.serve.rollout import Rollout
from loopline.serve.server import serve

__all__ = [
    "BINARY_CONTENT_TYPE",
    "DATATYPES",
    "DEFAULT_MAX_BODY_BYTES",
    "EXTENSIONS",
    "HEADER_LENGTH",
    "JSON_CONTENT_TYPE",
    "BatchResult",
    "Batching",
    "InferRequest",
    "MicroBatcher",
    "ModelRepository",
    "ModelSpec",
    "ParquetSink",
    "PredictionCache",
    "PredictionLog",
    "PredictionLogCollector",
    "PredictionSink",
    "RedisPredictionCache",
    "RequestedOutput",
    "Rollout",
    "ServedModel",
    "ServingApp",
    "Tensor",
    "TensorSpec",
    "create_app",
    "datatype_of",
    "encode_infer_response",
    "error_body",
    "metadata_model",
    "metadata_server",
    "open_cache",
    "parse_infer_request",
    "predict_batch",
    "read_predictions",
    "serve",
]
