"""The repository's import graph, read from the source with ``ast``: no cycle in any package, no module outside
the tests that imports a bench (so no bench imports another: what they share is in library modules) or a test
module, and no ``sys.path`` edit outside the tests' conftest.

Every import statement counts, at module level or inside a function, ``TYPE_CHECKING`` blocks included. The
engine's folder is an import root of its own, as it is on Triton's path and in the installed .pth file.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
ENGINE_DIR = ROOT / "model_repository" / "jina_reranker_v3" / "1"
# Import root -> the packages and modules under it.
SOURCES = {ROOT: ("adapter", "stack", "perf", "models", "tests"),
           ENGINE_DIR: ("rerank_engine", "model.py", "triton_contract.py")}
# The benches: each measures something and writes or prints its results (`python -m perf.<room>.<name>`). They are
# leaves of the graph: the comparisons they run (perf/builds/*_comparison.py, perf/peers/torch_comparison.py) and
# the tables they print (perf/tables.py) are library modules, which make bench (perf.load.bench) and perf.report
# import instead.
BENCHES = {"perf.load.bench", "perf.peers.torch_peer", "perf.builds.amx_bench", "perf.builds.q8_repack_bench",
           "perf.builds.bf16_attention_bench", "perf.builds.patch_revision_bench", "perf.builds.swa_bench",
           "perf.gpu.gpu_check", "perf.load.librechat_bench", "perf.aiperf.aiperf_bench"}
SYS_PATH_ALLOWED = {ROOT / "tests" / "conftest.py"}


def source_modules(sources: Mapping[Path, tuple[str, ...]] = SOURCES) -> dict[str, Path]:
    """Dotted module name -> file, for every Python file of the given packages and modules."""
    modules = {}
    for root, names in sources.items():
        for name in names:
            for path in [root / name] if name.endswith(".py") else sorted((root / name).rglob("*.py")):
                parts = path.relative_to(root).with_suffix("").parts
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(module: str, path: Path) -> Iterator[str]:
    """The absolute names a module's import statements name (``from a import b`` names ``a.b``: b may be a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the repository's modules it imports (a name resolves to its longest prefix that is a module)."""
    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    return {module: {target for name in imported_names(module, path)
                     if (target := resolve(name)) is not None and target != module}
            for module, path in modules.items()}


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def bench_importers(graph: Mapping[str, set[str]]) -> dict[str, list[str]]:
    """Module outside the tests -> the benches it imports, for every such module that imports one."""
    return {module: sorted(targets & BENCHES) for module, targets in graph.items()
            if targets & BENCHES and module != "tests" and not module.startswith("tests.")}


def python_files(root: Path = ROOT) -> Iterator[Path]:
    """The repository's Python files: hidden folders (.venv, .cache, .git) and node_modules left out."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d != "node_modules"]
        yield from (Path(folder) / f for f in files if f.endswith(".py"))


def edits_sys_path(path: Path) -> bool:
    """Whether a file names ``sys.path`` (or ``site.addsitedir``) in its code, not in strings or comments."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (
                (node.value.id, node.attr) in {("sys", "path"), ("site", "addsitedir")}):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "sys" and any(a.name == "path" for a in node.names):
            return True
    return False


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(source_modules())


def test_the_graph_holds_every_kind_of_import(graph) -> None:
    assert "perf.common" in graph["perf.load.bench"]  # module level
    assert "perf.common" in graph["perf.load.workloads"]  # inside a function
    assert "rerank_engine.llama_runner" in graph["rerank_engine.engine"]  # relative
    assert "rerank_engine" in graph["triton_contract"]  # across the two import roots
    assert "models.generate_test_model" in graph["perf.common"]
    assert graph.keys() >= BENCHES


def test_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_package_has_an_import_cycle(graph) -> None:
    assert cycles(graph) == []


@pytest.mark.parametrize("bench", sorted(BENCHES))
def test_no_bench_imports_another(graph, bench: str) -> None:
    assert graph[bench] & BENCHES == set()


def test_bench_importers_are_found() -> None:
    graph = {"perf.report": {"perf.load.bench", "perf.tables"}, "perf.tables": {"perf.common"},
             "tests.test_perf_tools": {"perf.load.bench"}, "perf.load.bench": {"perf.tables"}}
    assert bench_importers(graph) == {"perf.report": ["perf.load.bench"]}


def test_no_module_outside_the_tests_imports_a_bench(graph) -> None:
    """The benches are leaves: what another module needs of one belongs in a library module."""
    assert bench_importers(graph) == {}


def outside_importers_of_tests(graph: Mapping[str, set[str]]) -> dict[str, list[str]]:
    """Module outside the tests -> the test modules it imports, for every such module that imports one."""
    def is_test(module: str) -> bool:
        return module == "tests" or module.startswith("tests.")

    return {module: sorted(filter(is_test, targets)) for module, targets in graph.items()
            if not is_test(module) and any(map(is_test, targets))}


def test_importers_of_tests_are_found() -> None:
    graph = {"perf.gpu.gpu_check": {"tests.conftest", "perf.common"}, "tests.test_x": {"tests.conftest"}}
    assert outside_importers_of_tests(graph) == {"perf.gpu.gpu_check": ["tests.conftest"]}


def test_nothing_outside_the_tests_imports_them(graph) -> None:
    """The tests may be absent where the project runs (an image, the GPU machine's copy): what a bench or the
    stack shares with them lives in a library module (e.g. models/reference_check.py)."""
    assert outside_importers_of_tests(graph) == {}


def test_the_report_renders_with_the_tables_alone(graph) -> None:
    assert graph["perf.report"] == {"perf", "perf.tables"}
    assert "perf.tables" in graph["perf.load.bench"]


def test_sys_path_edits_are_found(tmp_path) -> None:
    (tmp_path / "edits.py").write_text("import sys\nsys.path.insert(0, 'x')\n")
    (tmp_path / "reads.py").write_text("import sys\nprint('sys.path')  # sys.path\n")
    assert edits_sys_path(tmp_path / "edits.py")
    assert not edits_sys_path(tmp_path / "reads.py")


def test_no_sys_path_edit_outside_the_tests_conftest() -> None:
    files = list(python_files())
    assert ROOT / "perf" / "load" / "bench.py" in files
    assert [str(p.relative_to(ROOT)) for p in files if p not in SYS_PATH_ALLOWED and edits_sys_path(p)] == []


def test_every_perf_module_is_in_a_room_or_shared():
    """perf/'s top level holds only what every room shares; a bench or its helpers belong in a room."""
    top = {path.name for path in (ROOT / "perf").glob("*.py")}
    assert top == {"__init__.py", "common.py", "tables.py", "report.py"}
    rooms = {path.parent.name for path in (ROOT / "perf").glob("*/__init__.py")}
    assert rooms == {"load", "peers", "builds", "gpu", "aiperf"}
