"""``epp snapshot`` and ``epp recipe``: the operator commands (``epp/ops/snapshot.py``, ``epp/ops/recipe.py``).

Exit codes: 0 success; 1 a partial snapshot (some collector failed) without
``--allow-partial``; 2 bad input (a missing token file, an unreadable snapshot, a query
the recipe data refuses, an ``--output`` that cannot be written), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run_recipe", "run_snapshot"]

EXIT_PARTIAL = 1
EXIT_USAGE = 2


def _write(text: str, output: Path | None, command: str) -> bool:
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return True
    # Written beside the target and renamed over it, so a reader never sees half a document.
    tmp = output.with_name(output.name + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(output)
    except OSError as exc:
        print(f"epp {command}: --output: cannot write {output}: {exc.strerror}", file=sys.stderr)
        return False
    return True


def _on_off(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


# --- snapshot --------------------------------------------------------------------------------


def run_snapshot(args: argparse.Namespace) -> int:
    from epp.ops.snapshot import AdminClient, admin_collectors, pool_file_collectors, render, take_snapshot

    token: str | None = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            print(f"epp snapshot: --token-file: cannot read {args.token_file}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
        if not token:
            print(f"epp snapshot: --token-file: {args.token_file} is empty", file=sys.stderr)
            return EXIT_USAGE

    async def take() -> Any:
        if args.pool_file is not None:
            return await take_snapshot(f"pool-file:{args.pool_file}", pool_file_collectors(args.pool_file),
                                       args.timeout)
        async with AdminClient(args.admin, token, request_timeout=args.timeout) as client:
            return await take_snapshot(args.admin, admin_collectors(client), args.timeout)

    snapshot = asyncio.run(take())
    if not _write(render(snapshot, args.format), args.output, "snapshot"):
        return EXIT_USAGE
    if not snapshot.partial:
        return 0
    failed = "; ".join(f"{m.type}: {m.error}" for m in snapshot.failed)
    if args.allow_partial:
        print(f"epp snapshot: PARTIAL snapshot (--allow-partial): {failed}", file=sys.stderr)
        return 0
    print(f"epp snapshot: incomplete, {len(snapshot.failed)} collector(s) failed: {failed}", file=sys.stderr)
    return EXIT_PARTIAL


def _add_snapshot(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "snapshot", help="capture what a running picker (or a pool file) sees",
        description="Capture endpoints, metrics, configuration, versions and flow control from a running "
                    "picker's admin API, or the endpoints of a pool file, as a versioned Snapshot document. "
                    "Exits 1 if any collector failed (the document records which) unless --allow-partial.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--admin", default="http://127.0.0.1:9090", metavar="URL",
                        help="the picker's admin server (default: %(default)s)")
    source.add_argument("--pool-file", type=Path, metavar="FILE", help="read a pool file instead of a picker")
    parser.add_argument("--token-file", type=Path, metavar="FILE",
                        help="bearer token for the admin server (its --admin-token-file)")
    parser.add_argument("--format", choices=("yaml", "json", "table"), default="yaml", help="default: yaml")
    parser.add_argument("--output", type=Path, metavar="FILE", help="write here instead of stdout")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="per collector (default: %(default)s)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="exit 0 even if some collectors failed (the document still says which)")
    parser.set_defaults(func=run_snapshot)


# --- recipe ----------------------------------------------------------------------------------


def run_recipe(args: argparse.Namespace) -> int:
    import yaml

    from epp.ops.recipe import Query, RecipeError, build_recipe, query_from_snapshot

    found: dict[str, Any] = {}
    notes: list[str] = []
    if args.snapshot is not None:
        try:
            doc = yaml.safe_load(args.snapshot.read_text())
            if not isinstance(doc, dict):
                raise RecipeError("--snapshot: not a snapshot document (kind: Snapshot)")
            found, notes = query_from_snapshot(doc)
        except OSError as exc:
            print(f"epp recipe: --snapshot: cannot read {args.snapshot}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
        except (yaml.YAMLError, RecipeError) as exc:
            print(f"epp recipe: {exc}", file=sys.stderr)
            return EXIT_USAGE
    # An explicit flag wins over what the snapshot shows.
    given = {"modelServer": args.model_server, "accelerator": args.accelerator, "intent": args.intent,
             "slo": args.slo, "flowControl": args.flow_control}
    for key, value in given.items():
        if value is not None:
            if key in found and found[key] != value:
                notes.append(f"{key}={value} from the command line (the snapshot suggests {found[key]})")
            found[key] = value
    try:
        query = Query(model_server=found.get("modelServer", "vllm"), accelerator=found.get("accelerator"),
                      intent=found.get("intent"), slo=bool(found.get("slo", False)),
                      flow_control=bool(found.get("flowControl", False)))
    except RecipeError as exc:
        print(f"epp recipe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    recipe = build_recipe(query)
    recipe.notes.extend(notes)
    return 0 if _write(recipe.to_yaml(context=args.context), args.output, "recipe") else EXIT_USAGE


def _add_recipe(subparsers: Any) -> None:
    from epp.ops.recipe import INTENTS, MODEL_SERVERS

    parser = subparsers.add_parser(
        "recipe", help="an EndpointPickerConfig for a described setup",
        description="Build an EndpointPickerConfig from an embedded base plus the overlays that match the "
                    "setup (more specific overlays win). Flags not given are read from --snapshot when one "
                    "is given; else: vllm, no intent, SLO and flow control off.")
    parser.add_argument("--model-server", choices=MODEL_SERVERS, help="default: vllm")
    parser.add_argument("--accelerator", metavar="NAME", help="e.g. h100, h200, a100, l4, cpu (free text)")
    parser.add_argument("--intent", choices=INTENTS, help="what to optimise for (default: none, the base routing)")
    parser.add_argument("--slo", type=_on_off, metavar="on|off",
                        help="SLO-aware routing for requests with x-slo-ttft-ms / x-slo-tpot-ms (default: off)")
    parser.add_argument("--flow-control", type=_on_off, metavar="on|off",
                        help="the flowControl feature gate and an admission queue (default: off)")
    parser.add_argument("--snapshot", type=Path, metavar="FILE", help="read the setup from an `epp snapshot` file")
    parser.add_argument("--context", action="store_true",
                        help="explain every value (which overlay set it, and why) in comments")
    parser.add_argument("--output", type=Path, metavar="FILE", help="write here instead of stdout")
    parser.set_defaults(func=run_recipe)


def add_parser(subparsers: Any) -> None:
    """Adds ``snapshot`` and ``recipe``."""
    _add_snapshot(subparsers)
    _add_recipe(subparsers)
