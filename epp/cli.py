"""The `epp` command: one entry point, one subcommand per tool.

Each subcommand lives in its own module that exposes ``add_parser(subparsers)``; the module
registers its flags and sets ``func`` (a callable taking the parsed namespace and returning
an exit code). Heavy imports happen inside ``func`` so ``epp --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

# Modules that contribute a subcommand, in the order `epp --help` lists them.
_SUBCOMMAND_MODULES = (
    "epp.server.cli",
    "epp.plugins.cli",
    "epp.sim.cli",
    "epp.devstack.cli",
    "epp.autoscale.cli",
    "epp.ops.cli",
    "epp.ops.bundle_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="epp",
        description="LLM inference endpoint picker (Envoy ext_proc) and its tools.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in _SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover - exercised through the console script
    sys.exit(main())
