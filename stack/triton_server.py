"""Run the pip-installed Triton server (from the nvidia-pytriton wheel) on this machine, without Docker.

``make triton`` (``python -m stack.triton_server``) starts it on the CPU config, waits until the
model is READY, prints the URLs and stops cleanly on Ctrl-C. Tests use ``TritonServer`` directly.

The recipe (see ../shared/notes/environment.md): a backend folder holding the Python backend and
the stub built for this interpreter; ``LD_LIBRARY_PATH`` with the wheel's libraries and
libpython; and this virtualenv's ``bin/`` first on ``PATH``, because the stub embeds the first
``python3`` it finds there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

from stack.settings import Settings, missing_model_files

MODEL_NAME = "jina_reranker_v3"
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
            shutil.copy2(path, dest)
    return target.parent


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    libs = [sysconfig.get_config_var("LIBDIR"), str(pytriton_root().parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


class TritonServer:
    """A tritonserver process bound to loopback; a context manager that always stops it."""

    def __init__(self, settings: Settings, repository: Path = REPOSITORY, config_name: str | None = "cpu",
                 log_path: Path | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.repository = repository
        self.config_name = config_name
        self.log_path = log_path or Path(".cache/triton/server.log")
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

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

    def start(self) -> None:
        env = server_environment()
        env["RERANKER_MODEL"] = str(Path(self.settings.model).resolve())
        env["RERANKER_PROJECTOR"] = str(Path(self.settings.projector).resolve())
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()

    def is_ready(self) -> bool:
        try:
            url = f"http://{self.http_url}/v2/models/{MODEL_NAME}/ready"
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll readiness; fail at once, with the log's tail, if the server exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited before the model was ready:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"model not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

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
    settings = Settings.from_environment()
    problem = missing_model_files(settings)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    server = TritonServer(settings)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    print(f"starting Triton on the CPU config (log: {server.log_path})", flush=True)
    try:
        with server:
            print(f"model {MODEL_NAME} is READY\n  HTTP     http://{server.http_url}\n  gRPC     {server.grpc_url}\n"
                  f"  metrics  {server.metrics_url}\nCtrl-C stops it.", flush=True)
            server.process.wait()
    except KeyboardInterrupt:
        print("stopping Triton", flush=True)
    except (RuntimeError, TimeoutError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
