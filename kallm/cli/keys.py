"""``kallm keys create | list | show | update | revoke | rotate``: manage virtual keys.

The same commands work on the local database (``--db``, the default) and on a
running server (``--url`` + ``--admin-key``); see ``kallm.cli.keyclient``. A
secret is printed once, on stdout alone (``KEY=$(kallm keys create ...)``), with
the warning on stderr. ``--output k8s-secret`` prints a Kubernetes Secret that a
server started with ``--keys-dir`` loads: it holds the hash, never the secret.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.text import Text

from kallm.cli.common import CONFIG_OPTION, err_console, fail, settings_from
from kallm.cli.keyclient import KeyClient, env_or, open_keys
from kallm.cli.tables import folded
from kallm.errors import KallmError

if TYPE_CHECKING:  # imported where used: see kallm/cli/__init__.py
    from rich.table import Table

    from kallm.accounts.keys import KeyRecord

app = typer.Typer(
    help="Create and manage virtual API keys (budgets, rate limits, models).", no_args_is_help=True
)

_WHERE = "Where the keys are"
DB = typer.Option(
    None,
    "--db",
    help="SQLite file (env KALLM_DB, db.path in kallm.toml; default: the file `kallm serve` uses).",
    rich_help_panel=_WHERE,
)
URL = typer.Option(
    None,
    "--url",
    help="A running kallm, e.g. http://127.0.0.1:8080 (env "
    "KALLM_URL): use its admin API instead of a file.",
    rich_help_panel=_WHERE,
)
ADMIN = typer.Option(
    None,
    "--admin-key",
    help="The server's admin key, with --url (env KALLM_ADMIN_KEY, auth.admin_key).",
    rich_help_panel=_WHERE,
)
JSON = typer.Option(False, "--json", help="Machine-readable output.")
REF = typer.Argument(..., help="The key's id, name or prefix.")
OUTPUT = typer.Option(
    "text",
    "--output",
    "-o",
    help="text (the secret alone on stdout), "
    "json, or k8s-secret (a Secret manifest; the secret goes to stderr).",
)
K8S_NS = typer.Option("default", "--k8s-namespace", help="Namespace of the Secret.")
LABEL = typer.Option(None, "--label", help="k=v label on the Secret (repeatable).")
_P = "Policy ('none' clears a setting in update)"
POLICY = {
    "budget_usd": typer.Option(
        None, "--budget-usd", help="Spend limit in USD per period.", rich_help_panel=_P
    ),
    "budget_period": typer.Option(
        None,
        "--budget-period",
        help="When the budget resets: 30d, 1mo, 24h (default: never).",
        rich_help_panel=_P,
    ),
    "rpm": typer.Option(None, "--rpm", help="Requests per minute.", rich_help_panel=_P),
    "tpm": typer.Option(None, "--tpm", help="Tokens per minute.", rich_help_panel=_P),
    "models": typer.Option(
        None,
        "--models",
        help="Allowed models, comma-separated patterns: 'gpt-4o*,claude-*' (default: all).",
        rich_help_panel=_P,
    ),
    "expires": typer.Option(
        None, "--expires", help="Lifetime from now: 30d, 12h (default: never).", rich_help_panel=_P
    ),
    "metadata": typer.Option(
        None, "--metadata", help="k=v (repeatable; in update, k= removes k).", rich_help_panel=_P
    ),
    "namespace": typer.Option(
        None,
        "--namespace",
        help="Cache tenant: this key's answers are not shared with other namespaces.",
        rich_help_panel=_P,
    ),
}
ONCE = "Store this key now: it cannot be shown again."
OUTPUTS = ("text", "json", "k8s-secret")


# ---------------------------------------------------------------- parsing flags


def _usd(text: str) -> float:
    try:
        value = float(text.removeprefix("$"))
    except ValueError:
        raise ValueError("an amount in USD such as 10 or 2.50") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError("an amount in USD of zero or more")
    return value


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError("a whole number of zero or more")
    return int(text)


def _period(text: str) -> float:
    from kallm.config import parse_duration

    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError("a duration above zero")
    return seconds


def _models(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise ValueError("comma-separated model patterns such as 'gpt-4o*,claude-*'")
    return models


def _expires(text: str) -> float:
    return time.time() + _period(text)


def _namespace(text: str) -> str:
    if not text:
        raise ValueError("a non-empty name")
    return text


_PARSERS = {
    "budget_usd": _usd,
    "budget_period": _period,
    "rpm": _count,
    "tpm": _count,
    "models": _models,
    "expires": _expires,
    "namespace": _namespace,
}


def policy_from_flags(flags: dict[str, str | None]) -> dict[str, Any]:
    """The flags that were given, parsed; 'none'/'never' as None (clears it in update)."""
    policy: dict[str, Any] = {}
    for name, parse in _PARSERS.items():
        text = flags.get(name)
        if text is None:
            continue
        text = text.strip()
        if text.lower() in ("none", "never"):
            policy[name] = None
            continue
        try:
            policy[name] = parse(text)
        except ValueError as exc:
            fail(f"--{name.replace('_', '-')} {text!r}: expected {exc}")
    return policy


def pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    """``k=v`` flags as a dict; one clear line for anything else."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"{flag} {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def _output(value: str) -> str:
    if value not in OUTPUTS:
        fail(f"--output {value!r}: expected one of {', '.join(OUTPUTS)}")
    return value


# ---------------------------------------------------------------- showing keys


def usd(value: float | None) -> str:
    """Dollars with the precision small amounts need: a cached answer saves $0.000195."""
    if value is None:
        return "—"
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.6f}".rstrip("0")


