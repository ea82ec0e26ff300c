"""Virtual keys that hold: an attacker with an ordinary key tries every way around them.

The attacker's key may use ``gpt-4o-mini`` only, has a small budget, and the server runs
with ``auth = virtual-keys``. Each test tries one way out (another route, another
spelling of a path, a path out of /v1, a model name with a path in it, an alias, a cache
namespace, an admin call with numbers that are not numbers, a key rotated behind a
mounted Secret) and checks both the answer and that the upstream received nothing it
should not have. Requests that a client would tidy go out through raw sockets
(``tests.rawhttp``). Budgets, overshoot and crashes are in ``test_perimeter_budget``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from kallm.accounts.k8s import record_for_secret
from kallm.accounts.keys import KeyStore
from kallm.db import connect
from kallm.providers.config import AliasConfig, ProviderConfig
from tests import rawhttp
from tests.fake_anthropic import FakeAnthropic, start_fake_anthropic
from tests.fake_base import FakeServer
from tests.fake_gemini import FakeGemini, start_fake_gemini
from tests.harness import LoopThread, Proxy, Upstream, stop

MODEL = "gpt-4o-mini"
ADMIN = "adm-perimeter-key-01"
CHAT = "/v1/chat/completions"
PRICES = json.loads((Path(__file__).parents[1] / "kallm/data/prices.json").read_text())["models"]


# ---------------------------------------------------------------- helpers


@pytest.fixture
def keyed(make_proxy: Callable[..., Proxy], tmp_path: Path) -> Proxy:
    return make_proxy(auth="virtual-keys", db_path=tmp_path / "kallm.db", admin_key=ADMIN)


def new_key(proxy: Proxy, name: str = "attacker", **policy: Any) -> str:
    _, secret = proxy.call(proxy.keys.create(name, **policy))
    return secret


def attacker(proxy: Proxy, budget: float = 0.05) -> str:
    """The ordinary key: gpt-4o-mini only, a small budget."""
    return new_key(proxy, "attacker", models=[MODEL], budget_usd=budget)


def spend_of(proxy: Proxy, name: str) -> float:
    record = proxy.call(proxy.keys.get(name))
    return float(proxy.call(proxy.runtime.backends.ledger.spend(record, time.time())))


def wait_for(check: Callable[[], bool], seconds: float = 5.0, what: str = "condition") -> None:
    """Settlement runs after the response is sent: poll, bounded."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} never held"
        time.sleep(0.01)


def settled_spend(proxy: Proxy, name: str, previous: float, seconds: float = 3.0) -> float:
    """The key's spend once it moved past ``previous`` (or as it stands after ``seconds``)."""
    deadline = time.monotonic() + seconds
    spend = spend_of(proxy, name)
    while spend == previous and time.monotonic() < deadline:
        time.sleep(0.01)
        spend = spend_of(proxy, name)
    return spend


def port_of(proxy: Proxy) -> int:
    return int(proxy.root.rsplit(":", 1)[1])


Header = tuple[bytes | str, bytes | str]


def raw(
    proxy: Proxy,
    method: str,
    target: bytes | str,
    headers: list[Header] | None = None,
    body: bytes | dict[str, Any] | None = None,
) -> rawhttp.RawReply:
    return rawhttp.request("127.0.0.1", port_of(proxy), method, target, headers or [], body)


def bearer(secret: str) -> list[Header]:
    return [("Authorization", f"Bearer {secret}")]


def chat_body(model: Any, text: str = "Say hello", **params: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **params}


def received_nothing(*fakes: FakeServer) -> None:
    for fake in fakes:
        got = [(r.method, r.path) for r in fake.requests]
        assert got == [], f"{type(fake).__name__} received {got}"


def error_of(reply: rawhttp.RawReply) -> dict[str, Any]:
    body = reply.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), reply.body[:300]
    return body["error"]


def cost(model: str, prompt: int, completion: int) -> float:
    """USD by the shipped table (input, cached input, output per million tokens)."""
    price = PRICES[model]
    return (prompt * price[0] + completion * price[2]) / 1_000_000


# ---------------------------------------------------------------- 1. other routes


def test_responses_with_a_model_the_key_may_not_use_is_403(
    keyed: Proxy, upstream: Upstream
) -> None:
    secret = attacker(keyed)
    reply = raw(keyed, "POST", "/v1/responses", bearer(secret), {"model": "gpt-4o", "input": "hi"})
    assert reply.status == 403, reply.body
    assert error_of(reply)["code"] == "model_not_allowed"
    received_nothing(upstream.fake)


