"""Data-layer extension points: data sources fetch, extractors interpret.

A ``DataSource`` is polled by the collector once per endpoint per tick and returns one
payload (for ``metrics-data-source``: the parsed Prometheus families the extractors asked
for). The collector then pushes that payload to every extractor wired to the source, so
one expensive fetch serves many extractors. Wiring is checked at load time: an extractor's
``input_type()`` must accept the source's ``output_type()``.

Error handling: ``collect`` raising (timeout, refused, bad status) counts as a failed
scrape: the endpoint keeps its last metrics with their old update time, and the failure
is logged once per transition. ``extract`` raising is logged once per transition too,
and other extractors still run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from epp.datalayer.endpoint import Endpoint

__all__ = ["DataSource", "Extractor"]


@runtime_checkable
class DataSource(Protocol):
    def output_type(self) -> type: ...

    def bind_extractors(self, extractors: list[Extractor]) -> None:
        """Called once at wiring time with every extractor fed by this source."""
        ...

    async def collect(self, endpoint: Endpoint) -> Any: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Extractor(Protocol):
    def input_type(self) -> type: ...

    def extract(self, data: Any, endpoint: Endpoint) -> None: ...
