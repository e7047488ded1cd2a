"""Every simulator module declares ``__all__``, and the package exports the public API."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import epp.sim


def sim_modules() -> list[str]:
    names = ["epp.sim"]
    for info in pkgutil.walk_packages(epp.sim.__path__, prefix="epp.sim."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", sim_modules())
def test_every_module_lists_existing_names_in_all(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported))
    assert [item for item in exported if not hasattr(module, item)] == []


def test_the_package_exports_the_public_api_sorted() -> None:
    assert epp.sim.__all__ == sorted(epp.sim.__all__)
    for name in ("SimConfig", "SimServer", "SimStats", "FaultMode", "serve_replicas", "readiness_line"):
        assert name in epp.sim.__all__


def test_the_cli_hook_registers_the_sim_subcommand() -> None:
    import argparse

    from epp.sim.cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sim", "--port", "0"])
    assert args.command == "sim" and callable(args.func)
