"""``kallm serve``: run the proxy."""

from __future__ import annotations

from pathlib import Path

import typer

from kallm.cli.common import CONFIG_OPTION, fail, settings_from


def serve(
    config: Path | None = CONFIG_OPTION,
    host: str | None = typer.Option(
        None,
        help="Address to listen on (env KALLM_HOST; default 127.0.0.1; 0.0.0.0 in containers).",
    ),
    port: int | None = typer.Option(None, help="Port (env KALLM_PORT; default 8080)."),
    upstream: str | None = typer.Option(
        None, help="Upstream base URL (env OPENAI_BASE_URL; default https://api.openai.com/v1)."
    ),
    threshold: float | None = typer.Option(
        None,
        help="Cosine similarity for a hit, 0-1 "
        "(env KALLM_SIMILARITY_THRESHOLD; default: the "
        "embedder's measured value).",
    ),
    cache_ttl: str | None = typer.Option(
        None, help="How long answers live: 90s, 30m, 24h, 7d (env KALLM_CACHE_TTL; default 24h)."
    ),
    max_cache_size: int | None = typer.Option(
        None,
        help="Entries before the least recently used go (env KALLM_MAX_CACHE_SIZE; default 10000).",
    ),
    embedding_model: str | None = typer.Option(
        None, help="local, hash, or an upstream embedding model (env KALLM_EMBEDDING_MODEL)."
    ),
    cache_file: str | None = typer.Option(
        None, help="Snapshot file ('off' to keep the cache in memory only) (env KALLM_CACHE_FILE)."
    ),
    db: str | None = typer.Option(
        None,
        "--db",
        help="SQLite database for keys and the request log ('off' for none) (env KALLM_DB).",
    ),
    keys_dir: str | None = typer.Option(
        None,
        help="Also load virtual keys from this directory of mounted Secrets (env KALLM_KEYS_DIR).",
    ),
    auth: str | None = typer.Option(None, help="off or virtual-keys (env KALLM_AUTH)."),
    redis_url: str | None = typer.Option(
        None,
        help="Share cache, budgets, rate limits and keys with other replicas through this "
        "Redis or Valkey, e.g. redis://redis:6379/0 (env KALLM_REDIS_URL).",
    ),
    log_json: bool | None = typer.Option(
        None,
        "--log-json/--log-text",
        help="JSON lines instead of readable logs (env KALLM_LOG_JSON).",
    ),
) -> None:
    """Run the caching proxy. Point OpenAI clients at http://HOST:PORT/v1."""
    loaded = settings_from(
        config,
        host=host,
        port=port,
        upstream_base_url=upstream,
        similarity_threshold=threshold,
        cache_ttl=cache_ttl,
        max_cache_size=max_cache_size,
        embedding_model=embedding_model,
        cache_file=cache_file,
        log_json=log_json,
        db_path=db,
        keys_dir=keys_dir,
        auth=auth,
        redis_url=redis_url,
    )
    from kallm.errors import KallmError
    from kallm.server.log import configure_logging
    from kallm.server.run import serve as run_server

    settings = loaded.settings
    configure_logging(settings.log_json, settings.log_level)

    try:
        run_server(settings)
    except KallmError as exc:  # a start-up failure the user can act on: one line
        fail(exc.message)
    except OSError as exc:
        fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
