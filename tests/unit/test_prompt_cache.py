"""The one-pass evaluation (shared prefix once, prompt once for answer and scores) against the two-pass reference:
pure layout helpers by hand, scores by hand, equal answers and scores on tiny random architectures and both
backends, and the fallback wherever an intervention or a hook context could be touched."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import BACKENDS
from unpact_mech.models.hooks import Intervention
from unpact_mech.scoring import evaluate, evaluate_items, score_answers
from unpact_mech.scoring.generation import generate_answers
from unpact_mech.scoring.logprob import token_logprobs
from unpact_mech.scoring.prompt_cache import (
    answer_and_score,
    answer_scores,
    shared_prefix_len,
    split_layout,
    supports_prompt_cache,
)


def test_shared_prefix_len():
    assert shared_prefix_len([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert shared_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # every row keeps one token of its own
    assert shared_prefix_len([[1, 2, 3, 4], [1, 2]]) == 1
    assert shared_prefix_len([[7]]) == 0 and shared_prefix_len([[1, 2], [3, 2]]) == 0


def test_split_layout_pads_between_prefix_and_rest():
    ids, mask = split_layout([[1, 2, 3, 4], [1, 2, 5]], 2, pad_id=0)
    assert ids.tolist() == [[3, 4], [0, 5]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 1]]
    ids, mask = split_layout([[1, 2, 3], [4]], 0, pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_answer_scores_by_hand():
    g = torch.Generator().manual_seed(0)
    last, later = torch.randn(2, 7, generator=g), torch.randn(2, 3, 7, generator=g)
    answers, lengths = torch.tensor([[4, 1, 6], [2, 0, 0]]), torch.tensor([3, 1])
    s = answer_scores(last, later, answers, lengths)
    row0 = torch.stack([last[0].log_softmax(-1)[4], later[0, 0].log_softmax(-1)[1], later[0, 1].log_softmax(-1)[6]])
    assert s.logprob[0].item() == pytest.approx(row0.mean().item(), abs=1e-6)
    assert s.logprob_sum[0].item() == pytest.approx(row0.sum().item(), abs=1e-6)
    assert s.logprob[1].item() == pytest.approx(last[1].log_softmax(-1)[2].item(), abs=1e-6)  # pads not counted
    assert s.first_prob[1].item() == pytest.approx(last[1].softmax(-1)[2].item(), abs=1e-6)
    assert s.first_rank.tolist() == [int((last[0] > last[0, 4]).sum()), int((last[1] > last[1, 2]).sum())]
    assert torch.equal(token_logprobs(last[:1], answers[:1, 0]), last[:1].log_softmax(-1)[:, 4])


def _prompts(prefix_len: int = 6):
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(3, 300, (prefix_len,), generator=g).tolist()
    prompts = [prefix + torch.randint(3, 300, (n,), generator=g).tolist() for n in (3, 7, 1, 5, 4, 9, 2)]
    answers = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (2, 1, 4, 3, 1, 2, 5)]
    return prompts, answers


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_pass_equals_two_passes(pair, backend):
    """Same greedy answers and scores (to 1e-5) as generating, then scoring, with the prompt left-padded — on
    llama (rotary positions) and gpt2 (learned positions), in batches of 3 with different rest lengths."""
    _, models = pair
    model = models[backend]
    prompts, answers = _prompts()
    generated, scores = answer_and_score(model, prompts, answers, max_new_tokens=6, batch_size=3)
    reference = generate_answers(model, prompts, max_new_tokens=6, batch_size=3)
    ref_scores = score_answers(model, prompts, answers, batch_size=3)
    assert generated == reference
    for field in ("logprob", "logprob_sum", "first_prob"):
        torch.testing.assert_close(getattr(scores, field), getattr(ref_scores, field), atol=1e-5, rtol=1e-5)
    assert torch.equal(scores.first_rank, ref_scores.first_rank)


def test_last_logits_after_the_prefix_equal_each_prompt_alone(pair):
    _, models = pair
    model = models["transformer_lens"]
    prompts, _ = _prompts()
    p = shared_prefix_len(prompts)
    assert p == 6
    with torch.no_grad():
        cache = model.forward(torch.tensor([prompts[0][:p]]), use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(prompts))
        rest, mask = split_layout(prompts, p, model.pad_token_id)
        last = model.forward(rest, attention_mask=mask, past_key_values=cache, use_cache=True).logits[:, -1]
        for row, prompt in enumerate(prompts):
            alone = model.forward(torch.tensor([prompt])).logits[0, -1]
            torch.testing.assert_close(last[row], alone, atol=1e-5, rtol=1e-5)


def test_evaluate_items_uses_one_pass_only_where_nothing_can_touch_the_prompt(tiny_model, synthetic_items, monkeypatch):
    calls = []
    real = evaluate.answer_and_score
    monkeypatch.setattr(evaluate, "answer_and_score", lambda *a, **k: calls.append(1) or real(*a, **k))
    items = synthetic_items[:6]
    plain = evaluate_items(tiny_model, items, progress=False)
    assert calls == [1] and supports_prompt_cache(tiny_model)
    two_pass = evaluate_items(tiny_model, items, progress=False, prompt_cache=False)
    assert calls == [1]
    assert plain.drop(columns=["logprob", "first_prob"]).equals(two_pass.drop(columns=["logprob", "first_prob"]))
    torch.testing.assert_close(
        torch.tensor(plain["logprob"].to_numpy()), torch.tensor(two_pass["logprob"].to_numpy()), atol=1e-5, rtol=0
    )
    noop = Intervention("blocks.0.hook_resid_post", lambda act, ctx: act)
    evaluate_items(tiny_model, items, progress=False, interventions=lambda layout: [noop])
    with tiny_model.hooks([("blocks.0.hook_resid_post", lambda act, ctx: act)]):
        evaluate_items(tiny_model, items, progress=False)
    assert calls == [1]  # neither an intervention nor a hook context takes the one-pass path


def test_sliding_window_models_take_the_two_pass_path(tiny_model, monkeypatch):
    monkeypatch.setattr(tiny_model.config, "sliding_window", 8, raising=False)
    assert not supports_prompt_cache(tiny_model)
    monkeypatch.setattr(tiny_model.config, "use_sliding_window", False, raising=False)
    assert supports_prompt_cache(tiny_model)  # Qwen2 configs name a window they do not use


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoding_drops_finished_rows_and_writes_the_same_tokens(pair, backend, monkeypatch):
    """Rows that stop leave the batch (later forwards are smaller) and every row's tokens are unchanged; the stop
    tokens are chosen from a decode without stops so that some rows stop at once and others run on."""
    _, models = pair
    model = models[backend]
    prompts, _ = _prompts()

    def run(drop: bool, sizes: list[int]):
        rest, mask = split_layout(prompts, 0, model.pad_token_id)
        real = model.forward
        with torch.no_grad():
            out = real(rest, attention_mask=mask, use_cache=True, logits_to_keep=1)
            monkeypatch.setattr(model, "forward", lambda ids, **k: sizes.append(ids.shape[0]) or real(ids, **k))
            try:
                return model.decode(out.logits[:, -1], out.past_key_values, mask, max_new_tokens=8, drop_finished=drop)
            finally:
                monkeypatch.setattr(model, "forward", real)

    free = run(False, [])
    stops = [int(free[0, 0]), int(free[6, 0])]  # rows 0 and 6 stop at once, and the rows without these run on
    assert sum(not set(row) & set(stops) for row in free.tolist()) >= 3
    monkeypatch.setattr(type(model), "stop_token_ids", property(lambda self: stops))
    plain_sizes, drop_sizes = [], []
    plain, dropped = run(False, plain_sizes), run(True, drop_sizes)
    assert torch.equal(plain, dropped)
    assert set(plain_sizes) == {len(prompts)} and min(drop_sizes) < len(prompts)
    assert (plain[0, 1:] == model.pad_token_id).all()  # a stopped row is padded after its stop token
    with pytest.raises(ValueError, match="without step interventions"):
        model.decode(
            plain[:, :1].float(),
            None,
            torch.ones(7, 1),
            interventions=[Intervention("x", lambda a, c: a)],
            drop_finished=True,
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_prompt_only_edits_are_skipped_while_decoding_and_let_finished_rows_leave(pair, backend, monkeypatch):
    """An edit at prompt positions (``edit_positions``: ``prompt_only``) changes the answers, yet decoding skips it
    exactly: the same tokens as the same edit run on every step, and with finished rows dropped; an edit that acts
    on every position keeps every row and is refused with ``drop_finished``."""
    from unpact_mech.models.hooks import edit_positions
    from unpact_mech.scoring.batching import left_pad

    _, models = pair
    model = models[backend]
    prompts, _ = _prompts()
    batch = left_pad(prompts, model.pad_token_id, list(range(len(prompts))))
    mask = batch.layout.mask([[len(p) - 2, len(p) - 1] for p in prompts])
    edit = edit_positions("blocks.0.hook_resid_post", mask, lambda rows: rows * 4.0)
    assert edit.prompt_only
    every_step = Intervention(edit.hook, edit.fn, "same edit, run on every step")
    run = lambda ivs, drop=False: model.generate(
        batch.input_ids, batch.attention_mask, max_new_tokens=8, interventions=ivs, drop_finished=drop
    )
    plain = run([])
    edited = run([edit])
    assert not torch.equal(plain, edited)  # the edit matters
    free = run([every_step])
    assert torch.equal(edited, free)
    stops = [int(edited[0, 0]), int(edited[3, 0])]
    monkeypatch.setattr(type(model), "stop_token_ids", property(lambda self: stops))
    sizes: list[int] = []
    real = model.forward
    monkeypatch.setattr(model, "forward", lambda ids, **k: sizes.append(ids.shape[0]) or real(ids, **k))
    dropped = run([edit], drop=True)
    assert torch.equal(dropped, run([every_step])) and min(sizes) < len(prompts)
    assert model.can_drop_finished([edit]) and not model.can_drop_finished([every_step])
    everywhere = Intervention(edit.hook, lambda act, ctx: act * 1.0)
    with pytest.raises(ValueError, match="without step interventions"):
        run([everywhere], drop=True)


def test_repeated_prompts_are_computed_once(tiny_model, synthetic_items, monkeypatch):
    """A (prompt, answer) pair that occurs twice is answered and scored once, and both occurrences get its results:
    equal to the call without the repeats, and the model sees only the distinct rows."""
    from unpact_mech.scoring.tokens import encode_items

    enc = encode_items(tiny_model, synthetic_items[:5])
    prompts, answers = [e.prompt.ids for e in enc], [e.answer_ids for e in enc]
    order = [0, 1, 2, 1, 3, 4, 0, 2]
    rows: list[int] = []
    real = tiny_model.forward
    monkeypatch.setattr(tiny_model, "forward", lambda ids=None, **k: rows.append(ids.shape[0]) or real(ids, **k))
    once, once_scores = answer_and_score(tiny_model, prompts, answers)
    n_once = sum(rows)
    rows.clear()
    rep, rep_scores = answer_and_score(tiny_model, [prompts[i] for i in order], [answers[i] for i in order])
    assert [a.text for a in rep] == [once[i].text for i in order]
    for field in ("logprob", "logprob_sum", "first_prob", "first_rank"):
        torch.testing.assert_close(getattr(rep_scores, field), getattr(once_scores, field)[order])
    assert sum(rows) == n_once  # no row computed twice
    # a different answer after the same prompt is a different pair
    rows.clear()
    answer_and_score(tiny_model, [prompts[0], prompts[0]], [answers[0], answers[1]])
    assert max(rows) == 2
