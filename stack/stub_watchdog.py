"""Reload the model when a Python-backend stub process dies.

Since release 24.06 Triton's Python backend no longer restarts a stub that died
(killed, out of memory, a crash in native code): the model keeps reporting READY
while every request fails with "Stub process ... is not healthy" (seen here with
2.51; upstream issues triton-inference-server/server#7230 and #8604). This
watchdog notices a stub that is gone and reloads the model through Triton's
repository API (unload, then load), which starts fresh stubs. Triton must run
with ``--model-control-mode=explicit --load-model=<model>``.

Standard library only, so the Triton image can run it with the system Python:

    python3 stub_watchdog.py --pid <tritonserver pid> --url 127.0.0.1:8000 --model jina_reranker_v3
"""

from __future__ import annotations

import argparse
import logging
import threading
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger("stub_watchdog")
STUB_NAME = "triton_python_b"  # /proc/<pid>/comm keeps 15 characters of triton_python_backend_stub


def live_stubs(triton_pid: int) -> set[int]:
    """Stub processes of this tritonserver that are alive (zombies, not yet reaped, do not count)."""
    stubs = set()
    for task in Path(f"/proc/{triton_pid}/task").glob("*/children"):
        for pid in task.read_text().split():
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if comm == STUB_NAME and state != "Z":
                stubs.add(int(pid))
    return stubs


class StubWatchdog:
    def __init__(self, triton_pid: int, http_url: str, model: str, interval: float = 1.0) -> None:
        self.triton_pid, self.http_url, self.model, self.interval = triton_pid, http_url, model, interval
        self.reloads = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _post(self, action: str) -> None:
        request = urllib.request.Request(f"http://{self.http_url}/v2/repository/models/{self.model}/{action}",
                                         data=b"{}", method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600):
            pass

    def _ready(self) -> bool:
        try:
            url = f"http://{self.http_url}/v2/models/{self.model}/ready"
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def reload(self) -> None:
        log.error("a Python-backend stub of model %s died; reloading the model", self.model)
        self._post("unload")
        self._post("load")
        self.reloads += 1
        log.warning("model %s reloaded with fresh stubs", self.model)

    def run(self) -> None:
        known: set[int] = set()
        while not self._stop.wait(self.interval):
            if not Path(f"/proc/{self.triton_pid}").exists():
                return
            current = live_stubs(self.triton_pid)
            # A stub we saw is gone, or the model claims READY with none at all (it died before we looked).
            if (known and not known <= current) or (not current and self._ready()):
                try:
                    self.reload()
                except (urllib.error.URLError, OSError) as exc:
                    log.error("reloading model %s failed (%s); will retry", self.model, exc)
                    continue
                known = set()
            elif self._ready():
                known = current

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="stub-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pid", type=int, required=True, help="tritonserver's process id")
    parser.add_argument("--url", default="127.0.0.1:8000", help="Triton's HTTP host:port")
    parser.add_argument("--model", default="jina_reranker_v3")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between checks")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    StubWatchdog(args.pid, args.url, args.model, args.interval).run()


if __name__ == "__main__":
    main()
