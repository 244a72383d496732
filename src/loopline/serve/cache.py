"""The prediction cache: repeated identical requests answered without the model.

A request's key is the model's name and version and its full encoded feature matrix
(every feature of every row, as the model would see it), so a hit is exactly the answer
the model would give: another version, another feature value or another row count is
another key. Only the model call is skipped; the request is still parsed, its features
read and encoded, counted in the metrics and written to the prediction log.

``PredictionCache`` is an in-process LRU (each server worker has its own, the default);
``RedisPredictionCache`` shares one between workers and servers (``loopline serve
--cache-url redis://...``), with a time to live. A cache never fails a request: a Redis
error counts in ``errors`` and the model answers.

Examples
--------
>>> import asyncio, numpy as np
>>> cache = PredictionCache(max_entries=2)
>>> key = cache_key("late", 3, np.array([1.0, 2.0]))
>>> asyncio.run(cache.get(key)) is None
True
>>> asyncio.run(cache.put(key, np.array([0.25])))
>>> asyncio.run(cache.get(key))
array([0.25])
>>> cache.hits, cache.misses
(1, 1)
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from loopline.errors import ServingError

__all__ = [
    "MAX_ROWS",
    "PredictionCache",
    "PredictionCacheCollector",
    "RedisPredictionCache",
    "cache_key",
    "open_cache",
]

log = logging.getLogger("loopline.serve")

MAX_ROWS = 64
"""Requests with more rows than this are not cached (their keys would be large and rarely
repeat)."""


def cache_key(model: str, version: int, matrix: npt.NDArray[np.float64]) -> bytes:
    """The key of ``matrix`` (the encoded rows) for model version ``model@version``."""
    return b"%s\0%d\0%d\0" % (model.encode(), version, matrix.size) + matrix.tobytes()


class PredictionCache:
    """An in-process LRU of predictions, by ``cache_key``.

    Parameters
    ----------
    max_entries
        How many requests' predictions it keeps; the least recently used go first.

    Attributes
    ----------
    hits, misses, errors
        Lookups that found an entry, lookups that did not, and failed lookups or stores
        (a shared cache that could not be reached).
    """

    url = "memory"
    counted: Callable[[str, float], None] | None = None
    """Called with ``hit``, ``miss`` or ``error`` on each lookup, when set (the server's
    counters in multi-process mode)."""

    def __init__(self, max_entries: int = 10_000) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ServingError(
                f"The prediction cache's size must be a positive number of entries such as "
                f"10000 (0 turns the cache off). Got {max_entries!r}.",
                parameter="max_entries",
            )
        self.max_entries = max_entries
        self.hits = self.misses = self.errors = 0
        self._entries: OrderedDict[bytes, npt.NDArray[np.float64]] = OrderedDict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_entries={self.max_entries})"

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: bytes) -> npt.NDArray[np.float64] | None:
        """The predictions stored under ``key``, or None."""
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            self._count("miss")
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        self._count("hit")
        return found

    def _count(self, result: str) -> None:
        if self.counted is not None:
            self.counted(result, 1)

    async def put(self, key: bytes, predictions: npt.NDArray[np.float64]) -> None:
        """Keep ``predictions`` under ``key`` (a copy, read-only)."""
        stored = np.array(predictions, dtype=np.float64)
        stored.flags.writeable = False
        entries = self._entries
        entries[key] = stored
        entries.move_to_end(key)
        if len(entries) > self.max_entries:
            entries.popitem(last=False)

    async def close(self) -> None:
        """Release what the cache holds open (nothing, for the in-process one)."""


class RedisPredictionCache(PredictionCache):
    """Predictions in Redis, shared by every worker and server that uses the same URL.

    Parameters
    ----------
    url
        A ``redis://`` or ``rediss://`` URL; ``?prefix=...`` namespaces the keys, as
        for the online store (``loopline:`` by default).
    ttl_seconds
        How long an entry lives (Redis expires it).

    Keys are ``<prefix>prediction:<model>:<version>:<digest>``, the digest a BLAKE2b of
    the encoded rows; values are the predictions as float64 bytes. Needs
    ``pip install 'loopline[redis]'``.
    """

    def __init__(self, url: str, *, ttl_seconds: float = 3600.0) -> None:
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int | float):
            ttl_seconds = -1
        if not ttl_seconds > 0:
            raise ServingError(
                f"The prediction cache's time to live must be a positive number of seconds "
                f"such as 3600. Got {ttl_seconds!r}.",
                parameter="ttl_seconds",
            )
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:
            raise ServingError(
                "A Redis prediction cache needs the redis package: pip install 'loopline[redis]'."
            ) from exc
        self.max_entries = 0
        self.hits = self.misses = self.errors = 0
        from loopline.store.online import split_redis_prefix

        self.url = url
        self.ttl_ms = max(1, round(ttl_seconds * 1000))
        client_url, prefix = split_redis_prefix(url, "loopline:")
        self.prefix = f"{prefix}prediction:"
        self._client = aioredis.Redis.from_url(client_url, socket_timeout=1.0)

    def __repr__(self) -> str:
        return f"RedisPredictionCache({self.url!r}, ttl_seconds={self.ttl_ms / 1000:g})"

    def __len__(self) -> int:
        return 0  # unknown without asking the server; not needed on the request path

    def _redis_key(self, key: bytes) -> bytes:
        model, version, body = key.split(b"\0", 2)
        digest = hashlib.blake2b(body, digest_size=20).hexdigest().encode()
        return b"%s%s:%s:%s" % (self.prefix.encode(), model, version, digest)

    async def get(self, key: bytes) -> npt.NDArray[np.float64] | None:
        try:
            raw = await self._client.get(self._redis_key(key))
        except Exception as exc:  # a cache never fails a request
            self._failed("read", exc)
            return None
        if not isinstance(raw, bytes) or len(raw) % 8:
            self.misses += 1
            self._count("miss")
            return None
        self.hits += 1
        self._count("hit")
        return np.frombuffer(raw, dtype=np.float64)

    async def put(self, key: bytes, predictions: npt.NDArray[np.float64]) -> None:
        data = np.ascontiguousarray(predictions, dtype=np.float64).tobytes()
        try:
            await self._client.set(self._redis_key(key), data, px=self.ttl_ms)
        except Exception as exc:
            self._failed("write", exc)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        self._count("error")
        if self.errors == 1 or self.errors % 1000 == 0:
            log.warning(
                "prediction cache: cannot %s %s (%d failure(s) so far): %r",
                what,
                self.url,
                self.errors,
                exc,
            )

    async def close(self) -> None:
        await self._client.aclose()


def open_cache(
    size: int = 10_000, url: str | None = None, ttl_seconds: float = 3600.0
) -> PredictionCache | None:
    """The cache ``loopline serve`` makes: Redis at ``url`` when given, else an
    in-process LRU of ``size`` entries; None when ``size`` is 0 and there is no URL."""
    if url:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ServingError(
                f"--cache-url must be a redis:// URL such as redis://localhost:6379/0. Got "
                f"{url!r}.",
                parameter="cache_url",
            )
        return RedisPredictionCache(url, ttl_seconds=ttl_seconds)
    if size == 0:
        return None
    return PredictionCache(size)


class PredictionCacheCollector:
    """Prometheus metrics of a ``PredictionCache``, read when scraped.

    - ``loopline_prediction_cache_lookups_total{result="hit"|"miss"|"error"}``
    - ``loopline_prediction_cache_hit_ratio``: hits / lookups since the server started
    - ``loopline_prediction_cache_entries``: entries held (in-process cache only)
    """

    def __init__(self, cache: PredictionCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        cache = self.cache
        lookups = CounterMetricFamily(
            "loopline_prediction_cache_lookups",
            "Prediction cache lookups, by result.",
            labels=("result",),
        )
        lookups.add_metric(("hit",), cache.hits)
        lookups.add_metric(("miss",), cache.misses)
        lookups.add_metric(("error",), cache.errors)
        yield lookups
        total = cache.hits + cache.misses + cache.errors
        yield GaugeMetricFamily(
            "loopline_prediction_cache_hit_ratio",
            "Share of prediction cache lookups that were hits since the server started.",
            value=cache.hits / total if total else 0.0,
        )
        yield GaugeMetricFamily(
            "loopline_prediction_cache_entries",
            "Entries in the in-process prediction cache.",
            value=len(cache),
        )

    def describe(self) -> list[Metric]:
        return []
