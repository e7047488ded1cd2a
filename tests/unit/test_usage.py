"""Token usage from OpenAI responses, buffered or streamed as server-sent events."""

from __future__ import annotations

from typing import Any

import pytest

from epp.framework.requestcontrol import Usage
from epp.requests.usage import MAX_BUFFERED_RESPONSE, UsageScanner, usage_from_json

CHAT_BODY = (b'{"id":"c1","object":"chat.completion","model":"m","choices":[{"index":0,'
             b'"message":{"role":"assistant","content":"hi"}}],'
             b'"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,'
             b'"prompt_tokens_details":{"cached_tokens":8}}}')


def sse(*events: bytes) -> bytes:
    return b"".join(b"data: " + e + b"\n\n" for e in events)


STREAM = sse(
    b'{"id":"c1","object":"chat.completion.chunk","choices":[{"delta":{"content":"Hel"}}],"usage":null}',
    b'{"id":"c1","object":"chat.completion.chunk","choices":[{"delta":{"content":"lo"}}],"usage":null}',
    b'{"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":10,'
    b'"completion_tokens":20,"total_tokens":30,"prompt_tokens_details":{"cached_tokens":4}}}',
    b"[DONE]",
)
STREAM_USAGE = Usage(prompt_tokens=10, completion_tokens=20, cached_tokens=4)


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}, Usage(3, 4, 0),
                     id="prompt and completion tokens"),
        pytest.param({"usage": {"prompt_tokens": 3, "completion_tokens": 4,
                                "prompt_tokens_details": {"cached_tokens": 2}}}, Usage(3, 4, 2),
                     id="cached tokens from prompt_tokens_details (OpenAI, vLLM)"),
        pytest.param({"usage": {"prompt_tokens": 3, "completion_tokens": 4,
                                "prompt_token_details": {"cached_tokens": 1}}}, Usage(3, 4, 1),
                     id="cached tokens from prompt_token_details (what the Go EPP reads)"),
        pytest.param({"usage": {"input_tokens": 6, "output_tokens": 7, "input_tokens_details": {"cached_tokens": 5}}},
                     Usage(6, 7, 5), id="responses API input and output tokens"),
        pytest.param({"type": "response.completed", "response": {"usage": {"input_tokens": 8, "output_tokens": 9}}},
                     Usage(8, 9, 0), id="a response.completed event carries usage in response"),
        pytest.param({"usage": {"prompt_tokens": "3", "completion_tokens": True}}, Usage(0, 0, 0),
                     id="non-numeric counts read as zero"),
        pytest.param({"usage": None}, None, id="null usage is no usage"),
        pytest.param({"choices": []}, None, id="no usage key"),
        pytest.param({"type": "response.created", "response": {"usage": {"input_tokens": 1}}}, None,
                     id="other response events are not usage"),
        pytest.param([1, 2], None, id="not an object"),
    ],
)
def test_usage_from_json(obj: Any, expected: Usage | None) -> None:
    assert usage_from_json(obj) == expected


def test_a_buffered_body_is_parsed_at_the_end() -> None:
    scanner = UsageScanner(streaming=False)
    for i in range(0, len(CHAT_BODY), 7):
        scanner.feed(CHAT_BODY[i : i + 7])
        assert scanner.usage is None
    assert scanner.finish() == Usage(prompt_tokens=12, completion_tokens=5, cached_tokens=8)


@pytest.mark.parametrize(
    "body",
    [pytest.param(b"not json", id="a body that is not JSON"), pytest.param(b"", id="an empty body"),
     pytest.param(b'{"error":{"message":"bad"}}', id="an error body without usage")],
)
def test_a_buffered_body_without_usage_gives_none(body: bytes) -> None:
    scanner = UsageScanner(streaming=False)
    scanner.feed(body)
    assert scanner.finish() is None


def test_an_oversize_buffered_body_is_skipped() -> None:
    scanner = UsageScanner(streaming=False)
    scanner.feed(b" " * (MAX_BUFFERED_RESPONSE - len(CHAT_BODY) + 1))
    scanner.feed(CHAT_BODY)
    assert scanner.finish() is None


def test_a_body_of_exactly_the_limit_is_parsed() -> None:
    scanner = UsageScanner(streaming=False)
    scanner.feed(b" " * (MAX_BUFFERED_RESPONSE - len(CHAT_BODY)))
    scanner.feed(CHAT_BODY)
    assert scanner.finish() == Usage(12, 5, 8)


def test_a_stream_yields_the_usage_chunk() -> None:
    scanner = UsageScanner(streaming=True)
    scanner.feed(STREAM)
    assert scanner.finish() == STREAM_USAGE


@pytest.mark.parametrize("split", [pytest.param(n, id=f"split after byte {n}") for n in
                                   (1, 6, 150, 200, 230, 260, 300, 320, len(STREAM) - 10)])
def test_a_usage_event_split_across_chunks_is_reassembled(split: int) -> None:
    scanner = UsageScanner(streaming=True)
    scanner.feed(STREAM[:split])
    scanner.feed(STREAM[split:])
    assert scanner.finish() == STREAM_USAGE


def test_a_stream_delivered_byte_by_byte_still_yields_usage() -> None:
    scanner = UsageScanner(streaming=True)
    for i in range(len(STREAM)):
        scanner.feed(STREAM[i : i + 1])
    assert scanner.finish() == STREAM_USAGE


def test_null_usage_chunks_after_the_usage_chunk_do_not_erase_it() -> None:
    scanner = UsageScanner(streaming=True)
    scanner.feed(sse(b'{"usage":{"prompt_tokens":1,"completion_tokens":2}}', b'{"choices":[],"usage":null}'))
    assert scanner.finish() == Usage(1, 2, 0)


def test_a_stream_without_usage_gives_none() -> None:
    scanner = UsageScanner(streaming=True)
    scanner.feed(sse(b'{"choices":[{"delta":{"content":"x"}}],"usage":null}', b"[DONE]"))
    assert scanner.finish() is None


def test_a_final_event_without_a_trailing_newline_is_read_at_finish() -> None:
    scanner = UsageScanner(streaming=True)
    scanner.feed(b'data: {"usage":{"prompt_tokens":4,"completion_tokens":5}}')
    assert scanner.usage is None
    assert scanner.finish() == Usage(4, 5, 0)


def test_a_responses_api_stream_reads_response_completed() -> None:
    scanner = UsageScanner(streaming=True)
    scanner.feed(b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"hi"}\n\n'
                 b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"r",'
                 b'"usage":{"input_tokens":3,"output_tokens":4,"input_tokens_details":{"cached_tokens":1}}}}\n\n')
    assert scanner.finish() == Usage(3, 4, 1)


def test_crlf_line_endings_are_accepted() -> None:
    scanner = UsageScanner(streaming=True)
    scanner.feed(b'data: {"usage":{"prompt_tokens":2,"completion_tokens":3}}\r\n\r\n')
    assert scanner.finish() == Usage(2, 3, 0)
