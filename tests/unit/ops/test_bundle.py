"""`epp bundle`: what a user gets in the output directory, and what they get when something is wrong.

Core Kubernetes kinds are validated offline against the Kubernetes JSON schemas with
``kubernetes-validate`` (strict: unknown fields fail). InferencePool and HTTPRoute are CRDs
those schemas do not have: they are checked structurally against the fields of
inference.networking.k8s.io/v1 and gateway.networking.k8s.io/v1 (reference: GIE section 7).
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from epp.datalayer.poolsource import parse_pool_file
from epp.ops import bundle_cli
from epp.ops.bundle import (
    CHECKSUMS,
    DEFAULT_ENVOY_IMAGE,
    DEFAULT_IMAGE,
    RENDERERS,
    BundleContext,
    BundleError,
    BundleOptions,
    RenderedFile,
    deploy_files,
    picker_args,
    write_bundle,
)

REPO = Path(__file__).resolve().parents[3]
SHIPPED_CONFIGS = sorted(p for p in (REPO / "config").glob("*.yaml") if "kind: EndpointPickerConfig" in p.read_text())
DEFAULT_CONFIG = REPO / "config" / "default.yaml"
K8S_VERSION = kubernetes_validate.latest_version()
CRD_KINDS = {"InferencePool", "HTTPRoute"}
EXPECTED_FILES = {
    "README.md", "envoy/envoy.yaml", "helm/values.yaml", "examples/model-server.yaml",
    "kubernetes/rbac.yaml", "kubernetes/configmap.yaml", "kubernetes/pool.yaml", "kubernetes/deployment.yaml",
    "kubernetes/service.yaml", "kubernetes/envoy.yaml", "kubernetes/inferencepool.yaml",
    "kubernetes/httproute.yaml", "scripts/install.sh", "scripts/uninstall.sh", "scripts/sync-pool.sh", CHECKSUMS,
}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def bundle_of(tmp_path: Path, config: Path = DEFAULT_CONFIG, **options: Any) -> Path:
    out = tmp_path / "bundle"
    write_bundle(config, out, BundleOptions(**options))
    return out


def manifests(out: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted([*(out / "kubernetes").glob("*.yaml"), out / "examples" / "model-server.yaml"]):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
    return docs


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def all_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- CRD structure


def _keys_within(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = set(obj) - allowed
    assert not extra, f"{where}: unknown fields {sorted(extra)}"


def _port_number(value: Any, where: str) -> None:
    assert isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536, f"{where}: {value!r}"


def check_inference_pool(doc: dict[str, Any]) -> None:
    """inference.networking.k8s.io/v1 InferencePool fields (GIE api/v1/inferencepool_types.go)."""
    assert doc["apiVersion"] == "inference.networking.k8s.io/v1"
    _keys_within(doc, {"apiVersion", "kind", "metadata", "spec"}, "InferencePool")
    assert DNS_LABEL.match(doc["metadata"]["name"])
    spec = doc["spec"]
    _keys_within(spec, {"selector", "targetPorts", "appProtocol", "endpointPickerRef"}, "spec")
    _keys_within(spec["selector"], {"matchLabels"}, "spec.selector")
    labels = spec["selector"]["matchLabels"]
    assert labels and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
    ports = spec["targetPorts"]
    assert 1 <= len(ports) <= 8
    numbers = [p["number"] for p in ports]
    assert len(set(numbers)) == len(numbers), "targetPorts must be unique"
    for i, p in enumerate(ports):
        _keys_within(p, {"number"}, f"spec.targetPorts[{i}]")
        _port_number(p["number"], f"spec.targetPorts[{i}].number")
    assert spec.get("appProtocol", "http") in {"http", "kubernetes.io/h2c"}
    ref = spec["endpointPickerRef"]
    _keys_within(ref, {"group", "kind", "name", "port", "failureMode"}, "spec.endpointPickerRef")
    assert ref.get("group", "") == "" and ref.get("kind", "Service") == "Service"
    assert DNS_LABEL.match(ref["name"])
    _keys_within(ref["port"], {"number"}, "spec.endpointPickerRef.port")
    _port_number(ref["port"]["number"], "spec.endpointPickerRef.port.number")
    assert ref.get("failureMode", "FailClose") in {"FailOpen", "FailClose"}


def check_http_route(doc: dict[str, Any]) -> None:
    """gateway.networking.k8s.io/v1 HTTPRoute fields used here (parentRefs, matches, backendRefs)."""
    assert doc["apiVersion"] == "gateway.networking.k8s.io/v1"
    _keys_within(doc, {"apiVersion", "kind", "metadata", "spec"}, "HTTPRoute")
    spec = doc["spec"]
    _keys_within(spec, {"parentRefs", "hostnames", "rules"}, "spec")
    assert spec["parentRefs"]
    for ref in spec["parentRefs"]:
        _keys_within(ref, {"group", "kind", "namespace", "name", "sectionName", "port"}, "parentRef")
        assert DNS_LABEL.match(ref["name"])
    assert 1 <= len(spec["rules"]) <= 16
    for rule in spec["rules"]:
        _keys_within(rule, {"name", "matches", "filters", "backendRefs", "timeouts"}, "rule")
        for match in rule.get("matches", []):
            _keys_within(match, {"path", "headers", "queryParams", "method"}, "match")
            assert match["path"]["type"] in {"Exact", "PathPrefix", "RegularExpression"}
            assert match["path"]["value"].startswith("/")
        for backend in rule["backendRefs"]:
            _keys_within(backend, {"group", "kind", "name", "namespace", "port", "weight", "filters"}, "backendRef")
            assert (backend["group"], backend["kind"]) == ("inference.networking.k8s.io", "InferencePool")


def test_the_crd_checks_reject_a_broken_pool_and_route() -> None:
    pool = {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool", "metadata": {"name": "p"},
            "spec": {"selector": {"matchLabels": {"app": "p"}}, "targetPorts": [{"number": 8000}, {"number": 8000}],
                     "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}}}
    with pytest.raises(AssertionError, match="unique"):
        check_inference_pool(pool)
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"},
             "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "p"}], "bogus": 1}]}}
    with pytest.raises(AssertionError, match="unknown fields"):
        check_http_route(route)


# --------------------------------------------------------------------------- every shipped config


@pytest.mark.parametrize("config", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_bundle_of_each_shipped_config_is_complete_and_valid(tmp_path: Path, config: Path) -> None:
    out = bundle_of(tmp_path, config)

    assert all_files(out) == EXPECTED_FILES
    docs = manifests(out)
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    check_inference_pool(one(docs, "InferencePool"))
    check_http_route(one(docs, "HTTPRoute"))
    # The ConfigMap and the Helm values carry the config byte for byte (comments included).
    assert one(docs, "ConfigMap", "epp-config")["data"]["config.yaml"] == config.read_text()
    assert yaml.safe_load((out / "helm/values.yaml").read_text())["config"] == config.read_text()
    for script in ("install.sh", "uninstall.sh", "sync-pool.sh"):
        path = out / "scripts" / script
        assert path.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"
        assert "set -euo pipefail" in path.read_text()
        subprocess.run(["bash", "-n", str(path)], check=True)


def test_checksums_cover_every_other_file_and_sha256sum_accepts_them(tmp_path: Path) -> None:
    out = bundle_of(tmp_path)
    listed = {line.split("  ", 1)[1] for line in (out / CHECKSUMS).read_text().splitlines()}
    assert listed == EXPECTED_FILES - {CHECKSUMS}

    ok = subprocess.run(["sha256sum", "-c", CHECKSUMS], cwd=out, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    with (out / "kubernetes/deployment.yaml").open("a") as f:
        f.write("# tampered\n")
    bad = subprocess.run(["sha256sum", "-c", CHECKSUMS], cwd=out, capture_output=True, text=True)
    assert bad.returncode != 0
    assert "kubernetes/deployment.yaml: FAILED" in bad.stdout


# --------------------------------------------------------------------------- the resources fit together


def test_resources_reference_each_other_and_follow_the_flags(tmp_path: Path) -> None:
    out = bundle_of(tmp_path, namespace="llm", image="example.org/epp:1.2", pool_name="qwen",
                    model_server_port=8100, replicas=3, gateway_name="edge")
    docs = manifests(out)

    assert {d["metadata"]["namespace"] for d in docs} == {"llm"}
    picker = one(docs, "Deployment", "epp")
    pod = picker["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert picker["spec"]["replicas"] == 3
    assert container["image"] == "example.org/epp:1.2"
    assert container["command"] + container["args"] == ["epp", *picker_args(BundleOptions(pool_name="qwen"))]
    assert container["args"][container["args"].index("--pool-name") + 1] == "qwen"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v.get("configMap", {}).get("name") for v in pod["volumes"]}
    config_arg = container["args"][container["args"].index("--config-file") + 1]
    pool_arg = container["args"][container["args"].index("--pool-file") + 1]
    assert volumes[mounts[str(Path(config_arg).parent)]] == "epp-config"
    assert volumes[mounts[str(Path(pool_arg).parent)]] == "epp-pool"
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert one(docs, "RoleBinding")["subjects"][0] == {"kind": "ServiceAccount", "name": "epp", "namespace": "llm"}

    service = one(docs, "Service", "epp")
    assert service["spec"]["selector"].items() <= picker["spec"]["template"]["metadata"]["labels"].items()
    pool = one(docs, "InferencePool")
    assert pool["metadata"]["name"] == "qwen"
    assert pool["spec"]["endpointPickerRef"]["name"] == "epp"
    assert pool["spec"]["endpointPickerRef"]["port"]["number"] in {p["port"] for p in service["spec"]["ports"]}
    assert pool["spec"]["targetPorts"] == [{"number": 8100}]
    route = one(docs, "HTTPRoute")
    assert route["spec"]["parentRefs"][0]["name"] == "edge"
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == "qwen"

    # The example model server is what the pool selects, on the port it targets.
    model = one(docs, "Deployment", "qwen-vllm")
    assert pool["spec"]["selector"]["matchLabels"].items() <= model["spec"]["template"]["metadata"]["labels"].items()
    assert model["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 8100

    # Envoy in the cluster calls the picker Service by its DNS name.
    bootstrap = yaml.safe_load((out / "envoy/envoy.yaml").read_text())
    ext_proc = next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "ext_proc")
    socket = ext_proc["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (socket["address"], socket["port_value"]) == ("epp.llm.svc", 9002)
    assert one(docs, "ConfigMap", "epp-envoy")["data"]["envoy.yaml"] == (out / "envoy/envoy.yaml").read_text()
    values = yaml.safe_load((out / "helm/values.yaml").read_text())
    assert values["envoy"]["bootstrap"] == (out / "envoy/envoy.yaml").read_text()
    assert (values["image"], values["replicas"], values["poolName"], values["modelServerPort"]) == \
        ("example.org/epp:1.2", 3, "qwen", 8100)


def test_the_empty_pool_file_loads_in_the_picker(tmp_path: Path) -> None:
    pool_map = one(manifests(bundle_of(tmp_path)), "ConfigMap", "epp-pool")
    assert parse_pool_file(pool_map["data"]["pool.yaml"]) == []


def _fake_kubectl(bin_dir: Path, pod_ips: str, applied: Path) -> None:
    # Plays `kubectl get pods ... -o jsonpath=...` and `create configmap --dry-run ... | kubectl apply -f -`.
    script = f"""#!/usr/bin/env bash
