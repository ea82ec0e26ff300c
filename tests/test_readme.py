"""The README's two set-up commands are what CI runs, so they cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_has_two_commands_each_in_its_own_venv() -> None:
    install, tests = _readme_commands()
    for command in (install, tests):
        # a fresh machine's system Python may refuse pip (PEP 668): each makes its own venv
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install ")
    assert install.endswith(".venv/bin/kallm serve")
    assert tests.endswith(".venv/bin/python -m pytest")


def test_ci_runs_the_readme_test_command_in_a_clean_venv() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    _, tests = _readme_commands()
    lines = [line.strip() for line in ci.splitlines()]
    assert tests in lines
    assert lines.index("rm -rf .venv") < lines.index(tests)  # never a left-over environment
    assert "--system-site-packages" not in ci
    assert any(line.startswith(".venv/bin/ruff check") for line in lines)
    assert any(line.startswith(".venv/bin/ruff format --check") for line in lines)


def test_every_setting_is_in_the_readme_table() -> None:
    from kallm.config import SPECS

    readme = (ROOT / "README.md").read_text()
    missing = [spec.toml_key for spec in SPECS if f"`{spec.toml_key}`" not in readme]
    assert not missing, f"settings missing from the README table: {missing}"
