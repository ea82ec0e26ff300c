"""Three ``kallm serve`` processes on one Redis behave as one kallm.

Real processes, a real Valkey server (``tests/redis_server.py``) and the fake upstream:
an answer stored through one replica is a hit on the others within 100 ms; 64 concurrent
requests spread over the three cannot overspend a key's budget by more than one
request; an rpm limit holds fleet-wide; a key revoked through one replica is refused by
the others within a second; a replica killed with SIGKILL while holding reservations
gives the budget back after ``state.reservation_ttl``; and with Redis killed mid-run the
cache keeps answering (no 5xx), budgeted keys get a clear 429, ``/health`` and
``/metrics`` say degraded, and when Redis is back every replica recovers by itself.

The tests share one fleet and run in file order (the last ones kill things).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kallm.accounts.estimate import estimate
from kallm.accounts.pricing import PriceTable
from kallm.bench.procs import hermetic_env
from tests.harness import Http, LoopThread, Reply, Upstream, start_upstream, stop
from tests.redis_server import RedisServer, free_port

ADMIN = "admin-secret-key-001"
MODEL = "gpt-4o-mini"
HOLD_SECONDS = 3.0  # state.reservation_ttl for these replicas
NO_CACHE = {"Cache-Control": "no-cache"}  # every request goes upstream (and costs)


@dataclass
class Replica:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def http(self) -> Http:
        return Http(f"http://127.0.0.1:{self.port}")

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Fleet:
    redis: RedisServer
    upstream: Upstream
    replicas: list[Replica]
    loop: LoopThread
    prompts: Iterator[int] = field(default_factory=lambda: iter(range(10**6)))

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        reply = self.replicas[0].http.request(
            method, f"/admin/keys{path}", body, headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert reply.status < 300, reply.body
        return reply.json()

    def create_key(self, name: str, **policy: Any) -> tuple[str, str]:
        """A key made through replica a, once every live replica knows it (a second at
        most; asked with a body that has no messages: 400 once known, 401 before, and no
        rate limit or budget is touched)."""
        made = self.admin("POST", "", {"name": name, **policy})
        key = made["record"]["id"], made["key"]
        for replica in self.replicas:
            if replica.alive():
                wait_until(
                    lambda r=replica: chat(r, key[1], None).status == 400,
                    1.0,
                    f"{replica.name} knows the new key",
                )
        return key

    def fresh_prompt(self) -> str:
        return f"Tell me fact number {next(self.prompts)} about the sea."


def chat(
    replica: Replica,
    key: str,
    prompt: str | None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """A chat request; without a prompt, one that admission refuses after the key (400)."""
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 50}
    if prompt is not None:
        body["messages"] = [{"role": "user", "content": prompt}]
    return replica.http.post(
        "/v1/chat/completions",
        body,
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
        timeout=20,
    )


class KeptAlive:
    """Asks one replica over one kept-alive connection (a new connection per request
    costs urllib tens of ms on loopback, which would swamp what is measured); no-store,
    so a miss while waiting does not become the replica's own entry."""

    def __init__(self, replica: Replica, key: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", replica.port, timeout=10)
        self.headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Cache-Control": "no-store",
        }

    def __enter__(self) -> Callable[[str], str | None]:
        return self.ask

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def ask(self, prompt: str) -> str | None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 50}
        self.conn.request("POST", "/v1/chat/completions", json.dumps(body), self.headers)
        response = self.conn.getresponse()
        response.read()
        return response.getheader("X-Kallm-Cache")


