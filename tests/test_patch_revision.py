"""The patch revision comparison (perf/builds/patch_revision_comparison.py): the base's patch chain read from git,
and both builds' passes side by side in child processes."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from models.generate_test_model import ModelSpec
from perf import tables
from perf.builds import amx_comparison, patch_revision_bench, patch_revision_comparison
from rerank_engine import EngineConfig, amx_check
from stack import cpu_features

pytestmark = pytest.mark.build


def git(repository: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repository, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, str, list[Path]]:
    """A repository whose first commit has patches a and b; the working tree has since changed a and added c."""
    repository = tmp_path / "repo"
    patches = repository / "stack" / "patches"
    patches.mkdir(parents=True)
    git(repository, "init", "-q")
    (patches / "a.patch").write_text("a, as it was\n")
    (patches / "b.patch").write_text("b\n")
    git(repository, "add", ".")
    git(repository, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "first patches")
    (patches / "a.patch").write_text("a, rewritten\n")
    (patches / "c.patch").write_text("c\n")
    return repository, git(repository, "rev-parse", "HEAD"), [patches / n for n in ("a.patch", "b.patch", "c.patch")]


@pytest.fixture(scope="module")
def installed_twice(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The installed build's own wheel (cached, nothing built) unpacked once for each seat of the comparison."""
    amx = amx_check.amx_in_play()
    wheel = amx_comparison.build_wheel(cpu_features.cmake_args(cpu_features.cpu_flags(), amx),
                                       cpu_features.patches(amx), say=lambda _: None)
    return {build: amx_comparison.unpack(wheel, tmp_path_factory.mktemp(build))
            for build in patch_revision_comparison.BUILDS}


def test_the_base_chain_is_each_patch_as_the_revision_had_it(history, tmp_path):
    repository, commit, chain = history
    files, absent = patch_revision_comparison.chain_at(commit, chain, tmp_path / "base", repository)
    assert [f.name for f in files] == ["a.patch", "b.patch"]
    assert files[0].read_text() == "a, as it was\n"
    assert files[1].read_text() == "b\n"
    assert absent == ["c.patch"]
    assert patch_revision_comparison.changed(chain, files) == ["a.patch", "c.patch"]
    assert patch_revision_comparison.changed(chain[1:2], files) == []


def test_a_revision_git_does_not_know_is_refused(history):
    repository, commit, _ = history
    assert patch_revision_comparison.resolve("HEAD", repository) == (commit, "first patches")
    with pytest.raises(ValueError, match="no-such-revision"):
        patch_revision_comparison.resolve("no-such-revision", repository)
    with pytest.raises(ValueError, match="would be read as an option"):
        patch_revision_comparison.resolve("--all", repository)


def test_the_searches_are_due_when_the_adapter_s_calls_are():
    from adapter.settings import AdapterSettings

    assert patch_revision_comparison.adapter_deadline_s() == AdapterSettings().request_timeout_s == 9.0


def test_the_bench_stops_with_git_s_reason_before_building(capsys):
    with pytest.raises(SystemExit, match="patch_revision_bench: git does not know the revision 'no-such-revision'"):
        patch_revision_bench.main(["--base", "no-such-revision"])


def test_rounds_and_agreement():
    assert patch_revision_comparison.rounds_won([1.0, 2.0, 3.0], [1.5, 1.5, 3.0]) == 1
    a = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    b = a.copy()
    b[1, 2] += 0.5
    assert patch_revision_comparison.agreement({5: a}, {5: a.copy()}) == {"identical": {"5": True},
                                                                          "cosine_min": {"5": 1.0}}
    result = patch_revision_comparison.agreement({5: a}, {5: b})
    assert result["identical"] == {"5": False}
    assert 0.999 < result["cosine_min"]["5"] < 1.0


def test_both_builds_run_side_by_side_from_their_unpacked_wheels(tiny_q8, installed_twice):
    """The comparison as the bench runs it, with the installed build's own wheel (cached, nothing built) unpacked as
    both builds: each child must load its own copy, and the same build must give the same bits."""
    paths = installed_twice
    options = EngineConfig.from_options(*map(str, tiny_q8), n_ctx=512).llama
    result = patch_revision_comparison.compare(tiny_q8[0], options, [300], 2, paths, say=lambda _: None)
    for build, path in paths.items():
        libraries = result["builds"][build]["libraries"]
        assert libraries
        assert all(Path(lib).is_relative_to(path) for lib in libraries)
        assert len(result["builds"][build]["seconds"]["300"]) == 2
    assert result["identical"] == {"300": True}
    assert 0 <= result["rounds_won_by_tree"]["300"] <= 2
    tree, base = (result["builds"][b]["tokens_per_s"]["300"] for b in ("tree", "base"))
    assert result["tree_vs_base"]["300"] == round(tree / base, 3)
    described = {"revision": "0123456789abcdef", "subject": "before", "absent_at_base": [], "changed": ["x.patch"]}
    table = tables.patch_revision_table({"base": described, **result})
    assert "against those of 0123456789ab (changed: x.patch)." in table
    assert "| 300 | " in table
    assert "| identical |" in table