@pytest.mark.parametrize("path", ["/v1/responses", CHAT, "/v1/completions", "/v1/embeddings"])
def test_an_allowed_but_unpriced_model_under_a_budget_is_403_naming_the_price(
    keyed: Proxy, upstream: Upstream, path: str
) -> None:
    assert not any("house-model-7b".startswith(name) for name in PRICES)
    secret = new_key(keyed, "priced", models=[MODEL, "house-model-7b"], budget_usd=0.05)
    body = {
        "model": "house-model-7b",
        "input": "hi",
        "prompt": "hi",
        "messages": [{"role": "user", "content": "hi"}],
    }
    reply = raw(keyed, "POST", path, bearer(secret), body)
    assert reply.status == 403, reply.body
    error = error_of(reply)
    assert error["code"] == "model_not_priced"
    assert "house-model-7b" in error["message"] and "price" in error["message"]
    received_nothing(upstream.fake)


BAD_MODEL_FIELDS: list[Any] = [None, "", "   ", 123, ["gpt-4o-mini"], {"name": "gpt-4o-mini"}, True]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/embeddings", "/v1/responses"])
@pytest.mark.parametrize("model", BAD_MODEL_FIELDS, ids=repr)
def test_a_model_that_is_not_a_name_is_400_on_every_policed_route(
    keyed: Proxy, upstream: Upstream, path: str, model: Any
) -> None:
    secret = attacker(keyed)
    reply = raw(keyed, "POST", path, bearer(secret), {"model": model, "prompt": "x", "input": "x"})
    assert reply.status == 400, reply.body
    assert error_of(reply)["param"] == "model"
    received_nothing(upstream.fake)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/embeddings", "/v1/responses"])
def test_a_missing_model_is_400(keyed: Proxy, upstream: Upstream, path: str) -> None:
    secret = attacker(keyed)
    reply = raw(keyed, "POST", path, bearer(secret), {"prompt": "x", "input": "x"})
    assert reply.status == 400, reply.body
    received_nothing(upstream.fake)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"}),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "Say hi"}),
        ("/v1/completions", {"model": "openai/gpt-4o", "prompt": "Say hi"}),
    ],
)
def test_a_disallowed_model_on_completions_or_embeddings_is_403(
    keyed: Proxy, upstream: Upstream, path: str, body: dict[str, Any]
) -> None:
    secret = attacker(keyed)
    reply = raw(keyed, "POST", path, bearer(secret), body)
    assert reply.status == 403, reply.body
    assert error_of(reply)["code"] == "model_not_allowed"
    received_nothing(upstream.fake)


ORGANISATION_CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/files", None),
    ("DELETE", "/v1/files/file-abc123", None),
    ("GET", "/v1/files/file-abc123/content", None),
    (
        "POST",
        "/v1/batches",
        {"input_file_id": "file-x", "endpoint": CHAT, "completion_window": "24h"},
    ),
    ("POST", "/v1/fine_tuning/jobs", {"model": MODEL, "training_file": "file-x"}),
    ("POST", "/v1/audio/speech", {"model": "tts-1", "input": "hi", "voice": "alloy"}),
    ("POST", "/v1/images/generations", {"model": "dall-e-3", "prompt": "a cat"}),
    ("POST", "/v1/assistants", {"model": MODEL}),
    ("GET", "/v1/vector_stores", None),
    ("POST", "/v1/vector_stores", {"name": "shared"}),
    ("GET", "/v1/responses/resp_123", None),
    ("GET", "/v1/chat/completions/chatcmpl-123", None),
    ("POST", "/v1/moderations", {"model": "omni-moderation-latest", "input": "hi"}),
]


@pytest.mark.parametrize(("method", "path", "body"), ORGANISATION_CALLS)
def test_organisation_routes_are_closed_to_keys(
    keyed: Proxy, upstream: Upstream, method: str, path: str, body: dict[str, Any] | None
) -> None:
    secret = attacker(keyed)
    reply = raw(keyed, method, path, bearer(secret), body)
    assert reply.status == 403, reply.body
    error = error_of(reply)
    assert error["code"] == "route_not_allowed"
    assert "open_routes" in error["message"]
    received_nothing(upstream.fake)
    assert spend_of(keyed, "attacker") == 0.0


