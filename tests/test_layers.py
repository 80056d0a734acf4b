"""Every test module names its layer, so that ``pytest -m unit`` (or integration, system, build) runs one layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.layers import LAYERS, module_layers

pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("path", sorted(TESTS.glob("test_*.py")), ids=lambda p: p.name)
def test_each_module_is_in_exactly_one_layer(path):
    assert len(module_layers(path)) == 1, f"{path.name}: set pytestmark = pytest.mark.<one of {sorted(LAYERS)}>"


def test_the_layers_are_the_registered_markers(pytestconfig):
    registered = {line.split(":")[0] for line in pytestconfig.getini("markers")}
    assert registered >= LAYERS
