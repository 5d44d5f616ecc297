"""Occlusion over a data set (many items per forward after one cached prefix) equals occlusion item by item."""

from __future__ import annotations

import pytest

from tests.unit.attribution.test_occlusion import TOL, loop_scores
from unpact_mech.attribution import AttributionConfig, attribute_items, occlusion
from unpact_mech.attribution.occlusion import resolve_baseline_token
from unpact_mech.attribution.occlusion_set import occlusion_items
from unpact_mech.attribution.packing import batch_packed, pack_variants, prefix_free_length
from unpact_mech.data.record import QAItem
from unpact_mech.scoring.tokens import encode_item


@pytest.fixture(scope="module")
def more_items(random_items):
    """The random items plus questions of other lengths (rows of different lengths share a padded batch)."""
    return [
        *random_items,
        QAItem("long", "Who wrote Hamlet and the other plays in London and Paris?", "William", split="forget"),
        QAItem("short", "Hamlet?", "Paris", split="retain"),
    ]


def _assert_same(got, want):
    assert [g.item_id for g in got] == [w.item_id for w in want]
    for g, w in zip(got, want):
        assert len(g.scores) == len(w.scores) > 0
        assert (g.scores - w.scores).abs().max().item() <= TOL, (g.item_id, g.scores, w.scores)
        assert abs(g.target_value - w.target_value) <= TOL
        assert g.units == w.units and g.is_keyword == w.is_keyword and g.target == w.target


@pytest.mark.parametrize("mode", ["delete", "replace"])
@pytest.mark.parametrize("level", ["token", "word"])
def test_items_equal_item_by_item_on_both_backends(arch_pair, more_items, mode, level):
    for model in arch_pair.values():
        got = occlusion_items(model, more_items, level=level, mode=mode, batching="packed")
        _assert_same(got, [occlusion(model, it, level=level, mode=mode, batching="batched") for it in more_items])


def test_items_equal_the_one_forward_per_variant_loop(llama_pair, more_items):
    model = llama_pair["transformer_lens"]
    got = occlusion_items(model, more_items, batching="packed", max_tokens=64)  # several forwards
    for res, item in zip(got, more_items):
        base, want = loop_scores(
            model, encode_item(model, item), "token", "delete", resolve_baseline_token(model, None)
        )
        assert (res.scores - want).abs().max().item() <= TOL and abs(res.target_value - base) <= TOL
        assert want.abs().max() > 1e-3


def test_a_shared_prefix_is_cached_and_chunking_does_not_matter(llama_pair, more_items):
    model = llama_pair["nnsight"]
    encs = [encode_item(model, it) for it in more_items]
    packs = [
        pack_variants(e.prompt.ids, e.answer_ids, [[p] for p in e.prompt.question_positions], "delete") for e in encs
    ]
    assert (
        prefix_free_length(packs, [e.prompt.ids for e in encs]) == min(e.prompt.question_positions[0] for e in encs) > 0
    )
    one = occlusion_items(model, more_items, batching="packed")
    many = occlusion_items(model, more_items, batching="packed", max_tokens=1)  # one item per forward
    _assert_same(many, one)


def test_answer_in_context_and_auto_batching_on_the_trained_tiny_model(tiny_model, synthetic_items):
    items = synthetic_items[:12]
    got = occlusion_items(tiny_model, items, target="answer_in_context")
    _assert_same(got, [occlusion(tiny_model, it, target="answer_in_context") for it in items])
    assert any(g.scores.abs().max() > 0.1 for g in got)


def test_attribute_items_runs_occlusion_over_the_set(tiny_model, synthetic_items):
    items = synthetic_items[:10]
    run = attribute_items(tiny_model, items, AttributionConfig(method="occlusion", target="answer"))
    _assert_same(run.units, [occlusion(tiny_model, it, target="answer") for it in items])


def test_prefix_free_length_by_hand():
    # two prompts sharing [1, 2, 3]; units start at 3 and 4 -> the prefix stops at the first branch point, 3
    a = pack_variants([1, 2, 3, 4, 5], [9], [[3], [4]], "delete")
    b = pack_variants([1, 2, 3, 7, 8, 5], [9], [[4]], "delete")
    assert prefix_free_length([a, b], [[1, 2, 3, 4, 5], [1, 2, 3, 7, 8, 5]]) == 3
    c = pack_variants([1, 6, 3, 4], [9], [[3]], "delete")
    assert prefix_free_length([a, c], [[1, 2, 3, 4, 5], [1, 6, 3, 4]]) == 1  # prompts differ at index 1
    # a unit at the very end: its variant's answer is predicted from the prompt's position 2 -> prefix 2
    d = pack_variants([1, 2, 3, 4], [9], [[3]], "delete")
    assert int(d.predictors.min()) == 2 and prefix_free_length([d], [[1, 2, 3, 4]]) == 2


def test_batch_packed_layout_by_hand():
    a = pack_variants([1, 2, 3, 4], [9, 8], [[2]], "delete")  # trunk 1 2 3 4 9, branch from position 2: 4 9
    b = pack_variants([1, 2, 4, 5], [9], [[3]], "replace", baseline_id=0)  # trunk 1 2 4 5, branch 0
    assert prefix_free_length([a, b], [[1, 2, 3, 4], [1, 2, 4, 5]]) == 2
    batch = batch_packed([a, b], 2, pad_id=-1)
    assert batch.input_ids.tolist() == [[3, 4, 9, 4, 9], [4, 5, 0, -1, -1]]
    assert batch.position_ids.tolist() == [[2, 3, 4, 2, 3], [2, 3, 3, 0, 0]]
    assert batch.allowed.shape == (2, 5, 7)  # keys: 2 cached prefix tokens, then the 5 queries
    F, T = False, True
    assert batch.allowed[0, 3].tolist() == [T, T, F, F, F, T, F]  # branch token: the prefix and itself only
    assert batch.allowed[0, 4].tolist() == [T, T, F, F, F, T, T]
    assert batch.allowed[1, 2].tolist() == [T, T, T, F, T, F, F]  # replaced token at 3: keys 0..2 and itself
    assert batch.allowed[1, 3].tolist() == [F, F, F, F, F, T, F]  # a pad sees only itself
    assert not batch.allowed[1, :3, 5:].any()  # no real query sees a pad
    assert batch.predictors[0].tolist() == [[1, 2], [3, 4]] and batch.predictors[1].tolist() == [[1], [2]]
