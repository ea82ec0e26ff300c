"""Property-based fuzzing of kallm's front door: whatever a client sends, kallm answers, and
never with a 5xx of its own.

Hypothesis generates chat bodies (valid-ish requests with wild types in every field, huge
and non-finite numbers, lone surrogates, invalid UTF-8, truncated JSON, nesting to depth
5,000), headers (kallm's own, ``Cache-Control``, ``X-Request-Id``, ``Content-Encoding``
with bodies that are not what it says, raw bytes 0x80-0xff) and admin API bodies. Each
request goes over a raw socket, as written, to one of two real kallm servers started
once for the module: one with auth off, one with virtual keys (and a valid key).

The upstream is ``tests.fake_misbehaving`` in ``Mode.OK``: it answers 200 to every chat
request, whatever the body. So every other status is kallm's own, and:

- no response has a status >= 500;
- every 4xx is OpenAI's error JSON (``{"error": {"message", "type", "param", "code"}}``);
- every 200 is a completion (strict JSON) or an event stream ending in ``[DONE]``;
- the connection never closes without a whole response;
- a refused request never reaches the upstream;
- ``/health`` is 200 afterwards.

Violations are collected rather than raised at the first one, so a run reports every
distinct way kallm broke (with the smallest request that showed each), and the counts of
requests and statuses. Runs are derandomized: CI sees the same requests every time.
"""

from __future__ import annotations

import collections
import gzip
import http.client
import json
import logging
import socket
import traceback
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from kallm.config import Settings
from tests.fake_misbehaving import MisbehavingUpstream, Mode, start_misbehaving
from tests.harness import LoopThread, Proxy, start_proxy, stop
from tests.test_upstream_contracts import openai_error, sse_data, strict_json

CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
ADMIN_KEY = "fuzz-admin-key-0001"


def fuzz_settings(examples: int) -> settings:
    """Repeatable (derandomized, no example database) and bounded; generation only: a
    violation is recorded, not raised, so there is nothing to shrink."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


# ---------------------------------------------------------------- the servers


@dataclass
class Target:
    """One kallm under fuzz: where it listens and what every request to it carries."""

    name: str
    proxy: Proxy
    headers: list[tuple[bytes, bytes]]  # e.g. the virtual key

    @property
    def port(self) -> int:
        return int(self.proxy.root.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def fake(loop_thread: LoopThread) -> Iterator[MisbehavingUpstream]:
    upstream, runner, _url = loop_thread.run(start_misbehaving())
    upstream.mode = Mode.OK
    yield upstream
    stop(loop_thread, runner)


def _settings(fake: MisbehavingUpstream, tmp: Path, **overrides: Any) -> Settings:
    assert fake.base_url is not None
    return Settings(
        upstream_base_url=fake.base_url,
        upstream_api_key="sk-test-upstream",
        upstream_timeout=10.0,
        cache_file=None,
        snapshot_interval=0,
        db_path=tmp / "kallm.db",
        **overrides,
    )


@pytest.fixture(scope="module")
def open_target(
    loop_thread: LoopThread,
    local_model: Any,
    fake: MisbehavingUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("fuzz-open")
    proxy = start_proxy(loop_thread, _settings(fake, tmp), embedder=local_model)
    yield Target("auth off", proxy, [])
    stop(loop_thread, proxy.runner)


@pytest.fixture(scope="module")
def keyed_target(
    loop_thread: LoopThread,
    local_model: Any,
    fake: MisbehavingUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("fuzz-keyed")
    settings_ = _settings(fake, tmp, auth="virtual-keys", admin_key=ADMIN_KEY)
    proxy = start_proxy(loop_thread, settings_, embedder=local_model)
    _record, secret = proxy.call(proxy.keys.create("fuzz", budget_usd=1000.0))
    yield Target("virtual keys", proxy, [(b"Authorization", f"Bearer {secret}".encode())])
    stop(loop_thread, proxy.runner)


@pytest.fixture(params=["open", "keyed"])
def target(request: pytest.FixtureRequest) -> Target:
    return request.getfixturevalue(f"{request.param}_target")


class ErrorLog(logging.Handler):
    """ERROR records of kallm's and aiohttp's loggers while the module runs: kallm logs an
    exception it did not expect, aiohttp one that escaped every handler."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def where(record: logging.LogRecord) -> str:
    """``ExcType at kallm/file.py:line in function`` for the deepest kallm frame (aiohttp's
    otherwise), or the message when there is no traceback."""
    if not record.exc_info or record.exc_info[1] is None:
        return f"{record.name}: {record.getMessage()[:120]}"
    error = record.exc_info[1]
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if "/kallm/" in f.filename] or frames
    if not ours:
        return f"{type(error).__name__} ({record.name})"
    frame = ours[-1]
    path = frame.filename.split("/site-packages/")[-1].split("/wt-robust/")[-1]
    return f"{type(error).__name__}: {str(error)[:80]!r} at {path}:{frame.lineno} in {frame.name}"


