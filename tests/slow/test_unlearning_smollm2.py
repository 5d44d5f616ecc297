"""Unlearning on the real SmolLM2-135M (slow tier, affordable in CI: a few optimizer steps per method).

One GA-family and one NPO-family method, each for 6 of the 8 default-recipe steps on builtin:real_facts: the
forget answers' log-prob (in the model's own answer context, the training target) must fall clearly more than the
retain answers', and the updated weights must be the ones the backend sees (no reload).
"""

from __future__ import annotations

import pytest
import torch

from unpact_mech import load_model
from unpact_mech.scoring.logprob import score_answers
from unpact_mech.unlearning import unlearn
from unpact_mech.unlearning.batches import UnlearningSet


@pytest.fixture(scope="module")
def targets(smollm2, real_facts):
    """The training targets (the unmodified model's own answers), built once."""
    return UnlearningSet.from_items(smollm2, real_facts)


def _target_logprob(model, targets) -> float:
    scores = score_answers(model, [t.input_prefix for t in targets], [t.answer_ids for t in targets])
    return float(scores.logprob.mean())


@pytest.mark.parametrize("method", ["ga_gdr", "npo_gdr"])
def test_a_few_steps_unlearn_forget_more_than_retain(method, real_facts, targets):
    data = targets
    model = load_model("smollm2")  # a fresh copy: the session's shared model must stay the original
    before = {s: _target_logprob(model, getattr(data, s)) for s in ("forget", "retain")}
    hf_param = dict(model.named_parameters())["model.layers.10.mlp.down_proj.weight"]
    ids = torch.tensor([list(data.forget[0].input_prefix)])
    with torch.no_grad():
        logits_before = model.forward(ids).logits
    result = unlearn(model, real_facts, method, steps=6, evaluate=False, progress=False)
    after = {s: _target_logprob(model, getattr(data, s)) for s in ("forget", "retain")}
    drop = {s: before[s] - after[s] for s in before}
    assert drop["forget"] > 0.3, (before, after)
    assert drop["forget"] > 2 * max(drop["retain"], 0.0) + 0.1, (before, after)
    assert result.summary["weight_delta_norm"] > 0
    # the same module the backend wraps was updated: the hooked forward sees the change without a reload
    assert dict(model.named_parameters())["model.layers.10.mlp.down_proj.weight"] is hf_param
    with torch.no_grad():
        assert (model.forward(ids).logits - logits_before).abs().max() > 1e-3
