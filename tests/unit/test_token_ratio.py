"""Characters per token learned per model from (prompt bytes, usage prompt tokens) samples."""

from __future__ import annotations

from typing import Any

import pytest

from epp.datalayer.token_ratio import DEFAULT_CHARS_PER_TOKEN, TokenRatios
from epp.framework.attributes import prompt_tokens


def feed(ratios: TokenRatios, model: str, chars_per_token: float, count: int, tokens: int = 500) -> None:
    for _ in range(count):
        assert ratios.observe(model, round(tokens * chars_per_token), tokens)


def test_the_default_stands_until_enough_samples_then_the_learned_ratio_is_used() -> None:
    ratios = TokenRatios(min_samples=8)
    assert ratios.chars_per_token("code") == DEFAULT_CHARS_PER_TOKEN == 4.0
    feed(ratios, "code", 2.2, 7)
    assert ratios.chars_per_token("code") == 4.0
    feed(ratios, "code", 2.2, 1)
    assert ratios.chars_per_token("code") == pytest.approx(2.2)
    assert ratios.snapshot() == {"code": {"charsPerToken": 2.2, "learned": 2.2, "samples": 8}}


def test_models_learn_independently() -> None:
    ratios = TokenRatios(min_samples=2)
    feed(ratios, "code", 2.2, 2)
    feed(ratios, "prose", 6.0, 2)
    feed(ratios, "english", 4.4, 2)  # within 15 % of the default, which stays in use
    assert [ratios.chars_per_token(m) for m in ("code", "prose", "english", "never-seen")] == pytest.approx(
        [2.2, 6.0, 4.0, 4.0])
    assert ratios.snapshot()["english"]["learned"] == pytest.approx(4.4)


def test_long_prompts_outweigh_short_template_heavy_ones() -> None:
    # A chat prompt of 40 bytes that the template makes 30 tokens says little about the
    # tokenizer; pooling bytes and tokens (not averaging ratios) lets the long prompts decide.
    ratios = TokenRatios(min_samples=1)
    for _ in range(20):
        ratios.observe("m", 8000, 2000)  # 4.0
        ratios.observe("m", 40, 30)  # 1.33
    assert ratios.snapshot()["m"]["learned"] == pytest.approx(8040 / 2030, abs=0.001)  # not (4 + 1.33) / 2


def test_the_estimate_converges_to_a_changed_tokenizer() -> None:
    ratios = TokenRatios(min_samples=1, horizon=50)
    feed(ratios, "m", 4.0, 100)
    feed(ratios, "m", 2.5, 400)  # the model behind the name was redeployed with another tokenizer
    assert ratios.snapshot()["m"]["learned"] == pytest.approx(2.5, rel=0.001)
    # The value in use follows in steps (each one re-sizes the index's blocks), to within 5 %.
    assert ratios.chars_per_token("m") == pytest.approx(2.5, rel=0.05)


@pytest.mark.parametrize(("ratio", "clamped"), [(0.5, 1.0), (20.0, 8.0)])
def test_the_estimate_is_clamped_to_one_to_eight(ratio: float, clamped: float) -> None:
    ratios = TokenRatios(min_samples=1)
    feed(ratios, "m", ratio, 3)
    assert ratios.chars_per_token("m") == clamped


@pytest.mark.parametrize(
    ("chars", "tokens"),
    [
        pytest.param(1000, 0, id="zero tokens"),
        pytest.param(0, 100, id="no prompt bytes (token ids)"),
        pytest.param(1000, -5, id="negative tokens"),
        pytest.param(100_000, 10, id="10000 bytes per token"),
        pytest.param(10, 1000, id="100 tokens per byte"),
    ],
)
def test_implausible_samples_are_ignored(chars: int, tokens: int) -> None:
    ratios = TokenRatios(min_samples=1)
    feed(ratios, "m", 2.2, 1)
    assert not ratios.observe("m", chars, tokens)
    assert ratios.snapshot()["m"] == {"charsPerToken": 2.2, "learned": 2.2, "samples": 1}
    assert not ratios.observe("other", chars, tokens)
    assert "other" not in ratios.snapshot()


