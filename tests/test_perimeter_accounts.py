"""Virtual keys share one provider account: what a key may not do with it, and what it
cannot make cheaper than it is.

Every key's call goes out with the server's provider key, so the account (its stored
responses, files, vector stores, saved prompts, organisations) is every key's at once.
These tests try, with an ordinary key, to (A) size a request by an output field the
route's API ignores and so be billed one token for thousands, (B) hide a large input
behind a document given by reference, (C) reach the account's stored state or its
unpriceable hosted tools through a request body, (D) pick the account with a client
header, and (E) read the account's models through ``GET /v1/models/{id}``. Each checks
the answer and what the fake upstreams received; bills are checked against the usage
the fake reported, priced by the shipped table.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fake_anthropic import FakeAnthropic
from tests.fake_base import FakeServer
from tests.fake_gemini import FakeGemini
from tests.harness import LoopThread, Proxy, Upstream, stop
from tests.test_perimeter import (
    ADMIN,
    CHAT,
    MODEL,
    bearer,
    chat_body,
    cost,
    error_of,
    new_key,
    raw,
    received_nothing,
    settled_spend,
    spend_of,
    three_providers,
    wait_for,
)

HAIKU = "claude-haiku-4-5"
NO_CACHE = [("Cache-Control", "no-cache, no-store")]


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


@dataclass
class Fleet:
    proxy: Proxy
    openai: FakeServer
    anthropic: FakeAnthropic
    gemini: FakeGemini

    @property
    def fakes(self) -> tuple[FakeServer, ...]:
        return (self.openai, self.anthropic, self.gemini)


@pytest.fixture
def make_fleet(
    loop_thread: LoopThread,
    upstream: Upstream,
    make_proxy: Callable[..., Proxy],
    tmp_path: Path,
) -> Iterator[Callable[..., Fleet]]:
    """kallm in front of the three fakes: ``gpt-*`` to OpenAI, ``claude-*`` to Anthropic,
    ``gemini-*`` to Gemini; ``auth`` "virtual-keys" (with a db and an admin key) or "off"."""
    runners = []

    def make(auth: str = "virtual-keys", **overrides: Any) -> Fleet:
        providers, anthropic, gemini = three_providers(loop_thread, upstream, runners)
        if auth == "virtual-keys":
            overrides = {"db_path": tmp_path / "kallm.db", "admin_key": ADMIN, **overrides}
        proxy = make_proxy(providers=providers, auth=auth, **overrides)
        return Fleet(proxy, upstream.fake, anthropic, gemini)

    yield make
    for runner in runners:
        stop(loop_thread, runner)


@pytest.fixture
def fleet(make_fleet: Callable[..., Fleet]) -> Fleet:
    return make_fleet()


@pytest.fixture
def keyed(make_proxy: Callable[..., Proxy], tmp_path: Path) -> Proxy:
    """kallm with virtual keys in front of the OpenAI fake alone (the default provider)."""
    return make_proxy(
        auth="virtual-keys", db_path=tmp_path / "kallm.db", admin_key=ADMIN, open_routes=("files",)
    )


def anthropic_error(reply: Any) -> dict[str, Any]:
    """The error of an answer in Anthropic's shape: ``{"type":"error","error":{...}}``."""
    body = reply.json()
    assert isinstance(body, dict) and body.get("type") == "error", reply.body[:300]
    error = body.get("error")
    assert isinstance(error, dict) and isinstance(error.get("type"), str), reply.body[:300]
    assert isinstance(error.get("message"), str) and error["message"], reply.body[:300]
    return error


def paths_of(*fakes: FakeServer) -> list[str]:
    return [r.path for fake in fakes for r in fake.requests]


