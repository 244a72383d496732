"""Prometheus metrics of one server: latency, predictions, errors, batches, feature lookups.

Each ``ServerMetrics`` has its own ``CollectorRegistry``, so two apps in one process (as
in the tests) never share counters. ``/metrics`` renders it in the text exposition
format.

With several worker processes (``loopline serve --workers N``) a scrape reaches one of
them, so each worker's numbers alone would jump from scrape to scrape. There the server
runs prometheus_client's multi-process mode: every worker's values live in files under
``multiprocess_dir`` and ``/metrics`` adds them up (gauges of loaded versions take the
largest). The prediction cache's and prediction log's numbers, read from their objects
when scraped in one process, are then counters those objects increment (``counter``),
and the hit ratio and queue gauges, which cannot be added up, are left out: compute the
ratio from ``loopline_prediction_cache_lookups_total``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "ServerMetrics"]

# Request latency buckets, in seconds: a served prediction takes well under a millisecond
# to tens of milliseconds.
_LATENCY = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)


class ServerMetrics:
    """The server's metrics (see the module docstring)."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "loopline_request_seconds",
            "Time to answer a request, by route and model version.",
            ("route", "model", "version"),
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.predictions = Counter(
            "loopline_predictions",
            "Rows predicted, by model version.",
            ("model", "version"),
            registry=self.registry,
        )
        self.errors = Counter(
            "loopline_request_errors",
            "Requests answered with an error, by route, HTTP status and kind.",
            ("route", "status", "kind"),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "loopline_batch_rows",
            "Rows per model call, by model.",
            ("model",),
            buckets=_BATCH,
            registry=self.registry,
        )
        self.feature_lookup = Histogram(
            "loopline_feature_lookup_seconds",
            "Time to read a request's features from the online store.",
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.loaded = Gauge(
            "loopline_model_loaded",
            "1 for each model version loaded; 'current' says whether it answers by default.",
            ("model", "version", "current"),
            registry=self.registry,
            multiprocess_mode="max",
        )
        self.switches = Counter(
            "loopline_model_switches",
            "Times a followed alias moved and the server switched versions.",
            ("model",),
            registry=self.registry,
        )

        self.routed = Counter(
            "loopline_routed_requests",
            "Requests by the model version that answered and its role: main, canary, fallback.",
            ("model", "version", "role"),
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "loopline_fallbacks",
            "Requests a fallback answered because the model failed, by reason.",
            ("model", "reason"),
            registry=self.registry,
        )
        self.shadow_predictions = Counter(
            "loopline_shadow_predictions",
            "Rows a shadow model scored (never returned).",
            ("model", "version"),
            registry=self.registry,
        )
        self.shadow_errors = Counter(
            "loopline_shadow_errors",
            "Shadow predictions that failed, by error kind.",
            ("model", "kind"),
            registry=self.registry,
        )

    def counter(
        self, name: str, documentation: str, label: str | None = None
    ) -> Callable[[str, float], None]:
        """A counter of this server's, as ``count(label_value, amount)`` (the value is
        ignored without a ``label``): what the cache and the prediction log count into in
        multi-process mode."""
        counter = Counter(name, documentation, () if label is None else (label,),
                          registry=self.registry)  # fmt: skip
        children: dict[str, Counter] = {}

        def count(value: str, amount: float = 1) -> None:
            child = counter if label is None else children.get(value)
            if child is None:
                child = children[value] = counter.labels(value)
            child.inc(amount)

        return count

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
