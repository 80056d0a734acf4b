"""The Kubernetes manifests (docker/kubernetes), checked with no cluster.

Every kustomization is rendered (tests/kustomize.py, compared with `kubectl kustomize` where kubectl is
installed), every object validated against the Kubernetes schemas (kubernetes-validate) and linted with
checkov, and every port, path, variable, image and metric name compared with the one place the project
defines it: the compose file, the Dockerfiles, the model configs, the adapter's settings and metrics. Last, the
Pod's own commands run here against a real tritonserver and adapter: Triton's probes, its loopback-only APIs,
the metric series the autoscaler's rules read, and the adapter's probe paths.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from adapter.app import create_app
from adapter.metrics import Metrics
from adapter.settings import AdapterSettings
from stack.settings import Settings
from stack.triton_server import MODEL_NAME
from tests.kustomize import KustomizeError, json_patch, render
from tests.test_docker import Dockerfile, pbtxt, pbtxt_parameter, with_defaults

pytestmark = pytest.mark.build

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
K8S = DOCKER / "kubernetes"
# What a user applies (base is only the overlays' common part).
KUSTOMIZATIONS = (".", "overlays/gpu", "overlays/cpu", "models", "monitoring")
OVERLAYS = ("gpu", "cpu")
# The oldest and the newest Kubernetes whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")
# Installed by `make install` in a virtualenv of its own (tests/checkov-requirements.txt).
CHECKOV = Path(sys.executable).parent.parent / "checkov" / "bin" / "checkov"
PROMETHEUS_ADAPTER_VALUES = K8S / "monitoring" / "prometheus-adapter-values.yaml"


class Manifests:
    """The objects one kustomization renders to, looked up by kind and name."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = objects

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        [found] = [o for o in self.objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
        return found

    def pod(self) -> dict[str, Any]:
        return self.one("Deployment")["spec"]["template"]["spec"]

    def container(self, name: str) -> dict[str, Any]:
        [found] = [c for c in self.pod()["containers"] if c["name"] == name]
        return found


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def adapter_variables() -> set[str]:
    return {AdapterSettings.variable(name) for name in AdapterSettings.model_fields}


def exec_url(probe: dict[str, Any]) -> str:
    """The URL an exec probe's Python one-liner opens."""
    return re.search(r"http://[^'\"]+", probe["exec"]["command"][-1]).group()


def quantity_bytes(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)?", text).groups()
    return int(number) * 1024 ** ("_KMGT".index(unit[0]) if unit else 0)


def compose_bytes(text: str) -> int:
    """Docker's sizes (1gb, 512m): binary units."""
    number, unit = re.fullmatch(r"(\d+)([kmg])b?", text.lower()).groups()
    return int(number) * 1024 ** " kmg".index(unit)


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on a TCP port, from /proc (IPv4, and IPv6 with IPv4-mapped
    addresses written as IPv4)."""
    addresses = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # /proc prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, width // 2, 4))
                text = socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, words)
                addresses.add(text.removeprefix("::ffff:"))
    return addresses


@pytest.fixture(scope="module")
def rendered() -> dict[str, Manifests]:
    return {path: Manifests(render(K8S / path)) for path in KUSTOMIZATIONS}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered: dict[str, Manifests]) -> Manifests:
    return rendered[f"overlays/{request.param}"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return with_defaults(yaml.safe_load((DOCKER / "compose.yaml").read_text()))


@pytest.fixture(scope="module")
def adapter_rules() -> dict[str, dict]:
    """prometheus-adapter's custom rules, by the metric name they serve."""
    rules = yaml.safe_load(PROMETHEUS_ADAPTER_VALUES.read_text())["rules"]["custom"]
    return {rule["name"]["as"]: rule for rule in rules}


def test_every_kustomization_is_rendered():
    found = {str(p.parent.relative_to(K8S)) for p in K8S.rglob("kustomization.yaml")}
    assert found == {*KUSTOMIZATIONS, "base"}


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_python_rendering_matches_kubectl_kustomize(path, rendered):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the manifests render in Python only")
    output = subprocess.run([kubectl, "kustomize", str(K8S / path)], capture_output=True, text=True, timeout=60,
                            check=True).stdout
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(output)}
    assert by_name == {(o["kind"], o["metadata"]["name"]): o for o in rendered[path].objects}