def test_an_opened_route_works_and_its_flat_charge_is_billed(
    make_proxy: Callable[..., Proxy], upstream: Upstream, tmp_path: Path
) -> None:
    proxy = make_proxy(
        auth="virtual-keys",
        db_path=tmp_path / "kallm.db",
        open_routes=("files",),
        open_route_charge=0.01,
    )
    secret = attacker(proxy)
    listing = {"object": "list", "data": [{"id": "file-1", "object": "file"}]}
    upstream.fake.canned[("GET", "/v1/files")] = listing
    upstream.fake.canned[("DELETE", "/v1/files/file-1")] = {"id": "file-1", "deleted": True}
    reply = raw(proxy, "GET", "/v1/files?purpose=batch", bearer(secret))
    assert reply.status == 200 and reply.json() == listing
    seen = upstream.fake.requests[-1]
    assert seen.path == "/v1/files" and seen.query == {"purpose": "batch"}
    assert seen.headers["authorization"] == "Bearer sk-test-upstream"  # never the virtual key
    assert settled_spend(proxy, "attacker", 0.0) == pytest.approx(0.01)
    assert raw(proxy, "DELETE", "/v1/files/file-1", bearer(secret)).status == 200
    assert settled_spend(proxy, "attacker", 0.01) == pytest.approx(0.02)
    # what was not opened stays closed
    before = len(upstream.fake.requests)
    reply = raw(proxy, "POST", "/v1/batches", bearer(secret), {"input_file_id": "file-1"})
    assert reply.status == 403 and len(upstream.fake.requests) == before


def test_an_opened_route_refused_upstream_costs_nothing(
    make_proxy: Callable[..., Proxy], upstream: Upstream, tmp_path: Path
) -> None:
    proxy = make_proxy(
        auth="virtual-keys",
        db_path=tmp_path / "kallm.db",
        open_routes=("files",),
        open_route_charge=0.01,
    )
    secret = attacker(proxy)
    reply = raw(proxy, "GET", "/v1/files/nope", bearer(secret))  # the fake answers 404
    assert reply.status == 404
    time.sleep(0.2)
    assert spend_of(proxy, "attacker") == 0.0


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/whatever"), ("POST", "/v1/whatever/deeper"), ("GET", "/v1/some/new/endpoint")],
)
def test_an_unknown_v1_route_is_404_under_keys(
    keyed: Proxy, upstream: Upstream, method: str, path: str
) -> None:
    secret = attacker(keyed)
    reply = raw(keyed, method, path, bearer(secret), {"model": MODEL} if method == "POST" else None)
    assert reply.status == 404, reply.body
    received_nothing(upstream.fake)


# Policed routes are POST and the catalogue is GET; any other method on their paths is
# another endpoint upstream: GET /v1/chat/completions lists the organisation's stored
# completions, DELETE /v1/models/{id} deletes one of its fine-tuned models.
OTHER_METHODS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("DELETE", "/v1/models/ft:gpt-4o-mini:acme::abc123", None),
    ("POST", "/v1/models", {"model": MODEL}),
    ("GET", "/v1/chat/completions?limit=100", chat_body(MODEL)),
    ("DELETE", "/v1/chat/completions", chat_body(MODEL)),
    ("GET", "/v1/responses", {"model": MODEL, "input": "x"}),
    ("PUT", "/v1/embeddings", {"model": MODEL, "input": "x"}),
]


@pytest.mark.parametrize(("method", "path", "body"), OTHER_METHODS)
def test_a_known_path_with_another_method_never_reaches_upstream(
    keyed: Proxy, upstream: Upstream, method: str, path: str, body: dict[str, Any] | None
) -> None:
    secret = attacker(keyed)
    reply = raw(keyed, method, path, bearer(secret), body)
    assert reply.status in (403, 404, 405), (reply.status, reply.body[:200])
    received_nothing(upstream.fake)


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"the upstream received duplicated keys: {names}"
    return dict(pairs)


@pytest.mark.parametrize(
    ("path", "rest"),
    [
        (CHAT, b'"messages":[{"role":"user","content":"dup"}]'),
        ("/v1/completions", b'"prompt":"dup"'),
        ("/v1/embeddings", b'"input":"dup"'),
    ],
)
def test_a_duplicated_model_field_goes_upstream_as_the_model_that_was_checked(
    keyed: Proxy, upstream: Upstream, path: str, rest: bytes
) -> None:
    """JSON parsers disagree on duplicated keys (Python's keeps the last, others the first
    or refuse). kallm checks the last ``model``; what it forwards must not let a parser
    that keeps the first one see ``gpt-4o``: refuse the body, or send the checked one."""
    secret = attacker(keyed)
    body = b'{"model":"gpt-4o",' + rest + b',"model":"gpt-4o-mini"}'
    reply = raw(keyed, "POST", path, bearer(secret), body)
    if reply.status == 400:
        received_nothing(upstream.fake)
        return
    assert reply.status == 200, reply.body[:200]
    sent = json.loads(upstream.fake.requests[-1].body, object_pairs_hook=_pairs_without_duplicates)
    assert sent["model"] == MODEL


