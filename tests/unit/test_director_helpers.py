"""Director helpers: the proxy's subset hint and the response model-name rewrite."""

from __future__ import annotations

from typing import Any

import pytest

from epp.datalayer.subset import subset_candidates
from epp.requests.model_rewrite import ModelNameRestorer

POOL = [
    ("a", "10.0.0.1", 8000),
    ("b", "10.0.0.1", 8001),  # a second server on the same host as a
    ("c", "10.0.0.2", 8000),
    ("v6", "fd00::1", 8000),
]


@pytest.fixture
def pool(make_endpoint: Any) -> list[Any]:
    return [make_endpoint(name, address=address, port=port) for name, address, port in POOL]


@pytest.mark.parametrize(
    ("subset", "expected"),
    [
        pytest.param(["10.0.0.1:8001"], ["b"], id="an exact ip:port selects only that server"),
        pytest.param(["10.0.0.1:9999"], ["a", "b"], id="an ip:port matching no server falls back to its IP"),
        pytest.param(["10.0.0.2"], ["c"], id="a bare IP selects every server on it"),
        pytest.param(["10.0.0.1"], ["a", "b"], id="a bare IP with two servers selects both"),
        pytest.param(["[fd00::1]:8000"], ["v6"], id="a bracketed IPv6 ip:port matches exactly"),
        pytest.param(["[fd00::1]:9999"], ["v6"], id="an IPv6 ip:port falls back to its IP"),
        pytest.param(["fd00::1"], ["v6"], id="a bare IPv6 address selects by IP"),
        pytest.param(["10.0.0.2:8000", "10.0.0.1:8000"], ["a", "c"], id="results keep pool order"),
        pytest.param(["10.0.0.1:8000", "10.0.0.1"], ["a", "b"], id="overlapping entries give each server once"),
        pytest.param(["10.9.9.9:8000"], [], id="an unknown address selects nothing"),
        pytest.param([], [], id="an empty hint selects nothing"),
    ],
)
def test_subset_candidates(pool: list[Any], subset: list[str], expected: list[str]) -> None:
    assert [ep.name for ep in subset_candidates(pool, subset)] == expected


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        pytest.param(b'{"id":"x","model":"lora-7","choices":[]}', b'{"id":"x","model":"llama","choices":[]}',
                     id="compact JSON"),
        pytest.param(b'{"id": "x", "model": "lora-7"}', b'{"id": "x", "model": "llama"}', id="JSON with spaces"),
        pytest.param(b'data: {"model":"lora-7"}\n\ndata: {"model":"lora-7"}\n\n',
                     b'data: {"model":"llama"}\n\ndata: {"model":"llama"}\n\n', id="every event in a chunk"),
        pytest.param(b'{"model":"lora-7b"}', b'{"model":"lora-7b"}', id="a longer model name is left alone"),
        pytest.param(b'{"content":"lora-7"}', b'{"content":"lora-7"}', id="the name outside a model field stays"),
        pytest.param(b'{"model":"other"}', b'{"model":"other"}', id="another model is left alone"),
    ],
)
def test_rewrite_model_name_gives_the_client_its_model_back(chunk: bytes, expected: bytes) -> None:
    assert ModelNameRestorer("lora-7", "llama").feed(chunk, end_of_stream=True) == expected