def kallm_cli(replica: Replica, *args: str) -> Any:
    """``kallm ARGS --url <replica>``, as an operator runs it; its JSON output."""
    done = subprocess.run(
        [sys.executable, "-m", "kallm", *args, "--url", f"http://127.0.0.1:{replica.port}"],
        env=hermetic_env({"KALLM_ADMIN_KEY": ADMIN}),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def start_replica(name: str, tmp: Path, redis_url: str, upstream_url: str) -> Replica:
    port = free_port()
    log = tmp / f"{name}.log"
    env = hermetic_env(
        {
            "KALLM_AUTH": "virtual-keys",
            "KALLM_ADMIN_KEY": ADMIN,
            "OPENAI_API_KEY": "sk-upstream",
            "KALLM_RESERVATION_TTL": f"{HOLD_SECONDS}s",
            "KALLM_REPLICAS": "3",
            "XDG_CONFIG_HOME": str(tmp / "xdg-config"),
            "XDG_DATA_HOME": str(tmp / f"xdg-{name}"),
        }
    )
    args = [
        sys.executable, "-m", "kallm", "serve",
        "--port", str(port),
        "--redis-url", redis_url,
        "--upstream", upstream_url,
        "--cache-file", "off",
        "--db", str(tmp / f"{name}.db"),
    ]  # fmt: skip
    with log.open("ab") as sink:
        process = subprocess.Popen(
            args, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    return Replica(name, port, process, log)


@contextlib.contextmanager
def logs_on_failure(replicas: list[Replica]) -> Iterator[None]:
    """The replicas' logs when the block fails: a fleet test that fails on a loaded CI
    machine (and never alone) is otherwise a mystery."""
    try:
        yield
    except BaseException:
        for replica in replicas:
            print(f"--- {replica.name}.log\n{replica.log.read_text()[-6000:]}")
        raise


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``check`` holds; fails the test after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.005)
    return time.monotonic() - started


def healthy(replica: Replica) -> bool:
    try:
        return replica.http.get("/health", timeout=1).json().get("status") == "ok"
    except OSError:
        return False


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, loop_thread: LoopThread) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    redis = RedisServer(tmp / "redis").start()
    upstream = start_upstream(loop_thread)
    replicas = [start_replica(n, tmp, redis.url, upstream.url) for n in ("a", "b", "c")]
    try:
        for replica in replicas:
            wait_until(lambda r=replica: healthy(r) or not r.alive(), 60, f"{replica.name} up")
            assert replica.alive(), replica.log.read_text()[-3000:]
        yield Fleet(redis, upstream, replicas, loop_thread)
    finally:
        for replica in replicas:
            if replica.alive():
                replica.process.terminate()
        for replica in replicas:
            try:
                replica.process.wait(20)
            except subprocess.TimeoutExpired:
                replica.process.kill()
        stop(loop_thread, upstream.runner)
        redis.stop()


def test_an_answer_stored_through_one_replica_is_a_hit_on_the_others(fleet: Fleet) -> None:
    _, key = fleet.create_key("cache-user")
    a, b, c = fleet.replicas
    prompt = fleet.fresh_prompt()
    # The same words in other case: not the exact tier (a Redis GET) but the meaning
    # tier, answered from each replica's own index, filled from the shared stream.
    asked = prompt.lower()
    with KeptAlive(b, key) as ask_b, KeptAlive(c, key) as ask_c:
        # warm up the connection and the hit guard's tables (loaded on first use)
        for replica, ask, warm in ((b, ask_b, "What is a fjord?"), (c, ask_c, "Why do cats purr?")):
            assert chat(replica, key, warm).headers["x-kallm-cache"] == "MISS"
            assert ask(warm.lower()) == "HIT"
        assert chat(a, key, prompt).headers["x-kallm-cache"] == "MISS"
        stored = time.monotonic()
        for name, ask in (("b", ask_b), ("c", ask_c)):
            wait_until(lambda ask=ask: ask(asked) == "HIT", 0.1, f"semantic HIT on {name}")
            seconds = time.monotonic() - stored
            print(f"\nstored through a, semantic HIT on {name} {seconds * 1000:.1f} ms later")
    for other in (b, c):
        reply = chat(other, key, prompt)
        assert reply.headers["x-kallm-cache"] == "HIT", "exact tier"
        assert reply.json()["choices"][0]["message"]["content"] == f"Answer to: {prompt}"
    stats = b.http.get("/stats").json()
    assert stats["total_entries"] >= 1


