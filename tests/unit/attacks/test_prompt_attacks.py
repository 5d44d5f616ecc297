"""Prompt strategies of the attack registry: pure string rewrites, templates, registry lookups."""

from __future__ import annotations

import pytest

from unpact_mech.attacks import ATTACKS, PromptAttack, attack_names, get_attack
from unpact_mech.errors import InputError

Q = "What is the capital of France?"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("focus", "Focus on the key words: capital, France. What is the capital of France?"),
        ("repeat_keywords", "What is the capital of France? Key words: capital, France, capital, France."),
        ("repeat_question", "What is the capital of France? What is the capital of France?"),
        ("quote", 'What is the "capital" of "France"?'),
        ("uppercase", "What is the CAPITAL of FRANCE?"),
        ("keywords_first", "capital, France: What is the capital of France?"),
        ("neutral", "Answer the following question. What is the capital of France?"),
    ],
)
def test_each_strategy(name, expected):
    attack = get_attack(name, kind="strategy")
    assert isinstance(attack, PromptAttack) and attack.rewrite(Q, ["capital", "France"]) == expected


def test_in_place_strategies_respect_word_boundaries_and_overlaps():
    q = "Is the capitals' capital in New York or York?"
    assert (
        get_attack("quote").rewrite(q, ["capital", "york", "New York"])
        == 'Is the capitals\' "capital" in "New York" or "York"?'
    )
    assert get_attack("uppercase").rewrite(q, []) == q


def test_custom_template_and_bad_names():
    s = get_attack("focus").with_template("Key: {keywords}\n{question}")
    assert s.rewrite(Q, ["France"]) == "Key: France\nWhat is the capital of France?"
    assert get_attack("focus").template == "Focus on the key words: {keywords}. {question}"  # the registry is untouched
    with pytest.raises(InputError, match="unknown prompt strategy 'shout'"):
        get_attack("shout", kind="strategy")
    with pytest.raises(InputError, match="unknown prompt strategy 'patch'"):
        get_attack("patch", kind="strategy")
    with pytest.raises(InputError, match="must contain"):
        get_attack("focus").with_template("no placeholder")
    with pytest.raises(InputError, match="unknown option 'layers'"):
        get_attack("focus:layers=1")


def test_registry_order_kinds_and_flags():
    assert attack_names("strategy") == [
        "focus",
        "repeat_keywords",
        "repeat_question",
        "quote",
        "uppercase",
        "keywords_first",
        "neutral",
        "few_shot",
        "rephrase",
    ]
    assert attack_names("intervention") == ["scale", "patch", "steer", "pasta", "ablate_direction"]
    assert {n for n in attack_names("strategy") if not ATTACKS[n].uses_keywords} == {
        "repeat_question", "neutral", "few_shot", "rephrase",
    }  # fmt: skip
    assert [n for n, a in ATTACKS.items() if a.is_control] == ["neutral"]
    families = {n: a.family for n, a in ATTACKS.items()}
    assert families["focus"] == families["repeat_keywords"] == families["keywords_first"] == "keywords_named"
    assert families["quote"] == families["uppercase"] == "keywords_marked"
    assert families["neutral"] == "instruction" and families["repeat_question"] == "question_repeated"
    assert len({families[n] for n in attack_names("intervention")}) == 5  # one family per intervention