def when(stamp: float | None, empty: str = "—") -> str:
    return empty if stamp is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


def span(seconds: float | None) -> str:
    """30d, 24h, 90s, or — for none."""
    from kallm.config import duration_text

    return "—" if seconds is None else duration_text(seconds)


def _budget(record: KeyRecord) -> str:
    if record.budget_usd is None:
        return f"{usd(record.spend_usd)} / —"
    period = f" per {span(record.budget_period)}" if record.budget_period else ""
    return f"{usd(record.spend_usd)} / {usd(record.budget_usd)}{period}"


def _limits(record: KeyRecord) -> str:
    return (
        f"{record.rpm if record.rpm is not None else '—'} / "
        f"{record.tpm if record.tpm is not None else '—'}"
    )


_STATUS_STYLE = {"active": "green", "revoked": "red", "expired": "yellow"}


def _short(stamp: float | None, empty: str = "—") -> str:
    """A list cell: the time if it is today, else the date."""
    if stamp is None:
        return empty
    today = time.strftime("%Y-%m-%d") == time.strftime("%Y-%m-%d", time.localtime(stamp))
    return time.strftime("%H:%M" if today else "%Y-%m-%d", time.localtime(stamp))


def key_table(records: list[KeyRecord]) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, padding=(0, 1))
    for column in (
        "name",
        "prefix",
        "spend / budget",
        "rpm / tpm",
        "models",
        "created",
        "expires",
        "last used",
        "status",
    ):
        table.add_column(
            column,
            no_wrap=column in ("prefix", "status"),
            min_width=7 if column == "status" else None,
        )
    for r in records:
        status = r.status()
        table.add_row(
            Text(r.name),
            r.prefix,
            _budget(r),
            _limits(r),  # names are not markup
            Text(", ".join(r.models) if r.models is not None else "all"),
            _short(r.created),
            _short(r.expires, "never"),
            _short(r.last_used, "never"),
            f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]",
        )
    return folded(table)


