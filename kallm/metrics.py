"""Prometheus metrics: one registry per server, rendered by prometheus-client.

Per-request instruments (counts, latency histograms, tokens, spend) are fed
once per request from the finished ``RequestLog``. Cache state (entries, hits,
evictions, snapshot age) is read at scrape time by a collector, so the numbers
in ``/metrics`` and ``/stats`` come from the same counters and the request path
pays nothing for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from kallm.server.log import RequestLog
    from kallm.server.runtime import Runtime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A cache hit takes about a millisecond and a model call seconds: buckets span both.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
LOOKUP_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25)


class Metrics:
    def __init__(self, runtime: Runtime):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "kallm_requests",
            "Requests answered, by route and outcome.",
            ["path", "model", "provider", "cache", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "kallm_request_duration_seconds",
            "Time to the whole answer.",
            ["cache"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream = Histogram(
            "kallm_upstream_duration_seconds",
            "Time spent waiting on the upstream.",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            "kallm_time_to_first_token_seconds",
            "Time to the first streamed event.",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lookup = Histogram(
            "kallm_cache_lookup_duration_seconds",
            "Cache lookup: exact tier, embedding and search.",
            buckets=LOOKUP_BUCKETS,
            registry=r,
        )
        self.embedding = Histogram(
            "kallm_embedding_duration_seconds",
            "Embedding one prompt.",
            buckets=LOOKUP_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "kallm_tokens", "Tokens of upstream answers.", ["model", "direction"], registry=r
        )
        self.spend = Counter("kallm_spend_usd", "Estimated upstream spend.", ["model"], registry=r)
        router, prices = runtime.router, runtime.prices
        self._models = (
            set(router.aliases)
            | set(prices.names())
            | {
                model
                for provider in router.providers
                for model in provider.config.models
                if not set(model) & set("*?[")
            }
        )
        self._figures = CacheFigures(0, 0, 0)
        # labels() validates and locks (a few us a call): each labelled child is made once;
        # bounded as the label values are
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        r.register(CacheCollector(runtime, lambda: self._figures))

    def model_label(self, record: RequestLog) -> str:
        """A model name is the client's to choose: only names kallm knows (configured
        models and aliases, models in the price table) become label values; any other is
        ``other``, so no client can grow the registry, whatever names it invents."""
        if not record.model:
            return ""
        return record.model if record.model in self._models else "other"

    def observe(self, record: RequestLog) -> None:
        """Count one finished request."""
        model = self.model_label(record)
        provider = record.provider or ""
        cache = record.cache or "none"
        labels = (record.path_group, model, provider, cache, str(record.status))
        self._child(self.requests, labels).inc()
        self._child(self.latency, (cache,)).observe(time.perf_counter() - record.started)
        if record.lookup_seconds is not None:
            self.lookup.observe(record.lookup_seconds)
        if record.embed_seconds is not None:
            self.embedding.observe(record.embed_seconds)
        if record.upstream_seconds is not None:
            self._child(self.upstream, (provider,)).observe(record.upstream_seconds)
        if record.first_token_seconds is not None:
            self._child(self.first_token, (provider,)).observe(record.first_token_seconds)
        if record.usage is not None and record.cache == "MISS":
            self._child(self.tokens, (model, "prompt")).inc(record.usage.prompt_tokens)
            self._child(self.tokens, (model, "completion")).inc(record.usage.completion_tokens)
        if record.cost_usd:
            self._child(self.spend, (model,)).inc(record.cost_usd)

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        """``metric.labels(*labels)``, made once per label set."""
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[metric, labels] = metric.labels(*labels)
        return child

    def render(self, figures: CacheFigures) -> bytes:
        """The exposition text, with the backend's figures read just before (they may live
        in another process, so they are read by the async handler, not here)."""
        self._figures = figures
        return generate_latest(self.registry)


@dataclass(frozen=True, slots=True)
class CacheFigures:
    """What the cache backend reports: entries, and what left by LRU and by TTL."""

    entries: int
    evictions: int
    expirations: int


class CacheCollector(Collector):
    """Cache and persistence state, read when Prometheus scrapes."""

    def __init__(self, runtime: Runtime, figures: Callable[[], CacheFigures]):
        self._runtime = runtime
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        runtime = self._runtime
        cache = runtime.cache
        if cache is None:  # scraped before start-up finished
            return
        stats = cache.stats
        figures = self._figures()
        yield _gauge("kallm_cache_entries", "Entries in the cache.", figures.entries)
        degraded = GaugeMetricFamily(
            "kallm_degraded", "1 while a part of the server is degraded.", labels=["part"]
        )
        for part in sorted(runtime.health.degraded):
            degraded.add_metric([part], 1)
        yield degraded
        hits = CounterMetricFamily("kallm_cache_hits", "Cache hits by tier.", labels=["tier"])
        hits.add_metric(["exact"], stats.exact_hits)
        hits.add_metric(["semantic"], stats.semantic_hits)
        yield hits
        yield _counter("kallm_cache_misses", "Lookups that found nothing.", stats.misses)
        guarded = CounterMetricFamily(
            "kallm_cache_guarded",
            "Candidates above the threshold the hit guard refused.",
            labels=["reason"],
        )
        for reason, count in sorted(stats.guarded.items()):
            guarded.add_metric([reason], count)
        yield guarded
        yield _counter("kallm_cache_evictions", "Entries evicted (LRU).", figures.evictions)
        yield _counter("kallm_cache_expirations", "Entries expired (TTL).", figures.expirations)
        yield _counter(
            "kallm_cache_embedding_errors", "Embeddings that failed.", stats.embed_errors
        )
        yield _counter("kallm_saved_usd", "Estimated spend avoided by cache hits.", stats.saved_usd)
        yield _counter("kallm_saved_tokens", "Tokens served from the cache.", stats.saved_tokens)
        yield _counter(
            "kallm_log_rows_dropped",
            "Request-log rows (and spend writes) the database could not take.",
            runtime.request_log.dropped if runtime.request_log else 0,
        )
        keeper = runtime.keeper
        if keeper is not None and keeper.last_saved is not None:
            yield _gauge(
                "kallm_cache_snapshot_age_seconds",
                "Seconds since the cache file was last written.",
                time.time() - keeper.last_saved,
            )


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)
