"""The GIE Helm chart's latency-predictor config and config/slo-aware.yaml load unchanged."""

from __future__ import annotations

from pathlib import Path

from epp.config.loader import load_config
from epp.datalayer.pool import EndpointPool
from epp.framework.plugin import Handle
from epp.plugins import default_registry

HERE = Path(__file__).parent
HELM = HERE / "fixtures" / "helm_latency_predictor.yaml"
SLO_AWARE = HERE.parents[2] / "config" / "slo-aware.yaml"



def plugin_types(config_text: str) -> dict[str, str]:
    config = load_config(config_text, default_registry(), Handle(pool=EndpointPool()))
    return {name: type(plugin).TYPE for name, plugin in config.plugins.items()}


def test_helm_latency_predictor_config_loads() -> None:
    types = plugin_types(HELM.read_text())
    assert types["predicted-latency-producer"] == "predicted-latency-producer"
    assert types["strict-affinity-filter"] == types["loose-affinity-filter"] == "prefix-cache-affinity-filter"
    for name in ("latency-scorer", "slo-headroom-tier-filter", "latency-slo-admitter", "weighted-random-picker"):
        assert types[name] == name


def test_shipped_slo_aware_config_loads() -> None:
    types = plugin_types(SLO_AWARE.read_text())
    assert types["slo-aware-profile-handler"] == "slo-aware-profile-handler"
    assert types["slo-request-tracker"] == "slo-request-tracker"


def test_fixture_is_the_helm_template_rendered() -> None:
    text = HELM.read_text()
    assert "1748e829d1161147aaf35e76699ec86fd88406d2" in text
    assert "config/charts/epplib/templates/_config.yaml" in text
