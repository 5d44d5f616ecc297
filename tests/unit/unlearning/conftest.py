"""Unlearning fixtures on the built-in ``tiny`` model (a fresh copy per test: unlearning updates it in place)."""

from __future__ import annotations

import pytest
import torch

from unpact_mech import load_model
from unpact_mech.scoring.logprob import score_answers
from unpact_mech.scoring.tokens import encode_items
from unpact_mech.unlearning.methods.keyguard import keyguard_methods

#: Settings under which every method visibly unlearns on the tiny model in a few milliseconds-long steps.
TINY_RUNS: dict[str, dict] = {
    "ga": dict(steps=5, lr=1e-3),
    "ga_gdr": dict(steps=5, lr=1e-3),
    "ga_klr": dict(steps=5, lr=1e-3),
    "npo": dict(steps=5, lr=1e-3),
    "npo_gdr": dict(steps=5, lr=1e-3),
    "npo_klr": dict(steps=5, lr=1e-3),
    "simnpo": dict(steps=5, lr=1e-3),
    "rmu": dict(steps=8, lr=1e-2, hyperparameters={"layer": 1, "c": 20.0, "alpha": 1.0}),
    "task_vector": dict(steps=5, lr=3e-3),
    # the tiny model has 2 layers: RMU's layer 0, the late layer 1 (every keyguard variant alike)
    **{
        m: dict(steps=8, lr=1e-2, hyperparameters={"layer": 0, "late_layer": 1, "c": 20.0, "alpha": 1.0})
        for m in keyguard_methods()
    },
}


@pytest.fixture
def model():
    """A fresh ``tiny`` model (TransformerLens backend)."""
    return load_model("tiny")


def mean_logprob(model, items, split: str) -> float:
    """Mean teacher-forced answer LP of the items of ``split`` (the foundation's scoring)."""
    part = [it for it in items if it.split == split]
    enc = encode_items(model, part)
    return float(score_answers(model, [e.prompt.ids for e in enc], [e.answer_ids for e in enc]).logprob.mean())


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [n for n in a if not torch.equal(a[n], b[n])]
    assert not different, f"weights differ: {different[:5]}"
