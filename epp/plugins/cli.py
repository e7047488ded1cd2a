"""``epp plugins``: list every registered plugin type, its extension points and parameters."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_parser", "describe_plugins"]


def describe_plugins() -> list[dict[str, Any]]:
    from epp.plugins import default_registry

    return [
        {
            "type": spec.type_name,
            "summary": spec.summary,
            "extensionPoints": spec.extension_points,
            "parameters": [{"name": p.key, "type": p.type, "default": p.default} for p in spec.parameters()],
        }
        for spec in default_registry()
    ]


def _run(args: argparse.Namespace) -> int:
    plugins = describe_plugins()
    if args.json:
        print(json.dumps(plugins, indent=2, default=str))
        return 0
    for plugin in plugins:
        print(f"{plugin['type']}  [{', '.join(plugin['extensionPoints'])}]")
        if plugin["summary"]:
            print(f"    {plugin['summary']}")
        for param in plugin["parameters"]:
            print(f"    - {param['name']} ({param['type']}, default {param['default']!r})")
    return 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("plugins", help="list plugin types a config may use",
                                   description="List every registered plugin type with its extension points, "
                                               "parameters and defaults.")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=_run)
