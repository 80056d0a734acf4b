"""jina-reranker-v3.5-shaped models: sliding-window layers (llama.cpp patched), v3.5's recipe, against NumPy.

The tiny v3.5 model has a window of 12 tokens on layers 0 and 2 of 4, so every prompt here crosses it many
times. Each way of getting v3.5 wrong (the pattern ignored, the window off by one, the opening query marker
scored) is shown to move the reference by more than the tolerance the engine is held to.
"""

from __future__ import annotations

import numpy as np
import pytest

from models import numpy_reference as ref
from models.generate_test_model import PRESETS
from rerank_engine import ModelLoadError, RerankRequest
from rerank_engine.prompt import RERANK_TOKEN
from rerank_engine.recipes import V3, V3_5
from tests.conftest import EXACT, Reference, open_engine
from tests.test_engine_reference import DOCS, QUERY

pytestmark = pytest.mark.integration

WINDOW = PRESETS["tiny-v35"].sliding_window
LIMITS = {"max_query_tokens": V3_5.max_query_tokens, "max_doc_tokens": V3_5.max_doc_tokens}
F32_TOLERANCE, Q8_TOLERANCE = 2e-3, 6e-2


@pytest.fixture(scope="module")
def v35_f32(make_model):
    return make_model("f32", "tiny-v35")


@pytest.fixture(scope="module")
def engine_v35(v35_f32):
    return open_engine(v35_f32, n_ctx=16384, **EXACT)


@pytest.fixture(scope="module")
def reference_v35(v35_f32, engine_v35):
    return Reference(v35_f32, engine_v35)


def reference_scores(reference: Reference, model: ref.Qwen3Reference | None = None, **kwargs) -> np.ndarray:
    return ref.rerank(model or reference.model, reference.projector, reference.plain_tokenize,
                      reference.engine.detokenize, reference.engine.token_ids, QUERY, DOCS,
                      opening_query_marker=True, **LIMITS, **kwargs).scores


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_recipe_is_chosen_from_the_metadata(engine_v35, engine_f32):
    assert engine_v35.recipe == V3_5
    assert engine_f32.recipe == V3
    assert (engine_v35.config.max_query_tokens, engine_v35.config.max_doc_tokens) == (2048, 8192)
    assert (engine_f32.config.max_query_tokens, engine_f32.config.max_doc_tokens) == (512, 2048)


def test_v35_prompt_has_the_opening_marker_and_scores_the_last(engine_v35, reference_v35):
    prompt = engine_v35.plan(RerankRequest(QUERY, DOCS)).prompts[0]
    markers = [p for p, token in enumerate(prompt.ids) if token == engine_v35.token_ids[RERANK_TOKEN]]
    assert len(markers) == 2
    assert prompt.query_position == markers[-1] == len(prompt.ids) - 1
    assert markers[0] < prompt.doc_positions[0]
    ids, doc_positions, _ = ref.prompt_ids(ref.prompt_pieces(QUERY, DOCS, None, opening_query_marker=True),
                                           reference_v35.plain_tokenize, engine_v35.token_ids)
    assert prompt.ids == ids
    assert prompt.doc_positions == doc_positions
    assert len(ids) > 8 * WINDOW


def test_v35_hidden_states_apply_the_window_exactly(engine_v35, reference_v35, v35_f32):
    """Right window: the reference's states; one token more or less, or no window at all: visibly not."""
    prompt = engine_v35.plan(RerankRequest(QUERY, DOCS)).prompts[0]
    [hidden] = engine_v35.runner.hidden_states([prompt.ids], [prompt.output_positions])
    assert cosines(hidden, reference_v35.model.hidden_states(prompt.ids)[prompt.output_positions]).min() >= 0.99999
    pattern = PRESETS["tiny-v35"].sliding_pattern
    wrong = {"window - 1": ref.Qwen3Reference(str(v35_f32[0]), sliding_window=WINDOW - 1),
             "window + 1": ref.Qwen3Reference(str(v35_f32[0]), sliding_window=WINDOW + 1),
             "pattern ignored": ref.Qwen3Reference(str(v35_f32[0]), sliding_pattern=[False] * len(pattern)),
             "pattern inverted": ref.Qwen3Reference(str(v35_f32[0]), sliding_pattern=[not s for s in pattern])}
    for name, model in wrong.items():
        states = model.hidden_states(prompt.ids)[prompt.output_positions]
        assert cosines(hidden, states).min() < 0.999, name


