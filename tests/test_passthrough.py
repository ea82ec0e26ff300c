"""Everything under /v1 that is not chat goes to the upstream unchanged and streams back."""

from __future__ import annotations

import openai

from tests.harness import Http, Upstream


def test_models_pass_through(client: openai.OpenAI, upstream: Upstream) -> None:
    models = [m.id for m in client.models.list()]
    assert "gpt-4o-mini" in models
    seen = upstream.fake.requests[-1]
    assert seen.method == "GET" and seen.path == "/v1/models"
    assert seen.headers["authorization"] == "Bearer sk-client"


def test_query_string_and_method_are_kept(http: Http, upstream: Upstream) -> None:
    reply = http.get("/v1/models/gpt-4o?verbose=1")
    assert reply.status == 200 and reply.json()["id"] == "gpt-4o"
    assert upstream.fake.requests[-1].query == {"verbose": "1"}


def test_upstream_errors_pass_through_as_is(http: Http) -> None:
    reply = http.get("/v1/models/no-such-model")
    assert reply.status == 404
    assert reply.json()["error"]["code"] == "model_not_found"


def test_streamed_non_chat_endpoint(client: openai.OpenAI, upstream: Upstream) -> None:
    stream = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Say hello", stream=True
    )
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert text
    assert upstream.fake.calls["/v1/completions"] == 1


def test_embeddings_pass_through(client: openai.OpenAI, upstream: Upstream) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 64
    assert upstream.fake.embedding_calls == 1
    assert upstream.fake.requests[-1].json["input"] == ["a", "b"]


def test_health(http: Http) -> None:
    body = http.get("/health").json()
    assert body["status"] == "ok" and body["cache_entries"] == 0 and body["uptime_seconds"] >= 0
