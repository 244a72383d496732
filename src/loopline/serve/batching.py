"""Adaptive micro-batching: concurrent requests to one model answered by one model call.

A ``MicroBatcher`` belongs to one served model version and lives on the server's event
loop. A request's encoded rows join the pending batch and wait on a future. The batch is
predicted when it holds ``max_batch`` rows, or when the event loop has run everything
that was ready (``max_wait_ms=0``, the default: requests whose bytes arrived together
are batched, a lone request is not delayed), or ``max_wait_ms`` after its first request
otherwise. A batch of one row takes the model's one-row call; a failing batch fails each
of its requests with the model's error, so each can fall back on its own.

Adaptive: waiting for a batch costs a turn of the event loop (tens of microseconds), which
a lone request should not pay. After ``ALONE`` batches in a row of one request each, the
next ``DIRECT`` requests are predicted at once; then batching is tried again, and it
stays on while batches gather more than one request.

Examples
--------
>>> import asyncio, numpy as np
>>> calls = []
>>> def predict(matrix):
...     calls.append(len(matrix))
...     return matrix.sum(axis=1)
>>> batcher = MicroBatcher(predict, lambda row: float(row.sum()), Batching(max_batch=8))
>>> async def three():
...     rows = [np.array([[1.0, 2.0]]), np.array([[3.0, 4.0]]), np.array([[5.0, 6.0]])]
...     return await asyncio.gather(*(batcher.predict(r) for r in rows))
>>> [a.tolist() for a in asyncio.run(three())], calls
([[3.0], [7.0], [11.0]], [3])
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from loopline.errors import ServingError

__all__ = ["Batching", "MicroBatcher"]

Matrix = npt.NDArray[np.float64]

ALONE = 8
"""Batches of one request in a row after which requests are predicted at once..."""
DIRECT = 64
"""...for this many requests, before batching is tried again."""


@dataclass(frozen=True)
class Batching:
    """Micro-batching settings: at most ``max_batch`` rows per model call; the first
    request of a batch waits at most ``max_wait_ms`` for others (0: only for those
    already received)."""

    max_batch: int = 32
    max_wait_ms: float = 0.0

    def __post_init__(self) -> None:
        size, wait = self.max_batch, self.max_wait_ms
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise ServingError(
                f"The micro-batch size must be at least 2 rows (1 turns batching off). Got "
                f"{size!r}.",
                parameter="max_batch",
            )
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= 1000:
            raise ServingError(
                f"The micro-batch wait must be between 0 and 1000 milliseconds. Got {wait!r}.",
                parameter="max_wait_ms",
            )


class MicroBatcher:
    """Gathers concurrent requests' rows into one model call (see the module).

    Parameters
    ----------
    predict
        The model's call for a matrix of encoded rows.
    predict_row
        The model's call for one encoded row (a 1-D array), used for a batch of one.
    settings
        The batch size and wait; a request with ``max_batch`` rows or more is predicted
        alone.
    on_batch
        Called with the rows of each model call (the batch-size metric).
    """

    def __init__(
        self,
        predict: Callable[[Matrix], Matrix],
        predict_row: Callable[[Matrix], float],
        settings: Batching,
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._predict = predict
        self._predict_row = predict_row
        self.max_batch = settings.max_batch
        self.max_wait = settings.max_wait_ms / 1000
        self._on_batch = on_batch
        self._pending: list[tuple[Matrix, asyncio.Future[Matrix]]] = []
        self._rows = 0
        self._timer: asyncio.Handle | None = None
        self._alone = 0  # batches of one request in a row
        self._direct = 0  # requests still to predict at once
        self.direct_requests = 0
        """Requests predicted at once because batches were not forming (for tests)."""

    def __repr__(self) -> str:
        return f"MicroBatcher(max_batch={self.max_batch}, max_wait_ms={self.max_wait * 1000:g})"

    async def predict(self, matrix: Matrix) -> Matrix:
        """The predictions of ``matrix`` (2-D), predicted with the requests beside it."""
        rows = len(matrix)
        if rows >= self.max_batch:
            return self._call(matrix)
        if self._direct:  # batches were not forming: no wait
            self._direct -= 1
            self.direct_requests += 1
            return self._call(matrix)
        if self._rows + rows > self.max_batch:
            self._flush()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Matrix] = loop.create_future()
        self._pending.append((matrix, future))
        self._rows += rows
        if self._rows >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = (
                loop.call_later(self.max_wait, self._flush)
                if self.max_wait
                else loop.call_soon(self._flush)
            )
        return await future

    def _call(self, matrix: Matrix) -> Matrix:
        if self._on_batch is not None:
            self._on_batch(len(matrix))
        if len(matrix) == 1:
            return np.array([self._predict_row(matrix[0])], dtype=np.float64)
        return self._predict(matrix)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending, self._rows = self._pending, [], 0
        if not pending:
            return
        if len(pending) == 1:
            self._alone += 1
            if self._alone >= ALONE:
                self._alone, self._direct = 0, DIRECT
        else:
            self._alone = 0
        try:
            matrix = pending[0][0] if len(pending) == 1 else np.vstack([m for m, _ in pending])
            predictions = self._call(matrix)
        except Exception as exc:  # each request handles its model's failure itself
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for part, future in pending:
            end = start + len(part)
            if not future.done():  # a request cancelled meanwhile (its client went away)
                future.set_result(predictions[start:end])
            start = end
