"""The servers a benchmark starts: each in its own process, on a free loopback port.

A load generator that shares an event loop with the server it measures
measures its own scheduling, so kallm and the simulated upstream run as
separate processes (``python -m kallm serve``, ``python -m kallm.bench.upstream``).
Each is started with a hermetic environment (no ``KALLM_*``/``OPENAI_*``
variable of the user's can change what is measured), waited for until it
answers HTTP, and stopped by its own PID, nothing else, even when the run fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

import kallm

START_TIMEOUT = 60.0  # seconds a server may take to answer its first request
STOP_TIMEOUT = 30.0  # kallm finishes in-flight requests and writes its cache file first
PORT_ATTEMPTS = 3  # a free port can be taken between choosing it and binding it
KALLM_ROOT = str(Path(kallm.__file__).resolve().parent.parent)


@dataclass
class Child:
    """A server this benchmark started."""

    name: str
    process: asyncio.subprocess.Process
    root: str  # http://127.0.0.1:PORT, no path
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def free_port() -> int:
    """A loopback port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hermetic_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment minus kallm's and OpenAI's variables, plus ``extra``.

    kallm reads the environment over its config file, so a user's
    ``KALLM_SIMILARITY_THRESHOLD`` or ``OPENAI_BASE_URL`` would silently change
    the server being measured.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KALLM_", "OPENAI_"))}
    env["PYTHONUNBUFFERED"] = "1"
    # The servers import the same kallm as this process, installed or not, whatever the cwd.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (KALLM_ROOT, env.get("PYTHONPATH"))))
    return {**env, **(extra or {})}


async def start(
    name: str,
    args_for_port: Sequence[str],
    log_dir: Path,
    *,
    ready_path: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = START_TIMEOUT,
) -> Child:
    """Run ``python <args>`` (``{port}`` in the args is replaced by a free port) until it answers.

    Output goes to ``<log_dir>/<name>.log``; a process that exits before answering
    (its port was taken meanwhile, or it failed) is retried on another port, then
    reported with the end of its log.
    """
    log = log_dir / f"{name}.log"
    failure = ""
    for _ in range(PORT_ATTEMPTS):
        port = free_port()
        args = [a.replace("{port}", str(port)) for a in args_for_port]
        with log.open("ab") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                stdout=sink,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env=dict(env or hermetic_env()),
                cwd=cwd,
            )
        child = Child(name, process, f"http://127.0.0.1:{port}", log)
        try:
            if await _answers(child, ready_path, timeout):
                return child
        except BaseException:  # cancelled (Ctrl-C) while waiting: the caller never sees it
            await asyncio.shield(stop(child))
            raise
        await stop(child)
        failure = log.read_text(errors="replace")[-2000:]
        if "address already in use" not in failure.lower():
            break
    raise RuntimeError(f"{name} did not start; the end of {log}:\n{failure}")


async def _answers(child: Child, path: str, timeout: float) -> bool:
    """Poll ``path`` until any HTTP answer comes back; False if the process dies or times out."""
    deadline = time.monotonic() + timeout
    client_timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        while time.monotonic() < deadline:
            if child.process.returncode is not None:
                return False
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with session.get(child.root + path) as response:
                    await response.read()
                    return True
            await asyncio.sleep(0.05)
    return False


async def stop(child: Child) -> None:
    """SIGTERM this child by its PID, wait for it, SIGKILL it only if it will not go."""
    if child.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.process.terminate()
        try:
            await asyncio.wait_for(child.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await child.process.wait()