# ---------------------------------------------------------------- 2. chat by another path

OTHER_SPELLINGS = [
    "/v1/chat/completions/",
    "/v1//chat/completions",
    "/v1/chat%2Fcompletions",
    "/v1/chat%2fcompletions",
    "/v1/x/../chat/completions",
    "/v1/./chat/completions",
    "/v1/chat/completions%3F",
    "/v1/chat/completions%23x",
    "/v1/chat/completions;x=1",
    "/v1/chat%5Ccompletions",
    "/V1/chat/completions",
    "/v1/chat/completions%00",
    # and a few more of the same family
    "//v1/chat/completions",
    "/v1/chat/./completions",
    "/v1/chat/completions/.",
    "/v1/chat/completions%20",
    "/v1/chat/completions%0a",
    "/v1/chat/completions%ff",
    "/v1/chat\\completions",
]


# Percent-encoded unreserved characters mean the same path (RFC 3986 6.2.2.2): this is chat,
# with every check of chat, and goes upstream by the canonical path.
EQUIVALENT_SPELLINGS = ["/v1/%63hat/completions", "/v1/chat/%63%6Fmpletions"]


@pytest.mark.parametrize("path", OTHER_SPELLINGS + EQUIVALENT_SPELLINGS)
def test_chat_by_another_path_with_a_disallowed_model_never_reaches_upstream(
    keyed: Proxy, upstream: Upstream, path: str
) -> None:
    secret = attacker(keyed)
    reply = raw(keyed, "POST", path, bearer(secret), chat_body("gpt-4o"))
    assert reply.status in (403, 404), (reply.status, reply.body)
    received_nothing(upstream.fake)


@pytest.mark.parametrize("auth", ["virtual-keys", "off"])
@pytest.mark.parametrize("path", OTHER_SPELLINGS)
def test_chat_by_another_path_with_an_allowed_model_is_not_chat(
    make_proxy: Callable[..., Proxy], upstream: Upstream, tmp_path: Path, path: str, auth: str
) -> None:
    proxy = make_proxy(auth=auth, db_path=tmp_path / "kallm.db")
    headers = bearer(attacker(proxy)) if auth == "virtual-keys" else bearer("sk-client")
    reply = raw(proxy, "POST", path, headers, chat_body(MODEL, "other path"))
    assert reply.status in (403, 404), (reply.status, reply.body)
    assert upstream.fake.chat_calls == 0
    if auth == "virtual-keys":
        assert upstream.fake.raw_paths == [], upstream.fake.raw_paths
    else:  # auth off passes what is in normal form through, but never as the chat path
        assert CHAT not in upstream.fake.raw_paths, upstream.fake.raw_paths


@pytest.mark.parametrize("path", [CHAT, *EQUIVALENT_SPELLINGS])
def test_the_canonical_chat_path_is_the_one_that_reaches_upstream(
    keyed: Proxy, upstream: Upstream, path: str
) -> None:
    secret = attacker(keyed)
    reply = raw(keyed, "POST", path, bearer(secret), chat_body(MODEL, "the one way in"))
    assert reply.status == 200, reply.body
    assert reply.header("x-kallm-cache") == "MISS"  # the chat handler, cache and all
    assert upstream.fake.raw_paths == [CHAT]
    assert settled_spend(keyed, "attacker", 0.0) > 0


# ---------------------------------------------------------------- 3. leaving /v1

ESCAPES = [
    "/v1/../admin/keys",
    "/v1/../../etc/passwd",
    "/v1/%2e%2e/admin/keys",
    "/v1/%2E%2E/admin/keys",
    "/v1/..%2fadmin/keys",
    "/v1/%2e%2e%2fadmin%2fkeys",
    "/v1/.%2e/admin/keys",
    "/v1/models/../../admin/keys",
    "/v1/..;/admin/keys",
]