@contextmanager
def one_in_flight(
    proxy: Proxy, secret: str, fake: FakeServer, path: str, body: dict[str, Any]
) -> Iterator[None]:
    """A small request of ``secret``'s held upstream (the fake stalls) for the block.

    The ledger admits a request whatever its estimate when the key has nothing in flight
    and is under budget (the overshoot is at most that one request): a reservation is
    what refuses, so a refusal by the estimate is tested with another request in flight.
    """
    fake.stall_seconds = 0.5
    replies: list[Any] = []
    thread = threading.Thread(
        target=lambda: replies.append(raw(proxy, "POST", path, bearer(secret) + NO_CACHE, body))
    )
    thread.start()
    try:
        wait_for(lambda: len(fake.requests) == 1, what="the first request upstream")
        yield
    finally:
        thread.join(10)
        fake.stall_seconds = 0.0
    assert replies and replies[0].status == 200, replies and replies[0].body[:300]


def small_messages(model: str = HAIKU) -> dict[str, Any]:
    return {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def small_chat(model: str = MODEL) -> dict[str, Any]:
    return chat_body(model, "hi", max_tokens=16)


# ---------------------------------------------------------------- A. output limits


def test_chat_to_anthropic_sized_by_max_output_tokens_is_billed_the_real_output(
    fleet: Fleet,
) -> None:
    """``max_output_tokens`` is the Responses API's field; chat ignores it, and so does the
    translator to Anthropic (it sends its default max_tokens). A request sized at one
    output token by it must still be billed the 3,000 tokens the upstream generated."""
    secret = new_key(fleet.proxy, "sizer", models=[HAIKU], budget_usd=1.0)
    fleet.anthropic.reply = words(3000)
    body = chat_body(HAIKU, "Write three thousand words please", max_output_tokens=1)
    reply = raw(fleet.proxy, "POST", CHAT, bearer(secret) + NO_CACHE, body)
    assert reply.status == 200, reply.body[:300]
    usage = reply.json()["usage"]
    assert usage["completion_tokens"] == 3000, usage
    assert len(fleet.anthropic.requests) == 1
    expected = cost(HAIKU, usage["prompt_tokens"], 3000)
    spend = settled_spend(fleet.proxy, "sizer", 0.0)
    assert spend == pytest.approx(expected, rel=1e-9), (
        f"billed ${spend:.9f} for 3000 output tokens that cost ${expected:.9f}"
    )


def test_chat_with_both_limits_is_sized_by_the_larger(fleet: Fleet) -> None:
    """Chat's two fields, both given: the translator sends ``max_completion_tokens`` (8000)
    to Anthropic; a size read from ``max_tokens`` (1) would bill one token."""
    secret = new_key(fleet.proxy, "both", models=[HAIKU], budget_usd=1.0)
    fleet.anthropic.reply = words(3000)
    body = chat_body(HAIKU, "Write three thousand words", max_tokens=1, max_completion_tokens=8000)
    reply = raw(fleet.proxy, "POST", CHAT, bearer(secret) + NO_CACHE, body)
    assert reply.status == 200, reply.body[:300]
    usage = reply.json()["usage"]
    assert usage["completion_tokens"] == 3000, usage
    expected = cost(HAIKU, usage["prompt_tokens"], 3000)
    assert settled_spend(fleet.proxy, "both", 0.0) == pytest.approx(expected, rel=1e-9)


def test_messages_to_openai_sized_by_max_completion_tokens_is_billed_the_real_output(
    fleet: Fleet,
) -> None:
    """On /v1/messages the limit is ``max_tokens`` (8000, what the translator sends);
    ``max_completion_tokens: 1`` is not a Messages field and must not size the bill."""
    secret = new_key(fleet.proxy, "sizer", models=[MODEL], budget_usd=1.0)
    fleet.openai.reply = words(3000)  # type: ignore[attr-defined]
    body = {
        "model": MODEL,
        "max_tokens": 8000,
        "max_completion_tokens": 1,
        "messages": [{"role": "user", "content": "Write three thousand words please"}],
    }
    reply = raw(fleet.proxy, "POST", "/v1/messages", bearer(secret) + NO_CACHE, body)
    assert reply.status == 200, reply.body[:300]
    usage = reply.json()["usage"]
    assert usage["output_tokens"] == 3000, usage
    assert paths_of(fleet.openai) == [CHAT]
    expected = cost(MODEL, usage["input_tokens"], 3000)
    spend = settled_spend(fleet.proxy, "sizer", 0.0)
    assert spend == pytest.approx(expected, rel=1e-9), (
        f"billed ${spend:.9f} for 3000 output tokens that cost ${expected:.9f}"
    )


def test_responses_to_anthropic_sized_by_max_completion_tokens_is_billed_the_real_output(
    fleet: Fleet,
) -> None:
    """On /v1/responses the limit is ``max_output_tokens`` (8000)."""
    secret = new_key(fleet.proxy, "sizer", models=[HAIKU], budget_usd=1.0)
    fleet.anthropic.reply = words(3000)
    body = {
        "model": HAIKU,
        "input": "Write three thousand words please",
        "max_output_tokens": 8000,
        "max_completion_tokens": 1,
    }
    reply = raw(fleet.proxy, "POST", "/v1/responses", bearer(secret) + NO_CACHE, body)
    assert reply.status == 200, reply.body[:300]
    usage = reply.json()["usage"]
    assert usage["output_tokens"] == 3000, usage
    assert len(fleet.anthropic.requests) == 1
    assert fleet.anthropic.requests[0].json["max_tokens"] == 8000
    expected = cost(HAIKU, usage["input_tokens"], 3000)
    spend = settled_spend(fleet.proxy, "sizer", 0.0)
    assert spend == pytest.approx(expected, rel=1e-9), (
        f"billed ${spend:.9f} for 3000 output tokens that cost ${expected:.9f}"
    )


def test_a_foreign_output_field_does_not_shrink_the_reservation(fleet: Fleet) -> None:
    """Sized by chat's own fields (none here: haiku's 64,000-token output limit, $0.32), a
    chat request does not fit what is left of a $0.01 budget; ``max_output_tokens: 1``
    (not a chat field) must not size it at one token and let it in."""
    secret = new_key(fleet.proxy, "small", models=[HAIKU], budget_usd=0.01)
    with one_in_flight(fleet.proxy, secret, fleet.anthropic, "/v1/messages", small_messages()):
        body = chat_body(HAIKU, "Hello", max_output_tokens=1)
        reply = raw(fleet.proxy, "POST", CHAT, bearer(secret) + NO_CACHE, body)
        assert reply.status == 429, (reply.status, reply.body[:300])
        assert error_of(reply)["code"] == "insufficient_quota"
        assert len(fleet.anthropic.requests) == 1  # the one in flight, nothing more
    received_nothing(fleet.openai, fleet.gemini)


def test_chat_with_both_limits_reserves_the_larger(fleet: Fleet) -> None:
    """``max_tokens: 64000`` next to ``max_completion_tokens: 1``: the reservation is
    sized by the larger ($0.32 of haiku output), which a $0.01 budget does not hold."""
    secret = new_key(fleet.proxy, "small", models=[HAIKU], budget_usd=0.01)
    with one_in_flight(fleet.proxy, secret, fleet.anthropic, "/v1/messages", small_messages()):
        body = chat_body(HAIKU, "Hello", max_tokens=64000, max_completion_tokens=1)
        reply = raw(fleet.proxy, "POST", CHAT, bearer(secret) + NO_CACHE, body)
        assert reply.status == 429, (reply.status, reply.body[:300])
        assert error_of(reply)["code"] == "insufficient_quota"
        assert len(fleet.anthropic.requests) == 1


# ---------------------------------------------------------------- B. documents by reference


def document_by_url(**extra: Any) -> dict[str, Any]:
    return {
        "model": HAIKU,
        "max_tokens": 64,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": {"type": "url", "url": "https://example.com/big-report.pdf"},
                    },
                    {"type": "text", "text": "Summarise this report"},
                ],
            }
        ],
        **extra,
    }