@pytest.fixture(scope="module")
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    loggers = [logging.getLogger(name) for name in ("kallm", "aiohttp")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


# ---------------------------------------------------------------- raw HTTP


def raw_request(method: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        b"Connection: close",
        b"Content-Length: " + str(len(body)).encode(),
    ]
    if not any(name.lower() == b"content-type" for name, _ in headers):
        lines.append(b"Content-Type: application/json")
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def send(port: int, data: bytes) -> Answer:
    """One request on its own connection; raises if the connection ends without a whole
    response."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


# ---------------------------------------------------------------- the property, recorded


@dataclass
class Ledger:
    """Counts and violations of one fuzz test; ``assert_clean`` fails with all of them."""

    target: Target
    fake: MisbehavingUpstream
    errors: ErrorLog
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    upstream_calls: int = 0
    violations: dict[str, tuple[int, bytes, str]] = field(default_factory=dict)
    seen: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def violation(self, kind: str, data: bytes, detail: str) -> None:
        self.seen[kind] += 1
        smallest = self.violations.get(kind)
        if smallest is None or len(data) < smallest[0]:
            self.violations[kind] = (len(data), data, detail)

    def check(self, data: bytes, expect_refusal: bool = False) -> Answer | None:
        """Send one request and check every property on its answer."""
        before, unreadable = self.fake.chat_calls, self.fake.unreadable
        logged = len(self.errors.records)
        try:
            answer = send(self.target.port, data)
        except (http.client.HTTPException, OSError) as exc:
            self.statuses[0] += 1
            self.violation(f"connection ended without a response ({type(exc).__name__})", data, "")
            return None
        reached = self.fake.chat_calls - before
        for record in self.errors.records[logged:]:
            if "/tests/" not in record.pathname or record.name.startswith("kallm"):
                self.violation(f"logged an error: {where(record)}", data, "")
        if self.fake.unreadable > unreadable:
            self.violation(
                "kallm forwarded a body the upstream cannot read (its Content-Encoding is wrong)",
                data,
                "",
            )
        self.upstream_calls += reached
        status = answer.status
        self.statuses[status] += 1
        if status >= 500:
            message = _message(answer.body)
            causes = {where(r) for r in self.errors.records[logged:] if r.exc_info}
            cause = "; ".join(sorted(causes)) or message[:60]
            self.violation(f"{status} from kallm: {cause}", data, message)
        if status >= 400:
            try:
                openai_error(answer.body)
            except AssertionError as exc:
                self.violation(f"{status} not in OpenAI's error shape", data, str(exc)[:300])
        if status != 200 and reached and self.fake.unreadable == unreadable:
            self.violation(f"{status} but the upstream was called", data, "")
        if expect_refusal and status < 400:
            self.violation(f"{status} to a request that must be refused", data, "")
        if status == 200 and data.startswith(b"POST " + CHAT.encode() + b" "):
            self._check_answer(data, answer, reached)
        elif status < 300:
            try:
                strict_json(answer.body)
            except ValueError as exc:
                self.violation(f"a {status} that is not strict JSON", data, str(exc))
        return answer

    def _check_answer(self, data: bytes, answer: Answer, reached: int) -> None:
        if reached > 1:
            self.violation("one request reached the upstream several times", data, "")
        if answer.headers.get("content-type", "").startswith("text/event-stream"):
            events = sse_data(answer.body)
            if not events or events[-1] != b"[DONE]":
                self.violation("a 200 stream without [DONE]", data, repr(answer.body[-200:]))
            return
        try:
            completion = strict_json(answer.body)
        except ValueError as exc:
            self.violation("a 200 that is not strict JSON", data, f"{exc}: {answer.body[:200]!r}")
            return
        if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
            self.violation("a 200 that is not a completion", data, repr(answer.body[:200]))

    def assert_clean(self, what: str) -> None:
        health = send(self.target.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        summary = (
            f"{what} against kallm ({self.target.name}): {self.requests} requests, statuses "
            f"{dict(sorted(self.statuses.items()))}, {self.upstream_calls} reached the upstream"
        )
        print("\n" + summary)
        problems = [
            f"- {kind} (x{self.seen[kind]}); smallest request ({size} bytes): "
            f"{data[:700]!r}" + (f"\n    {detail[:400]}" if detail else "")
            for kind, (size, data, detail) in sorted(self.violations.items())
        ]
        assert not problems, summary + "\n" + "\n".join(problems)
        assert health.status == 200, f"/health answered {health.status} after the fuzz"


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return repr(body[:100])


@pytest.fixture
def ledger(target: Target, fake: MisbehavingUpstream, error_log: ErrorLog) -> Ledger:
    fake.reset()
    return Ledger(target, fake, error_log)


# ---------------------------------------------------------------- strategies: JSON values


SPECIAL_NUMBERS: list[Any] = [
    0,
    -1,
    1,
    128,
    129,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**100,
    10**400,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    1e308,
    5e-324,
    -0.0,
    0.5,
    float("nan"),
    float("inf"),
    float("-inf"),
]
SPECIAL_STRINGS = [
    "",
    " ",
    "\x00",
    "\ud800",
    "a\udfffb",
    "\udbff\udfff",  # a surrogate pair written as two escapes: that one is fine
    "\u2028\u2029",
    "\x7f",
    "\x1b[31mred",
    "../../etc/passwd",
    "..",
    "/",
    "%2e%2e%2f",
    "gpt-4o-mini/../gpt-4o",
    "gpt-4o-mini\r\nX-Injected: 1",
    "gpt-4o-mini\x00",
    "gpt 4o mini",
    "openai/gpt-4o-mini",
    "a/b/c/d",
    "@latest",
    "é😀",
    "x" * 300,
    "NaN",
    "Infinity",
    "null",
    "user",
    "assistant",
]
ROLES = ["system", "developer", "user", "assistant", "tool", "function"]
texts = st.one_of(
    st.text(max_size=24),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=12),  # surrogates too
    st.sampled_from(SPECIAL_STRINGS),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(SPECIAL_NUMBERS),
    st.floats(),  # NaN and infinities come out as JSON's forbidden literals
    texts,
)
wild = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(texts, children, max_size=3)
    ),
    max_leaves=8,
)
numbers = st.one_of(st.sampled_from(SPECIAL_NUMBERS), st.integers(), st.floats(), wild)
models = st.one_of(st.just(MODEL), st.sampled_from(SPECIAL_STRINGS), texts, wild)
roles = st.one_of(st.sampled_from([*ROLES, "wizard", "USER", "user "]), wild)
parts = st.lists(
    st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(texts, wild)}),
        st.fixed_dictionaries({"type": texts, "image_url": wild}),
        wild,
    ),
    max_size=3,
)
contents = st.one_of(texts, parts, wild)
messages = st.fixed_dictionaries(
    {"role": roles, "content": contents},
    optional={"name": wild, "tool_calls": wild, "tool_call_id": wild},
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": models,
    "messages": st.one_of(st.lists(messages, max_size=3), wild),
    "max_tokens": numbers,
    "max_completion_tokens": numbers,
    "n": numbers,
    "temperature": numbers,
    "top_p": numbers,
    "seed": numbers,
    "stream": st.one_of(st.booleans(), st.booleans(), wild),
    "stream_options": st.one_of(
        texts, st.fixed_dictionaries({"include_usage": st.one_of(st.booleans(), wild)}), wild
    ),
    "tools": wild,
    "tool_choice": wild,
    "stop": wild,
    "response_format": wild,
    "logit_bias": wild,
    "metadata": wild,
    "user": wild,
    "x-unknown-param": wild,
}
MESSAGE_FIELDS = {"role": roles, "content": contents, "name": wild}


@st.composite
def chat_payloads(draw: st.DrawFn) -> Any:
    """A valid chat request with up to four of its fields (or its first message's) given
    wild values; now and then no object at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(wild)
    payload: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"fuzz {draw(st.integers(0, 10**9))}"}],
    }
    for name in draw(st.lists(st.sampled_from([*FIELDS, "role", "content", "name", "-model"]))):
        if name == "-model":
            payload.pop("model", None)
        elif name in MESSAGE_FIELDS and isinstance(payload["messages"], list):
            if payload["messages"] and isinstance(payload["messages"][0], dict):
                payload["messages"][0][name] = draw(MESSAGE_FIELDS[name])
        elif name in FIELDS:
            payload[name] = draw(FIELDS[name])
    return payload


