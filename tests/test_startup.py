"""Start-up tells the truth: the port bound, the providers, and kallm is never its own upstream."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from kallm.config import Settings
from kallm.server import create_app
from kallm.server.loop import upstream_is_self
from tests.harness import Http, LoopThread, Upstream, stop
from tests.test_errors import free_port
from tests.test_serve_process import wait_healthy


def _serve(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kallm", "serve", *args],
        env={**os.environ, "KALLM_LOG_JSON": "1", **env},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _first_line_matching(process: subprocess.Popen[str], pattern: str, seconds: float = 30) -> str:
    assert process.stderr is not None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no log line matching {pattern!r}")


def test_port_zero_announces_the_real_port_after_binding(
    upstream: Upstream, tmp_path: Path
) -> None:
    process = _serve(
        {"OPENAI_BASE_URL": upstream.url, "KALLM_CACHE_FILE": "off", "KALLM_DB": "off"},
        "--port",
        "0",
    )
    try:
        line = json.loads(_first_line_matching(process, "listening on"))["message"]
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)[1])  # type: ignore[index]
        assert port != 0
        assert upstream.url in line  # where misses go, not a default the user never set
        wait_healthy(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode == 0


def test_listening_line_names_configured_providers(upstream: Upstream, tmp_path: Path) -> None:
    config = tmp_path / "kallm.toml"
    config.write_text(
        f'[[providers]]\nname = "fake"\nkind = "openai"\nbase_url = "{upstream.url}"\n'
        '[[providers]]\nname = "claude"\nkind = "anthropic"\nmodels = ["claude-*"]\n'
        '[models.fast]\nroute = ["fake/gpt-4o-mini"]\n'
    )
    process = _serve(
        {"KALLM_CONFIG": str(config), "KALLM_CACHE_FILE": "off", "KALLM_DB": "off"},
        "--port",
        "0",
    )
    try:
        line = json.loads(_first_line_matching(process, "listening on"))["message"]
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "fake (openai)" in line and "claude (anthropic)" in line and "fast" in line
    assert "api.openai.com" not in line


def test_upstream_pointing_at_kallm_itself_stops_start_up_with_one_line() -> None:
    port = free_port()
    process = _serve(
        {
            "OPENAI_BASE_URL": f"http://localhost:{port}/v1",
            "KALLM_CACHE_FILE": "off",
            "KALLM_DB": "off",
        },
        "--port",
        str(port),
    )
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "points at this kallm itself" in errors[0]
    assert "Traceback" not in err


def test_nothing_is_announced_when_the_port_is_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = _serve({"KALLM_CACHE_FILE": "off", "KALLM_DB": "off"}, "--port", str(port))
        _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "listening" not in err
    assert f"cannot listen on 127.0.0.1:{port}" in err


def test_a_loop_through_another_name_is_answered_508(loop_thread: LoopThread) -> None:
    """Start-up cannot see every loop (another host name, a port-forward): the header can."""
    port = free_port()
    settings = Settings(
        upstream_base_url=f"http://127.0.0.1:{port}/v1",
        upstream_api_key="sk-up",
        cache_file=None,
        db_path=None,
        upstream_timeout=5.0,
    )

    async def start() -> web.AppRunner:
        runner = web.AppRunner(create_app(settings), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    runner = loop_thread.run(start())
    try:
        reply = Http(f"http://127.0.0.1:{port}").post(
            "/v1/chat/completions",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        )
    finally:
        stop(loop_thread, runner)
    assert reply.status == 508
    assert reply.json()["error"]["code"] == "upstream_is_kallm"


def test_upstream_is_self_rules() -> None:
    cases: list[tuple[Any, ...]] = [
        ("http://127.0.0.1:8080/v1", "127.0.0.1", 8080, True),
        ("http://localhost:8080/v1", "127.0.0.1", 8080, True),
        ("http://localhost:8080/v1", "0.0.0.0", 8080, True),
        ("http://[::1]:8080/v1", "::", 8080, True),
        ("http://127.0.0.1:8081/v1", "127.0.0.1", 8080, False),
        ("https://api.openai.com/v1", "0.0.0.0", 443, False),
        ("http://10.0.0.5:8080/v1", "127.0.0.1", 8080, False),
    ]
    for url, host, port, expected in cases:
        assert upstream_is_self(url, host, port) is expected, (url, host, port)
