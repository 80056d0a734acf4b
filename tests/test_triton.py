"""A real tritonserver with the Python-backend model, over HTTP and gRPC."""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import triton_contract
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from rerank_engine import Reranker
from stack.triton_server import MODEL_NAME, REPOSITORY
from tests.conftest import smallest_context
from tests.servers import repository_copy, start_triton, wait_for

pytestmark = pytest.mark.integration

QUERY = "Which river is the longest?"
DOCS = ["The Nile is about 6,650 km long.", "Bread is baked from dough.", "The Amazon carries the most water.",
        "Rivers flow downhill.", ""]
PROTOCOLS = {"http": httpclient, "grpc": grpcclient}


@pytest.fixture(scope="module", params=["q8_0", "f32"])
def served(request, make_model, tmp_path_factory):
    """(server, direct engine with the served config, model paths) for each dtype."""
    paths = make_model(request.param)
    server = start_triton(paths, tmp_path_factory.mktemp("triton") / "server.log")
    try:
        with client(server, "http") as connection:
            config = connection.get_model_config(MODEL_NAME)
        engine = Reranker(triton_contract.engine_config(
            config["parameters"], "KIND_CPU", 0,
            {"RERANKER_MODEL": str(paths[0]), "RERANKER_PROJECTOR": str(paths[1])}))
        yield server, engine, paths
    finally:
        server.stop()


@contextlib.contextmanager
def client(server, protocol: str):
    """A client that is closed after use: an open keep-alive connection delays Triton's shutdown."""
    url = server.http_url if protocol == "http" else server.grpc_url
    connection = PROTOCOLS[protocol].InferenceServerClient(url)
    try:
        yield connection
    finally:
        connection.close()


def statistics(server) -> dict:
    with client(server, "http") as connection:
        return connection.get_inference_statistics(MODEL_NAME)["model_stats"][0]


def executions_for(server, before: dict, requests: int) -> int:
    """How many execute() calls ran ``requests`` requests sent after ``before`` (the model's statistics then).
    Triton counts an execution when execute() returns, which is after the response sender has sent its
    answers: a client holding every answer can still read the statistics from before, so wait for them."""
    counts: dict = {}

    def counted() -> bool:
        counts.update(statistics(server))
        return counts["inference_count"] - before["inference_count"] >= requests

    wait_for(counted)
    return counts["execution_count"] - before["execution_count"]


