"""The models a server holds: loaded from the registry, swapped whole when an alias moves.

A server is given model specs: ``NAME`` (its champion), ``NAME@ALIAS`` (follow the
alias) or ``NAME@3`` (pin a version). ``ModelRepository.load`` loads each one before the
server takes requests. ``refresh`` asks the registry where each followed alias points
now and, when it moved, loads the new version *beside* the old one and then replaces
the reference in one assignment: a request that started on the old version finishes
on it, and the next one sees the new version. No request waits for a load or fails
because of one.

A version that is asked for explicitly (``/v2/models/NAME/versions/4``) and is not
loaded starts loading in the background; until it is ready, requests for it get
``ModelNotReadyError`` (503 with Retry-After), never a confusing 400.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from loopline.errors import (
    LooplineError,
    ModelNotFoundError,
    ModelNotReadyError,
    ServingError,
)
from loopline.registry import Registry
from loopline.train import ModelBundle

__all__ = ["ModelRepository", "ModelSpec", "ServedModel", "datatype_of_schema"]

log = logging.getLogger("loopline.serve")

_SPEC = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)(?:@(?P<ref>[A-Za-z0-9_.\-]+))?")

# Polars type names (a bundle's input schema) -> Open Inference Protocol datatypes.
_DATATYPES = {
    "Boolean": "BOOL",
    "Int8": "INT8",
    "Int16": "INT16",
    "Int32": "INT32",
    "Int64": "INT64",
    "UInt8": "UINT8",
    "UInt16": "UINT16",
    "UInt32": "UINT32",
    "UInt64": "UINT64",
    "Float32": "FP32",
    "Float64": "FP64",
    "String": "BYTES",
    "Categorical": "BYTES",
    "Enum": "BYTES",
    "Null": "FP64",
}


def datatype_of_schema(dtype: str) -> str:
    """The protocol datatype a feature of Polars type ``dtype`` is sent as.

    Examples
    --------
    >>> datatype_of_schema("Float64"), datatype_of_schema("String"), datatype_of_schema("Int64")
    ('FP64', 'BYTES', 'INT64')
    """
    return _DATATYPES.get(dtype.split("(", 1)[0], "FP64")


@dataclass(frozen=True)
class ModelSpec:
    """What to serve under a name: a model's alias (followed) or a pinned version.

    Examples
    --------
    >>> ModelSpec.parse("flights-delay")
    ModelSpec(name='flights-delay', alias='champion', version=None)
    >>> ModelSpec.parse("flights-delay@3").version
    3
    """

    name: str
    alias: str | None = "champion"
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        found = _SPEC.fullmatch(text.strip()) if isinstance(text, str) else None
        if found is None:
            raise ServingError(
                f"A model to serve is NAME, NAME@ALIAS or NAME@VERSION, such as "
                f"'flights-delay@champion'. Got {text!r}."
            )
        name, ref = found["name"], found["ref"]
        if ref is None:
            return cls(name)
        if ref.isdigit():
            return cls(name, alias=None, version=int(ref))
        return cls(name, alias=ref)

    def __str__(self) -> str:
        return f"{self.name}@{self.alias if self.alias else self.version}"


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version, ready to predict."""

    name: str
    version: int
    bundle: ModelBundle
    features: tuple[str, ...] = field(default=())
    """The feature versions (``view@sha256``) it was trained on, from the registry."""
    loaded_at: float = field(default_factory=time.time)

    @property
    def output(self) -> str:
        """The name of its output tensor: ``probability`` (binary) or ``prediction``."""
        return "probability" if self.bundle.objective == "binary" else "prediction"

    def inputs(self) -> list[tuple[str, str]]:
        """(feature, protocol datatype) for each input, in the model's order."""
        return list(self.input_types.items())

    @cached_property
    def input_types(self) -> dict[str, str]:
        """Feature -> its protocol datatype, in the model's order (made once)."""
        schema = self.bundle.schema
        return {name: datatype_of_schema(schema[name]) for name in self.bundle.features}


