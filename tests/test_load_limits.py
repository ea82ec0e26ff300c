"""Hostile load against `kallm serve` in its own process: probes stay fast, slow clients are
cut, stalled bodies time out cleanly, /metrics and memory stay bounded.

kallm and the upstream each run as a subprocess (``python -m kallm serve``,
``python -m tests.fake_upstream``), so the test process's own GIL and allocations
neither slow kallm down nor blur its memory figures (read from ``/proc/<pid>/status``).
Clients are raw sockets wherever a client library would tidy the request.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
_LISTENING = re.compile(r"kallm listening on http://127\.0\.0\.1:(\d+)/v1")


# ---------------------------------------------------------------- processes


def _clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a child: no developer KALLM_*/OPENAI_* settings, private dirs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KALLM_", "OPENAI_"))}
    env["XDG_CONFIG_HOME"] = str(tmp / "xdg-config")
    env["XDG_DATA_HOME"] = str(tmp / "xdg-data")
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def _stop(process: subprocess.Popen[Any]) -> None:
    """SIGTERM the child we started (by its own PID), then SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class FakeProcess:
    """A fake upstream (``python -m tests.fake_upstream`` or ``tests.fake_misbehaving``)."""

    process: subprocess.Popen[str]
    url: str  # ends in /v1

    def stop(self) -> None:
        _stop(self.process)


def start_fake_process(tmp: Path, module: str = "tests.fake_upstream", *args: str) -> FakeProcess:
    """Start a fake upstream in its own process; it prints its base URL first."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--port", "0", *args],
        cwd=REPO,
        env=_clean_env(tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if not url.startswith("http://"):
        _stop(process)
        raise AssertionError(f"{module} did not start (printed {url!r})")
    return FakeProcess(process, url)


@dataclass
class KallmProcess:
    """`python -m kallm serve` on an OS-picked port, its JSON log in a file."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status_kb(self, name: str) -> int:
        """A figure from /proc/<pid>/status, e.g. VmRSS or VmHWM, in kB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
        raise AssertionError(f"{name} not in /proc/{self.process.pid}/status")

    def rss_mb(self) -> float:
        return self.status_kb("VmRSS") / 1024

    def peak_mb(self) -> float:
        return self.status_kb("VmHWM") / 1024

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        _stop(self.process)


def start_kallm(tmp: Path, upstream_url: str, **env: str) -> KallmProcess:
    """Start kallm in its own process with ``env`` (KALLM_* settings); wait for /health."""
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / f"kallm-{uuid.uuid4().hex[:8]}.log"
    settings = {
        "OPENAI_BASE_URL": upstream_url,
        "OPENAI_API_KEY": "sk-upstream",
        "KALLM_PORT": "0",
        "KALLM_CACHE_FILE": "off",
        "KALLM_DB": str(tmp / "kallm.db"),
        "KALLM_LOG_JSON": "1",
        **env,
    }
    with log_path.open("wb") as log:  # a file, never a pipe: a full pipe would stall kallm
        process = subprocess.Popen(
            [sys.executable, "-m", "kallm", "serve"],
            cwd=REPO,
            env=_clean_env(tmp, **settings),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"kallm exited early: {log_path.read_text()}")
        match = _LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            served = KallmProcess(process, int(match[1]), log_path)
            if get(served.port, "/health")[0] == 200:
                return served
        time.sleep(0.05)
    _stop(process)
    raise AssertionError(f"kallm did not start: {log_path.read_text()}")


@contextlib.contextmanager
def kallm_and_fake(
    tmp: Path, fake_args: tuple[str, ...] = (), **env: str
) -> Iterator[tuple[KallmProcess, FakeProcess]]:
    fake = start_fake_process(tmp, "tests.fake_upstream", *fake_args)
    try:
        kallm = start_kallm(tmp, fake.url, **env)
        try:
            yield kallm, fake
        finally:
            kallm.stop()
    finally:
        fake.stop()


# ---------------------------------------------------------------- raw HTTP


def raw_request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """The bytes of one HTTP/1.1 request, exactly as given (Connection: close)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes
    size: int = 0  # bytes of body read (the body itself is dropped when ``keep`` is off)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def exchange(port: int, data: bytes, timeout: float = 60, keep: bool = True) -> RawReply:
    """Send raw bytes on a new connection and read one response (discarding the body
    piece by piece unless ``keep``)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        parts: list[bytes] = []
        size = 0
        while piece := response.read1(1 << 20):
            size += len(piece)
            if keep:
                parts.append(piece)
        headers = {k.lower(): v for k, v in response.getheaders()}
        return RawReply(
            response.status, headers, b"".join(parts), size, time.perf_counter() - started
        )


def get(port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        reply = exchange(port, raw_request("GET", path), timeout)
    except OSError:
        return 0, b""
    return reply.status, reply.body


def chat_body(text: str, model: str = MODEL, **params: Any) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": text}], **params}
    ).encode()


def big_prompt(size: int, tag: str) -> bytes:
    """A chat body of about ``size`` bytes whose prompt is words, unique by ``tag`` (long
    words: the fake upstream splits the prompt into words, and a million of them is slow)."""
    words = "pneumonoultramicroscopic supercalifragilistic antidisestablishmentarianism".split()
    unit = " ".join(words) + " "
    filler = unit * ((size - 200) // len(unit))
    return chat_body(f"{tag} {filler}")


def metric_lines(port: int) -> list[str]:
    status, body = get(port, "/metrics")
    assert status == 200
    return [line for line in body.decode().splitlines() if line and not line.startswith("#")]


# ---------------------------------------------------------------- (a) probes stay fast


class Prober:
    """/health over one keep-alive connection, timed from the first byte sent to the last
    byte read."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def once(self) -> float:
        started = time.perf_counter()
        self.connection.request("GET", "/health")
        response = self.connection.getresponse()
        response.read()
        assert response.status == 200
        return time.perf_counter() - started

    def close(self) -> None:
        self.connection.close()