@pytest.mark.parametrize("auth", ["virtual-keys", "off"])
@pytest.mark.parametrize("path", ESCAPES)
def test_paths_out_of_v1_are_404(
    make_proxy: Callable[..., Proxy], upstream: Upstream, tmp_path: Path, path: str, auth: str
) -> None:
    proxy = make_proxy(auth=auth, db_path=tmp_path / "kallm.db", admin_key=ADMIN)
    if auth == "virtual-keys":
        attacker(proxy)
    # the admin key itself: even it must not turn a /v1 path into an admin call
    reply = raw(proxy, "GET", path, bearer(ADMIN))
    assert reply.status == 404, (reply.status, reply.body)
    assert b"sk-kallm" not in reply.body and b'"keys"' not in reply.body
    received_nothing(upstream.fake)


@pytest.mark.parametrize(
    "target",
    [
        "/v1/some/new/endpoint?x=1",
        "/v1/some/new/endpoint?q=a%26b%3Dc&x=1",
        "/v1/some/new/endpoint?next=%2Fv1%2Ffiles&tag=%23one",
    ],
)
def test_auth_off_passes_an_unknown_route_through_exactly(
    make_proxy: Callable[..., Proxy], upstream: Upstream, target: str
) -> None:
    proxy = make_proxy()
    raw(proxy, "GET", target, bearer("sk-client"))  # the fake answers 404: it does not know it
    assert upstream.fake.raw_paths == [target]


# ---------------------------------------------------------------- 5. aliases to other APIs


@dataclass
class Fleet:
    proxy: Proxy
    openai: Upstream
    gemini: FakeGemini
    anthropic: FakeAnthropic

    @property
    def fakes(self) -> tuple[FakeServer, ...]:
        return (self.openai.fake, self.gemini, self.anthropic)


ALIASES = (
    AliasConfig("fast", ("gemini/gemini-2.5-pro",)),
    AliasConfig("deep", ("anthropic/claude-sonnet-4-5",)),
    # an alias whose *name* a model-family glob matches, routed to a dearer model
    AliasConfig("gemini-2.5-flash-smart", ("gemini/gemini-2.5-pro",)),
)


def three_providers(
    loop_thread: LoopThread, upstream: Upstream, runners: list[Any]
) -> tuple[tuple[ProviderConfig, ...], FakeAnthropic, FakeGemini]:
    """Fake Anthropic and Gemini started (their runners appended to ``runners``) beside the
    OpenAI fake: ``gpt-*``/``o*`` to OpenAI, ``claude-*`` to Anthropic, ``gemini-*`` to Gemini."""
    anthropic, a_runner, a_url = loop_thread.run(start_fake_anthropic())
    gemini, g_runner, g_url = loop_thread.run(start_fake_gemini())
    runners.extend([a_runner, g_runner])
    providers = (
        ProviderConfig("openai", "openai", upstream.url, "sk-openai", None, ("gpt-*", "o*")),
        ProviderConfig("anthropic", "anthropic", a_url, "sk-ant", None, ("claude-*",)),
        ProviderConfig("gemini", "gemini", g_url, "g-key", None, ("gemini-*",)),
    )
    return providers, anthropic, gemini


@pytest.fixture
def make_fleet(
    loop_thread: LoopThread, upstream: Upstream, make_proxy: Callable[..., Proxy]
) -> Iterator[Callable[..., Fleet]]:
    runners = []

    def make(**overrides: Any) -> Fleet:
        providers, anthropic, gemini = three_providers(loop_thread, upstream, runners)
        proxy = make_proxy(providers=providers, aliases=ALIASES, **overrides)
        return Fleet(proxy, upstream, gemini, anthropic)

    yield make
    for runner in runners:
        stop(loop_thread, runner)


def keyed_fleet(make_fleet: Callable[..., Fleet], tmp_path: Path) -> Fleet:
    return make_fleet(auth="virtual-keys", db_path=tmp_path / "kallm.db", admin_key=ADMIN)


@pytest.mark.parametrize(
    ("alias", "model", "provider"),
    [("fast", "gemini-2.5-pro", "gemini"), ("deep", "claude-sonnet-4-5", "anthropic")],
)
@pytest.mark.parametrize("stream", [False, True])
def test_an_alias_is_billed_at_the_price_of_the_model_it_calls(
    make_fleet: Callable[..., Fleet],
    tmp_path: Path,
    alias: str,
    model: str,
    provider: str,
    stream: bool,
) -> None:
    fleet = keyed_fleet(make_fleet, tmp_path)
    secret = new_key(fleet.proxy, "aliased", models=[alias], budget_usd=1.0)
    client = openai.OpenAI(base_url=fleet.proxy.url, api_key=secret, max_retries=0)
    messages = [{"role": "user", "content": "Name three rivers of Europe please"}]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model=alias,
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        usage = chunks[-1].usage
    else:
        reply = client.chat.completions.with_raw_response.create(
            model=alias,
            messages=messages,  # type: ignore[arg-type]
        )
        assert reply.headers["x-kallm-provider"] == f"{provider}/{model}"
        usage = reply.parse().usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    fake = fleet.gemini if provider == "gemini" else fleet.anthropic
    assert len(fake.requests) == 1 and fleet.openai.fake.requests == []
    if provider == "gemini":
        assert f"models/{model}:" in fake.raw_paths[0]
    else:
        assert fake.requests[0].json["model"] == model
    expected = cost(model, usage.prompt_tokens, usage.completion_tokens)
    spend = settled_spend(fleet.proxy, "aliased", 0.0)
    assert spend > 0, f"a call through the alias {alias!r} was billed $0"
    assert spend == pytest.approx(expected, rel=1e-9), (spend, expected)