def key_details(r: KeyRecord) -> Table:
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    rows = [
        ("id", r.id),
        ("name", r.name),
        ("prefix", r.prefix + "…"),
        ("status", r.status()),
        ("spend / budget", _budget(r)),
        ("period started", when(r.period_start)),
        ("saved by the cache", usd(r.saved_usd)),
        ("rpm / tpm", _limits(r)),
        ("models", ", ".join(r.models) if r.models is not None else "all"),
        ("namespace", r.namespace or "—"),
        ("created", when(r.created)),
        ("expires", when(r.expires, "never")),
        ("revoked", when(r.revoked)),
        ("last used", when(r.last_used, "never")),
        ("metadata", ", ".join(f"{k}={v}" for k, v in r.metadata.items()) or "—"),
    ]
    for name, value in rows:
        grid.add_row(Text(name, style="bold"), Text(value))
    return grid


def _print_record(record: KeyRecord, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record.public(), indent=2))
    else:
        Console().print(key_details(record), highlight=False)


def _print_secret(
    record: KeyRecord, secret: str, output: str, k8s_ns: str, labels: dict[str, str], done: str
) -> None:
    """The secret once: on stdout alone in text mode, so it can be captured, and the note
    on stderr; in k8s-secret mode stdout is the manifest, so the secret goes to stderr."""
    from kallm.accounts.k8s import k8s_secret

    note = f"{done} key {record.name} ({record.id}). {ONCE}"
    if output == "k8s-secret":
        print(k8s_secret(record, k8s_ns, labels), end="")
        err_console.print(Text(f"{note}\n{secret}"), soft_wrap=True)
        return
    err_console.print(Text(note), soft_wrap=True)
    if output == "json":
        print(json.dumps({"key": secret, "record": record.public()}, indent=2))
    else:
        print(secret)


@contextmanager
def _keys(
    config: Path | None, db: Path | None, url: str | None, admin_key: str | None
) -> Iterator[KeyClient]:
    """The chosen client, from the same settings ``kallm serve`` builds (defaults <
    kallm.toml < KALLM_* < flags); its errors become one line: exit 2 for bad input, 1
    otherwise."""
    if db is not None and env_or(url, "KALLM_URL"):
        fail("--db and --url (or KALLM_URL) both given: pick one")
    settings = settings_from(config, db_path=db, admin_key=admin_key).settings
    client: KeyClient | None = None
    try:
        client = open_keys(settings, url)
        yield client
    except KallmError as exc:
        fail(exc.message, 2 if exc.status == 400 else 1)
    except (sqlite3.Error, OSError) as exc:
        fail(f"database {settings.db_path}: {exc}", 1)
    finally:
        if client is not None:
            client.close()


# ---------------------------------------------------------------- commands


@app.command()
def create(
    name: str | None = typer.Option(None, "--name", help="A unique name for the key (required)."),
    budget_usd: str | None = POLICY["budget_usd"],
    budget_period: str | None = POLICY["budget_period"],
    rpm: str | None = POLICY["rpm"],
    tpm: str | None = POLICY["tpm"],
    models: str | None = POLICY["models"],
    expires: str | None = POLICY["expires"],
    metadata: list[str] | None = POLICY["metadata"],
    namespace: str | None = POLICY["namespace"],
    output: str = OUTPUT,
    as_json: bool = JSON,
    k8s_namespace: str = K8S_NS,
    label: list[str] | None = LABEL,
    config: Path | None = CONFIG_OPTION,
    db: Path | None = DB,
    url: str | None = URL,
    admin_key: str | None = ADMIN,
) -> None:
    """Create a key and print its secret, once."""
    if not name or not name.strip():
        fail("--name is required: a unique name for the key")
    policy = {k: v for k, v in policy_from_flags(locals()).items() if v is not None}
    if metadata:
        policy["metadata"] = pairs(metadata, "--metadata")
    labels = _k8s_flags(output, k8s_namespace, label)
    with _keys(config, db, url, admin_key) as keys:
        record, secret = keys.create(name.strip(), policy)
    _print_secret(record, secret, "json" if as_json else output, k8s_namespace, labels, "Created")


