"""Virtual keys, budgets, rate limits and the request log, through the real HTTP path."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from kallm.accounts.estimate import estimate
from kallm.accounts.keys import KeyStore
from kallm.db import connect
from tests.harness import Http, LoopThread, Proxy, Upstream, stop

MODEL = "gpt-4o-mini"


@pytest.fixture
def keyed(make_proxy: Any, tmp_path: Path) -> Proxy:
    return make_proxy(
        auth="virtual-keys", db_path=tmp_path / "kallm.db", admin_key="adm-key-for-tests-0001"
    )


def new_key(proxy: Proxy, name: str = "team", **policy: Any) -> str:
    _, secret = proxy.call(proxy.keys.create(name, **policy))
    return secret


def spend_of(proxy: Proxy, name: str = "team") -> float:
    record = proxy.call(proxy.keys.get(name))
    return proxy.call(proxy.runtime.backends.ledger.spend(record, time.time()))


def wait_for(check: Any, seconds: float = 5.0) -> None:
    """Settlement runs after the response is sent: poll, bounded."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


def client(proxy: Proxy, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url, api_key=secret, max_retries=0)


def ask(c: openai.OpenAI, text: str, **params: Any) -> Any:
    return c.chat.completions.create(
        model=params.pop("model", MODEL), messages=[{"role": "user", "content": text}], **params
    )


def test_key_lifecycle(keyed: Proxy, upstream: Upstream) -> None:
    secret = new_key(keyed)
    assert ask(client(keyed, secret), "hello with a key").choices[0].message.content
    # the provider got the configured key, never the virtual one
    assert upstream.fake.requests[-1].headers["authorization"] == "Bearer sk-test-upstream"
    keyed.call(keyed.keys.revoke("team"))
    with pytest.raises(openai.AuthenticationError):
        ask(client(keyed, secret), "hello again")


@pytest.mark.parametrize("secret", ["", "sk-kallm-unknown", "Bearer-less"])
def test_missing_or_wrong_key_is_401_and_reveals_nothing(keyed: Proxy, secret: str) -> None:
    headers = {"Authorization": f"Bearer {secret}"} if secret != "Bearer-less" else {}
    reply = Http(keyed.root).post(
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        headers=headers,
    )
    assert reply.status == 401
    assert reply.json()["error"]["message"].startswith("Invalid API key")


def test_expired_key_is_401(keyed: Proxy) -> None:
    secret = new_key(keyed, expires=time.time() - 1)
    with pytest.raises(openai.AuthenticationError):
        ask(client(keyed, secret), "too late")


def test_model_allow_list_is_403(keyed: Proxy) -> None:
    secret = new_key(keyed, models=["gpt-4o*"])
    c = client(keyed, secret)
    assert ask(c, "allowed model")
    with pytest.raises(openai.PermissionDeniedError):
        ask(c, "forbidden model", model="gpt-3.5-turbo")


def test_rpm_limit_with_headers(keyed: Proxy) -> None:
    secret = new_key(keyed, rpm=3)
    c = client(keyed, secret)
    first = c.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "one"}]
    )
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    ask(c, "two")
    ask(c, "three")
    with pytest.raises(openai.RateLimitError) as caught:
        ask(c, "four")
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"


async def test_budget_holds_under_50_concurrent_requests(keyed: Proxy, upstream: Upstream) -> None:
    budget = 5e-5
    secret = new_key(keyed, budget_usd=budget)
    c = openai.AsyncOpenAI(base_url=keyed.url, api_key=secret, max_retries=0)
    upstream.fake.chunk_delay = 0  # answers come back at once: the race is at admission

    async def one(i: int) -> str:
        try:
            await c.chat.completions.create(
                model=MODEL,
                max_tokens=20,
                messages=[{"role": "user", "content": f"question number {i} about budgets"}],
            )
            return "ok"
        except openai.RateLimitError as exc:
            assert exc.code == "insufficient_quota"
            return "refused"

    results = await asyncio.gather(*(one(i) for i in range(50)))
    assert "ok" in results and "refused" in results
    for i in range(50, 80):  # spend the rest one by one until the budget says no
        if await one(i) == "refused":
            break
    spend = spend_of(keyed)
    payload = {
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "question number 79 about budgets"}],
    }
    one_request = estimate(keyed.runtime.prices, [MODEL], payload, 400).usd
    assert budget * 0.5 < spend <= budget + one_request
    assert await one(99) == "refused"


def test_cache_hits_cost_nothing_and_count_as_saved(keyed: Proxy) -> None:
    secret = new_key(keyed, budget_usd=1.0)
    c = client(keyed, secret)
    ask(c, "What colour is the sky?")
    wait_for(lambda: spend_of(keyed) > 0)
    spent = spend_of(keyed)
    ask(c, "What colour is the sky?")
    assert spend_of(keyed) == spent
    store = KeyStore(connect(keyed.settings.db_path))
    wait_for(lambda: store.get("team").saved_usd > 0)