set -euo pipefail
case "$*" in
  *"get pods"*) printf '{pod_ips}' ;;
  *"create configmap"*)
    all="$*"; src="${{all##*--from-file=pool.yaml=}}"; src="${{src%% *}}"
    printf 'data:\\n  pool.yaml: |\\n'; sed 's/^/    /' "$src" ;;
  *"apply -f -"*) cat >{applied} ;;
  *) echo "unexpected kubectl $*" >&2; exit 3 ;;
esac
"""
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(script)
    kubectl.chmod(0o755)


@pytest.mark.parametrize(("pod_ips", "expected"), [
    ("10.1.0.4\\n10.1.0.5\\n", [("10.1.0.4", 8100), ("10.1.0.5", 8100)]),
    ("fd00::7\\n", [("fd00::7", 8100)]),
    ("", []),
])
def test_sync_pool_writes_the_pods_ips_as_a_pool_file_the_picker_reads(
        tmp_path: Path, pod_ips: str, expected: list[tuple[str, int]]) -> None:
    out = bundle_of(tmp_path, model_server_port=8100)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    applied = tmp_path / "applied.yaml"
    _fake_kubectl(bin_dir, pod_ips, applied)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    subprocess.run([str(out / "scripts/sync-pool.sh")], env=env, check=True, capture_output=True, timeout=30)

    pool_text = yaml.safe_load(applied.read_text())["data"]["pool.yaml"]
    assert [(m.address, m.port) for m in parse_pool_file(pool_text)] == expected


def _recording_kubectl(bin_dir: Path, log: Path, crds_installed: bool) -> dict[str, str]:
    # Logs every call; `get crd` answers per crds_installed, other `get`s find nothing.
    crd_rc = 0 if crds_installed else 1
    script = f"""#!/usr/bin/env bash