def test_the_default_is_the_gpu_overlay(rendered):
    assert rendered["."].objects == rendered["overlays/gpu"].objects


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(KustomizeError, match="commonLabels"):
        render(tmp_path)
    document = {"spec": {"containers": [{"name": "triton"}]}}
    with pytest.raises(KustomizeError, match="test failed"):
        json_patch(document, {"op": "test", "path": "/spec/containers/0/name", "value": "adapter"})
    json_patch(document, {"op": "add", "path": "/spec/containers/-", "value": {"name": "adapter"}})
    json_patch(document, {"op": "replace", "path": "/spec/containers/0/name", "value": "x"})
    assert document == {"spec": {"containers": [{"name": "x"}, {"name": "adapter"}]}}


def test_all_objects_share_one_namespace(rendered):
    namespaces = {o["metadata"].get("namespace") for m in rendered.values() for o in m.objects}
    assert namespaces == {"jina-reranker-v3"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_objects_validate_against_the_kubernetes_schemas(rendered, version):
    checked = 0
    for manifests in rendered.values():
        for item in manifests.objects:
            if item["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # a custom resource: checked against the Service it scrapes, below
            kubernetes_validate.validate(item, version, strict=True)
            checked += 1
    assert checked >= 15
    misspelt = json.loads(json.dumps(rendered["overlays/gpu"].one("Deployment")))
    misspelt["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, version, strict=True)


def test_checkov_passes_and_every_accepted_finding_is_justified(rendered, tmp_path):
    assert CHECKOV.is_file(), f"{CHECKOV} is missing: make install (tests/checkov-requirements.txt)"
    scanned = tmp_path / "rendered"
    scanned.mkdir()
    skips = set()
    for path, manifests in rendered.items():
        (scanned / f"{path.replace('/', '-').strip('.') or 'default'}.yaml").write_text(
            yaml.safe_dump_all(manifests.objects))
        for item in manifests.objects:
            for key, value in item["metadata"].get("annotations", {}).items():
                if key.startswith("checkov.io/skip"):
                    check, _, reason = value.partition("=")
                    assert len(reason.split()) >= 5, f"{check}: say why the finding is accepted"
                    skips.add((item["kind"], check))
    # A control: a privileged container as root, which checkov must fail.
    control = tmp_path / "control"
    control.mkdir()
    (control / "bad.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad", "namespace": "x"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]}}))
    reports = {}
    for folder in (scanned, control):
        result = subprocess.run([str(CHECKOV), "--framework", "kubernetes", "--directory", str(folder),
                                 "--output", "json", "--skip-download"], capture_output=True, text=True,
                                timeout=300, env={**os.environ, "LOG_LEVEL": "ERROR"})
        reports[folder] = json.loads(result.stdout)
    report = reports[scanned]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 200
    used = {(c["resource"].split(".")[0], c["check_id"]) for c in report["results"]["skipped_checks"]}
    assert used == skips, "every accepted finding is one checkov reports, and no other is skipped"
    control_failed = {c["check_id"] for c in reports[control]["results"]["failed_checks"]}
    assert {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_22"} <= control_failed  # privileged, escalation, writable root


def test_images_are_the_compose_files_at_the_project_version(rendered, compose):
    """The CPU overlay runs the compose file's CPU Triton image (docker/triton-cpu.Dockerfile), everything else the
    same images as compose."""
    version = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    services = compose["services"]
    for path, manifests in rendered.items():
        workloads = [o for o in manifests.objects if o["kind"] in ("Deployment", "Job")]
        images = {c["name"]: c["image"] for o in workloads for c in o["spec"]["template"]["spec"]["containers"]}
        triton = services["triton-cpu" if path == "overlays/cpu" else "triton"]["image"]
        expected = {"triton": f"{triton}:{version}", "adapter": f"{services['adapter']['image']}:{version}",
                    "download": f"{services['download']['image']}:{version}"}
        assert images == {name: image for name, image in expected.items() if name in images}, path


def test_triton_apis_never_leave_the_pod(overlay):
    triton, adapter = overlay.container("triton"), overlay.container("adapter")
    ports = Settings()
    assert {"--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=0.0.0.0"} <= set(
        triton["args"])
    assert [(p["name"], p["containerPort"]) for p in triton["ports"]] == [("triton-metrics", ports.triton_metrics_port)]
    for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready"),
                        ("livenessProbe", "/v2/health/live")):
        assert exec_url(triton[probe]) == f"http://127.0.0.1:{ports.triton_http_port}{path}"
    assert env(adapter)["TRITON_URL"] == f"127.0.0.1:{ports.triton_grpc_port}"
    assert "TRITON_PROTOCOL" not in env(adapter)
    assert AdapterSettings().triton_protocol == "grpc"
    exposed = {p["targetPort"] for o in overlay.objects if o["kind"] == "Service" for p in o["spec"]["ports"]}
    assert exposed == {"http", "triton-metrics"}