def test_a_document_by_url_is_refused_on_a_small_budget_before_the_upstream(
    fleet: Fleet,
) -> None:
    """A URL can name a 500-page PDF: reserved as 200,000 input tokens ($0.20 on haiku),
    it does not fit what is left of a $0.01 budget; sized by the body (a few hundred
    bytes, $0.0005) it would."""
    secret = new_key(fleet.proxy, "reader", models=[HAIKU], budget_usd=0.01)
    with one_in_flight(fleet.proxy, secret, fleet.anthropic, "/v1/messages", small_messages()):
        reply = raw(fleet.proxy, "POST", "/v1/messages", bearer(secret), document_by_url())
        assert reply.status == 429, (reply.status, reply.body[:300])
        anthropic_error(reply)
        assert len(fleet.anthropic.requests) == 1  # the one in flight, not the document
    received_nothing(fleet.openai, fleet.gemini)


def test_an_input_file_by_url_on_responses_is_refused_on_a_small_budget(fleet: Fleet) -> None:
    """200,000 gpt-4o-mini input tokens are $0.03: more than a $0.01 budget holds."""
    secret = new_key(fleet.proxy, "reader", models=[MODEL], budget_usd=0.01)
    body = {
        "model": MODEL,
        "max_output_tokens": 16,
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_file", "file_url": "https://example.com/big-report.pdf"},
                    {"type": "input_text", "text": "Summarise this report"},
                ],
            }
        ],
    }
    with one_in_flight(fleet.proxy, secret, fleet.openai, CHAT, small_chat()):
        reply = raw(fleet.proxy, "POST", "/v1/responses", bearer(secret), body)
        assert reply.status == 429, (reply.status, reply.body[:300])
        assert error_of(reply)["code"] == "insufficient_quota"
        assert paths_of(fleet.openai) == [CHAT]  # the one in flight, not the file
    received_nothing(fleet.anthropic, fleet.gemini)