echo "$*" >>{log}
case "$*" in
  *"get crd"*) exit {crd_rc} ;;
  *"get pods"*) printf '10.1.0.4\\n' ;;
  *"get "*) exit 1 ;;
  *"apply -f -"*) cat >/dev/null ;;
esac
"""
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "kubectl").write_text(script)
    (bin_dir / "kubectl").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.mark.parametrize("crds_installed", [False, True])
def test_install_and_uninstall_apply_and_delete_the_bundle(tmp_path: Path, crds_installed: bool) -> None:
    out = bundle_of(tmp_path, namespace="llm")
    log = tmp_path / "kubectl.log"
    env = _recording_kubectl(tmp_path / "bin", log, crds_installed)

    subprocess.run([str(out / "scripts/install.sh")], env=env, check=True, capture_output=True, timeout=30)
    calls = log.read_text().splitlines()
    applied = [c for c in calls if c.startswith("apply")]
    assert "create namespace llm" in calls
    assert applied[0] == ("apply -f kubernetes/rbac.yaml -f kubernetes/configmap.yaml "
                          "-f kubernetes/service.yaml")
    assert "apply -f kubernetes/pool.yaml" in applied
    assert applied.index("apply -f -") < applied.index("apply -f kubernetes/deployment.yaml")  # pool synced first
    assert "apply -f kubernetes/envoy.yaml" in applied
    assert ("apply -f kubernetes/inferencepool.yaml" in applied) is crds_installed
    assert ("apply -f kubernetes/httproute.yaml" in applied) is crds_installed
    assert calls[-1] == "-n llm rollout status deployment/epp --timeout=180s"

    log.unlink()
    subprocess.run([str(out / "scripts/uninstall.sh")], env=env, check=True, capture_output=True, timeout=30)
    deleted = " ".join(c for c in log.read_text().splitlines() if c.startswith("delete"))
    for name in ("envoy", "deployment", "pool", "service", "configmap", "rbac"):
        assert f"-f kubernetes/{name}.yaml" in deleted
    assert ("kubernetes/inferencepool.yaml" in deleted) is crds_installed


def test_install_refuses_a_modified_bundle(tmp_path: Path) -> None:
    out = bundle_of(tmp_path)
    log = tmp_path / "kubectl.log"
    env = _recording_kubectl(tmp_path / "bin", log, crds_installed=False)
    with (out / "kubernetes/rbac.yaml").open("a") as f:
        f.write("# edited\n")

    result = subprocess.run([str(out / "scripts/install.sh")], env=env, capture_output=True, text=True, timeout=30)

    assert result.returncode != 0
    assert "kubernetes/rbac.yaml: FAILED" in result.stdout + result.stderr
    assert not log.exists(), "kubectl ran although the checksums failed"


# --------------------------------------------------------------------------- failures


def test_a_bad_config_fails_naming_the_field_and_writes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(DEFAULT_CONFIG.read_text().replace("weight: 2", "weight: heavy", 1))
    out = tmp_path / "bundle"

    with pytest.raises(BundleError, match=r"schedulingProfiles\[0\]\.plugins\[1\]\.weight") as info:
        write_bundle(config, out, BundleOptions())

    assert "bad.yaml" in info.value.where
    assert list(tmp_path.iterdir()) == [config]


@pytest.mark.parametrize(("options", "flag"), [
    ({"namespace": "Not_A_Label"}, "--namespace"),
    ({"pool_name": "-x"}, "--pool-name"),
    ({"model_server_port": 0}, "--model-server-port"),
    ({"replicas": 0}, "--replicas"),
    ({"image": "has space"}, "--image"),
])
def test_a_bad_option_fails_naming_the_flag(tmp_path: Path, options: dict[str, Any], flag: str) -> None:
    with pytest.raises(BundleError) as info:
        write_bundle(DEFAULT_CONFIG, tmp_path / "bundle", BundleOptions(**options))
    assert info.value.where == flag
    assert not (tmp_path / "bundle").exists()


def _broken(ctx: BundleContext) -> Mapping[str, RenderedFile]:
    raise RuntimeError("template exploded")


def test_a_failing_renderer_is_named_and_leaves_no_bundle(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with pytest.raises(BundleError, match="template exploded") as info:
        write_bundle(DEFAULT_CONFIG, out, BundleOptions(), renderers={**RENDERERS, "helm": _broken})
    assert info.value.where == "renderer helm"
    assert list(tmp_path.iterdir()) == []


def test_two_renderers_writing_one_path_fail(tmp_path: Path) -> None:
    def readme_again(ctx: BundleContext) -> Mapping[str, RenderedFile]:
        return {"README.md": RenderedFile("again")}

    with pytest.raises(BundleError, match="already written"):
        write_bundle(DEFAULT_CONFIG, tmp_path / "b", BundleOptions(), renderers={**RENDERERS, "z": readme_again})
    assert list(tmp_path.iterdir()) == []


def test_a_renderer_returning_the_wrong_shape_is_named(tmp_path: Path) -> None:
    def not_text(ctx: BundleContext) -> Any:
        return {"x.yaml": RenderedFile(b"bytes")}  # type: ignore[arg-type]

    with pytest.raises(BundleError, match="RenderedFile") as info:
        write_bundle(DEFAULT_CONFIG, tmp_path / "b", BundleOptions(), renderers={**RENDERERS, "odd": not_text})
    assert info.value.where == "renderer odd"
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_cannot_be_created_names_the_flag(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(BundleError, match="cannot create") as info:
        write_bundle(DEFAULT_CONFIG, blocker / "bundle", BundleOptions())
    assert info.value.where == "--output"


def test_renderers_run_in_parallel(tmp_path: Path) -> None:
    # Each waits for the other: run one after the other, the barrier breaks after 10 s.
    barrier = threading.Barrier(2, timeout=10)

    def meeting(name: str) -> Any:
        def render(ctx: BundleContext) -> Mapping[str, RenderedFile]:
            barrier.wait()
            return {f"{name}.txt": RenderedFile(name)}
        return render

    written = write_bundle(DEFAULT_CONFIG, tmp_path / "b", BundleOptions(),
                           renderers={"a": meeting("a"), "b": meeting("b")})
    assert written == ["a.txt", "b.txt", CHECKSUMS]


def test_an_existing_bundle_is_replaced_only_with_force(tmp_path: Path) -> None:
    out = bundle_of(tmp_path)
    (out / "stale.txt").write_text("from an older bundle")

    with pytest.raises(BundleError, match="not empty") as info:
        write_bundle(DEFAULT_CONFIG, out, BundleOptions())
    assert info.value.where == "--output"
    assert (out / "stale.txt").exists()

    write_bundle(DEFAULT_CONFIG, out, BundleOptions(namespace="other"), force=True)
    assert all_files(out) == EXPECTED_FILES
    assert "epp.other.svc" in (out / "envoy/envoy.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


# --------------------------------------------------------------------------- the command


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    bundle_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["bundle", *argv])
    return int(args.func(args))


def test_cli_writes_the_bundle_and_lists_its_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b"
    assert _run_cli(["--config", str(DEFAULT_CONFIG), "--output", str(out), "--namespace", "llm",
                     "--replicas", "2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == str(out / CHECKSUMS)
    assert {Path(p).relative_to(out).as_posix() for p in printed} == EXPECTED_FILES
    assert yaml.safe_load((out / "helm/values.yaml").read_text())["replicas"] == 2


def test_cli_failure_exits_non_zero_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
                      "plugins:\n- type: no-such-plugin\n")
    assert _run_cli(["--config", str(config), "--output", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("epp bundle: error: ")
    assert "plugins[0].type" in err
    assert not (tmp_path / "b").exists()


def test_cli_defaults_are_the_bundle_defaults() -> None:
    parser = argparse.ArgumentParser()
    bundle_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["bundle", "--config", "c", "--output", "o"])
    defaults = BundleOptions()
    assert (args.image, args.envoy_image) == (DEFAULT_IMAGE, DEFAULT_ENVOY_IMAGE)
    assert (args.namespace, args.pool_name, args.model_server_port, args.replicas, args.gateway_name) == \
        (defaults.namespace, defaults.pool_name, defaults.model_server_port, defaults.replicas, defaults.gateway_name)


# --------------------------------------------------------------------------- deploy/


def test_deploy_dir_is_what_bundle_renders_for_the_default_config() -> None:
    expected = deploy_files()
    for path, text in expected.items():
        assert path.exists(), f"{path} missing: run python -m epp.ops.bundle --write-deploy"
        assert path.read_text() == text, f"{path} is stale: run python -m epp.ops.bundle --write-deploy"
    on_disk = set((REPO / "deploy" / "manifests").glob("*.yaml"))
    assert on_disk == {p for p in expected if p.parent.name == "manifests"}, "deploy/manifests has extra files"


def _values_paths(node: Any, prefix: str = "") -> set[str]:
    paths = {prefix} if prefix else set()
    if isinstance(node, dict):
        for key, value in node.items():
            paths |= _values_paths(value, f"{prefix}.{key}" if prefix else key)
    return paths


def test_the_chart_uses_only_values_its_values_file_defines() -> None:
    chart = REPO / "deploy" / "helm" / "epp"
    assert yaml.safe_load((chart / "Chart.yaml").read_text())["name"] == "epp"
    defined = _values_paths(yaml.safe_load((chart / "values.yaml").read_text()))
    used = {match for template in (chart / "templates").iterdir()
            for match in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", template.read_text())}
    assert used, "the chart reads no values"
    assert used <= defined, f"undefined values: {sorted(used - defined)}"


def test_the_chart_runs_the_picker_with_the_bundle_flags() -> None:
    template = (REPO / "deploy/helm/epp/templates/deployment.yaml").read_text()
    args_block = template.split("args:\n", 1)[1].split("ports:", 1)[0]
    items = [line.strip()[2:].strip().strip('"') for line in args_block.splitlines() if line.strip().startswith("- ")]
    expected = picker_args(BundleOptions())
    pool_at = expected.index("--pool-name") + 1
    assert items[:pool_at] + items[pool_at + 1:] == expected[:pool_at] + expected[pool_at + 1:]
    assert items[pool_at] == "{{ .Values.poolName | quote }}"

