"""Remove the Python backend's shared-memory regions that no process holds any more (standard library only).

Triton's Python backend passes requests to its stub processes through regions named
``/dev/shm/triton_python_backend_shm_region_<uuid>`` (1 MiB each, and more under load), which tritonserver unlinks
when it stops. A tritonserver killed with SIGKILL (the OOM killer, a fault test) cannot: its regions stay in
memory until the machine restarts (258 of them were seen after a day of tests). Starting Triton
(``stack.triton_server.TritonServer.start``) therefore removes the regions that no live process maps or holds open.

A running Triton's regions are never touched: tritonserver and each stub keep theirs mapped from creation to
unlink, and a region counts as in use if any process maps it or has it open (which also covers the moment between
its creation and its mapping). Only regions of this user are considered. Containers have /dev/shm of their own.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
PREFIX = "triton_python_backend_shm_region_"


def _region_name(path: str, shm_dir: Path) -> str | None:
    """The region's file name when ``path`` (a maps entry or an fd's target) is one of ours, else None."""
    path = path.removesuffix(" (deleted)")
    directory, _, name = path.rpartition("/")
    return name if directory == str(shm_dir) and name.startswith(PREFIX) else None


def regions_in_use(proc: Path = Path("/proc"), shm_dir: Path = SHM_DIR) -> set[str]:
    """Names of the regions some process maps or holds open (processes that end while they are read are skipped)."""
    used: set[str] = set()
    for process in proc.glob("[0-9]*"):
        with contextlib.suppress(OSError):
            for line in (process / "maps").read_text().splitlines():
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and (name := _region_name(fields[5], shm_dir)):
                    used.add(name)
        with contextlib.suppress(OSError):
            for fd in (process / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if name := _region_name(os.readlink(fd), shm_dir):
                        used.add(name)
    return used


def remove_stale_regions(shm_dir: Path = SHM_DIR, proc: Path = Path("/proc")) -> list[str]:
    """Unlink this user's regions that no process uses; returns their names.

    The candidates are listed before the processes are read, so a region made in between is not a candidate.
    """
    uid = os.geteuid()
    candidates = []
    with contextlib.suppress(OSError):
        for path in shm_dir.glob(f"{PREFIX}*"):
            with contextlib.suppress(OSError):
                if path.stat().st_uid == uid:
                    candidates.append(path)
    if not candidates:
        return []
    used = regions_in_use(proc, shm_dir)
    removed = []
    for path in candidates:
        if path.name not in used:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path.name)
    if removed:
        log.info("removed %d shared-memory region(s) left by Triton processes that no longer exist", len(removed))
    return removed
