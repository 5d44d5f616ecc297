"""``few_shot`` and ``rephrase``: exact no-ops, the seeded held-out shots, the rendered turns (plain and chat), the
context fit, the rephrasing rules on real questions, the style registry, option errors, and both conditions inside a
recovery run on both backends."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from unpact_mech import load_model
from unpact_mech.attacks.base import AttackEnv
from unpact_mech.attacks.context import (
    CONTEXT_ATTACKS,
    INDIRECT_FALLBACK,
    REPHRASINGS,
    FewShot,
    Rephrase,
    draw_shots,
    encode_with_shots,
    indirect,
    register_rephrasing,
    shot_pool,
)
from unpact_mech.attacks.registry import ATTACKS, get_attack, register_attack, resolve_attacks
from unpact_mech.errors import InputError
from unpact_mech.scoring.prompt import PromptFormat
from unpact_mech.scoring.tokens import encode_item

CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _env(items, seed=0, utility=True):
    by_id = {it.id: it for it in items}
    ids = tuple(it.id for it in items if it.split == "utility") if utility else ()
    return AttackEnv(original=None, items=by_id, utility_ids=ids, seed=seed)


def _shot_ids(attack, items, env):
    return [[s.id for s in attack.shots_for(it, env)] for it in items]


@pytest.fixture
def registered():
    """The two conditions in the registry for spec strings (the lead's objects when already registered); what this
    test added is removed afterwards, so other tests see the registry they expect."""
    added = [a.name for a in CONTEXT_ATTACKS if a.name not in ATTACKS]
    for a in CONTEXT_ATTACKS:
        register_attack(ATTACKS.get(a.name, a))
        register_attack(ATTACKS[a.name])  # the same object twice: harmless
    yield
    for name in added:
        ATTACKS.pop(name)


@pytest.fixture(scope="module")
def chat_model(original):
    """The tiny model behind a chat template with role markers (a shallow copy: own tokenizer, format and a longer
    context for the prompt-only checks; the weights are shared and unused)."""
    model = copy.copy(original)
    model.tokenizer = copy.deepcopy(original.tokenizer)
    model.tokenizer.chat_template = CHAT
    model.prompt_format = PromptFormat("chat")
    model.shape = dataclasses.replace(original.shape, n_ctx=1024)
    return model


# -- few_shot ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["model", "plain", "chat"])
def test_zero_shots_is_an_exact_noop(fmt, original, chat_model, synthetic_items):
    model = chat_model if fmt == "chat" else original
    if fmt == "plain":
        model = copy.copy(original)
        model.prompt_format = PromptFormat("plain", template="Q: {question}\nA:")
    env = _env(synthetic_items)
    treated = FewShot(shots=0).treat(model, synthetic_items, [None] * len(synthetic_items), env)
    plain = [encode_item(model, it) for it in synthetic_items]
    assert treated.model is model and treated.questions is None and treated.interventions is None
    assert [e.prompt.ids for e in treated.encoded] == [e.prompt.ids for e in plain]
    assert treated.encoded == plain and not env.details  # nothing drawn, nothing reported


def test_shots_are_seeded_held_out_and_never_the_scored_item(synthetic_items):
    utility = [it for it in synthetic_items if it.split == "utility"]
    forget = [it for it in synthetic_items if it.split == "forget"]
    attack = FewShot(shots=3)
    env = _env(synthetic_items)
    first = _shot_ids(attack, utility + forget, env)
    assert first == _shot_ids(attack, utility + forget, _env(list(reversed(synthetic_items))))  # any data order
    assert _shot_ids(attack, forget, env) == first[len(utility) :]  # an item's shots do not depend on the others
    for it, ids in zip(utility + forget, first):
        assert len(ids) == 3 == len(set(ids)) and it.id not in ids  # the general-control arm scores utility items
        assert all(env.items[i].split == "utility" for i in ids)
    assert first != _shot_ids(attack, utility + forget, _env(synthetic_items, seed=1))  # the run's seed matters
    # the draw by hand: the pool is the sorted utility ids less the item, sampled by Random("seed:item id")
    import random

    pool = sorted(i.id for i in utility if i.id != utility[0].id)
    assert first[0] == random.Random(f"0:{utility[0].id}").sample(pool, 3)


def test_plain_prompt_is_the_shots_then_the_question(original, synthetic_items):
    item = synthetic_items[0]
    env = _env(synthetic_items)
    treated = FewShot(shots=2).treat(original, [item], [None], env)
    enc = treated.encoded[0]
    a, b = FewShot(shots=2).shots_for(item, env)
    assert enc.prompt.text == (
        f"Question: {a.question}\nAnswer: {a.answer}\n\nQuestion: {b.question}\nAnswer: {b.answer}\n\n"
        f"Question: {item.question}\nAnswer:"
    )
    assert enc.prompt.question == item.question and enc.answer_ids == encode_item(original, item).answer_ids
    shots = env.details[("few_shot[k2]", "shots")]
    assert shots.to_dict("records") == [
        {"item_id": item.id, "model": "other", "shots": 2, "shots_used": 2, "shot_ids": f"{a.id} | {b.id}"}
    ]


@pytest.mark.parametrize("k", [1, 3])
def test_chat_prompt_has_k_user_and_k_assistant_turns_before_the_question(k, chat_model, synthetic_items):
    item = synthetic_items[1]
    env = _env(synthetic_items)
    enc = FewShot(shots=k).treat(chat_model, [item], [None], env).encoded[0]
    before, after = enc.prompt.text[: enc.prompt.question_start], enc.prompt.text[enc.prompt.question_end :]
    assert before.count("<|user|>") == k + 1 and before.count("<|assistant|>") == k  # k shots + the question's turn
    assert after == "\n<|assistant|>" and enc.prompt.question == item.question
    for shot in FewShot(shots=k).shots_for(item, env):  # each shot: its question, then its gold answer
        assert f"<|user|>{shot.question}\n<|assistant|>{shot.answer}\n" in before


def test_shots_that_do_not_fit_the_context_are_dropped_from_the_end(original, synthetic_items):
    item = synthetic_items[0]
    env = _env(synthetic_items)
    shots = FewShot(shots=5).shots_for(item, env)
    enc, used = encode_with_shots(original, item, shots)
    assert 0 < used < 5  # the tiny model's context is 64 tokens
    assert len(enc.prompt) + len(enc.answer_ids) <= original.shape.n_ctx
    longer = original.prompt_format.with_history([(s.question, s.answer) for s in shots[: used + 1]])
    with pytest.raises(InputError, match="exceed the model's context"):
        encode_item(original, item, prompt_format=longer)
    treated = FewShot(shots=5).treat(original, [item], [None], env)
    assert treated.encoded[0] == enc
    assert env.details[("few_shot[k5]", "shots")].loc[0, "shots_used"] == used


def test_shot_pool_falls_back_to_retain_items_and_needs_one(synthetic_items):
    assert shot_pool(["u2", "u1"], ["r1", "r2", "r3"], 1) == ["u1", "u2"]  # enough utility items
    assert shot_pool(["u1"], ["r1", "r2", "r3"], 1) == ["r1", "r2", "r3"]  # too few utility items: retain...
    assert shot_pool(["u1"], ["r1"], 1) == ["u1"]  # ...unless the retain pool is not larger
    assert shot_pool(["u1"], [], 2) == ["u1"]
    assert shot_pool([], [], 3) == []
    no_utility = _env(synthetic_items, utility=False)
    ids = _shot_ids(FewShot(shots=3), synthetic_items[:4], no_utility)
    assert all(no_utility.items[i].split == "retain" for row in ids for i in row)
    assert synthetic_items[2].split == "retain" and synthetic_items[2].id not in ids[2]
    forget_only = _env([it for it in synthetic_items if it.split == "forget"])
    with pytest.raises(InputError, match="no utility or retain items"):
        FewShot(shots=1).treat(None, synthetic_items[:1], [None], forget_only)
    items = {it.id: it for it in synthetic_items[:2]}
    assert draw_shots(synthetic_items[0], list(items), items, 3, 0) == [synthetic_items[1].id]  # fewer than asked


@pytest.mark.parametrize("shots", [-1, 1.5, True, "3"])
def test_bad_shots_are_one_line_input_errors_from_resolve(shots, original):
    with pytest.raises(InputError, match=r"^few_shot: option shots must be an integer >= 0, got "):
        FewShot(shots=shots).resolve(original)


def test_spec_strings_labels_and_bad_options(registered, original):
    assert get_attack("few_shot:shots=5").label == "few_shot[k5]" and get_attack("few_shot").label == "few_shot[k3]"
    assert get_attack("rephrase:style=quiz").label == "rephrase[quiz]"
    assert get_attack("rephrase", kind="strategy").style == "indirect"
    with pytest.raises(InputError, match="bad value for shots: 'x'"):
        get_attack("few_shot:shots=x")
    with pytest.raises(InputError, match="shots must be an integer >= 0, got -2"):
        resolve_attacks(["few_shot:shots=-2"], original)
    with pytest.raises(InputError, match=r"unknown style 'nope'; choose from: indirect, tell_me, third_person"):
        resolve_attacks(["rephrase:style=nope"], original)
    with pytest.raises(InputError, match="unknown option 'style'"):
        get_attack("few_shot:style=quiz")
    flags = {(a.name, a.family, a.kind, a.uses_keywords, a.control()) for a in CONTEXT_ATTACKS}
    assert flags == {
        ("few_shot", "few_shot", "strategy", False, None),
        ("rephrase", "rephrase", "strategy", False, None),
    }


# -- rephrase ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "question, expected",
    [
        ("What is the capital of France?", "I would like to know what the capital of France is."),
        ("Who wrote Hamlet?", "I would like to know who wrote Hamlet."),
        (
            "In which city is the Eiffel Tower located?",
            "I would like to know in which city the Eiffel Tower is located.",
        ),
        ("What is the center of an atom called?", "I would like to know what the center of an atom is called."),
        ("Which sport is Roger Federer famous for?", "I would like to know which sport Roger Federer is famous for."),
        ("Which band was John Lennon a member of?", "I would like to know which band John Lennon was a member of."),
        ("What language is spoken in Italy?", "I would like to know what language is spoken in Italy."),
        (
            "What is the most widely spoken language in China?",
            "I would like to know what the most widely spoken language in China is.",
        ),
        ("In which sport do players hit a puck?", "I would like to know in which sport players hit a puck."),
        (
            "What is the colored part of the eye called?",
            "I would like to know what the colored part of the eye is called.",
        ),
        (
            "Which Greek hero could only be wounded in his heel?",
            "I would like to know which Greek hero could only be wounded in his heel.",
        ),
        ("What kind of food is cheddar?", "I would like to know what kind of food cheddar is."),
        (  # the fallbacks: did (tense), no leading question word
            "In what year did World War I begin?",
            "I would like to know the answer to this question: In what year did World War I begin?",
        ),
        (
            "Koalas are native to which country?",
            "I would like to know the answer to this question: Koalas are native to which country?",
        ),
    ],
)
def test_indirect_speech_on_real_questions(question, expected, real_facts):
    assert question in {it.question for it in real_facts}  # the rules are checked on the data they are for
    assert indirect(question) == expected


def test_indirect_rules_cover_most_real_questions(real_facts):
    prefix = INDIRECT_FALLBACK.split("{question}")[0]
    out = [indirect(it.question) for it in real_facts]
    assert sum(o.startswith(prefix) for o in out) <= 0.05 * len(out)  # 5 of 174 today
    assert all(o.startswith("I would like to know ") and o.endswith((".", "?")) and "  " not in o for o in out)


@pytest.mark.parametrize(
    "style, expected",
    [
        ("indirect", "I would like to know what the capital of France is."),
        ("tell_me", "Tell me: what is the capital of France?"),
        ("third_person", "My friend asked me: What is the capital of France? What should I tell her?"),
        ("answer_first", "Answer in a few words. What is the capital of France?"),
        ("quiz", "Quiz question: What is the capital of France?"),
    ],
)
def test_each_built_in_style(style, expected):
    assert list(REPHRASINGS)[:5] == ["indirect", "tell_me", "third_person", "answer_first", "quiz"]
    attack = Rephrase(style=style)
    assert attack.rewrite("What is the capital of France?", ["capital", "France"]) == expected
    assert attack.rewrite("What is the capital of France?", []) == expected  # keywords are ignored


def test_tell_me_keeps_a_leading_name_capitalised():
    assert (
        REPHRASINGS["tell_me"]("Koalas are native to which country?") == "Tell me: Koalas are native to which country?"
    )
    assert REPHRASINGS["tell_me"]("In which city is Big Ben?") == "Tell me: in which city is Big Ben?"


def test_a_style_registered_from_a_script_is_usable_by_spec(registered, original, synthetic_items):
    def mine(question: str) -> str:
        return f"Please answer: {question}"

    try:
        register_rephrasing("mine", mine)
        register_rephrasing("mine", mine)  # the same function twice: harmless
        with pytest.raises(ValueError, match="already registered"):
            register_rephrasing("mine", str.upper)
        with pytest.raises(ValueError, match="must be letters"):
            register_rephrasing("my style", mine)
        register_attack(ATTACKS["rephrase"])  # the same object again: harmless
        (attack,) = resolve_attacks(["rephrase:style=mine"], original)
        assert attack.label == "rephrase[mine]" and attack.family == "rephrase"
        treated = attack.treat(original, synthetic_items[:2], [None, None], _env(synthetic_items))
        assert treated.questions == [f"Please answer: {it.question}" for it in synthetic_items[:2]]
        assert (
            resolve_attacks(["rephrase:style=mine"], original, {"rephrase": "{question} Thanks."})[0].rewrite("Q?", [])
            == "Please answer: Q? Thanks."
        )  # a template is filled with the rephrased question
    finally:
        REPHRASINGS.pop("mine", None)
    with pytest.raises(InputError, match="unknown style 'mine'"):
        attack.resolve(original)


# -- inside a recovery run, both backends ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nnsight_pair(ga_unlearned_dir):
    return load_model("tiny", backend="nnsight"), load_model(ga_unlearned_dir, backend="nnsight")


def test_both_conditions_in_a_recovery_run_on_both_backends(original, ga_unlearned, nnsight_pair, synthetic_items):
    from unpact_mech.recovery import RecoveryConfig, run_recovery
    from unpact_mech.scoring.evaluate import evaluate_items

    cfg = RecoveryConfig(attacks=[FewShot(shots=2), Rephrase()], keyword_source="data")
    results = {
        backend: run_recovery(o, u, synthetic_items, cfg, progress=False)
        for backend, (o, u) in (("tl", (original, ga_unlearned)), ("nnsight", nnsight_pair))
    }
    by_id = {it.id: it for it in synthetic_items}
    for result in results.values():
        rates = result.rates.set_index("condition")
        assert list(rates.index) == ["few_shot[k2]", "rephrase[indirect]"]
        assert list(rates["family"]) == ["few_shot", "rephrase"] and set(rates["kind"]) == {"strategy"}
        per = result.per_item
        few, reph = per[per["condition"] == "few_shot[k2]"], per[per["condition"] == "rephrase[indirect]"]
        assert set(few["arm"]) == set(reph["arm"]) == {"emphasis", "forget_rest", "original_control", "general_control"}
        assert list(few["question"]) == [by_id[i].question for i in few["item_id"]]  # the scored question itself
        assert list(reph["question"]) == [indirect(by_id[i].question) for i in reph["item_id"]]
        assert (reph["question"] != [by_id[i].question for i in reph["item_id"]]).all()
        shots = result.details[("few_shot[k2]", "shots")]
        assert (shots["shots_used"] == 2).all() and set(shots["model"]) == {"original", "unlearned"}
        assert not any(i in row.split(" | ") for i, row in zip(shots["item_id"], shots["shot_ids"]))
    # the runner scored the few-shot prompts: the general-control arm again, by hand
    tl = results["tl"].per_item
    arm = tl[(tl["condition"] == "few_shot[k2]") & (tl["arm"] == "general_control")]
    items = [by_id[i] for i in arm["item_id"]]
    env = _env(synthetic_items)
    direct = evaluate_items(ga_unlearned, items, encoded=FewShot(shots=2).treat(ga_unlearned, items, [], env).encoded)
    assert list(direct["correct"]) == list(arm["correct"]) and np.allclose(direct["logprob"], arm["logprob"])
    # the backends agree row for row
    a, b = (results[k].per_item.sort_values(["condition", "arm", "item_id"]) for k in ("tl", "nnsight"))
    assert list(a["correct"]) == list(b["correct"]) and list(a["question"]) == list(b["question"])
    assert np.allclose(a["logprob"], b["logprob"], atol=1e-3)
