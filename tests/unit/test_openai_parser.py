"""``openai-parser``: API detection, 400 messages, and the prompt bytes each API yields."""

from __future__ import annotations

import json
from typing import Any

import pytest

from epp.errors import BadRequest
from epp.framework.parsing import ParsedBody
from epp.plugins.parsers.openai import OpenAIParser, api_for_path, request_path
from epp.requests.gojson import go_json
from epp.requests.types import ApiKind

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.fixture
def parser(create: Any) -> OpenAIParser:
    return create("openai-parser")


def parse(parser: OpenAIParser, body: Any, path: str | None = CHAT, **headers: str) -> ParsedBody:
    all_headers = {":path": path} if path is not None else {}
    all_headers.update({k.replace("_", "-"): v for k, v in headers.items()})
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parser.parse_request(all_headers, raw)


def bad_request(parser: OpenAIParser, body: Any, path: str | None = CHAT) -> BadRequest:
    with pytest.raises(BadRequest) as err:
        parse(parser, body, path)
    assert err.value.status_code == 400
    return err.value


# --- API detection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "api"),
    [
        pytest.param("/v1/chat/completions", ApiKind.CHAT_COMPLETIONS, id="chat completions"),
        pytest.param("/v1/completions", ApiKind.COMPLETIONS, id="completions"),
        pytest.param("/v1/responses", ApiKind.RESPONSES, id="responses"),
        pytest.param("/v1/conversations", ApiKind.CONVERSATIONS, id="conversations"),
        pytest.param("/v1/embeddings", ApiKind.EMBEDDINGS, id="embeddings"),
        pytest.param("/openai/v1/chat/completions", ApiKind.CHAT_COMPLETIONS, id="a prefix before the suffix"),
        pytest.param("/v1/chat/completions/", ApiKind.CHAT_COMPLETIONS, id="a trailing slash"),
        pytest.param("/v1/models", ApiKind.COMPLETIONS, id="an unknown path is completions"),
        pytest.param("/", ApiKind.COMPLETIONS, id="the root path is completions"),
    ],
)
def test_the_api_is_chosen_by_path_suffix(path: str, api: ApiKind) -> None:
    assert api_for_path(path) == api


@pytest.mark.parametrize(
    ("headers", "path"),
    [
        pytest.param({":path": "/v1/embeddings?api-version=2"}, "/v1/embeddings", id="the query string is dropped"),
        pytest.param({"x-original-path": "/v1/responses"}, "/v1/responses",
                     id="x-original-path when there is no :path"),
        pytest.param({"x-forwarded-path": "/v1/conversations"}, "/v1/conversations",
                     id="x-forwarded-path as the last header fallback"),
        pytest.param({":path": "/v1/chat/completions", "x-original-path": "/v1/responses"}, "/v1/chat/completions",
                     id=":path wins over the fallbacks"),
        pytest.param({":path": "", "x-original-path": "/v1/responses"}, "/v1/responses",
                     id="an empty :path falls through"),
        pytest.param({"x-original-path": "/v1/responses", "x-forwarded-path": "/v1/embeddings"}, "/v1/responses",
                     id="x-original-path wins over x-forwarded-path"),
        pytest.param({}, "/v1/completions", id="no path header defaults to completions"),
    ],
)
def test_the_request_path_comes_from_headers_without_the_query(headers: dict[str, str], path: str) -> None:
    assert request_path(headers) == path


def test_a_query_string_does_not_change_the_api(parser: OpenAIParser) -> None:
    parsed = parse(parser, {"model": "m", "input": "hi"}, "/v1/embeddings?stream=true")
    assert (parsed.api, parsed.path) == (ApiKind.EMBEDDINGS, "/v1/embeddings")


def test_header_fallbacks_choose_the_api(parser: OpenAIParser) -> None:
    parsed = parse(parser, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, None,
                   x_original_path="/v1/chat/completions")
    assert parsed.api == ApiKind.CHAT_COMPLETIONS


def test_without_any_path_header_a_body_is_parsed_as_completions(parser: OpenAIParser) -> None:
    parsed = parse(parser, {"model": "m", "prompt": "hello"}, None)
    assert (parsed.api, parsed.path, parsed.prompt) == (ApiKind.COMPLETIONS, "/v1/completions", b"hello")


