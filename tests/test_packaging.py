"""kallm as a newcomer installs it: a wheel, in a fresh virtual environment, and nothing else.

The test suite itself runs where kallm's dev extras are installed, so a runtime import
that only a test dependency happens to provide (click was one: typer stopped bringing
it) would pass every other test. Here the wheel is built from this checkout and
installed into a new venv without system site-packages, and the installed ``kallm``
command must answer ``--version`` and ``--help`` and serve ``/health``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

from kallm import __version__
from tests.early import Early

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Installed:
    kallm: Path  # the console script in the fresh venv
    python: Path


def _run(args: list[str], *, timeout: float = 300, **kwargs: object) -> str:
    done = subprocess.run(
        args, text=True, capture_output=True, timeout=timeout, check=False, **kwargs
    )  # type: ignore[call-overload]
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


def _install_wheel(job: Early[Installed]) -> Installed:
    assert job.folder is not None
    wheels = job.folder / "wheels"
    job.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)])
    [wheel] = wheels.glob("kallm-*.whl")
    env_dir = job.folder / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    job.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)])
    return Installed(env_dir / "bin" / "kallm", python)


WHEEL: Early[Installed] = Early("wheel", _install_wheel)
pytestmark = pytest.mark.early(WHEEL)


@pytest.fixture(scope="module")
def installed() -> Installed:
    """The wheel built from this checkout, installed in a fresh venv (started at collection,
    beside the rest of the suite: ``tests/early.py``)."""
    return WHEEL.result()


def _clean_env(tmp_path: Path) -> dict[str, str]:
    """No KALLM_*/OPENAI_* settings and a private home: what a new user's shell has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KALLM_", "OPENAI_"))}
    env.pop("PYTHONPATH", None)
    env["HOME"] = str(tmp_path)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    return env


def test_the_wheel_declares_every_runtime_import(installed: Installed, tmp_path: Path) -> None:
    """Every kallm module imports in the fresh venv: a missing dependency fails here."""
    script = (
        "import importlib, pkgutil, kallm\n"
        "for m in pkgutil.walk_packages(kallm.__path__, 'kallm.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    assert _run([str(installed.python), "-c", script], env=_clean_env(tmp_path)).strip() == "ok"


def test_version_and_help(installed: Installed, tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    assert _run([str(installed.kallm), "--version"], env=env).strip() == f"kallm {__version__}"
    help_text = _run([str(installed.kallm), "--help"], env=env)
    for command in ("serve", "keys", "stats", "warm", "bench", "config"):
        assert command in help_text


def test_installed_kallm_serves_health(installed: Installed, tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    env["KALLM_LOG_JSON"] = "1"
    process = subprocess.Popen(
        [str(installed.kallm), "serve", "--port", "0"],
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        port = _announced_port(process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
            assert reply.status == 200
            assert b'"status": "ok"' in reply.read()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode == 0


def _announced_port(process: subprocess.Popen[str], seconds: float = 60) -> int:
    import json
    import re

    assert process.stderr is not None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            if process.poll() is not None:
                pytest.fail(f"kallm serve exited {process.returncode}")
            continue
        match = re.search(r"listening on http://[^:]+:(\d+)/", json.loads(line).get("message", ""))
        if match:
            return int(match[1])
    pytest.fail("kallm serve announced no port")
