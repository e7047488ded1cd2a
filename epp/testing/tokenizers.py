"""A tiny Hugging Face tokenizer written to disk, so tests and benchmarks never download one.

``write_tiny_tokenizer`` writes ``tokenizer.json`` (word-level: every whitespace-separated
word or punctuation mark is one token) and a ``tokenizer_config.json`` beside it with a small
chat template, the layout ``epp.tokenization.PromptTokenizer.from_file`` (picker) and
``epp sim --tokenizer`` (simulator) both read.

The vocabulary is either trained from ``corpus`` with the ``tokenizers`` trainer (well under
a second; ids follow word frequency, deterministic for a given corpus) or given as ``vocab``
when a test wants to write the expected ids by hand. Words outside the vocabulary become
``[UNK]``; with ``bos_token`` set, every text encoded with special tokens starts with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

__all__ = ["CHAT_TEMPLATE", "DEFAULT_SPECIAL_TOKENS", "UNK", "write_tiny_tokenizer"]

UNK = "[UNK]"
DEFAULT_SPECIAL_TOKENS = ("<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>")
# Role markers written by the template are special tokens, so each is one id, as in real models.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
_DEFAULT_CORPUS = ("the quick brown fox jumps over the lazy dog", "hello world, be brief!",
                   "a user asks the system a question and the assistant answers")


def _build(corpus: Iterable[str] | None, vocab: Mapping[str, int] | None, specials: Sequence[str]) -> Tokenizer:
    if vocab is not None:
        if corpus is not None:
            raise ValueError("give corpus or vocab, not both")
        tok = Tokenizer(models.WordLevel(dict(vocab), unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
    else:
        tok = Tokenizer(models.WordLevel(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        # Specials go in the trainer too so that they get the lowest ids, before any word.
        trainer = trainers.WordLevelTrainer(special_tokens=[UNK, *specials], min_frequency=1)
        tok.train_from_iterator(list(corpus if corpus is not None else _DEFAULT_CORPUS), trainer)
    tok.add_special_tokens(list(specials))
    return tok


def write_tiny_tokenizer(directory: Path, *, corpus: Iterable[str] | None = None,
                         vocab: Mapping[str, int] | None = None,
                         special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS, bos_token: str | None = "<s>",
                         chat_template: str | None = CHAT_TEMPLATE,
                         config: Mapping[str, Any] | None = None) -> Path:
    """Write ``directory/tokenizer.json`` and ``directory/tokenizer_config.json``; return the former.

    ``corpus``: sentences to train the vocabulary from (a small default when neither it nor
    ``vocab`` is given). ``vocab``: word -> id instead of training (must hold ``[UNK]`` and the
    special tokens). ``bos_token``: prepended to text encoded with special tokens and written
    to the config (None: neither). ``chat_template``: None writes no template (the
    tokenizer then falls back to ``"role: content"`` lines). ``config``: keys merged over the
    generated ``tokenizer_config.json``.
    """
    if bos_token is not None and bos_token not in special_tokens:
        raise ValueError(f"bos_token {bos_token!r} must be one of the special tokens")
    tok = _build(corpus, vocab, special_tokens)
    if bos_token is not None:
        bos_id = tok.token_to_id(bos_token)
        tok.post_processor = processors.TemplateProcessing(single=f"{bos_token} $A",
                                                           special_tokens=[(bos_token, bos_id)])
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer.json"
    tok.save(str(path))
    settings: dict[str, Any] = {}
    if bos_token is not None:
        settings["bos_token"] = bos_token
    if chat_template is not None:
        settings["chat_template"] = chat_template
    settings.update(config or {})
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    return path
