"""`kallm serve` as a real process: it answers, and SIGTERM saves the cache before exiting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai

from tests.harness import Http, Upstream
from tests.test_errors import free_port


def wait_healthy(root: str, process: subprocess.Popen[str], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"kallm exited early: {process.stderr.read()}")  # type: ignore[union-attr]
        try:
            if Http(root).get("/health", timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("kallm did not become healthy")


def test_serve_answers_and_saves_on_sigterm(upstream: Upstream, tmp_path: Path) -> None:
    port = free_port()
    cache_file = tmp_path / "cache.kallm"
    env = {
        **os.environ,
        "OPENAI_BASE_URL": upstream.url,
        "OPENAI_API_KEY": "sk-up",
        "KALLM_PORT": str(port),
        "KALLM_CACHE_FILE": str(cache_file),
        "KALLM_LOG_JSON": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "kallm", "serve"],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        root = f"http://127.0.0.1:{port}"
        wait_healthy(root, process)
        client = openai.OpenAI(base_url=root + "/v1", api_key="k", max_retries=0)
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello process"}]
        )
        assert reply.choices[0].message.content
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert cache_file.exists() and cache_file.stat().st_size > 0
    log_lines = process.stderr.read() if process.stderr else ""
    assert '"cache": "MISS"' in log_lines and '"path": "/v1/chat/completions"' in log_lines
