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
    "ConfigError",
    "ContractError",
    "DatasetNotFoundError",
    "FeatureError",
    "LooplineError",
    "MetadataStoreError",
    "ModelNotFoundError",
    "OnlineStoreError",
    "PipelineDefinitionError",
    "PipelineError",
    "PipelineLoadError",
    "RegistryError",
    "RunNotFoundError",
    "SourceError",
    "StepFailedError",
    "StepTimeoutError",
    "StoreError",
    "TrainingError",
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
