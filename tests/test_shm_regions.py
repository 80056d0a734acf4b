"""Starting Triton removes the Python backend's shared memory that a SIGKILLed Triton left, and only that."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from stack.shm_regions import PREFIX, SHM_DIR, regions_in_use, remove_stale_regions
from tests.servers import start_triton, wait_for

pytestmark = pytest.mark.integration


def mapped_regions(pid: int) -> set[str]:
    """The regions one process maps (tritonserver maps each of its instances')."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.rsplit("/", 1)[-1] for line in lines if f"{SHM_DIR}/{PREFIX}" in line}


def test_a_region_no_process_holds_is_removed_and_a_held_one_is_kept(tmp_path):
    stale, held = tmp_path / f"{PREFIX}stale", tmp_path / f"{PREFIX}held"
    other = tmp_path / "not-a-region"
    for path in (stale, held, other):
        path.write_bytes(b"\0" * 64)
    with held.open("rb"):  # held open by this process, as a Triton holds a region between creating and mapping it
        assert regions_in_use(shm_dir=tmp_path) == {held.name}
        assert remove_stale_regions(shm_dir=tmp_path) == [stale.name]
    assert not stale.exists()
    assert held.exists()
    assert other.exists()


def test_next_start_removes_a_killed_tritons_regions_and_keeps_a_running_ones(tiny_q8, tmp_path):
    running = start_triton(tiny_q8, tmp_path / "running.log")
    try:
        kept = mapped_regions(running.process.pid)
        killed = start_triton(tiny_q8, tmp_path / "killed.log")
        left = mapped_regions(killed.process.pid)
        assert left, "a Triton with a Python-backend model maps its regions"
        os.killpg(killed.process.pid, signal.SIGKILL)  # tritonserver and its stubs, as the OOM killer might
        killed.process.wait()
        killed.stop()
        assert left <= set(os.listdir(SHM_DIR)), "SIGKILL leaves the regions behind"
        # tritonserver is reaped, but its stubs may still be tearing their memory down (seconds on a loaded
        # machine), and a region a dying stub still maps is in use: the next start rightly keeps it
        wait_for(lambda: not left & regions_in_use())

        after = start_triton(tiny_q8, tmp_path / "after.log")
        try:
            present = set(os.listdir(SHM_DIR))
            assert not left & present
            assert kept <= present
        finally:
            after.stop()
        assert running.is_ready()
    finally:
        running.stop()
