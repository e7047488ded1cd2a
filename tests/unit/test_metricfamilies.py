"""Lock-free metric families: exposition through prometheus_client, and bounded cardinality."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from epp.metricfamilies import MAX_CHILDREN, CounterFamily, GaugeFamily, HistogramFamily


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_histogram_buckets_are_cumulative_with_le_labels_like_prometheus_client() -> None:
    registry = CollectorRegistry()
    histogram = HistogramFamily("latency_seconds", "doc", ["model"], (0.1, 1.0), registry)
    for value in (0.05, 0.1, 0.5, 2.0):
        histogram.labels("m").observe(value)
    got = samples(registry)
    assert got[("latency_seconds_bucket", (("le", "0.1"), ("model", "m")))] == 2.0  # le is inclusive
    assert got[("latency_seconds_bucket", (("le", "1.0"), ("model", "m")))] == 3.0
    assert got[("latency_seconds_bucket", (("le", "+Inf"), ("model", "m")))] == 4.0
    assert got[("latency_seconds_count", (("model", "m"),))] == 4.0
    assert got[("latency_seconds_sum", (("model", "m"),))] == 2.65


def test_counters_and_gauges_expose_their_values() -> None:
    registry = CollectorRegistry()
    counter = CounterFamily("requests", "doc", ["code"], registry)
    gauge = GaugeFamily("running", "doc", ["model"], registry)
    counter.labels("200").inc()
    counter.labels("200").inc(2)
    gauge.labels("m").inc()
    gauge.labels("m").dec()
    gauge.labels("n").set(7)
    got = samples(registry)
    assert got[("requests_total", (("code", "200"),))] == 3.0
    assert got[("running", (("model", "m"),))] == 0.0
    assert got[("running", (("model", "n"),))] == 7.0


def test_label_sets_beyond_the_cap_are_counted_as_other() -> None:
    registry = CollectorRegistry()
    counter = CounterFamily("requests_by_model", "doc", ["model"], registry)
    for i in range(MAX_CHILDREN + 50):
        counter.labels(f"model-{i}").inc()
    got = samples(registry)
    series = [labels for name, labels in got if name == "requests_by_model_total"]
    assert len(series) == MAX_CHILDREN + 1
    assert got[("requests_by_model_total", (("model", "other"),))] == 50.0
