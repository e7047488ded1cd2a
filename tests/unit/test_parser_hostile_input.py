"""``openai-parser`` on hostile bodies: deep nesting and absurd model names get a 400, never a 500.

Issue 7, defect 3: valid JSON nested 255 to 1,024 levels in a field the parser hashes failed
in ``orjson.dumps`` or in Python recursion, a 500 with a traceback per request. Defect 1:
a client's model name becomes a metric label, so its length is bounded.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from epp.errors import BadRequest
from epp.framework.parsing import ParsedBody
from epp.plugins.parsers.openai import OpenAIParser
from epp.requests.limits import MAX_JSON_DEPTH, MAX_MODEL_NAME_LENGTH, TOO_DEEP_MESSAGE

HOLE = "@"

# A body for each field the parser hashes, with HOLE where the nested value goes.
HASHED_FIELDS = {
    "embeddings input": ("/v1/embeddings", '{"model":"m","input":@}'),
    "embeddings input inside a list": ("/v1/embeddings", '{"model":"m","input":["a",@]}'),
    "chat role": ("/v1/chat/completions", '{"model":"m","messages":[{"role":@,"content":"hi"}]}'),
    "chat content text": ("/v1/chat/completions",
                          '{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":@}]}]}'),
    "chat image url": ("/v1/chat/completions",
                       '{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":@}}]}]}'),
    "chat audio data": ("/v1/chat/completions",
                        '{"model":"m","messages":[{"content":[{"type":"input_audio","input_audio":{"data":@}}]}]}'),
    "responses input": ("/v1/responses", '{"model":"m","input":@}'),
    "responses tools": ("/v1/responses", '{"model":"m","input":"hi","tools":@}'),
    "responses instructions": ("/v1/responses", '{"model":"m","input":"hi","instructions":@}'),
    "conversations content": ("/v1/conversations", '{"model":"m","items":[{"type":"message","content":@}]}'),
    "conversations content in an object": ("/v1/conversations",
                                           '{"model":"m","items":[{"role":"user","content":{"parts":@}}]}'),
    "an unhashed field": ("/v1/completions", '{"model":"m","prompt":"hi","metadata":@}'),
}


@pytest.fixture
def parser(create: Any) -> OpenAIParser:
    return create("openai-parser")


def depth_at_hole(template: str) -> int:
    """How many arrays and objects enclose HOLE (no brackets inside the template's strings)."""
    before = template[: template.index(HOLE)]
    return before.count("[") + before.count("{") - before.count("]") - before.count("}")


def nested(levels: int, kind: str) -> str:
    """A value ``levels`` deep: lists or objects, with a string at the bottom."""
    if kind == "list":
        return "[" * levels + '"x"' + "]" * levels
    return '{"k":' * levels + '"x"' + "}" * levels


def body_of(template: str, body_depth: int, kind: str = "list") -> bytes:
    """``template`` with a value making the whole body exactly ``body_depth`` levels deep."""
    return template.replace(HOLE, nested(body_depth - depth_at_hole(template), kind)).encode()


def parse(parser: OpenAIParser, path: str, body: bytes) -> ParsedBody:
    return parser.parse_request({":path": path}, body)


def too_deep(parser: OpenAIParser, path: str, body: bytes) -> BadRequest:
    with pytest.raises(BadRequest) as err:
        parse(parser, path, body)
    assert err.value.status_code == 400
    assert err.value.message == TOO_DEEP_MESSAGE == "request body nested too deeply (limit 254 levels)"
    return err.value


# --- deep JSON (defect 3) ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["list", "object"])
@pytest.mark.parametrize("field", list(HASHED_FIELDS))
def test_deep_json_in_a_hashed_field_gets_400_not_500(parser: OpenAIParser, field: str, kind: str) -> None:
    path, template = HASHED_FIELDS[field]
    for depth in (MAX_JSON_DEPTH + 1, MAX_JSON_DEPTH + 2, 300, 1024):
        too_deep(parser, path, body_of(template, depth, kind))


@pytest.mark.parametrize("kind", ["list", "object"])
@pytest.mark.parametrize("field", list(HASHED_FIELDS))
def test_nesting_up_to_the_limit_is_parsed_and_hashed(parser: OpenAIParser, field: str, kind: str) -> None:
    path, template = HASHED_FIELDS[field]
    for depth in (MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH):
        parsed = parse(parser, path, body_of(template, depth, kind))
        assert parsed.model == "m"
        if field != "an unhashed field":
            assert b'"x"' in parsed.prompt


def test_the_depth_limit_is_the_deepest_value_orjson_can_write() -> None:
    # The prompt bytes are written with orjson; if an upgrade moves its limit, so must ours.
    orjson.dumps(orjson.loads(body_of("@", MAX_JSON_DEPTH)))
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(orjson.loads(body_of("@", MAX_JSON_DEPTH + 1)))


@pytest.mark.parametrize("depth", [1025, 1026, 5000, 100_000])
def test_json_deeper_than_orjson_parses_gets_the_same_400(parser: OpenAIParser, depth: int) -> None:
    too_deep(parser, "/v1/embeddings", body_of(HASHED_FIELDS["embeddings input"][1], depth))


def test_deep_json_in_conversations_content_does_not_hit_python_recursion(parser: OpenAIParser) -> None:
    # sorted_maps recursed once per level; the conversations content went through it.
    path, template = HASHED_FIELDS["conversations content"]
    for depth in (MAX_JSON_DEPTH, 900, 1000, 1024):
        body = body_of(template, depth, "object")
        if depth <= MAX_JSON_DEPTH:
            assert parse(parser, path, body).prompt.startswith(b'[{"type":"message","content":{"k":')
        else:
            too_deep(parser, path, body)


def test_wide_but_shallow_bodies_are_parsed(parser: OpenAIParser) -> None:
    many_lists = orjson.dumps({"model": "m", "input": [[1, 2]] * 100_000})
    assert parse(parser, "/v1/embeddings", many_lists).prompt.startswith(b"[[1,2],[1,2]")
    many_objects = orjson.dumps({"model": "m", "items": [{"type": "message", "content": {"a": 1}}] * 10_000})
    assert parse(parser, "/v1/conversations", many_objects).prompt.count(b'{"a":1}') == 10_000


def test_brackets_inside_strings_do_not_count_as_nesting(parser: OpenAIParser) -> None:
    text = "[" * 5000 + "{" * 5000
    parsed = parse(parser, "/v1/chat/completions",
                   orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}))
    assert text.encode() in parsed.prompt


