"""The exception hierarchy: every user mistake loopline reports is a ``LooplineError``.

::

    LooplineError
    ├── ConfigError (ValueError)                 a bad loopline.toml or LOOPLINE_* value
    ├── StoreError
    │   ├── MetadataStoreError                   the metadata database cannot be reached or used
    │   ├── ArtifactError
    │   │   ├── ArtifactNotFoundError (KeyError)  no stored bytes under that hash or id
    │   │   └── ArtifactCorruptedError            stored bytes no longer match their hash
    │   ├── UnsupportedArtifactError (TypeError)  a step returned a value no codec can store
    │   ├── DatasetNotFoundError (KeyError)       no dataset version by that name or id
    │   └── OnlineStoreError                      the online feature store cannot be reached or used
    ├── SourceError (OSError)                    external data cannot be found or read
    ├── ContractError (ValueError)               data broke a declared contract
    ├── FeatureError (ValueError)                a feature definition or its data is invalid
    ├── TrainingError (ValueError)               a model, search space, metric or bundle is invalid
    ├── RegistryError
    │   └── ModelNotFoundError (KeyError)         no registered model, version or alias by that name
    ├── ServingError                             a model cannot be served or a request answered
    │   ├── ProtocolError (ValueError)           a request breaks OIP v2; ``.status`` to answer
    │   ├── ModelNotReadyError                   a served model is still loading (503, Retry-After)
    │   ├── ModelFailedError                     a model failed and no fallback answered (503)
    │   ├── AuthError                            a request lacks a valid API key (401)
    │   ├── UnknownEntityError (KeyError)         a request names an entity never materialized
    │   ├── PredictionLogError (ValueError)      a prediction log is given a bad parameter
    │   └── BatchPredictionError (ValueError)    rows cannot be scored in batch, or written
    └── PipelineError
        ├── PipelineLoadError (ImportError)      a pipeline file or module does not import
        ├── PipelineDefinitionError (ValueError) cycles, missing upstream names, bad parameters
        ├── StepFailedError                      a step raised; ``.step`` and ``.run_id`` say which
        ├── StepTimeoutError (TimeoutError)      a step ran past its timeout
        └── RunNotFoundError (KeyError)          no run or artifact with that id

Each error carries the context that locates it (``.step``, ``.path``, ``.run_id``) and a
message that says what happened and what to do next. The CLI prints the message and exits 2.
"""

from __future__ import annotations

__all__ = [
    "ArtifactCorruptedError",
    "ArtifactError",
    "ArtifactNotFoundError",
    "AuthError",
    "BatchPredictionError",
    "ConfigError",
    "ContractError",
    "DatasetNotFoundError",
    "FeatureError",
    "LooplineError",
    "MetadataStoreError",
    "ModelFailedError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "OnlineStoreError",
    "PipelineDefinitionError",
    "PipelineError",
    "PipelineLoadError",
    "PredictionLogError",
    "ProtocolError",
    "RegistryError",
    "RunNotFoundError",
    "ServingError",
    "SourceError",
    "StepFailedError",
    "StepTimeoutError",
    "StoreError",
    "TrainingError",
    "UnknownEntityError",
    "UnsupportedArtifactError",
]


class LooplineError(Exception):
    """Root of every error loopline raises for a user to act on."""

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.context = context
        for key, value in context.items():
            setattr(self, key, value)

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return self.message

    def __reduce__(self) -> tuple[object, ...]:  # survive pickling across process executors
        return (_rebuild, (type(self), self.message, self.context))


def _rebuild(cls: type[LooplineError], message: str, context: dict[str, object]) -> LooplineError:
    return cls(message, **context)


class ConfigError(LooplineError, ValueError):
    """A configuration file or environment variable holds an invalid value."""


class StoreError(LooplineError):
    """A storage backend failed."""


class MetadataStoreError(StoreError):
    """The metadata database cannot be reached, migrated or written."""


class ArtifactError(StoreError):
    """An artifact cannot be stored or read."""


class ArtifactNotFoundError(ArtifactError, KeyError):
    """No artifact is stored under the requested id or hash."""


class ArtifactCorruptedError(ArtifactError):
    """The stored bytes of an artifact do not match its content hash."""


class UnsupportedArtifactError(StoreError, TypeError):
    """A value has no codec that can store it as an artifact."""


class DatasetNotFoundError(StoreError, KeyError):
    """No dataset version has the requested name, version or id."""


class OnlineStoreError(StoreError):
    """The online feature store cannot be reached, read or written."""


class SourceError(LooplineError, OSError):
    """External data (files, a SQL query) cannot be found or read."""


class ContractError(LooplineError, ValueError):
    """Data does not satisfy its declared contract."""


class FeatureError(LooplineError, ValueError):
    """A feature definition, or the data it is computed from, is invalid."""


class TrainingError(LooplineError, ValueError):
    """A model, search space, metric, label or model bundle is invalid."""


class RegistryError(LooplineError):
    """A registry operation (register, promote, rollback) cannot be done."""


class ModelNotFoundError(RegistryError, KeyError):
    """No registered model, version or alias has the requested name."""


class ServingError(LooplineError):
    """A model cannot be served or a request cannot be answered."""


class ProtocolError(ServingError, ValueError):
    """A request (or a response) does not follow the Open Inference Protocol.

    ``.status`` is the HTTP status to answer with: 400 (the default) when the client
    sent something wrong, 500 when the server's own outputs cannot be written. Where a
    tensor is to blame, ``.input`` or ``.output`` names it.
    """

    status: int = 400

    def __init__(self, message: str, *, status: int = 400, **context: object) -> None:
        super().__init__(message, status=status, **context)


class ModelNotReadyError(ServingError):
    """A served model (or version) is still loading: answer 503 with Retry-After."""

    retry_after: int = 1


class ModelFailedError(ServingError):
    """A served model raised or timed out and no fallback could answer (503)."""


class AuthError(ServingError):
    """A request lacks a valid API key (401)."""


class UnknownEntityError(ServingError, KeyError):
    """A request names an entity the online store has never held (404)."""


class PredictionLogError(ServingError, ValueError):
    """A prediction log is given an invalid parameter or sink (``.parameter`` says which)."""


class BatchPredictionError(ServingError, ValueError):
    """Rows cannot be scored in batch: the input lacks a feature or has the wrong type, or
    the output cannot be written. ``.column`` or ``.path`` says where."""


class PipelineError(LooplineError):
    """A pipeline cannot be loaded, built or run."""


class PipelineLoadError(PipelineError, ImportError):
    """A pipeline file or module does not import."""


class PipelineDefinitionError(PipelineError, ValueError):
    """A pipeline's steps do not form a valid DAG, or a parameter is invalid."""


class StepFailedError(PipelineError):
    """A step raised an exception (after its retries, if any)."""


class StepTimeoutError(PipelineError, TimeoutError):
    """A step ran longer than its timeout."""


class RunNotFoundError(PipelineError, KeyError):
    """No run, step or artifact has the requested id."""
