"""stack/stub_watchdog.py's process check, which the watchdog polls while Triton stops."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stack.stub_watchdog import alive

pytestmark = pytest.mark.unit


def test_a_running_process_is_alive():
    assert alive(os.getpid())


def test_a_reaped_process_is_not():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not alive(child.pid)


def test_a_process_that_exits_between_open_and_read_is_not(monkeypatch):
    """/proc/PID/stat opened while the process existed, read after it was gone: ESRCH (seen under make test)."""
    def vanished(self: Path, *args: object, **kwargs: object) -> str:
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(Path, "read_text", vanished)
    assert not alive(os.getpid())