def test_v35_scores_match_reference_f32(engine_v35, reference_v35):
    result = engine_v35.rerank(QUERY, DOCS)
    expected = reference_scores(reference_v35)
    np.testing.assert_allclose(result.scores, expected, atol=F32_TOLERANCE)
    ignored = ref.Qwen3Reference(str(reference_v35.engine.config.model_path),
                                 sliding_pattern=[False] * PRESETS["tiny-v35"].n_layer)
    for name, wrong in {"pattern ignored": reference_scores(reference_v35, ignored),
                        "opening marker scored": reference_scores(reference_v35, scored_marker=0),
                        "v3 prompt": ref.rerank(reference_v35.model, reference_v35.projector,
                                                reference_v35.plain_tokenize, engine_v35.detokenize,
                                                engine_v35.token_ids, QUERY, DOCS, **LIMITS).scores}.items():
        assert np.abs(result.scores - wrong).max() > 5 * F32_TOLERANCE, name


@pytest.mark.parametrize("options", [{}, {"flash_attn": True, "kv_cache_type": "f16"}], ids=["plain", "flash"])
def test_v35_scores_match_reference_q8(make_model, options):
    paths = make_model("q8_0", "tiny-v35")
    engine = open_engine(paths, n_ctx=16384, **options)
    reference = Reference(paths, engine)
    try:
        np.testing.assert_allclose(engine.rerank(QUERY, DOCS).scores, reference_scores(reference), atol=Q8_TOLERANCE)
    finally:
        engine.close()


def test_kept_prefix_survives_windows_of_longer_passes(engine_v35):
    """Budgeted rounds reuse the system turn's cache; a pass longer than the window must not spoil it."""
    long_docs = [" ".join([DOCS[i % len(DOCS)]] * 8) for i in range(6)]  # ~2,000 tokens: 4 ubatches, 160 windows
    prompts = [engine_v35.plan(RerankRequest(QUERY, docs)).prompts[0] for docs in (long_docs, DOCS, long_docs)]
    prefix = engine_v35._prefix
    assert len(prompts[0].ids) > 10 * WINDOW
    assert len(prefix) > WINDOW
    fresh = engine_v35.runner.hidden_states([p.ids for p in prompts], [p.output_positions for p in prompts])
    reused = list(engine_v35.runner.iter_hidden_states([p.ids for p in prompts],
                                                       [p.output_positions for p in prompts], prefix=prefix))
    for one, other in zip(fresh, reused, strict=True):
        assert cosines(one, other).min() >= 0.99999


def test_v3_model_without_the_keys_is_unchanged_by_a_window_wider_than_its_prompts(make_model):
    """The same weights with every layer marked sliding but a window wider than the prompt: llama.cpp then
    builds the sliding-window cache and masks, and must give the plain model's states bit for bit."""
    limits = {"max_query_tokens": 512, "max_doc_tokens": 2048}
    plain = open_engine(make_model("f32", "tiny-v35", sliding_window=0, release="jina-reranker-v3"), **limits, **EXACT)
    wide = open_engine(make_model("f32", "tiny-v35", sliding_window=4096, sliding_pattern=(True,) * 4), **limits,
                       **EXACT)
    try:
        assert plain.recipe == V3
        assert wide.recipe == V3_5
        prompt = plain.plan(RerankRequest(QUERY, DOCS)).prompts[0]
        [a] = plain.runner.hidden_states([prompt.ids], [prompt.output_positions])
        [b] = wide.runner.hidden_states([prompt.ids], [prompt.output_positions])
        np.testing.assert_array_equal(a, b)
    finally:
        plain.close()
        wide.close()


