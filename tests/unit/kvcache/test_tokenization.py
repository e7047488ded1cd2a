"""PromptTokenizer: the token ids the picker and the simulator both compute for a request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from epp.testing.tokenizers import CHAT_TEMPLATE, write_tiny_tokenizer
from epp.tokenization import PromptTokenizer, TokenizationError, fallback_chat_text

VOCAB = {"[UNK]": 0, "<s>": 1, "</s>": 2, "<|user|>": 3, "<|assistant|>": 4, "<|system|>": 5,
         "hello": 6, "world": 7, "be": 8, "brief": 9, "!": 10, ":": 11, "user": 12, "system": 13}
SPECIALS = ["<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
TEMPLATE = CHAT_TEMPLATE


def write_tokenizer(directory: Path, template: str | None = TEMPLATE) -> Path:
    """A word-level tokenizer with a known vocabulary, so expected ids can be written by hand."""
    return write_tiny_tokenizer(directory, vocab=VOCAB, special_tokens=SPECIALS, chat_template=template,
                                config={"bos_token": {"content": "<s>"}, "eos_token": "</s>"})


@pytest.fixture
def tokenizer(tmp_path: Path) -> PromptTokenizer:
    return PromptTokenizer.from_file(write_tokenizer(tmp_path))


def test_completion_text_gets_the_bos_like_vllm(tokenizer: PromptTokenizer) -> None:
    assert tokenizer.encode_request("completions", {"prompt": "hello world!"}) == [1, 6, 7, 10]


def test_completion_token_ids_are_returned_unchanged(tokenizer: PromptTokenizer) -> None:
    assert tokenizer.encode_request("completions", {"prompt": [9, 8, 7]}) == [9, 8, 7]
    assert tokenizer.encode_request("completions", {"prompt": [[9, 8]]}) == [9, 8]
    assert tokenizer.encode_request("completions", {"prompt": ["hello"]}) == [1, 6]


def test_chat_uses_the_template_with_generation_prompt_and_no_extra_bos(tokenizer: PromptTokenizer) -> None:
    body = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]}
    # <s> <|system|> be brief <|user|> hello world <|assistant|>; the template's <s> only, not a second one.
    assert tokenizer.encode_request("chat_completions", body) == [1, 5, 8, 9, 3, 6, 7, 4]


def test_chat_content_parts_keep_text_only(tokenizer: PromptTokenizer) -> None:
    parts = [{"type": "text", "text": "hello"}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "world"}]
    body = {"messages": [{"role": "user", "content": parts}]}
    assert tokenizer.encode_request("chat_completions", body) == [1, 3, 6, 7, 4]


def test_named_templates_pick_the_default(tmp_path: Path) -> None:
    path = write_tokenizer(tmp_path, template=None)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "nope"}, {"name": "default", "template": TEMPLATE}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = PromptTokenizer.from_file(path)
    assert tok.encode_request("chat_completions", {"messages": [{"role": "user", "content": "hello"}]}) == [1, 3, 6, 4]


def test_without_a_template_the_fallback_rendering_is_used(tmp_path: Path) -> None:
    tok = PromptTokenizer.from_file(write_tokenizer(tmp_path, template=None))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    assert fallback_chat_text(messages) == "system: be brief\nuser: hello\n"
    assert tok.render_chat(messages) == "system: be brief\nuser: hello\n"
    assert tok.encode_request("chat_completions", {"messages": messages}) == [13, 11, 8, 9, 12, 11, 6]


def test_without_a_config_file_there_is_no_template(tmp_path: Path) -> None:
    path = write_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    tok = PromptTokenizer.from_file(path)
    assert tok.chat_template is None
    assert tok.render_chat([{"role": "user", "content": "hi"}]) == "user: hi\n"


def test_the_template_is_sandboxed(tmp_path: Path) -> None:
    hostile = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    tok = PromptTokenizer.from_file(write_tokenizer(tmp_path, template=hostile))
    with pytest.raises(TokenizationError):
        tok.encode_request("chat_completions", {"messages": [{"role": "user", "content": "hi"}]})
    mutating = "{% set _ = messages.append(1) %}x"
    tok = PromptTokenizer.from_file(write_tokenizer(tmp_path, template=mutating))
    with pytest.raises(TokenizationError):
        tok.encode_request("chat_completions", {"messages": [{"role": "user", "content": "hi"}]})


def test_template_raise_exception_becomes_a_tokenization_error(tmp_path: Path) -> None:
    template = "{{ raise_exception('roles must alternate') }}"
    tok = PromptTokenizer.from_file(write_tokenizer(tmp_path, template=template))
    with pytest.raises(TokenizationError, match="roles must alternate"):
        tok.encode_request("chat_completions", {"messages": [{"role": "user", "content": "hi"}]})


@pytest.mark.parametrize(("api", "body", "field"), [
    ("completions", {}, "prompt"),
    ("completions", {"prompt": 3}, "prompt"),
    ("completions", {"prompt": [1, "a"]}, "prompt"),
    ("chat_completions", {}, "messages"),
    ("chat_completions", {"messages": []}, "messages"),
    ("chat_completions", {"messages": ["hi"]}, r"messages\[0\]"),
    ("chat_completions", {"messages": [{"content": "hi"}]}, r"messages\[0\].role"),
    ("chat_completions", {"messages": [{"role": "user", "content": 5}]}, r"messages\[0\].content"),
    ("embeddings", {"input": "x"}, "unknown api"),
])
def test_malformed_requests_name_the_field(tokenizer: PromptTokenizer, api: str, body: dict[str, object],
                                           field: str) -> None:
    with pytest.raises(TokenizationError, match=field):
        tokenizer.encode_request(api, body)


def test_same_prefix_gives_same_leading_ids(tokenizer: PromptTokenizer) -> None:
    first = tokenizer.encode_request("chat_completions", {"messages": [{"role": "system", "content": "be brief"},
                                                                     {"role": "user", "content": "hello"}]})
    second = tokenizer.encode_request("chat_completions", {"messages": [{"role": "system", "content": "be brief"},
                                                                      {"role": "user", "content": "world"}]})
    assert first[:5] == second[:5] and first != second