def test_a_small_request_still_fits_next_to_one_in_flight(fleet: Fleet) -> None:
    """The control for the refusals above: the same budget, the same request in flight,
    and a request without a document is admitted (it is the document that is refused)."""
    secret = new_key(fleet.proxy, "reader", models=[HAIKU], budget_usd=0.01)
    with one_in_flight(fleet.proxy, secret, fleet.anthropic, "/v1/messages", small_messages()):
        body = small_messages()
        body["messages"][0]["content"] = "Summarise nothing"
        reply = raw(fleet.proxy, "POST", "/v1/messages", bearer(secret) + NO_CACHE, body)
        assert reply.status == 200, (reply.status, reply.body[:300])


def test_a_document_by_url_is_billed_the_input_the_upstream_reports(fleet: Fleet) -> None:
    """The fake reads the document: 150,000 input tokens. The bill is those, not the few
    hundred the body's size would hold it to."""
    secret = new_key(fleet.proxy, "reader", models=[HAIKU], budget_usd=5.0)
    fake = fleet.anthropic
    plain_usage = fake._usage

    def document_usage(body: dict[str, Any], content: list[dict[str, Any]]) -> dict[str, Any]:
        return {**plain_usage(body, content), "input_tokens": 150_000}

    fake._usage = document_usage  # type: ignore[method-assign]
    reply = raw(fleet.proxy, "POST", "/v1/messages", bearer(secret), document_by_url())
    assert reply.status == 200, reply.body[:300]
    usage = reply.json()["usage"]
    assert usage["input_tokens"] == 150_000, usage
    assert len(fake.requests) == 1
    expected = cost(HAIKU, 150_000, usage["output_tokens"])
    spend = settled_spend(fleet.proxy, "reader", 0.0)
    assert spend == pytest.approx(expected, rel=1e-9), (
        f"billed ${spend:.6f} for 150,000 input tokens that cost ${expected:.6f}"
    )


# ---------------------------------------------------------------- C. the account's state

FILE_PART = {"type": "file", "file": {"file_id": "file-abc123"}}