def infer(server, protocol: str, query: str | bytes, docs: list, outputs=("SCORES", "TOKENS"),
          instruction: str | None = None, **kwargs):
    module = PROTOCOLS[protocol]

    def text_input(name: str, items: list) -> object:
        array = np.array([[i.encode() if isinstance(i, str) else i for i in items]], dtype=np.object_)
        tensor = module.InferInput(name, list(array.shape), "BYTES")
        tensor.set_data_from_numpy(array)
        return tensor

    inputs = [text_input("QUERY", [query]), text_input("DOCUMENTS", docs)]
    if instruction is not None:
        inputs.append(text_input("INSTRUCTION", [instruction]))
    requested = [module.InferRequestedOutput(name) for name in outputs]
    with client(server, protocol) as connection:
        return connection.infer(MODEL_NAME, inputs, outputs=requested, **kwargs)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_scores_equal_the_engine(served, protocol):
    server, engine, _ = served
    response = infer(server, protocol, QUERY, DOCS)
    direct = engine.rerank(QUERY, DOCS)
    assert response.as_numpy("SCORES").shape == (1, len(DOCS))
    np.testing.assert_allclose(response.as_numpy("SCORES")[0], direct.scores, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(response.as_numpy("TOKENS"), [[direct.tokens]])
    assert response.as_numpy("TOKENS").dtype == np.int64
    assert response.as_numpy("DOC_EMBEDDINGS") is None


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_doc_embeddings_when_requested(served, protocol):
    server, engine, _ = served
    response = infer(server, protocol, QUERY, DOCS, outputs=("SCORES", "DOC_EMBEDDINGS"))
    embeddings = response.as_numpy("DOC_EMBEDDINGS")
    direct = engine.rerank(QUERY, DOCS, return_embeddings=True)
    assert embeddings.shape == (1, len(DOCS), engine.projector.out_features)
    np.testing.assert_allclose(embeddings[0], direct.doc_embeddings, rtol=1e-5, atol=1e-6)
    assert response.as_numpy("TOKENS") is None


def test_instruction_input(served):
    server, engine, _ = served
    response = infer(server, "grpc", QUERY, DOCS, instruction="Prefer passages with numbers.")
    direct = engine.rerank(QUERY, DOCS, instruction="Prefer passages with numbers.")
    np.testing.assert_allclose(response.as_numpy("SCORES")[0], direct.scores, rtol=0, atol=1e-6)


def test_several_rows_in_one_request(served):
    server, engine, _ = served
    queries = np.array([[b"first query"], [b"second query"]], dtype=np.object_)
    docs = np.array([[b"a", b"b", b"c"], [b"d", b"e", b"f"]], dtype=np.object_)
    inputs = []
    for name, array in (("QUERY", queries), ("DOCUMENTS", docs)):
        tensor = httpclient.InferInput(name, list(array.shape), "BYTES")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with client(server, "http") as connection:
        scores = connection.infer(MODEL_NAME, inputs).as_numpy("SCORES")
    for row in range(2):
        direct = engine.rerank(queries[row, 0].decode(), [d.decode() for d in docs[row]]).scores
        np.testing.assert_allclose(scores[row], direct, rtol=0, atol=1e-6)


def test_concurrent_clients_get_their_own_answers(served):
    """16 clients x 5 requests, each with its own documents and document count."""
    server, engine, _ = served
    jobs = [(c, r, f"query {c}-{r} about rivers", [f"client {c} request {r} passage {d}: the river {d * c}"
                                                    for d in range(1 + (c + r) % 7)])
            for c in range(16) for r in range(5)]
    expected = {(c, r): engine.rerank(q, docs) for c, r, q, docs in jobs}

    def run_client(c: int) -> list:
        protocol = "grpc" if c % 2 else "http"
        return [((c, r), infer(server, protocol, q, docs)) for cc, r, q, docs in jobs if cc == c]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = [a for batch in pool.map(run_client, range(16)) for a in batch]
    assert len(answers) == 80
    for key, response in answers:
        np.testing.assert_allclose(response.as_numpy("SCORES")[0], expected[key].scores, rtol=0, atol=1e-6)
        assert response.as_numpy("TOKENS")[0, 0] == expected[key].tokens


def bytes_input(name: str, array: np.ndarray, datatype: str = "BYTES"):
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


MALFORMED = {
    "no documents": ([("QUERY", np.array([[b"q"]], dtype=np.object_)),
                      ("DOCUMENTS", np.empty((1, 0), dtype=np.object_))], "DOCUMENTS is empty"),
    "invalid utf-8": ([("QUERY", np.array([[b"q"]], dtype=np.object_)),
                       ("DOCUMENTS", np.array([[b"ok", b"\xff\xfe bad"]], dtype=np.object_))],
                      r"DOCUMENTS\[1\] is not valid UTF-8"),
    "missing query": ([("DOCUMENTS", np.array([[b"a"]], dtype=np.object_))], "QUERY"),
    "wrong dtype": ([("QUERY", np.array([[1]], dtype=np.int32)),
                     ("DOCUMENTS", np.array([[b"a"]], dtype=np.object_))], "QUERY"),
    "wrong shape": ([("QUERY", np.array([[b"a", b"b"]], dtype=np.object_)),
                     ("DOCUMENTS", np.array([[b"a"]], dtype=np.object_))], "QUERY"),
    "empty query": ([("QUERY", np.array([[b"  "]], dtype=np.object_)),
                     ("DOCUMENTS", np.array([[b"a"]], dtype=np.object_))], "query is empty"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_requests_get_an_error_and_the_server_keeps_serving(served, case):
    server, engine, _ = served
    tensors, message = MALFORMED[case]
    inputs = [bytes_input(name, array, "INT32" if array.dtype == np.int32 else "BYTES") for name, array in tensors]
    with client(server, "http") as connection, pytest.raises(InferenceServerException, match=message) as info:
        connection.infer(MODEL_NAME, inputs)
    assert info.value.status() == "400"
    np.testing.assert_allclose(infer(server, "http", QUERY, DOCS).as_numpy("SCORES")[0],
                               engine.rerank(QUERY, DOCS).scores, rtol=0, atol=1e-6)


def test_malformed_request_in_a_dynamic_batch_fails_alone(make_model, tmp_path):
    """With a long queue delay concurrent requests share one execute(); the bad one fails alone."""
    paths = make_model("q8_0")
    repository = repository_copy(tmp_path / "repo", replace={
        "max_queue_delay_microseconds: 100000": "max_queue_delay_microseconds: 5000000\n  preferred_batch_size: [ 6 ]"})
    server = start_triton(paths, tmp_path / "server.log", repository=repository)
    try:
        good = [(f"query {i}", [f"document {i}.{d}" for d in range(1 + i)]) for i in range(4)]
        bad = [[("QUERY", np.array([[b"q"]], dtype=np.object_)),
                ("DOCUMENTS", np.array([[b"\xc3\x28"]], dtype=np.object_))],
               [("QUERY", np.array([[b"q"]], dtype=np.object_)), ("DOCUMENTS", np.empty((1, 0), dtype=np.object_))]]

        def send_bad(tensors):
            with client(server, "http") as connection, pytest.raises(InferenceServerException) as info:
                connection.infer(MODEL_NAME, [bytes_input(n, a) for n, a in tensors])
            return str(info.value)

        before = statistics(server)
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            good_futures = [pool.submit(infer, server, "http", q, d) for q, d in good]
            bad_futures = [pool.submit(send_bad, t) for t in bad]
            answers = [f.result() for f in good_futures]
            errors = [f.result() for f in bad_futures]
        assert executions_for(server, before, len(good) + len(bad)) < len(good) + len(bad), \
            "requests should have been batched"
        with client(server, "http") as connection:
            parameters = connection.get_model_config(MODEL_NAME)["parameters"]
        assert "not valid UTF-8" in errors[0]
        assert "DOCUMENTS is empty" in errors[1]
        engine = Reranker(triton_contract.engine_config(
            parameters, "KIND_CPU", 0,
            {"RERANKER_MODEL": str(paths[0]), "RERANKER_PROJECTOR": str(paths[1])}))
        for (q, d), response in zip(good, answers, strict=True):
            np.testing.assert_allclose(response.as_numpy("SCORES")[0], engine.rerank(q, d).scores, rtol=0, atol=1e-6)
    finally:
        server.stop()


def test_metadata_and_config_describe_the_contract(served):
    server, _, _ = served
    with client(server, "http") as connection:
        metadata = connection.get_model_metadata(MODEL_NAME)
    inputs = {t["name"]: (t["datatype"], t["shape"]) for t in metadata["inputs"]}
    outputs = {t["name"]: (t["datatype"], t["shape"]) for t in metadata["outputs"]}
    assert inputs == {"QUERY": ("BYTES", [-1, 1]), "DOCUMENTS": ("BYTES", [-1, -1]),
                      "INSTRUCTION": ("BYTES", [-1, 1])}
    assert outputs == {"SCORES": ("FP32", [-1, -1]), "TOKENS": ("INT64", [-1, 1]), "SCORED": ("BOOL", [-1, -1]),
                       "DOC_EMBEDDINGS": ("FP32", [-1, -1, -1])}
    with client(server, "grpc") as connection:
        config = connection.get_model_config(MODEL_NAME).config
    assert config.backend == "python"
    assert config.max_batch_size >= 8
    assert config.HasField("dynamic_batching")
    assert {i.name: (i.allow_ragged_batch, i.optional) for i in config.input} == {
        "QUERY": (False, False), "DOCUMENTS": (True, False), "INSTRUCTION": (False, True)}
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_warmup_ran(served):
    server, _, _ = served
    log = server.log_path.read_text()
    assert re.search(r"instance jina_reranker_v3_0_0 is running warmup sample 'two_documents'", log)
    assert server.is_ready()


def test_start_up_log_says_which_llama_cpp_cpu_backend_runs(served):
    """make install builds for this CPU alone (the images' dispatch builds name their variant instead:
    tests/test_docker_live.py)."""
    server, _, _ = served
    log = server.log_path.read_text()
    assert re.search(r"jina_reranker_v3_0_0: serving .* llama\.cpp CPU backend: native build", log)


def metric(server, name: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf'^{name}{{model="{MODEL_NAME}",version="1"}} (\S+)$', text, re.M)
    assert match, f"{name} not in metrics"
    return float(match.group(1))


def test_metrics_count_inferences(served):
    server, _, _ = served
    before = metric(server, "nv_inference_request_success")
    for protocol in ("http", "grpc", "http"):
        infer(server, protocol, QUERY, DOCS)
    # Triton publishes counters on its own schedule: wait for the count, then check it is exact.
    wait_for(lambda: metric(server, "nv_inference_request_success") >= before + 3)
    assert metric(server, "nv_inference_request_success") == before + 3


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_gpu_config_parses_and_matches_the_cpu_contract():
    gpu = parse_config(REPOSITORY / MODEL_NAME / "config.pbtxt")
    cpu = parse_config(REPOSITORY / MODEL_NAME / "configs" / "cpu.pbtxt")
    assert [g.kind for g in gpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert gpu.instance_group[0].count >= 1
    assert gpu.backend == cpu.backend == "python"
    assert gpu.name == cpu.name == MODEL_NAME
    assert gpu.input == cpu.input
    assert gpu.output == cpu.output
    assert gpu.max_batch_size == cpu.max_batch_size
    assert gpu.dynamic_batching.max_queue_delay_microseconds > 0
    assert gpu.model_warmup == cpu.model_warmup
    params = {k: v.string_value for k, v in gpu.parameters.items()}
    assert params["n_gpu_layers"] == "-1"
    assert params["flash_attn"] == "true"
    for config in (gpu, cpu):  # every parameter is one the engine knows, with a valid value
        triton_contract.engine_config({k: {"string_value": v.string_value} for k, v in config.parameters.items()},
                                      "KIND_CPU", 0, {})


def test_launcher_names_a_missing_model_file_before_starting(tmp_path):
    missing = tmp_path / "nope.gguf"
    result = subprocess.run([sys.executable, "-m", "stack.triton_server"], capture_output=True, text=True,
                            env={"RERANKER_MODEL": str(missing), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"RERANKER_MODEL: no file at {missing}"
    assert "starting Triton" not in result.stdout


def test_a_query_and_instruction_at_their_limits_are_scored_in_a_batch(make_model, tmp_path):
    """At the smallest n_ctx the engine accepts, a request whose query and instruction are at their limits
    is scored, and so are the requests batched with it (the instruction's wrapper once went uncounted: its
    ValueError failed the whole batch with "[internal] rerank failed")."""
    paths = make_model("q8_0")
    limits = {"max_query_tokens": 48, "max_doc_tokens": 64}
    repository = repository_copy(tmp_path / "repo", parameters={
        "n_ctx": str(smallest_context(paths, **limits)), **{k: str(v) for k, v in limits.items()}}, replace={
        "max_queue_delay_microseconds: 100000": "max_queue_delay_microseconds: 5000000\n  preferred_batch_size: [ 4 ]"})
    server = start_triton(paths, tmp_path / "server.log", repository=repository)
    try:
        long_text = " ".join(["rivers and seas"] * 60)
        requests = [(f"query {i}", [f"document {i}.{d}" for d in range(2)], None) for i in range(3)]
        requests.append((long_text, [long_text, "bread"], long_text))
        before = statistics(server)
        with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
            futures = [pool.submit(infer, server, "http", q, d, ("SCORES", "SCORED"), instruction=i)
                       for q, d, i in requests]
            answers = [f.result() for f in futures]
        assert executions_for(server, before, len(requests)) < len(requests), "requests should have been batched"
        with client(server, "http") as connection:
            parameters = connection.get_model_config(MODEL_NAME)["parameters"]
        engine = Reranker(triton_contract.engine_config(
            parameters, "KIND_CPU", 0, {"RERANKER_MODEL": str(paths[0]), "RERANKER_PROJECTOR": str(paths[1])}))
        for (q, d, i), response in zip(requests, answers, strict=True):
            assert response.as_numpy("SCORED").all()
            np.testing.assert_allclose(response.as_numpy("SCORES")[0], engine.rerank(q, d, i).scores, rtol=0, atol=1e-6)
    finally:
        server.stop()
