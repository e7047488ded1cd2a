"""block_keys (packed, request side) must give exactly the keys block_key chains (event side) compute."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from epp.plugins.kvcache.keys import ROOT_KEY, block_key, block_keys


def chained(tokens: list[int], size: int, lora: int | None, parent: int, limit: int | None) -> list[int]:
    count = len(tokens) // size if limit is None else min(len(tokens) // size, limit)
    keys = []
    for i in range(count):
        parent = block_key(parent, tokens[i * size:(i + 1) * size], lora)
        keys.append(parent)
    return keys


@given(tokens=st.lists(st.integers(0, 2**32 - 1), max_size=200), size=st.integers(1, 20),
       lora=st.none() | st.integers(1, 2**20), parent=st.sampled_from([ROOT_KEY, 2**64 - 1, 12345]),
       limit=st.none() | st.integers(0, 12))
def test_packed_keys_equal_the_chained_block_keys(tokens: list[int], size: int, lora: int | None, parent: int,
                                                  limit: int | None) -> None:
    assert block_keys(tokens, size, lora, parent=parent, limit=limit) == chained(tokens, size, lora, parent, limit)


def test_keys_are_pinned_for_a_known_prompt() -> None:
    # The values the chained implementation gave before block_keys was packed: the byte layout is unchanged.
    assert block_keys([1, 2, 3, 4, 5, 6, 7], 3) == [16972591094501333131, 10046754664964179920]
    assert block_keys([1, 2, 3, 4, 5, 6, 7], 3, lora_id=5) == [5527104753776348077, 5308223165216944743]
