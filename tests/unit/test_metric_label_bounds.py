"""Issue 7, defect 1: client strings that become metric labels are bounded in size, count and age."""

from __future__ import annotations

import gc
import tracemalloc

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from epp.framework.plugin import TypedName
from epp.metricfamilies import MAX_CHILDREN, MAX_LABEL_LENGTH, CounterFamily
from epp.metrics import PickerMetrics

IDLE = 600.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scrape(metrics: PickerMetrics, as_text: bool = True) -> dict[str, list[tuple[dict[str, str], float]]]:
    """What Prometheus would read from /metrics: sample name -> [(labels, value)].

    ``as_text``: through the exposition text, which must parse (slow for thousands of
    series; without it, the same collect() the text is made from).
    """
    families = (text_string_to_metric_families(generate_latest(metrics.registry).decode()) if as_text
                else metrics.registry.collect())
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in families:
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def models_in(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> set[str]:
    return {labels["model_name"] for labels, _ in samples.get(name, [])}


def serve(metrics: PickerMetrics, model: str, in_flight: bool = False) -> None:
    """The metric updates the director makes for one routed request (start, then end)."""
    metrics.request_total.labels(model, model, "0").inc()
    per_model = metrics.for_model(model, model)
    per_model.request_sizes.observe(100)
    per_model.running.inc()
    if in_flight:
        return
    metrics.request_error_total.labels(model, model, "ModelServerError").inc()
    per_model = metrics.for_model(model, model)
    per_model.running.dec()
    per_model.duration.observe(0.5)
    per_model.response_sizes.observe(10)
    per_model.input_tokens.observe(30)
    per_model.cached_tokens.observe(10)
    per_model.output_tokens.observe(5)
    per_model.normalized_tpot.observe(0.1)


def test_200_distinct_200kb_model_names_do_not_pin_45mb() -> None:
    metrics = PickerMetrics()
    serve(metrics, "warm-up")  # the first request allocates per-family structures; not what is measured
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            serve(metrics, f"{i}-" + "x" * 200_000)
        gc.collect()
        pinned = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert pinned < 3_000_000, f"{pinned} bytes still held for 200 model names"
    samples = scrape(metrics)
    names = models_in(samples, "inference_objective_request_total")
    assert len(names) == 201 and max(len(n) for n in names) == MAX_LABEL_LENGTH


def test_label_values_over_the_bound_are_cut_and_still_counted_together() -> None:
    family = CounterFamily("requests", "doc", ["model"], None)
    long_name = "m" * 10_000
    family.labels(long_name).inc()
    family.labels(long_name).inc()
    family.labels(long_name + "different tail").inc()  # same first characters: same (cut) label set
    [(labels, value)] = [(s.labels, s.value) for s in next(iter(family.collect())).samples]
    assert len(labels["model"]) == MAX_LABEL_LENGTH and labels["model"].endswith("...")
    assert value == 3.0


def test_after_junk_model_names_expire_real_models_get_their_own_label_sets_not_other() -> None:
    clock = FakeClock()
    metrics = PickerMetrics(idle_seconds=IDLE, clock=clock)
    for i in range(MAX_CHILDREN + 20):
        serve(metrics, f"junk-{i}")
    assert "other" in models_in(scrape(metrics, as_text=False), "inference_objective_request_total")
    clock.now += IDLE + 1
    after_expiry = scrape(metrics, as_text=False)
    assert models_in(after_expiry, "inference_objective_request_total") == set()
    assert models_in(after_expiry, "inference_objective_running_requests") == set()

    for _ in range(3):
        serve(metrics, "llama")
    samples = scrape(metrics, as_text=False)
    assert models_in(samples, "inference_objective_request_total") == {"llama"}
    assert models_in(samples, "inference_objective_request_duration_seconds_count") == {"llama"}
    [(_, count)] = samples["inference_objective_request_duration_seconds_count"]
    assert count == 3.0


def test_junk_model_names_already_scraped_make_room_for_a_real_model_before_expiry() -> None:
    metrics = PickerMetrics(idle_seconds=IDLE, clock=FakeClock())
    for i in range(MAX_CHILDREN):
        serve(metrics, f"junk-{i}")
    scrape(metrics, as_text=False)  # junk counts exported: the junk label sets are now idle
    serve(metrics, "llama")
    samples = scrape(metrics, as_text=False)
    names = models_in(samples, "inference_objective_request_total")
    assert "llama" in names and "other" not in names
    assert len(names) == MAX_CHILDREN
    assert "junk-0" not in names  # the least recently used one made room


def test_label_sets_not_yet_scraped_are_not_evicted_their_counts_go_to_other() -> None:
    metrics = PickerMetrics(idle_seconds=IDLE, clock=FakeClock())
    for i in range(MAX_CHILDREN):
        serve(metrics, f"model-{i}")
    serve(metrics, "late")  # every label set holds counts nobody has scraped yet
    samples = scrape(metrics, as_text=False)["inference_objective_request_total"]
    totals = {labels["model_name"]: value for labels, value in samples}
    assert "late" not in totals and totals["other"] == 1.0
    assert sum(totals.values()) == MAX_CHILDREN + 1


def test_a_running_gauge_with_requests_in_flight_survives_expiry() -> None:
    clock = FakeClock()
    metrics = PickerMetrics(idle_seconds=IDLE, clock=clock)
    serve(metrics, "slow", in_flight=True)
    scrape(metrics)
    clock.now += IDLE + 1
    samples = scrape(metrics)
    assert samples["inference_objective_running_requests"] == [({"model_name": "slow"}, 1.0)]
    assert models_in(samples, "inference_objective_request_sizes_count") == set()  # its idle histograms went

    metrics.for_model("slow", "slow").running.dec()  # the request ends after the expiry
    assert scrape(metrics)["inference_objective_running_requests"] == [({"model_name": "slow"}, 0.0)]
    clock.now += IDLE + 1
    assert "inference_objective_running_requests" not in scrape(metrics)  # idle at zero: now it goes


def test_a_cached_model_pair_keeps_counting_after_its_label_sets_expired() -> None:
    clock = FakeClock()
    metrics = PickerMetrics(idle_seconds=IDLE, clock=clock)
    serve(metrics, "m")
    scrape(metrics)
    clock.now += IDLE + 1
    scrape(metrics)
    serve(metrics, "m")
    samples = scrape(metrics)
    assert samples["inference_objective_request_duration_seconds_count"] == [
        ({"model_name": "m", "target_model_name": "m"}, 1.0)]
    assert samples["inference_objective_running_requests"] == [({"model_name": "m"}, 0.0)]


def test_plugin_durations_observed_through_prebound_observers_never_expire() -> None:
    clock = FakeClock()
    metrics = PickerMetrics(idle_seconds=IDLE, clock=clock)
    observe = metrics.plugin_observer("scorer", TypedName("queue-scorer", "q"))
    observe(0.001)
    clock.now += 10 * IDLE
    scrape(metrics)
    observe(0.001)
    samples = scrape(metrics)
    [(_, count)] = samples["inference_extension_plugin_duration_seconds_count"]
    assert count == 2.0
    assert samples["inference_extension_info"][0][1] == 1.0


def test_metrics_text_stays_valid_prometheus_with_hostile_model_names() -> None:
    metrics = PickerMetrics()
    hostile = ['a"b', "back\\slash", "new\nline", "é" * 500, "\u2028", "x" * 100_000, "", " "]
    for name in hostile:
        serve(metrics, name)
    samples = scrape(metrics)  # parses, or raises
    names = models_in(samples, "inference_objective_request_total")
    assert {'a"b', "back\\slash", "new\nline", "\u2028", "", " "} <= names
    assert all(len(n) <= MAX_LABEL_LENGTH for n in names)


def test_model_names_no_server_accepts_hold_only_the_provisional_label_sets() -> None:
    from epp.metrics import MAX_PROVISIONAL_MODELS

    clock = FakeClock()
    metrics = PickerMetrics(idle_seconds=IDLE, clock=clock)
    for i in range(500):  # a stream of unique junk names, each answered 404 by the server
        model, target = metrics.models.labels(f"junk-{i}", f"junk-{i}")
        metrics.request_total.labels(model, target, "0").inc()
    requests = scrape(metrics)["inference_objective_request_total"]
    named = {labels["model_name"] for labels, _ in requests}
    assert len(named) == MAX_PROVISIONAL_MODELS + 1  # the first ones by name, the rest as "other"
    other = [value for labels, value in requests if labels["model_name"] == "other"]
    assert other == [500 - MAX_PROVISIONAL_MODELS]


def test_a_served_model_keeps_its_own_label_while_junk_fills_the_provisional_slots() -> None:
    metrics = PickerMetrics(idle_seconds=IDLE, clock=FakeClock())
    for i in range(100):
        metrics.models.labels(f"junk-{i}", f"junk-{i}")
    assert metrics.models.labels("llama", "llama") == ("other", "other")  # a new model during the flood...
    metrics.models.served("llama", "llama")  # ...until a server answers it with 2xx
    assert metrics.models.labels("llama", "llama") == ("llama", "llama")


def test_provisional_slots_free_up_after_the_idle_time() -> None:
    clock = FakeClock()
    metrics = PickerMetrics(idle_seconds=IDLE, clock=clock)
    for i in range(100):
        metrics.models.labels(f"junk-{i}", f"junk-{i}")
    clock.now += IDLE + 1
    scrape(metrics, as_text=False)
    assert metrics.models.labels("new-model", "new-model") == ("new-model", "new-model")


def test_counts_made_since_the_last_scrape_are_exported_however_long_the_scrape_gap() -> None:
    clock = FakeClock()
    metrics = PickerMetrics(idle_seconds=IDLE, clock=clock)
    for _ in range(100):  # one request every 10 s, no scrape for 1,000 s
        metrics.request_total.labels("a", "a", "0").inc()
        clock.now += 10
    samples = scrape(metrics)["inference_objective_request_total"]
    assert samples == [({"model_name": "a", "target_model_name": "a", "priority": "0"}, 100.0)]
    clock.now += IDLE + 1
    assert "inference_objective_request_total" not in scrape(metrics)  # idle since that scrape: gone


def test_one_scrape_starts_one_epoch() -> None:
    metrics = PickerMetrics(idle_seconds=IDLE, clock=FakeClock())
    before = metrics.lifecycle.epoch
    scrape(metrics, as_text=False)
    assert metrics.lifecycle.epoch == before + 1
