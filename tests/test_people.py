"""kallm as people meet it: model lists, request ids, remote spend, terminals, start-up lines.

Each test goes through the real CLI (Typer's runner at 80 columns, or a subprocess) or a
real server, as a user of LiteLLM, Bifrost or ``llm`` would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from typer.testing import CliRunner, Result

from kallm.cli.app import app
from kallm.providers.config import AliasConfig, ProviderConfig
from tests.fake_anthropic import start_fake_anthropic
from tests.harness import Http, LoopThread, Proxy, Upstream, stop
from tests.test_cli_stats import ask

NARROW = {"COLUMNS": "80"}


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={**NARROW, **(env or {})})


# ---------------------------------------------------------------- GET /v1/models


@pytest.fixture
def fleet(loop_thread: LoopThread, upstream: Upstream, make_proxy: Any, tmp_path: Path) -> Any:
    _fake, runner, url = loop_thread.run(start_fake_anthropic())
    providers = (
        ProviderConfig("openai", "openai", upstream.url, "sk-openai", None, ("gpt-*",)),
        ProviderConfig(
            "anthropic", "anthropic", url, "sk-ant", None, ("claude-*", "claude-haiku-4-5")
        ),
    )
    aliases = (AliasConfig("fast", ("anthropic/claude-haiku-4-5",)),)
    proxy = make_proxy(
        providers=providers,
        aliases=aliases,
        auth="virtual-keys",
        db_path=tmp_path / "k.db",
        admin_key="adm-key-for-tests-0001",
    )
    yield proxy
    stop(loop_thread, runner)


def model_ids(proxy: Proxy, secret: str) -> list[str]:
    client = openai.OpenAI(base_url=proxy.url, api_key=secret, max_retries=0)
    return [m.id for m in client.models.list()]


def test_models_lists_what_providers_offer_filtered_by_the_key(fleet: Proxy) -> None:
    _, everything = fleet.call(fleet.keys.create("all"))
    _, narrow = fleet.call(fleet.keys.create("narrow", models=["gpt-4o*"]))
    ids = model_ids(fleet, everything)
    # asked from the OpenAI-compatible upstream, kept to the provider's patterns
    assert "gpt-4o-mini" in ids and "gpt-4o" in ids
    assert "text-embedding-3-small" not in ids  # the upstream has it; the patterns do not
    assert "claude-haiku-4-5" in ids and "fast" in ids  # configured names and aliases
    assert set(model_ids(fleet, narrow)) == {"gpt-4o", "gpt-4o-mini"}


# ---------------------------------------------------------------- X-Request-Id


def test_request_id_on_streams_passthrough_and_errors(proxy: Proxy, upstream: Upstream) -> None:
    http = Http(proxy.root)
    streamed = http.post(
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "a"}]},
        headers={"X-Request-Id": "client-chosen-1"},
    )
    assert streamed.headers["x-request-id"] == "client-chosen-1"
    relayed = http.get("/v1/models/gpt-4o", headers={"X-Request-Id": "client-chosen-2"})
    assert relayed.status == 200 and relayed.headers["x-request-id"] == "client-chosen-2"
    error = http.post("/v1/chat/completions", b"{", headers={"X-Request-Id": "x" * 300})
    assert error.status == 400 and len(error.headers["x-request-id"]) == 16  # a new one


def test_a_request_aiohttp_cannot_parse_gets_json_not_text(proxy: Proxy) -> None:
    import socket

    host, port = proxy.root.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"X-Request-Id: bad\x01id\r\nContent-Length: 2\r\n\r\n{}"
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"
    assert b"application/json" in head.lower()
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------- spend, remotely


@pytest.fixture
def keyed(make_proxy: Any, tmp_path: Path) -> Proxy:
    return make_proxy(
        admin_key="adm-key-for-tests-0001", auth="virtual-keys", db_path=tmp_path / "k.db"
    )


def test_stats_url_shows_spend_with_the_admin_key(keyed: Proxy) -> None:
    _, secret = keyed.call(keyed.keys.create("alice", budget_usd=5.0))
    http = Http(keyed.root)
    assert ask(http, secret, "gpt-4o-mini", "What is the speed of light?") == 200
    assert keyed.runtime.request_log is not None and keyed.runtime.request_log.flush()
    report = cli("stats", "--url", keyed.root, "--admin-key", "adm-key-for-tests-0001", "--json")
    assert report.exit_code == 0, report.output
    usage = json.loads(report.stdout)["usage"]
    [alice] = [k for k in usage["keys"] if k["name"] == "alice"]
    assert alice["spend_usd"] > 0 and alice["budget_usd"] == 5.0
    assert usage["by_model"][0]["model"] == "gpt-4o-mini"
    view = cli("stats", "--url", keyed.root, "--admin-key", "adm-key-for-tests-0001")
    assert view.exit_code == 0 and "alice" in view.stdout and "by model" in view.stdout


def test_a_key_reads_its_own_usage(keyed: Proxy) -> None:
    _, secret = keyed.call(keyed.keys.create("bob", budget_usd=2.0, budget_period=86400))
    http = Http(keyed.root)
    assert ask(http, secret, "gpt-4o-mini", "Name a river in Africa") == 200
    assert keyed.runtime.request_log is not None and keyed.runtime.request_log.flush()
    mine = http.get("/v1/kallm/usage", headers={"Authorization": f"Bearer {secret}"}).json()
    assert mine["name"] == "bob" and mine["spend_usd"] > 0
    assert mine["remaining_usd"] == pytest.approx(2.0 - mine["spend_usd"])
    assert mine["by_model"][0]["model"] == "gpt-4o-mini" and mine["totals"]["requests"] == 1
    assert http.get("/v1/kallm/usage").status == 401


# ---------------------------------------------------------------- terminals


def test_tables_at_80_columns_keep_every_value(keyed: Proxy) -> None:
    for name in ("a-key-with-a-rather-long-name", "second"):
        keyed.call(keyed.keys.create(name, budget_usd=0.000123, models=["gpt-4o-mini-long*"]))
    listed = cli("keys", "list", "--url", keyed.root, "--admin-key", "adm-key-for-tests-0001")
    assert listed.exit_code == 0, listed.output
    assert "…" not in listed.stdout  # a value that does not fit is folded, never cut
    assert all(len(line) <= 80 for line in listed.stdout.splitlines())
    names = column(listed.stdout, "name", "prefix")
    assert "a-key-with-a-rather-long-name" in names and "second" in names


def column(table: str, header: str, next_header: str) -> str:
    """One column's text, its folded pieces joined: the values a reader sees."""
    lines = table.splitlines()
    head = next(i for i, line in enumerate(lines) if header in line and next_header in line)
    start, end = lines[head].index(header), lines[head].index(next_header)
    return "".join(line[start:end].strip() for line in lines[head + 2 :])