# ---------------------------------------------------------------- strategies: bytes

DEPTHS = [63, 64, 65, 200, 1000, 5000]
LITERALS = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1E999", b"0x10", b"+1", b"01"]
PLACEHOLDER = "@@fuzz@@"


@st.composite
def encoded(draw: st.DrawFn, payload: Any) -> bytes:
    """``payload`` as bytes, possibly damaged: raw UTF-8 (lone surrogates become invalid
    bytes), truncated, invalid bytes spliced in, a field nested to depth 5,000, or a
    number replaced by a literal JSON does not allow."""
    how = draw(
        st.sampled_from(["ascii", "ascii", "utf8", "truncated", "bad-utf8", "deep", "literal"])
    )
    if how == "utf8":
        return json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if how in ("deep", "literal") and isinstance(payload, dict):
        name = draw(st.sampled_from(["content", "temperature", "metadata", "max_tokens", "n"]))
        if name == "content" and isinstance(payload.get("messages"), list) and payload["messages"]:
            first = payload["messages"][0]
            if isinstance(first, dict):
                first["content"] = PLACEHOLDER
        else:
            payload[name] = PLACEHOLDER
        text = json.dumps(payload).encode()
        if how == "deep":
            depth = draw(st.sampled_from(DEPTHS))
            bracket = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
            value = bracket[0] * depth + b"1" + bracket[1] * depth
        else:
            value = draw(st.sampled_from(LITERALS))
        return text.replace(json.dumps(PLACEHOLDER).encode(), value)
    text = json.dumps(payload).encode()
    if how == "truncated" and text:
        return text[: draw(st.integers(0, len(text) - 1))]
    if how == "bad-utf8":
        at = draw(st.integers(0, len(text)))
        junk = draw(st.binary(min_size=1, max_size=4).map(lambda b: bytes(x | 0x80 for x in b)))
        return text[:at] + junk + text[at:]
    return text