# --- 400 errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        pytest.param(b"{not json", CHAT, "error unmarshaling request body", id="a body that is not JSON"),
        pytest.param(b"[1, 2]", CHAT, "error unmarshaling request body", id="a JSON array body"),
        pytest.param({"messages": [{"role": "user", "content": "x"}]}, CHAT, "model not found in request body",
                     id="no model"),
        pytest.param({"model": "", "prompt": "x"}, COMPLETIONS, "model not found in request body",
                     id="an empty model"),
        pytest.param({"model": 3, "prompt": "x"}, COMPLETIONS, "model not found in request body",
                     id="a model that is not a string"),
        pytest.param({"model": "m"}, CHAT, "invalid chat completions request: must have valid messages field",
                     id="chat without messages"),
        pytest.param({"model": "m", "messages": []}, CHAT,
                     "invalid chat completions request: must have valid messages field", id="chat with no messages"),
        pytest.param({"model": "m", "messages": ["hi"]}, CHAT,
                     "invalid chat completions request: must have valid messages field",
                     id="chat with a message that is not an object"),
        pytest.param({"model": "m", "messages": [{"role": "user", "content": {"text": "hi"}}]}, CHAT,
                     "invalid chat completions request: must have valid messages field",
                     id="chat content that is an object"),
        pytest.param({"model": "m"}, COMPLETIONS, "invalid completions request: must have prompt field",
                     id="completions without prompt"),
        pytest.param({"model": "m", "prompt": ""}, COMPLETIONS, "invalid completions request: must have prompt field",
                     id="completions with an empty prompt"),
        pytest.param({"model": "m", "prompt": []}, COMPLETIONS, "invalid completions request: must have prompt field",
                     id="completions with an empty prompt list"),
        pytest.param({"model": "m", "prompt": ["a", 1]}, COMPLETIONS,
                     "invalid completions request: must have prompt field", id="completions with a mixed prompt list"),
        pytest.param({"model": "m"}, "/v1/responses", "invalid responses request: must have input field",
                     id="responses without input"),
        pytest.param({"model": "m", "input": None}, "/v1/responses", "invalid responses request: must have input field",
                     id="responses with null input"),
        pytest.param({"model": "m", "items": []}, "/v1/conversations",
                     "invalid conversations request: must have items field", id="conversations without items"),
        pytest.param({"model": "m"}, "/v1/embeddings", "invalid embeddings request: must have input field",
                     id="embeddings without input"),
        pytest.param({"model": "m", "prompt": "x", "cache_salt": 42}, COMPLETIONS, "cache_salt must be a string",
                     id="a cache salt that is not a string"),
    ],
)
def test_bad_bodies_get_the_go_epp_400_message(parser: OpenAIParser, body: Any, path: str, message: str) -> None:
    err = bad_request(parser, body, path)
    assert err.message.startswith(message)
    assert err.body == f"inference error: BadRequest - {err.message}"


# --- parsed fields ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(True, True, id="boolean true streams"),
        pytest.param(False, False, id="boolean false does not"),
        pytest.param("true", False, id="the string true does not"),
        pytest.param(1, False, id="the number 1 does not"),
        pytest.param(None, False, id="null does not"),
    ],
)
def test_stream_is_set_only_for_boolean_true(parser: OpenAIParser, stream: Any, expected: bool) -> None:
    assert parse(parser, {"model": "m", "prompt": "x", "stream": stream}, COMPLETIONS).stream is expected


def test_the_parsed_body_keeps_model_salt_and_the_whole_body(parser: OpenAIParser) -> None:
    body = {"model": "llama", "prompt": "x", "cache_salt": "tenant-a", "max_tokens": 5, "extra": {"k": [1]}}
    parsed = parse(parser, body, COMPLETIONS)
    assert (parsed.model, parsed.cache_salt, parsed.body) == ("llama", "tenant-a", body)
    assert parse(parser, {"model": "m", "prompt": "x"}, COMPLETIONS).cache_salt == ""


