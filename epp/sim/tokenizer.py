"""A fixed, documented stand-in for a real tokenizer.

No model files can be downloaded, so the simulator counts tokens with an approximation that
behaves like a byte-level BPE where it matters for routing:

* Text is split with a regex in the style of the Llama-3 pre-tokenizer: special tokens such
  as ``<|eot_id|>``, then words with their leading space (`` hello``), runs of up to three
  digits, punctuation runs, newline runs, and other whitespace.
* A piece longer than 6 characters (leading space included) is cut every 6 characters
  (`` international`` becomes `` inter``, ``nation``, ``al``). On English prose this gives
  about 4 characters (1.6 words) per token, close to the Llama-3 tokenizer's 4 to 4.5.
* A piece's id is ``xxh32(piece) % 128000``; the Llama-3 special tokens keep their real ids
  (128000 and up). Ids therefore depend only on the text: the same text always yields the
  same ids, and two texts that share a prefix share the token prefix (up to the piece that
  straddles the point where they diverge), which is what prefix caching needs.

The ids are not invertible in general; ``piece_id`` exists so that generated text, which is
made of known pieces, tokenizes back to exactly the ids that were generated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

import xxhash

__all__ = [
    "BOS_TOKEN",
    "EOT_TOKEN",
    "SPECIAL_TOKENS",
    "VOCAB_SIZE",
    "Tokenizer",
]

# Ids below this are ordinary pieces; the Llama-3 vocabulary has 128000 of them.
VOCAB_SIZE = 128000

BOS_TOKEN = "<|begin_of_text|>"
EOT_TOKEN = "<|eot_id|>"

# The Llama-3 special tokens the chat template uses, with their real ids.
SPECIAL_TOKENS: Mapping[str, int] = MappingProxyType({
    BOS_TOKEN: 128000,
    "<|end_of_text|>": 128001,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    EOT_TOKEN: 128009,
})

# Longest piece kept whole; longer pieces are cut every this many characters.
_MAX_PIECE_CHARS = 6

# Bound on the memoised piece -> id table; prose reuses few distinct pieces, so this is rarely
# reached, and clearing it only costs re-hashing.
_MAX_CACHED_PIECES = 200_000

_SPLIT = re.compile(
    r"<\|[a-z_]+\|>"  # special tokens
    r"| ?[^\W\d_]+"  # a word, with its leading space
    r"| ?\d{1,3}"  # up to three digits
    r"| ?(?:(?!<\|[a-z_]+\|>)(?:[^\s\w]|_))+"  # punctuation run, stopping before special tokens
    r"|\s*[\r\n]+"  # newlines (with the spaces before them)
    r"|\s+(?!\S)"  # trailing whitespace
    r"|\s+"
)


class Tokenizer:
    """Text to token ids, deterministic and process-independent.

    Concurrency: not thread-safe (the memo dict is shared); one per event loop.
    """

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_bos`` prepends ``<|begin_of_text|>`` as vLLM does."""
        ids = [SPECIAL_TOKENS[BOS_TOKEN]] if add_bos else []
        memo = self._ids
        if len(memo) > _MAX_CACHED_PIECES:
            memo.clear()
        for piece in _SPLIT.findall(text):
            if len(piece) <= _MAX_PIECE_CHARS:
                pid = memo.get(piece)
                if pid is None:
                    pid = self.piece_id(piece)
                    memo[piece] = pid
                ids.append(pid)
            elif piece in SPECIAL_TOKENS:
                ids.append(SPECIAL_TOKENS[piece])
            else:
                for start in range(0, len(piece), _MAX_PIECE_CHARS):
                    sub = piece[start : start + _MAX_PIECE_CHARS]
                    pid = memo.get(sub)
                    if pid is None:
                        pid = self.piece_id(sub)
                        memo[sub] = pid
                    ids.append(pid)
        return ids

    def pieces(self, text: str) -> list[str]:
        """The text of each token ``encode`` would return (without BOS)."""
        out: list[str] = []
        for piece in _SPLIT.findall(text):
            if len(piece) <= _MAX_PIECE_CHARS or piece in SPECIAL_TOKENS:
                out.append(piece)
            else:
                out.extend(piece[i : i + _MAX_PIECE_CHARS] for i in range(0, len(piece), _MAX_PIECE_CHARS))
        return out

    @staticmethod
    def piece_id(piece: str) -> int:
        """The id of one piece: its special-token id, or a stable hash of its UTF-8 bytes."""
        special = SPECIAL_TOKENS.get(piece)
        if special is not None:
            return special
        return xxhash.xxh32_intdigest(piece.encode("utf-8")) % VOCAB_SIZE
