"""What a running step can report about itself: metrics, collected per attempt."""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from loopline.errors import PipelineDefinitionError

__all__ = ["StepContext", "log_metrics"]


@dataclass
class StepContext:
    """Collects what one attempt of a step reports; the runner records it afterwards."""

    step: str
    metrics: list[tuple[str, float, int]] = field(default_factory=list)


_current: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar(
    "loopline_step", default=None
)


@contextmanager
def step_context(name: str) -> Iterator[StepContext]:
    ctx = StepContext(step=name)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def log_metrics(metrics: Mapping[str, float], *, step: int = 0) -> None:
    """Record metrics for the step that is running (a no-op outside a pipeline run).

    Metrics are stored in the metadata store with the step, shown by ``loopline show``
    and printed at the end of ``loopline run``. ``step`` orders repeated values of one
    metric (for example, one per boosting round).

    Examples
    --------
    >>> log_metrics({"roc_auc": 0.71})  # outside a run nothing is recorded
    """
    ctx = _current.get()
    for key, value in metrics.items():
        number = float(value)
        if not isinstance(key, str) or not key:
            raise PipelineDefinitionError(f"A metric name must be a non-empty string. Got {key!r}.")
        if ctx is not None and not math.isnan(number):
            ctx.metrics.append((key, number, int(step)))
