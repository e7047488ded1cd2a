"""Every module under ``epp/`` (except the simulator) declares its public surface in ``__all__``."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import epp

PACKAGE_ROOT = Path(epp.__file__).parent


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        relative = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
        parts = relative.parts
        if parts[1:2] == ("sim",):
            continue  # the simulator is owned and tested separately
        if parts[-1] == "__main__":
            continue  # a script entry point: importing it runs the CLI and exits
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def defines_all(name: str) -> bool:
    path = importlib.util.find_spec(name).origin  # type: ignore[union-attr]
    tree = ast.parse(Path(path).read_text())  # type: ignore[arg-type]
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return True
    return False


MODULES = module_names()


def test_the_module_list_is_not_empty() -> None:
    assert "epp.director" in MODULES and "epp.plugins.prefix.index" in MODULES
    assert not any(name.startswith("epp.sim") for name in MODULES)


def test_every_module_defines_all() -> None:
    missing = [name for name in MODULES if not defines_all(name)]
    assert not missing, f"modules without __all__: {', '.join(missing)}"


@pytest.mark.parametrize("name", [name for name in MODULES if defines_all(name)])
def test_all_lists_only_names_that_exist(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert all(isinstance(item, str) for item in exported)
    assert len(exported) == len(set(exported)), f"{name}.__all__ has duplicates"
    missing = [item for item in exported if not hasattr(module, item)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"
