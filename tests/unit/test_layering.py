"""Import layering: plugins share data through keys and typed values, the framework names no implementation."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EPP = Path(__file__).resolve().parents[2] / "epp"
PLUGINS = EPP / "plugins"
# Modules that wire plugins together, and so may import all of them.
PLUGIN_WIRING = {PLUGINS / "__init__.py", PLUGINS / "registry.py", PLUGINS / "cli.py"}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, including imports made only for type checking."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def plugin_modules() -> list[Path]:
    return sorted(p for p in PLUGINS.rglob("*.py") if p not in PLUGIN_WIRING)


@pytest.mark.parametrize("path", plugin_modules(), ids=lambda p: str(p.relative_to(EPP)))
def test_a_plugin_imports_no_other_plugin_package(path: Path) -> None:
    own = path.relative_to(PLUGINS).parts[0]
    foreign = {m for m in imported_modules(path)
               if m.startswith("epp.plugins.") and m.split(".")[2] != own}
    assert not foreign, f"{path.relative_to(EPP)} imports another plugin's module: {sorted(foreign)}"


@pytest.mark.parametrize("path", sorted((EPP / "framework").glob("*.py")), ids=lambda p: p.name)
def test_the_framework_imports_no_implementation(path: Path) -> None:
    implementations = ("epp.scheduling", "epp.plugins", "epp.director", "epp.server", "epp.config")
    found = {m for m in imported_modules(path) if m.startswith(implementations)}
    assert not found, f"framework/{path.name} imports {sorted(found)}"


def test_plugin_packages_are_found() -> None:
    # Guards the two tests above against passing on an empty parametrisation.
    assert {p.relative_to(PLUGINS).parts[0] for p in plugin_modules()} >= {"scorers", "inflight", "profile"}
