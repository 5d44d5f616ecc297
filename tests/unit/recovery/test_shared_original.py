"""Several unlearned models against one original (``run_recovery(original_memo=)``, as is_it_gone runs them): an
attack whose original arm depends on the original only is scored on the original once, and the later run gets the
same rows and the same detail tables; an attack fitted on the unlearned model is scored again; no whole model stays
in the shared memo."""

from __future__ import annotations

import pandas as pd
import pytest

from unpact_mech.attacks import Attack
from unpact_mech.models import HookedLM
from unpact_mech.recovery import RecoveryConfig, run_recovery

ATTACKS = ("focus", "quantize:scheme=int8", "relearn_unrelated:steps=1", "few_shot:shots=1", "steer")


@pytest.fixture(scope="module")
def runs(original, ga_unlearned, blocks_perturbed, synthetic_items):
    calls: list[tuple[str, str]] = []
    real = Attack.treat_groups  # none of ATTACKS overrides it: every treatment of every arm passes here

    def counting(self, model, items, emphasis, env):
        calls.append((env.role(model), self.label))
        return real(self, model, items, emphasis, env)

    cfg = RecoveryConfig(attacks=ATTACKS, keyword_source="data", max_control_items=6)
    memo: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Attack, "treat_groups", counting)
        first = run_recovery(original, ga_unlearned, synthetic_items, cfg, progress=False, original_memo=memo)
        n_first = len(calls)
        second = run_recovery(original, blocks_perturbed, synthetic_items, cfg, progress=False, original_memo=memo)
        n_second = len(calls)
        alone = run_recovery(original, blocks_perturbed, synthetic_items, cfg, progress=False)
    return first, second, alone, calls[:n_first], calls[n_first:n_second], memo


def _original_rows(result) -> pd.DataFrame:
    per = result.per_item
    rows = per[per["arm"] == "original_control"].drop(columns=["seconds"], errors="ignore")
    return rows.sort_values(["condition", "item_id"]).reset_index(drop=True)


def test_the_original_arm_is_scored_once_for_attacks_that_never_look_at_the_unlearned_model(runs):
    _, second, _, calls_first, calls_second, _ = runs
    originals_first = [label for role, label in calls_first if role == "original"]
    originals_second = [label for role, label in calls_second if role == "original"]
    assert len(originals_first) == len(ATTACKS)
    # steer's direction is fitted on the unlearned model: its original arm must be scored again
    assert originals_second == [label for label in originals_first if label.startswith("steer")]
    assert set(second.per_item["arm"]) >= {"original_control"}


def test_reused_rows_and_details_equal_a_run_of_its_own(runs):
    _, second, alone, *_ = runs
    pd.testing.assert_frame_equal(_original_rows(second), _original_rows(alone))
    pd.testing.assert_frame_equal(
        second.rates.drop(columns=["seconds"], errors="ignore"), alone.rates.drop(columns=["seconds"], errors="ignore")
    )
    assert sorted(second.details) == sorted(alone.details)
    for key, table in alone.details.items():
        got = second.details[key]
        pd.testing.assert_frame_equal(got.reset_index(drop=True), table.reset_index(drop=True))
    label = next(k for k in second.details if k[0].startswith("relearn_unrelated") and k[1] == "training")
    training = second.details[label]
    assert set(training["model"]) == {"original", "unlearned"}  # the original's row came back from the memo


def test_no_whole_model_stays_in_the_shared_memo(runs):
    memo = runs[-1]
    assert memo  # the original's scored arms are there
    assert not [v for v in memo.values() if isinstance(v, HookedLM)]
