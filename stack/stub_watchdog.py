"""Stop Triton when one of its Python-backend processes died, so that its supervisor restarts it.

Since release 24.06 Triton's Python backend no longer restarts a stub that died
(killed, out of memory, a crash in native code): the model keeps reporting READY
while the requests that instance gets fail with "Stub process ... is not healthy"
(seen here with 2.51; upstream issues triton-inference-server/server#7230 and
#8604). Reloading the model through the repository API was tried and rejected:
with traffic flowing, the unload of the broken version never finished, and its
healthy instance lived on beside the new ones. So the watchdog fails loudly
instead: it stops tritonserver (SIGTERM, then SIGKILL), and whatever supervises
it starts a fresh one: `make serve` / `make triton`, Docker's restart policy,
Kubernetes. A READY model has one stub per instance; fewer live stubs means one
died.

Standard library only, so the Triton image can run it with the system Python:

    python3 stub_watchdog.py --pid <tritonserver pid> --url 127.0.0.1:8000 --model jina_reranker_v3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request

log = logging.getLogger("stub_watchdog")
STUB_NAME = "triton_python_b"  # /proc/<pid>/comm keeps 15 characters of triton_python_backend_stub


def live_stubs(triton_pid: int) -> set[int]:
    """Stub processes of this tritonserver that are alive (zombies, not yet reaped, do not count).

    Found by their parent process id in ``/proc/<pid>/stat``, not through ``/proc/<triton>/task/*/children``:
    a thread of tritonserver that ends between the listing and the read makes its ``children`` file vanish
    (FileNotFoundError, about one scan in a hundred against a process that starts and ends threads), and
    its children move to another thread meanwhile, so a scan of the threads can miss a live stub.
    """
    stubs = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := process_stat(int(entry))) is not None:
            comm, state, parent = stat
            if parent == triton_pid and comm == STUB_NAME and state != "Z":
                stubs.add(int(entry))
    return stubs


def process_stat(pid: int) -> tuple[str, str, int] | None:
    """``(comm, state, parent pid)`` from ``/proc/<pid>/stat``; None once the process is gone.

    One ``os.read`` of the file (a few hundred bytes), decoded leniently: a process may name itself with any bytes,
    and one that was not UTF-8 made ``Path.read_text`` raise, failing every scan while it ran. ``read_text`` also took
    4x as long (66 against 16 us a process on a Zen 3), and a scan reads every process's file.
    """
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except FileNotFoundError:  # gone before the open
        return None
    try:
        text = os.read(fd, 4096).decode(errors="replace")
    except ProcessLookupError:  # gone between open and read
        return None
    finally:
        os.close(fd)
    head, _, tail = text.rpartition(")")  # comm may itself hold ")" and spaces
    fields = tail.split()
    if len(fields) < 2:
        return None
    return head.partition("(")[2], fields[0], int(fields[1])


def alive(pid: int) -> bool:
    stat = process_stat(pid)
    return stat is not None and stat[1] != "Z"


class StubWatchdog:
    def __init__(self, triton_pid: int, http_url: str, model: str, interval: float = 1.0,
                 grace_s: float = 15.0) -> None:
        self.triton_pid, self.http_url, self.model = triton_pid, http_url, model
        self.interval, self.grace_s = interval, grace_s
        self.fired = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _get_json(self, path: str) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=5) as response:
                return json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/models/{self.model}/ready", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def expected_stubs(self) -> int | None:
        """One stub per model instance while the model is READY, from the config Triton loaded (``count``
        per listed GPU for KIND_GPU groups, ``count`` otherwise); None while it is not READY."""
        config = self._get_json(f"/v2/models/{self.model}/config") if self._ready() else None
        if config is None:
            return None
        return sum(group.get("count", 1) * (max(1, len(group.get("gpus", []))) if group.get("kind") == "KIND_GPU"
                                              else 1) for group in config.get("instance_group", []))

    def stop_triton(self) -> None:
        log.error("a Python-backend process of model %s died and Triton does not replace it; stopping "
                  "tritonserver (pid %d) so that it is restarted", self.model, self.triton_pid)
        self.fired = True
        os.kill(self.triton_pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while alive(self.triton_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(self.triton_pid):
            os.kill(self.triton_pid, signal.SIGKILL)

    def run(self) -> None:
        """Check every ``interval`` until tritonserver ends or it is stopped. A check that fails (anything
        unexpected in /proc or in Triton's answers) is logged and the next one runs: a watchdog that died
        would leave a dead stub's instance READY for good."""
        while alive(self.triton_pid):
            try:
                if self.check():
                    return
            except Exception:
                log.exception("stub check failed; still watching")
            if self._stop.wait(self.interval):
                return

    def check(self) -> bool:
        """One check: stop tritonserver and return True when a stub is missing."""
        expected = self.expected_stubs()
        if expected is not None and len(live_stubs(self.triton_pid)) < expected:
            self.stop_triton()
            return True
        return False

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="stub-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


FIRED_EXIT_STATUS = 3  # tells the image's entrypoint why tritonserver stopped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pid", type=int, required=True, help="tritonserver's process id")
    parser.add_argument("--url", default="127.0.0.1:8000", help="Triton's HTTP host:port")
    parser.add_argument("--model", required=True, help="the Triton model to watch")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between checks")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    watchdog = StubWatchdog(args.pid, args.url, args.model, args.interval)
    watchdog.run()
    return FIRED_EXIT_STATUS if watchdog.fired else 0


if __name__ == "__main__":
    raise SystemExit(main())
