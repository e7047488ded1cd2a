"""Deterministic output text, made of pieces that tokenize back to the generated ids.

Each generated token is one short English word (with a leading space after the first) or,
after a word, a ``.`` or ``,``. Every piece is at most 4 characters, well under the
tokenizer's 6, so the tokenizer maps the generated text to exactly the generated token ids:
when a client sends an answer back in the next turn of a conversation, the KV blocks of that
answer are prefix-cache hits, as with a real model.

The choice of pieces comes from a ``random.Random`` the engine seeds per request (from the
request's ``seed``, or from ``--seed`` and the prompt's token ids).
"""

from __future__ import annotations

import random

from epp.sim.tokenizer import Tokenizer

__all__ = ["TextGenerator"]

# Words of at most three letters, so " word" stays one piece of the tokenizer.
_WORDS = (
    "the", "a", "of", "and", "to", "in", "is", "it", "you", "he", "was", "for", "on", "are", "as",
    "his", "at", "be", "or", "had", "by", "one", "but", "not", "all", "we", "can", "her", "has",
    "an", "so", "if", "its", "who", "my", "our", "out", "up", "use", "man", "day", "may", "new",
    "way", "see", "him", "how", "now", "old", "any", "get", "own", "say", "she", "two", "too",
    "did", "set", "put", "end", "why", "ask", "men", "act", "air", "far", "few", "run", "off",
    "add", "big", "low", "try", "yes", "let", "sun", "war", "yet", "fly", "law", "lot", "red",
    "arm", "age", "eye", "sea", "job", "map", "art", "god", "dog", "cat", "box", "key", "oil",
    "top", "ten", "six", "sky", "ice", "gas", "toy", "cup", "hat", "pen", "tea", "egg",
)

# Punctuation that may follow a word (never two in a row, which would merge into one piece).
_PUNCT = (".", ",")

# Chance that a word is followed by punctuation.
_PUNCT_RATE = 0.12


class TextGenerator:
    """Picks output pieces and their token ids."""

    __slots__ = ("_first", "_next", "_punct")

    def __init__(self, tokenizer: Tokenizer) -> None:
        words = _WORDS
        self._first = tuple((w, tokenizer.piece_id(w)) for w in words)
        self._next = tuple((" " + w, tokenizer.piece_id(" " + w)) for w in words)
        self._punct = tuple((p, tokenizer.piece_id(p)) for p in _PUNCT)

    def next_piece(self, rng: random.Random, previous: str | None) -> tuple[str, int]:
        """The next ``(text, token id)`` after the piece ``previous`` (None at the start)."""
        if previous is None:
            return self._first[int(rng.random() * len(self._first))]
        draw = rng.random()
        if previous[-1].isalpha() and draw < _PUNCT_RATE:
            return self._punct[int(draw / _PUNCT_RATE * len(self._punct))]
        return self._next[int(rng.random() * len(self._next))]