@pytest.mark.parametrize("model", ["fast", "gemini/gemini-2.5-pro", "gemini-2.5-pro"])
def test_a_flash_key_cannot_reach_pro_through_an_alias_it_does_not_name(
    make_fleet: Callable[..., Fleet], tmp_path: Path, model: str
) -> None:
    fleet = keyed_fleet(make_fleet, tmp_path)
    secret = new_key(fleet.proxy, "flash", models=["gemini-2.5-flash*"], budget_usd=1.0)
    reply = raw(fleet.proxy, "POST", CHAT, bearer(secret), chat_body(model))
    assert reply.status == 403, reply.body
    received_nothing(*fleet.fakes)
    # the family it was given still works
    reply = raw(fleet.proxy, "POST", CHAT, bearer(secret), chat_body("gemini-2.5-flash"))
    assert reply.status == 200, reply.body
    assert all("gemini-2.5-pro" not in path for path in fleet.gemini.raw_paths)


def test_a_flash_glob_does_not_grant_an_alias_to_pro_that_happens_to_match_it(
    make_fleet: Callable[..., Fleet], tmp_path: Path
) -> None:
    """``gemini-2.5-flash*`` was meant as a model family; the alias
    ``gemini-2.5-flash-smart`` routes to gemini-2.5-pro, which the family does not hold.
    A key names an alias by listing it, not by a pattern that happens to match its name."""
    fleet = keyed_fleet(make_fleet, tmp_path)
    secret = new_key(fleet.proxy, "flash", models=["gemini-2.5-flash*"], budget_usd=1.0)
    reply = raw(fleet.proxy, "POST", CHAT, bearer(secret), chat_body("gemini-2.5-flash-smart"))
    assert reply.status == 403, (reply.status, fleet.gemini.raw_paths)
    received_nothing(*fleet.fakes)


# ---------------------------------------------------------------- 6. model names with paths

TRICK_MODELS = [
    "gemini-2.5-flash/../gemini-2.5-pro",
    "gemini-2.5-flash/..%2F..",
    "gemini-2.5-flash/%2e%2e/gemini-2.5-pro",
    "gemini-2.5-flash/./gemini-2.5-pro",
    "gemini-2.5-flash/",
    "gemini-2.5-flash//gemini-2.5-pro",
    "gemini-2.5-flash\\..\\gemini-2.5-pro",
    "gemini-2.5-flash/\uff0e\uff0e/gemini-2.5-pro",
    "gemini-2.5-flash?alt=json",
    "gemini-2.5-flash#x",
    "gemini-2.5-flash%3FgenerateContent",
    "gpt-4o-mini\n",
    "gpt-4o-mini\r\nX-Injected: 1",
    "gpt-4o-mini?x=1",
    "gpt-4o-mini " + "x",
    "gpt-4o-mini\x00",
    "gpt-4o-mini\x1b[31m",
    "gpt-4o-mini\t",
    "gpt-4o-mini\u202e",
    "gemini-2.5-flash" + "a" * 10_000,
]


@pytest.mark.parametrize("auth", ["virtual-keys", "off"])
@pytest.mark.parametrize("model", TRICK_MODELS, ids=lambda m: repr(m)[:48])
def test_model_names_with_path_tricks_are_400(
    make_fleet: Callable[..., Fleet], tmp_path: Path, model: str, auth: str
) -> None:
    fleet = make_fleet(auth=auth, db_path=tmp_path / "kallm.db")
    if auth == "virtual-keys":  # a key whose globs would match every trick
        secret = new_key(fleet.proxy, "globs", models=["gemini-2.5-flash*", "gpt-4o-mini*"])
    else:
        secret = "sk-client"
    for path, body in [
        (CHAT, chat_body(model)),
        ("/v1/embeddings", {"model": model, "input": "x"}),
        ("/v1/completions", {"model": model, "prompt": "x"}),
        ("/v1/responses", {"model": model, "input": "x"}),
    ]:
        reply = raw(fleet.proxy, "POST", path, bearer(secret), body)
        assert reply.status == 400, (path, reply.status, reply.body[:200])
        assert error_of(reply)["param"] == "model"
    received_nothing(*fleet.fakes)
    assert not any(".." in path for path in fleet.gemini.raw_paths)