def test_both_builds_time_the_attention_op_in_turn(tiny_q8, installed_twice):
    """ggml's attention op as the bench times it, with the installed build's wheel in both seats: each child loads
    its own copy of the libraries, and times the test model's heads (read from its metadata) at each length, in
    the config's ubatches."""
    paths = installed_twice
    options = EngineConfig.from_options(*map(str, tiny_q8), n_ctx=512, n_ubatch=64).llama
    result = patch_revision_comparison.compare_attention(tiny_q8[0], options, [96, 200], 2, paths, say=lambda _: None)
    spec = ModelSpec()
    assert (result["n_head"], result["n_head_kv"], result["head_dim"]) == (spec.n_head, spec.n_head_kv, spec.head_dim)
    assert (result["cache"], result["n_ubatch"]) == (options.kv_cache_type, 64)
    assert result["threads"] >= 1
    for build, path in paths.items():
        assert Path(result["libraries"][build]).is_relative_to(path)
        assert all(len(times) == 2 and min(times) > 0 for times in result["ms"][build].values())
    for n in ("96", "200"):
        base, tree = (np.median(result["ms"][b][n]) for b in ("base", "tree"))
        assert result["tree_vs_base"][n] == round(float(base / tree), 3)
        assert 0 <= result["rounds_won_by_tree"][n] <= 2
    table = tables.attention_op_table(result)
    assert "4 query and 2 key/value heads of 16, F16 cache" in table
    assert "ubatches of 64 queries" in table
    assert "| 200 | " in table


# In a child with a build first on its path: a pass's attention in ubatches (attention_pass) and in one op, on the
# same operands; writes the ubatches' mask shapes and the largest difference of the two results.
PASS_IN_UBATCHES = """
import json, sys
from pathlib import Path
import llama_cpp
import numpy as np
from perf.builds import ggml_c_api
from perf.builds.patch_revision_comparison import attention_operands, attention_pass
out, n, n_ubatch = sys.argv[1], *map(int, sys.argv[2:])
lib = Path(llama_cpp.__file__).parent / "lib"
q, k, v, masks = attention_operands(n, 4, 2, 64, "f16", n_ubatch)
whole = attention_operands(n, 4, 2, 64, "f16", n)[3]
with ggml_c_api.graph(lib, 2**28) as graph:
    ops = attention_pass(graph, q, k, v, masks, "f16")
    parts = [graph.compute(o, (m.shape[0], 4, 64), 2) for o, m in zip(ops, masks)]
    (one,) = [graph.compute(o, (n, 4, 64), 2) for o in attention_pass(graph, q, k, v, whole, "f16")]
Path(out).write_text(json.dumps({"shapes": [list(m.shape) for m in masks], "largest": float(np.abs(one).max()),
                                 "difference": float(np.abs(np.concatenate(parts) - one).max())}))
"""


def test_the_timed_pass_in_ubatches_is_the_pass_in_one_op(installed_twice):
    """The op timing's pass, ubatches of 96 queries each over the keys so far (views into Q, K and V), gives what
    one op over all 192 queries under the causal mask gives: every view starts where its ubatch does."""
    report = patch_revision_comparison.run_child(PASS_IN_UBATCHES, ["192", "96"], installed_twice["tree"], 600)
    assert report["shapes"] == [[96, 96], [96, 192]]
    assert report["largest"] > 0
    assert report["difference"] <= 1e-6 * report["largest"]


def test_the_attention_op_is_timed_only_with_a_cache_numpy_can_fill(tmp_path):
    """A cache type the op's timing cannot build (q8_0 blocks) is refused before any child runs."""
    options = SimpleNamespace(kv_cache_type="q8_0", n_threads=0)
    with pytest.raises(ValueError, match="not q8_0"):
        patch_revision_comparison.compare_attention(tmp_path / "absent.gguf", options, [64], 1, {})


def test_both_builds_answer_librechat_s_searches_in_turn(tiny_q8, installed_twice):
    """The searches as the bench runs them, on the test model: each build in its own child answers the first search's
    five calls with the engine. With a deadline far enough away every document is scored, in both seats alike."""
    paths = installed_twice
    result = patch_revision_comparison.compare_searches(*tiny_q8, 1, paths, searches=1, deadline_s=600,
                                                        say=lambda _: None)
    assert result["searches"] == 1
    assert result["deadline_s"] == 600
    assert 5 * 256 <= result["documents"] <= 5 * 494  # one search: five pages of the workload
    assert result["model_scored"] == {"base": [result["documents"]], "tree": [result["documents"]]}
    assert result["tokens"]["base"] == result["tokens"]["tree"]
    assert result["tokens"]["tree"][0] > result["documents"]
    assert result["tree_vs_base"] == 1.0
    table = tables.searches_table(result)
    assert "| tree | " in table
    assert f"tree / base: {result['tree_vs_base']:.2f}" in table