HEADER_BYTES = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
header_bytes = st.lists(st.sampled_from(HEADER_BYTES), max_size=40).map(bytes)
KALLM_HEADERS: dict[bytes, list[bytes]] = {
    b"X-Kallm-Namespace": [b"team-a", b"", b"x" * 300, b"a/b", b"\xc3\xa9quipe", b"\xff\xfe"],
    b"X-Kallm-Threshold": [b"0.9", b"1.5", b"-0", b"nan", b"inf", b"1e400", b"0x1p-1", b" 0.5 "],
    b"X-Kallm-Guard": [b"on", b"off", b"OFF", b"maybe", b"", b"\xe2\x80\x8boff"],
    b"X-Request-Id": [b"abc", b"x" * 129, b"id with spaces", b"\xff" * 8, b"../../x"],
    b"Cache-Control": [b"no-cache", b"no-store", b"no-cache, no-store", b"max-age=0", b",,,"],
    b"Content-Encoding": [b"gzip", b"deflate", b"br", b"identity", b"gzip, gzip", b"GZIP"],
    b"Authorization": [b"Bearer sk-kallm-nope", b"Bearer \xff\xfe", b"Basic abc", b"Bearer"],
}
header_pairs = st.sampled_from(sorted(KALLM_HEADERS)).flatmap(
    lambda name: st.tuples(
        st.just(name), st.one_of(st.sampled_from(KALLM_HEADERS[name]), header_bytes)
    )
)