# ---------------------------------------------------------------- 7. tenant escape


def _ask(proxy: Proxy, secret: str, text: str, extra: list[Header] | None = None) -> Any:
    headers = bearer(secret) + (extra or [])
    return raw(proxy, "POST", CHAT, headers, chat_body(MODEL, text))


@pytest.mark.parametrize(
    "namespace",
    [
        *(b"team-a|", b"team-a", b"|team-a", b"team-a\x00", b" team-a", b"team-a "),
        *(b"key|team-a", b"team-a\t", b'"team-a"', b"TEAM-A", b"team-a\xc2\xa0"),
    ],
    ids=repr,
)
def test_a_key_without_a_namespace_never_hits_another_namespace(
    keyed: Proxy, upstream: Upstream, namespace: bytes
) -> None:
    key_a = new_key(keyed, "team-a-key", namespace="team-a")
    key_b = new_key(keyed, "outsider")
    question = "What is the boiling point of water at sea level?"
    first = _ask(keyed, key_a, question)
    assert first.status == 200 and first.header("x-kallm-cache") == "MISS"
    again = _ask(keyed, key_a, question)
    assert again.status == 200 and again.header("x-kallm-cache") == "HIT"
    calls = upstream.fake.chat_calls
    probe = _ask(keyed, key_b, question, [("X-Kallm-Namespace", namespace)])
    assert probe.header("x-kallm-cache") != "HIT", (namespace, probe.status, probe.body[:200])
    assert probe.status in (200, 400), probe.body
    if probe.status == 200:  # a MISS: answered by the upstream, not the cache
        assert upstream.fake.chat_calls == calls + 1


# ---------------------------------------------------------------- 10. keys dir and admin


def _admin(proxy: Proxy, method: str, path: str, body: bytes | None = None) -> rawhttp.RawReply:
    headers: list[Header] = [("Authorization", f"Bearer {ADMIN}")]
    if body is not None:
        headers.append(("Content-Type", "application/json"))
    return raw(proxy, method, path, headers, body)


def test_a_mounted_key_rotated_by_the_admin_api_stays_rotated_after_a_restart(
    make_proxy: Callable[..., Proxy], loop_thread: LoopThread, tmp_path: Path
) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    record, old = KeyStore(connect(tmp_path / "elsewhere.db")).create("mounted", models=[MODEL])
    (keys_dir / f"{record.id}.json").write_text(json.dumps(record_for_secret(record)))
    settings = {
        "auth": "virtual-keys",
        "db_path": tmp_path / "kallm.db",
        "keys_dir": keys_dir,
        "admin_key": ADMIN,
    }
    first = make_proxy(**settings)
    assert _ask(first, old, "before the rotation").status == 200
    rotated = _admin(first, "POST", f"/admin/keys/{record.id}/rotate")
    assert rotated.status == 200, rotated.body
    new = rotated.json()["key"]
    assert new != old
    assert _ask(first, old, "old secret, same server").status == 401
    assert _ask(first, new, "new secret, same server").status == 200
    stop(loop_thread, first.runner)
    second = make_proxy(**settings)  # reads the unchanged Secret file (the old hash) again
    assert _ask(second, old, "old secret after a restart").status == 401
    assert _ask(second, new, "new secret after a restart").status == 200


BAD_PATCHES = [
    b'{"budget_usd": NaN}',
    b'{"budget_usd": Infinity}',
    b'{"budget_usd": -Infinity}',
    b'{"budget_usd": 1e400}',
    b'{"budget_usd": -1}',
    b'{"budget_usd": 1e30}',
    b'{"budget_usd": true}',
    b'{"budget_usd": "5"}',
    b'{"rpm": 9223372036854775808}',
    b'{"rpm": -1}',
    b'{"rpm": 1.5}',
    b'{"tpm": 1e3}',
    b'{"budget_period": NaN}',
    b'{"expires": 1e400}',
    b'{"budget_usd": 1, "budget_usd": NaN}',
]


