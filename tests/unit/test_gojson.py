"""``go_json`` and ``sorted_maps``: the bytes Go's ``encoding/json`` writes for the shapes the Go EPP hashes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from epp.errors import BadRequest
from epp.requests.gojson import go_json, sorted_maps
from epp.requests.limits import MAX_JSON_DEPTH, TOO_DEEP_MESSAGE


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param({"a": 1, "b": [True, None]}, b'{"a":1,"b":[true,null]}', id="compact with no spaces"),
        pytest.param("<script>", b'"\\u003cscript\\u003e"', id="angle brackets are escaped"),
        pytest.param("fish & chips", b'"fish \\u0026 chips"', id="ampersand is escaped"),
        pytest.param("a\u2028b\u2029c", b'"a\\u2028b\\u2029c"', id="line and paragraph separators are escaped"),
        pytest.param('quote " and \\ slash', b'"quote \\" and \\\\ slash"', id="quotes and backslashes as JSON"),
        pytest.param("tab\tnewline\n", b'"tab\\tnewline\\n"', id="control characters use short escapes"),
        pytest.param("\u00e9\u4e2d", "\"\u00e9\u4e2d\"".encode(), id="non-ASCII is raw UTF-8"),
        pytest.param({"k<": "v>"}, b'{"k\\u003c":"v\\u003e"}', id="keys are escaped too"),
    ],
)
def test_go_json_bytes(value: Any, expected: bytes) -> None:
    assert go_json(value) == expected


def test_keys_keep_insertion_order_unless_sorted_like_a_go_map() -> None:
    value = {"role": "user", "content": "x"}
    assert go_json(value) == b'{"role":"user","content":"x"}'
    assert go_json(value, sort_keys=True) == b'{"content":"x","role":"user"}'
    assert go_json({"b": {"d": 1, "c": 2}, "a": 0}, sort_keys=True) == b'{"a":0,"b":{"c":2,"d":1}}'


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"text": "a<b>&c\u2028", "n": [1, -2, 3.5]}, id="escaped text and numbers"),
        pytest.param(["\u00e9", {"x": None}], id="unicode and null"),
    ],
)
def test_escaped_output_decodes_back_to_the_same_value(value: Any) -> None:
    assert json.loads(go_json(value)) == value


def test_sorted_maps_sorts_keys_at_every_level_and_keeps_list_order() -> None:
    value = {"b": [{"z": 1, "a": [3, {"y": None, "x": "s"}]}], "a": {"d": True, "c": 1.5}}
    result = sorted_maps(value)
    assert result == value
    assert list(result) == ["a", "b"]
    assert list(result["a"]) == ["c", "d"]
    assert list(result["b"][0]) == ["a", "z"]
    assert list(result["b"][0]["a"][1]) == ["x", "y"]
    assert go_json(result) == b'{"a":{"c":1.5,"d":true},"b":[{"a":[3,{"x":"s","y":null}],"z":1}]}'


@pytest.mark.parametrize("value", [None, 3, "text", [], {}], ids=repr)
def test_sorted_maps_returns_scalars_and_empty_containers_equal(value: Any) -> None:
    assert sorted_maps(value) == value


def test_sorted_maps_on_deep_json_does_not_hit_python_recursion() -> None:
    depth = 20_000  # far past Python's recursion limit of 1000
    value: Any = "leaf"
    for i in range(depth):
        value = {"b": value, "a": i} if i % 2 else [value]
    result = sorted_maps(value)
    for i in reversed(range(depth)):
        if i % 2:
            assert list(result) == ["a", "b"]
            result = result["b"]
        else:
            result = result[0]
    assert result == "leaf"


def test_deep_json_past_orjson_depth_limit_gets_400_not_500() -> None:
    deep: Any = "x"
    for _ in range(MAX_JSON_DEPTH):
        deep = [deep]
    assert go_json(deep).startswith(b"[" * MAX_JSON_DEPTH)
    with pytest.raises(BadRequest) as err:
        go_json([deep])
    assert err.value.message == TOO_DEEP_MESSAGE
    with pytest.raises(BadRequest):
        go_json({"k": deep}, sort_keys=True)