# --- model names (defect 1, parser half) --------------------------------------------------------


def model_body(model: str) -> bytes:
    return orjson.dumps({"model": model, "prompt": "hi"})


def test_a_model_name_of_the_maximum_length_is_accepted(parser: OpenAIParser) -> None:
    name = "m" * MAX_MODEL_NAME_LENGTH
    assert parse(parser, "/v1/completions", model_body(name)).model == name


@pytest.mark.parametrize("length", [MAX_MODEL_NAME_LENGTH + 1, 200_000])
def test_an_absurdly_long_model_name_gets_400_instead_of_a_metric_label(parser: OpenAIParser, length: int) -> None:
    with pytest.raises(BadRequest) as err:
        parse(parser, "/v1/completions", model_body("m" * length))
    assert err.value.message == f"model name in request body is longer than {MAX_MODEL_NAME_LENGTH} characters"


@pytest.mark.parametrize("char", [chr(c) for c in range(0x20)] + ["\x7f"], ids=lambda c: f"U+{ord(c):04X}")
def test_a_model_name_with_a_control_character_gets_400(parser: OpenAIParser, char: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse(parser, "/v1/completions", model_body(f"llama{char}-forged"))
    assert err.value.message == "model name in request body contains a control character"


@pytest.mark.parametrize("name", ["meta-llama/Llama-3.1-8B-Instruct", "modèle-中文", "a b", "lora:adapter@v2"])
def test_ordinary_model_names_are_accepted(parser: OpenAIParser, name: str) -> None:
    assert parse(parser, "/v1/completions", model_body(name)).model == name


# --- anything in a hashed field ----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=30,
)


# The parser keeps no state between requests, so one instance serves every example.
@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(sorted(HASHED_FIELDS)), value=json_values)
def test_any_json_in_a_hashed_field_is_parsed_or_gets_400(parser: OpenAIParser, field: str, value: Any) -> None:
    path, template = HASHED_FIELDS[field]
    body = template.replace(HOLE, json.dumps(value)).encode()  # json writes integers past 64 bits too
    try:
        parse(parser, path, body)
    except BadRequest as err:
        assert err.status_code == 400