@st.composite
def bodies_for(draw: st.DrawFn, headers: list[tuple[bytes, bytes]], payload: Any) -> bytes:
    """The body to send under ``headers``: what Content-Encoding says it is, or not."""
    text = json.dumps(payload).encode()
    encodings = [value.strip().lower() for name, value in headers if name == b"Content-Encoding"]
    if not encodings:
        return text
    honest = draw(st.booleans())
    if honest and encodings[-1] == b"gzip":
        return gzip.compress(text)
    if honest and encodings[-1] == b"deflate":
        return zlib.compress(text)
    broken = gzip.compress(text)
    return draw(st.sampled_from([text, broken[: len(broken) // 2], b"\x1f\x8b" + text, b"\x00"]))


def valid_payload(n: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"header fuzz {n}"}]}


# ---------------------------------------------------------------- the tests


def hostile_bodies() -> list[bytes]:
    """The cases the issue names, sent every run before the generated ones."""
    base = valid_payload(0)
    user = base["messages"][0]
    text = json.dumps(base).encode()

    def with_(**changes: Any) -> bytes:
        return json.dumps({**base, **changes}).encode()

    def with_message(**changes: Any) -> bytes:
        return with_(messages=[{**user, **changes}])

    def spliced(value: bytes) -> bytes:  # a raw value as the first message's content
        return text.replace(json.dumps(user["content"]).encode(), value)

    wild_values: list[Any] = [{"a": 1}, [1], 7, None, True, 1.5, "x" * 10_000]
    bodies = [with_message(role=value) for value in wild_values]
    bodies += [with_message(content=value) for value in [*wild_values[:6], [1, "a"], [{}]]]
    bodies += [
        with_(model=name)
        for name in ["gpt-4o-mini\x00", "gpt\r\nx", "../../v1/files", "a/../b", "%2e%2e", "\t"]
    ]
    numbers: list[Any] = [2**64, 10**400, 1.7976931348623157e308, -1e308, "10", True, False]
    for name in ("max_tokens", "max_completion_tokens", "n", "temperature", "top_p", "seed"):
        bodies += [with_(**{name: value}) for value in numbers]
    bodies += [
        with_(stream_options="include_usage"),
        with_(stream=True, stream_options="include_usage"),
        with_(stream=True, stream_options={"include_usage": "yes"}),
        spliced(b'"\\ud800"'),
        spliced(b'"a\\udfffb"'),
        spliced(b'"\xff\xfe invalid utf-8"'),
        spliced(b'"\xed\xa0\x80 a surrogate in raw utf-8"'),
        spliced(b"NaN"),
        spliced(b"Infinity"),
        spliced(b"-Infinity"),
        spliced(b"1e400"),
        spliced(b"[" * 1000 + b"]" * 1000),
        spliced(b'{"a":' * 1000 + b"1" + b"}" * 1000),
        spliced(b"[" * 5000 + b"]" * 5000),
        text.replace(b'"model"', b'"model": "gpt-4o-mini", "temperature": NaN, "x"'),
        text.replace(b'"model"', b'"metadata": ' + b"[" * 1000 + b"]" * 1000 + b', "model"'),
        text[:-1],
        text[: len(text) // 2],
        b"",
        b"{",
        b"null",
        b"[]",
        b'"a string"',
        b"\xff\xfe\x00",
    ]
    return bodies


def test_fuzzed_chat_bodies_never_make_kallm_fail(ledger: Ledger) -> None:
    for body in hostile_bodies():
        ledger.check(raw_request("POST", CHAT, body, ledger.target.headers))

    @fuzz_settings(examples=700)
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        payload = data.draw(chat_payloads(), "payload")
        body = data.draw(encoded(payload), "body")
        ledger.check(raw_request("POST", CHAT, body, ledger.target.headers))

    one()
    ledger.assert_clean("chat body fuzz")


def test_fuzzed_headers_never_make_kallm_fail(ledger: Ledger) -> None:
    @fuzz_settings(examples=300)
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        extra = data.draw(st.lists(header_pairs, min_size=1, max_size=4), "headers")
        names = {name for name, _ in extra}
        headers = [pair for pair in ledger.target.headers if pair[0] not in names] + extra
        payload = valid_payload(data.draw(st.integers(0, 10**9)))
        if data.draw(st.booleans()):
            payload["stream"] = True
        body = data.draw(bodies_for(headers, payload), "body")
        ledger.check(raw_request("POST", CHAT, body, headers))

    one()
    ledger.assert_clean("header fuzz")


# Requests that can only be refused: each breaks a rule kallm checks before any upstream call.
REFUSABLE: list[tuple[str, st.SearchStrategy[Any]]] = [
    (
        "model",
        st.one_of(
            st.sampled_from(["", " ", "../x", "a//b", "gpt\x00", "x" * 257, "a b", "/x", "é"]),
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.lists(scalars),
        ),
    ),
    ("role", st.one_of(st.sampled_from(["wizard", "USER", ""]), st.lists(wild), st.integers())),
    ("content", st.one_of(st.integers(), st.booleans(), st.lists(scalars, min_size=1))),
    ("max_tokens", st.one_of(st.sampled_from([0, -1, 10**7 + 1, 2**63, 10**400, 1.5]), texts)),
    ("n", st.one_of(st.sampled_from([0, 129, 2**64, True, 1.0]), texts)),
    ("stream", st.one_of(st.sampled_from(["yes", 1, 0, "true"]), st.lists(scalars))),
    ("stream_options", st.one_of(texts, st.lists(scalars), st.integers())),
]


@st.composite
def refusable_bodies(draw: st.DrawFn) -> bytes:
    payload = valid_payload(draw(st.integers(0, 10**9)))
    kind = draw(st.sampled_from([*(name for name, _ in REFUSABLE), "bytes"]))
    if kind == "bytes":
        text = json.dumps(payload).encode()
        damage = draw(st.sampled_from(["truncate", "utf8", "deep", "literal", "surrogate"]))
        if damage == "truncate":
            return text[: draw(st.integers(0, len(text) - 2))]
        if damage == "utf8":
            return text.replace(b"header", b"head\xc3\x28er")
        if damage == "deep":
            depth = draw(st.sampled_from(DEPTHS[2:]))
            return text.replace(b'"user"', b'"user", "x": ' + b"[" * depth + b"]" * depth)
        if damage == "literal":
            literal = draw(st.sampled_from(LITERALS[:5]))
            return text.replace(b'"user"', b'"user", "temperature": ' + literal)
        return text.replace(b"header", b"head\\ud800er")
    strategy = dict(REFUSABLE)[kind]
    if kind in ("role", "content"):
        payload["messages"][0][kind] = draw(strategy)
    else:
        payload[kind] = draw(strategy)
    return json.dumps(payload).encode()


def test_refused_requests_never_reach_the_upstream(ledger: Ledger) -> None:
    @fuzz_settings(examples=400)
    @given(body=refusable_bodies())
    def one(body: bytes) -> None:
        ledger.check(raw_request("POST", CHAT, body, ledger.target.headers), expect_refusal=True)

    one()
    ledger.assert_clean("refusable requests")
    assert ledger.upstream_calls == 0


ADMIN_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "name": st.one_of(texts, wild),
    "rpm": st.one_of(st.sampled_from([2**63, 2**64, 10**9 + 1, -1, 1.5]), numbers),
    "tpm": numbers,
    "budget_usd": st.one_of(st.sampled_from([float("nan"), float("inf"), 1e308]), numbers),
    "budget_period": numbers,
    "expires": numbers,
    "models": st.one_of(st.lists(texts, max_size=3), wild),
    "metadata": st.one_of(st.dictionaries(texts, texts, max_size=2), wild),
    "namespace": st.one_of(texts, wild),
    "x-unknown": wild,
}


@st.composite
def admin_requests(draw: st.DrawFn) -> tuple[str, str, bytes]:
    fields = draw(st.lists(st.sampled_from(sorted(ADMIN_FIELDS)), max_size=4, unique=True))
    policy = {name: draw(ADMIN_FIELDS[name]) for name in fields}
    if draw(st.booleans()):
        policy.setdefault("name", f"fuzz-{draw(st.integers(0, 10**9))}")
    body = draw(encoded(policy))
    method, path = draw(
        st.sampled_from(
            [
                ("POST", "/admin/keys"),
                ("PATCH", "/admin/keys/fuzz"),
                ("PATCH", "/admin/keys/%ED%A0%80"),
                ("PATCH", "/admin/keys/%00"),
                ("PATCH", "/admin/keys/..%2F..%2Fx"),
                ("POST", "/admin/keys/fuzz/rotate"),
                ("POST", "/admin/cache/entries"),
            ]
        )
    )
    return method, path, body


def test_fuzzed_admin_bodies_never_make_kallm_fail(
    keyed_target: Target, fake: MisbehavingUpstream, error_log: ErrorLog
) -> None:
    ledger = Ledger(keyed_target, fake, error_log)
    headers = [(b"Authorization", f"Bearer {ADMIN_KEY}".encode())]

    @fuzz_settings(examples=300)
    @given(request=admin_requests())
    def one(request: tuple[str, str, bytes]) -> None:
        method, path, body = request
        ledger.check(raw_request(method, path, body, headers))

    one()
    ledger.assert_clean("admin API fuzz")