# (route, body) pairs that reach state stored in the provider account.
STATEFUL: list[tuple[str, str, dict[str, Any]]] = [
    (
        "previous_response_id",
        "/v1/responses",
        {"model": MODEL, "input": "go on", "previous_response_id": "resp_abc123"},
    ),
    ("conversation", "/v1/responses", {"model": MODEL, "input": "go on", "conversation": "conv_1"}),
    (
        "stored-prompt",
        "/v1/responses",
        {"model": MODEL, "input": "go on", "prompt": {"id": "pmpt_abc123", "version": "2"}},
    ),
    (
        "input_file-file_id",
        "/v1/responses",
        {
            "model": MODEL,
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_file", "file_id": "file-abc123"},
                        {"type": "input_text", "text": "Summarise"},
                    ],
                }
            ],
        },
    ),
    (
        "file_search-tool",
        "/v1/responses",
        {"model": MODEL, "input": "find it", "tools": [{"type": "file_search"}]},
    ),
    (
        "vector_store_ids",
        "/v1/responses",
        {
            "model": MODEL,
            "input": "find it",
            "tools": [{"type": "file_search", "vector_store_ids": ["vs_abc123"]}],
        },
    ),
    (
        "mcp-tool",
        "/v1/responses",
        {
            "model": MODEL,
            "input": "ask it",
            "tools": [
                {"type": "mcp", "server_label": "x", "server_url": "https://mcp.example.com"}
            ],
        },
    ),
    (
        "chat-file-part",
        CHAT,
        {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": [FILE_PART, {"type": "text", "text": "Summarise"}]}
            ],
        },
    ),
    (
        "chat-file_id-elsewhere",
        CHAT,
        {**chat_body(MODEL, "hello"), "metadata": {"note": {"file_id": "file-abc123"}}},
    ),
    (
        "chat-vector_store_ids",
        CHAT,
        {
            **chat_body(MODEL, "hello"),
            "tool_resources": {"file_search": {"vector_store_ids": ["vs_abc123"]}},
        },
    ),
]

MESSAGES_STATEFUL: list[tuple[str, dict[str, Any]]] = [
    (
        "mcp_servers",
        {
            "model": HAIKU,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "ask it"}],
            "mcp_servers": [{"type": "url", "url": "https://mcp.example.com", "name": "x"}],
        },
    ),
    (
        "document-file_id",
        {
            "model": HAIKU,
            "max_tokens": 64,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "document", "source": {"type": "file", "file_id": "file_011"}},
                        {"type": "text", "text": "Summarise"},
                    ],
                }
            ],
        },
    ),
    (
        "mcp-tool",
        {
            "model": HAIKU,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "ask it"}],
            "tools": [{"type": "mcp_toolset", "mcp_server_name": "x"}],
        },
    ),
]


@pytest.mark.parametrize(("case", "path", "body"), STATEFUL, ids=[c for c, _, _ in STATEFUL])
def test_a_key_cannot_reach_the_accounts_stored_state(
    fleet: Fleet, case: str, path: str, body: dict[str, Any]
) -> None:
    secret = new_key(fleet.proxy, "tenant", models=[MODEL])  # no budget: state alone refuses
    reply = raw(fleet.proxy, "POST", path, bearer(secret), body)
    assert reply.status == 403, (case, reply.status, reply.body[:300])
    error_of(reply)
    received_nothing(*fleet.fakes)


@pytest.mark.parametrize(("case", "body"), MESSAGES_STATEFUL, ids=[c for c, _ in MESSAGES_STATEFUL])
def test_a_key_cannot_reach_the_accounts_stored_state_through_messages(
    fleet: Fleet, case: str, body: dict[str, Any]
) -> None:
    secret = new_key(fleet.proxy, "tenant", models=[HAIKU])
    reply = raw(fleet.proxy, "POST", "/v1/messages", bearer(secret), body)
    assert reply.status == 403, (case, reply.status, reply.body[:300])
    anthropic_error(reply)
    received_nothing(*fleet.fakes)


