"""The gateway's subset hint: which endpoints a request may go to."""

from __future__ import annotations

from collections.abc import Sequence

from epp.datalayer.endpoint import Endpoint

__all__ = ["subset_candidates"]


def subset_candidates(endpoints: Sequence[Endpoint], subset: Sequence[str]) -> list[Endpoint]:
    """Endpoints named by the proxy's subset hint.

    An entry ``ip:port`` selects that endpoint; if no endpoint has that exact address the
    entry falls back to matching by IP (the Go EPP matches by IP only, which cannot tell
    apart several servers on one host).
    """
    by_hostport = {ep.hostport: ep for ep in endpoints}
    chosen: dict[str, Endpoint] = {}
    for entry in subset:
        exact = by_hostport.get(entry)
        if exact is not None:
            chosen[exact.name] = exact
            continue
        ip = entry.rsplit(":", 1)[0].strip("[]") if entry.count(":") == 1 or entry.startswith("[") else entry
        for ep in endpoints:
            if ep.metadata.address == ip:
                chosen[ep.name] = ep
    return [ep for ep in endpoints if ep.name in chosen]