def test_health_is_not_stalled_while_a_10mb_prompt_is_processed(tmp_path: Path) -> None:
    with kallm_and_fake(tmp_path) as (kallm, _fake):
        prober = Prober(kallm.port)
        for _ in range(20):
            prober.once()
        assert exchange(kallm.port, raw_request("POST", CHAT, chat_body("warm up"))).status == 200
        worst: list[float] = []
        statuses: list[int] = []
        for round_ in range(3):
            data = raw_request("POST", CHAT, big_prompt(9_900_000, f"round {round_}"))
            done: dict[str, RawReply] = {}
            sender = threading.Thread(
                target=lambda d=data, out=done: out.update(r=exchange(kallm.port, d, keep=False))
            )
            sender.start()
            samples: list[float] = []
            while sender.is_alive():
                samples.append(prober.once())
                time.sleep(0.002)
            sender.join()
            statuses.append(done["r"].status)
            worst.append(max(samples))
            assert len(samples) >= 5, f"only {len(samples)} probes overlapped the big request"
        prober.close()
    assert statuses == [200, 200, 200]
    shown = [round(w * 1000, 1) for w in worst]
    # The middle round's worst probe within 100 ms (typically 20-60 ms here): one round may
    # lose the CPU to another process on a shared machine; none may stall (the prompt used
    # to hold the loop 8.5 s).
    assert sorted(worst)[1] < 0.100, f"/health worst per round {shown} ms (middle over 100)"
    assert max(worst) < 0.250, f"/health worst per round {shown} ms: a stall"


# ---------------------------------------------------------------- (b) slow clients are cut


