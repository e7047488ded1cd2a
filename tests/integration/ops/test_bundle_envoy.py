"""The Envoy bootstrap `epp bundle` renders is accepted by the real Envoy (`envoy --mode validate`).

The same bootstrap appears three times in a bundle (envoy/envoy.yaml, the epp-envoy
ConfigMap, the Helm values); each copy is validated as Envoy would load it from its mount.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from epp.devstack.envoy import envoy_binary
from epp.ops.bundle import BundleOptions, write_bundle

REPO = Path(__file__).resolve().parents[3]
VALIDATE_TIMEOUT_S = 60


def envoy_validate(bootstrap: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(bootstrap), "--log-level", "error"],
                          capture_output=True, text=True, timeout=VALIDATE_TIMEOUT_S)


@pytest.mark.parametrize("options", [BundleOptions(), BundleOptions(namespace="llm", pool_name="qwen")],
                         ids=["defaults", "llm-namespace"])
def test_every_copy_of_the_bundled_bootstrap_validates(tmp_path: Path, options: BundleOptions) -> None:
    out = tmp_path / "bundle"
    write_bundle(REPO / "config" / "default.yaml", out, options)
    config_map = next(d for d in yaml.safe_load_all((out / "kubernetes/envoy.yaml").read_text())
                      if d["kind"] == "ConfigMap")
    copies = {
        "envoy/envoy.yaml": (out / "envoy/envoy.yaml").read_text(),
        "ConfigMap epp-envoy": config_map["data"]["envoy.yaml"],
        "helm values": yaml.safe_load((out / "helm/values.yaml").read_text())["envoy"]["bootstrap"],
    }
    for i, (where, text) in enumerate(copies.items()):
        mounted = tmp_path / f"copy-{i}.yaml"
        mounted.write_text(text)
        result = envoy_validate(mounted)
        assert result.returncode == 0, f"{where}: {result.stdout}{result.stderr}"
        assert f"epp.{options.namespace}.svc" in text


def test_envoy_rejects_a_broken_bootstrap(tmp_path: Path) -> None:
    # The check above can fail: the same bootstrap with an unknown field is refused.
    out = tmp_path / "bundle"
    write_bundle(REPO / "config" / "default.yaml", out, BundleOptions())
    doc = yaml.safe_load((out / "envoy/envoy.yaml").read_text())
    doc["static_resources"]["clusters"][0]["no_such_field"] = 1
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(doc))

    result = envoy_validate(broken)

    assert result.returncode != 0
    assert "no_such_field" in result.stdout + result.stderr
