"""Safe rollouts of a served model: shadow, canary, fallback.

A ``Rollout`` belongs to one served model name:

- **shadow**: another alias or version (``challenger``) scores a copy of every request
  after the answer has gone out; its predictions are counted and logged, never returned.
- **canary**: a share of the requests (``percent``) is answered by another alias or
  version. The split is sticky: a request's ``key`` (a field of a /predict row, a header,
  or an input of an infer request) is hashed, so one entity always lands on the same
  side; a request without the key is placed by its request id.
- **fallback**: when the model raises or takes longer than ``timeout_ms``, the request is
  answered by the version the current one replaced (``"previous"``) or by a constant
  (``0.5``); without a fallback the client gets 503.

The shadow and canary models are ``ModelRepository`` objects of their own, so they follow
their alias as it moves, like the main model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loopline.errors import ServingError
from loopline.serve.repository import ModelRepository, ModelSpec, ServedModel

__all__ = ["Rollout", "bucket"]

_BUCKETS = 10_000


def bucket(key: str) -> int:
    """The canary bucket (0 to 9,999) of a request key: the same key, the same bucket.

    Examples
    --------
    >>> bucket("N14228") == bucket("N14228"), 0 <= bucket("anything") < 10_000
    (True, True)
    """
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _BUCKETS


@dataclass
class Rollout:
    """How requests for one served model are split, copied and rescued (module docstring).

    Parameters
    ----------
    shadow, canary
        The shadow's and the canary's repositories (one spec each), or None.
    percent
        The canary's share of requests, 0 to 100.
    key
        The request field (or header, or infer input) whose value places a request.
    fallback
        ``"previous"``, a number (a constant prediction), or None.
    timeout_ms
        A prediction taking longer than this is answered by the fallback; None for no
        limit (the prediction then runs on the event loop, without a thread hop).
    """

    shadow: ModelRepository | None = None
    canary: ModelRepository | None = None
    percent: float = 0.0
    key: str | None = None
    fallback: str | float | None = None
    timeout_ms: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= float(self.percent) <= 100:
            raise ServingError(
                f"A canary's share is a percentage from 0 to 100. Got {self.percent!r}."
            )
        if self.fallback is not None and self.fallback != "previous":
            try:
                self.fallback = float(self.fallback)
            except (TypeError, ValueError) as exc:
                raise ServingError(
                    f"A fallback is 'previous' (the version the current one replaced) or a "
                    f"number to answer with. Got {self.fallback!r}."
                ) from exc
        if self.timeout_ms is not None and not float(self.timeout_ms) > 0:
            raise ServingError(
                f"A timeout is a positive number of milliseconds. Got {self.timeout_ms!r}."
            )

    @classmethod
    def from_config(cls, registry: Any, name: str, config: Mapping[str, Any]) -> Rollout:
        """A rollout from a JSON-like mapping (the admin route, the command line).

        Keys: ``shadow`` (an alias or version of ``name``), ``canary`` (the same),
        ``percent``, ``key``, ``fallback``, ``timeout_ms``. Unknown keys are refused.
        """
        known = {"shadow", "canary", "percent", "key", "fallback", "timeout_ms"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ServingError(
                f"A rollout has no setting {unknown[0]!r}; the settings are "
                f"{', '.join(sorted(known))}."
            )

        def repository(ref: object) -> ModelRepository | None:
            if ref is None or ref == "":
                return None
            return ModelRepository(registry, [ModelSpec.parse(f"{name}@{ref}")])

        canary = repository(config.get("canary"))
        percent = float(config.get("percent", 10.0 if canary is not None else 0.0))
        timeout = config.get("timeout_ms")
        return cls(
            shadow=repository(config.get("shadow")),
            canary=canary,
            percent=percent,
            key=config.get("key"),
            fallback=config.get("fallback"),
            timeout_ms=None if timeout is None else float(timeout),
        )

    def repositories(self) -> list[ModelRepository]:
        return [r for r in (self.shadow, self.canary) if r is not None]

    def choose(self, key: str) -> ServedModel | None:
        """The canary model when ``key`` falls in its share and it is loaded, else None."""
        if self.canary is None or self.percent <= 0 or not self.canary.ready():
            return None
        if bucket(key) >= self.percent * (_BUCKETS / 100):
            return None
        return self.canary.get(self.canary.names[0])

    def shadow_model(self) -> ServedModel | None:
        if self.shadow is None or not self.shadow.ready():
            return None
        return self.shadow.get(self.shadow.names[0])

    def describe(self) -> dict[str, Any]:
        """The rollout as JSON, with the versions its models are on now."""

        def state(repository: ModelRepository | None) -> dict[str, Any] | None:
            if repository is None:
                return None
            [spec] = repository.specs.values()
            return {"spec": str(spec), "version": repository.status()[spec.name]}

        return {
            "shadow": state(self.shadow),
            "canary": state(self.canary),
            "percent": self.percent,
            "key": self.key,
            "fallback": self.fallback,
            "timeout_ms": self.timeout_ms,
        }

    def close(self) -> None:
        for repository in self.repositories():
            repository.close()
