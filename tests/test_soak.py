"""Load that would grow memory in a careless proxy leaves every structure of kallm bounded."""

from __future__ import annotations

import asyncio
from typing import Any

import openai

from kallm.cache.guard import wording
from kallm.providers.config import ProviderConfig
from tests.harness import Http, Proxy, Upstream


async def test_state_stays_bounded_under_varied_load(make_proxy: Any, upstream: Upstream) -> None:
    providers = (ProviderConfig("openai", "openai", upstream.url, "sk-up", None, ("gpt-*",)),)
    proxy: Proxy = make_proxy(max_cache_size=50, providers=providers)
    client = openai.AsyncOpenAI(base_url=proxy.url, api_key="k", max_retries=0)
    semaphore = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with semaphore:
            model = "gpt-4o-mini" if i % 3 else f"no-such-model-{i}"  # names clients invent
            try:
                await client.chat.completions.create(
                    model=model,
                    messages=[
                        {"role": "user", "content": f"question {i} about {i * 7919 % 1000} things"}
                    ],
                )
            except openai.APIStatusError as exc:
                assert exc.status_code == 404

    await asyncio.gather(*(one(i) for i in range(600)))
    runtime = proxy.runtime
    assert len(runtime.cache.backend) <= 50
    assert len(runtime.cache.stats.lookup_seconds) <= 2048
    assert wording.cache_info().currsize <= 4096
    samples = [s for m in runtime.metrics.requests.collect() for s in m.samples]
    models = {s.labels["model"] for s in samples}
    assert models <= {"gpt-4o-mini", "other", ""}  # invented names share one label
    stats = Http(proxy.root).get("/stats").json()
    assert stats["total_entries"] <= 50 and stats["evictions"] >= 350
