"""Renderers of prose and shell: install/uninstall/sync-pool scripts and the bundle README."""

from __future__ import annotations

from epp.ops.bundle_manifests import picker_args
from epp.ops.bundle_model import (
    CHECKSUMS,
    ENVOY_PORT,
    GRPC_PORT,
    METRICS_PORT,
    PICKER_NAME,
    BundleContext,
    RenderedFile,
)

__all__ = ["render_readme", "render_scripts"]


def _install_script(ctx: BundleContext) -> str:
    ns = ctx.options.namespace
    return f"""\
#!/usr/bin/env bash
# Installs the endpoint picker rendered by `epp bundle` into namespace {ns}.
# EPP_INSTALL_ENVOY=0 skips the Envoy gateway (when a Gateway API Inference Extension
# gateway routes to the InferencePool instead).
set -euo pipefail
cd "$(dirname "${{BASH_SOURCE[0]}}")/.."
NAMESPACE={ns}

if command -v sha256sum >/dev/null 2>&1; then
  sha256sum --quiet -c {CHECKSUMS}
fi
kubectl get namespace "$NAMESPACE" >/dev/null 2>&1 || kubectl create namespace "$NAMESPACE"
kubectl apply -f kubernetes/rbac.yaml -f kubernetes/configmap.yaml -f kubernetes/service.yaml
# The pool ConfigMap is created once; sync-pool.sh owns its contents afterwards.
kubectl -n "$NAMESPACE" get configmap {PICKER_NAME}-pool >/dev/null 2>&1 || kubectl apply -f kubernetes/pool.yaml
scripts/sync-pool.sh
kubectl apply -f kubernetes/deployment.yaml
if [[ "${{EPP_INSTALL_ENVOY:-1}}" == "1" ]]; then
  kubectl apply -f kubernetes/envoy.yaml
fi
if kubectl get crd inferencepools.inference.networking.k8s.io >/dev/null 2>&1; then
  kubectl apply -f kubernetes/inferencepool.yaml
else
  echo "InferencePool CRD not installed: skipping kubernetes/inferencepool.yaml" >&2
fi
if kubectl get crd httproutes.gateway.networking.k8s.io >/dev/null 2>&1; then
  kubectl apply -f kubernetes/httproute.yaml
else
  echo "HTTPRoute CRD not installed: skipping kubernetes/httproute.yaml" >&2
fi
kubectl -n "$NAMESPACE" rollout status deployment/{PICKER_NAME} --timeout=180s
"""


def _uninstall_script(ctx: BundleContext) -> str:
    return f"""\
#!/usr/bin/env bash
# Removes what install.sh created (the namespace {ctx.options.namespace} itself is kept).
set -euo pipefail
cd "$(dirname "${{BASH_SOURCE[0]}}")/.."

if kubectl get crd httproutes.gateway.networking.k8s.io >/dev/null 2>&1; then
  kubectl delete --ignore-not-found -f kubernetes/httproute.yaml
fi
if kubectl get crd inferencepools.inference.networking.k8s.io >/dev/null 2>&1; then
  kubectl delete --ignore-not-found -f kubernetes/inferencepool.yaml
fi
kubectl delete --ignore-not-found -f kubernetes/envoy.yaml -f kubernetes/deployment.yaml \\
  -f kubernetes/pool.yaml -f kubernetes/service.yaml -f kubernetes/configmap.yaml -f kubernetes/rbac.yaml
"""


def _sync_pool_script(ctx: BundleContext) -> str:
    opts = ctx.options
    selector = ",".join(f"{k}={v}" for k, v in opts.selector.items())
    return f"""\
#!/usr/bin/env bash
# Writes the IPs of the running model-server pods ({selector}) into the picker's pool file
# (ConfigMap {PICKER_NAME}-pool). The kubelet updates the mounted file within about a minute
# and the picker applies it without a restart. Run again whenever the pods change.
set -euo pipefail
NAMESPACE={opts.namespace}
SELECTOR={selector}
PORT={opts.model_server_port}

pool_file="$(mktemp)"
trap 'rm -f "$pool_file"' EXIT
ips="$(kubectl -n "$NAMESPACE" get pods -l "$SELECTOR" --field-selector=status.phase=Running \\
  -o jsonpath='{{range .items[*]}}{{.status.podIP}}{{"\\n"}}{{end}}')"
if [[ -z "${{ips//[[:space:]]/}}" ]]; then
  echo "endpoints: []" >"$pool_file"
  echo "no running pods match $SELECTOR in $NAMESPACE: the pool is empty" >&2
else
  echo "endpoints:" >"$pool_file"
  while read -r ip; do
    if [[ -n "$ip" ]]; then
      printf '  - address: "%s"\\n    port: %s\\n' "$ip" "$PORT" >>"$pool_file"
    fi
  done <<<"$ips"
fi
kubectl -n "$NAMESPACE" create configmap {PICKER_NAME}-pool --from-file=pool.yaml="$pool_file" \\
  --dry-run=client -o yaml | kubectl apply -f -
"""


