"""stack/stub_watchdog.py: its process checks, its loop, and the image's entrypoint that runs it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stack.stub_watchdog import STUB_NAME, StubWatchdog, alive, live_stubs

ENTRYPOINT = Path(__file__).parents[1] / "docker" / "triton-entrypoint.sh"

pytestmark = pytest.mark.unit


def test_a_running_process_is_alive():
    assert alive(os.getpid())


def test_a_reaped_process_is_not():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not alive(child.pid)


def test_a_process_that_exits_between_open_and_read_is_not(monkeypatch):
    """/proc/PID/stat opened while the process existed, read after it was gone: ESRCH (seen under make test)."""
    def vanished(fd: int, size: int) -> bytes:
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(os, "read", vanished)
    assert not alive(os.getpid())


def test_a_process_named_with_bytes_that_are_not_utf_8_does_not_break_the_scan():
    """Any process may write any bytes to its comm: the scan once raised UnicodeDecodeError on each pass then."""
    named = subprocess.Popen([sys.executable, "-c", "open('/proc/self/comm', 'wb').write(b'odd\\xff\\xfename'); "
                              "print(flush=True); import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        named.stdout.readline()
        assert live_stubs(os.getpid()) == set()
        assert alive(named.pid)
    finally:
        named.kill()
        named.wait()


# A process that keeps starting and ending threads, with one child renamed as Triton's stub is named and
# started from a thread that has ended since (its children then belong to another thread). It prints the
# child's pid once that child has renamed itself.
THREAD_CHURN = f"""
import subprocess, sys, threading
stub = []
def spawn():
    stub.append(subprocess.Popen([sys.executable, "-c", "open('/proc/self/comm', 'w').write({STUB_NAME!r}); "
                                  "print(flush=True); import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
starter = threading.Thread(target=spawn)
starter.start()
starter.join()
stub[0].stdout.readline()
print(stub[0].pid, flush=True)
while True:
    threads = [threading.Thread(target=lambda: None) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
"""


def test_the_stub_scan_survives_threads_that_end_while_it_reads():
    """Triton starts and ends threads all the time; every scan must still find its stub, and never raise."""
    churn = subprocess.Popen([sys.executable, "-c", THREAD_CHURN], stdout=subprocess.PIPE, text=True)
    try:
        stub = int(churn.stdout.readline())
        scans = [live_stubs(churn.pid) for _ in range(2000)]  # the old scan raised in about 1 of 250 here
    finally:
        churn.kill()
        churn.wait()
    assert all(found == {stub} for found in scans), [found for found in scans if found != {stub}][:3]


class FailingOnce(StubWatchdog):
    """A watchdog whose first check of Triton fails in an unexpected way; later checks see a stub missing."""

    def __init__(self, triton_pid: int) -> None:
        super().__init__(triton_pid, "127.0.0.1:9", "model", interval=0.01, grace_s=10.0)
        self.checks = 0

    def expected_stubs(self) -> int | None:
        self.checks += 1
        if self.checks == 1:
            raise RuntimeError("an unexpected failure inside one check")
        return 1  # the stand-in for tritonserver has no stub: one is missing


def test_the_watchdog_keeps_watching_after_a_check_fails(caplog):
    triton = subprocess.Popen(["sleep", "600"])
    try:
        watchdog = FailingOnce(triton.pid)
        watchdog.run()
        assert triton.wait(timeout=30) == -signal.SIGTERM  # stopped by the check after the failed one
    finally:
        triton.kill()
        triton.wait()
    assert watchdog.fired
    assert watchdog.checks == 2
    assert "stub check failed; still watching" in caplog.text


def fake_command(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def test_the_entrypoint_stops_tritonserver_and_exits_when_the_watchdog_dies(tmp_path):
    """The image's entrypoint with stand-ins: a tritonserver that runs until SIGTERM (and says when it got it)
    and a watchdog that crashes. Without the watchdog nobody notices a dead stub, so the container must end."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stopped = tmp_path / "tritonserver-stopped"
    fake_command(bin_dir, "tritonserver", f"sleep 600 </dev/null >/dev/null 2>&1 &\n"
                                          f"trap 'echo TERM > {stopped}; kill $!; exit 0' TERM\nwait\n")
    watchdog = tmp_path / "stub_watchdog.py"
    watchdog.write_text("raise RuntimeError('the watchdog crashed')\n")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "MODEL_REPOSITORY": str(tmp_path),
           "STUB_WATCHDOG": str(watchdog)}
    entrypoint = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
    try:
        _, errors = entrypoint.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(entrypoint.pid, signal.SIGKILL)
    assert entrypoint.returncode != 0
    assert stopped.read_text() == "TERM\n"
    assert "the stub watchdog died" in errors
