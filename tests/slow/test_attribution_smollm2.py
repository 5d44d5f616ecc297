"""The attribution suite on the real SmolLM2-135M-Instruct (slow tier; ~30-40 s in total on 2 cores)."""

from __future__ import annotations

import torch

from unpact_mech.attribution import (
    AttributionConfig,
    attention_paths,
    attribute_items,
    occlusion,
    residual_contributions,
)


def test_top_occlusion_word_is_an_annotated_keyword(smollm2, real_facts):
    """The paper's premise on our data: deleting the keyword hurts the answer most, for >= 60% of the items."""
    run = attribute_items(smollm2, real_facts, AttributionConfig(method="occlusion", level="word"))
    s = run.summary
    misses = [(u.item_id, u.units[u.top_unit].text) for u in run.units if not u.is_keyword[u.top_unit]]
    print(
        f"\nSmolLM2 word-level occlusion: keyword hit rate {s['keyword_hit_rate']:.3f} "
        f"over {s['n_items_with_keywords']} "
        f"items (KeyToken precision {s['keyword_precision']:.3f}, recall {s['keyword_recall']:.3f}); misses: {misses}"
    )
    assert s["n_items_with_keywords"] == len(real_facts) >= 60
    assert s["keyword_hit_rate"] >= 0.60, misses


def test_packed_occlusion_is_exact_on_smollm2(smollm2, real_facts):
    """The tree-masked packed row (long row, RoPE positions, GQA) equals the right-padded batch."""
    item = real_facts[0]
    packed = occlusion(smollm2, item, batching="packed")
    batched = occlusion(smollm2, item, batching="batched")
    assert (packed.scores - batched.scores).abs().max().item() <= 1e-4
    assert abs(packed.target_value - batched.target_value) <= 1e-4
    assert packed.scores.abs().max() > 0.1


def test_direct_path_sum_rules_on_smollm2(smollm2, real_facts):
    item = real_facts[1]
    res = residual_contributions(smollm2, item)
    assert abs(float(res.values.sum()) - res.readout_value) <= 1e-3 * max(1.0, abs(res.readout_value))
    assert abs(float(res.lens_logprob[-1]) - res.target_value) <= 1e-4
    paths = attention_paths(smollm2, item, layers=[0, 15, 29])
    attn = res.values[
        [i for i, (c, L) in enumerate(zip(res.components, res.layers)) if c == "attn" and L in (0, 15, 29)]
    ]
    assert torch.allclose(paths.contributions.sum((1, 2)) + paths.bias_terms, attn, atol=1e-3)