def test_the_adapter_is_set_by_its_own_variables(overlay):
    adapter = overlay.container("adapter")
    variables = env(adapter)
    assert set(variables) <= adapter_variables()
    assert variables["API_KEY"] == {"secretKeyRef": {"name": "jina-reranker-v3", "key": "API_KEY"}}
    [port] = adapter["ports"]
    assert port == {"name": "http", "containerPort": int(variables["ADAPTER_PORT"])}
    assert int(variables["ADAPTER_PORT"]) == AdapterSettings().adapter_port, "the local stack's port"
    image_environment = Dockerfile(DOCKER / "adapter.Dockerfile").values("ENV")
    assert "ADAPTER_HOST" not in variables
    assert image_environment["ADAPTER_HOST"] == "0.0.0.0", "the kubelet probes the Pod's address"
    old_port = int(image_environment["ADAPTER_PORT"])
    [api] = overlay.one("Service", "jina-reranker-v3")["spec"]["ports"]
    assert (api["port"], api["targetPort"]) == (old_port, "http"), "clients keep the old service's port"
    routes = {route.path for route in create_app(AdapterSettings()).routes}
    assert {adapter["readinessProbe"]["httpGet"]["path"], adapter["livenessProbe"]["httpGet"]["path"]} == {
        "/ready", "/health"} <= routes
    assert {p["httpGet"]["port"] for p in (adapter["readinessProbe"], adapter["livenessProbe"])} == {"http"}


def test_triton_variables_are_the_entrypoints(overlay, compose):
    entrypoint = (DOCKER / "triton-entrypoint.sh").read_text()
    variables = env(overlay.container("triton"))
    assert all(re.search(rf"\${{{name}[:}}]", entrypoint) for name in variables)
    config = variables.get("TRITON_MODEL_CONFIG", "")
    expected = compose["services"]["triton-cpu" if config else "triton"].get("environment", {})
    assert config == expected.get("TRITON_MODEL_CONFIG", "")


