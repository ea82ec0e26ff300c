"""``kallm stats`` and kallm.accounts.usage on request logs a real server wrote."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from kallm.accounts import usage
from kallm.cli import stats as stats_module
from kallm.cli.app import app
from kallm.db import connect
from tests.harness import Http, Proxy

DAY = 86400.0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "k.db"


@pytest.fixture
def kallm(db: Path) -> Callable[..., Result]:
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(app, list(args), env={"KALLM_DB": str(db), "COLUMNS": "200"})

    return run


def ask(http: Http, secret: str, model: str, text: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return http.post(
        "/v1/chat/completions", body, headers={"Authorization": f"Bearer {secret}"}
    ).status


@pytest.fixture
def served(make_proxy: Callable[..., Proxy], db: Path) -> Proxy:
    """A server that logged: alice 2 misses + 1 hit (gpt-4o-mini, gpt-4o), bob 1 miss and
    one refused model, plus ops calls (/health, /stats) that reports must not count."""
    proxy = make_proxy(admin_key="adm-key-for-tests-0001", auth="virtual-keys", db_path=db)
    http = Http(proxy.root)
    admin = {"Authorization": "Bearer adm-key-for-tests-0001"}
    alice = http.post("/admin/keys", {"name": "alice"}, headers=admin).json()["key"]
    bob = http.post(
        "/admin/keys", {"name": "bob", "models": ["gpt-4o-mini"]}, headers=admin
    ).json()["key"]
    assert ask(http, alice, "gpt-4o-mini", "What is the capital of France?") == 200
    assert ask(http, alice, "gpt-4o-mini", "What is the capital of France?") == 200  # HIT
    assert ask(http, alice, "gpt-4o", "Name three primary colours.") == 200
    assert ask(http, bob, "gpt-4o-mini", "How far away is the Moon?") == 200
    assert ask(http, bob, "gpt-4o", "Not for bob.") == 403
    http.get("/health")
    http.get("/stats")
    assert proxy.runtime.request_log is not None
    assert proxy.runtime.request_log.flush()
    return proxy


def as_json(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_from_the_database(kallm: Callable[..., Result], served: Proxy, db: Path) -> None:
    report = as_json(kallm("stats", "--json"))
    assert report["source"] == {"db": str(db)} and report["period_seconds"] == DAY
    totals = report["totals"]
    assert (totals["requests"], totals["hits"], totals["misses"], totals["errors"]) == (5, 1, 3, 1)
    assert totals["hit_rate"] == 0.25
    assert totals["spend_usd"] > 0 and totals["saved_usd"] > 0
    keys = {row["name"]: row for row in report["by_key"]}
    assert set(keys) == {"alice", "bob"}
    assert (keys["alice"]["requests"], keys["alice"]["hits"]) == (3, 1)
    assert keys["alice"]["spend_usd"] + keys["bob"]["spend_usd"] == pytest.approx(
        totals["spend_usd"]
    )
    models = {row["model"]: row["requests"] for row in report["by_model"]}
    assert models == {"gpt-4o-mini": 3, "gpt-4o": 2}
    recent = report["recent"]
    assert len(recent) == 5 and recent[0]["key_name"] == "bob" and recent[0]["status"] == 403
    hit = next(r for r in recent if r["cache"] == "HIT")
    assert hit["key_name"] == "alice" and hit["similarity"] is not None and hit["cost_usd"] == 0


def test_rich_view_from_the_database(kallm: Callable[..., Result], served: Proxy) -> None:
    result = kallm("stats", "--last", "5")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in (
        "by key",
        "by model",
        "last 5 requests",
        "alice",
        "bob",
        "gpt-4o-mini",
        "HIT",
        "25.0%",
        "last 24h",
    ):
        assert text in out, text
    assert "/health" not in out


def test_since_and_last(kallm: Callable[..., Result], served: Proxy, db: Path) -> None:
    conn = connect(db)
    with conn:  # an old request from a key that no longer exists
        conn.execute(
            "INSERT INTO requests (time, key_id, path, model, status, cache, cost_usd) "
            "VALUES (?, 'key_gone', '/v1/chat/completions', 'gpt-4', 200, 'MISS', 1.5)",
            (time.time() - 3 * DAY,),
        )
    conn.close()
    day = as_json(kallm("stats", "--json", "--since", "24h", "--last", "1"))
    week = as_json(kallm("stats", "--json", "--since", "7d", "--last", "0"))
    assert day["totals"]["requests"] == 5 and len(day["recent"]) == 1
    assert week["totals"]["requests"] == 6 and week["recent"] == []
    gone = next(row for row in week["by_key"] if row["key_id"] == "key_gone")
    assert gone["name"] is None and gone["spend_usd"] == 1.5
    assert week["by_key"][0]["key_id"] == "key_gone"  # most spend first


def test_from_the_server(kallm: Callable[..., Result], served: Proxy) -> None:
    report = as_json(kallm("stats", "--url", served.root, "--json"))
    assert report["source"] == {"url": served.root}
    assert report["server"]["total_hits"] == 1 and report["server"]["total_misses"] == 3
    view = kallm("stats", "--url", served.root)
    assert view.exit_code == 0 and "hit rate" in view.stdout and "25.0%" in view.stdout


def test_watch_redraws_until_ctrl_c(
    kallm: Callable[..., Result], served: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(stats_module.time, "sleep", sleep)
    result = kallm("stats", "--watch", "--interval", "5s")
    assert result.exit_code == 0, result.output
    assert sleeps == [5.0, 5.0] and "alice" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--since", "yesterday"], 2, "--since 'yesterday'"),
        (["--since", "0s"], 2, "above zero"),
        (["--last", "-1"], 2, "--last -1"),
        (["--interval", "soon"], 2, "--interval"),
        (["--watch", "--json"], 2, "pick one"),
        (["--url", "http://127.0.0.1:9", "--db", "x.db"], 2, "pick one"),
        (["--url", "http://127.0.0.1:9"], 1, "cannot reach kallm"),
        (["--db", "missing.db"], 1, "no database at missing.db"),
    ],
)
def test_bad_input_is_one_line(
    kallm: Callable[..., Result], args: list[str], code: int, message: str
) -> None:
    result = kallm("stats", *args)
    assert result.exit_code == code, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_usage_queries_on_an_empty_database(db: Path) -> None:
    conn = connect(db)
    assert usage.totals(conn, 0) == {
        "requests": 0,
        "hits": 0,
        "misses": 0,
        "errors": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "spend_usd": 0.0,
        "saved_usd": 0.0,
        "hit_rate": 0.0,
    }
    assert usage.by_key(conn, 0) == usage.by_model(conn, 0) == usage.recent(conn, 10) == []
    conn.close()
