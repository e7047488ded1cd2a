"""End-to-end fixtures: real Envoy, the picker and simulators as processes on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_support import SIM_ARGS  # type: ignore[import-not-found]

from epp.devstack.stack import Stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("stack"), replicas=3, sim_args=SIM_ARGS,
               picker_args=["--refresh-metrics-interval", "20ms"]) as running:
        yield running