@pytest.mark.parametrize(("case", "path", "body"), STATEFUL, ids=[c for c, _, _ in STATEFUL])
def test_with_auth_off_the_same_bodies_go_to_the_callers_own_account(
    make_fleet: Callable[..., Fleet], case: str, path: str, body: dict[str, Any]
) -> None:
    fleet = make_fleet(auth="off")
    reply = raw(fleet.proxy, "POST", path, bearer("sk-caller"), body)
    assert paths_of(*fleet.fakes) == [path], (case, reply.status, reply.body[:300])
    sent = fleet.openai.requests[0].json
    for name in ("previous_response_id", "conversation", "prompt", "tools", "metadata"):
        if name in body:
            assert sent.get(name) == body[name], (case, name)


@pytest.mark.parametrize(("case", "body"), MESSAGES_STATEFUL, ids=[c for c, _ in MESSAGES_STATEFUL])
def test_with_auth_off_the_same_messages_go_to_the_callers_own_account(
    make_fleet: Callable[..., Fleet], case: str, body: dict[str, Any]
) -> None:
    fleet = make_fleet(auth="off")
    raw(fleet.proxy, "POST", "/v1/messages", [("x-api-key", "sk-ant-caller")], body)
    assert paths_of(*fleet.fakes) == ["/v1/messages"], case
    sent = fleet.anthropic.requests[0].json
    assert sent["messages"] == body["messages"]
    assert sent.get("mcp_servers") == body.get("mcp_servers")


FEE_TOOLS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("web_search_preview", "/v1/responses", MODEL, {"type": "web_search_preview"}),
    ("web_search", "/v1/responses", MODEL, {"type": "web_search"}),
    (
        "code_interpreter",
        "/v1/responses",
        MODEL,
        {"type": "code_interpreter", "container": {"type": "auto"}},
    ),
    ("image_generation", "/v1/responses", MODEL, {"type": "image_generation"}),
    (
        "web_search_20250305",
        "/v1/messages",
        HAIKU,
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
    ),
    ("web_fetch_20250910", "/v1/messages", HAIKU, {"type": "web_fetch_20250910", "name": "f"}),
    (
        "code_execution_20250825",
        "/v1/messages",
        HAIKU,
        {"type": "code_execution_20250825", "name": "code_execution"},
    ),
]


def _fee_body(path: str, model: str, tool: dict[str, Any]) -> dict[str, Any]:
    if path == "/v1/messages":
        return {
            "model": model,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Look it up"}],
            "tools": [tool],
        }
    return {"model": model, "input": "Look it up", "max_output_tokens": 64, "tools": [tool]}


@pytest.mark.parametrize(
    ("case", "path", "model", "tool"), FEE_TOOLS, ids=[c for c, *_ in FEE_TOOLS]
)
def test_a_key_with_a_budget_cannot_use_a_hosted_tool_kallm_cannot_price(
    fleet: Fleet, case: str, path: str, model: str, tool: dict[str, Any]
) -> None:
    secret = new_key(fleet.proxy, "budgeted", models=[model], budget_usd=5.0)
    reply = raw(fleet.proxy, "POST", path, bearer(secret), _fee_body(path, model, tool))
    assert reply.status == 403, (case, reply.status, reply.body[:300])
    if path == "/v1/messages":
        anthropic_error(reply)
    else:
        error_of(reply)
    received_nothing(*fleet.fakes)
    assert spend_of(fleet.proxy, "budgeted") == 0.0


@pytest.mark.parametrize(
    ("case", "path", "model", "tool"), FEE_TOOLS, ids=[c for c, *_ in FEE_TOOLS]
)
def test_a_key_without_a_budget_may_use_a_hosted_tool(
    fleet: Fleet, case: str, path: str, model: str, tool: dict[str, Any]
) -> None:
    secret = new_key(fleet.proxy, "unbudgeted", models=[model])
    raw(fleet.proxy, "POST", path, bearer(secret), _fee_body(path, model, tool))
    assert paths_of(*fleet.fakes) == [path], case
    sent = next(r.json for fake in fleet.fakes for r in fake.requests)
    assert sent["tools"] == [tool]


