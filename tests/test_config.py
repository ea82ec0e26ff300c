"""Settings: defaults < kallm.toml < environment < flags; bad values stop start-up with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kallm.config import load_settings
from kallm.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_are_safe_for_a_laptop() -> None:
    settings = load_settings(environ={}).settings
    assert settings.host == "127.0.0.1" and settings.port == 8080
    assert settings.upstream_base_url == "https://api.openai.com/v1"
    assert settings.cache_ttl == 24 * 3600 and settings.max_cache_size == 10_000
    assert settings.embedding_model == "local" and settings.guard is True


def test_layers_override_in_order(tmp_path: Path) -> None:
    config = write(
        tmp_path / "kallm.toml",
        '[server]\nport = 9000\nhost = "0.0.0.0"\n[cache]\nttl = "30m"\nmax_entries = 50\n',
    )
    loaded = load_settings(
        config, environ={"KALLM_PORT": "9100", "KALLM_CACHE_TTL": "7d"}, flags={"port": 9200}
    )
    s = loaded.settings
    assert (s.port, s.host, s.cache_ttl, s.max_cache_size) == (9200, "0.0.0.0", 7 * 86400, 50)
    assert loaded.sources["port"] == "flag"
    assert loaded.sources["cache_ttl"] == "env KALLM_CACHE_TTL"
    assert loaded.sources["host"].startswith("file ")
    assert loaded.sources["log_json"] == "default"


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("15", 15)]
)
def test_durations(text: str, seconds: float) -> None:
    assert load_settings(environ={"KALLM_CACHE_TTL": text}).settings.cache_ttl == seconds


def test_known_environment_variables() -> None:
    s = load_settings(
        environ={
            "OPENAI_API_KEY": "sk-x",
            "OPENAI_BASE_URL": "http://localhost:11434/v1/",
            "KALLM_SIMILARITY_THRESHOLD": "0.9",
            "KALLM_MAX_CACHE_SIZE": "5",
            "KALLM_EMBEDDING_MODEL": "hash",
            "KALLM_LOG_JSON": "true",
            "KALLM_HOST": "0.0.0.0",
        }
    ).settings
    assert s.upstream_api_key == "sk-x" and s.upstream_base_url == "http://localhost:11434/v1"
    assert s.similarity_threshold == 0.9 and s.max_cache_size == 5
    assert s.embedding_model == "hash" and s.log_json is True and s.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("KALLM_PORT", "abc", "whole number from 0 to 65535"),
        ("KALLM_SIMILARITY_THRESHOLD", "1.7", "0.0 to 1.0"),
        ("KALLM_CACHE_TTL", "tomorrow", "duration"),
        ("KALLM_MAX_CACHE_SIZE", "-3", "whole number"),
        ("KALLM_LOG_JSON", "maybe", "true or false"),
        ("OPENAI_BASE_URL", "ftp://x", "http"),
    ],
)
def test_bad_values_name_setting_value_and_allowed(name: str, value: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={name: value})
    message = caught.value.message
    assert name in message and value in message and allowed in message


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    config = write(tmp_path / "kallm.toml", "[cache]\nthreshhold = 0.9\n")
    with pytest.raises(ConfigError, match=r"unknown setting cache\.threshhold"):
        load_settings(config, environ={})


def test_broken_toml_is_one_clear_error(tmp_path: Path) -> None:
    config = write(tmp_path / "kallm.toml", "[cache\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config, environ={})


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KALLM_", "OPENAI_"))}
    return subprocess.run(
        [sys.executable, "-m", "kallm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
    )


def test_serve_with_bad_setting_prints_one_line_no_traceback() -> None:
    result = run_cli("serve", env={"KALLM_PORT": "abc"})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "KALLM_PORT" in lines[0] and "'abc'" in lines[0]
    assert "Traceback" not in result.stderr


def test_version() -> None:
    result = run_cli("--version", env={})
    assert result.returncode == 0 and result.stdout.startswith("kallm ")


def test_prices_can_be_overridden_per_model(tmp_path: Path) -> None:
    from kallm.accounts.pricing import PriceTable, Usage

    config = write(
        tmp_path / "kallm.toml",
        '[prices."llama3.2"]\ninput = 0.1\noutput = 0.2\n'
        '[prices."gpt-4o-mini"]\ninput = 1.0\ncached_input = 0.5\noutput = 2.0\n',
    )
    settings = load_settings(config, environ={}).settings
    table = PriceTable(overrides=dict(settings.prices))
    assert table.cost("llama3.2", Usage(1_000_000, 1_000_000)) == pytest.approx(0.3)
    assert table.cost("gpt-4o-mini", Usage(2_000_000, 0, 1_000_000)) == pytest.approx(1.5)
    assert PriceTable().cost("llama3.2", Usage(1_000_000, 1_000_000)) == 0.0


def test_bad_price_override_is_one_clear_error(tmp_path: Path) -> None:
    config = write(tmp_path / "kallm.toml", '[prices."x"]\ninput = "cheap"\noutput = 1\n')
    with pytest.raises(ConfigError, match="USD per million tokens"):
        load_settings(config, environ={})
