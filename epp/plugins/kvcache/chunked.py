"""Incremental prompt encoding: a prompt that shares a long prefix with an earlier one only encodes its new tail.

Requests to one model share long prefixes (system prompts, RAG templates, conversations)
and differ after them, so a cache keyed by the whole prompt never hits, while encoding a
4k-token prompt costs milliseconds. ``ChunkedEncoder`` cuts the prompt text into chunks of
about ``chunk_chars`` characters, keeps each chunk's token ids in a byte-bounded LRU keyed by
the chunk's exact text, and encodes only the chunks it has not seen.

Why the concatenation of chunk encodings equals the whole prompt's encoding (it must: a
wrong id silently misroutes every request of that prefix). A Hugging Face tokenizer splits
out added tokens, normalises, pre-tokenizes the text into pieces, runs its model (BPE,
WordPiece, Unigram, word level) on each piece independently, then the post-processor adds
special tokens. So encodings concatenate at any cut that is a piece boundary in the whole
text and in both parts alone. A cut is placed only on an ASCII space whose neighbours are
letters, digits or printable ASCII (never whitespace), and chunking is on only for
tokenizers whose every stage keeps such a cut a boundary (``chunk_safety``):

* normaliser: none, or Unicode normal forms, lowercasing, accent stripping (they act per
  character; a space never composes with its neighbours);
* pre-tokenizer: whitespace splitters (``Whitespace``, ``WhitespaceSplit``,
  ``BertPreTokenizer``), GPT-2's ``ByteLevel`` regex, ``Metaspace`` with ``split``, or the
  tiktoken-family ``Split`` regexes (GPT-4, Llama 3, Qwen 2, DeepSeek: whitespace only ever
  starts a piece, there is no look-behind, so matching from the cut is the same alone or in
  the whole); piece-local refiners (``Punctuation``, ``Digits``, ``ByteLevel`` without its
  regex) may follow. Never with ``add_prefix_space`` (it would add a space to each chunk);
* added tokens without ``lstrip``/``rstrip``/``single_word`` and without whitespace inside
  (they are matched in the raw text before anything else);
* no truncation, no padding, no BPE dropout; a post-processor that only adds special ids
  around the sequence (their ids are learnt once from a probe).

Anything else (e.g. SentencePiece files whose normaliser prepends ``▁`` to the text) is
encoded whole, as before. As a safety net for tokenizers that pass these checks for the
wrong reason, ``should_verify`` asks the caller to compare the first ``verify_first``
results and one in ``verify_every`` with a whole-prompt encoding (off the request path);
one mismatch turns chunking off for that tokenizer and logs a warning.

Thread-safe: the cache is touched under a lock; encoding runs outside it.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer

__all__ = ["ChunkedEncoder", "chunk_safety", "split_points"]

log = logging.getLogger(__name__)

_LOCAL_NORMALIZERS = frozenset({"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents"})
_SPLITTERS = frozenset({"Whitespace", "WhitespaceSplit", "BertPreTokenizer"})
_REFINERS = frozenset({"Punctuation", "Digits"})
_POST_PROCESSORS = frozenset({"TemplateProcessing", "BertProcessing", "RobertaProcessing", "ByteLevel"})
_TIKTOKEN_SIGNATURE = "\\s+(?!\\S)"
_ENTRY_OVERHEAD = 200  # dict slot, key and array headers: a generous per-chunk constant
_PROBES = ("a", "hello world", "x 1")


def _is_cut_neighbour(ch: str) -> bool:
    # Letters and digits are never whitespace under any definition (Python's, Unicode's, the
    # tokenizer regexes' \s); nor is printable ASCII other than the space itself.
    return ("!" <= ch <= "~") or ch.isalnum()


def split_points(text: str, chunk_chars: int) -> list[int]:
    """Cut positions (each an ASCII space between two non-space characters), about ``chunk_chars`` apart.

    Content-defined from the start of the text: two texts that share a prefix get the same
    cuts within it, so their chunks (and cache entries) are the same."""
    cuts: list[int] = []
    start = 0
    end = len(text)
    while end - start > chunk_chars:
        position = text.find(" ", start + chunk_chars, end - 1)
        while position != -1 and not (_is_cut_neighbour(text[position - 1]) and _is_cut_neighbour(text[position + 1])):
            position = text.find(" ", position + 1, end - 1)
        if position == -1:
            break
        cuts.append(position)
        start = position
    return cuts


def _pre_tokenizer_reason(spec: Mapping[str, Any] | None) -> str | None:
    """None when the pre-tokenizer keeps every safe cut a piece boundary; else why not."""
    if spec is None:
        return "no pre-tokenizer (the whole text is one piece)"
    parts = spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else [spec]
    splits = False
    for part in parts:
        kind = part.get("type")
        if kind in _SPLITTERS:
            splits = True
        elif kind in _REFINERS:
            continue
        elif kind == "ByteLevel":
            if part.get("add_prefix_space", False):
                return "ByteLevel adds a prefix space"
            splits = splits or bool(part.get("use_regex", True))
        elif kind == "Metaspace":
            if not part.get("split", True):
                return "Metaspace without split"
            splits = True
        elif kind == "Split":
            pattern = part.get("pattern", {})
            regex = pattern.get("Regex") if isinstance(pattern, Mapping) else None
            if not isinstance(regex, str) or _TIKTOKEN_SIGNATURE not in regex or "(?<" in regex or "$" in regex \
                    or "\\b" in regex or regex.replace("[^", "").count("^"):
                return f"Split pattern {pattern!r} is not a known tiktoken-family regex"
            if part.get("behavior") != "Isolated" or part.get("invert", False):
                return "Split behaviour other than Isolated"
            splits = True
        else:
            return f"pre-tokenizer {kind} is not known to be chunkable"
    return None if splits else "no pre-tokenizer splits at spaces"


def _normalizer_reason(spec: Mapping[str, Any] | None) -> str | None:
    if spec is None:
        return None
    parts = spec.get("normalizers", []) if spec.get("type") == "Sequence" else [spec]
    for part in parts:
        if part.get("type") not in _LOCAL_NORMALIZERS:
            return f"normalizer {part.get('type')} may act across a cut"
    return None


def chunk_safety(tokenizer: Tokenizer) -> str | None:
    """None when chunked encoding provably equals whole encoding for this tokenizer; else the reason it is off."""
    spec = json.loads(tokenizer.to_str())
    if spec.get("truncation") is not None or spec.get("padding") is not None:
        return "truncation or padding is configured"
    model = spec.get("model") or {}
    if model.get("dropout") not in (None, 0, 0.0):
        return "BPE dropout makes encodings random"
    for added in spec.get("added_tokens") or ():
        if added.get("lstrip") or added.get("rstrip") or added.get("single_word"):
            return f"added token {added.get('content')!r} depends on its neighbours"
        if any(ch.isspace() for ch in str(added.get("content", ""))):
            return f"added token {added.get('content')!r} contains whitespace"
    post = spec.get("post_processor")
    post_parts = (post.get("processors", []) if post.get("type") == "Sequence" else [post]) if post else []
    for part in post_parts:
        if part.get("type") not in _POST_PROCESSORS:
            return f"post-processor {part.get('type')} is not known to only add special tokens"
    return _normalizer_reason(spec.get("normalizer")) or _pre_tokenizer_reason(spec.get("pre_tokenizer"))


def _special_wrapping(tokenizer: Tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The ids the post-processor puts before and after a sequence, the same for every probe; or None."""
    found: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
    for probe in _PROBES:
        bare = tokenizer.encode(probe, add_special_tokens=False).ids
        full = tokenizer.encode(probe, add_special_tokens=True).ids
        for i in range(len(full) - len(bare) + 1):
            if full[i:i + len(bare)] == bare:
                found.add((tuple(full[:i]), tuple(full[i + len(bare):])))
                break
        else:
            return None
    return found.pop() if len(found) == 1 else None


