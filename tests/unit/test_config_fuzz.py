"""Config and pool-file fuzz: every mutated document loads or fails with a ConfigError naming the field.

Starting points are the shipped ``config/*.yaml`` (and a sample pool file). Each case
mutates one of them (wrong types, dangling plugin refs, NaN/inf and huge numbers,
negative weights, deleted and inserted keys, unicode junk, non-mapping roots, alias
bombs, text cut or spliced) and must either load or raise ``ConfigError`` whose field is a
path into the document; never another exception, never a hang (each case is bounded).

The number of cases comes from the hypothesis profile: short by default, many more with
``HYPOTHESIS_PROFILE=fuzz``.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from epp.config.loader import load_config
from epp.config.schema import _TOP_LEVEL
from epp.datalayer.pool import EndpointPool
from epp.datalayer.poolsource import parse_pool_file
from epp.errors import ConfigError
from epp.framework.plugin import Handle
from epp.plugins import default_registry

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
CONFIGS = {p.name: yaml.safe_load(p.read_text()) for p in sorted(CONFIG_DIR.glob("*.yaml"))
           if "kind: EndpointPickerConfig" in p.read_text()}  # not Envoy bootstraps or InferenceObjectives
# One more starting point with parameters and every section, so mutations reach plugin parameter decoding.
CONFIGS["with-parameters"] = yaml.safe_load("""\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [dataLayer]
plugins:
- type: prefix-cache-scorer
  parameters: {blockSize: 64, maxPrefixBlocksToMatch: 256, lruCapacityPerServer: 31250}
- type: max-score-picker
  parameters: {maxNumOfEndpoints: 2}
- type: queue-scorer
- type: metrics-data-source
  parameters: {scheme: http, path: /metrics, insecureSkipVerify: true}
- type: core-metrics-extractor
dataLayer:
  sources:
  - pluginRef: metrics-data-source
    extractors: [{pluginRef: core-metrics-extractor}]
