"""Slow work started as soon as the tests are collected, beside the rest of the suite.

The binary build, the deploy checks and the wheel install are a third of the suite's time
(~110 s) and run in child processes, while the suite itself keeps well under two cores
busy (user + sys 269 s over 326 s wall on 2 cores). So a test module declares its slow
work as an ``Early`` job and marks its tests ``@pytest.mark.early(JOB)``; once collection
is done, ``conftest.py`` starts every job a selected test needs, each in a thread that
runs its commands as child processes, and a test waits for ``JOB.result()``. A job nobody
selected never starts; one still running when the session ends (``-x``, Ctrl-C) has its
process group killed and its scratch folder removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")
STARTED: list[Early[Any]] = []


@dataclass(frozen=True)
class Ran:
    """One finished command: its exit status, its output (stderr folded in) and its time."""

    args: list[str]
    returncode: int
    output: str
    seconds: float

    def describe(self, lines: int = 120) -> str:
        tail = "\n".join(self.output.splitlines()[-lines:])
        return f"{' '.join(self.args)} exited {self.returncode} after {self.seconds:.1f} s:\n{tail}"


class JobFailed(Exception):
    """A job's command failed or ran out of time; the message carries its output."""


class Early(Generic[T]):
    """Work done once per session in a thread, started early; its result or its error."""

    def __init__(self, name: str, work: Callable[[Early[T]], T], timeout: float = 600):
        self.name = name
        self.work = work
        self.timeout = timeout
        self.folder: Path | None = None
        self._thread: threading.Thread | None = None
        self._value: T | None = None
        self._error: BaseException | None = None
        self._process: subprocess.Popen[str] | None = None
        self._stopping = False

    def start(self) -> None:
        if self._thread is not None:
            return
        self.folder = Path(tempfile.mkdtemp(prefix=f"kallm-{self.name}-"))
        STARTED.append(self)
        self._thread = threading.Thread(target=self._run, name=f"early-{self.name}", daemon=True)
        self._thread.start()

    def result(self) -> T:
        """The job's value (starting it now if collection did not); its error re-raised."""
        self.start()
        assert self._thread is not None
        self._thread.join(self.timeout)
        if self._thread.is_alive():
            raise JobFailed(f"{self.name}: not done within {self.timeout:.0f} s")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def run(
        self, args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Ran:
        """Run one command of the job in its own process group (so stopping kills its
        children too); ``JobFailed`` with its output if it exits non-zero."""
        if self._stopping:
            raise JobFailed(f"{self.name}: stopped")
        started = time.monotonic()
        self._process = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        output, _ = self._process.communicate()
        ran = Ran(args, self._process.returncode, output, time.monotonic() - started)
        self._process = None
        if ran.returncode != 0:
            raise JobFailed(ran.describe())
        return ran

    def stop(self) -> None:
        """End the job's running command (its process group, which this job made: TERM,
        then KILL after 5 s) and remove its folder."""
        self._stopping = True
        process = self._process
        if process is not None and process.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):  # TERM first: scripts' traps tidy up
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(5)
                    break
        if self._thread is not None:
            self._thread.join(30)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self) -> None:
        try:
            self._value = self.work(self)
        except BaseException as exc:  # handed to the test that asks for the result
            self._error = exc


def start_for(items: list[Any]) -> None:
    """Start the jobs of the selected tests (``@pytest.mark.early(JOB)``) that will run
    (not those a true ``skipif`` condition skips)."""
    for item in items:
        if any(mark.args and mark.args[0] is True for mark in item.iter_markers("skipif")):
            continue
        for mark in item.iter_markers("early"):
            mark.args[0].start()


def stop_all() -> None:
    while STARTED:
        STARTED.pop().stop()