def test_slow_header_clients_are_closed_at_the_idle_timeout(tmp_path: Path) -> None:
    idle = 3.0
    with kallm_and_fake(tmp_path, KALLM_IDLE_TIMEOUT=f"{idle:g}") as (kallm, _fake):
        header = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 64
        # past the listen backlog a connect waits for a SYN retry (~1s): clock each socket
        connected_at: dict[socket.socket, float] = {}
        started = time.monotonic()
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", kallm.port))
            connected_at[sock] = time.monotonic() - started
        sockets = list(connected_at)
        closed_at: dict[socket.socket, float] = {}
        normal: dict[str, RawReply] = {}
        normal_request = threading.Thread(
            target=lambda: normal.update(
                r=exchange(kallm.port, raw_request("POST", CHAT, chat_body("meanwhile")), 10)
            )
        )
        sent = 0
        try:
            for sock in sockets:
                sock.setblocking(False)
            while len(closed_at) < len(sockets) and time.monotonic() - started < idle + 6:
                elapsed = time.monotonic() - started
                if elapsed >= sent and sent < len(header):  # one byte a second, each socket
                    for sock in sockets:
                        if sock not in closed_at:
                            try:
                                sock.send(header[sent : sent + 1])
                            except OSError:
                                closed_at[sock] = elapsed
                    sent += 1
                if elapsed > 1.5 and not normal_request.is_alive() and not normal:
                    normal_request.start()
                open_ = [s for s in sockets if s not in closed_at]
                readable, _, _ = select.select(open_, [], [], 0.05)
                for sock in readable:
                    try:
                        data = sock.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        closed_at[sock] = time.monotonic() - started
            if normal_request.ident is not None:
                normal_request.join(10)
        finally:
            for sock in sockets:
                sock.close()
    lifetimes = sorted(closed_at[sock] - connected_at[sock] for sock in closed_at)
    if lifetimes:
        print(
            f"\n200 slow clients closed {lifetimes[0]:.2f}..{lifetimes[-1]:.2f}s after connecting"
        )
    assert normal and normal["r"].status == 200, "a normal request failed among the slow clients"
    assert normal["r"].seconds < 1.0, f"a normal request took {normal['r'].seconds:.2f}s"
    still_open = len(sockets) - len(closed_at)
    latest = max(lifetimes, default=0.0)
    assert still_open == 0, f"{still_open} of 200 trickling clients still open after {idle + 6}s"
    assert latest <= idle + 2.5, (
        f"a trickling client was closed {latest:.2f}s after it connected (idle_timeout {idle:g}s)"
    )


# ---------------------------------------------------------------- (c) stalled bodies


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            raise AssertionError(f"log line {number} is not JSON: {line[:300]!r}") from None
        assert isinstance(value, dict), f"log line {number} is not a JSON object: {line[:300]!r}"
        out.append(value)
    return out


