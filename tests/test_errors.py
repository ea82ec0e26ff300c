"""Every error kallm produces is OpenAI's error JSON with the right status; none is stored."""

from __future__ import annotations

import socket
from typing import Any

import openai
import pytest

from tests.harness import Http, Proxy, Upstream
from tests.test_chat_cache import MODEL, ask, cache_header

CHAT = "/v1/chat/completions"


def assert_openai_error(reply: Any, status: int, param: str | None = None) -> dict[str, Any]:
    assert reply.status == status
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": "yes"},
            "stream",
        ),
    ],
    ids=[
        "malformed",
        "not-object",
        "no-model",
        "no-messages",
        "empty-messages",
        "bad-role",
        "bad-stream",
    ],
)
def test_bad_requests_are_400_naming_the_field(http: Http, body: Any, param: str | None) -> None:
    assert_openai_error(http.post(CHAT, body), 400, param)


def test_sdk_shows_kallm_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[])
    assert "messages" in str(caught.value)


def test_bad_threshold_header_is_400(http: Http) -> None:
    reply = http.post(
        CHAT,
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        headers={"X-Kallm-Threshold": "1.5"},
    )
    assert_openai_error(reply, 400, "X-Kallm-Threshold")


def test_body_over_limit_is_413(make_proxy: Any) -> None:
    proxy: Proxy = make_proxy(max_body_bytes=2000)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_openai_error(Http(proxy.root).post(CHAT, body), 413)


def test_no_key_anywhere_is_401(make_proxy: Any, upstream: Upstream) -> None:
    proxy: Proxy = make_proxy(upstream_api_key=None)
    reply = Http(proxy.root).post(
        CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    )
    error = assert_openai_error(reply, 401)
    assert "OPENAI_API_KEY" in error["message"]
    assert upstream.fake.chat_calls == 0


def test_client_key_is_forwarded_else_configured_key(
    client: openai.OpenAI, http: Http, upstream: Upstream
) -> None:
    ask(client, "first question")
    assert upstream.fake.requests[-1].headers["authorization"] == "Bearer sk-client"
    http.post(CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "second one"}]})
    assert upstream.fake.requests[-1].headers["authorization"] == "Bearer sk-test-upstream"


def test_upstream_500_is_relayed_and_not_stored(client: openai.OpenAI, upstream: Upstream) -> None:
    upstream.fake.fail_status = 500
    with pytest.raises(openai.InternalServerError):
        ask(client, "Will this fail?")
    upstream.fake.fail_status = None
    assert cache_header(ask(client, "Will this fail?")) == "MISS"


def test_upstream_timeout_is_504(make_proxy: Any, upstream: Upstream) -> None:
    proxy: Proxy = make_proxy(upstream_timeout=0.3)
    upstream.fake.stall_seconds = 2
    reply = Http(proxy.root).post(
        CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "slow"}]}
    )
    assert_openai_error(reply, 504)
    upstream.fake.stall_seconds = 0
    assert Http(proxy.root).get("/stats").json()["total_entries"] == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_upstream_refused_is_502(make_proxy: Any) -> None:
    proxy: Proxy = make_proxy(upstream_base_url=f"http://127.0.0.1:{free_port()}/v1")
    client = openai.OpenAI(base_url=proxy.url, api_key="k", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        ask(client, "anyone there?")
    assert caught.value.status_code == 502
    assert "unreachable" in caught.value.message or "failed" in caught.value.message


def test_cut_stream_is_not_stored(client: openai.OpenAI, upstream: Upstream, http: Http) -> None:
    upstream.fake.cut_stream_after = 2
    with pytest.raises(openai.APIError):
        list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "a long story please"}],
                stream=True,
            )
        )
    upstream.fake.cut_stream_after = None
    assert http.get("/stats").json()["total_entries"] == 0
    assert cache_header(ask(client, "a long story please")) == "MISS"


def test_client_disconnect_mid_stream_stores_nothing(
    client: openai.OpenAI, upstream: Upstream, http: Http
) -> None:
    upstream.fake.chunk_delay = 0.15
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "count slowly to ten for me"}],
        stream=True,
    )
    next(iter(stream))
    stream.close()  # the client walks away after the first chunk
    upstream.fake.chunk_delay = 0
    # the upstream would have finished by now; the partial answer must not be in the cache
    import time

    time.sleep(1.5)
    assert http.get("/stats").json()["stores"] == 0
    assert cache_header(ask(client, "count slowly to ten for me")) == "MISS"


def test_unknown_route_is_openai_shaped_404(http: Http) -> None:
    assert_openai_error(http.get("/nope"), 404)
