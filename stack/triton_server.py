"""Run the pip-installed Triton server (from the nvidia-pytriton wheel) on this machine, without Docker.

``make triton`` (``python -m stack.triton_server``) starts it on the CPU config, waits until the
model is READY, prints the URLs and stops cleanly on Ctrl-C. Tests use ``TritonServer`` directly.

The recipe (see ../shared/notes/environment.md): a backend folder holding the Python backend and
the stub built for this interpreter; ``LD_LIBRARY_PATH`` with the wheel's libraries and
libpython; and this virtualenv's ``bin/`` first on ``PATH``, because the stub embeds the first
``python3`` it finds there.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

from adapter.settings import TRITON_MODEL as MODEL_NAME
from stack.processes import STOP_TIMEOUT_S, ManagedProcess, http_ok, interrupt_on_stop_signals
from stack.settings import Settings, missing_model_files
from stack.shm_regions import remove_stale_regions
from stack.stub_watchdog import StubWatchdog

log = logging.getLogger(__name__)

REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"


def pytriton_root() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent


def backend_directory(cache: Path = Path(".cache/triton")) -> Path:
    """A ``--backend-directory`` whose python backend uses the stub matching this interpreter."""
    source = pytriton_root() / "tritonserver"
    stub = source / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    target = cache.resolve() / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    for path in [*(source / "backends" / "python").glob("*.*"), stub / "triton_python_backend_stub"]:
        dest = target / path.name
        if not dest.exists() or dest.stat().st_size != path.stat().st_size:
            # copied beside it and renamed: a Triton starting in another process never runs a half-written stub
            partial = dest.with_name(f".{dest.name}.{os.getpid()}")
            shutil.copy2(path, partial)
            os.replace(partial, dest)
    return target.parent


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    libs = [sysconfig.get_config_var("LIBDIR"), str(pytriton_root().parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


class TritonServer(ManagedProcess):
    """A tritonserver bound to loopback; as a context manager, started, READY, and always stopped."""

    def __init__(self, settings: Settings, repository: Path = REPOSITORY, config_name: str | None = "cpu",
                 log_path: Path | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.repository = repository
        self.config_name = config_name
        self.extra_args = extra_args
        self.watchdog: StubWatchdog | None = None
        env = {**server_environment(), **Settings.environment(model=Path(settings.model_path).resolve(),
                                                              projector=Path(settings.projector_path).resolve())}
        super().__init__("tritonserver", self.command(), env, log_path or Path(".cache/triton/server.log"))

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.settings.triton_http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.settings.triton_grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.triton_metrics_port}/metrics"

    def command(self) -> list[str]:
        s = self.settings
        args = [
            str(pytriton_root() / "tritonserver" / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_directory()}",
            f"--http-port={s.triton_http_port}", f"--grpc-port={s.triton_grpc_port}",
            f"--metrics-port={s.triton_metrics_port}",
            "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
            "--exit-timeout-secs=10",
        ]
        if self.config_name:
            args.append(f"--model-config-name={self.config_name}")
        return [*args, *self.extra_args]

    def is_ready(self) -> bool:
        return http_ok(f"http://{self.http_url}/v2/models/{MODEL_NAME}/ready")

    def start(self) -> None:
        """Start tritonserver, first removing the shared memory that killed Triton processes left behind."""
        self.watchdog = None
        remove_stale_regions()
        super().start()

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait for the model, then watch its backend processes (see stack.stub_watchdog)."""
        self.wait_until(self.is_ready, timeout)
        if self.watchdog is None:
            assert self.process is not None
            self.watchdog = StubWatchdog(self.process.pid, self.http_url, MODEL_NAME)
            self.watchdog.start()

    def keep_alive(self) -> None:
        """Restart tritonserver if it exited on its own (the stub watchdog stops it when one of its
        backend processes died); raises if it cannot be brought back."""
        if self.running():
            return
        assert self.process is not None
        log.warning("tritonserver exited with status %s; restarting it", self.process.returncode)
        self.start()
        self.wait_ready()

    def log_tail(self, lines: int = 40) -> str:
        """Triton's own error lines when it has any (its status tables bury them), else the log's tail."""
        try:
            errors = [line for line in self.log_path.read_text(errors="replace").splitlines()
                      if line.startswith("error:") or "load failed for model" in line]
        except OSError:
            errors = []
        return "\n".join(errors[-5:]) if errors else super().log_tail(lines)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        super().stop(timeout)

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_environment()
    problem = missing_model_files(settings)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    server = TritonServer(settings)
    interrupt_on_stop_signals()
    print(f"starting Triton on the CPU config (log: {server.log_path})", flush=True)
    try:
        with server:
            print(f"model {MODEL_NAME} is READY\n  HTTP     http://{server.http_url}\n  gRPC     {server.grpc_url}\n"
                  f"  metrics  {server.metrics_url}\nCtrl-C stops it.", flush=True)
            while True:
                server.keep_alive()
                time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping Triton", flush=True)
    except (RuntimeError, TimeoutError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
