"""``lora-affinity-scorer``: 1.0 active, 0.8 free slot, 0.6 waiting, else 0."""

from __future__ import annotations

from typing import Any

import pytest

from epp.framework.scheduling import CycleState, ScorerCategory


@pytest.mark.parametrize(
    ("active", "waiting", "max_lora", "score"),
    [
        pytest.param({"sql"}, set(), 1, 1.0, id="the adapter is running there"),
        pytest.param({"sql", "a", "b"}, {"c"}, 2, 1.0, id="running wins even with every slot taken"),
        pytest.param({"a"}, set(), 4, 0.8, id="another adapter runs but a slot is free"),
        pytest.param(set(), set(), 1, 0.8, id="nothing loaded and a slot is free"),
        pytest.param({"a"}, {"sql"}, 4, 0.8, id="waiting there but a slot is free: the free slot counts first"),
        pytest.param({"a"}, {"sql"}, 2, 0.6, id="waiting there and no slot free"),
        pytest.param({"a", "b"}, set(), 2, 0.0, id="neither loaded nor waiting and no slot free"),
        pytest.param(set(), set(), 0, 0.0, id="no LoRA info (max_lora 0) scores 0"),
        pytest.param({"sql"}, set(), 0, 1.0, id="no LoRA slot info but running still scores 1"),
        pytest.param(set(), {"sql"}, 0, 0.6, id="no LoRA slot info but waiting scores 0.6"),
    ],
)
def test_lora_affinity_table(create: Any, make_endpoint: Any, make_request: Any, active: set[str],
                             waiting: set[str], max_lora: int, score: float) -> None:
    scorer = create("lora-affinity-scorer")
    ep = make_endpoint("e", active_models=frozenset(active), waiting_models=frozenset(waiting),
                       max_active_models=max_lora)
    assert list(scorer.score(CycleState(), make_request(model="sql"), [ep])) == [score]


def test_the_target_model_after_rewrite_is_the_adapter(create: Any, make_endpoint: Any, make_request: Any) -> None:
    scorer = create("lora-affinity-scorer")
    endpoints = [make_endpoint("base", active_models=frozenset({"llama"}), max_active_models=1),
                 make_endpoint("lora", active_models=frozenset({"sql-lora"}), max_active_models=1)]
    request = make_request(model="llama", target_model="sql-lora")
    assert list(scorer.score(CycleState(), request, endpoints)) == [0.0, 1.0]


def test_lora_affinity_is_an_affinity_scorer(create: Any) -> None:
    assert create("lora-affinity-scorer").category() == ScorerCategory.AFFINITY