def test_concurrent_requests_over_three_replicas_stay_within_one_request_of_the_budget(
    fleet: Fleet,
) -> None:
    prompt = fleet.fresh_prompt()
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 50}
    most = estimate(PriceTable(), [MODEL], body, len(json.dumps(body))).usd
    budget = round(most * 6.5, 8)  # 6 requests at their worst case, and half of one
    key_id, key = fleet.create_key("tight", budget_usd=budget)
    fleet.upstream.fake.stall_seconds = 0.2  # all 64 in flight at once
    fleet.upstream.fake.reply = " ".join(["wave"] * 45)  # each costs close to its worst case
    try:
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            replies = list(
                pool.map(
                    lambda i: chat(fleet.replicas[i % 3], key, f"{prompt} ({i})", NO_CACHE),
                    range(64),
                )
            )
    finally:
        fleet.upstream.fake.stall_seconds = 0.0
        fleet.upstream.fake.reply = None
    statuses = sorted({r.status for r in replies})
    assert set(statuses) <= {200, 429}, statuses
    served = sum(r.status == 200 for r in replies)
    spend = fleet.admin("GET", f"/{key_id}")["spend_usd"]
    overshoot = spend - budget
    print(
        f"\n64 concurrent over 3 replicas: {served} served, budget ${budget:.6f}, "
        f"spent ${spend:.6f}, overshoot ${max(overshoot, 0):.6f} "
        f"(one request at most ${most:.6f})"
    )
    assert served >= 6
    assert spend <= budget + most
    # the CLI against any replica shows the fleet's spend and entries
    for replica in fleet.replicas[1:]:
        listed = kallm_cli(replica, "keys", "list", "--json")
        assert next(k for k in listed if k["id"] == key_id)["spend_usd"] == spend
    stats = kallm_cli(fleet.replicas[2], "stats", "--json")
    assert stats["server"]["total_entries"] >= served
    refused = next(r for r in replies if r.status == 429)
    assert refused.json()["error"]["code"] == "insufficient_quota"


def test_requests_per_minute_hold_fleet_wide(fleet: Fleet) -> None:
    _, key = fleet.create_key("rpm-30", rpm=30)
    prompt = fleet.fresh_prompt()
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: chat(fleet.replicas[i % 3], key, prompt), range(90)))
    elapsed = time.monotonic() - started
    admitted = sum(r.status == 200 for r in replies)
    print(f"\nrpm 30 over 3 replicas: {admitted} of 90 admitted in {elapsed:.2f} s")
    assert admitted <= 30 + int(elapsed / 2)  # GCRA lets one more in every 60/30 s
    assert admitted >= 30
    refused = next(r for r in replies if r.status == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1


def test_a_key_revoked_through_one_replica_is_refused_by_all_within_a_second(
    fleet: Fleet,
) -> None:
    key_id, key = fleet.create_key("leaving")
    prompt = fleet.fresh_prompt()
    assert all(chat(r, key, prompt).status == 200 for r in fleet.replicas)
    fleet.admin("DELETE", f"/{key_id}")
    for replica in fleet.replicas:
        seconds = wait_until(
            lambda r=replica: chat(r, key, prompt).status == 401, 1.0, f"{replica.name} refuses"
        )
        print(f"\nrevoked through a, refused by {replica.name} after {seconds * 1000:.1f} ms")
    listed = {k["id"]: k for k in fleet.admin("GET", "")["keys"]}
    assert listed[key_id]["status"] == "revoked"


def test_a_replica_killed_holding_reservations_gives_the_budget_back(fleet: Fleet) -> None:
    a, _, c = fleet.replicas
    prompt = fleet.fresh_prompt()
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 50}
    most = estimate(PriceTable(), [MODEL], body, len(json.dumps(body))).usd
    key_id, key = fleet.create_key("held", budget_usd=round(most * 2.5, 8))
    fleet.upstream.fake.stall_seconds = 30  # c's requests hang upstream, holding their money
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        calls = fleet.upstream.fake.chat_calls
        for i in range(2):
            pool.submit(chat, c, key, f"{prompt} ({i})", NO_CACHE)
        wait_until(lambda: fleet.upstream.fake.chat_calls >= calls + 2, 5, "c's calls upstream")
        assert chat(a, key, prompt).status == 429  # c holds the budget
        os.kill(c.process.pid, signal.SIGKILL)
        c.process.wait(5)
        killed = time.monotonic()
        fleet.upstream.fake.stall_seconds = 0.0
        assert chat(a, key, prompt).status == 429  # the holds outlive the replica...
        wait_until(lambda: chat(a, key, f"{prompt} again").status == 200, HOLD_SECONDS + 3, "")
        whole = time.monotonic() - killed
        print(f"\nreplica killed with 2 holds: budget whole again after {whole:.1f} s")
        assert whole >= HOLD_SECONDS - 1.0  # ...until they lapse
    finally:
        fleet.upstream.fake.stall_seconds = 0.0
        pool.shutdown(wait=True)
    assert fleet.admin("GET", f"/{key_id}")["spend_usd"] < most


