"""ChunkedEncoder: chunk-by-chunk token ids must equal the whole prompt's encoding, for every chunkable tokenizer."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from epp.plugins.kvcache.chunked import ChunkedEncoder, chunk_safety, split_points
from epp.testing.tokenizers import write_tiny_tokenizer

SPECIALS = ["<s>", "</s>", "<|user|>", "<|assistant|>"]
# Fragments prompts are built from: words, digits runs, punctuation, contractions, runs of
# spaces and newlines, combining marks, CJK, a no-break space and the special tokens, so
# cuts land next to everything a pre-tokenizer treats differently.
FRAGMENTS = ["the", " the", "quick", "brown", "fox's", "we'll", " ", "  ", "   ", "\n", "\n\n", " \n", "\t",
             "12345", "7", "3.14", ",", ".", "!?", "(x)", "e\u0301", "café", "中文", "\u00a0", "ß", "İ",
             "<|user|>", "<s>", "--", "__init__", "a", "Zebra", "naïve", "x=1;", "😀"]
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _corpus(seed: int = 7, lines: int = 300) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(FRAGMENTS) + rng.choice(["", " "]) for _ in range(30)) for _ in range(lines)]


def _bpe(pre: pre_tokenizers.PreTokenizer, normalizer: normalizers.Normalizer | None = None,
         byte_level: bool = True) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else []
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["[UNK]", *SPECIALS], initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    if byte_level:
        tok.decoder = decoders.ByteLevel()
    return tok


def gpt2_style() -> Tokenizer:
    return _bpe(pre_tokenizers.ByteLevel(add_prefix_space=False))


def llama3_style() -> Tokenizer:
    tok = _bpe(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), normalizers.NFC())
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False),
                                              processors.TemplateProcessing(single="<s> $A",
                                                                            special_tokens=[("<s>", bos)])])
    return tok


def metaspace_style() -> Tokenizer:
    tok = _bpe(pre_tokenizers.Metaspace(prepend_scheme="first", split=True), normalizers.NFKC(), byte_level=False)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    return tok


def wordpiece_style() -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(_corpus(), trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]", *SPECIALS],
                                                                 show_progress=False))
    return tok


def word_level(tmp: Path) -> Tokenizer:
    return Tokenizer.from_file(str(write_tiny_tokenizer(tmp, corpus=_corpus())))


def metaspace_always() -> Tokenizer:
    return _bpe(pre_tokenizers.Metaspace(prepend_scheme="always", split=True), byte_level=False)


def whitespace_with_refiners() -> Tokenizer:
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True),
                                   pre_tokenizers.Punctuation()])
    return _bpe(pre, normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()]))


BUILDERS: dict[str, Callable[[], Tokenizer]] = {"gpt2": gpt2_style, "llama3": llama3_style,
                                                "metaspace": metaspace_style, "wordpiece": wordpiece_style,
                                                "metaspace-always": metaspace_always,
                                                "whitespace-refiners": whitespace_with_refiners}


@pytest.fixture(scope="module", params=[*BUILDERS, "word-level"])
def tokenizer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    if request.param == "word-level":
        return word_level(tmp_path_factory.mktemp("tok"))
    return BUILDERS[request.param]()


texts = st.lists(st.sampled_from(FRAGMENTS), min_size=0, max_size=60).map(" ".join)
# A run of prompts: a shared head, then each prompt adds its own tail (and some repeat), as
# requests of one system prompt do.
prompt_runs = st.tuples(texts, st.lists(st.tuples(texts, st.booleans()), min_size=1, max_size=5))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run=prompt_runs, chunk_chars=st.sampled_from([16, 24, 64]))
def test_chunked_ids_equal_whole_prompt_encoding(tokenizer: Tokenizer, run: tuple[str, list[tuple[str, bool]]],
                                                 chunk_chars: int) -> None:
    encoder = ChunkedEncoder(tokenizer, chunk_chars=chunk_chars, budget_bytes=4096)
    assert encoder.enabled, encoder.disabled_reason
    head, tails = run
    for tail, special in [(tail, special) for tail, special in tails] + [(tails[0][0], tails[0][1])]:
        text = head + tail
        assert encoder.encode(text, special) == tokenizer.encode(text, add_special_tokens=special).ids


def test_a_prompt_sharing_a_long_prefix_encodes_only_its_new_chunks(tokenizer: Tokenizer) -> None:
    rng = random.Random(3)
    head = " ".join(rng.choice(["policy", "refund", "river", "gateway"]) for _ in range(800))
    encoder = ChunkedEncoder(tokenizer, chunk_chars=256)
    first = encoder.encode(head + " question one", True)
    misses_after_first = encoder.chunk_misses
    second = encoder.encode(head + " question two", True)
    assert first == tokenizer.encode(head + " question one").ids
    assert second == tokenizer.encode(head + " question two").ids
    assert misses_after_first >= 10
    assert encoder.chunk_misses - misses_after_first <= 1  # only the chunk holding the new question
    assert encoder.chunk_hits >= misses_after_first - 1


def test_cache_stays_within_its_byte_budget(tokenizer: Tokenizer) -> None:
    encoder = ChunkedEncoder(tokenizer, chunk_chars=32, budget_bytes=20_000)
    rng = random.Random(5)
    for i in range(60):
        text = " ".join(rng.choice(["alpha", "beta", "gamma", str(i)]) for _ in range(100))
        assert encoder.encode(text, False) == tokenizer.encode(text, add_special_tokens=False).ids
        assert encoder.cached_bytes <= 20_000
    assert len(encoder) > 0


@pytest.mark.parametrize("build, reason", [
    (lambda: _bpe(pre_tokenizers.ByteLevel(add_prefix_space=True)), "prefix space"),
    (lambda: _bpe(pre_tokenizers.Metaspace(split=False), byte_level=False), "without split"),
    (lambda: _bpe(pre_tokenizers.Whitespace(), normalizers.Sequence([normalizers.Prepend("▁"),
                                                                       normalizers.Replace(" ", "▁")])), "Prepend"),
    (lambda: _bpe(pre_tokenizers.Split(Regex(r"[^\n]+"), behavior="isolated")), "not a known tiktoken"),
    (lambda: _bpe(pre_tokenizers.Punctuation()), "no pre-tokenizer splits at spaces"),
])
def test_tokenizers_whose_encoding_can_cross_a_cut_are_encoded_whole(build: Callable[[], Tokenizer],
                                                                     reason: str) -> None:
    tok = build()
    encoder = ChunkedEncoder(tok, chunk_chars=16)
    assert encoder.disabled_reason is not None and reason in encoder.disabled_reason
    text = "the quick brown fox's  tail\n\n12345 jumps over the naïve zebra " * 5
    assert encoder.encode(text, True) == tok.encode(text).ids
    assert len(encoder) == 0


def test_no_pre_tokenizer_and_neighbour_dependent_added_tokens_are_refused() -> None:
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    assert chunk_safety(tok) == "no pre-tokenizer (the whole text is one piece)"
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert chunk_safety(tok) is None
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True)])
    assert "depends on its neighbours" in str(chunk_safety(tok))


def test_a_mismatch_found_by_verification_turns_chunking_off(tokenizer: Tokenizer) -> None:
    encoder = ChunkedEncoder(tokenizer, chunk_chars=16)
    text = "the quick brown fox jumps over the lazy dog " * 4
    ids = encoder.encode(text, False)
    assert encoder.should_verify()
    assert encoder.verify(text, False, ids)
    assert encoder.enabled and len(encoder) > 0
    assert not encoder.verify(text, False, [*ids[:-1], ids[-1] + 1])
    assert not encoder.enabled and len(encoder) == 0 and encoder.cached_bytes == 0
    assert encoder.encode(text, False) == tokenizer.encode(text, add_special_tokens=False).ids


def test_verification_samples_the_first_results_then_one_in_n(tokenizer: Tokenizer) -> None:
    encoder = ChunkedEncoder(tokenizer, verify_first=2, verify_every=5)
    assert [encoder.should_verify() for _ in range(10)] == [True, True, False, False, True,
                                                           False, False, False, False, True]


@given(st.text(alphabet=" ab\n\u00a0é.", max_size=200), st.sampled_from([16, 20, 50]))
def test_cuts_are_spaces_between_non_space_characters(text: str, chunk_chars: int) -> None:
    cuts = split_points(text, chunk_chars)
    assert cuts == sorted(set(cuts))
    previous = 0
    for cut in cuts:
        assert text[cut] == " " and text[cut - 1] not in " \n\u00a0" and text[cut + 1] not in " \n\u00a0"
        assert cut - previous >= chunk_chars
        previous = cut
    # Content-defined: the same cuts inside any prefix that still has room after them.
    for cut in cuts:
        assert [c for c in split_points(text[:cut + 2], chunk_chars)] == [c for c in cuts if c <= cut]
