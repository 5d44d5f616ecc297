"""The ``answer_in_context`` target: the answer scored inside the ORIGINAL model's own answer sentence.

Checked against hand computations with an explicit context (the tokens before the answer are teacher-forced but not
scored), on every method and both backends, and end to end: attribute_items records the original's own answers and
reuses them, token for token, for a second model.
"""

from __future__ import annotations

import pytest
import torch

from unpact_mech import load_model
from unpact_mech.attribution import attribute_items, compare_runs
from unpact_mech.attribution.occlusion import occlusion
from unpact_mech.attribution.residual import residual_contributions
from unpact_mech.attribution.run import AttributionConfig
from unpact_mech.attribution.targets import get_target, scored_mask
from unpact_mech.attribution.units import prepare_item
from unpact_mech.scoring.logprob import score_answers
from unpact_mech.scoring.own_answer import OwnAnswer
from unpact_mech.scoring.tokens import encode_item


def test_scored_mask_drops_the_context_of_each_row():
    mask = torch.tensor([[False, True, True, True, True], [True, True, True, False, False]])
    assert scored_mask(mask, 2).tolist() == [[False, False, False, True, True], [False, False, True, False, False]]
    assert torch.equal(scored_mask(mask, 0), mask)


@pytest.fixture(scope="module")
def with_context(tiny_model, synthetic_items):
    """An item whose answer is scored after an explicit three-token context (" The answer is")."""
    item = synthetic_items[0]
    enc = encode_item(tiny_model, item)
    context = tuple(tiny_model.tokenizer(" The answer", add_special_tokens=False)["input_ids"])
    return item, prepare_item(tiny_model, item, OwnAnswer(context, tuple(enc.answer_ids)))


def _lp(model, prefix, answer) -> float:
    return float(score_answers(model, [list(prefix)], [list(answer)]).logprob[0])


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_every_method_scores_the_answer_after_the_context(backend, tiny_model, with_context):
    model = tiny_model if backend == "transformer_lens" else load_model("tiny", backend="nnsight")
    item, prepared = with_context
    prefix = list(prepared.prompt.ids) + list(prepared.context_ids)
    expected = _lp(model, prefix, prepared.answer_ids)
    assert expected != pytest.approx(_lp(model, prepared.prompt.ids, prepared.answer_ids), abs=1e-3)  # context matters
    for name in ("occlusion", "grad_x_input", "integrated_gradients", "attention", "residual"):
        run = attribute_items(model, [prepared], AttributionConfig(method=name, target="answer_in_context"))
        assert run.results[0].target_value == pytest.approx(expected, abs=1e-4), name
    # occlusion: C(u) = LP(x without u, context, answer) by hand for every word
    res = occlusion(model, prepared, level="word", target="answer_in_context")
    for unit, score in zip(res.units, res.scores.tolist()):
        ablated = [t for p, t in enumerate(prepared.prompt.ids) if p not in unit.positions]
        assert score == pytest.approx(expected - _lp(model, ablated + list(prepared.context_ids), prepared.answer_ids),
                                      abs=1e-4)  # fmt: skip
    packed = occlusion(model, prepared, level="word", target="answer_in_context", batching="packed")
    assert torch.allclose(packed.scores, res.scores, atol=1e-4)


def test_direct_logit_attribution_reads_out_after_the_context(tiny_model, with_context):
    _, prepared = with_context
    res = residual_contributions(tiny_model, prepared, target="answer_in_context")
    # the components sum to the readout: the mean answer-token logit at positions prefix_len - 1 + k
    total = float(res.values.sum())
    seq = torch.tensor([prepared.sequence])
    with torch.no_grad():
        logits = tiny_model.forward(seq).logits[0]
    pos = torch.arange(prepared.prefix_len - 1, prepared.prefix_len - 1 + len(prepared.answer_ids))
    readout = float(logits[pos, torch.tensor(prepared.answer_ids)].mean())
    assert res.readout_value == pytest.approx(readout, abs=1e-4) and total == pytest.approx(readout, abs=1e-3)
    assert res.target == "answer_in_context"


def test_auto_target_and_own_answers_are_reused_for_the_compared_model(tiny_model, synthetic_items, ga_unlearned):
    items = synthetic_items[:6]
    assert get_target("auto", tiny_model).name == "answer"  # the tiny model uses the plain format
    cfg = AttributionConfig(method="occlusion", level="word", target="answer_in_context")
    before = attribute_items(tiny_model, items, cfg)
    assert set(before.own_answers) == {it.id for it in items} and all(before.own_answers.values())
    assert before.summary["target"] == "answer_in_context" and before.summary["n_in_context"] == 6
    after = attribute_items(ga_unlearned, items, cfg, own_answers=before.own_answers)
    assert after.own_answers == before.own_answers  # the original's sentences, token for token
    compare_runs(before, after)  # same target, same contexts: comparable
    fresh = attribute_items(ga_unlearned, items, cfg)  # its own (unlearned) sentences: NOT comparable
    if fresh.own_answers != before.own_answers:
        with pytest.raises(Exception, match="own-answer contexts"):
            compare_runs(before, fresh)
    # the value is the LP of the answer after prompt + the ORIGINAL's context, also on the unlearned model
    it = items[1]
    own = before.own_answers[it.id]
    enc = encode_item(ga_unlearned, it)
    expected = _lp(ga_unlearned, list(enc.prompt.ids) + list(own.context_ids), own.answer_ids)
    assert after.results[1].target_value == pytest.approx(expected, abs=1e-4)