# ---------------------------------------------------------------- D. account headers

ACCOUNT_HEADERS = {
    "OpenAI-Organization": "org-attacker",
    "OpenAI-Project": "proj_attacker",
    "x-api-key": "sk-attacker-x",
    "api-key": "sk-attacker-azure",
    "x-goog-api-key": "g-attacker",
}


def _no_account_headers(request: Any, upstream_key: str) -> None:
    for name, value in ACCOUNT_HEADERS.items():
        assert request.headers.get(name) != value, f"{name} reached {request.path}"
    assert request.headers.get("OpenAI-Organization") is None
    assert request.headers.get("OpenAI-Project") is None
    assert request.headers.get("api-key") is None
    assert request.headers.get("x-goog-api-key") is None
    assert request.headers.get("authorization") == f"Bearer {upstream_key}"
    assert request.headers.get("x-api-key") is None


CALLS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("chat", "POST", CHAT, chat_body(MODEL, "which account pays?")),
    ("responses", "POST", "/v1/responses", {"model": MODEL, "input": "which account pays?"}),
    ("passthrough-files", "GET", "/v1/files?purpose=batch", None),
]


@pytest.mark.parametrize(("case", "method", "path", "body"), CALLS, ids=[c for c, *_ in CALLS])
def test_account_headers_of_a_client_never_reach_the_upstream(
    keyed: Proxy, upstream: Upstream, case: str, method: str, path: str, body: Any
) -> None:
    secret = new_key(keyed, "tenant", models=[MODEL], budget_usd=1.0)
    upstream.fake.canned[("GET", "/v1/files")] = {"object": "list", "data": []}
    headers = bearer(secret) + NO_CACHE + list(ACCOUNT_HEADERS.items())
    reply = raw(keyed, method, path, headers, body)
    assert reply.status == 200, (case, reply.status, reply.body[:300])
    assert len(upstream.fake.requests) == 1
    _no_account_headers(upstream.fake.requests[0], "sk-test-upstream")


def test_account_headers_never_reach_the_upstream_through_the_model_list(
    make_proxy: Callable[..., Proxy], upstream: Upstream, tmp_path: Path
) -> None:
    """A key without a model list sees the provider's catalogue: relayed, with no header
    of the client's that names an account."""
    proxy = make_proxy(auth="virtual-keys", db_path=tmp_path / "kallm.db")
    secret = new_key(proxy, "tenant")
    reply = raw(proxy, "GET", "/v1/models", bearer(secret) + list(ACCOUNT_HEADERS.items()))
    assert reply.status == 200, reply.body[:300]
    for request in upstream.fake.requests:
        _no_account_headers(request, "sk-test-upstream")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, chat_body(HAIKU, "which account pays?")),
        ("/v1/responses", {"model": HAIKU, "input": "which account pays?"}),
        (
            "/v1/messages",
            {
                "model": HAIKU,
                "max_tokens": 32,
                "messages": [{"role": "user", "content": "which account pays?"}],
            },
        ),
    ],
    ids=["chat", "responses", "messages"],
)
def test_account_headers_never_reach_another_provider(
    fleet: Fleet, path: str, body: dict[str, Any]
) -> None:
    secret = new_key(fleet.proxy, "tenant", models=[HAIKU], budget_usd=1.0)
    headers = bearer(secret) + NO_CACHE + list(ACCOUNT_HEADERS.items())
    reply = raw(fleet.proxy, "POST", path, headers, body)
    assert reply.status == 200, reply.body[:300]
    assert len(fleet.anthropic.requests) == 1
    sent = fleet.anthropic.requests[0].headers
    assert sent.get("x-api-key") == "sk-ant"  # the server's key, never the client's
    for name in ("OpenAI-Organization", "OpenAI-Project", "api-key", "x-goog-api-key"):
        assert sent.get(name) is None, f"{name} reached Anthropic"
    assert secret not in json.dumps(dict(sent))