def _wait_for_line(kallm: KallmProcess, request_id: str, seconds: float = 6) -> None:
    deadline = time.monotonic() + seconds
    while request_id not in kallm.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_half_a_body_is_a_408_and_a_client_that_leaves_is_one_log_line(tmp_path: Path) -> None:
    body_timeout = 2.0
    with kallm_and_fake(tmp_path, KALLM_BODY_TIMEOUT=f"{body_timeout:g}") as (kallm, _fake):
        body = chat_body("x" * 2000)
        head = raw_request("POST", CHAT, body, {"X-Request-Id": "half-body-408"})
        stalled = head[: len(head) - len(body) // 2]  # headers and half the body
        with socket.create_connection(("127.0.0.1", kallm.port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(stalled)
            response = http.client.HTTPResponse(sock)
            response.begin()
            reply_body = response.read()
            waited = time.monotonic() - started
        leaving = raw_request("POST", CHAT, body, {"X-Request-Id": "leaves-mid-body"})
        with socket.create_connection(("127.0.0.1", kallm.port), timeout=10) as sock:
            sock.sendall(leaving[: len(leaving) - len(body) // 2])
            time.sleep(0.3)
        _wait_for_line(kallm, "leaves-mid-body")
        time.sleep(1.0)  # whatever kallm logs late for it is in the file now
        assert get(kallm.port, "/health")[0] == 200
        text = kallm.log_text()
    assert response.status == 408, f"half a body got {response.status}: {reply_body[:300]!r}"
    error = json.loads(reply_body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert body_timeout - 0.2 <= waited <= body_timeout + 2, f"the 408 came after {waited:.2f}s"
    lines = _json_lines(text)
    tracebacks = [line for line in lines if "traceback" in line or "Traceback" in json.dumps(line)]
    assert not tracebacks, f"the log has tracebacks: {json.dumps(tracebacks)[:1500]}"
    timed_out = [line for line in lines if line.get("request_id") == "half-body-408"]
    assert [line.get("status") for line in timed_out] == [408], timed_out
    left = [line for line in lines if "leaves-mid-body" in json.dumps(line)]
    assert len(left) == 1, f"a client that left mid-body logged {len(left)} lines: {left}"


# ---------------------------------------------------------------- (d) /metrics is bounded


def _send_many(port: int, requests: list[bytes], threads: int = 4) -> dict[int, int]:
    """Send each raw request on its own connection from a few threads; count statuses."""
    counts: dict[int, int] = {}
    lock = threading.Lock()

    def work(share: list[bytes]) -> None:
        for data in share:
            try:
                status = exchange(port, data, 10).status
            except OSError:
                status = 0
            with lock:
                counts[status] = counts.get(status, 0) + 1

    workers = [threading.Thread(target=work, args=(requests[i::threads],)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return counts


def test_metrics_do_not_grow_with_invented_paths_under_auth(tmp_path: Path) -> None:
    with kallm_and_fake(tmp_path, KALLM_AUTH="virtual-keys") as (kallm, _fake):
        before = metric_lines(kallm.port)
        requests = []
        for i in range(3000):
            token = uuid.uuid4().hex[:10]
            path = [
                f"/v1/{token}",
                f"/v1/{token}/{i}",
                f"/{token}",
                f"/v1/chat/completions/{token}",
                f"/admin/{token}",
                f"/v1/models/{token}",
            ][i % 6]
            method = "POST" if i % 2 else "GET"
            requests.append(raw_request(method, path, b"{}" if method == "POST" else b""))
        counts = _send_many(kallm.port, requests)
        after = metric_lines(kallm.port)
    assert 0 not in counts, f"connections failed: {counts}"
    assert all(status < 500 for status in counts), counts
    growth = len(after) - len(before)
    new = sorted(set(after) - set(before))
    print(f"\n/metrics: {len(before)} -> {len(after)} lines after 3,000 invented paths {counts}")
    assert growth < 150, f"/metrics grew by {growth} lines ({counts}); e.g. {new[:10]}"


def test_metrics_do_not_grow_with_invented_model_names(tmp_path: Path) -> None:
    with kallm_and_fake(tmp_path) as (kallm, _fake):
        assert exchange(kallm.port, raw_request("POST", CHAT, chat_body("warm"))).status == 200
        before = metric_lines(kallm.port)
        halves: list[int] = []
        counts: dict[int, int] = {}
        for half in range(2):
            requests = [
                raw_request("POST", CHAT, chat_body(f"q {i}", model=f"invented-{half}-{i}-x"))
                for i in range(1000)
            ]
            for status, n in _send_many(kallm.port, requests).items():
                counts[status] = counts.get(status, 0) + n
            halves.append(len(metric_lines(kallm.port)))
    print(f"\n/metrics: {len(before)} -> {halves[0]} -> {halves[1]} lines (2 x 1,000 models)")
    assert counts == {200: 2000}, counts
    growth = halves[1] - len(before)
    assert growth < 150, (
        f"/metrics grew by {growth} lines with 2,000 invented model names "
        f"({len(before)} -> {halves[0]} after 1,000 -> {halves[1]} after 2,000)"
    )


# ---------------------------------------------------------------- (e) memory


def test_twenty_10mb_prompts_do_not_stay_in_memory(tmp_path: Path) -> None:
    with kallm_and_fake(tmp_path) as (kallm, _fake):
        assert exchange(kallm.port, raw_request("POST", CHAT, chat_body("warm"))).status == 200
        baseline = kallm.rss_mb()
        statuses = []
        for i in range(20):
            data = raw_request("POST", CHAT, big_prompt(9_500_000, f"prompt number {i}"))
            statuses.append(exchange(kallm.port, data, keep=False).status)
        time.sleep(0.5)
        after, peak = kallm.rss_mb(), kallm.peak_mb()
        stats = json.loads(get(kallm.port, "/stats")[1])
    print(
        f"\nkallm RSS: {baseline:.0f} MB before, {after:.0f} MB after 20 prompts of 9.5 MB, "
        f"peak {peak:.0f} MB; cache entries {stats['total_entries']}"
    )
    assert statuses == [200] * 20
    assert after < 400, (
        f"kallm kept {after:.0f} MB RSS after 20 distinct 9.5 MB prompts (baseline {baseline:.0f}"
        f" MB, peak {peak:.0f} MB, {stats['total_entries']} cache entries)"
    )
