"""Imports point down: the ground package ``fitgate`` (settings, errors, storage) imports no layer above it.

training/, models/, service/ and cli/ all import fitgate; one import the other way makes a cycle waiting to
happen and drags torch or the HTTP stack into everything that only wanted the settings.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GROUND = REPO / "fitgate"
ABOVE = frozenset({"training", "models", "batch", "service", "cli", "bench"})


def imported_roots(source: str) -> set[str]:
    """The top-level package of every absolute import in SOURCE, wherever it stands (in functions, under
    TYPE_CHECKING): a deferred import still makes the ground package depend on the layer it names."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_ground_package_imports_nothing_from_the_layers_above_it() -> None:
    modules = sorted(GROUND.rglob("*.py"))
    assert GROUND / "settings.py" in modules, "the scan must see the ground package's files"
    upward = {
        f"{path.relative_to(REPO)} imports {root}"
        for path in modules
        for root in imported_roots(path.read_text(encoding="utf-8")) & ABOVE
    }
    assert not upward, "fitgate/ is the ground package; move the code that needs these up a layer: " + "; ".join(
        sorted(upward)
    )


def test_the_scan_sees_deferred_and_dotted_imports() -> None:
    source = "import os\ndef f():\n    from models.registry import open_registry\n    import service.app\n"
    assert imported_roots(source) == {"os", "models", "service"}
