"""``/metrics/?name[]=`` restricts a page to the named samples, as prometheus_client does in vLLM."""

from __future__ import annotations

from pathlib import Path

from epp.sim.metrics.restrict import restrict_page

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "vllm-0.32"


def sample_names(page: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in page.splitlines() if line and not line.startswith("#")}


def test_a_real_vllm_page_restricted_to_the_recorded_query_has_the_recorded_samples() -> None:
    recorded = (FIXTURES / "metrics-wanted-only.txt").read_text()
    whole = (FIXTURES / "metrics-load.txt").read_text()
    names = sample_names(recorded) | {"vllm:lora_requests_info"}  # asked for; absent without --enable-lora
    restricted = restrict_page(whole, names)
    assert sample_names(restricted) == sample_names(recorded)
    assert len(restricted) * 10 < len(whole)


def test_a_counter_is_asked_for_by_its_sample_name_and_keeps_its_help_and_type() -> None:
    page = ("# HELP c_total Things.\n# TYPE c_total counter\nc_total{a=\"1\"} 3.0\nc_created{a=\"1\"} 1.0\n"
            "# HELP g A gauge.\n# TYPE g gauge\ng 1.0\n")
    assert restrict_page(page, {"c_total"}) == "# HELP c_total Things.\n# TYPE c_total counter\nc_total{a=\"1\"} 3.0\n"
    assert restrict_page(page, {"c"}) == ""
    assert restrict_page(page, {"g", "c_total"}) == page.replace('c_created{a="1"} 1.0\n', "")
