"""KVBlockIndex: content keys chained from events equal the request side's keys, under every event."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from epp.plugins.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch, KVEvent
from epp.plugins.kvcache.index import KVBlockIndex
from epp.plugins.kvcache.keys import block_keys
from epp.testing.clock import TickingClock

BS = 4
PROMPT = list(range(1000, 1032))  # 8 blocks of 4
KEYS = block_keys(PROMPT, BS)


def stored(hashes: list[int], parent: int | None, first_block: int, lora_id: int | None = None,
           tokens: list[int] = PROMPT, medium: str | None = "GPU", group_idx: int | None = None) -> BlockStored:
    chunk = tokens[first_block * BS:(first_block + len(hashes)) * BS]
    return BlockStored(tuple(hashes), parent, tuple(chunk), BS, lora_id, medium, group_idx=group_idx)


def batch(seq: int, *events: KVEvent, rank: int | None = None) -> EventBatch:
    return EventBatch(1.0, events, rank, seq, "")


def test_chained_keys_equal_the_request_sides_keys_across_events() -> None:
    index = KVBlockIndex()
    index.apply("a", stored([11, 12, 13], None, 0))
    index.apply("a", stored([14, 15], 13, 3))
    assert index.match(KEYS, ["a", "b"]) == {"a": 5, "b": 0}
    assert index.block_size("a") == BS
    assert index.block_size("b") is None


def test_match_counts_leading_blocks_only() -> None:
    index = KVBlockIndex()
    index.apply("a", stored([11, 12, 13, 14], None, 0))
    index.apply("a", BlockRemoved((12,)))
    assert index.match(KEYS, ["a"]) == {"a": 1}
    assert index.match(KEYS[1:], ["a"]) == {"a": 0}  # a suffix is not a prefix


def test_a_different_prompt_sharing_a_first_block_matches_only_that_block() -> None:
    index = KVBlockIndex()
    index.apply("a", stored([11, 12], None, 0))
    other = PROMPT[:BS] + [7] * (len(PROMPT) - BS)
    assert index.match(block_keys(other, BS), ["a"]) == {"a": 1}


def test_unknown_parent_is_skipped_and_counted_never_chained_from_the_root() -> None:
    index = KVBlockIndex()
    # Blocks 2 and 3 of PROMPT, whose parent we never saw stored.
    index.apply("a", stored([13, 14], 12, 2))
    assert index.stats("a")["blocks"] == 0
    assert index.stats("a")["unknownParents"] == 1
    # Chained from the root their tokens would have matched this prompt's first blocks.
    assert index.match(block_keys(PROMPT[2 * BS:], BS), ["a"]) == {"a": 0}


def test_all_blocks_cleared_and_store_again() -> None:
    index = KVBlockIndex()
    index.apply("a", stored([11, 12], None, 0))
    index.apply("a", AllBlocksCleared())
    assert index.match(KEYS, ["a"]) == {"a": 0}
    index.apply("a", stored([21], None, 0))
    assert index.match(KEYS, ["a"]) == {"a": 1}


def test_lora_ids_are_separate_prefixes() -> None:
    index = KVBlockIndex()
    index.apply("a", stored([11, 12], None, 0, lora_id=3))
    assert index.match(KEYS, ["a"]) == {"a": 0}
    assert index.match(block_keys(PROMPT, BS, lora_id=3), ["a"]) == {"a": 2}
    assert index.match(block_keys(PROMPT, BS, lora_id=4), ["a"]) == {"a": 0}


def test_data_parallel_ranks_are_indexed_apart_and_matched_as_one_endpoint() -> None:
    index = KVBlockIndex()
    index.apply_batch("a", batch(0, stored([11, 12, 13], None, 0), rank=0))
    # Rank 1 uses the same engine hashes for other blocks: they must not mix.
    index.apply_batch("a", batch(0, stored([11], None, 0, tokens=[9] * 32), rank=1))
    index.apply_batch("a", batch(1, BlockRemoved((11,)), rank=1))
    assert index.match(KEYS, ["a"]) == {"a": 3}
    index.apply_batch("a", batch(2, AllBlocksCleared(), rank=0))
    assert index.match(KEYS, ["a"]) == {"a": 0}
    assert index.stats("a")["ranks"] == [1]


def test_same_tokens_under_two_engine_hashes_stay_held_until_both_are_removed() -> None:
    index = KVBlockIndex()
    index.apply("a", stored([11], None, 0))
    index.apply("a", stored([99], None, 0))  # e.g. another cache salt: another engine hash, same tokens
    index.apply("a", BlockRemoved((11,)))
    assert index.match(KEYS, ["a"]) == {"a": 1}
    index.apply("a", BlockRemoved((99,)))
    assert index.match(KEYS, ["a"]) == {"a": 0}
    assert index.debug_sizes()["contentKeys"] == 0


def test_other_media_and_kv_groups_are_ignored() -> None:
    index = KVBlockIndex()
    index.apply("a", stored([11, 12], None, 0))
    index.apply("a", stored([31], None, 0, medium="CPU"))
    index.apply("a", BlockRemoved((11,), medium="CPU"))  # the CPU copy left, the GPU one stays
    index.apply("a", stored([41], None, 0, group_idx=1))
    assert index.match(KEYS, ["a"]) == {"a": 2}
    assert index.stats("a")["ignored"] == 3
    index.apply("a", stored([51], None, 0, medium=None))  # no medium: older vLLM, GPU only
    assert index.stats("a")["blocks"] == 3


def test_bound_forgets_the_least_recently_stored_blocks() -> None:
    index = KVBlockIndex(max_blocks_per_endpoint=3)
    index.apply("a", stored([11, 12, 13], None, 0))
    index.apply("a", stored([11], None, 0))  # stored again: now the most recent
    index.apply("a", stored([14], 13, 3))  # evicts 12, the oldest
    assert index.stats("a")["blocks"] == 3
    assert index.stats("a")["evicted"] == 1
    assert index.match(KEYS, ["a"]) == {"a": 1}


def test_purge_and_clear() -> None:
    index = KVBlockIndex()
    index.apply_batch("a", batch(7, stored([11], None, 0)))
    index.apply_batch("b", batch(3, stored([11], None, 0)))
    index.clear("a", gap=True)
    assert index.stats("a")["gaps"] == 1
    assert index.stats("a")["blocks"] == 0
    assert index.last_sequence("a") is None
    index.purge("b")
    assert index.stats("b") == {"blocks": 0, "lastSequence": None, "eventsPerSecond": None, "gaps": 0, "resets": 0,
                                "errors": 0, "events": 0, "unknownParents": 0, "ignored": 0, "evicted": 0,
                                "blockSize": None, "ranks": [], "speculative": 0,
                                "speculativeConfirmed": 0, "speculativeExpired": 0}
    assert index.match(KEYS, ["a", "b"]) == {"a": 0, "b": 0}


def test_stats_report_sequence_and_events_per_second_from_the_injected_clock() -> None:
    clock = TickingClock(start=0.0)  # 0, 1, 2, ... per call
    index = KVBlockIndex(clock=clock)
    for seq in range(12):
        index.apply_batch("a", batch(seq, stored([100 + seq], None, 0), BlockRemoved((100 + seq,))))
    stats = index.stats("a")
    assert stats["lastSequence"] == 11
    assert stats["events"] == 24
    assert stats["eventsPerSecond"] == 2.0  # two events per batch, one batch per tick


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["store", "remove", "clear"]), st.integers(0, 7)), max_size=40))
def test_matches_what_a_model_of_held_blocks_says(operations: list[tuple[str, int]]) -> None:
    """Stores chain from a held parent; the index agrees with a set of held block positions."""
    index = KVBlockIndex()
    held: set[int] = set()
    for op, position in operations:
        if op == "store" and (position == 0 or position - 1 in held):
            index.apply("a", stored([position + 1], position if position else None, position))
            held.add(position)
        elif op == "remove":
            index.apply("a", BlockRemoved((position + 1,)))
            held.discard(position)
        elif op == "clear":
            index.apply("a", AllBlocksCleared())
            held.clear()
    expected = 0
    while expected in held:
        expected += 1
    assert index.match(KEYS, ["a"]) == {"a": expected}
