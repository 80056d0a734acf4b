"""Every test module names its layer, so that ``pytest -m unit`` (or integration, system, build) runs one layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

LAYERS = {"unit", "integration", "system", "build"}
TESTS = Path(__file__).resolve().parent


def module_layers(path: Path) -> set[str]:
    """The layer markers in a module's ``pytestmark`` (one mark or a list of them)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            marks = node.value.elts if isinstance(node.value, ast.List) else [node.value]
            return {m.attr for m in marks if isinstance(m, ast.Attribute)} & LAYERS
    return set()


@pytest.mark.parametrize("path", sorted(TESTS.glob("test_*.py")), ids=lambda p: p.name)
def test_each_module_is_in_exactly_one_layer(path):
    assert len(module_layers(path)) == 1, f"{path.name}: set pytestmark = pytest.mark.<one of {sorted(LAYERS)}>"


def test_the_layers_are_the_registered_markers(pytestconfig):
    registered = {line.split(":")[0] for line in pytestconfig.getini("markers")}
    assert registered >= LAYERS
