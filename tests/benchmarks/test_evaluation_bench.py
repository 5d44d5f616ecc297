"""Evaluation throughput on SmolLM2: the one-pass evaluation (shared prompt prefix once per batch, the prompt once
for answer and scores; scoring/prompt_cache.py) and the recovery runner's batched prompt conditions, each against
the two-pass, arm-by-arm reference measured in the same run (``prompt_cache=False``) — with the same numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from unpact_mech.attacks import DEFAULT_ATTACKS, get_attack
from unpact_mech.recovery import RecoveryConfig, run_recovery
from unpact_mech.scoring import evaluate_items


@pytest.fixture(scope="module")
def unlearned(real_facts):
    """A ga_gdr-unlearned copy of SmolLM2 (the demo's recipe, no evaluation): the model the suite recovers from."""
    from unpact_mech import load_model
    from unpact_mech.unlearning import unlearn

    model = load_model("smollm2")
    unlearn(model, real_facts, "ga_gdr", evaluate=False, progress=False, seed=0)
    return model


def test_evaluate_vs_no_prefix_cache(benchmark, compare, smollm2, real_facts):
    items = real_facts[:64]
    one = evaluate_items(smollm2, items, progress=False)
    two = evaluate_items(smollm2, items, progress=False, prompt_cache=False)
    assert (one["generation"] == two["generation"]).all() and (one["logprob"] - two["logprob"]).abs().max() < 1e-4
    compare(
        benchmark,
        "evaluate 64 facts: one pass with the shared prefix vs generate + score",
        lambda: evaluate_items(smollm2, items, progress=False),
        lambda: evaluate_items(smollm2, items, progress=False, prompt_cache=False),
        rounds=2,
        key="evaluate_vs_no_prefix_cache",
    )


def test_recovery_suite_vs_no_prefix_cache(benchmark, compare, smollm2, unlearned, real_facts):
    """Every prompt-emphasis strategy of the default suite with its controls (random words, the original model,
    utility items), keywords from the data, on the whole built-in set. One timed round each way (the reference takes
    tens of minutes on 2 cores); the timed runs' own results are compared."""
    strategies = [name for name in DEFAULT_ATTACKS if get_attack(name).kind == "strategy"]
    results = {}

    def suite(prompt_cache: bool):
        cfg = RecoveryConfig(attacks=strategies, keyword_source="data", prompt_cache=prompt_cache)
        results[prompt_cache] = run_recovery(smollm2, unlearned, real_facts, cfg, progress=False)

    ratio = compare(
        benchmark,
        "recovery suite, prompt strategies + controls: batched one pass vs arm by arm",
        lambda: suite(True),
        lambda: suite(False),
        rounds=1,
        warmup=0,
        goal="goal <= 0.33 (>= 3x faster)",
        key="recovery_suite_vs_no_prefix_cache",
    )
    fast, ref = results[True], results[False]
    keys = ["model", "condition", "emphasis", "arm", "item_id", "generation", "correct"]
    pd.testing.assert_frame_equal(fast.per_item[keys], ref.per_item[keys])
    # the first-token rank among 49,152 logits can move by one where two logits tie to float precision (measured:
    # 0.08% of the rows)
    rank_moved = (fast.per_item["rank"] - ref.per_item["rank"]).abs()
    assert rank_moved.max() <= 1 and (rank_moved > 0).mean() < 0.005
    np.testing.assert_allclose(fast.per_item["logprob"], ref.per_item["logprob"], atol=1e-4)
    pd.testing.assert_frame_equal(fast.rates, ref.rates, atol=1e-4)
    assert fast.summary["n_eligible"] > 0
    print(f"\nrecovery suite over {len(real_facts)} items, {len(strategies)} strategies: {1 / ratio:.1f}x faster")
