"""The gateway's subset hint (envoy.lb.subset_hint metadata) narrows where the picker routes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from e2e_support import SIM_ARGS, completion, post_many  # type: ignore[import-not-found]

from epp.devstack.envoy import envoy_binary, render_bootstrap, repo_bootstrap_path
from epp.devstack.processes import ManagedProcess, free_port, wait_for_http
from epp.devstack.stack import Stack


def subset_filter(endpoints: list[str]) -> dict[str, object]:
    """An Envoy filter that sets the hint, as a gateway implementation would."""
    return {
        "name": "envoy.filters.http.set_metadata",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config",
            "metadata": [{"metadata_namespace": "envoy.lb.subset_hint",
                          "value": {"x-gateway-destination-endpoint-subset": endpoints}}],
        },
    }


def start_hinting_envoy(stack: Stack, workdir: Path, endpoints: list[str]) -> tuple[ManagedProcess, str]:
    port, admin = free_port(), free_port()
    bootstrap = workdir / f"envoy-subset-{port}.yaml"
    bootstrap.write_text(render_bootstrap(repo_bootstrap_path(), port, admin, stack.ports.grpc,
                                          [subset_filter(endpoints)]))
    envoy = ManagedProcess("envoy-subset", [envoy_binary(), "-c", str(bootstrap), "--concurrency", "1",
                                            "--base-id", str(admin), "--log-level", "warning"],
                           workdir / f"envoy-subset-{port}.log").start()
    wait_for_http(f"http://127.0.0.1:{admin}/ready", 30, envoy)
    return envoy, f"http://127.0.0.1:{port}"


def test_subset_hint_is_honoured_and_an_empty_hint_is_503(tmp_path: Path) -> None:
    with Stack(tmp_path, replicas=3, sim_args=SIM_ARGS) as stack:
        chosen = stack.sim_hostport(1)
        envoy, url = start_hinting_envoy(stack, tmp_path, [chosen])
        empty, empty_url = start_hinting_envoy(stack, tmp_path, [])
        try:
            replies = asyncio.run(post_many(url, [completion(f"q{i}") for i in range(15)], concurrent=False))
            assert [r.status for r in replies] == [200] * 15
            assert {r.upstream for r in replies} == {chosen}
            refused = asyncio.run(post_many(empty_url, [completion()], concurrent=False))[0]
            assert refused.status == 503
            assert b"failed to find endpoint candidates" in refused.body
            # The stack's own Envoy (no hint) still uses every replica.
            normal = asyncio.run(post_many(stack.url, [completion(f"n{i}") for i in range(30)], concurrent=False))
            assert len({r.upstream for r in normal}) > 1
        finally:
            envoy.stop()
            empty.stop()
