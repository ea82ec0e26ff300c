"""``kallm keys`` on real SQLite files and against real kallm servers.

Every change is checked where it matters: through the server's chat endpoint
(a rotated-away secret is refused, a revoked key gets 401). Servers reload keys
from the database and ``--keys-dir`` on a timer; tests shorten it and poll, bounded.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from kallm.accounts import keyring
from kallm.accounts.k8s import yaml_str
from kallm.cli.app import app
from tests.harness import Http, Proxy

ONCE = "cannot be shown again"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(autouse=True)
def fast_key_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers pick up keys changed behind their back (file, --keys-dir) within 0.1 s."""
    monkeypatch.setattr(keyring, "REFRESH_SECONDS", 0.1)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "k.db"


@pytest.fixture
def kallm(db: Path) -> Callable[..., Result]:
    """Run ``kallm ...`` in-process with KALLM_DB set, as a user's shell would."""
    runner = CliRunner()

    def run(*args: str, **env: str) -> Result:
        return runner.invoke(app, list(args), env={"KALLM_DB": str(db), "COLUMNS": "200", **env})

    return run


@pytest.fixture
def server(make_proxy: Callable[..., Proxy], db: Path) -> Proxy:
    return make_proxy(admin_key="adm-key-for-tests-0001", auth="virtual-keys", db_path=db)


def chat_status(proxy: Proxy, secret: str, model: str = "gpt-4o-mini") -> int:
    reply = Http(proxy.root).post(
        "/v1/chat/completions",
        {**CHAT, "model": model},
        headers={"Authorization": f"Bearer {secret}"},
    )
    return reply.status


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the server did not pick up the change in time"
        time.sleep(0.05)


def created(result: Result) -> str:
    """The secret of a text-mode create/rotate: stdout is the key alone, the note on stderr."""
    assert result.exit_code == 0, result.output
    assert ONCE in result.stderr
    secret = result.stdout.strip()
    assert re.fullmatch(r"sk-kallm-[\w-]{40,}", secret)
    return secret


