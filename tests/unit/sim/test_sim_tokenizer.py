"""The tokenizer approximation and the chat template: stable, prefix-preserving, documented."""

from __future__ import annotations

import random

import pytest

from epp.sim.chat_template import render_chat
from epp.sim.errors import BadRequest
from epp.sim.textgen import TextGenerator
from epp.sim.tokenizer import BOS_TOKEN, SPECIAL_TOKENS, VOCAB_SIZE, Tokenizer


def test_same_text_gives_same_ids_across_instances() -> None:
    text = "The quick brown fox jumps over the lazy dog, 12345 times!\n\nAgain."
    assert Tokenizer().encode(text) == Tokenizer().encode(text)


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("hello international", ["hello", " inter", "nation", "al"]),
        ("a cat, a dog.", ["a", " cat", ",", " a", " dog", "."]),
        ("12345", ["123", "45"]),
        ("x\n\ny", ["x", "\n\n", "y"]),
        ("<|eot_id|>hi", ["<|eot_id|>", "hi"]),
    ],
    ids=["long words are cut every 6 characters", "punctuation is its own piece", "digits come in threes",
         "newline runs are one piece", "special tokens stay whole"],
)
def test_pieces_follow_the_documented_split(text: str, pieces: list[str]) -> None:
    assert Tokenizer().pieces(text) == pieces
    assert len(Tokenizer().encode(text)) == len(pieces)


def test_special_tokens_keep_llama3_ids_and_bos_is_optional() -> None:
    tok = Tokenizer()
    assert tok.encode("<|eot_id|>") == [SPECIAL_TOKENS["<|eot_id|>"]]
    assert tok.encode("hi", add_bos=True)[0] == SPECIAL_TOKENS[BOS_TOKEN]
    assert all(0 <= t < VOCAB_SIZE for t in tok.encode("ordinary words only"))


def test_texts_sharing_a_prefix_share_a_token_prefix() -> None:
    tok = Tokenizer()
    shared = "You are a helpful assistant. Answer briefly and cite sources. " * 20
    a = tok.encode(shared + "What is the capital of France?")
    b = tok.encode(shared + "How tall is Mount Everest?")
    common = len(tok.encode(shared))
    assert a[: common - 1] == b[: common - 1]
    assert a != b


def test_about_four_characters_per_token_on_prose() -> None:
    text = ("Routing decides which replica serves each request, and a good router keeps queues short "
            "while sending requests that share a prefix to the replica that already holds it in cache.")
    chars_per_token = len(text) / len(Tokenizer().encode(text))
    assert 3.5 < chars_per_token < 5.0


def test_chat_template_shares_the_system_prompt_prefix() -> None:
    tok = Tokenizer()
    system = {"role": "system", "content": "You are a terse assistant. " * 30}
    a = tok.encode(render_chat([system, {"role": "user", "content": "first question"}]))
    b = tok.encode(render_chat([system, {"role": "user", "content": "another one"}]))
    prefix = tok.encode(render_chat([system], add_generation_prompt=False))
    assert a[: len(prefix)] == b[: len(prefix)] == prefix


def test_chat_template_accepts_content_parts_and_rejects_garbage() -> None:
    content = [{"type": "text", "text": "a"}, {"type": "image_url"}, {"text": "b"}]
    parts = [{"role": "user", "content": content}]
    assert render_chat(parts).count("ab") == 1
    for bad in ([], [{"content": "no role"}], ["not an object"], [{"role": "user", "content": 5}]):
        with pytest.raises(BadRequest):
            render_chat(bad)


def test_generated_text_tokenizes_back_to_the_generated_ids() -> None:
    tok = Tokenizer()
    gen = TextGenerator(tok)
    rng = random.Random(7)
    pieces, ids, previous = [], [], None
    for _ in range(300):
        piece, token = gen.next_piece(rng, previous)
        pieces.append(piece)
        ids.append(token)
        previous = piece
    text = "".join(pieces)
    assert tok.encode(text) == ids
    # In a chat template the answer follows "\n\n": the ids survive a second conversation turn.
    assert tok.encode("<|end_header_id|>\n\n" + text)[2:] == ids
