"""Renderers of structured files: the Envoy bootstrap, Kubernetes manifests and Helm values.

Every manifest is built as data and dumped with one YAML dumper, so what the tests
validate against the Kubernetes schemas is exactly what is written.
"""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from epp.ops.bundle_model import (
    CONFIG_MOUNT,
    DEFAULT_MODEL_SERVER_IMAGE,
    ENVOY_ADMIN_PORT,
    ENVOY_PORT,
    GRPC_HEALTH_PORT,
    GRPC_PORT,
    METRICS_PORT,
    PICKER_NAME,
    POOL_MOUNT,
    BundleContext,
    BundleOptions,
    RenderedFile,
)

__all__ = ["envoy_bootstrap", "helm_values", "picker_args", "render_envoy", "render_helm", "render_kubernetes"]


class _BlockDumper(yaml.SafeDumper):
    """Safe dumper writing multi-line strings (configs, bootstraps) as readable ``|`` blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        # Manifests repeat label maps; kubectl users expect them spelled out, not &id001.
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def _dump(doc: Mapping[str, Any]) -> str:
    return yaml.dump(dict(doc), Dumper=_BlockDumper, sort_keys=False, width=1000)


def _yaml_docs(docs: Iterable[Mapping[str, Any]], header: str = "") -> str:
    body = "---\n".join(_dump(doc) for doc in docs)
    return (textwrap.dedent(header).lstrip() if header else "") + body


def _meta(ctx: BundleContext, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": ctx.options.namespace, "labels": {
        "app.kubernetes.io/name": PICKER_NAME,
        "app.kubernetes.io/instance": ctx.options.pool_name,
        "app.kubernetes.io/component": component,
    }}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- envoy


def envoy_bootstrap(options: BundleOptions) -> str:
    """The project's bootstrap for a cluster: the picker is a Service, Envoy listens on all addresses."""
    from epp.devstack.envoy import render_bootstrap, repo_bootstrap_path

    template = repo_bootstrap_path()
    if not template.exists():
        raise FileNotFoundError(f"{template} not found: epp bundle needs the source checkout's config/envoy.yaml")
    doc = yaml.safe_load(render_bootstrap(template, ENVOY_PORT, ENVOY_ADMIN_PORT, GRPC_PORT,
                                          listen_address="0.0.0.0"))
    for cluster in doc["static_resources"]["clusters"]:
        if cluster["name"] == "ext_proc":
            # A Service name, not an IP: resolved through cluster DNS; V4_PREFERRED still
            # works on IPv6-only clusters.
            cluster["type"] = "STRICT_DNS"
            cluster["dns_lookup_family"] = "V4_PREFERRED"
            socket = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            socket["socket_address"]["address"] = options.picker_host
    header = f"""\
        # Envoy bootstrap for the endpoint picker, rendered by `epp bundle` from config/envoy.yaml.
        # Listens on 0.0.0.0:{ENVOY_PORT}; asks the picker ({options.picker_host}:{GRPC_PORT}, ext_proc
        # gRPC) where each request goes, then forwards it through the ORIGINAL_DST cluster to the
        # model server the picker put in x-gateway-destination-endpoint. The admin interface
        # stays on 127.0.0.1:{ENVOY_ADMIN_PORT}.
        """
    return textwrap.dedent(header) + yaml.safe_dump(doc, sort_keys=False, width=1000)


def render_envoy(ctx: BundleContext) -> dict[str, RenderedFile]:
    return {"envoy/envoy.yaml": RenderedFile(envoy_bootstrap(ctx.options))}


# --------------------------------------------------------------------------- kubernetes


def _rbac(ctx: BundleContext) -> list[dict[str, Any]]:
    # The rules of the GIE inferencepool chart, so the same ServiceAccount serves a
    # Kubernetes pool source; this picker itself reads its pool from the mounted file.
    rules = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["inference.networking.k8s.io"], "resources": ["inferencepools"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["inference.networking.x-k8s.io"],
         "resources": ["inferenceobjectives", "inferencemodelrewrites"], "verbs": ["get", "list", "watch"]},
    ]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(ctx, PICKER_NAME, "endpoint-picker")},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": _meta(ctx, PICKER_NAME, "endpoint-picker"), "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": _meta(ctx, PICKER_NAME, "endpoint-picker"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": PICKER_NAME},
         "subjects": [{"kind": "ServiceAccount", "name": PICKER_NAME, "namespace": ctx.options.namespace}]},
    ]


