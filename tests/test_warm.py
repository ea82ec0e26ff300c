"""`kallm warm`: through a running proxy, in-process, imports, bad lines and the dry run.

Driven through the real CLI (CliRunner) against real servers: the fake upstream counts
what reached it, so "nothing sent" and "one call per line" are facts, not mocks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from typer.testing import CliRunner, Result

from kallm.cli.app import app
from tests.harness import Http, Proxy, Upstream

MODEL = "gpt-4o-mini"
PROMPTS = [
    "What is the capital of France?",
    "How do I reverse a list in Python?",
    "Explain photosynthesis in one sentence.",
]


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, ["warm", *args], env=env)


def summary(result: Result) -> dict[str, Any]:
    assert result.stdout.strip(), result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def write(tmp_path: Path, name: str, lines: list[Any]) -> str:
    path = tmp_path / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


def ask(proxy: Proxy, messages: list[dict[str, str]], **params: Any) -> Any:
    sdk = openai.OpenAI(base_url=proxy.url, api_key="sk-client", max_retries=0)
    return sdk.chat.completions.with_raw_response.create(model=MODEL, messages=messages, **params)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_text_file_through_a_running_proxy_then_a_rerun_is_free(
    proxy: Proxy, upstream: Upstream, tmp_path: Path
) -> None:
    file = write(tmp_path, "prompts.txt", ["# greetings", PROMPTS[0], "", *PROMPTS[1:]])
    first = run(file, "--url", proxy.root, "--model", MODEL, "--json")
    assert first.exit_code == 0, first.output
    counts = summary(first)
    assert (counts["lines"], counts["added"], counts["cached"]) == (3, 3, 0)
    assert counts["cost_usd"] > 0  # gpt-4o-mini is priced, the fake reports usage
    assert upstream.fake.chat_calls == 3
    again = run(file, "--url", proxy.root + "/v1", "-m", MODEL)  # a /v1 base URL works too
    assert again.exit_code == 0, again.output
    assert "already cached" in again.output and "│ 3" in again.output
    assert upstream.fake.chat_calls == 3  # nothing new upstream


def test_jsonl_chat_requests_with_a_system_prompt_become_sdk_hits(
    proxy: Proxy, upstream: Upstream, tmp_path: Path
) -> None:
    system = {"role": "system", "content": "You answer like a pirate."}
    lines = [
        {"model": MODEL, "temperature": 0, "messages": [system, *user(p)]} for p in PROMPTS[:2]
    ]
    lines.append({"messages": user(PROMPTS[2]), "stream": True})  # model from --model
    result = run(
        write(tmp_path, "chats.jsonl", lines), "--url", proxy.root, "-m", MODEL, "--json", "-j", "2"
    )
    assert result.exit_code == 0, result.output
    assert summary(result)["added"] == 3
    hit = ask(proxy, [system, *user(PROMPTS[0])], temperature=0)
    assert hit.headers["X-Kallm-Cache"] == "HIT"
    assert ask(proxy, user(PROMPTS[2])).headers["X-Kallm-Cache"] == "HIT"
    # another system prompt is another scope: not served from the warmed entry
    assert ask(proxy, user(PROMPTS[0]), temperature=0).headers["X-Kallm-Cache"] == "MISS"
    assert upstream.fake.chat_calls == 4


def test_pairs_are_imported_without_calling_any_model(
    make_proxy: Callable[..., Proxy], upstream: Upstream, tmp_path: Path
) -> None:
    proxy = make_proxy(
        admin_key="adm-key-for-tests-0001", db_path=None
    )  # imports need no key database
    completion = {"choices": [{"message": {"role": "assistant", "content": "Use reversed()."}}]}
    file = write(
        tmp_path,
        "pairs.jsonl",
        [
            {"model": MODEL, "prompt": PROMPTS[0], "response": "Paris, of course."},
            {"model": MODEL, "messages": user(PROMPTS[1]), "response": completion},
        ],
    )
    missing = run(file, "--url", proxy.root)
    assert missing.exit_code == 2 and "--admin-key" in missing.output
    wrong = run(file, "--url", proxy.root, "--admin-key", "nope-admin-key-00000", "--json")
    assert wrong.exit_code == 1 and "Invalid admin key" in wrong.stdout
    result = run(
        file, "--url", proxy.root, "--json", env={"KALLM_ADMIN_KEY": "adm-key-for-tests-0001"}
    )
    assert result.exit_code == 0, result.output
    assert summary(result)["imported"] == 2
    reply = ask(proxy, user(PROMPTS[0]))
    assert reply.headers["X-Kallm-Cache"] == "HIT"
    assert reply.parse().choices[0].message.content == "Paris, of course."
    assert reply.parse().usage.completion_tokens == 3  # estimated as words
    assert ask(proxy, user(PROMPTS[1])).parse().choices[0].message.content == "Use reversed()."
    assert upstream.fake.chat_calls == 0
    again = run(file, "--url", proxy.root, "--admin-key", "adm-key-for-tests-0001", "--json")
    assert summary(again)["cached"] == 2 and summary(again)["imported"] == 0


def test_bad_lines_are_reported_by_number_and_the_good_ones_still_run(
    proxy: Proxy, upstream: Upstream, tmp_path: Path
) -> None:
    lines = [
        PROMPTS[0],
        "{not json",
        '{"messages": "hi"}',
        '{"temperature": 1}',
        '{"prompt": 5}',
        PROMPTS[1],
        *(["{"] * 8),
    ]
    result = run(write(tmp_path, "mixed.txt", lines), "--url", proxy.root, "-m", MODEL)
    assert result.exit_code == 1
    out = result.output
    assert "line 2: invalid JSON" in out and "line 3:" in out and "line 4:" in out
    assert 'line 5: needs "messages" or a "prompt" string' in out
    assert "and 2 more" in out  # 12 bad lines: the first 10 shown
    assert upstream.fake.chat_calls == 2


def test_an_upstream_error_fails_one_line_and_the_run_goes_on(
    proxy: Proxy, upstream: Upstream, tmp_path: Path
) -> None:
    upstream.fake.fail_status, upstream.fake.fail_times = 400, 1
    result = run(
        write(tmp_path, "p.txt", PROMPTS), "--url", proxy.root, "-m", MODEL, "-j", "1", "--json"
    )
    assert result.exit_code == 1
    counts = summary(result)
    assert (counts["failed"], counts["added"]) == (1, 2)
    assert counts["failures"][0]["line"] == 1 and "HTTP 400" in counts["failures"][0]["reason"]


def test_dry_run_sends_nothing_and_prices_what_it_would_send(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", upstream.url)
    monkeypatch.setenv("KALLM_CACHE_FILE", str(tmp_path / "never.kallm"))
    file = write(
        tmp_path,
        "p.jsonl",
        [
            *PROMPTS,
            {"prompt": "hi", "response": "hello"},
            {"messages": user("long"), "max_tokens": 4000},
        ],
    )
    result = run(file, "-m", MODEL, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = summary(result)
    assert (plan["to_send"], plan["to_import"]) == (4, 1)
    assert plan["estimated_cost_usd"] > 4000 * 0.6 / 1e6  # the max_tokens line alone
    assert upstream.fake.chat_calls == 0 and not (tmp_path / "never.kallm").exists()


def test_in_process_mode_writes_a_cache_file_a_new_proxy_serves(
    make_proxy: Callable[..., Proxy],
    upstream: Upstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "warm.kallm"
    monkeypatch.setenv("OPENAI_BASE_URL", upstream.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-upstream")
    monkeypatch.setenv("KALLM_CACHE_FILE", str(cache))
    monkeypatch.setenv("KALLM_DB", str(tmp_path / "warm.db"))
    file = write(tmp_path, "mixed.txt", [*PROMPTS[:2], {"prompt": PROMPTS[2], "response": "Sun."}])
    result = run(file, "-m", MODEL, "--json")
    assert result.exit_code == 0, result.output
    counts = summary(result)
    assert (counts["added"], counts["imported"]) == (2, 1) and str(cache) in counts["target"]
    assert cache.exists() and upstream.fake.chat_calls == 2
    proxy = make_proxy(cache_file=cache)
    assert ask(proxy, user(PROMPTS[0])).headers["X-Kallm-Cache"] == "HIT"
    assert ask(proxy, user(PROMPTS[2])).parse().choices[0].message.content == "Sun."
    assert upstream.fake.chat_calls == 2


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["missing.txt", "-m", MODEL], "no such file"),
        (["{file}"], "pass --model"),
        (["{file}", "-m", MODEL, "--url", "http://127.0.0.1:9"], "cannot reach kallm"),
        (["{file}", "-m", MODEL, "--format", "yaml"], "--format"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    file = write(tmp_path, "p.txt", PROMPTS)
    result = run(*[a.format(file=file) for a in args])
    assert result.exit_code == 2
    assert says in result.output and "Traceback" not in result.output


def test_admin_endpoint_guard_and_per_entry_results(make_proxy: Callable[..., Proxy]) -> None:
    entry = {"request": {"model": MODEL, "messages": user("hi")}, "response": "hello"}
    off = Http(make_proxy().root).post("/admin/cache/entries", {"entries": [entry]})
    assert off.status == 403
    http = Http(make_proxy(admin_key="adm-key-for-tests-0001").root)
    assert http.post("/admin/cache/entries", {"entries": [entry]}).status == 401
    auth = {"Authorization": "Bearer adm-key-for-tests-0001"}
    assert http.post("/admin/cache/entries", {"entries": 1}, headers=auth).status == 400
    reply = http.post(
        "/admin/cache/entries",
        {
            "entries": [
                entry,
                entry,
                {"request": {"model": MODEL}, "response": "x"},
                {"request": entry["request"] | {"messages": user("yo")}, "response": 42},
            ]
        },
        headers=auth,
    )
    assert reply.status == 200
    body = reply.json()
    assert (body["imported"], body["cached"], body["failed"]) == (1, 1, 2)
    assert "messages" in body["results"][2]["error"]
