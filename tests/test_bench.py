"""``kallm bench``: the run reports every cell it promises, quality recommends a threshold,
and the simulated upstream that ships in the package speaks OpenAI well enough for the SDK.

Speed is reported, never asserted: these tests check that the figures exist and
are sane (requests answered, no errors, the cache headers each cell is about).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from typer.testing import CliRunner

from kallm.bench.quality import PairsError, parse_thresholds, read_pairs, recommend
from kallm.bench.upstream import start_upstream
from kallm.cli.app import app
from tests.harness import LoopThread

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
CELLS = ("direct", "kallm miss", "kallm exact hit", "kallm paraphrase hit")


@pytest.fixture(autouse=True)
def temp_files_in_tmp_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A bench run keeps its servers' logs in a temporary folder for the user to read; here
    that folder is the test's own (every suite run left a few in /tmp)."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again (subprocesses do)


def test_bench_run_quick_reports_every_cell(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app, ["bench", "run", "--quick", "--concurrency", "1,4", "--save", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    cells = {(c["name"], c["concurrency"]): c for c in report["cells"]}
    assert set(cells) == {(name, c) for name in CELLS for c in (1, 4)}
    for (name, _), cell in cells.items():
        assert cell["requests"] > 0 and cell["errors"] == 0, cell
        assert cell["p50_ms"] > 0 and cell["p50_ms"] <= cell["p90_ms"] <= cell["p99_ms"]
        assert cell["rps"] > 0
        if name == "direct":
            assert cell["cache_headers"] == {"-": cell["requests"]}  # never went through kallm
        else:
            expected = "MISS" if name == "kallm miss" else "HIT"
            assert cell["cache_headers"] == {expected: cell["requests"]}, cell
            assert "added_p50_ms" in cell
    assert cells["kallm paraphrase hit", 1]["similarity"]["min"] < 1.0  # semantic, not exact
    stats = report["kallm_stats"]
    assert stats["total_hits"] > 0 and stats["total_misses"] > 0
    assert report["meta"]["upstream"]["kind"] == "simulated"
    assert set(report["summary"]) == {"1", "4"}
    assert "kallm paraphrase hit" in result.output and str(out) in result.output


def test_bench_with_options_only_means_run() -> None:
    """``kallm bench --opt`` goes to ``run``: its options are parsed (a bad one is named)."""
    result = CliRunner().invoke(app, ["bench", "--embedder", "nope"])
    assert result.exit_code == 2
    assert "--embedder" in result.output


def test_bench_run_rejects_a_bad_latency(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["bench", "run", "--upstream-latency", "soon", "--save", str(tmp_path / "x.json")]
    )
    assert result.exit_code == 2
    assert "--upstream-latency" in result.output
    assert not (tmp_path / "x.json").exists()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="scripts/bench_wrk.py needs wrk")
def test_bench_wrk_reports_every_cell(tmp_path: Path) -> None:
    """scripts/bench_wrk.py at its smallest (~15 s): every cell answered, all 200s, no errors."""
    out = tmp_path / "wrk.json"
    command = [sys.executable, str(ROOT / "scripts" / "bench_wrk.py"), "--duration", "1s"]
    command += ["--concurrency", "2", "--warmup", "0s", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90)  # env: TMPDIR
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    cells = {(c["name"], c["concurrency"]): c for c in report["cells"]}
    expected = {(n, 1) for n in ("direct", "relay", "kallm miss", "floor miss")}
    at_two = ("direct", "relay", "kallm miss", "kallm exact hit", "floor miss", "floor exact hit")
    expected |= {(n, 2) for n in at_two}
    assert set(cells) == expected
    for cell in cells.values():
        assert cell["rps"] > 0 and cell["requests"] > 0, cell
        assert cell["socket_errors"] == cell["non_2xx"] == cell["wrong_cache_header"] == 0, cell
        assert 0 < cell["p50_ms"] <= cell["p90_ms"] <= cell["p99_ms"]
    measures = [t["measure"] for t in report["targets"]]
    assert "p50 added to direct c=1, kallm miss (ms)" in measures
    assert "kallm miss / floor miss req/s c=2" in measures
    assert "issue 15 targets" in result.stdout


def test_bench_quality_recommends_a_threshold(tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    result = CliRunner().invoke(
        app, ["bench", "quality", "--pairs", str(DATA / "guard_pairs.jsonl"), "--save", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "recommended: cache.similarity_threshold" in result.output
    report = json.loads(out.read_text())
    rows = report["thresholds"]
    assert [r["threshold"] for r in rows] == parse_thresholds("0.80:0.99:0.01")
    assert all("precision" in r and "recall" in r for r in rows)
    scored = [r for r in rows if r["precision"] is not None]
    assert scored[-1]["precision"] >= scored[0]["precision"]
    recalls = [r["recall"] for r in rows]
    assert recalls == sorted(recalls, reverse=True)  # a higher bar never finds more
    best = report["recommended"]
    assert best["precision"] >= report["target_precision"]
    assert best["threshold"] == min(
        r["threshold"] for r in scored if r["precision"] >= report["target_precision"]
    )
    pairs = (DATA / "guard_pairs.jsonl").read_text().splitlines()
    assert report["guard"] is True and report["pairs"] == sum(1 for line in pairs if line.strip())


def test_quality_without_the_guard_lets_more_wrong_hits_through(tmp_path: Path) -> None:
    """guard_pairs is made of near-misses the guard exists for: without it, some get through."""
    paths = {flag: tmp_path / f"{flag}.json" for flag in ("--guard", "--no-guard")}
    for flag, path in paths.items():
        result = CliRunner().invoke(
            app,
            [
                "bench",
                "quality",
                "--pairs",
                str(DATA / "guard_pairs.jsonl"),
                flag,
                "--thresholds",
                "0.85,0.95",
                "--save",
                str(path),
            ],
        )
        assert result.exit_code == 0, result.output
    on, off = (json.loads(p.read_text())["thresholds"] for p in paths.values())
    assert sum(r["fp"] for r in off) > sum(r["fp"] for r in on)


def test_pairs_in_either_format(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"text_a": "How do I reset my PIN?", "text_b": "How can I reset my PIN?", "label": 1}\n'
        "\n"
        '{"a": "Lock the door", "b": "Unlock the door", "label": "must_not_hit"}\n'
    )
    pairs = read_pairs(path)
    assert [(p.a, p.duplicate) for p in pairs] == [
        ("How do I reset my PIN?", True),
        ("Lock the door", False),
    ]
    path.write_text('{"a": "x", "b": "y", "label": "maybe"}\n')
    with pytest.raises(PairsError, match=r"pairs\.jsonl:1"):
        read_pairs(path)


def test_thresholds_and_recommendation() -> None:
    assert parse_thresholds("0.9:0.92:0.01") == [0.9, 0.91, 0.92]
    assert parse_thresholds("0.95,0.9") == [0.9, 0.95]
    with pytest.raises(ValueError):
        parse_thresholds("0.9:0.8:0.01")
    rows = [
        {"threshold": 0.8, "precision": 0.9},
        {"threshold": 0.85, "precision": 0.98},
        {"threshold": 0.9, "precision": 0.96},
        {"threshold": 0.95, "precision": None},
    ]
    best = recommend(rows, 0.97)
    assert best is not None and best["threshold"] == 0.85
    assert recommend(rows, 0.99) is None


@pytest.fixture
def simulated(loop_thread: LoopThread) -> Iterator[str]:
    runner, url = loop_thread.run(start_upstream())
    yield url
    loop_thread.run(runner.cleanup())


def test_simulated_upstream_answers_the_openai_sdk(simulated: str) -> None:
    client = openai.OpenAI(base_url=simulated, api_key="sk-anything", max_retries=0)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is DNS?"},
    ]
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert reply.choices[0].message.content == "Answer to: What is DNS?"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens > 0

    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Answer to: What is DNS?"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert [m.id for m in client.models.list()]

    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[])
