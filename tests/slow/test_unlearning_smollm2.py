"""Unlearning on the real SmolLM2-135M (slow tier, affordable in CI: a few optimizer steps per method).

One GA-family and one NPO-family method, each for 4 of the 8 default-recipe steps on builtin:real_facts: the
forget answers' log-prob (in the model's own answer context, the training target) must fall clearly more than the
retain answers' and more than the bare answer's log-prob right after the prompt (the paper's LP), and the updated
weights must be the ones the backend sees (no reload).
"""

from __future__ import annotations

import pytest
import torch

from unpact_mech import load_model
from unpact_mech.scoring.logprob import score_answers
from unpact_mech.scoring.tokens import encode_items
from unpact_mech.unlearning import unlearn
from unpact_mech.unlearning.batches import UnlearningSet

#: Optimizer steps per method: at 4, ga_gdr's forget answers drop 0.57 nats/token and npo_gdr's 0.78 (retain: -0.11),
#: well clear of the bounds below.
STEPS = 4


@pytest.fixture(scope="module")
def targets(smollm2, real_facts):
    """The training targets (the unmodified model's own answers), built once."""
    return UnlearningSet.from_items(smollm2, real_facts)


def _bare_logprob(model, items) -> float:
    """Mean log-prob of the BARE gold answer right after the prompt (the paper's LP, attribution's ``answer``)."""
    encs = encode_items(model, items)
    return float(score_answers(model, [e.prompt.ids for e in encs], [e.answer_ids for e in encs]).logprob.mean())


def _target_logprob(model, targets) -> float:
    scores = score_answers(model, [t.input_prefix for t in targets], [t.answer_ids for t in targets])
    return float(scores.logprob.mean())


@pytest.mark.parametrize("method", ["ga_gdr", "npo_gdr"])
def test_a_few_steps_unlearn_forget_more_than_retain(method, real_facts, targets):
    data = targets
    model = load_model("smollm2")  # a fresh copy: the session's shared model must stay the original
    before = {s: _target_logprob(model, getattr(data, s)) for s in ("forget", "retain")}
    forget_items = [it for it in real_facts if it.split == "forget"]
    bare_before = _bare_logprob(model, forget_items)
    hf_param = dict(model.named_parameters())["model.layers.10.mlp.down_proj.weight"]
    ids = torch.tensor([list(data.forget[0].input_prefix)])
    with torch.no_grad():
        logits_before = model.forward(ids).logits
    result = unlearn(model, real_facts, method, steps=STEPS, evaluate=False, progress=False, targets=data)  # built once
    after = {s: _target_logprob(model, getattr(data, s)) for s in ("forget", "retain")}
    drop = {s: before[s] - after[s] for s in before}
    bare_drop = bare_before - _bare_logprob(model, forget_items)
    print(
        f"\n{method}, {STEPS} steps on SmolLM2: forget answer log-prob drop {drop['forget']:.3f} nats/token in the "
        f"model's own answer sentence (answer_in_context, the training target) vs {bare_drop:.3f} for the bare "
        f"answer after the prompt (answer); retain (own sentence) {drop['retain']:.3f}"
    )
    # the training target moves more than the bare answer the paper scores: why attribution defaults to it on chat
    assert drop["forget"] > bare_drop, (drop, bare_drop)
    assert drop["forget"] > 0.3, (before, after)
    assert drop["forget"] > 2 * max(drop["retain"], 0.0) + 0.1, (before, after)
    assert result.summary["weight_delta_norm"] > 0
    # the same module the backend wraps was updated: the hooked forward sees the change without a reload
    assert dict(model.named_parameters())["model.layers.10.mlp.down_proj.weight"] is hf_param
    with torch.no_grad():
        assert (model.forward(ids).logits - logits_before).abs().max() > 1e-3
