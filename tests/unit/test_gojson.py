"""``go_json``: the bytes Go's ``encoding/json`` writes for the shapes the Go EPP hashes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from epp.requests.gojson import go_json


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
