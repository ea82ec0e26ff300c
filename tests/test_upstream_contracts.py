"""A bad upstream is the upstream's failure, never kallm's: whatever it sends, the client
gets a 502/504 in OpenAI's shape, or a stream that ends with an error event the ``openai``
SDK raises; nothing is cached; spend stays sane; memory stays bounded.

The upstream is ``tests.fake_misbehaving``, steered per test (``fake.mode``). One kallm
with virtual keys (so spend is counted per key) and ``upstream_deadline=3`` serves the
whole module; every test asks its own question, so the cache never carries one test's
answer into another. The 200 MB answer runs kallm and the fake in their own processes so
that kallm's memory can be read from ``/proc``.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kallm.config import Settings
from tests.fake_misbehaving import (
    HUGE_BYTES,
    LONG_LINE_BYTES,
    MisbehavingUpstream,
    Mode,
    start_misbehaving,
)
from tests.harness import Http, LoopThread, Proxy, Reply, start_proxy, stop
from tests.test_load_limits import (
    CHAT,
    chat_body,
    exchange,
    get,
    raw_request,
    start_fake_process,
    start_kallm,
)

MODEL = "gpt-4o-mini"
DEADLINE = 3.0  # upstream.deadline of the module's kallm
# The most one tiny request can cost at gpt-4o-mini's prices ($0.15 / $0.60 per 1M tokens)
# is ~$0.01: its few prompt tokens and the model's whole output limit (16,384 tokens). A
# bill five times that is an upstream's lie believed, not a price.
MAX_SANE_USD = 0.05
MAX_SANE_TOKENS = 1_000_000  # tokens one tiny request may be counted for, at most


# ---------------------------------------------------------------- JSON and SSE checks


def strict_json(data: bytes) -> Any:
    """Parse as JSON the way strict parsers do: UTF-8, no NaN/Infinity, no 1e400."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text[:20]} is not a finite number")
        return value

    return json.loads(data.decode("utf-8"), parse_constant=no_constant, parse_float=finite)


def openai_error(data: bytes) -> dict[str, Any]:
    """The ``error`` object of OpenAI's error JSON, checked; raises AssertionError if not."""
    try:
        body = strict_json(data)
    except ValueError as exc:
        raise AssertionError(f"error body is not strict JSON ({exc}): {data[:300]!r}") from None
    assert isinstance(body, dict) and set(body) == {"error"}, f"not OpenAI's shape: {body!r}"
    error = body["error"]
    assert isinstance(error, dict), f"not OpenAI's shape: {body!r}"
    assert set(error) == {"message", "type", "param", "code"}, f"not OpenAI's shape: {body!r}"
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["type"], str) and error["type"], body
    return error


def sse_data(body: bytes) -> list[bytes]:
    """The ``data:`` payloads of an event stream, in order."""
    out = []
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
        if lines:
            out.append(b"\n".join(lines))
    return out


def assert_failed_in_openai_shape(reply: Reply, statuses: tuple[int, ...] = (502,)) -> str:
    """A whole error (one of ``statuses``) or an event stream whose last event is an error
    and that has no [DONE]. Returns how it failed, for messages."""
    content_type = reply.headers.get("content-type", "")
    if reply.status != 200:
        assert reply.status in statuses, f"status {reply.status}: {reply.body[:300]!r}"
        openai_error(reply.body)
        return f"{reply.status}"
    assert content_type.startswith("text/event-stream"), (
        f"a 200 ({content_type}) instead of an error: {reply.body[:300]!r}"
    )
    events = sse_data(reply.body)
    assert events, f"an empty event stream: no error event ({reply.body[:300]!r})"
    assert b"[DONE]" not in events, f"a broken stream ended with [DONE]: {events[-3:]!r}"
    last = events[-1]
    assert last.startswith(b"{") and b'"error"' in last, (
        f"the stream ended without an error event; last events: {[e[:200] for e in events[-3:]]}"
    )
    openai_error(last)
    return "error event"