def test_gpu_and_cpu_overlays_differ_where_they_should(rendered, compose):
    gpu, cpu = rendered["overlays/gpu"], rendered["overlays/cpu"]
    gpu_resources, cpu_resources = gpu.container("triton")["resources"], cpu.container("triton")["resources"]
    assert gpu_resources["requests"]["nvidia.com/gpu"] == gpu_resources["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in json.dumps(cpu.objects)
    assert env(cpu.container("triton")) == {"TRITON_MODEL_CONFIG": "cpu"}
    assert cpu_resources["requests"] == cpu_resources["limits"], "Guaranteed: whole cores under the static policy"
    # Room over Triton's peak RSS with the CPU config, as `make bench` last measured it.
    measured = json.loads((ROOT / "perf/results/cpu-latest.json").read_text())["triton_peak_rss"]["total_bytes"]
    assert quantity_bytes(cpu_resources["limits"]["memory"]) >= measured * 1.1
    assert int(gpu_resources["limits"]["cpu"]) >= int(pbtxt_parameter(pbtxt("config.pbtxt"), "n_threads"))
    for manifests in (gpu, cpu):
        for container in manifests.pod()["containers"]:
            assert {"requests", "limits"} <= set(container["resources"]), container["name"]
            assert quantity_bytes(container["resources"]["requests"]["memory"]) <= quantity_bytes(
                container["resources"]["limits"]["memory"])


def test_model_files_come_read_only_from_the_volume_the_job_fills(rendered, overlay, compose):
    models = str(Path(pbtxt_parameter(pbtxt("config.pbtxt"), "model_path")).parent)
    assert models == str(Path(pbtxt_parameter(pbtxt("configs/cpu.pbtxt"), "model_path")).parent)
    claim = rendered["models"].one("PersistentVolumeClaim")["metadata"]["name"]
    job_pod = rendered["models"].one("Job")["spec"]["template"]["spec"]
    [download] = job_pod["containers"]
    download_image = Dockerfile(DOCKER / "download.Dockerfile")
    assert not {"command", "args"} & set(download), "the image's own command"
    assert json.loads(download_image.args("CMD")[0])[-2:] == ["--dir", models]
    for pod, container, read_only in ((overlay.pod(), overlay.container("triton"), True),
                                      (job_pod, download, False)):
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == models]
        assert mount.get("readOnly", False) is read_only
        [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["persistentVolumeClaim"]["claimName"] == claim
        assert volume["persistentVolumeClaim"].get("readOnly", False) is read_only
    assert "volumeMounts" not in overlay.container("adapter") or all(
        m["mountPath"] != models for m in overlay.container("adapter")["volumeMounts"])
    assert compose["services"]["download"]["volumes"] == [f"models:{models}"]


def test_pods_run_as_the_images_user_with_nothing_more(rendered):
    uids = {re.search(r"useradd [^&]*--uid (\d+)", run).group(1) for name in ("triton", "adapter", "download")
            for run in Dockerfile(DOCKER / f"{name}.Dockerfile").args("RUN") if "useradd" in run}
    [uid] = uids
    for manifests in rendered.values():
        for item in manifests.objects:
            if item["kind"] not in ("Deployment", "Job"):
                continue
            pod = item["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == int(uid)
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["automountServiceAccountToken"] is False
            for container in pod["containers"]:
                context = container["securityContext"]
                assert context == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                   "capabilities": {"drop": ["ALL"]}}
                # /tmp is each image's one place its user may write; a volume of its own per container.
                [tmp] = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
                [volume] = [v for v in pod["volumes"] if v["name"] == tmp]
                assert "emptyDir" in volume
    mounts = [m["name"] for c in rendered["overlays/gpu"].pod()["containers"] for m in c["volumeMounts"]
              if m["mountPath"] == "/tmp"]
    assert len(set(mounts)) == len(mounts) == 2


def test_shared_memory_matches_the_compose_file(overlay, compose):
    [mount] = [m for m in overlay.container("triton")["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    [volume] = [v for v in overlay.pod()["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"]["medium"] == "Memory"
    assert quantity_bytes(volume["emptyDir"]["sizeLimit"]) == compose_bytes(compose["services"]["triton"]["shm_size"])


def test_stopping_a_pod_lets_in_flight_requests_finish(overlay):
    """The adapter drains its requests (each bounded by REQUEST_TIMEOUT_S) while Triton still serves them; then
    Triton gets its own exit timeout; the grace period covers both."""
    triton, adapter = overlay.container("triton"), overlay.container("adapter")

    def sleep(container: dict[str, Any]) -> int:
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        return int(command[1])

    timeout_s = AdapterSettings().request_timeout_s
    [exit_timeout] = [int(a.partition("=")[2]) for a in triton["args"] if a.startswith("--exit-timeout-secs=")]
    assert sleep(adapter) >= 5, "time for the Service to drop the Pod from its endpoints"
    assert sleep(triton) >= sleep(adapter) + timeout_s + 1
    assert overlay.pod()["terminationGracePeriodSeconds"] >= sleep(triton) + exit_timeout + 5


def test_liveness_does_not_kill_a_busy_pod(overlay):
    for name in ("triton", "adapter"):
        container = overlay.container(name)
        live, ready = container["livenessProbe"], container["readinessProbe"]
        assert live["periodSeconds"] * live["failureThreshold"] >= 120
        assert live["timeoutSeconds"] >= 5
        assert live != ready, "alive is not ready: a loading or saturated model must not restart the Pod"
    assert overlay.container("triton")["startupProbe"]["failureThreshold"] * overlay.container(
        "triton")["startupProbe"]["periodSeconds"] >= 600


def test_network_policy_admits_the_api_and_scraping_only(overlay):
    policy = overlay.one("NetworkPolicy")
    assert policy["spec"]["podSelector"] == overlay.one("Deployment")["spec"]["selector"]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["spec"]["egress"] == []
    open_rules = [rule for rule in policy["spec"]["ingress"] if "from" not in rule]
    assert [[p["port"] for p in rule["ports"]] for rule in open_rules] == [["http"]]
    [monitoring] = [rule for rule in policy["spec"]["ingress"] if "from" in rule]
    assert [p["port"] for p in monitoring["ports"]] == ["triton-metrics"]
    assert all("namespaceSelector" in source for source in monitoring["from"])
    assert overlay.one("PodDisruptionBudget")["spec"]["selector"] == policy["spec"]["podSelector"]
    for service in (o for o in overlay.objects if o["kind"] == "Service"):
        assert service["spec"]["selector"] == policy["spec"]["podSelector"]["matchLabels"]


def test_service_monitor_scrapes_both_metrics_endpoints(rendered, overlay):
    monitor = rendered["monitoring"].one("ServiceMonitor")
    [service] = [o for o in overlay.objects if o["kind"] == "Service"
                 and monitor["spec"]["selector"]["matchLabels"].items() <= o["metadata"]["labels"].items()]
    assert service["spec"]["clusterIP"] == "None"
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == set(ports) == {"http", "triton-metrics"}
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}
    assert "/metrics" in {route.path for route in create_app(AdapterSettings()).routes}
    assert ports["triton-metrics"]["port"] == Settings().triton_metrics_port


def test_autoscaler_metrics_are_served_by_the_rules(overlay, adapter_rules):
    hpa = overlay.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": overlay.one("Deployment")["metadata"]["name"]}
    targets = {m["pods"]["metric"]["name"]: float(m["pods"]["target"]["averageValue"]) for m in hpa["spec"]["metrics"]}
    assert list(targets) == ["triton_queue_duration_avg_us", "rerank_in_flight"], "queue time first, the fallback"
    assert set(targets) == set(adapter_rules)
    assert re.search(r"^# TYPE rerank_in_flight gauge$", Metrics().render().decode(), re.MULTILINE)
    assert targets["triton_queue_duration_avg_us"] < AdapterSettings().request_timeout_s * 1e6 / 5
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_in_flight_targets_follow_the_model_configs(rendered):
    def target(manifests: Manifests) -> float:
        [metric] = [m for m in manifests.one("HorizontalPodAutoscaler")["spec"]["metrics"]
                    if m["pods"]["metric"]["name"] == "rerank_in_flight"]
        return float(metric["pods"]["target"]["averageValue"])

    [cpu_instances] = re.findall(r"count:\s*(\d+),\s*kind:\s*KIND_CPU", pbtxt("configs/cpu.pbtxt"))
    assert target(rendered["overlays/cpu"]) == int(cpu_instances)
    batch_sizes = re.search(r"preferred_batch_size:\s*\[([^\]]*)\]", pbtxt("config.pbtxt")).group(1)
    assert target(rendered["overlays/gpu"]) == min(int(b) for b in batch_sizes.split(","))


def test_prometheus_adapter_rules_read_labelled_series(adapter_rules):
    for name, rule in adapter_rules.items():
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
        assert re.fullmatch(rule["name"]["matches"], series), name
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]
        assert "<<.GroupBy>>" in rule["metricsQuery"]


def test_the_pods_commands_work_against_real_servers(tiny_q8, rendered, adapter_rules, tmp_path):
    """Triton's container as the CPU overlay runs it (entrypoint, arguments, variables), here with the pip-installed
    tritonserver on free ports: its probes pass, its APIs listen on loopback only, and its metrics carry every
    series the autoscaler's rules read. Then the adapter with the Pod's variables: its probe paths answer without
    the API key, and /metrics carries the in-flight gauge."""
    from stack.adapter_server import AdapterServer
    from stack.processes import ManagedProcess, free_port
    from stack.triton_server import backend_directory, pytriton_root, server_environment

    cpu = rendered["overlays/cpu"]
    triton, adapter = cpu.container("triton"), cpu.container("adapter")
    defaults = Settings()
    ports = {"HTTP": free_port(), "GRPC": free_port(), "METRICS": free_port()}
    environment = server_environment()
    environment.update({
        "PATH": f"{pytriton_root() / 'tritonserver' / 'bin'}{os.pathsep}{environment['PATH']}",
        "MODEL_REPOSITORY": str(ROOT / "model_repository"), "STUB_WATCHDOG": str(ROOT / "stack" / "stub_watchdog.py"),
        "RERANKER_MODEL": str(tiny_q8[0]), "RERANKER_PROJECTOR": str(tiny_q8[1]), **env(triton),
        **{f"TRITON_{name}_PORT": str(port) for name, port in ports.items()}})
    server = ManagedProcess("entrypoint", ["sh", str(DOCKER / "triton-entrypoint.sh"), *triton["args"],
                                           f"--backend-directory={backend_directory()}"], environment,
                            tmp_path / "entrypoint.log")

    def probe(name: str) -> bool:
        command = [part.replace(f":{defaults.triton_http_port}/", f":{ports['HTTP']}/")
                   for part in triton[name]["exec"]["command"]]
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0

    server.start()
    try:
        assert not probe("readinessProbe")
        server.wait_until(lambda: probe("startupProbe"), 120)
        assert probe("readinessProbe")
        assert probe("livenessProbe")
        assert listening_addresses(ports["HTTP"]) == listening_addresses(ports["GRPC"]) == {"127.0.0.1"}
        assert listening_addresses(ports["METRICS"]) == {"0.0.0.0"}
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{ports['METRICS']}/metrics", timeout=10).read().decode()
        series = {s for rule in adapter_rules.values() for s in re.findall(r"\b(nv_\w+)\{", rule["metricsQuery"])}
        assert series == {"nv_inference_queue_duration_us", "nv_inference_request_success"}
        for name in series:
            assert re.search(rf'^{name}\{{[^}}]*model="{MODEL_NAME}"', metrics, re.MULTILINE), name

        variables = {k: v for k, v in env(adapter).items() if k not in ("ADAPTER_PORT", "TRITON_URL")}
        variables["API_KEY"] = "k8s-test-key"  # from the Secret in a cluster
        host, _, _ = env(adapter)["TRITON_URL"].partition(":")
        server_adapter = AdapterServer(free_port(), f"{host}:{ports['GRPC']}", tmp_path / "adapter.log",
                                       extra_env=variables)
        server_adapter.start()
        try:
            server_adapter.wait_ready()  # GET /ready with no Authorization header, as the kubelet sends it
            for probe_name in ("readinessProbe", "livenessProbe"):
                path = adapter[probe_name]["httpGet"]["path"]
                assert urllib.request.urlopen(f"{server_adapter.url}{path}", timeout=10).status == 200
            adapter_metrics = urllib.request.urlopen(f"{server_adapter.url}/metrics", timeout=10).read().decode()
            assert re.search(r"^rerank_in_flight 0\.0$", adapter_metrics, re.MULTILINE)
        finally:
            server_adapter.stop()
    finally:
        server.stop()

