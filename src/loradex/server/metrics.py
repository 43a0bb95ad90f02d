"""`GET /metrics`: Prometheus counters, a latency histogram, and gauges read at scrape time.

Each app has its own `CollectorRegistry`, so several apps in one process (tests, a notebook) do not collide.

- `loradex_requests_total{model,stream}`: chat completions accepted (model without `@version`).
- `loradex_errors_total{status}`: error responses by HTTP status.
- `loradex_client_disconnects_total{stream}`: requests whose client went away before the answer; their
  generation was cancelled.
- `loradex_tokens_total{kind}`: prompt and completion tokens of generations, batched and streamed.
- `loradex_request_seconds`: time from the request to the answer (streams: to the last event).
- Read at scrape time: `loradex_queue_depth`, `loradex_streams_active`, `loradex_batches_total`,
  `loradex_batched_requests_total`, `loradex_rejected_total` (the batcher's), `loradex_adapter_loads_total`,
  `loradex_adapter_evictions_total` and `loradex_adapters_loaded` (the engine's).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..engine import Engine
    from .batcher import Batcher
    from .state import StreamSlots

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _Live(Collector):
    """The batcher's and the engine's numbers, read when Prometheus scrapes."""

    def __init__(self, batcher: Batcher, engine: Engine, streams: StreamSlots):
        self.batcher, self.engine, self.streams = batcher, engine, streams

    def collect(self) -> Iterator[Metric]:
        b, stats = self.batcher.stats, self.engine.stats
        yield GaugeMetricFamily("loradex_queue_depth", "Requests waiting for a batch.", value=self.batcher.depth)
        yield GaugeMetricFamily("loradex_streams_active", "Streaming answers in progress.", value=self.streams.active)
        yield GaugeMetricFamily("loradex_adapters_loaded", "Adapters loaded in the engine.",
                                value=len(self.engine.loaded_adapters()))
        yield CounterMetricFamily("loradex_batches", "Batches generated.", value=b["batches"])
        yield CounterMetricFamily("loradex_batched_requests", "Requests generated in batches.", value=b["requests"])
        yield CounterMetricFamily("loradex_rejected", "Requests refused with 429 (queue full).", value=b["rejected"])
        yield CounterMetricFamily("loradex_adapter_loads", "Adapter loads by the engine.",
                                  value=stats.get("adapter_loads", 0))
        yield CounterMetricFamily("loradex_adapter_evictions", "Adapters evicted by the engine.",
                                  value=stats.get("adapter_evictions", 0))


class Metrics:
    """One app's metrics: count with `requests`, `add_tokens()`, `error()` and `latency`; `render()` for a scrape."""

    def __init__(self, batcher: Batcher, engine: Engine, streams: StreamSlots):
        self.registry = CollectorRegistry()
        self.requests = Counter("loradex_requests", "Chat completions accepted.", ["model", "stream"],
                                registry=self.registry)
        self.errors = Counter("loradex_errors", "Error responses by HTTP status.", ["status"], registry=self.registry)
        self.disconnects = Counter("loradex_client_disconnects", "Clients gone before their answer (cancelled).",
                                   ["stream"], registry=self.registry)
        self.tokens = Counter("loradex_tokens", "Tokens of generations, batched and streamed.", ["kind"],
                              registry=self.registry)
        self.latency = Histogram("loradex_request_seconds", "Seconds from request to answer.", buckets=_SECONDS,
                                 registry=self.registry)
        self.registry.register(_Live(batcher, engine, streams))

    def add_tokens(self, prompt: int, completion: int) -> None:
        """Count one request's prompt tokens (once, however many choices) and its choices' completion tokens."""
        self.tokens.labels(kind="prompt").inc(prompt)
        self.tokens.labels(kind="completion").inc(completion)

    def error(self, status: int) -> None:
        """Count an error response."""
        self.errors.labels(status=str(status)).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (content type `CONTENT_TYPE_LATEST`)."""
        return generate_latest(self.registry)
