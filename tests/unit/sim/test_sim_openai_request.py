"""Request validation gives vLLM's status codes and messages."""

from __future__ import annotations

import orjson
import pytest

from epp.sim.errors import BadRequest, NotFound, SimHTTPError, error_body
from epp.sim.openai_request import ParsedRequest, RequestKind, parse_request
from epp.sim.tokenizer import Tokenizer


def resolve(name: str | None) -> str | None:
    if name in (None, "base"):
        return None
    if name == "sql":
        return "sql"
    raise NotFound(f"The model `{name}` does not exist.", param="model")


def parse(body: object, kind: RequestKind = RequestKind.COMPLETION,
          max_model_len: int = 100) -> ParsedRequest:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_request(raw, kind, tokenizer=Tokenizer(), resolve=resolve, max_model_len=max_model_len,
                         default_max_tokens=16, default_model="base")


def test_a_completion_is_tokenized_with_bos_and_defaults_apply() -> None:
    req = parse({"prompt": "hello there"})
    assert req.prompt_ids[0] == 128000 and len(req.prompt_ids) == 3
    assert (req.max_tokens, req.max_tokens_explicit, req.stream, req.model) == (16, False, False, "base")


def test_chat_options_are_read() -> None:
    req = parse({"model": "sql", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5,
                 "stream": True, "stream_options": {"include_usage": True}, "seed": 3}, RequestKind.CHAT)
    assert (req.lora, req.max_tokens, req.max_tokens_explicit) == ("sql", 5, True)
    assert req.stream and req.include_usage and req.seed == 3


def test_token_id_prompts_are_accepted() -> None:
    assert parse({"prompt": [1, 2, 3]}).prompt_ids == [1, 2, 3]
    assert parse({"prompt": [[4, 5]]}).prompt_ids == [4, 5]


@pytest.mark.parametrize(
    ("body", "kind", "error", "fragment"),
    [
        (b"{not json", RequestKind.COMPLETION, BadRequest, "JSON decode error"),
        (b"[1, 2]", RequestKind.COMPLETION, BadRequest, "JSON object"),
        ({"model": "base"}, RequestKind.COMPLETION, BadRequest, "prompt"),
        ({"prompt": "x"}, RequestKind.CHAT, BadRequest, "messages"),
        ({"prompt": 5}, RequestKind.COMPLETION, BadRequest, "prompt must be"),
        ({"prompt": ["a", "b"]}, RequestKind.COMPLETION, BadRequest, "one prompt"),
        ({"prompt": [999999]}, RequestKind.COMPLETION, BadRequest, "out of vocabulary"),
        ({"prompt": "x", "max_tokens": 0}, RequestKind.COMPLETION, BadRequest, "at least 1"),
        ({"prompt": "x", "max_tokens": "9"}, RequestKind.COMPLETION, BadRequest, "integer"),
        ({"prompt": "x", "n": 2}, RequestKind.COMPLETION, BadRequest, "n=1"),
        ({"prompt": "word " * 200}, RequestKind.COMPLETION, BadRequest, "maximum context length is 100"),
        ({"prompt": "x", "max_tokens": 99}, RequestKind.COMPLETION, BadRequest, "'max_tokens' or"),
        ({"prompt": "x", "model": "other"}, RequestKind.COMPLETION, NotFound, "does not exist"),
    ],
    ids=["bad json", "not an object", "missing prompt", "chat without messages", "prompt of wrong type",
         "batched prompts", "token id out of vocabulary", "zero max_tokens", "max_tokens of wrong type",
         "n above one", "prompt longer than max_model_len", "max_tokens beyond the context", "unknown model"],
)
def test_bad_input_gets_vllm_status_codes(body: object, kind: RequestKind, error: type[SimHTTPError],
                                          fragment: str) -> None:
    with pytest.raises(error) as info:
        parse(body, kind)
    assert fragment in info.value.message


def test_error_body_has_vllm_shape() -> None:
    body = orjson.loads(error_body(NotFound("The model `x` does not exist.", param="model")))
    assert body == {"error": {"message": "The model `x` does not exist.", "type": "NotFoundError",
                              "param": "model", "code": 404}}