def test_noise_under_5_percent_never_moves_the_ratio_in_use() -> None:
    # The ratio in use sizes the prefix index's blocks: noise must not reshuffle them.
    ratios = TokenRatios(min_samples=1, horizon=10)
    feed(ratios, "m", 2.2, 1)
    feed(ratios, "m", 2.3, 100)  # 4.5 % away, for ten horizons
    assert ratios.snapshot()["m"]["learned"] == pytest.approx(2.3, rel=0.001)
    assert ratios.chars_per_token("m") == pytest.approx(2.2)


def test_a_move_over_15_percent_is_adopted_at_once() -> None:
    ratios = TokenRatios(min_samples=1, horizon=1000)
    feed(ratios, "m", 2.2, 1)
    assert ratios.observe("m", 15_000, 5000)  # 3.0 chars/token, ten times the tokens seen so far
    assert ratios.chars_per_token("m") == pytest.approx(16_100 / 5500, rel=0.001)


def test_a_move_of_5_to_15_percent_is_adopted_once_it_held_for_a_horizon() -> None:
    ratios = TokenRatios(min_samples=1, horizon=10)
    feed(ratios, "m", 2.2, 1)
    feed(ratios, "m", 2.45, 9)  # 11 % away, for 9 samples since the last change
    assert ratios.chars_per_token("m") == pytest.approx(2.2)
    feed(ratios, "m", 2.45, 1)
    assert ratios.chars_per_token("m") == pytest.approx(2.45, rel=0.01)


def test_at_most_max_models_are_kept_least_recently_updated_first_out() -> None:
    ratios = TokenRatios(min_samples=1, max_models=3)
    for model in ("a", "b", "c"):
        feed(ratios, model, 3.0, 1)
    feed(ratios, "a", 3.0, 1)  # a is now the most recently updated
    feed(ratios, "d", 3.0, 1)
    assert sorted(ratios.snapshot()) == ["a", "c", "d"] and len(ratios) == 3
    assert ratios.chars_per_token("b") == 4.0  # forgotten: back to the default


def test_a_thousand_models_by_default() -> None:
    ratios = TokenRatios(min_samples=1)
    for i in range(1500):
        ratios.observe(f"model-{i}", 300, 100)
    assert len(ratios) == 1000
    assert "model-1499" in ratios.snapshot() and "model-499" not in ratios.snapshot()


@pytest.mark.parametrize("kwargs", [{"min_samples": 0}, {"horizon": 0}, {"max_models": 0}, {"settle_change": -1},
                                    {"settle_change": 0.2, "adopt_change": 0.1}])
def test_nonsense_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenRatios(**kwargs)


def test_prompt_tokens_divide_bytes_by_the_ratio_and_count_at_least_one() -> None:
    assert (prompt_tokens(1000), prompt_tokens(1000, 2.2), prompt_tokens(3), prompt_tokens(0, 2.2)) == (250, 454, 1, 1)


def test_adopted_values_are_taken_once_and_a_peers_value_is_used_as_is() -> None:
    ratios = TokenRatios()
    for _ in range(8):
        ratios.observe("m", 2000, 1000)
    assert ratios.take_adopted() == {"m": 2.0}
    assert ratios.take_adopted() == {}
    assert ratios.agree("m", 2.1) and ratios.chars_per_token("m") == 2.1
    assert not ratios.agree("m", 2.1)  # already in use
    assert ratios.take_adopted() == {}  # a peer's value is not re-published
    assert ratios.agree("other", 3.0) and ratios.chars_per_token("other") == 3.0
    assert not ratios.agree("m", 80.0) and not ratios.agree("m", float("nan"))
    assert ratios.chars_per_token("m") == 2.1