@pytest.mark.parametrize("body", BAD_PATCHES, ids=lambda b: b.decode())
def test_admin_patch_with_numbers_that_are_not_a_policy_is_400(keyed: Proxy, body: bytes) -> None:
    new_key(keyed, "victim", budget_usd=5.0, rpm=10)
    reply = _admin(keyed, "PATCH", "/admin/keys/victim", body)
    assert reply.status == 400, (reply.status, reply.body)
    shown = _admin(keyed, "GET", "/admin/keys/victim").json()
    assert shown["budget_usd"] == 5.0 and shown["rpm"] == 10
    assert shown["budget_period"] is None and shown["expires"] is None


@pytest.mark.parametrize(
    "bad_value", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1", b"1e30", b'"5"']
)
def test_a_key_file_with_a_bad_budget_is_not_loaded_and_the_others_are(
    make_proxy: Callable[..., Proxy], tmp_path: Path, bad_value: bytes
) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    elsewhere = KeyStore(connect(tmp_path / "elsewhere.db"))
    bad, bad_secret = elsewhere.create("bad", budget_usd=1.0)
    good, good_secret = elsewhere.create("good", budget_usd=1.0)
    text = json.dumps(record_for_secret(bad)).encode()
    assert b'"budget_usd": 1.0' in text
    tampered = text.replace(b'"budget_usd": 1.0', b'"budget_usd": ' + bad_value)
    (keys_dir / f"{bad.id}.json").write_bytes(tampered)
    (keys_dir / f"{good.id}.json").write_text(json.dumps(record_for_secret(good)))
    proxy = make_proxy(auth="virtual-keys", db_path=tmp_path / "kallm.db", keys_dir=keys_dir)
    assert _ask(proxy, good_secret, "the good key").status == 200
    assert _ask(proxy, bad_secret, "the bad key").status == 401
    names = [r.name for r in proxy.call(proxy.keys.list())]
    assert "good" in names and "bad" not in names


# ---------------------------------------------------------------- 11. auth off


def test_auth_off_without_a_server_key_never_shares_answers_across_caller_keys(
    make_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    proxy = make_proxy(upstream_api_key=None)
    question = "Which planet is known as the red planet?"
    first = _ask(proxy, "sk-caller-K", question)
    assert first.status == 200 and first.header("x-kallm-cache") == "MISS"
    assert upstream.fake.requests[-1].headers["authorization"] == "Bearer sk-caller-K"
    calls = upstream.fake.chat_calls
    for headers in ([], [("Authorization", "Bearer ")], [("Authorization", "Basic c2s6eA==")]):
        anonymous = raw(proxy, "POST", CHAT, headers, chat_body(MODEL, question))
        assert anonymous.status == 401, (headers, anonymous.status, anonymous.body[:200])
        assert anonymous.header("x-kallm-cache") != "HIT"
    assert upstream.fake.chat_calls == calls
    other = _ask(proxy, "sk-caller-K2", question)
    assert other.status == 200 and other.header("x-kallm-cache") == "MISS"
    assert upstream.fake.chat_calls == calls + 1
    assert upstream.fake.requests[-1].headers["authorization"] == "Bearer sk-caller-K2"
    repeat = _ask(proxy, "sk-caller-K", question)
    assert repeat.status == 200 and repeat.header("x-kallm-cache") == "HIT"
    assert upstream.fake.chat_calls == calls + 1


def test_auth_off_with_a_server_key_callers_share_the_cache(
    make_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    """Documented design: with a server key any caller could have asked upstream, so every
    caller shares answers, whichever key (or none) they present. Observed here."""
    proxy = make_proxy()  # upstream_api_key="sk-test-upstream"
    question = "Which planet is known as the red planet?"
    first = _ask(proxy, "sk-caller-K", question)
    assert first.status == 200 and first.header("x-kallm-cache") == "MISS"
    seen = upstream.fake.requests[-1].headers["authorization"]
    anonymous = raw(proxy, "POST", CHAT, [], chat_body(MODEL, question))
    other = _ask(proxy, "sk-caller-K2", question)
    print(
        f"\n[auth off, server key] K's call went upstream with {seen!r}; "
        f"no key -> {anonymous.status} {anonymous.header('x-kallm-cache')}; "
        f"K2 -> {other.status} {other.header('x-kallm-cache')}"
    )
    assert anonymous.status == 200 and anonymous.header("x-kallm-cache") == "HIT"
    assert other.status == 200 and other.header("x-kallm-cache") == "HIT"
    assert upstream.fake.chat_calls == 1