# ---------------------------------------------------------------- the module's servers


@pytest.fixture(scope="module")
def bad(loop_thread: LoopThread) -> Iterator[MisbehavingUpstream]:
    fake, runner, _url = loop_thread.run(start_misbehaving())
    yield fake
    stop(loop_thread, runner)


@pytest.fixture(scope="module")
def contract_proxy(
    loop_thread: LoopThread,
    local_model: Any,
    bad: MisbehavingUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("contracts")
    assert bad.base_url is not None
    settings = Settings(
        upstream_base_url=bad.base_url,
        upstream_api_key="sk-test-upstream",
        upstream_timeout=5.0,
        upstream_deadline=DEADLINE,
        cache_file=None,
        snapshot_interval=0,
        db_path=tmp / "kallm.db",
        auth="virtual-keys",
    )
    proxy = start_proxy(loop_thread, settings, embedder=local_model)
    yield proxy
    stop(loop_thread, proxy.runner)


@pytest.fixture
def keyed(contract_proxy: Proxy) -> tuple[Proxy, str]:
    """The module's kallm and a new key of its own for each test (a $100 budget), so one
    test's bill never blocks the next."""
    proxy = contract_proxy
    _record, secret = proxy.call(
        proxy.keys.create(f"robust-{uuid.uuid4().hex[:8]}", budget_usd=100.0)
    )
    return proxy, secret


@pytest.fixture
def fake(bad: MisbehavingUpstream) -> MisbehavingUpstream:
    bad.reset()
    return bad


@pytest.fixture
def question() -> str:
    return f"Robustness question {uuid.uuid4().hex[:12]}: what is two plus two?"


def post(proxy: Proxy, secret: str, text: str, stream: bool = False) -> Reply:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    headers = {"Authorization": f"Bearer {secret}"}
    try:
        return Http(proxy.root).post(CHAT, body, headers=headers, timeout=20)
    except http.client.IncompleteRead as exc:
        root: BaseException = exc
        while root.__cause__ or root.__context__:
            root = root.__cause__ or root.__context__  # type: ignore[assignment]
        raise AssertionError(
            f"kallm's answer is not valid HTTP: the body broke off after {len(exc.partial)} "
            f"bytes ({exc.partial[-120:]!r}), then: {root}"
        ) from None
    except (http.client.HTTPException, OSError) as exc:
        raise AssertionError(f"kallm's answer is not valid HTTP: {exc!r}") from None


def sdk(proxy: Proxy, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url, api_key=secret, max_retries=0, timeout=30)


def sdk_call(proxy: Proxy, secret: str, text: str, stream: bool) -> None:
    """One call through the openai SDK, a stream read to its end."""
    client = sdk(proxy, secret)
    messages: Any = [{"role": "user", "content": text}]
    if stream:
        for _chunk in client.chat.completions.create(model=MODEL, messages=messages, stream=True):
            pass
    else:
        client.chat.completions.create(model=MODEL, messages=messages)


def spend(proxy: Proxy, secret: str) -> float:
    record = proxy.keys.find(secret)
    assert record is not None
    return float(proxy.call(proxy.runtime.backends.ledger.spend(record, time.time())))


def metric_total(proxy: Proxy, family: str) -> float:
    text = Http(proxy.root).get("/metrics").body.decode()
    return sum(
        sample.value
        for metrics in text_string_to_metric_families(text)
        if metrics.name == family
        for sample in metrics.samples
        if sample.name == f"{family}_total"
    )


class Books:
    """What the key was billed and /metrics counted across one test."""

    def __init__(self, proxy: Proxy, secret: str) -> None:
        self.proxy, self.secret = proxy, secret
        self.spend = spend(proxy, secret)
        self.tokens = metric_total(proxy, "kallm_tokens")
        self.usd = metric_total(proxy, "kallm_spend_usd")

    def assert_sane(self) -> None:
        time.sleep(0.3)  # settlement runs as the request ends
        billed = spend(self.proxy, self.secret) - self.spend
        tokens = metric_total(self.proxy, "kallm_tokens") - self.tokens
        usd = metric_total(self.proxy, "kallm_spend_usd") - self.usd
        assert math.isfinite(billed) and 0 <= billed <= MAX_SANE_USD, (
            f"the key was billed ${billed:,.2f} for a few tiny requests"
        )
        assert math.isfinite(usd) and 0 <= usd <= MAX_SANE_USD, f"/metrics counted ${usd:,.2f}"
        assert 0 <= tokens <= MAX_SANE_TOKENS, f"/metrics counted {tokens:,.0f} tokens"


def assert_not_cached(
    proxy: Proxy, secret: str, fake: MisbehavingUpstream, text: str, stream: bool
) -> None:
    """The same request again, with the upstream behaving, reaches the upstream."""
    fake.mode = Mode.OK
    calls = fake.chat_calls
    again = post(proxy, secret, text, stream)
    assert again.status == 200, f"the retry got {again.status}: {again.body[:300]!r}"
    assert again.headers.get("x-kallm-cache") == "MISS", "the failed answer was cached"
    assert fake.chat_calls == calls + 1


# ---------------------------------------------------------------- whole answers


NOT_COMPLETIONS = [
    Mode.INVALID_JSON,
    Mode.HTML,
    Mode.EMPTY,
    Mode.GZIP_NO_HEADER,
    Mode.JSON_ARRAY,
    Mode.NO_CHOICES,
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("mode", NOT_COMPLETIONS, ids=str)
def test_a_200_that_is_not_a_completion_is_the_upstreams_failure(
    keyed: tuple[Proxy, str], fake: MisbehavingUpstream, question: str, mode: Mode, stream: bool
) -> None:
    proxy, secret = keyed
    books = Books(proxy, secret)
    fake.mode = mode
    assert_failed_in_openai_shape(post(proxy, secret, question, stream))
    with pytest.raises(openai.APIError):
        sdk_call(proxy, secret, question + " (sdk)", stream)
    assert_not_cached(proxy, secret, fake, question, stream)
    books.assert_sane()


def test_gzip_the_proxy_did_not_ask_for_is_decoded_or_refused(
    keyed: tuple[Proxy, str], fake: MisbehavingUpstream, question: str
) -> None:
    """kallm asks for identity; a gzip answer saying so is decoded or is a 502, never
    relayed as bytes the client cannot read (kallm drops Content-Encoding)."""
    proxy, secret = keyed
    books = Books(proxy, secret)
    fake.mode = Mode.GZIP_WITH_HEADER
    reply = post(proxy, secret, question)
    if reply.status == 200:
        assert "content-encoding" not in reply.headers or reply.headers["content-encoding"] in (
            "identity",
            "gzip",
        )
        if reply.headers.get("content-encoding") != "gzip":
            try:
                completion = strict_json(reply.body)
            except ValueError:
                raise AssertionError(
                    f"a 200 whose body is not JSON (gzip bytes relayed without their header): "
                    f"{reply.body[:60]!r}"
                ) from None
            assert completion["choices"][0]["message"]["content"]
    else:
        assert_failed_in_openai_shape(reply)
        assert_not_cached(proxy, secret, fake, question, False)
    books.assert_sane()


@pytest.mark.parametrize("mode", [Mode.USAGE_1E400, Mode.USAGE_DIGITS], ids=str)
def test_an_absurd_usage_is_never_billed(
    keyed: tuple[Proxy, str], fake: MisbehavingUpstream, question: str, mode: Mode
) -> None:
    """The answer is fine, its usage is not: relayed or refused, but never priced as 10^400
    tokens, and a cached copy replays as strict JSON."""
    proxy, secret = keyed
    books = Books(proxy, secret)
    fake.mode = mode
    first = post(proxy, secret, question)
    assert first.status in (200, 502), f"status {first.status}: {first.body[:300]!r}"
    if first.status == 502:
        openai_error(first.body)
    books.assert_sane()
    calls = fake.chat_calls
    again = post(proxy, secret, question)
    assert again.status in (200, 502), f"status {again.status}: {again.body[:300]!r}"
    if again.status == 200 and again.headers.get("x-kallm-cache") == "HIT":
        assert fake.chat_calls == calls
        try:
            replayed = strict_json(again.body)  # kallm wrote this one itself
        except ValueError as exc:
            raise AssertionError(
                f"a cache hit replayed the absurd usage as invalid JSON ({exc}): "
                f"{again.body[-200:]!r}"
            ) from None
        usage = replayed.get("usage") or {}
        assert all(
            not isinstance(v, int | float) or 0 <= v <= MAX_SANE_TOKENS for v in usage.values()
        ), f"a cache hit replayed usage {json.dumps(usage)[:200]}"
    books.assert_sane()


# ---------------------------------------------------------------- broken streams


BROKEN_STREAMS = [
    Mode.STREAM_NOT_JSON,
    Mode.STREAM_CHOICE_INDEX,
    Mode.STREAM_TOOL_INDEX,
    Mode.STREAM_NO_DONE,
]


@pytest.mark.parametrize("mode", BROKEN_STREAMS, ids=str)
def test_a_broken_stream_ends_with_an_error_event(
    keyed: tuple[Proxy, str], fake: MisbehavingUpstream, question: str, mode: Mode
) -> None:
    proxy, secret = keyed
    books = Books(proxy, secret)
    fake.mode = mode
    assert_failed_in_openai_shape(post(proxy, secret, question, stream=True))
    with pytest.raises(openai.APIError):
        sdk_call(proxy, secret, question + " (sdk)", stream=True)
    assert_not_cached(proxy, secret, fake, question, True)
    books.assert_sane()


def test_an_sse_line_over_512kb_is_relayed_whole_or_ends_in_an_error_event(
    keyed: tuple[Proxy, str], fake: MisbehavingUpstream, question: str
) -> None:
    """Never a stream that silently stops: the long event arrives intact and the stream
    ends with [DONE], or it ends with an error event (and nothing is cached)."""
    proxy, secret = keyed
    books = Books(proxy, secret)
    fake.mode = Mode.STREAM_LONG_LINE
    reply = post(proxy, secret, question, stream=True)
    events = sse_data(reply.body)
    if reply.status == 200 and events and events[-1] == b"[DONE]":
        content = "".join(
            (choice.get("delta") or {}).get("content") or ""
            for event in events[:-1]
            for choice in strict_json(event).get("choices", [])
        )
        assert content.count("L") == LONG_LINE_BYTES, "the long event did not arrive intact"
    else:
        assert_failed_in_openai_shape(reply)
        assert_not_cached(proxy, secret, fake, question, True)
    books.assert_sane()


@pytest.mark.parametrize("mode", [Mode.STREAM_TRICKLE, Mode.STREAM_ENDLESS], ids=str)
def test_a_stream_that_will_not_finish_is_cut_at_the_deadline(
    keyed: tuple[Proxy, str], fake: MisbehavingUpstream, question: str, mode: Mode
) -> None:
    proxy, secret = keyed
    books = Books(proxy, secret)
    fake.mode = mode
    started = time.monotonic()
    with pytest.raises(openai.APIError) as caught:
        sdk_call(proxy, secret, question, stream=True)
    took = time.monotonic() - started
    assert took <= DEADLINE + 2, f"the stream ran {took:.1f}s with a {DEADLINE:g}s deadline"
    body = caught.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}, body
    deadline = time.monotonic() + 3
    while fake.abandoned < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.abandoned == 1, "kallm did not hang up on the upstream after the deadline"
    assert_not_cached(proxy, secret, fake, question, True)
    books.assert_sane()


def test_a_stall_before_headers_is_a_504_at_the_deadline(
    keyed: tuple[Proxy, str], fake: MisbehavingUpstream, question: str
) -> None:
    """A JSON request and a stream, side by side (both wait out the same deadline)."""
    proxy, secret = keyed
    books = Books(proxy, secret)
    fake.mode = Mode.STALL
    outcomes: dict[bool, tuple[BaseException | None, float]] = {}

    def call(stream: bool) -> None:
        started = time.monotonic()
        try:
            sdk_call(proxy, secret, f"{question} stream={stream}", stream)
        except Exception as exc:
            outcomes[stream] = (exc, time.monotonic() - started)
        else:
            outcomes[stream] = (None, time.monotonic() - started)

    callers = [threading.Thread(target=call, args=(stream,)) for stream in (False, True)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(30)
    for stream, (error, took) in sorted(outcomes.items()):
        what = "a stream" if stream else "a JSON request"
        assert isinstance(error, openai.APIStatusError), f"{what} got {error!r}"
        assert error.status_code == 504, f"{what} got {error.status_code}: {error.message}"
        assert DEADLINE - 0.2 <= took <= DEADLINE + 2, f"{what}: the 504 came after {took:.1f}s"
        openai_error(error.response.content)
    assert len(outcomes) == 2
    for stream in (False, True):
        assert_not_cached(proxy, secret, fake, f"{question} stream={stream}", stream)
    books.assert_sane()


# ---------------------------------------------------------------- a 200 MB answer


def test_a_200mb_answer_keeps_kallm_memory_bounded(tmp_path: Path) -> None:
    """kallm and the fake in their own processes; the client reads and drops the answer;
    kallm's RSS is sampled from /proc every 10 ms."""
    fake = start_fake_process(tmp_path, "tests.fake_misbehaving", "--mode", "huge")
    try:
        kallm = start_kallm(tmp_path, fake.url)
        try:
            assert get(kallm.port, "/health")[0] == 200
            baseline, hwm_before = kallm.rss_mb(), kallm.peak_mb()
            samples: list[float] = []
            running = threading.Event()
            running.set()

            def sample() -> None:
                while running.is_set():
                    samples.append(kallm.rss_mb())
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                data = raw_request("POST", CHAT, chat_body("one huge answer please"))
                reply = exchange(kallm.port, data, timeout=60, keep=False)
            finally:
                running.clear()
                sampler.join()
            hwm_after = kallm.peak_mb()
            stats = json.loads(get(kallm.port, "/stats")[1])
            time.sleep(0.3)
            lines = [json.loads(line) for line in kallm.log_text().splitlines() if line.strip()]
        finally:
            kallm.stop()
    finally:
        fake.stop()
    peak = max([*samples, hwm_after if hwm_after > hwm_before else 0.0])
    growth = peak - baseline
    print(
        f"\n200 MB answer: status {reply.status}, {reply.size:,} bytes relayed in "
        f"{reply.seconds:.1f}s; kallm RSS {baseline:.0f} MB before, peak {peak:.0f} MB "
        f"(+{growth:.0f} MB)"
    )
    if reply.status == 200:
        assert reply.size == HUGE_BYTES, f"the answer was cut at {reply.size:,} bytes"
    else:
        assert reply.status == 502, f"status {reply.status}"
    assert stats["total_entries"] == 0 and stats["stores"] == 0, "a 200 MB answer was cached"
    chat = [line for line in lines if line.get("path") == CHAT and "status" in line]
    assert chat and all(line.get("cost_usd", 0) <= MAX_SANE_USD for line in chat), chat
    assert not [line for line in lines if "traceback" in line], "the log has a traceback"
    assert growth < 300, (
        f"kallm's RSS grew by {growth:.0f} MB relaying a 200 MB answer "
        f"(baseline {baseline:.0f} MB, peak {peak:.0f} MB)"
    )
