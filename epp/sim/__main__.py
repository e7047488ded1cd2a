"""``python -m epp.sim ...``: the ``epp sim`` command without the top-level CLI."""

from __future__ import annotations

import argparse
import sys

from epp.sim.cli import add_parser

__all__: list[str] = []


def _main() -> int:
    parser = argparse.ArgumentParser(prog="epp")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sim", *sys.argv[1:]])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(_main())