saturationDetector: {queueDepthThreshold: 5, kvCacheUtilThreshold: 0.8, metricsStalenessThreshold: 200ms}
flowControl:
  maxBytes: 10Gi
  maxRequests: 100
  defaultRequestTTL: 30s
  priorityBands: [{priority: 1, maxBytes: 1Gi, maxRequests: 10}]
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: max-score-picker}
""")
POOL = {"endpoints": ["10.0.0.1:8000", {"address": "10.0.0.2", "port": 8001, "name": "sim-1", "metricsPort": 9090,
                                       "labels": {"inference.networking.k8s.io/engine-type": "vllm"}},
                      {"address": "fd00::1", "port": 8002}]}
CASE_SECONDS = 10.0
REGISTRY = default_registry()
BOMB = "__ALIAS_BOMB__"
FIELD_ROOT = re.compile(r"^([^.\[]+)")

JUNK: st.SearchStrategy[Any] = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -1e308, -0.0, 5e-324, 10**400, -1, -2.5]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=20),
    st.sampled_from(["", "1e3", ".inf", "yes", "~", "0x1F", "1:30", "2024-01-01", "\u202e\u0000", "🙂" * 3,
                     "no-such-plugin", "x" * 5000, "10.0.0.1:99999", "::1", "[::1]:0"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
KEYS = st.one_of(st.sampled_from(sorted(_TOP_LEVEL) + ["name", "type", "parameters", "pluginRef", "weight",
                                                       "sources", "extractors", "address", "port", "labels",
                                                       "metricsPort", "maxNumOfEndpoints", "blockSize"]),
                 st.text(max_size=10))


def laughs(levels: int = 9, width: int = 10) -> str:
    parts = ["k0: &l0 [" + ", ".join(['"lol"'] * width) + "]"]
    parts += [f"k{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "{" + ", ".join(parts) + "}"


def pick_container(data: st.DataObject, doc: Any) -> tuple[Any, Any]:
    """A random (container, key-or-index) inside ``doc``; the container is a dict or list."""
    node, slot = doc, None
    while True:
        children = list(node.keys()) if isinstance(node, dict) else list(range(len(node))) if isinstance(
            node, list) else []
        if node is doc and isinstance(node, dict) and data.draw(st.integers(0, 9)) > 0:
            # apiVersion and kind fail first and hide everything else: mutate them only sometimes.
            children = [c for c in children if c not in ("apiVersion", "kind")] or children
        if not children:
            return node, slot
        key = data.draw(st.sampled_from(children))
        slot_here = (node, key)
        child = node[key]
        # Mostly descend: the interesting fields (weights, refs, parameters) sit two to four levels down.
        if not isinstance(child, dict | list) or not child or data.draw(st.integers(0, 3)) == 0:
            return slot_here
        node = child


def mutate(data: st.DataObject, base: Any) -> str:
    doc = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        op = data.draw(st.sampled_from(["replace"] * 3 + ["delete", "insert", "insert", "number", "number", "bomb"]
                                       + (["root"] if data.draw(st.integers(0, 9)) == 0 else [])))
        container, key = pick_container(data, doc)
        if op == "root":
            doc = data.draw(st.one_of(JUNK, st.lists(JUNK, max_size=3)))
            continue
        if not isinstance(container, dict | list) or key is None:
            continue
        if op == "replace":
            container[key] = data.draw(JUNK)
        elif op == "delete":
            del container[key]
        elif op == "insert" and isinstance(container, dict):
            container[data.draw(KEYS)] = data.draw(JUNK)
        elif op == "insert" and isinstance(container, list):
            container.insert(key, data.draw(JUNK))
        elif op == "number":
            container[key] = data.draw(st.sampled_from([-1, -1e300, 1e300, 2**63, float("nan"), 0, 1e3]))
        elif op == "bomb":
            container[key] = BOMB
    text = yaml.safe_dump(doc, allow_unicode=data.draw(st.booleans()), sort_keys=False)
    text = text.replace(BOMB, laughs())
    if data.draw(st.integers(min_value=0, max_value=5)) == 0:  # cut (a half-written file) or splice junk in
        at = data.draw(st.integers(min_value=0, max_value=len(text)))
        text = text[:at] + data.draw(st.sampled_from(["", st_junk_text(data)]))
    return text


def st_junk_text(data: st.DataObject) -> str:
    return data.draw(st.text(max_size=40))


def bounded(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with a time bound; a hang fails the case instead of the whole run."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result(timeout=CASE_SECONDS)


def check_config_error(err: ConfigError) -> None:
    assert err.field, f"no field named: {err}"
    assert str(err).startswith(f"{err.field}: ")
    if not err.reason.startswith("unknown field"):  # that one names the unknown key as written
        root = FIELD_ROOT.match(err.field)
        assert root is not None and root.group(1) in _TOP_LEVEL | {"config"}, f"not a path into the document: {err}"
    assert len(str(err)) < 2000, "error message not bounded"


def load(text: str) -> object:
    return load_config(text, REGISTRY, Handle(pool=EndpointPool(), rng=random.Random(1)))


FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shipped_configs_are_fuzz_starting_points_that_load(name: str) -> None:
    load(yaml.safe_dump(CONFIGS[name]))


@FUZZ
@given(data=st.data(), name=st.sampled_from(sorted(CONFIGS)))
def test_mutated_config_loads_or_fails_naming_the_field(data: st.DataObject, name: str) -> None:
    text = mutate(data, CONFIGS[name])
    try:
        bounded(lambda: load(text))
    except ConfigError as err:
        check_config_error(err)


@FUZZ
@given(data=st.data())
def test_mutated_pool_file_loads_or_fails_naming_the_entry(data: st.DataObject) -> None:
    text = mutate(data, POOL)
    try:
        members = bounded(lambda: parse_pool_file(text, "pool.yaml"))
    except ConfigError as err:
        assert err.field.startswith("pool.yaml"), err
        assert str(err).startswith(f"{err.field}: ")
        assert len(str(err)) < 2000, "error message not bounded"
    else:
        assert len({m.name for m in members}) == len(members)
        assert all(0 < m.port < 65536 and 0 < m.metrics_port < 65536 for m in members)