def test_spend_survives_restart(make_proxy: Any, loop_thread: LoopThread, tmp_path: Path) -> None:
    settings = {"auth": "virtual-keys", "db_path": tmp_path / "kallm.db"}
    first = make_proxy(**settings)
    secret = new_key(first, budget_usd=1.0)
    ask(client(first, secret), "remember what this cost")
    wait_for(lambda: spend_of(first) > 0)
    spent = spend_of(first)
    stop(loop_thread, first.runner)
    second = make_proxy(**settings)
    record = KeyStore(connect(tmp_path / "kallm.db")).get("team")
    assert record.spend_usd == pytest.approx(spent)
    ask(client(second, secret), "and add to it")
    wait_for(lambda: spend_of(second) > spent)


def test_request_log_rows(keyed: Proxy) -> None:
    secret = new_key(keyed)
    c = client(keyed, secret)
    ask(c, "log me")
    ask(c, "log me")
    wait_for(lambda: keyed.runtime.request_log.written >= 2)  # type: ignore[union-attr]
    assert keyed.runtime.request_log.flush()  # type: ignore[union-attr]
    conn = connect(keyed.settings.db_path)
    rows = conn.execute(
        "SELECT * FROM requests WHERE path = '/v1/chat/completions' ORDER BY time"
    ).fetchall()
    assert [r["cache"] for r in rows] == ["MISS", "HIT"]
    miss = rows[0]
    assert miss["key_id"].startswith("key_") and miss["model"] == MODEL
    assert miss["provider"] == "openai" and miss["status"] == 200
    assert miss["prompt_tokens"] > 0 and miss["cost_usd"] > 0 and miss["latency_ms"] > 0
    assert rows[1]["similarity"] == 1.0 and rows[1]["saved_usd"] == pytest.approx(miss["cost_usd"])
    assert miss["request_body"] is None  # bodies only with log.bodies


def test_locked_database_never_fails_requests(make_proxy: Any, tmp_path: Path) -> None:
    proxy = make_proxy(db_path=tmp_path / "kallm.db")
    http = Http(proxy.root)
    blocker = sqlite3.connect(tmp_path / "kallm.db", timeout=0.1)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(3):
            reply = http.post(
                "/v1/chat/completions",
                {"model": MODEL, "messages": [{"role": "user", "content": f"locked {i}"}]},
            )
            assert reply.status == 200
        deadline = time.monotonic() + 15
        while http.get("/stats").json()["log_rows_dropped"] == 0:
            assert time.monotonic() < deadline, "dropped rows were never counted"
            time.sleep(0.2)
    finally:
        blocker.rollback()
        blocker.close()
    reply = http.post(
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "after the lock"}]},
    )
    assert reply.status == 200
    assert proxy.runtime.request_log.flush()  # type: ignore[union-attr]


def test_keys_dir_is_watched(make_proxy: Any, tmp_path: Path) -> None:
    from kallm.accounts.k8s import record_for_secret

    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    store = KeyStore(connect(tmp_path / "elsewhere.db"))  # made on another machine
    record, secret = store.create("from-k8s", rpm=100)
    proxy = make_proxy(auth="virtual-keys", db_path=tmp_path / "kallm.db", keys_dir=keys_dir)
    c = client(proxy, secret)
    with pytest.raises(openai.AuthenticationError):
        ask(c, "not yet")
    (keys_dir / f"{record.id}.json").write_text(json.dumps(record_for_secret(record)))
    proxy.call(proxy.keys.refresh())
    assert ask(c, "now mounted").choices
    (keys_dir / f"{record.id}.json").unlink()
    proxy.call(proxy.keys.refresh())
    with pytest.raises(openai.AuthenticationError):
        ask(c, "unmounted")


def test_unusable_database_still_serves(make_proxy: Any, tmp_path: Path) -> None:
    not_a_file = tmp_path / "kallm.db"
    not_a_file.mkdir()  # SQLite cannot open a directory, whoever we run as
    proxy = make_proxy(db_path=not_a_file)
    reply = Http(proxy.root).post(
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "no database"}]},
    )
    assert reply.status == 200


def test_revocation_outlives_a_stale_secret_and_bad_files_do_not_block(
    make_proxy: Any, tmp_path: Path, loop_thread: LoopThread
) -> None:
    from kallm.accounts.k8s import record_for_secret

    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    elsewhere = KeyStore(connect(tmp_path / "elsewhere.db"))
    mounted, secret = elsewhere.create("mounted")
    clash, _ = elsewhere.create("taken")  # a name the server already uses for another key
    good, good_secret = elsewhere.create("good")
    for record in (mounted, clash, good):
        (keys_dir / f"{record.id}.json").write_text(json.dumps(record_for_secret(record)))
    settings = {"auth": "virtual-keys", "db_path": tmp_path / "kallm.db", "keys_dir": keys_dir}
    KeyStore(connect(tmp_path / "kallm.db")).create("taken")
    first = make_proxy(**settings)
    assert ask(client(first, good_secret), "the good key loads despite the clash").choices
    first.call(first.keys.revoke(mounted.id))
    stop(loop_thread, first.runner)
    second = make_proxy(**settings)  # re-reads every Secret file at start
    with pytest.raises(openai.AuthenticationError):
        ask(client(second, secret), "revoked stays revoked")
