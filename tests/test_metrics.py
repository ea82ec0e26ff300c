"""GET /metrics: Prometheus text that prometheus-client's own parser reads, with real counts."""

from __future__ import annotations

import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Http
from tests.test_chat_cache import ask


def scrape(http: Http) -> dict[str, list]:
    reply = http.get("/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    return {
        family.name: family.samples
        for family in text_string_to_metric_families(reply.body.decode())
    }


def value(samples: list, name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_count_hits_misses_tokens_and_spend(client: openai.OpenAI, http: Http) -> None:
    ask(client, "What is the speed of light?")
    ask(client, "What is the speed of light?")
    metrics = scrape(http)
    requests = metrics["kallm_requests"]
    assert (
        value(
            requests,
            "kallm_requests_total",
            cache="MISS",
            status="200",
            model="gpt-4o-mini",
            provider="openai",
        )
        == 1
    )
    assert value(requests, "kallm_requests_total", cache="HIT", status="200") == 1
    assert value(metrics["kallm_cache_hits"], "kallm_cache_hits_total", tier="exact") == 1
    assert value(metrics["kallm_cache_misses"], "kallm_cache_misses_total") == 1
    assert value(metrics["kallm_cache_entries"], "kallm_cache_entries") == 1
    assert value(metrics["kallm_tokens"], "kallm_tokens_total", direction="completion") > 0
    assert value(metrics["kallm_spend_usd"], "kallm_spend_usd_total") > 0
    assert value(metrics["kallm_saved_usd"], "kallm_saved_usd_total") > 0
    assert (
        value(
            metrics["kallm_request_duration_seconds"],
            "kallm_request_duration_seconds_count",
            cache="HIT",
        )
        == 1
    )
    assert (
        value(
            metrics["kallm_cache_lookup_duration_seconds"],
            "kallm_cache_lookup_duration_seconds_count",
        )
        == 2
    )
    assert (
        value(metrics["kallm_embedding_duration_seconds"], "kallm_embedding_duration_seconds_count")
        == 1
    )  # the exact hit embeds nothing


def test_errors_and_passthrough_are_counted_by_route(client: openai.OpenAI, http: Http) -> None:
    http.post("/v1/chat/completions", b"{bad")
    client.models.list()
    metrics = scrape(http)
    requests = metrics["kallm_requests"]
    assert value(requests, "kallm_requests_total", path="/v1/chat/completions", status="400") == 1
    assert value(requests, "kallm_requests_total", path="/v1/models", status="200") == 1