def _k8s_flags(output: str, namespace: str, label: list[str] | None) -> dict[str, str]:
    from kallm.accounts.k8s import check_labels, valid_namespace

    _output(output)
    labels = pairs(label, "--label")
    try:
        check_labels(labels)
    except KallmError as exc:
        fail(exc.message)
    if not valid_namespace(namespace):
        fail(f"--k8s-namespace {namespace!r}: not a Kubernetes namespace name")
    return labels


@app.command("list")
def list_keys(
    as_json: bool = JSON,
    config: Path | None = CONFIG_OPTION,
    db: Path | None = DB,
    url: str | None = URL,
    admin_key: str | None = ADMIN,
) -> None:
    """All keys: spend against budget, limits, allowed models, status."""
    with _keys(config, db, url, admin_key) as keys:
        records = keys.list()
    if as_json:
        print(json.dumps([r.public() for r in records], indent=2))
    elif not records:
        err_console.print("no keys yet: kallm keys create --name NAME")
    else:
        Console().print(key_table(records), highlight=False)


@app.command()
def show(
    ref: str = REF,
    as_json: bool = JSON,
    config: Path | None = CONFIG_OPTION,
    db: Path | None = DB,
    url: str | None = URL,
    admin_key: str | None = ADMIN,
) -> None:
    """One key in full (never its secret)."""
    with _keys(config, db, url, admin_key) as keys:
        record = keys.get(ref)
    _print_record(record, as_json)


@app.command()
def update(
    ref: str = REF,
    name: str | None = typer.Option(None, "--name", help="Rename the key."),
    budget_usd: str | None = POLICY["budget_usd"],
    budget_period: str | None = POLICY["budget_period"],
    rpm: str | None = POLICY["rpm"],
    tpm: str | None = POLICY["tpm"],
    models: str | None = POLICY["models"],
    expires: str | None = POLICY["expires"],
    metadata: list[str] | None = POLICY["metadata"],
    namespace: str | None = POLICY["namespace"],
    as_json: bool = JSON,
    config: Path | None = CONFIG_OPTION,
    db: Path | None = DB,
    url: str | None = URL,
    admin_key: str | None = ADMIN,
) -> None:
    """Change a key's policy; the secret, spend and id stay."""
    changes = policy_from_flags(locals())
    if name is not None:
        if not name.strip():
            fail("--name: expected a non-empty name")
        changes["name"] = name.strip()
    given = pairs(metadata, "--metadata")
    if not changes and not given:
        fail("nothing to change: give at least one policy flag (see --help)")
    with _keys(config, db, url, admin_key) as keys:
        if given:  # merged into what the key has; "k=" removes k
            merged = {**keys.get(ref).metadata, **given}
            changes["metadata"] = {k: v for k, v in merged.items() if v != ""}
        record = keys.update(ref, changes)
    _print_record(record, as_json)


@app.command()
def revoke(
    ref: str = REF,
    config: Path | None = CONFIG_OPTION,
    db: Path | None = DB,
    url: str | None = URL,
    admin_key: str | None = ADMIN,
) -> None:
    """Revoke a key: it stops working at once (within seconds on a server)."""
    with _keys(config, db, url, admin_key) as keys:
        record = keys.revoke(ref)
    err_console.print(Text(f"revoked key {record.name} ({record.id})"))


@app.command()
def rotate(
    ref: str = REF,
    output: str = OUTPUT,
    as_json: bool = JSON,
    k8s_namespace: str = K8S_NS,
    label: list[str] | None = LABEL,
    config: Path | None = CONFIG_OPTION,
    db: Path | None = DB,
    url: str | None = URL,
    admin_key: str | None = ADMIN,
) -> None:
    """A new secret for a key; the old one stops working. Policy and spend stay."""
    labels = _k8s_flags(output, k8s_namespace, label)
    with _keys(config, db, url, admin_key) as keys:
        record, secret = keys.rotate(ref)
    _print_secret(record, secret, "json" if as_json else output, k8s_namespace, labels, "Rotated")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="keys")
