"""Steps: plain typed Python functions, wired by argument name."""

from __future__ import annotations

import functools
import hashlib
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from loopline.errors import PipelineDefinitionError

__all__ = ["Step", "step"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(eq=False)
class Step:
    """A function registered as a pipeline step, with its execution policy.

    Arguments named after another step of the pipeline receive that step's output;
    every other argument is a parameter, taken from the command line, the config or
    the function's default, in that order.

    Examples
    --------
    >>> @step(retries=2, retry_on=(ConnectionError,))
    ... def numbers(n: int = 3) -> list[int]:
    ...     return list(range(n))
    >>> numbers.name, numbers.retries
    ('numbers', 2)
    >>> numbers(n=2)  # a step is still a plain function
    [0, 1]
    """

    fn: Callable[..., Any]
    name: str
    cache: bool = True
    version: str | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = ()
    backoff: float = 0.5
    max_backoff: float = 30.0
    timeout: float | None = None
    code_hash: str = field(init=False, default="")

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise PipelineDefinitionError(
                f"The 'retries' parameter of step {self.name!r} must be a non-negative "
                f"integer. Got {self.retries!r}.",
                step=self.name,
            )
        if self.timeout is not None and self.timeout <= 0:
            raise PipelineDefinitionError(
                f"The 'timeout' parameter of step {self.name!r} must be a positive number "
                f"of seconds. Got {self.timeout!r}.",
                step=self.name,
            )
        for exc_type in self.retry_on:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise PipelineDefinitionError(
                    f"The 'retry_on' parameter of step {self.name!r} must be a tuple of "
                    f"exception classes. Got {exc_type!r}.",
                    step=self.name,
                )
        self.code_hash = _code_hash(self.fn)
        self.__wrapped__ = self.fn
        self.__doc__ = self.fn.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @functools.cached_property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.fn)

    @property
    def arguments(self) -> list[str]:
        return list(self.signature.parameters)

    @property
    def module(self) -> str:
        return str(self.fn.__module__)

    def is_transient(self, exc: BaseException) -> bool:
        """Return True when ``exc`` is one of the declared transient errors."""
        return isinstance(exc, self.retry_on)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based): exponential backoff."""
        return float(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


def _code_hash(fn: Callable[..., Any]) -> str:
    """Hash a function's source; fall back to its bytecode when there is no source."""
    try:
        text = textwrap.dedent(inspect.getsource(fn)).encode()
    except (OSError, TypeError):
        code = fn.__code__
        text = code.co_code + repr(code.co_consts).encode() + repr(code.co_names).encode()
    return hashlib.sha256(text).hexdigest()


@overload
def step(fn: F, /) -> Step: ...


@overload
def step(
    *,
    name: str | None = None,
    cache: bool = True,
    version: str | None = None,
    retries: int = 0,
    retry_on: tuple[type[BaseException], ...] = (),
    backoff: float = 0.5,
    max_backoff: float = 30.0,
    timeout: float | None = None,
) -> Callable[[F], Step]: ...


def step(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    cache: bool = True,
    version: str | None = None,
    retries: int = 0,
    retry_on: tuple[type[BaseException], ...] = (),
    backoff: float = 0.5,
    max_backoff: float = 30.0,
    timeout: float | None = None,
) -> Step | Callable[[F], Step]:
    """Declare a function as a pipeline step.

    Parameters
    ----------
    name
        The step's name; defaults to the function's name. Downstream steps receive its
        output through an argument of this name.
    cache
        When False the step always runs (its output is still stored and recorded).
    version
        A free-form string that is part of the cache key; bump it when code the step
        calls (but that is not in its body) changes.
    retries, retry_on, backoff, max_backoff
        Retry up to ``retries`` times when the step raises one of ``retry_on``, waiting
        ``backoff * 2**(attempt-1)`` seconds (at most ``max_backoff``) in between.
    timeout
        Seconds after which an attempt fails with ``StepTimeoutError``.
    """

    def wrap(f: Callable[..., Any]) -> Step:
        return Step(
            fn=f,
            name=name or f.__name__,
            cache=cache,
            version=version,
            retries=retries,
            retry_on=tuple(retry_on),
            backoff=backoff,
            max_backoff=max_backoff,
            timeout=timeout,
        )

    if fn is not None:
        return wrap(fn)
    return wrap
