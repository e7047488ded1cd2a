"""``epp bundle``: the deploy artifacts for a config (see ``epp.ops.bundle`` and docs/bundle.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]

# Kept equal to epp.ops.bundle's defaults without importing it (epp --help stays fast);
# tests/unit/ops/test_bundle.py checks they agree.
_DEFAULT_IMAGE = "registry.example.com/epp:0.1.0"
_DEFAULT_ENVOY_IMAGE = "envoyproxy/envoy:v1.40-latest"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bundle", help="render deploy artifacts (Envoy, Kubernetes, Helm values, scripts) for a config",
        description="Render everything needed to deploy an EndpointPickerConfig: an Envoy bootstrap, Kubernetes "
                    "manifests (picker Deployment, Service, ConfigMaps, RBAC, InferencePool, HTTPRoute), Helm "
                    "values for deploy/helm/epp, install/uninstall scripts, a README and checksums.txt.")
    p.add_argument("--config", type=Path, required=True, help="EndpointPickerConfig YAML file")
    p.add_argument("--output", type=Path, required=True, help="directory to create (must be absent or empty)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --output directory")
    p.add_argument("--namespace", default="default", help="Kubernetes namespace (default: %(default)s)")
    p.add_argument("--image", default=_DEFAULT_IMAGE,
                   help="picker container image (default: the placeholder %(default)s; build and push your own)")
    p.add_argument("--envoy-image", default=_DEFAULT_ENVOY_IMAGE, help="Envoy image (default: %(default)s)")
    p.add_argument("--pool-name", default="inference-pool",
                   help="InferencePool name; model-server pods are selected by app=<pool-name> (default: %(default)s)")
    p.add_argument("--model-server-port", type=int, default=8000,
                   help="port the model servers listen on (default: %(default)s)")
    p.add_argument("--replicas", type=int, default=1, help="picker replicas (default: %(default)s)")
    p.add_argument("--gateway-name", default="inference-gateway",
                   help="Gateway the HTTPRoute attaches to (default: %(default)s)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from epp.ops.bundle import BundleError, BundleOptions, write_bundle

    options = BundleOptions(namespace=args.namespace, image=args.image, pool_name=args.pool_name,
                            model_server_port=args.model_server_port, replicas=args.replicas,
                            gateway_name=args.gateway_name, envoy_image=args.envoy_image)
    try:
        written = write_bundle(args.config, args.output, options, force=args.force)
    except BundleError as exc:
        print(f"epp bundle: error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(args.output / path)
    return 0
