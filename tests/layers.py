"""The test layers (pytest markers) and which one a module declares, read without importing it."""

from __future__ import annotations

import ast
from pathlib import Path

LAYERS = {"unit", "integration", "system", "build", "docker"}


def module_layers(path: Path) -> set[str]:
    """The layer markers in a module's ``pytestmark`` (one mark or a list of them)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            marks = node.value.elts if isinstance(node.value, ast.List) else [node.value]
            return {m.attr for m in marks if isinstance(m, ast.Attribute)} & LAYERS
    return set()
