"""Occlusion (the unPact score) equals a one-by-one loop of forwards, in every variant and batching."""

from __future__ import annotations

import pytest
import torch

from unpact_mech.attribution import occlusion, prompt_units
from unpact_mech.attribution.occlusion import choose_batching, resolve_baseline_token
from unpact_mech.attribution.packing import ablate
from unpact_mech.errors import InputError
from unpact_mech.scoring.logprob import score_answers
from unpact_mech.scoring.tokens import encode_item

TOL = 1e-4


def loop_scores(model, enc, level, mode, baseline_id, target="answer"):
    """Reference: one forward per variant, scored one at a time by the foundation's LP (or the first logit)."""

    def f(prompt):
        if target == "answer":
            return float(score_answers(model, [prompt], [enc.answer_ids]).logprob[0])
        ids = torch.tensor([list(prompt) + [enc.answer_ids[0]]])
        with torch.no_grad():
            return float(model.forward(ids).logits[0, len(prompt) - 1, enc.answer_ids[0]])

    prompt = list(enc.prompt.ids)
    base = f(prompt)
    units = prompt_units(enc.prompt, level)
    return base, torch.tensor([base - f(ablate(prompt, u.positions, mode, baseline_id)) for u in units])


@pytest.mark.parametrize("level", ["token", "word"])
@pytest.mark.parametrize("mode", ["delete", "replace"])
@pytest.mark.parametrize("batching", ["batched", "packed"])
def test_occlusion_equals_loop(arch_pair, random_items, level, mode, batching):
    model = arch_pair["transformer_lens"]
    baseline = resolve_baseline_token(model, None)
    for item in random_items:
        enc = encode_item(model, item)
        res = occlusion(model, item, level=level, mode=mode, batching=batching)
        base, want = loop_scores(model, enc, level, mode, baseline)
        assert len(res.scores) == len(want) > 0
        assert (res.scores - want).abs().max().item() <= TOL, (item.id, res.scores, want)
        assert abs(res.target_value - base) <= TOL
        assert want.abs().max() > 1e-3  # the comparison is not trivially between zeros


@pytest.mark.parametrize("mode", ["delete", "replace"])
def test_packed_equals_batched(arch_pair, random_items, mode):
    for backend, model in arch_pair.items():
        for item in random_items:
            for level in ("token", "word"):
                packed = occlusion(model, item, level=level, mode=mode, batching="packed")
                batched = occlusion(model, item, level=level, mode=mode, batching="batched")
                assert (packed.scores - batched.scores).abs().max().item() <= TOL, (backend, item.id, level)
                assert abs(packed.target_value - batched.target_value) <= TOL


def test_word_level_groups_subword_tokens(llama_pair, random_items):
    """A multi-token word is removed as a whole: its score differs from its tokens' scores and equals the loop."""
    model = llama_pair["transformer_lens"]
    item = random_items[2]  # "Zorblat" is several tokens under the random models' tokenizer
    enc = encode_item(model, item)
    words = prompt_units(enc.prompt, "word")
    multi = [w for w in words if len(w.positions) > 1]
    assert multi, [w.text for w in words]
    res = occlusion(model, item, level="word")
    tokens = occlusion(model, item, level="token")
    assert [u.text for u in res.units] == [w.text for w in words]
    _, want = loop_scores(model, enc, "word", "delete", None)
    assert (res.scores - want).abs().max() <= TOL
    w = multi[0]
    assert not torch.isclose(
        res.scores[w.index], sum(tokens.scores[[t.index for t in tokens.units if t.positions[0] in w.positions]])
    )


def test_first_logit_target_and_chunking(llama_pair, random_items):
    model = llama_pair["nnsight"]
    item = random_items[1]
    enc = encode_item(model, item)
    _, want = loop_scores(model, enc, "token", "replace", model.pad_token_id, target="first_logit")
    for batching in ("batched", "packed"):
        for batch_size in (2, 64):  # chunked into several forwards, or one
            res = occlusion(model, item, mode="replace", target="first_logit", batching=batching, batch_size=batch_size)
            assert (res.scores - want).abs().max() <= TOL, (batching, batch_size)


def test_only_question_tokens_are_ablated(tiny_model, synthetic_items):
    """BOS and template/separator tokens are never units; all n+1 variants are scored."""
    enc = encode_item(tiny_model, synthetic_items[0])
    res = occlusion(tiny_model, synthetic_items[0])
    positions = [p for u in res.units for p in u.positions]
    assert positions == enc.prompt.question_positions
    assert 0 not in positions and enc.prompt.ids[0] == tiny_model.tokenizer.bos_token_id
    assert "".join(u.text for u in res.units).strip() == synthetic_items[0].question


def test_target_value_is_the_foundation_lp(tiny_model, synthetic_items):
    encs = [encode_item(tiny_model, it) for it in synthetic_items[:4]]
    lp = score_answers(tiny_model, [e.prompt.ids for e in encs], [e.answer_ids for e in encs]).logprob
    for e, want in zip(encs, lp.tolist()):
        for batching in ("batched", "packed"):
            assert abs(occlusion(tiny_model, e, batching=batching).target_value - want) <= 1e-5


def test_keyword_flags_and_keyword_unit_is_top_on_the_tiny_model(tiny_model, synthetic_items):
    """The trained tiny model answers from the country name: occlusion ranks it first."""
    res = occlusion(tiny_model, synthetic_items[0], level="word")
    assert [u.text for u, k in zip(res.units, res.is_keyword) if k] == ["capital", "Zorblat"]
    assert res.units[res.top_unit].text == "Zorblat"


def test_batching_choice_follows_the_cost_estimate(tiny_model, synthetic_items):
    short = encode_item(tiny_model, synthetic_items[0]).prompt  # 7 question tokens near the end: packing saves work
    assert choose_batching(tiny_model, len(short.ids), 2, [[p] for p in short.question_positions], "delete") == "packed"
    # a long question: the packed row's quadratic attention outweighs the shared prefix (measured 2.3x slower)
    long_q = list(range(3, 31))
    assert choose_batching(tiny_model, 34, 2, [[p] for p in long_q], "delete") == "batched"
    assert choose_batching(tiny_model, 34, 2, [], "delete") == "batched"


def test_bad_options(tiny_model, synthetic_items):
    item = synthetic_items[0]
    with pytest.raises(InputError, match="unknown occlusion mode"):
        occlusion(tiny_model, item, mode="blank")
    with pytest.raises(InputError, match="unknown occlusion batching 'chunked'; choose one of: auto, batched, packed"):
        occlusion(tiny_model, item, batching="chunked")
    with pytest.raises(InputError, match="unknown attribution level"):
        occlusion(tiny_model, item, level="sentence")
    with pytest.raises(InputError, match="unknown target"):
        occlusion(tiny_model, item, target="entropy")
    with pytest.raises(InputError, match="exactly one"):
        occlusion(tiny_model, item, mode="replace", baseline_token="capital of")
    with pytest.raises(InputError, match="outside the vocabulary"):
        occlusion(tiny_model, item, mode="replace", baseline_token=10**6)