# --- prompt bytes (what prefix hashing reads) --------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        pytest.param("Hello world", b"Hello world", id="a string prompt is its text"),
        pytest.param(["Hello", "big", "world"], b"Hello big world", id="a list of strings is joined by spaces"),
        pytest.param("héllo", "héllo".encode(), id="text is UTF-8 encoded"),
        pytest.param([1, 2, 3], b"", id="token ids give no text"),
        pytest.param([[1, 2], [3]], b"", id="a batch of token-id lists gives no text"),
    ],
)
def test_completions_prompt_bytes(parser: OpenAIParser, prompt: Any, expected: bytes) -> None:
    assert parse(parser, {"model": "m", "prompt": prompt}, COMPLETIONS).prompt == expected


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        pytest.param([{"role": "system", "content": "You are..."}, {"role": "user", "content": "Hi"}],
                     b'[{"role":"system","content":"You are..."},{"role":"user","content":"Hi"}]',
                     id="role then content in Go field order"),
        pytest.param([{"role": "user", "content": "hi", "name": "bob", "tool_call_id": "t"}],
                     b'[{"role":"user","content":"hi"}]', id="only role and content survive"),
        pytest.param([{"content": "hi"}], b'[{"content":"hi"}]', id="an empty role is omitted"),
        pytest.param([{"role": "assistant", "content": None}], b'[{"role":"assistant","content":""}]',
                     id="null content becomes an empty string"),
        pytest.param([{"role": "user"}], b'[{"role":"user","content":""}]',
                     id="missing content becomes an empty string"),
        pytest.param([{"role": "user", "content": "a<b> & c"}],
                     b'[{"role":"user","content":"a\\u003cb\\u003e \\u0026 c"}]',
                     id="HTML characters are escaped as Go does"),
        pytest.param([{"role": "user", "content": "line\u2028sep\u2029"}],
                     b'[{"role":"user","content":"line\\u2028sep\\u2029"}]',
                     id="line and paragraph separators are escaped as Go does"),
        pytest.param([{"role": "user", "content": "caf\u00e9 \U0001f600"}],
                     '[{"role":"user","content":"caf\u00e9 \U0001f600"}]'.encode(),
                     id="other unicode is written raw"),
        pytest.param([{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                     b'[{"role":"user","content":[{"type":"text","text":"hi","image_url":{},"input_audio":{},'
                     b'"video_url":{}}]}]',
                     id="a text block gets empty image, audio and video objects"),
        pytest.param([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png",
                                                                                       "detail": "low"}}]}],
                     b'[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.png"},'
                     b'"input_audio":{},"video_url":{}}]}]',
                     id="an image block keeps only its url"),
        pytest.param([{"role": "user", "content": [{"type": "input_audio",
                                                    "input_audio": {"data": "AAA", "format": "wav"}}]}],
                     b'[{"role":"user","content":[{"type":"input_audio","image_url":{},'
                     b'"input_audio":{"data":"AAA","format":"wav"},"video_url":{}}]}]',
                     id="an audio block keeps data and format"),
        pytest.param([{"role": "user", "content": []}], b'[{"role":"user","content":[]}]',
                     id="an empty block list stays a list"),
    ],
)
def test_chat_prompt_bytes_are_go_json_of_role_and_content(
    parser: OpenAIParser, messages: list[Any], expected: bytes
) -> None:
    assert parse(parser, {"model": "m", "messages": messages}).prompt == expected


def test_responses_prompt_is_instructions_tools_then_input(parser: OpenAIParser) -> None:
    body = {"model": "m", "input": [{"role": "user", "content": "hi"}], "instructions": "be <brief>",
            "tools": [{"type": "function", "name": "f"}], "temperature": 0}
    assert parse(parser, body, "/v1/responses").prompt == (
        b'[{"instructions":"be \\u003cbrief\\u003e"},{"tools":[{"name":"f","type":"function"}]},'
        b'{"input":[{"content":"hi","role":"user"}]}]'
    )
    assert parse(parser, {"model": "m", "input": "hi"}, "/v1/responses").prompt == b'[{"input":"hi"}]'


def test_conversation_items_keep_go_field_order_type_role_content(parser: OpenAIParser) -> None:
    body = {"model": "m", "items": [{"type": "message", "role": "user", "content": "hi", "id": "item-1"}]}
    assert parse(parser, body, "/v1/conversations").prompt == b'[{"type":"message","role":"user","content":"hi"}]'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("hello", b'"hello"', id="a string input is a JSON string"),
        pytest.param(["a", "b"], b'["a","b"]', id="a list input is a JSON list"),
    ],
)
def test_embeddings_prompt_is_json_of_the_input(parser: OpenAIParser, value: Any, expected: bytes) -> None:
    assert parse(parser, {"model": "m", "input": value}, "/v1/embeddings").prompt == expected


def test_responses_prompt_written_part_by_part_is_go_json_of_the_whole_list(parser: OpenAIParser) -> None:
    # The parts are written one by one (so their wrappers add no nesting); the bytes must not change.
    body = {"model": "m", "instructions": {"b": [1, {"z": "<&>", "a": None}], "a": "x"},
            "tools": [{"type": "function", "parameters": {"properties": {"q": {"type": "string"}}, "type": "object"}}],
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi\u2028"}]}]}
    expected = go_json([{key: body[key]} for key in ("instructions", "tools", "input")], sort_keys=True)
    assert parse(parser, body, "/v1/responses").prompt == expected
