"""Model-name rewrite: the request keeps every byte but the model, the response gets the name back.

Issue 7, defect 11: the rewrite re-serialised the whole body (integers of 2^64 and more
became floats, ``-0`` became ``0``, ``1E2`` became ``100.0``), and ``"model":"<target>"``
split across two response chunks reached the client unrestored.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.errors import BadRequest
from epp.requests.model_rewrite import ModelNameRestorer, replace_model

# --- request: replace_model ------------------------------------------------------------------------


def test_model_rewrite_keeps_big_integers_negative_zero_and_exponents() -> None:
    raw = (b'{"model":"client-name","seed":18446744073709551616,"neg":-0,"t":1E2,"p":0.10,'
           b'"logit_bias":{"50256":-100.0},"big":-99999999999999999999999}')
    assert replace_model(raw, "served-name") == raw.replace(b'"client-name"', b'"served-name"')


def test_model_rewrite_keeps_whitespace_key_order_and_escapes() -> None:
    raw = (b'\n {\r\n\t"stream" : true ,\n  "model"  :\t "client"  ,\n'
           b'  "prompt": "caf\\u00e9 \\/ \\" \\\\",  "unicode": "\xe4\xb8\xad"\n}\n ')
    assert replace_model(raw, "served") == raw.replace(b'"client"', b'"served"')


def test_only_top_level_model_members_change() -> None:
    raw = (b'{"messages":[{"role":"user","model":"client","content":"\\"model\\":\\"client\\""}],'
           b'"metadata":{"model":"client","deeper":[{"model":"client"}]},"model_name":"client",'
           b'"xmodel":"client","tools":[],"model":"client"}')
    result = replace_model(raw, "served")
    assert result == raw[: raw.rindex(b'"client"')] + b'"served"}'
    assert orjson.loads(result)["metadata"] == {"model": "client", "deeper": [{"model": "client"}]}


def test_every_duplicate_top_level_model_is_replaced() -> None:
    raw = b'{"model":"first","n":1,"model":"last"}'
    result = replace_model(raw, "served")
    assert result == b'{"model":"served","n":1,"model":"served"}'
    first_wins = json.loads(result, object_pairs_hook=lambda pairs: next(v for k, v in pairs if k == "model"))
    assert (orjson.loads(result)["model"], first_wins) == ("served", "served")


@pytest.mark.parametrize(
    "key",
    [b'"mo\\u0064el"', b'"\\u006d\\u006F\\u0064\\u0065\\u006c"', b'"model\\u0000"'],
    ids=["one escaped letter", "every letter escaped", "model and a NUL is another key"],
)
def test_keys_spelled_with_escapes_are_read_as_json_readers_read_them(key: bytes) -> None:
    raw = b'{' + key + b':"client","prompt":"x"}'
    result = replace_model(raw, "served")
    if orjson.loads(key) == "model":
        assert result == raw.replace(b'"client"', b'"served"')
    else:
        assert result == b'{"model":"served",' + raw[1:]


@pytest.mark.parametrize(
    "value",
    [b"null", b"42", b"-1.5e+3", b"true", b'{"name":"x","v":[1,{"a":"]"}]}', b'["a","}"]', b'""'],
)
def test_a_model_member_of_any_type_is_replaced_whole(value: bytes) -> None:
    raw = b'{"model": ' + value + b' , "prompt":"x","model":"client"}'
    assert replace_model(raw, "served") == b'{"model": "served" , "prompt":"x","model":"served"}'


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b"{}", b'{"model":"served"}', id="an empty object"),
        pytest.param(b' { "prompt":"x"}', b' {"model":"served", "prompt":"x"}', id="an object without model"),
        pytest.param(b"{ \n}", b'{"model":"served" \n}', id="an empty object with whitespace"),
    ],
)
def test_a_body_without_a_model_gets_one_as_its_first_member(raw: bytes, expected: bytes) -> None:
    assert replace_model(raw, "served") == expected


@pytest.mark.parametrize("target", ['quote " and \\ backslash', "caf\u00e9/\u4e2d", "tab\tnew\nline", "</script>"])
def test_the_target_is_written_as_a_json_string(target: str) -> None:
    result = replace_model(b'{"model":"client","prompt":"x"}', target)
    assert orjson.loads(result) == {"model": target, "prompt": "x"}
    assert result == b'{"model":' + orjson.dumps(target) + b',"prompt":"x"}'


def test_a_target_that_is_not_valid_unicode_gets_400() -> None:
    with pytest.raises(BadRequest):
        replace_model(b'{"model":"client"}', "bad\ud800")


def test_strings_with_brackets_quotes_and_backslashes_do_not_confuse_the_scan() -> None:
    raw = (b'{"a":"}","b":"{\\"model\\":1","c":"\\\\","d":["]","[",{"}":"{"}],'
           b'"e":"\\\\\\"","model":"client","f":"x\\\\"}')
    assert replace_model(raw, "served") == raw.replace(b'"client"', b'"served"')


def test_deep_nesting_elsewhere_in_the_body_is_kept_as_is() -> None:
    deep = b"[" * 1024 + b"]" * 1024
    raw = b'{"prompt":"x","deep":' + deep + b',"model":"client"}'
    assert replace_model(raw, "served") == raw.replace(b'"client"', b'"served"')


def test_a_large_token_id_prompt_is_kept_byte_for_byte() -> None:
    raw = b'{"model":"client","prompt":[' + b", ".join(str(i).encode() for i in range(65_536)) + b"]}"
    assert replace_model(raw, "served") == raw.replace(b'"client"', b'"served"', 1)


@pytest.mark.parametrize("raw", [b"[]", b'"model"', b'{"model":"x"', b'{"model":[1,2}'])
def test_input_that_is_not_a_complete_object_raises_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError, match="replace_model"):
        replace_model(raw, "served")


scalars = st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | st.text(max_size=8)
values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["model", "k", "m"]), c, max_size=3),
    max_leaves=12,
)
spacing = st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")])


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    members=st.lists(st.tuples(st.sampled_from(["prompt", "n", "model_x", "m\u00f6del"]), values), max_size=5),
    model_at=st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=3),
    spaces=spacing,
    ascii_only=st.booleans(),
)
def test_replace_model_changes_exactly_the_model_values(
    members: list[tuple[str, Any]], model_at: list[int], spaces: tuple[str, str], ascii_only: bool
) -> None:
    item_sep, key_sep = spaces

    def body(model: str) -> bytes:
        parts = [(k, v) for k, v in members]
        for index in sorted(model_at, reverse=True):
            parts.insert(min(index, len(parts)), ("model", model))
        text = "{" + item_sep.join(json.dumps(k, ensure_ascii=ascii_only) + key_sep
                                    + json.dumps(v, ensure_ascii=ascii_only, separators=spaces)
                                    for k, v in parts) + "}"
        return text.encode()

    assert replace_model(body("client"), "served") == body("served")


# --- response: ModelNameRestorer --------------------------------------------------------------------

TARGET, INCOMING = "served-name", "client-name"
NEEDLES = [b'"model":"served-name"', b'"model": "served-name"']


def restore(chunks: list[bytes], target: str = TARGET, incoming: str = INCOMING) -> list[bytes]:
    restorer = ModelNameRestorer(target, incoming)
    return [restorer.feed(chunk, end_of_stream=i == len(chunks) - 1) for i, chunk in enumerate(chunks)]


def expected(data: bytes) -> bytes:
    return data.replace(b'"served-name"', b'"client-name"')


@pytest.mark.parametrize("needle", NEEDLES, ids=["no space", "one space"])
def test_model_name_split_across_two_chunks_is_restored(needle: bytes) -> None:
    data = b'{"id":"x",' + needle + b',"choices":[]}'
    start = data.index(needle)
    for cut in range(start, start + len(needle) + 1):
        out = restore([data[:cut], data[cut:]])
        assert b"".join(out) == expected(data), cut
        assert b"served-name" not in b"".join(out)


@pytest.mark.parametrize("needle", NEEDLES, ids=["no space", "one space"])
def test_model_name_split_across_three_chunks_is_restored(needle: bytes) -> None:
    data = b"data: {" + needle + b"}\n\n"
    start = data.index(needle)
    for first in range(start, start + len(needle) + 1):
        for second in range(first, start + len(needle) + 1):
            out = restore([data[:first], data[first:second], data[second:]])
            assert b"".join(out) == expected(data), (first, second)


def sse_stream(events: int) -> bytes:
    lines = []
    for i in range(events):
        sep = b" " if i % 2 else b""
        lines.append(b'data: {"id":"c1","object":"chat.completion.chunk","model":' + sep + b'"served-name",'
                     b'"choices":[{"index":0,"delta":{"content":"tok' + str(i).encode() + b'"}}]}\n\n')
    return b"".join(lines) + b"data: [DONE]\n\n"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 20, 21, 22, 64, 1000])
def test_an_sse_stream_in_chunks_of_any_size_gets_every_model_name_back(size: int) -> None:
    data = sse_stream(12)
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    out = b"".join(restore(chunks))
    assert out == expected(data)
    assert out.count(b"client-name") == 12


def test_a_stream_without_the_needle_passes_chunk_for_chunk() -> None:
    chunks = [b'data: {"model":"other-model","choices":[]}\n\n', b'data: {"model":"served-name-2"}\n\n',
              b"data: [DONE]\n\n", b""]
    assert restore(chunks) == chunks


def test_held_bytes_are_a_needle_prefix_and_never_longer_than_a_needle_less_one() -> None:
    restorer = ModelNameRestorer(TARGET, INCOMING)
    longest = max(map(len, NEEDLES))
    assert restorer.feed(b'{"id":1,' + NEEDLES[1][:-1], end_of_stream=False) == b'{"id":1,'
    assert restorer.feed(b"x", end_of_stream=False) == NEEDLES[1][:-1] + b"x"
    assert restorer.feed(b'ab"mod', end_of_stream=False) == b"ab"
    assert restorer.feed(b'"', end_of_stream=False) == b'"mod'  # a new quote: the old prefix cannot grow
    assert restorer.feed(b'"' * (longest * 2), end_of_stream=False) == b'"' * (longest * 2)
    assert restorer.feed(b"", end_of_stream=True) == b'"'


def test_the_end_of_stream_flushes_a_partial_needle_unchanged() -> None:
    restorer = ModelNameRestorer(TARGET, INCOMING)
    assert restorer.feed(b'{"model":"serv', end_of_stream=False) == b"{"
    assert restorer.feed(b"ed", end_of_stream=True) == b'"model":"served'


def test_a_complete_needle_at_the_end_of_the_stream_is_restored() -> None:
    assert restore([b'{"x":1,', b'"model":"served-name"']) == [b'{"x":1,', b'"model":"client-name"']


def test_a_longer_name_starting_with_the_target_is_left_alone() -> None:
    data = b'{"model":"served-name-v2"}'
    for cut in range(len(data) + 1):
        assert b"".join(restore([data[:cut], data[cut:]])) == data


@pytest.mark.parametrize(
    ("target", "spelled"),
    [
        pytest.param("caf\u00e9", "\"caf\u00e9\"".encode(), id="non-ASCII as raw UTF-8"),
        pytest.param("caf\u00e9", b'"caf\\u00e9"', id="non-ASCII escaped as Python servers write it"),
        pytest.param('a"b', b'"a\\"b"', id="a quote in the name"),
    ],
)
def test_the_target_is_matched_as_json_encodes_it(target: str, spelled: bytes) -> None:
    data = b'{"model":' + spelled + b"}"
    for cut in range(len(data) + 1):
        assert b"".join(restore([data[:cut], data[cut:]], target, "m<1>")) == b'{"model":"m<1>"}'