class ModelRepository:
    """The served models, by name; see the module docstring.

    Parameters
    ----------
    registry
        Where versions are found and loaded from.
    specs
        What to serve: ``ModelSpec`` objects or their text (``NAME@ALIAS``).

    Each model keeps two versions loaded: the current one and, for fallback, the one it
    replaced.
    """

    def __init__(self, registry: Registry, specs: Iterable[ModelSpec | str]) -> None:
        self.registry = registry
        self.specs = {
            s.name: s
            for s in (x if isinstance(x, ModelSpec) else ModelSpec.parse(x) for x in specs)
        }
        if not self.specs:
            raise ServingError("Name at least one model to serve, such as 'flights-delay'.")
        self._current: dict[str, ServedModel] = {}
        self._loaded: dict[tuple[str, int], ServedModel] = {}
        self._loading: dict[tuple[str, int], Future[ServedModel]] = {}
        self._failed: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="loopline-load")

    def __repr__(self) -> str:
        return f"ModelRepository({', '.join(map(str, self.specs.values()))})"

    # -- loading ----------------------------------------------------------------------------

    def load(self) -> None:
        """Load every spec's version now (before serving); raise if one cannot be loaded."""
        for spec in self.specs.values():
            version = self._resolve(spec)
            self._install(self._load(spec.name, version))

    def refresh(self) -> list[tuple[str, int | None, int]]:
        """Follow moved aliases: load each new target, then switch to it.

        Returns (name, old version, new version) for each switch. A version that fails to
        load is logged and the old one keeps serving.
        """
        switched = []
        for spec in self.specs.values():
            if spec.alias is None:
                continue
            try:
                version = self._resolve(spec)
            except LooplineError as exc:
                log.warning("cannot resolve %s: %s", spec, exc)
                continue
            old = self._current.get(spec.name)
            if old is not None and old.version == version:
                continue
            try:
                model = self._loaded.get((spec.name, version)) or self._load(spec.name, version)
            except LooplineError as exc:
                log.error("cannot load %s version %s: %s", spec.name, version, exc)
                continue
            self._install(model)
            switched.append((spec.name, None if old is None else old.version, version))
            log.info(
                "model %s switched from version %s to %s",
                spec.name,
                "-" if old is None else old.version,
                version,
            )
        return switched

    def _resolve(self, spec: ModelSpec) -> int:
        if spec.version is not None:
            return self.registry.get(spec.name, spec.version).version
        return self.registry.get(spec.name, spec.alias).version

    def _load(self, name: str, version: int) -> ServedModel:
        record = self.registry.get(name, version)
        bundle = self.registry.load_bundle(name, version)
        return ServedModel(name, version, bundle, tuple(record.features))

    def _install(self, model: ServedModel) -> None:
        """Make ``model`` its name's current version; keep the one it replaces for fallback."""
        with self._lock:
            previous = self._current.get(model.name)
            kept = {model.version} | ({previous.version} if previous is not None else set())
            loaded = {
                key: m for key, m in self._loaded.items() if key[0] != model.name or key[1] in kept
            }
            loaded[(model.name, model.version)] = model
            self._loaded = loaded
            current = dict(self._current)
            current[model.name] = model
            self._current = current  # one assignment: readers see the old or the new dict

    # -- lookup -----------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def ready(self) -> bool:
        """Whether every spec has a loaded version."""
        return all(name in self._current for name in self.specs)

    def loaded(self) -> list[ServedModel]:
        """Every loaded version (current and kept for fallback)."""
        return list(self._loaded.values())

    def previous(self, name: str) -> ServedModel | None:
        """The version kept beside the current one (for fallback), if any."""
        current = self._current.get(name)
        others = [
            m
            for (n, v), m in self._loaded.items()
            if n == name and current and v != current.version
        ]
        return max(others, key=lambda m: m.loaded_at) if others else None

    def get(self, name: str, version: str | int | None = None) -> ServedModel:
        """The current version of ``name``, or a given version (loaded on first request).

        Raises ``ModelNotFoundError`` (404) for a model that is not served or a version
        the registry does not have, and ``ModelNotReadyError`` (503) while it loads.
        """
        if name not in self.specs:
            served = ", ".join(self.specs)
            raise ModelNotFoundError(
                f"This server does not serve a model named {name!r}; it serves: {served}.",
                model=name,
            )
        if version is None or version == "":
            current = self._current.get(name)
            if current is None:
                raise ModelNotReadyError(f"Model {name!r} is loading; retry shortly.", model=name)
            return current
        number = _version_number(name, version)
        found = self._loaded.get((name, number))
        if found is not None:
            return found
        return self._load_later(name, number)

    def _load_later(self, name: str, number: int) -> ServedModel:
        key = (name, number)
        with self._lock:
            if key in self._failed:
                raise ModelNotFoundError(self._failed[key], model=name, version=number)
            future = self._loading.get(key)
            if future is None:
                self.registry.get(name, number)  # an unknown version is a 404 now
                future = self._pool.submit(self._load, name, number)
                future.add_done_callback(lambda f: self._settle(key, f))
                self._loading[key] = future
        raise ModelNotReadyError(
            f"Version {number} of model {name!r} is loading; retry shortly.",
            model=name,
            version=number,
        )

    def _settle(self, key: tuple[str, int], future: Future[ServedModel]) -> None:
        with self._lock:
            self._loading.pop(key, None)
            error = future.exception()
            if error is not None:
                self._failed[key] = (
                    f"Version {key[1]} of model {key[0]!r} cannot be loaded: {error}"
                )
                return
            loaded = dict(self._loaded)
            loaded[key] = future.result()
            self._loaded = loaded

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def status(self) -> Mapping[str, Any]:
        """Name -> current version (None while loading), for logs and metrics."""
        return {
            name: (self._current[name].version if name in self._current else None)
            for name in self.specs
        }


def _version_number(name: str, version: str | int) -> int:
    text = str(version).strip()
    if not (text.isascii() and text.isdigit()):  # isdigit alone takes "²", int() does not
        raise ModelNotFoundError(
            f"A model version in a URL is a number, such as /v2/models/{name}/versions/3. "
            f"Got {version!r}.",
            model=name,
            version=version,
        )
    return int(text)


def specs_of(texts: Sequence[str]) -> list[ModelSpec]:
    """Parse ``--model`` values; one name given twice is an error."""
    specs = [ModelSpec.parse(t) for t in texts]
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ServingError(
            f"Model {twice[0]!r} is named more than once; serve one spec per model (use the "
            f"versions route to reach other versions)."
        )
    return specs