def test_redis_killed_mid_run_then_back(fleet: Fleet) -> None:
    live = [r for r in fleet.replicas if r.alive()]
    with logs_on_failure(live):
        a, b = live[0], live[1]
        _, free_key = fleet.create_key("no-budget")
        _, budget_key = fleet.create_key("budgeted", budget_usd=1.0)
        cached = fleet.fresh_prompt()
        assert chat(a, free_key, cached).status == 200
        wait_until(lambda: chat(b, free_key, cached).headers.get("x-kallm-cache") == "HIT", 1, "")

        failures: list[int] = []
        statuses: list[int] = []
        stopping = threading.Event()

        def traffic() -> None:  # cache paths, all the while
            i = 0
            while not stopping.is_set():
                replica = live[i % len(live)]
                prompt = cached if i % 2 else fleet.fresh_prompt()
                status = chat(replica, free_key, prompt).status
                statuses.append(status)
                if status >= 500:
                    failures.append(status)
                i += 1

        runner = threading.Thread(target=traffic)
        runner.start()
        try:
            time.sleep(0.2)
            fleet.redis.kill()
            wait_until(
                lambda: all(r.http.get("/health").json()["status"] == "degraded" for r in live),
                3,
                "every replica says degraded",
            )
            health = a.http.get("/health").json()
            print(f"\n/health with Redis down: {json.dumps(health['degraded'], indent=1)}")
            assert set(health["degraded"]) == {"cache", "budgets", "rate_limits", "keys"}
            assert 'kallm_degraded{part="budgets"} 1.0' in a.http.get("/metrics").body.decode()
            hit = chat(b, free_key, cached)
            assert (hit.status, hit.headers["x-kallm-cache"]) == (200, "HIT")
            miss = chat(a, free_key, fleet.fresh_prompt())
            assert (miss.status, miss.headers["x-kallm-cache"]) == (200, "MISS")
            refused = chat(b, budget_key, fleet.fresh_prompt())
            assert refused.status == 429
            assert refused.json()["error"]["code"] == "budget_unavailable"
            assert "Redis" in refused.json()["error"]["message"]
            print(f"budgeted key without Redis: {refused.json()['error']['message']}")
            time.sleep(0.5)

            fleet.redis.start()  # empty: a Redis without persistence that restarted
            # typically under a second; 30 s of slack for a loaded CI machine
            seconds = wait_until(lambda: all(healthy(r) for r in live), 30, "recovered")
            print(f"Redis back: every replica healthy again after {seconds:.2f} s")
        finally:
            stopping.set()
            runner.join(30)
        print(
            f"traffic during the outage: {len(statuses)} requests, statuses {sorted(set(statuses))}"
        )
        assert not failures, failures
        assert set(statuses) == {200}  # not even a 401 while the replicas put the keys back
        assert chat(b, budget_key, fleet.fresh_prompt()).status == 200  # budgets work again
        assert chat(a, free_key, cached).headers["x-kallm-cache"] == "HIT"
        prompt = fleet.fresh_prompt()
        assert chat(a, free_key, prompt).headers["x-kallm-cache"] == "MISS"
        wait_until(
            lambda: (
                chat(b, free_key, prompt.lower(), {"Cache-Control": "no-store"}).headers.get(
                    "x-kallm-cache"
                )
                == "HIT"
            ),
            1,
            "sharing works again",
        )