def show(kallm: Callable[..., Result], ref: str, *extra: str) -> dict[str, Any]:
    result = kallm("keys", "show", ref, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_local_keys_on_the_servers_database(kallm: Callable[..., Result], server: Proxy) -> None:
    secret = created(
        kallm(
            "keys",
            "create",
            "--name",
            "team-a",
            "--budget-usd",
            "10",
            "--budget-period",
            "30d",
            "--rpm",
            "60",
            "--tpm",
            "100000",
            "--models",
            "gpt-4o*,claude-*",
            "--expires",
            "30d",
            "--metadata",
            "owner=bob",
            "--namespace",
            "ns-a",
        )
    )
    eventually(lambda: chat_status(server, secret) == 200)

    listed = kallm("keys", "list")
    assert listed.exit_code == 0
    assert "team-a" in listed.stdout and secret[:16] in listed.stdout and "active" in listed.stdout
    record = show(kallm, "team-a")
    assert record["budget_usd"] == 10 and record["budget_period"] == 30 * 86400
    assert (record["rpm"], record["tpm"], record["namespace"]) == (60, 100000, "ns-a")
    assert record["models"] == ["gpt-4o*", "claude-*"]
    assert 29 * 86400 < record["expires"] - time.time() <= 30 * 86400
    assert show(kallm, secret[:16])["id"] == record["id"]
    assert show(kallm, record["id"])["name"] == "team-a"
    assert secret not in json.dumps(record)

    updated = kallm(
        "keys",
        "update",
        "team-a",
        "--rpm",
        "120",
        "--budget-usd",
        "none",
        "--metadata",
        "tier=gold",
        "--metadata",
        "owner=",
        "--json",
    )
    assert updated.exit_code == 0, updated.output
    after = json.loads(updated.stdout)
    assert (after["rpm"], after["budget_usd"], after["metadata"]) == (120, None, {"tier": "gold"})

    rotated = kallm("keys", "rotate", "team-a")
    new = created(rotated)
    eventually(lambda: chat_status(server, secret) == 401)
    assert chat_status(server, new) == 200
    assert show(kallm, "team-a")["id"] == record["id"]

    revoked = kallm("keys", "revoke", "team-a")
    assert revoked.exit_code == 0 and "revoked" in revoked.stderr
    eventually(lambda: chat_status(server, new) == 401)
    assert show(kallm, "team-a")["status"] == "revoked"


def test_remote_keys_through_the_admin_api(
    kallm: Callable[..., Result], server: Proxy, tmp_path: Path
) -> None:
    remote = ("--url", server.root, "--admin-key", "adm-key-for-tests-0001")
    result = kallm(
        "keys",
        "create",
        "--name",
        "svc",
        "--models",
        "gpt-4o*",
        "-o",
        "json",
        *remote,
        KALLM_DB=str(tmp_path / "unused.db"),
    )  # --url wins over KALLM_DB
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    secret, record = answer["key"], answer["record"]
    assert ONCE in result.stderr and record["name"] == "svc" and "hash" not in record
    assert not (tmp_path / "unused.db").exists()
    assert chat_status(server, secret) == 200  # the admin API reloads keys at once

    listed = kallm("keys", "list", "--json", *remote)
    assert [k["name"] for k in json.loads(listed.stdout)] == ["svc"]
    assert show(kallm, "svc", *remote)["id"] == record["id"]

    assert kallm("keys", "update", "svc", "--models", "claude-*", *remote).exit_code == 0
    assert chat_status(server, secret) == 403
    assert kallm("keys", "update", "svc", "--models", "none", *remote).exit_code == 0
    assert chat_status(server, secret) == 200

    new = created(kallm("keys", "rotate", "svc", *remote))
    assert chat_status(server, secret) == 401 and chat_status(server, new) == 200
    assert kallm("keys", "revoke", "svc", *remote).exit_code == 0
    assert chat_status(server, new) == 401
    assert show(kallm, "svc", *remote)["status"] == "revoked"
    assert show(kallm, "svc")["status"] == "revoked"  # the same database, read locally

    manifest = kallm("keys", "create", "--name", "k8s", "-o", "k8s-secret", *remote)
    secret = manifest.stderr.strip().splitlines()[-1]
    [content] = yaml.safe_load(manifest.stdout)["stringData"].values()
    assert json.loads(content)["hash"] == hashlib.sha256(secret.encode()).hexdigest()


def test_k8s_secret_loads_into_a_server_with_keys_dir(
    kallm: Callable[..., Result], make_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    keys_dir = tmp_path / "secrets"
    keys_dir.mkdir()
    proxy = make_proxy(auth="virtual-keys", db_path=tmp_path / "server.db", keys_dir=keys_dir)
    result = kallm(
        "keys",
        "create",
        "--name",
        "Team B (prod)",
        "--rpm",
        "100",
        "-o",
        "k8s-secret",
        "--k8s-namespace",
        "llm",
        "--label",
        "team=b",
        "--label",
        "example.com/tier=gold",
    )
    assert result.exit_code == 0, result.output
    secret = result.stderr.strip().splitlines()[-1]
    assert ONCE in result.stderr and secret.startswith("sk-kallm-")
    assert secret not in result.stdout
    manifest = yaml.safe_load(result.stdout)
    assert (manifest["apiVersion"], manifest["kind"], manifest["type"]) == (
        "v1",
        "Secret",
        "Opaque",
    )
    meta = manifest["metadata"]
    assert re.fullmatch(r"kallm-key-team-b-prod-[0-9a-f]{8}", meta["name"])
    assert meta["namespace"] == "llm"
    assert meta["labels"] == {
        "app.kubernetes.io/name": "kallm",
        "team": "b",
        "app.kubernetes.io/component": "virtual-key",
        "example.com/tier": "gold",
    }
    [(file_name, content)] = manifest["stringData"].items()
    record = json.loads(content)
    assert file_name == f"{record['id']}.json" and record["rpm"] == 100
    assert "spend_usd" not in record and len(record["hash"]) == 64

    (keys_dir / file_name).write_text(content)  # what the kubelet mounts
    eventually(lambda: chat_status(proxy, secret) == 200)

    rotated = kallm("keys", "rotate", record["id"], "-o", "k8s-secret", "--k8s-namespace", "llm")
    new = rotated.stderr.strip().splitlines()[-1]
    [(_, content)] = yaml.safe_load(rotated.stdout)["stringData"].items()
    (keys_dir / file_name).write_text(content)
    eventually(lambda: chat_status(proxy, secret) == 401)
    assert chat_status(proxy, new) == 200


@pytest.mark.parametrize(
    "text",
    [
        "plain",
        'quo"te \\ back',
        "tab\tnew\nline",
        "nel\x85 ls\u2028",
        "del\x7f bom\ufeff",
        "☃ Ünï 😀",
        "key: [x] # y",
        "",
    ],
)
def test_yaml_str_round_trips(text: str) -> None:
    assert yaml.safe_load(f"v: {yaml_str(text)}") == {"v": text}
    assert yaml_str(text).isascii()


@pytest.mark.parametrize(
    "args",
    [
        ["create"],
        ["create", "--name", " "],
        ["create", "--name", "x", "--budget-usd", "ten"],
        ["create", "--name", "x", "--budget-usd", "-1"],
        ["create", "--name", "x", "--budget-period", "monthly"],
        ["create", "--name", "x", "--rpm", "1.5"],
        ["create", "--name", "x", "--tpm", "-3"],
        ["create", "--name", "x", "--models", " , "],
        ["create", "--name", "x", "--expires", "0s"],
        ["create", "--name", "x", "--expires", "soon"],
        ["create", "--name", "x", "--metadata", "novalue"],
        ["create", "--name", "x", "--output", "yaml"],
        ["create", "--name", "x", "-o", "k8s-secret", "--label", "bad label=x"],
        ["create", "--name", "x", "-o", "k8s-secret", "--k8s-namespace", "Not_A_Namespace"],
        ["create", "--name", "x", "--url", "http://127.0.0.1:9"],  # no admin key
        [
            "create",
            "--name",
            "x",
            "--url",
            "http://127.0.0.1:9",
            "--admin-key",
            "a",
            "--db",
            "x.db",
        ],
        ["update", "x"],
        ["update", "x", "--rpm", "many"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    kallm: Callable[..., Result], db: Path, args: list[str]
) -> None:
    result = kallm("keys", *args)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and result.stdout == ""
    assert not db.exists()  # flags are checked before anything is opened


def test_store_and_server_errors_are_one_line(kallm: Callable[..., Result], server: Proxy) -> None:
    created(kallm("keys", "create", "--name", "dup"))
    cases = [
        (("keys", "create", "--name", "dup"), 1, "already exists"),
        (("keys", "show", "nope"), 1, "no key 'nope'"),
        (
            ("keys", "show", "nope", "--url", server.root, "--admin-key", "adm-key-for-tests-0001"),
            1,
            "no key 'nope' (HTTP 404)",
        ),
        (
            ("keys", "list", "--url", server.root, "--admin-key", "wrong-admin-key-0000"),
            1,
            "Invalid admin key. (HTTP 401)",
        ),
        (
            (
                "keys",
                "list",
                "--url",
                "http://127.0.0.1:9",
                "--admin-key",
                "adm-key-for-tests-0001",
            ),
            1,
            "cannot reach kallm at http://127.0.0.1:9",
        ),
    ]
    for args, code, message in cases:
        result = kallm(*args)
        assert result.exit_code == code, (args, result.output)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.output


def test_empty_list_and_json(kallm: Callable[..., Result]) -> None:
    assert kallm("keys", "list", "--json").stdout.strip() == "[]"
    assert "no keys yet" in kallm("keys", "list").stderr


def test_names_are_shown_as_written(kallm: Callable[..., Result]) -> None:
    name = "[bold]ops[/] [x"  # rich markup in a name is data, not styling
    result = kallm("keys", "create", "--name", name)
    created(result)
    assert name in result.stderr
    assert name in kallm("keys", "list").stdout
    assert name in kallm("keys", "show", name).stdout
    assert name in kallm("keys", "revoke", name).stderr


def test_error_messages_are_shown_as_written(kallm: Callable[..., Result]) -> None:
    for ref in ("[/]", "[red]x"):
        result = kallm("keys", "show", ref)
        assert result.exit_code == 1
        assert result.stderr.strip() == f"error: no key {ref!r}"


@pytest.mark.parametrize("how", ["KALLM_CONFIG", "--config"])
def test_keys_and_stats_use_the_database_named_in_kallm_toml(
    tmp_path: Path, make_proxy: Callable[..., Proxy], how: str
) -> None:
    """One settings path for every command: the key lands where `kallm serve` looks."""
    configured = tmp_path / "configured.db"
    config = tmp_path / "kallm.toml"
    config.write_text(f'[db]\npath = "{configured}"\n')
    runner = CliRunner()
    env = {"COLUMNS": "200", "KALLM_DB": ""}
    flags: list[str] = []
    if how == "KALLM_CONFIG":
        env["KALLM_CONFIG"] = str(config)
    else:
        flags = ["--config", str(config)]
    created = runner.invoke(app, ["keys", "create", "--name", "cfg", *flags], env=env)
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    assert configured.exists()
    listed = runner.invoke(app, ["keys", "list", "--json", *flags], env=env)
    assert "cfg" in listed.stdout
    server = make_proxy(auth="virtual-keys", db_path=configured)
    assert chat_status(server, secret) == 200
    report = runner.invoke(app, ["stats", "--json", *flags], env=env)
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["source"]["db"] == str(configured)
