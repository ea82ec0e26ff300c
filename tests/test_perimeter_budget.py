"""Virtual keys that hold, where money is concerned: streams the client walks away from,
estimates an attacker keeps low, and spend that a ``kill -9`` could forget.

Every figure is checked against what the fake upstream reported (its usage: words in,
words out) priced by the shipped table, never against kallm's own arithmetic. The
overshoot tests print ``OVERSHOOT ...`` lines (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from kallm.accounts.keys import KeyStore
from kallm.db import connect
from kallm.providers.config import AliasConfig
from tests import rawhttp
from tests.harness import Proxy, Upstream
from tests.test_errors import free_port
from tests.test_perimeter import (
    CHAT,
    MODEL,
    bearer,
    chat_body,
    cost,
    new_key,
    port_of,
    settled_spend,
    spend_of,
    wait_for,
)
from tests.test_serve_process import wait_healthy

NO_CACHE = {"Cache-Control": "no-cache, no-store"}  # every request goes upstream


def words(n: int, start: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + n))


@pytest.fixture
def keyed(make_proxy: Callable[..., Proxy], tmp_path: Path) -> Proxy:
    return make_proxy(auth="virtual-keys", db_path=tmp_path / "kallm.db")


# ---------------------------------------------------------------- 4. streams cut short


def open_stream(
    proxy: Proxy, secret: str, body: dict[str, Any], extra: dict[str, str] | None = None
) -> rawhttp.RawStream:
    conn = rawhttp.RawStream("127.0.0.1", port_of(proxy))
    headers = bearer(secret) + list((extra or {}).items())
    conn.send(rawhttp.build_request("POST", CHAT, f"127.0.0.1:{port_of(proxy)}", headers, body))
    conn.read_head()
    assert conn.status == 200, conn.read_all().body[:300]
    return conn


def read_until_finish(conn: rawhttp.RawStream) -> list[bytes]:
    """Events up to and including the one that carries a finish_reason; nothing after."""
    seen = []
    for data in conn.events():
        seen.append(data)
        if b'"finish_reason":"' in data.replace(b" ", b""):
            return seen
    raise AssertionError(f"the stream ended without a finish_reason: {seen[-3:]}")


def stream_body(text: str) -> dict[str, Any]:
    return chat_body(MODEL, text, stream=True)


def read_until_content(conn: rawhttp.RawStream, content: str) -> list[bytes]:
    """Events until the deltas spell ``content``: the last content chunk, before the one
    that carries the finish_reason."""
    seen, text = [], ""
    for data in conn.events():
        seen.append(data)
        if data != b"[DONE]":
            for choice in json.loads(data).get("choices") or []:
                text += (choice.get("delta") or {}).get("content") or ""
                assert choice.get("finish_reason") is None, "read past the last content"
        if text == content:
            return seen
    raise AssertionError(f"the stream ended before its content was whole: {text!r}")


@pytest.mark.parametrize("how", ["close", "abort"])
@pytest.mark.parametrize("moment", ["after-finish-reason", "after-last-content"])
def test_a_stream_closed_just_before_its_end_costs_what_a_whole_one_does(
    keyed: Proxy, upstream: Upstream, how: str, moment: str
) -> None:
    """The client walks away with the whole answer: after the chunk with the finish_reason,
    or after the last content chunk (the finish_reason chunk is 50 ms behind). The usage
    chunk is still on its way; the server reads on for it and bills what the upstream
    will: exactly what the same stream costs when read to [DONE]."""
    upstream.fake.chunk_delay = 0.05  # what follows is still on its way at the close
    text = "Tell me a short story about closing sockets early"
    answer = f"Answer to: {text}"
    expected = cost(MODEL, len(text.split()), len(answer.split()))
    leaver = new_key(keyed, "leaver", models=[MODEL], budget_usd=1.0)
    conn = open_stream(keyed, leaver, stream_body(text))
    if moment == "after-finish-reason":
        events = read_until_finish(conn)
    else:
        events = read_until_content(conn, answer)
    assert b"[DONE]" not in events
    conn.close() if how == "close" else conn.abort()
    cut_short = settled_spend(keyed, "leaver", 0.0, seconds=5)

    stayer = new_key(keyed, "stayer", models=[MODEL], budget_usd=1.0)
    conn = open_stream(keyed, stayer, stream_body(text), NO_CACHE)
    whole = list(conn.events())
    conn.close()
    assert whole[-1] == b"[DONE]"
    complete = settled_spend(keyed, "stayer", 0.0, seconds=5)
    print(f"\nSTREAM cut {moment} ({how}): ${cut_short:.9f}; read to [DONE]: ${complete:.9f}")
    assert complete == pytest.approx(expected, rel=1e-9)
    assert cut_short > 0, "a stream closed before [DONE] was billed nothing"
    assert cut_short == pytest.approx(complete, rel=1e-9), (
        f"closed {moment}: billed ${cut_short:.9f}, the same stream read whole ${complete:.9f}"
    )


def test_a_slow_stream_closed_mid_way_still_costs(keyed: Proxy, upstream: Upstream) -> None:
    """Closed after 3 of 40 chunks, ~1.1 s of stream left: the server reads on (up to 2 s,
    ``kallm.server.chat.DRAIN_SECONDS``) for the usage chunk, so the key pays what the
    upstream bills for the generation it let run to the end."""
    upstream.fake.reply = words(40)
    upstream.fake.chunk_delay = 0.03
    secret = new_key(keyed, "leaver", models=[MODEL], budget_usd=1.0)
    text = "Recite forty words slowly please"
    conn = open_stream(keyed, secret, stream_body(text))
    received = 0
    for data in conn.events():
        if b'"content":"w' in data.replace(b" ", b""):
            received += 1
        if received == 3:
            break
    conn.close()
    spend = settled_spend(keyed, "leaver", 0.0, seconds=5)
    whole = cost(MODEL, len(text.split()), 40)
    print(f"\nSTREAM closed after 3 of 40 chunks: ${spend:.9f} (the whole answer: ${whole:.9f})")
    assert spend > 0, "a stream closed mid-way was billed nothing"
    assert spend == pytest.approx(whole, rel=1e-9), (
        f"billed ${spend:.9f}, not the usage the upstream reported (${whole:.9f})"
    )


def test_streams_closed_early_cannot_outspend_a_small_budget(
    keyed: Proxy, upstream: Upstream
) -> None:
    budget = 0.001
    upstream.fake.reply = words(300)
    secret = new_key(keyed, "leaver", models=[MODEL], budget_usd=budget)
    one = 0.0
    spend = 0.0
    refused_after = None
    for i in range(40):
        text = f"Question {i}: recite three hundred words"
        one = max(one, cost(MODEL, len(text.split()), 300))
        conn = rawhttp.RawStream("127.0.0.1", port_of(keyed))
        headers = bearer(secret) + list(NO_CACHE.items())
        conn.send(
            rawhttp.build_request(
                "POST", CHAT, f"127.0.0.1:{port_of(keyed)}", headers, stream_body(text)
            )
        )
        conn.read_head()
        if conn.status == 429:
            conn.close()
            refused_after = i
            break
        assert conn.status == 200
        read_until_finish(conn)
        conn.close()
        spend = settled_spend(keyed, "leaver", spend, seconds=3)
    spend = spend_of(keyed, "leaver")
    print(
        f"\nSTREAMS closed early vs ${budget}: refused after {refused_after} requests, "
        f"spend ${spend:.6f}, ratio {spend / budget:.2f} (one request ${one:.6f})"
    )
    assert refused_after is not None, f"never refused; spend ${spend:.6f} of ${budget}"
    assert 0 < spend <= budget + one + 1e-12


# ---------------------------------------------------------------- 8. overshoot


async def storm(
    n: int, send: Callable[[int], Any], price: Callable[[Any], float]
) -> tuple[list[float], int]:
    """``n`` concurrent requests; the true cost of each answered one, and how many were
    refused for the budget."""

    async def one(i: int) -> float | None:
        try:
            return price(await send(i))
        except openai.RateLimitError as exc:
            assert exc.code == "insufficient_quota", exc
            return None

    results = await asyncio.gather(*(one(i) for i in range(n)))
    return [r for r in results if r is not None], sum(r is None for r in results)


async def settled_total(proxy: Proxy, name: str, expected: float, seconds: float = 5) -> float:
    deadline = time.monotonic() + seconds
    spend = spend_of(proxy, name)
    while spend != pytest.approx(expected, rel=1e-9) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        spend = spend_of(proxy, name)
    return spend


def usage_cost(model: str) -> Callable[[Any], float]:
    def price(reply: Any) -> float:
        return cost(model, reply.usage.prompt_tokens, reply.usage.completion_tokens)

    return price


SCENARIOS = ["alias-to-o1", "no-max-tokens", "image-prompt", "completions-prompt-list"]


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_100_concurrent_requests_cannot_overshoot_a_small_budget(
    make_proxy: Callable[..., Proxy], upstream: Upstream, tmp_path: Path, scenario: str
) -> None:
    budget = 0.01
    aliases = (AliasConfig("thinker", ("openai/o1",)),)
    proxy = make_proxy(auth="virtual-keys", db_path=tmp_path / "kallm.db", aliases=aliases)
    fake = upstream.fake
    send: Callable[[int], Any]
    if scenario == "alias-to-o1":
        secret = new_key(proxy, "storm", models=["thinker"], budget_usd=budget)
        client = openai.AsyncOpenAI(base_url=proxy.url, api_key=secret, max_retries=0)
        fake.reply = words(40)  # ~$0.0025 of o1 output: four of them pass the budget

        def send(i: int) -> Any:
            return client.chat.completions.create(
                model="thinker",
                messages=[{"role": "user", "content": f"Think hard about puzzle {i}"}],
                extra_headers=NO_CACHE,
            )

        price = usage_cost("o1")
    elif scenario == "no-max-tokens":
        secret = new_key(proxy, "storm", models=[MODEL], budget_usd=budget)
        client = openai.AsyncOpenAI(base_url=proxy.url, api_key=secret, max_retries=0)
        fake.reply = words(2000)  # $0.0012 each: nine of them pass the budget

        def send(i: int) -> Any:
            return client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Write at length about topic {i}"}],
                extra_headers=NO_CACHE,
            )

        price = usage_cost(MODEL)
    elif scenario == "image-prompt":
        secret = new_key(proxy, "storm", models=[MODEL], budget_usd=budget)
        client = openai.AsyncOpenAI(base_url=proxy.url, api_key=secret, max_retries=0)
        # What OpenAI bills gpt-4o-mini for the smallest image there is (detail "low"):
        # 2,833 input tokens (its image tokens are ~33x gpt-4o's 85).
        fake.image_tokens = 2833

        def send(i: int) -> Any:
            return client.chat.completions.create(
                model=MODEL,
                max_tokens=16,
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": f"What is in picture {i}?"},
                            {
                                "type": "image_url",
                                "image_url": {
                                    "url": f"https://example.com/p/{i}.png",
                                    "detail": "low",
                                },
                            },
                        ],
                    }
                ],
                extra_headers=NO_CACHE,
            )

        price = usage_cost(MODEL)
    else:  # legacy completions: one request, fifty prompts, each answered up to max_tokens
        instruct = "gpt-3.5-turbo-instruct"
        secret = new_key(proxy, "storm", models=[instruct], budget_usd=budget)
        client = openai.AsyncOpenAI(base_url=proxy.url, api_key=secret, max_retries=0)
        fake.reply = words(300)

        def send(i: int) -> Any:
            return client.completions.create(
                model=instruct,
                prompt=[f"Prompt {i}.{j}: go on" for j in range(50)],
                max_tokens=16,
                extra_headers=NO_CACHE,
            )

        price = usage_cost("gpt-3.5-turbo")  # the table prices -instruct by this prefix
    try:
        costs, refused = await storm(100, send, price)
    finally:
        await client.close()
    spend = await settled_total(proxy, "storm", sum(costs))
    one = max(costs, default=0.0)
    print(
        f"\nOVERSHOOT {scenario}: admitted {len(costs)}/100, refused {refused}, "
        f"spend ${spend:.6f} of ${budget}, one request ${one:.6f}, "
        f"ratio {spend / budget:.2f}"
    )
    assert costs, "nothing was admitted at all"
    assert spend == pytest.approx(sum(costs), rel=1e-6), "spend is not what the answers cost"
    assert spend <= budget + one + 1e-12, (
        f"{scenario}: {len(costs)} admitted, spend ${spend:.6f} > budget ${budget} + one "
        f"request ${one:.6f} (ratio {spend / budget:.2f})"
    )


async def test_a_tpm_limit_holds_against_50_concurrent_requests(
    keyed: Proxy, upstream: Upstream
) -> None:
    tpm = 1000
    secret = new_key(keyed, "tpm", models=[MODEL], tpm=tpm)
    client = openai.AsyncOpenAI(base_url=keyed.url, api_key=secret, max_retries=0)
    upstream.fake.reply = words(250)  # with a 250-word prompt: ~500 tokens a request

    async def one(i: int) -> int | None:
        try:
            reply = await client.chat.completions.create(
                model=MODEL,
                max_tokens=250,
                messages=[{"role": "user", "content": words(250, start=i * 1000)}],
                extra_headers=NO_CACHE,
            )
        except openai.RateLimitError as exc:
            assert exc.code == "rate_limit_exceeded", exc
            return None
        assert reply.usage is not None
        return reply.usage.total_tokens

    try:
        results = await asyncio.gather(*(one(i) for i in range(50)))
    finally:
        await client.close()
    used = [r for r in results if r is not None]
    print(f"\nTPM {tpm}: admitted {len(used)}/50, tokens used {sum(used)} (each ~{max(used)})")
    assert 1 <= len(used) <= 2, f"{len(used)} of 50 admitted under tpm={tpm}"
    assert sum(used) <= tpm + max(used)


# ---------------------------------------------------------------- 9. spend a crash forgets


def start_serve(upstream: Upstream, db: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {
        **os.environ,
        "KALLM_AUTH": "virtual-keys",
        "KALLM_DB": str(db),
        "OPENAI_BASE_URL": upstream.url,
        "OPENAI_API_KEY": "sk-up",
        "KALLM_PORT": str(port),
        "KALLM_CACHE_FILE": "off",
        "KALLM_LOG_JSON": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "kallm", "serve"],
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    root = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(root, process)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, root


def crash_run(upstream: Upstream, where: Path, mode: str, n: int) -> tuple[list[float], float]:
    """``n`` sequential answered requests to a ``kallm serve`` process, ``kill -9`` right
    after the last answer; the answers' costs, and the key's spend found on disk."""
    where.mkdir()
    db = where / "kallm.db"
    _, secret = KeyStore(connect(db)).create("crash", models=[MODEL], budget_usd=100.0)
    process, root = start_serve(upstream, db, where / "serve.log")
    port = int(root.rsplit(":", 1)[1])
    costs = []
    try:
        client = openai.OpenAI(base_url=root + "/v1", api_key=secret, max_retries=0, timeout=10)
        for i in range(n):
            text = f"Crash course number {i}, please"
            messages: Any = [{"role": "user", "content": text}]
            if mode == "raw-stream" and i == n - 1:
                conn = rawhttp.RawStream("127.0.0.1", port)
                headers = bearer(secret) + list(NO_CACHE.items())
                body = chat_body(MODEL, text, stream=True)
                conn.send(rawhttp.build_request("POST", CHAT, f"127.0.0.1:{port}", headers, body))
                conn.read_head()
                assert conn.status == 200
                events = []
                for data in conn.events():
                    events.append(data)
                    if data == b"[DONE]":
                        os.kill(process.pid, signal.SIGKILL)  # the answer is whole: now
                        break
                conn.close()
                assert events[-1] == b"[DONE]"
                costs.append(cost(MODEL, len(text.split()), len(f"Answer to: {text}".split())))
                break
            if mode != "json":
                chunks = list(
                    client.chat.completions.create(
                        model=MODEL,
                        messages=messages,
                        stream=True,
                        stream_options={"include_usage": True},
                        extra_headers=NO_CACHE,
                    )
                )
                usage = chunks[-1].usage
            else:
                usage = client.chat.completions.create(
                    model=MODEL, messages=messages, extra_headers=NO_CACHE
                ).usage
            assert usage is not None
            costs.append(cost(MODEL, usage.prompt_tokens, usage.completion_tokens))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)  # right after the last answer
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with sqlite3.connect(db) as conn:
        (spend,) = conn.execute("SELECT spend_usd FROM keys WHERE name = 'crash'").fetchone()
    print(
        f"\nKILL -9 ({mode}): {len(costs)} answered, "
        f"their cost ${sum(costs):.9f}, spend on disk ${spend:.9f}, "
        f"lost ${sum(costs) - spend:.9f} (one request ${costs[-1]:.9f})"
    )
    return costs, spend


@pytest.mark.parametrize("mode", ["json", "stream"])
def test_kill_9_forgets_no_answered_request(upstream: Upstream, tmp_path: Path, mode: str) -> None:
    """40 sequential answered requests (JSON, or streams read to their end by the SDK),
    then ``kill -9``: the database holds what they cost; none was in flight."""
    costs, spend = crash_run(upstream, tmp_path / "run", mode, 40)
    assert spend == pytest.approx(sum(costs), rel=1e-9), (spend, sum(costs))


def test_kill_9_right_after_a_streams_done_forgets_nothing(
    upstream: Upstream, tmp_path: Path
) -> None:
    """The last answer is a stream read on a raw socket; the kill follows its ``[DONE]``
    event at once, as a client that has its whole answer may do. Three short runs: the
    window between ``[DONE]`` and the commit is about a millisecond."""
    for run in range(3):
        costs, spend = crash_run(upstream, tmp_path / f"run{run}", "raw-stream", 10)
        assert spend == pytest.approx(sum(costs), rel=1e-9), (
            f"run {run}: the answered requests cost ${sum(costs):.9f}, the database holds "
            f"${spend:.9f} (the last stream's ${costs[-1]:.9f} forgotten)"
        )


def test_a_bad_request_id_loses_no_other_log_row(
    make_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    proxy = make_proxy(db_path=tmp_path / "kallm.db")
    client = openai.OpenAI(base_url=proxy.url, api_key="sk-client", max_retries=0)
    where = ("127.0.0.1", port_of(proxy))
    bad = [
        [("X-Request-Id", b"\xff\xfe-not-utf8")],
        [("X-Request-Id", b"bad\x01id\x7f")],
        [("X-Request-Id", b"'); DROP TABLE requests; --")],
        [("X-Request-Id", b"x" * 8000)],
    ]
    for i in range(300):
        if i % 75 == 0:  # the bad ones, among the others
            for headers in bad:
                rawhttp.request(*where, "POST", CHAT, headers, chat_body(MODEL, "log me"))
            rawhttp.request(*where, "GET", b"/v1/x%ff%fe/\xc3(", [])
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "log me"}],
            extra_headers={"X-Request-Id": f"good-{i:04d}"},
        )
    log = proxy.runtime.request_log
    assert log is not None
    wait_for(lambda: log.written + log.dropped >= 300, what="300 rows written")
    assert log.flush()
    with sqlite3.connect(tmp_path / "kallm.db") as conn:
        ids = {r for (r,) in conn.execute("SELECT request_id FROM requests")}
    good = {f"good-{i:04d}" for i in range(300)}
    assert good - ids == set(), f"{len(good - ids)} rows lost"
    assert log.dropped == 0
