"""KeyTokens rule, keyword agreement and before/after comparison, on hand-made inputs with hand-computed answers."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from unpact_mech.attribution import (
    DEFAULT_KEYTOKEN_ALPHA,
    DEFAULT_KEYTOKEN_BETA,
    AttributionConfig,
    agreement_summary,
    check_keytoken_rule,
    diff_frames,
    keytoken_change,
    keytoken_mask,
    keyword_agreement,
)
from unpact_mech.attribution.compare import compare_units
from unpact_mech.errors import InputError


def test_fewer_positive_than_beta_keeps_every_positive_unit():
    scores = torch.tensor([0.9, -1.0, 0.05, 0.0])
    # 2 positive units < beta = 3: both are KeyTokens even though 0.05 / 0.9 < alpha
    assert keytoken_mask(scores, keytoken_alpha=0.5, keytoken_beta=3).tolist() == [True, False, True, False]


def test_at_least_beta_positive_units_are_normalised_and_thresholded():
    scores = torch.tensor([2.0, 1.0, 0.99, -5.0, 0.5, 1.5])
    # 5 positive >= beta = 3: normalised 1.0, 0.5, 0.495, -, 0.25, 0.75 -> keep >= 0.5
    assert keytoken_mask(scores, 0.5, 3).tolist() == [True, True, False, False, False, True]
    assert keytoken_mask(scores, keytoken_alpha=1.0).tolist() == [True] + [False] * 5  # alpha = 1 keeps the max
    assert keytoken_mask(scores, keytoken_alpha=0.5, keytoken_beta=6).tolist() == [True, True, True, False, True, True]
    assert keytoken_mask(torch.tensor([-1.0, 0.0]), keytoken_beta=1).tolist() == [False, False]  # nothing positive


@pytest.mark.parametrize(
    "alpha,beta,message",
    [
        (0.0, 3, r"keytoken_alpha must be in \(0, 1\], got 0.0"),
        (1.5, 3, "keytoken_alpha"),
        (-0.1, 3, "keytoken_alpha"),
        (float("nan"), 3, "keytoken_alpha"),
        (0.5, 0, "keytoken_beta must be an integer >= 1, got 0"),
        (0.5, 2.0, "keytoken_beta"),
    ],
)
def test_keytoken_rule_validation(alpha, beta, message):
    with pytest.raises(InputError, match=message):
        keytoken_mask(torch.ones(3), keytoken_alpha=alpha, keytoken_beta=beta)
    with pytest.raises(InputError, match=message):
        check_keytoken_rule(alpha, beta)


def test_one_default_for_the_keytoken_rule():
    assert (DEFAULT_KEYTOKEN_ALPHA, DEFAULT_KEYTOKEN_BETA) == (0.5, 3)
    assert (AttributionConfig().keytoken_alpha, AttributionConfig().keytoken_beta) == (0.5, 3)
    scores = torch.tensor([1.0, 0.45, 0.55, 0.2])  # 4 positive >= 3: keep >= 0.5 x max
    assert keytoken_mask(scores).tolist() == [True, False, True, False]


def test_keyword_agreement_by_hand():
    scores = torch.tensor([0.1, 0.8, 0.6, -0.2, 0.7])
    selected = keytoken_mask(scores)  # 4 positive >= 3: 0.125, 1, 0.75, -, 0.875 -> units 1, 2, 4
    assert selected.tolist() == [False, True, True, False, True]
    a = keyword_agreement(scores, selected, [False, True, False, True, False])  # keywords: units 1 and 3
    assert a.hit and a.precision == pytest.approx(1 / 3) and a.recall == pytest.approx(1 / 2)
    b = keyword_agreement(torch.tensor([0.5, 0.1]), torch.tensor([True, False]), [False, True])
    assert not b.hit and b.precision == 0 and b.recall == 0
    c = keyword_agreement(torch.tensor([-0.5, -0.1]), torch.tensor([False, False]), [True, False])
    assert math.isnan(c.precision) and c.recall == 0
    none = keyword_agreement(torch.tensor([1.0]), torch.tensor([True]), [False])  # item without keywords
    s = agreement_summary([a, b, c, none])
    assert s["keyword_hit_rate"] == pytest.approx(1 / 3)  # a hits; b, c miss; `none` has no keywords
    assert s["keyword_precision"] == pytest.approx((1 / 3 + 0) / 2)  # c has no KeyTokens: excluded
    assert s["keyword_recall"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert s["n_items_with_keywords"] == 3
    assert agreement_summary([none])["keyword_hit_rate"] is None


def _units(values, item="i1", split="forget", keywords=()):
    return pd.DataFrame(
        {
            "item_id": item,
            "split": split,
            "method": "occlusion",
            "target": "answer",
            "level": "word",
            "unit": range(len(values)),
            "position": range(10, 10 + len(values)),
            "token": [f"w{i}" for i in range(len(values))],
            "word_index": range(len(values)),
            "is_keyword": [i in keywords for i in range(len(values))],
            "metric": "contribution",
            "value": values,
        }
    )


def test_diff_frames_and_unit_comparison_by_hand():
    before = pd.concat([_units([1.0, 0.2, -0.5]), _units([0.4, 0.4], item="i2", split="retain")], ignore_index=True)
    after = pd.concat([_units([0.25, 0.3, -0.5]), _units([0.1, 0.5], item="i2", split="retain")], ignore_index=True)
    diff = compare_units(before, after)
    assert list(diff["item_id"]) == ["i1", "i1", "i1", "i2", "i2"]  # order of `before` kept
    assert diff["diff"].tolist() == pytest.approx([-0.75, 0.1, 0.0, -0.3, 0.1])
    assert {"before", "after", "diff", "metric", "token", "unit"} <= set(diff.columns)
    # aggregation to coarser keys sums the values
    per_item = diff_frames(before, after, ["item_id"])
    assert per_item.set_index("item_id")["before"].to_dict() == pytest.approx({"i1": 0.7, "i2": 0.8})
    assert per_item.set_index("item_id")["diff"].to_dict() == pytest.approx({"i1": -0.65, "i2": -0.2})
    # a row on one side only
    extra = diff_frames(before, after.iloc[:-1], ["item_id", "unit"])
    assert math.isnan(extra["after"].iloc[-1]) and extra["before"].iloc[-1] == 0.4


def test_keytoken_change_by_hand():
    # item i1: before [1.0, 0.2, -0.5, 0.9] -> 3 positive >= beta: normalised 1, 0.2, -, 0.9 -> KeyTokens {0, 3}
    before = pd.concat(
        [_units([1.0, 0.2, -0.5, 0.9], keywords=(0,)), _units([0.3, -0.1], item="i2", split="retain", keywords=(1,))]
    )
    after = pd.concat(
        [_units([0.2, 0.2, -0.3, 0.5], keywords=(0,)), _units([0.1, 0.0], item="i2", split="retain", keywords=(1,))]
    )
    per_item, summary = keytoken_change(compare_units(before, after), keytoken_alpha=0.5, keytoken_beta=3)
    rows = per_item.set_index(["item_id", "group"])
    assert rows.loc[("i1", "keytokens"), "before"] == pytest.approx(0.95)
    assert rows.loc[("i1", "keytokens"), "after"] == pytest.approx(0.35)
    assert rows.loc[("i1", "other"), "change"] == pytest.approx(((0.2 - 0.2) + (-0.3 + 0.5)) / 2)
    # i2: 1 positive < beta -> KeyToken {0}
    assert rows.loc[("i2", "keytokens"), "change"] == pytest.approx(-0.2)
    assert rows.loc[("i2", "other"), "change"] == pytest.approx(0.1)
    assert summary["keytokens"]["change"] == pytest.approx((-0.6 + -0.2) / 2)
    assert summary["other"]["change"] == pytest.approx((0.1 + 0.1) / 2)
    assert summary["keytoken_minus_other_change"] == pytest.approx(-0.4 - 0.1)
    assert summary["keywords"]["before"] == pytest.approx((1.0 + -0.1) / 2)
    assert summary["by_split"]["retain"]["keytokens"]["change"] == pytest.approx(-0.2)
    assert (summary["keytoken_alpha"], summary["keytoken_beta"]) == (0.5, 3) and "alpha" not in summary
    # a stricter alpha: only i1's top unit (1.0) is a KeyToken (0.9 < 0.95 x 1.0)
    _, strict = keytoken_change(compare_units(before, after), keytoken_alpha=0.95, keytoken_beta=3)
    assert strict["keytokens"]["change"] == pytest.approx((-0.8 + -0.2) / 2) and strict["keytoken_alpha"] == 0.95