@dataclass(slots=True)
class ChunkPlan:
    """A prompt cut into chunks, with the ids the cache already had (None where it had none)."""

    chunks: list[str]
    cached: list[array[int] | None]

    @property
    def missing_chars(self) -> int:
        return sum(len(c) for c, ids in zip(self.chunks, self.cached, strict=True) if ids is None)


class ChunkedEncoder:
    """Token ids of texts, encoding only chunks not seen before; see the module docstring for when it is exact."""

    def __init__(self, tokenizer: Tokenizer, *, budget_bytes: int = 32 << 20, chunk_chars: int = 512,
                 verify_first: int = 4, verify_every: int = 256) -> None:
        if chunk_chars < 16:
            raise ValueError(f"chunk_chars must be at least 16, got {chunk_chars}")
        self._tokenizer = tokenizer
        self._chunk_chars = chunk_chars
        self._budget = budget_bytes
        self._verify_first = verify_first
        self._verify_every = max(1, verify_every)
        reason = chunk_safety(tokenizer) if budget_bytes > 0 else "no cache budget"
        wrapping = _special_wrapping(tokenizer) if reason is None else None
        if reason is None and wrapping is None:
            reason = "the post-processor's special tokens are not a fixed prefix and suffix"
        self.disabled_reason = reason
        self._prefix, self._suffix = wrapping or ((), ())
        self._cache: OrderedDict[str, array[int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._encoded = 0
        self.chunk_hits = 0
        self.chunk_misses = 0
        self.verified = 0

    @property
    def enabled(self) -> bool:
        return self.disabled_reason is None

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._cache)

    def plan(self, text: str) -> ChunkPlan:
        """Cut ``text`` and look its chunks up (cheap: no encoding); only when ``enabled``."""
        cuts = split_points(text, self._chunk_chars)
        bounds = [0, *cuts, len(text)]
        chunks = [text[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
        with self._lock:
            cached = [self._cache.get(c) for c in chunks]
            for chunk, ids in zip(chunks, cached, strict=True):
                if ids is not None:
                    self._cache.move_to_end(chunk)
        return ChunkPlan(chunks, cached)

    def complete(self, plan: ChunkPlan, add_special_tokens: bool) -> list[int]:
        """Encode the plan's missing chunks, remember them, and return the whole text's ids."""
        missing = [i for i, ids in enumerate(plan.cached) if ids is None]
        if missing:
            # One call per chunk, not encode_batch: that fans out over every core (Rayon), and the
            # picker shares its cores with the proxy; sequential calls cost what one whole encode does.
            encode = self._tokenizer.encode
            fresh = {i: array("I", encode(plan.chunks[i], add_special_tokens=False).ids) for i in missing}
            self._remember([(plan.chunks[i], ids) for i, ids in fresh.items()])
        else:
            fresh = {}
        # Joined as bytes and unpacked once: extending a list from 50 arrays costs twice as much.
        out = array("I", b"".join(ids if ids is not None else fresh[i] for i, ids in enumerate(plan.cached))).tolist()
        if add_special_tokens and (self._prefix or self._suffix):
            out = [*self._prefix, *out, *self._suffix]
        self.chunk_hits += len(plan.chunks) - len(missing)
        self.chunk_misses += len(missing)
        return out

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        """The ids of ``text``, chunked when ``enabled``, else one whole encode."""
        if not self.enabled:
            return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)
        return self.complete(self.plan(text), add_special_tokens)

    def _remember(self, entries: Sequence[tuple[str, array[int]]]) -> None:
        with self._lock:
            for chunk, ids in entries:
                if chunk in self._cache:
                    continue
                self._cache[chunk] = ids
                self._bytes += _cost(chunk, ids)
            while self._bytes > self._budget and self._cache:
                old_chunk, old_ids = self._cache.popitem(last=False)
                self._bytes -= _cost(old_chunk, old_ids)

    def should_verify(self) -> bool:
        """Whether the caller should check this result against a whole encoding (``verify``)."""
        self._encoded += 1
        return self.enabled and (self._encoded <= self._verify_first or self._encoded % self._verify_every == 0)

    def verify(self, text: str, add_special_tokens: bool, ids: Sequence[int]) -> bool:
        """Compare chunked ``ids`` with a whole encoding; on a mismatch, chunking goes off for good. Never raises."""
        try:
            whole = self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        except Exception:  # the caller already has its answer; a failed check proves nothing
            return True
        self.verified += 1
        if list(whole) == list(ids):
            return True
        first = next((i for i, (a, b) in enumerate(zip(whole, ids, strict=False)) if a != b), min(len(whole), len(ids)))
        log.warning("chunked tokenization differs from whole-prompt encoding at token %d of %d; chunking turned "
                    "off for this tokenizer", first, len(whole))
        self.disabled_reason = "a chunked encoding differed from the whole encoding"
        with self._lock:
            self._cache.clear()
            self._bytes = 0
        return False


def _cost(chunk: str, ids: array[int]) -> int:
    return sys.getsizeof(chunk) + 4 * len(ids) + _ENTRY_OVERHEAD