@pytest.mark.parametrize(("period", "layers"), [(2, (True, False, True, False)), (0, (True,) * 4)])
def test_a_scalar_period_runs_as_its_per_layer_pattern(make_model, period, layers):
    """llama.cpp's other form of the pattern, a period whose last layer is global (0: all sliding), must build
    the same layers as the bool-per-layer form: same hidden states bit for bit, and the reference reads it alike."""
    by_period = make_model("f32", "tiny-v35", sliding_period=period)
    by_layer = make_model("f32", "tiny-v35", sliding_pattern=layers)
    assert ref.Qwen3Reference(str(by_period[0])).sliding_pattern == list(layers)
    engines = [open_engine(paths, max_query_tokens=512, max_doc_tokens=2048, **EXACT)
               for paths in (by_period, by_layer)]
    try:
        prompt = engines[0].plan(RerankRequest(QUERY, DOCS)).prompts[0]
        assert len(prompt.ids) > 2 * WINDOW
        a, b = (engine.runner.hidden_states([prompt.ids], [prompt.output_positions])[0] for engine in engines)
        np.testing.assert_array_equal(a, b)
    finally:
        for engine in engines:
            engine.close()


def test_a_v35_name_without_the_keys_is_refused(make_model):
    paths = make_model("f32", "tiny-v35", sliding_window=0)
    with pytest.raises(ModelLoadError, match="sliding-window keys"):
        open_engine(paths)



def test_the_patch_applies_exactly_after_the_ggml_patches(tmp_path):
    """stack/build_llama_wheel.sh's order: the package's patch, ggml's (AMX's too), then qwen3's."""
    from stack import cpu_features
    from tests import ggml_cpu_build

    source = ggml_cpu_build.unpack_llama_cpp(tmp_path)
    patches = cpu_features.patches(amx=True)
    assert patches[-1] == cpu_features.QWEN3_SWA_PATCH
    ggml_cpu_build.apply_patches(source, [p for p in patches if p != cpu_features.PACKAGE_PATCH])
    qwen3 = (source / "vendor/llama.cpp/src/models/qwen3.cpp").read_text()
    assert "build_attn_inp_kv_iswa()" in qwen3
    assert "LLM_KV_ATTENTION_SLIDING_WINDOW_PATTERN" in qwen3


@pytest.fixture(scope="module", params=["f32", "q8_0"])
def served_v35(request, make_model, tmp_path_factory):
    """A real tritonserver (the CPU config: flash attention over an F16 cache) and the adapter, on a v3.5 model."""
    from tests.servers import start_adapter, start_triton

    paths = make_model(request.param, "tiny-v35")
    logs = tmp_path_factory.mktemp("v35-servers")
    triton = start_triton(paths, logs / "triton.log")
    try:
        adapter = start_adapter(triton.grpc_url, logs / "adapter.log")
        try:
            yield request.param, paths, adapter, logs / "triton.log"
        finally:
            adapter.stop()
    finally:
        triton.stop()


def test_v35_through_triton_and_the_adapter_matches_reference(served_v35):
    import httpx

    dtype, paths, adapter, triton_log = served_v35
    assert "as jina-reranker-v3.5 (sliding window: 12, query/document limits 512/2048)" in triton_log.read_text()
    response = httpx.post(f"{adapter.url}/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": len(DOCS)},
                          headers={"Authorization": "Bearer k"}, timeout=30)
    assert response.status_code == 200, response.text
    scores = np.zeros(len(DOCS))
    for result in response.json()["results"]:
        scores[result["index"]] = result["relevance_score"]
    engine = open_engine(paths, n_ctx=16384, **EXACT)
    try:
        expected = reference_scores(Reference(paths, engine))
    finally:
        engine.close()
    np.testing.assert_allclose(scores, expected, atol=F32_TOLERANCE if dtype == "f32" else Q8_TOLERANCE)