def _config_map(ctx: BundleContext) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(ctx, f"{PICKER_NAME}-config", "config"),
            "data": {"config.yaml": ctx.config_text}}


def _pool_map(ctx: BundleContext) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(ctx, f"{PICKER_NAME}-pool", "pool"),
            "data": {"pool.yaml": "endpoints: []\n"}}


def picker_args(options: BundleOptions) -> list[str]:
    """``epp serve`` flags of the picker container."""
    return ["serve", "--bind", "0.0.0.0", "--admin-bind", "0.0.0.0",
            "--grpc-port", str(GRPC_PORT), "--grpc-health-port", str(GRPC_HEALTH_PORT),
            "--metrics-port", str(METRICS_PORT),
            "--config-file", f"{CONFIG_MOUNT}/config.yaml", "--pool-file", f"{POOL_MOUNT}/pool.yaml",
            "--pool-name", options.pool_name, "--shutdown-delay", "5s", "--shutdown-grace-period", "30s"]


_RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
               "runAsNonRoot": True, "runAsUser": 65532, "capabilities": {"drop": ["ALL"]},
               "seccompProfile": {"type": "RuntimeDefault"}}


def _deployment(ctx: BundleContext) -> dict[str, Any]:
    opts = ctx.options
    meta = _meta(ctx, PICKER_NAME, "endpoint-picker")
    selector = {k: meta["labels"][k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}
    container = {
        "name": PICKER_NAME, "image": opts.image, "imagePullPolicy": "IfNotPresent",
        "command": ["epp"], "args": picker_args(opts),
        "ports": [{"name": "grpc-ext-proc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                  {"name": "grpc-health", "containerPort": GRPC_HEALTH_PORT, "protocol": "TCP"},
                  {"name": "http-metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": METRICS_PORT}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": METRICS_PORT}, "periodSeconds": 10,
                          "failureThreshold": 3},
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "securityContext": _RESTRICTED,
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
                         {"name": "pool", "mountPath": POOL_MOUNT, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
        "replicas": opts.replicas,
        "selector": {"matchLabels": selector},
        "template": {
            # A changed config restarts the pods (the picker reads it at start-up).
            "metadata": {"labels": dict(meta["labels"]),
                         "annotations": {"epp/config-sha256": _sha256(ctx.config_text)}},
            "spec": {
                "serviceAccountName": PICKER_NAME,
                # --shutdown-delay 5s + --shutdown-grace-period 30s, plus margin.
                "terminationGracePeriodSeconds": 45,
                "containers": [container],
                "volumes": [{"name": "config", "configMap": {"name": f"{PICKER_NAME}-config"}},
                            {"name": "pool", "configMap": {"name": f"{PICKER_NAME}-pool"}},
                            {"name": "tmp", "emptyDir": {}}],
            },
        },
    }}


def _service(ctx: BundleContext) -> dict[str, Any]:
    meta = _meta(ctx, PICKER_NAME, "endpoint-picker")
    selector = {k: meta["labels"][k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
        "type": "ClusterIP", "selector": selector,
        "ports": [{"name": "grpc-ext-proc", "port": GRPC_PORT, "targetPort": GRPC_PORT, "protocol": "TCP",
                   "appProtocol": "kubernetes.io/h2c"},
                  {"name": "http-metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT, "protocol": "TCP"}]}}


def _inference_pool(ctx: BundleContext) -> dict[str, Any]:
    opts = ctx.options
    return {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": _meta(ctx, opts.pool_name, "inference-pool"),
            "spec": {"selector": {"matchLabels": opts.selector},
                     "targetPorts": [{"number": opts.model_server_port}],
                     "endpointPickerRef": {"group": "", "kind": "Service", "name": PICKER_NAME,
                                           "port": {"number": GRPC_PORT}, "failureMode": "FailClose"}}}


def _http_route(ctx: BundleContext) -> dict[str, Any]:
    opts = ctx.options
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": _meta(ctx, opts.pool_name, "route"),
            "spec": {"parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                     "name": opts.gateway_name}],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                "backendRefs": [{"group": "inference.networking.k8s.io", "kind": "InferencePool",
                                                 "name": opts.pool_name}]}]}}


def _envoy_gateway(ctx: BundleContext) -> list[dict[str, Any]]:
    opts = ctx.options
    name = f"{PICKER_NAME}-envoy"
    meta = _meta(ctx, name, "gateway")
    selector = {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": opts.pool_name}
    labels = {**meta["labels"], **selector}
    meta["labels"] = labels
    bootstrap = envoy_bootstrap(opts)
    container = {
        "name": "envoy", "image": opts.envoy_image, "imagePullPolicy": "IfNotPresent",
        "args": ["-c", "/etc/envoy/envoy.yaml", "--log-level", "warn"],
        "ports": [{"name": "http", "containerPort": ENVOY_PORT, "protocol": "TCP"}],
        # The admin interface stays on loopback, so readiness is the listener accepting.
        "readinessProbe": {"tcpSocket": {"port": ENVOY_PORT}, "periodSeconds": 2},
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": {**_RESTRICTED, "runAsUser": 101},
        "volumeMounts": [{"name": "bootstrap", "mountPath": "/etc/envoy", "readOnly": True}],
    }
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"envoy.yaml": bootstrap}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": 1, "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": labels, "annotations": {"epp/bootstrap-sha256": _sha256(bootstrap)}},
                         "spec": {"containers": [container],
                                  "volumes": [{"name": "bootstrap", "configMap": {"name": name}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
            "type": "ClusterIP", "selector": selector,
            "ports": [{"name": "http", "port": ENVOY_PORT, "targetPort": ENVOY_PORT, "protocol": "TCP"}]}},
    ]


def _model_server_example(ctx: BundleContext) -> dict[str, Any]:
    opts = ctx.options
    labels = dict(opts.selector)
    container = {
        "name": "vllm", "image": DEFAULT_MODEL_SERVER_IMAGE,
        "args": ["--model", "Qwen/Qwen2.5-0.5B-Instruct", "--port", str(opts.model_server_port)],
        "ports": [{"name": "http", "containerPort": opts.model_server_port, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": opts.model_server_port}, "periodSeconds": 5},
        "resources": {"limits": {"nvidia.com/gpu": 1}},
    }
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"{opts.pool_name}-vllm", "namespace": opts.namespace, "labels": labels},
            "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}}}


_K8S_HEADER = "# Rendered by `epp bundle` (config: {config}); edit the config and re-render rather than this file.\n"


def render_kubernetes(ctx: BundleContext) -> dict[str, RenderedFile]:
    header = _K8S_HEADER.format(config=ctx.config_name)
    files = {
        "kubernetes/rbac.yaml": _rbac(ctx),
        "kubernetes/configmap.yaml": [_config_map(ctx)],
        "kubernetes/pool.yaml": [_pool_map(ctx)],
        "kubernetes/deployment.yaml": [_deployment(ctx)],
        "kubernetes/service.yaml": [_service(ctx)],
        "kubernetes/envoy.yaml": _envoy_gateway(ctx),
        "kubernetes/inferencepool.yaml": [_inference_pool(ctx)],
        "kubernetes/httproute.yaml": [_http_route(ctx)],
        "examples/model-server.yaml": [_model_server_example(ctx)],
    }
    return {path: RenderedFile(_yaml_docs(docs, header)) for path, docs in files.items()}


# --------------------------------------------------------------------------- helm


def helm_values(ctx: BundleContext) -> dict[str, Any]:
    opts = ctx.options
    return {
        "image": opts.image,
        "replicas": opts.replicas,
        "poolName": opts.pool_name,
        "modelServerPort": opts.model_server_port,
        "modelServerSelector": opts.selector,
        "inferencePool": {"enabled": True},
        "httpRoute": {"enabled": True, "gatewayName": opts.gateway_name},
        "envoy": {"enabled": True, "image": opts.envoy_image, "bootstrap": envoy_bootstrap(opts)},
        "config": ctx.config_text,
    }


def render_helm(ctx: BundleContext) -> dict[str, RenderedFile]:
    header = f"""\
        # Values for the chart in deploy/helm/epp, rendered by `epp bundle` (config: {ctx.config_name}).
        # The Envoy bootstrap calls the picker in namespace {ctx.options.namespace!r}: install the
        # chart there (helm install epp deploy/helm/epp -n {ctx.options.namespace} -f helm/values.yaml).
        """
    return {"helm/values.yaml": RenderedFile(_yaml_docs([helm_values(ctx)], header))}

