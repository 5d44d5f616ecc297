"""A user adds recovery conditions from their own script — a prompt strategy, an activation edit and a model
transform — and ``run_recovery`` runs them with every control, exactly like the built-in ones."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from unpact_mech.attacks import ATTACKS, ModelAttack, PromptAttack, ResidualEdit, register_attack
from unpact_mech.errors import InputError
from unpact_mech.recovery import RecoveryConfig, run_recovery


# -- what a user writes (the same code as docs/recovery.md, "Adding a condition") ---------------------------------
@dataclass(frozen=True)
class Blend(ResidualEdit):
    """h[P] <- h[P] + strength * (h_original[P] - h[P]): ``patch`` at strength 1, nothing at 0."""

    name: str = "blend"
    strength: float = 0.5
    options = ("layers", "hook", "strength")

    def source(self, env):
        return env.original

    def edit(self, env):
        return lambda act, ctx: act + self.strength * (ctx.source - act)


@dataclass(frozen=True)
class AskTheOriginal(ModelAttack):
    """The most a weight-level attack could do: replace the unlearned model by the original."""

    name: str = "ask_original"

    def transform(self, model, env):
        return env.original


@pytest.fixture(scope="module")
def user_attacks():
    added = [
        register_attack(PromptAttack("hint", "a hint naming the keywords", template="Hint: {keywords}. {question}")),
        register_attack(Blend()),
        register_attack(AskTheOriginal()),
    ]
    yield added
    for attack in added:
        ATTACKS.pop(attack.name)


@pytest.fixture(scope="module")
def result(user_attacks, original, ga_unlearned, synthetic_items):
    cfg = RecoveryConfig(
        attacks=["hint", "patch", "blend:strength=1,layers=0-1", "blend:strength=0", "ask_original"],
        keyword_source="data",
    )
    return run_recovery(original, ga_unlearned, synthetic_items, cfg, progress=False)


def test_user_conditions_run_with_every_control(result):
    rates = result.rates.set_index("condition")
    assert list(rates.index) == ["hint", "patch[0,1]", "blend[0,1]", "blend[0]", "ask_original"]
    assert list(rates["kind"]) == ["strategy", "intervention", "intervention", "intervention", "transform"]
    per = result.per_item
    hint = per[per.condition == "hint"]
    assert set(hint.emphasis) == {"keywords", "random"} and set(hint.model) == {"unlearned", "original"}
    first = hint[(hint.emphasis == "keywords") & (hint.model == "unlearned")].iloc[0]
    kw = result.keywords.set_index("item_id").loc[first.item_id, "keywords"].replace(" | ", ", ")
    assert first.question.startswith(f"Hint: {kw}.")
    assert not np.isnan(rates.loc["blend[0,1]", "random_control_rate"])  # keyword positions -> random control
    assert np.isnan(rates.loc["ask_original"].get("random_control_rate", np.nan))  # no keywords, no random words


def test_user_edit_reproduces_patch_at_strength_1_and_nothing_at_0(result):
    per = result.per_item[result.per_item.emphasis == "keywords"]

    def rows(condition):
        return per[per.condition == condition].set_index(["model", "item_id"]).sort_index()

    both = rows("patch[0,1]").index.intersection(rows("blend[0,1]").index)
    assert len(both) > 0
    assert np.allclose(rows("patch[0,1]").loc[both, "logprob"], rows("blend[0,1]").loc[both, "logprob"], atol=1e-5)
    assert (rows("patch[0,1]").loc[both, "correct"] == rows("blend[0,1]").loc[both, "correct"]).all()
    assert result.rates.set_index("condition").loc["blend[0]", "recovery_rate"] == 0.0  # strength 0: still forgotten


def test_a_model_transform_that_restores_the_original_recovers_everything(result):
    row = result.rates.set_index("condition").loc["ask_original"]
    assert result.summary["n_eligible"] > 0 and row["recovery_rate"] == 1.0
    assert (
        row["utility_accuracy_after"] == result.summary["original_utility_accuracy"]
    )  # utility items asked of the original
    assert row["original_accuracy_after"] == row["original_accuracy_before"]  # the original asked as itself


def test_user_registration_errors(user_attacks):
    with pytest.raises(ValueError, match="already registered"):
        register_attack(PromptAttack("hint", template="{question}"))
    with pytest.raises(InputError, match="unknown option 'strength2'"):
        from unpact_mech.attacks import get_attack

        get_attack("blend:strength2=1")


def test_the_docs_example_registers_conditions_that_run(original, ga_unlearned, synthetic_items):
    """The "Adding a condition" snippet of docs/recovery.md, pasted into a script, runs as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "recovery.md").read_text()
    section = text.split("## Adding a condition", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    saved = dict(ATTACKS)
    try:
        for name in ("hint", "blend"):
            ATTACKS.pop(name, None)
        exec(compile(code, "docs/recovery.md", "exec"), {})
        cfg = RecoveryConfig(attacks=["hint", "blend:strength=1,layers=0-1"], keyword_source="data")
        rec = run_recovery(original, ga_unlearned, synthetic_items, cfg, progress=False)
        assert list(rec.rates["condition"]) == ["hint", "blend[0,1]"] and rec.rates["recovery_rate"].notna().all()
    finally:
        ATTACKS.clear()
        ATTACKS.update(saved)


def test_settings_record_every_field_as_json(original):
    """``settings()`` (what run.json records, what ``is_it_gone --resume-from`` compares): every field but the
    description, JSON-ready, different whenever one option differs — also where the label does not show it."""
    import json

    blend = Blend(layers=(0, 1))
    s = blend.settings()
    assert s["class"].endswith(".Blend") and s["strength"] == 0.5 and s["layers"] == [0, 1] and "description" not in s
    assert json.loads(json.dumps(s)) == s
    assert Blend(layers=(0, 1), strength=0.25).settings() != s
    hint = PromptAttack("hint", template="Hint: {keywords}. {question}")
    assert hint.settings()["rewrite_fn"] == "fill_template"  # a function by its name
    assert hint.settings() != hint.with_template("{keywords}? {question}").settings()
    assert hint.label == hint.with_template("{keywords}? {question}").label  # the label alone cannot tell them apart
