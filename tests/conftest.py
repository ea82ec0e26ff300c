"""Fixtures: a fake upstream and a kallm proxy in front of it, both real servers on loopback."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from kallm.config import Settings
from kallm.embed import local_embedder
from tests.early import start_for, stop_all
from tests.harness import Http, LoopThread, Proxy, Upstream, start_proxy, start_upstream, stop


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "early(job): the test waits for a tests.early.Early job, started at collection"
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    """The selected tests are known (after -k, -m and deselection): start their jobs."""
    if not session.config.option.collectonly:
        start_for(session.items)


def pytest_sessionfinish(session: pytest.Session) -> None:
    stop_all()


@pytest.fixture(autouse=True)
def hermetic_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's own kallm.toml, cache file or KALLM_*/OPENAI_* variables."""
    for name in list(os.environ):
        if name.startswith(("KALLM_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="session")
def local_model() -> Any:
    """The built-in embedder, loaded once for the whole run."""
    return local_embedder("local")


@pytest.fixture
def upstream(loop_thread: LoopThread) -> Iterator[Upstream]:
    server = start_upstream(loop_thread)
    yield server
    stop(loop_thread, server.runner)


@pytest.fixture
def proxy_settings(upstream: Upstream, tmp_path: Path) -> Settings:
    return Settings(
        upstream_base_url=upstream.url,
        upstream_api_key="sk-test-upstream",
        cache_file=tmp_path / "cache.kallm",
        snapshot_interval=0,
        upstream_timeout=5.0,
    )


@pytest.fixture
def make_proxy(
    loop_thread: LoopThread, proxy_settings: Settings, local_model: Any
) -> Iterator[Callable[..., Proxy]]:
    """Start kallm with settings overrides; every proxy started is stopped after the test."""
    started: list[Proxy] = []

    def make(**overrides: Any) -> Proxy:
        embedder = overrides.pop("embedder", None)
        settings = proxy_settings.with_overrides(**overrides)
        if embedder is None and settings.embedding_model == "local":
            embedder = local_model
        proxy = start_proxy(loop_thread, settings, embedder=embedder)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        if proxy.runner.server is not None:
            stop(loop_thread, proxy.runner)


@pytest.fixture
def proxy(make_proxy: Callable[..., Proxy]) -> Proxy:
    return make_proxy()


@pytest.fixture
def client(proxy: Proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url, api_key="sk-client", max_retries=0)


@pytest.fixture
def aclient(proxy: Proxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url, api_key="sk-client", max_retries=0)


@pytest.fixture
def http(proxy: Proxy) -> Http:
    return Http(proxy.root)
