"""``unlearn(..., targets=)``: training targets built once from the base model and shared by several runs."""

from __future__ import annotations

import dataclasses

import pytest

from tests.unit.unlearning.conftest import TINY_RUNS, assert_same_weights, weights
from unpact_mech import load_model
from unpact_mech.errors import InputError
from unpact_mech.unlearning import unlearn
from unpact_mech.unlearning.batches import UnlearningSet


@pytest.mark.parametrize("method", ["ga", "ga_gdr"])
def test_prebuilt_targets_train_the_same_weights(method, synthetic_items):
    """A set built once (with retain targets) trains exactly what unlearn builds itself, for a method with a retain
    term and for one without (its retain part is dropped)."""
    shared = UnlearningSet.from_items(load_model("tiny"), synthetic_items)
    assert shared.retain  # built with the retain part
    runs = []
    for targets in (None, shared):
        model = load_model("tiny")
        unlearn(model, synthetic_items, method, evaluate=False, progress=False, targets=targets, **TINY_RUNS[method])
        runs.append(weights(model))
    assert_same_weights(*runs)


def test_prebuilt_targets_of_other_items_or_the_wrong_kind_are_refused(synthetic_items):
    shared = UnlearningSet.from_items(load_model("tiny"), synthetic_items)
    other = dataclasses.replace(shared, forget=shared.forget[1:])
    with pytest.raises(InputError, match="not those of the forget/retain items"):
        unlearn(load_model("tiny"), synthetic_items, "ga_gdr", steps=1, evaluate=False, progress=False, targets=other)
    assert any(t.source == "generated" for t in shared.forget)
    with pytest.raises(InputError, match="target='gold'"):
        unlearn(
            load_model("tiny"), synthetic_items, "ga", steps=1, evaluate=False, progress=False, targets=shared,
            target="gold",
        )  # fmt: skip