def test_config_show_prints_effective_values(tmp_path: Path) -> None:
    shown = cli("config", "show")
    assert shown.exit_code == 0, shown.output
    assert "0.95" in shown.stdout and "24h" in shown.stdout and "None" not in shown.stdout
    document = json.loads(cli("config", "show", "--json").stdout)
    assert document["settings"]["cache.ttl"]["value"] == "24h"
    assert document["settings"]["cache.similarity_threshold"]["value"].startswith("0.95")


def test_help_shows_no_bool_placeholders_and_has_completion() -> None:
    for command in (["serve"], ["stats"], ["warm"], ["keys", "create"], ["bench", "run"]):
        result = subprocess.run(
            [sys.executable, "-m", "kallm", *command, "--help"],
            env={**os.environ, **NARROW},
            capture_output=True,
            text=True,
            check=True,
        )
        assert "<bool>" not in result.stdout, command
    root = subprocess.run(
        [sys.executable, "-m", "kallm", "--help"],
        env={**os.environ, **NARROW},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--install-completion" in root.stdout


def test_the_cli_starts_without_the_server_stack() -> None:
    """``kallm --version`` and ``--help`` must answer fast (issue 15: under 0.3 s): loading
    the CLI must not import the HTTP stack, numpy, the cache, nor the settings, keys and
    database modules, nor rich's tables and TOML (~30 ms of the CLI's imports); each
    command imports what it runs. (The time itself is measured by benchmarks, not here: it
    depends on the machine.)"""
    heavy = (
        "aiohttp numpy kallm.cache kallm.server kallm.config kallm.db kallm.accounts.keys "
        "kallm.accounts.k8s tomllib tomli_w rich.table rich.progress rich.live"
    )
    probe = (
        "import sys, kallm.cli.app; "
        f"print(' '.join(m for m in {heavy.split()!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == []


def test_flag_errors_name_the_flag_the_user_typed() -> None:
    result = cli("serve", "--threshold", "1.5")
    assert result.exit_code == 2
    assert "--threshold" in result.output and "--similarity-threshold" not in result.output


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"KALLM_KEYS_DIR": "/nonexistent/keys"}, "not a directory"),
        ({"KALLM_CACHE_FILE": "/proc/kallm/cache.kallm"}, "not writable"),
    ],
)
def test_start_up_checks_are_one_line(settings: dict[str, str], message: str) -> None:
    env = {**os.environ, "KALLM_PORT": "0", "KALLM_DB": "off", **settings}
    env.setdefault("KALLM_CACHE_FILE", "off")
    done = subprocess.run(
        [sys.executable, "-m", "kallm", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    # exactly one line: no traceback, and nothing started before the failing part is left
    # to complain at exit (aiohttp's "Unclosed client session" once followed a bad cache file)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], done.stderr


def test_alias_to_an_unknown_provider_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "kallm.toml"
    config.write_text('[models.fast]\nroute = ["nope/some-model"]\n')
    result = cli("config", "show", "--config", str(config))
    assert result.exit_code == 2 and "nope/some-model" in result.output


def test_502_names_the_provider_not_its_address(make_proxy: Callable[..., Proxy]) -> None:
    from tests.test_errors import free_port

    proxy = make_proxy(upstream_base_url=f"http://127.0.0.1:{free_port()}/v1")
    reply = Http(proxy.root).post(
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert reply.status == 502
    assert "127.0.0.1" not in reply.body.decode() and "openai" in reply.json()["error"]["message"]


def test_json_logs_use_rfc3339_and_probes_stay_quiet(upstream: Upstream, tmp_path: Path) -> None:
    import re
    import time as clock

    from tests.test_errors import free_port
    from tests.test_serve_process import wait_healthy

    port = free_port()
    env = {
        **os.environ,
        "KALLM_LOG_JSON": "1",
        "KALLM_PORT": str(port),
        "KALLM_DB": "off",
        "KALLM_CACHE_FILE": "off",
        "OPENAI_BASE_URL": upstream.url,
        "OPENAI_API_KEY": "sk-u",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "kallm", "serve"],
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        root = f"http://127.0.0.1:{port}"
        wait_healthy(root, process)
        for _ in range(3):
            Http(root).get("/health")
            Http(root).get("/metrics")
        reply = Http(root).post(
            "/v1/chat/completions",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "log me"}]},
        )
        assert reply.status == 200
        clock.sleep(0.3)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert records and all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) for r in records
    )
    paths = [r.get("path") for r in records if r.get("message") is None]
    assert "/v1/chat/completions" in paths
    assert "/health" not in paths and "/metrics" not in paths  # probes: log.probes is off
