"""Child processes for the local stack: started in sessions of their own, killed with everything they started
when their supervisor dies, waited on through a readiness check, stopped cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

# How long a server gets to stop after SIGTERM before it is killed.
STOP_TIMEOUT_S = 30.0

REAPER_SCRIPT = Path(__file__).with_name("reaper.py")


class GroupReaper:
    """This process's end of stack/reaper.py: the child process groups to kill if this process dies."""

    def __init__(self) -> None:
        self.groups: set[int] = set()
        self._reaper: subprocess.Popen | None = None
        self._owner = 0

    def watch(self, pgid: int) -> None:
        self.groups.add(pgid)
        self._send(f"{pgid}\n")

    def forget(self, pgid: int) -> None:
        """Kill what is left of a watched group (its leader's children) and stop watching it. Call it as soon
        as the leader has been reaped: its number is then free to be reused."""
        if pgid not in self.groups:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.groups.discard(pgid)
        self._send(f"-{pgid}\n")

    def _send(self, lines: str) -> None:
        alive = self._reaper is not None and self._owner == os.getpid() and self._reaper.poll() is None
        if not alive:  # the first child, or the reaper was killed: (re)start it with every group
            self._reaper = subprocess.Popen([sys.executable, str(REAPER_SCRIPT)], stdin=subprocess.PIPE,
                                            stdout=subprocess.DEVNULL, start_new_session=True, text=True)
            self._owner = os.getpid()
            lines = "".join(f"{pgid}\n" for pgid in self.groups)
        assert self._reaper is not None
        assert self._reaper.stdin is not None
        self._reaper.stdin.write(lines)
        self._reaper.stdin.flush()


REAPER = GroupReaper()


def interrupt_on_stop_signals() -> None:
    """SIGINT and SIGTERM become KeyboardInterrupt, so Ctrl-C and `kill` get the same clean shutdown.

    SIGINT is set explicitly because Python leaves it ignored when it started ignored, as it does under a
    non-interactive shell's ``make serve &`` (CI scripts, ``nohup``): such a supervisor slept through
    ``kill -INT``."""

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def free_port() -> int:
    """A loopback port free right now (tests and benchmarks start servers side by side)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class ManagedProcess:
    """A child process with its output in a log file, started in its own session: a terminal's Ctrl-C reaches
    only the supervisor, which stops it cleanly, and its process group (the child and what it started) is one
    that REAPER kills if the supervisor dies."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.command, self.env, self.log_path = name, command, env, log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.stop()  # a restart: end what is left of the last run (the stubs of a Triton that died)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:  # one run per file: errors found in it are this run's
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        REAPER.watch(self.process.pid)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        """Poll ``ready``; fail at once, with the log's tail, if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"{self.name} exited before it was ready:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, as far as anyone else can tell)."""
        if self.running():
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            REAPER.forget(self.process.pid)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, SIGKILL after ``timeout``; then whatever is left of its process group is killed."""
        if self.process is None:
            return
        if self.running():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()
        REAPER.forget(self.process.pid)