def render_scripts(ctx: BundleContext) -> dict[str, RenderedFile]:
    return {"scripts/install.sh": RenderedFile(_install_script(ctx), executable=True),
            "scripts/uninstall.sh": RenderedFile(_uninstall_script(ctx), executable=True),
            "scripts/sync-pool.sh": RenderedFile(_sync_pool_script(ctx), executable=True)}


# --------------------------------------------------------------------------- readme


def render_readme(ctx: BundleContext) -> dict[str, RenderedFile]:
    opts = ctx.options
    text = f"""\
# Endpoint picker bundle: {ctx.config_name}

Rendered by `epp bundle` for namespace `{opts.namespace}`, pool `{opts.pool_name}`
(model servers labelled `{', '.join(f'{k}={v}' for k, v in opts.selector.items())}`, port
{opts.model_server_port}), picker image `{opts.image}`, {opts.replicas} picker replica(s).

## Verify and install

```sh
sha256sum -c {CHECKSUMS}
scripts/install.sh              # EPP_INSTALL_ENVOY=0 scripts/install.sh to skip the Envoy gateway
```

`install.sh` applies the picker (ServiceAccount + RBAC, ConfigMaps, Deployment, Service
`{opts.picker_host}:{GRPC_PORT}`), fills the pool with `scripts/sync-pool.sh`, starts an
Envoy gateway (`{PICKER_NAME}-envoy:{ENVOY_PORT}`), and applies the InferencePool and
HTTPRoute when their CRDs are installed. `scripts/uninstall.sh` removes it all again.

## Where the endpoints come from

The picker reads its endpoints from a pool file, mounted from the ConfigMap
`{PICKER_NAME}-pool`; it has no Kubernetes pool source. `scripts/sync-pool.sh` writes the
IPs of the running pods the InferencePool selects into it; run it again when those pods
change (by hand, from CI, or from a CronJob with a ServiceAccount allowed to list pods
and update that ConfigMap). The kubelet refreshes the mounted file within about a minute
and the picker applies it without restarting.

## Files

| Path | What |
|---|---|
| `envoy/envoy.yaml` | Envoy bootstrap: listener 0.0.0.0:{ENVOY_PORT}, ext_proc to \
`{opts.picker_host}:{GRPC_PORT}`, ORIGINAL_DST cluster to the chosen model server |
| `kubernetes/rbac.yaml` | ServiceAccount, Role, RoleBinding (read pods and inference CRDs, as the GIE chart) |
| `kubernetes/configmap.yaml` | ConfigMap `{PICKER_NAME}-config` with the EndpointPickerConfig |
| `kubernetes/pool.yaml` | ConfigMap `{PICKER_NAME}-pool`, the pool file (empty until synced) |
| `kubernetes/deployment.yaml` | the picker: `epp {' '.join(picker_args(opts))}` |
| `kubernetes/service.yaml` | Service `{PICKER_NAME}`: ext_proc {GRPC_PORT}, metrics {METRICS_PORT} |
| `kubernetes/envoy.yaml` | Envoy gateway: bootstrap ConfigMap, Deployment, Service |
| `kubernetes/inferencepool.yaml` | InferencePool `inference.networking.k8s.io/v1` for GIE-compatible gateways |
| `kubernetes/httproute.yaml` | HTTPRoute `gateway.networking.k8s.io/v1`: Gateway `{opts.gateway_name}` → pool |
| `examples/model-server.yaml` | a vLLM Deployment the pool selects (not applied by install.sh) |
| `helm/values.yaml` | values for the chart `deploy/helm/epp` (same resources) |
| `scripts/*.sh` | install, uninstall, sync-pool |
| `{CHECKSUMS}` | SHA-256 of every other file |

The admin port ({METRICS_PORT}: /metrics, /healthz, /readyz, /debug) listens on all pod
addresses so probes and Prometheus reach it; add `--admin-token-file` (docs/security.md)
to protect /metrics and /debug.
"""
    return {"README.md": RenderedFile(text)}