@pytest.mark.parametrize(("case", "method", "path", "body"), CALLS, ids=[c for c, *_ in CALLS])
def test_with_auth_off_the_callers_organisation_is_forwarded(
    make_proxy: Callable[..., Proxy],
    upstream: Upstream,
    case: str,
    method: str,
    path: str,
    body: Any,
) -> None:
    proxy = make_proxy()
    upstream.fake.canned[("GET", "/v1/files")] = {"object": "list", "data": []}
    headers = bearer("sk-caller") + NO_CACHE + [("OpenAI-Organization", "org-caller")]
    reply = raw(proxy, method, path, headers, body)
    assert reply.status == 200, (case, reply.status, reply.body[:300])
    assert len(upstream.fake.requests) == 1
    assert upstream.fake.requests[0].headers.get("OpenAI-Organization") == "org-caller"


# ---------------------------------------------------------------- E. GET /v1/models/{id}


@pytest.mark.parametrize("query", ["", "?x=1", "?api-version=2024-10-21&expand=true"])
def test_a_model_the_key_may_use_is_described_by_kallm(
    keyed: Proxy, upstream: Upstream, query: str
) -> None:
    secret = new_key(keyed, "tenant", models=[MODEL])
    listing = raw(keyed, "GET", "/v1/models", bearer(secret))
    assert listing.status == 200
    assert MODEL in [m["id"] for m in listing.json()["data"]]
    reply = raw(keyed, "GET", f"/v1/models/{MODEL}{query}", bearer(secret))
    assert reply.status == 200, reply.body[:300]
    model = reply.json()
    assert model["id"] == MODEL and model["object"] == "model"
    assert not any(p.startswith("/v1/models/") for p in paths_of(upstream.fake))


@pytest.mark.parametrize(
    "model_id",
    ["ft:gpt-4o:org::abc", "ft:gpt-4o-mini:acme::abc123", "gpt-4o", "gpt-3.5-turbo-instruct"],
)
@pytest.mark.parametrize("query", ["", "?x=1"])
def test_any_other_model_is_404_and_never_asked_upstream(
    keyed: Proxy, upstream: Upstream, model_id: str, query: str
) -> None:
    secret = new_key(keyed, "tenant", models=[MODEL])
    reply = raw(keyed, "GET", f"/v1/models/{model_id}{query}", bearer(secret))
    assert reply.status == 404, (reply.status, reply.body[:300])
    error = error_of(reply)
    assert isinstance(error.get("message"), str)
    assert b"org::" not in reply.body.replace(model_id.encode(), b"")
    assert not any(p.startswith("/v1/models/") for p in paths_of(upstream.fake))


def test_a_key_without_a_model_list_cannot_read_the_accounts_fine_tunes(
    make_proxy: Callable[..., Proxy], upstream: Upstream, tmp_path: Path
) -> None:
    proxy = make_proxy(auth="virtual-keys", db_path=tmp_path / "kallm.db")
    secret = new_key(proxy, "tenant")
    upstream.fake.canned[("GET", "/v1/models/ft:gpt-4o:org::abc")] = {
        "id": "ft:gpt-4o:org::abc",
        "object": "model",
        "owned_by": "org-shared",
    }
    reply = raw(proxy, "GET", "/v1/models/ft:gpt-4o:org::abc?x=1", bearer(secret))
    assert reply.status == 404, (reply.status, reply.body[:300])
    assert b"org-shared" not in reply.body
    assert not any(p.startswith("/v1/models/") for p in paths_of(upstream.fake))


def test_with_auth_off_the_callers_key_asks_the_provider(
    make_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    proxy = make_proxy()
    reply = raw(proxy, "GET", f"/v1/models/{MODEL}", bearer("sk-caller"))
    assert reply.status == 200, reply.body[:300]
    assert reply.json()["id"] == MODEL
    assert paths_of(upstream.fake) == [f"/v1/models/{MODEL}"]
