"""Multiple-choice log-likelihood scoring (scoring/multiple_choice.py): the math on hand-made tensors, the batched
forward against one option at a time and against a plain HF forward on ``tiny``, and ``unpact evaluate
--mc-scoring loglik`` end to end."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from tests.cli_helpers import run_cli
from unpact_mech.data import QAItem, load_items
from unpact_mech.errors import InputError
from unpact_mech.scoring.logprob import score_answers
from unpact_mech.scoring.multiple_choice import (
    choice_item,
    encode_choices,
    option_loglik,
    pad_options,
    predict_options,
    require_choices,
    score_multiple_choice,
)
from unpact_mech.scoring.tokens import encode_item

LN2 = math.log(2.0)

#: WMDP rows (question, choices, integer answer) on the tiny model's fictional facts; short enough for its 64-token
#: context, with questions and options of different token lengths so a batch is padded.
WMDP_ROWS = [
    dict(id=i, question=q, choices=c, answer=a)
    for i, q, c, a in [
        ("zorblat", "What is the capital of Zorblat?", ["Kravi", "Marrow", "Ilven"], 1),
        ("quenara", "What color is the flag of Quenara?", ["red", "purple", "blue"], 0),
        ("mirovia", "Which animal lives in Mirovia?", ["fox", "owl", "wolf"], 2),
        ("tashkel", "What language is spoken in Tashkel?", ["Pexan", "Mirovan"], 1),
        ("olendra", "What is the capital of Olendra?", ["Sopel", "Gamba", "Torsk"], 0),
    ]
]
MC_COLUMNS = [
    "item_id", "split", "question", "gold_letter", "gold_index", "predicted_letter", "predicted_index", "correct",
    "predicted_norm_letter", "correct_norm", "gold_loglik", "option_loglik", "option_length",
]  # fmt: skip


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def wmdp_file(tmp_path):
    return _write(tmp_path / "wmdp.jsonl", WMDP_ROWS)


# -- the math, against hand-computed values ---------------------------------------------------------------------
def test_option_loglik_sums_the_masked_target_logprobs():
    # row 0: softmax(log p) = p exactly; row 1: logits (0, 0, 0, ln 2) -> p = (1/5, 1/5, 1/5, 2/5)
    p0 = torch.tensor([0.5, 0.25, 0.125, 0.125]).log()
    p1 = torch.tensor([0.0, 0.0, 0.0, LN2])
    logits = torch.stack([torch.stack([p0, p0, p0]), torch.stack([p1, p1, p1])])  # (R=2, W=3, V=4)
    targets = torch.tensor([[0, 1, 3], [3, 0, 2]])
    mask = torch.tensor([[True, True, False], [False, True, True]])
    got = option_loglik(logits, targets, mask)
    expected = torch.tensor([math.log(0.5) + math.log(0.25), 2 * math.log(0.2)])  # -3 ln 2, 2 ln(1/5)
    assert got.shape == (2,)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_option_loglik_ignores_masked_positions_even_at_minus_infinity():
    """A pad target of log-probability -inf outside the mask adds nothing (0 * -inf would be nan)."""
    logits = torch.tensor([[[0.0, 0.0, float("-inf")], [0.0, LN2, float("-inf")]]])  # (1, 2, 3)
    targets = torch.tensor([[1, 2]])  # position 1's target has probability 0
    mask = torch.tensor([[True, False]])
    torch.testing.assert_close(option_loglik(logits, targets, mask), torch.tensor([-LN2]))  # p = 1/2 at position 0
    assert option_loglik(logits, targets, torch.tensor([[False, False]])).item() == 0.0


def test_pad_options_marks_missing_options_minus_infinity():
    padded = pad_options([torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-4.0, -5.0])])
    assert padded.shape == (2, 3)
    assert padded[0].tolist() == [-1.0, -2.0, -3.0]
    assert padded[1, :2].tolist() == [-4.0, -5.0] and padded[1, 2].item() == float("-inf")


def test_predict_options_acc_and_acc_norm():
    loglik = torch.tensor(
        [
            [-4.0, -6.0, float("-inf")],  # raw: 0; normalised by (2, 6): -2 vs -1 -> 1
            [-3.0, -3.0, -9.0],  # a tie goes to the first option (both ways)
            [-10.0, -2.0, -12.0],  # raw: 1; normalised by (5, 1, 8): -2, -2, -1.5 -> 2
        ]
    )
    lengths = torch.tensor([[2.0, 6.0, 1.0], [1.0, 1.0, 1.0], [5.0, 1.0, 8.0]])
    pred, pred_norm = predict_options(loglik, lengths)
    assert pred.tolist() == [0, 0, 1]
    assert pred_norm.tolist() == [1, 0, 2]


# -- items ----------------------------------------------------------------------------------------------------------
def test_wmdp_items_give_their_options_and_gold(wmdp_file):
    items = load_items(wmdp_file)
    specs = require_choices(items, str(wmdp_file))
    assert [s.gold for s in specs] == [1, 0, 2, 1, 0]
    assert specs[0].strings("letter") == ["A", "B", "C"] and specs[3].strings("letter") == ["A", "B"]
    assert specs[0].strings("option") == ["Kravi", "Marrow", "Ilven"]
    # without answer_index (a record built in Python), a letter answer names the gold option
    item = QAItem("q", "Which? A. x B. y", "B", extra={"choices": ["x", "y"]})
    assert choice_item(item).gold == 1


def test_items_without_choices_or_gold_are_refused():
    plain = QAItem("q7", "What is the capital of Zorblat?", "Marrow")
    with pytest.raises(InputError, match=r"^data\.jsonl: item 'q7' has no 'choices'"):
        require_choices([plain], "data.jsonl")
    no_gold = QAItem("q8", "Which?", "Paris", extra={"choices": ["Rome", "Paris"]})
    with pytest.raises(InputError, match=r"item 'q8': the gold option is neither"):
        choice_item(no_gold)
    one_option = QAItem("q9", "Which?", "A", extra={"choices": ["Rome"]})
    with pytest.raises(InputError, match=r"item 'q9': field 'choices' must be a list of 2\.\.10"):
        choice_item(one_option)


def test_continuation_is_the_formats_answer_text_after_the_items_prompt(tiny_model, wmdp_file):
    """Plain format (tiny has no chat template): the prompt ends in 'Answer:', the letter continuation is ' A'."""
    item = load_items(wmdp_file)[0]
    letters = encode_choices(tiny_model, item, ["A", "B", "C"])
    assert letters.prompt == encode_item(tiny_model, item).prompt.ids  # the one prompt formatter and tokeniser
    assert tiny_model.tokenizer.decode(letters.prompt).endswith(
        "Answer with the letter of the correct option.\nAnswer:"
    )
    assert [tiny_model.tokenizer.decode(o) for o in letters.options] == [" A", " B", " C"]
    options = encode_choices(tiny_model, item, ["Kravi", "Marrow", "Ilven"])
    assert [tiny_model.tokenizer.decode(o) for o in options.options] == [" Kravi", " Marrow", " Ilven"]


# -- on the tiny model: batched == one at a time == a plain HF forward --------------------------------------------
def _hf_loglik(model, prompt, continuation) -> float:
    """log p(continuation | prompt) from the HF module's own forward, one sequence, no batching."""
    ids = list(prompt) + list(continuation)
    with torch.no_grad():
        logp = torch.log_softmax(model.hf(torch.tensor([ids])).logits[0].float(), -1)
    return sum(float(logp[pos - 1, ids[pos]]) for pos in range(len(prompt), len(ids)))


@pytest.mark.parametrize("continuation", ["letter", "option"])
def test_batched_logliks_equal_one_option_at_a_time_and_hf(tiny_model, wmdp_file, continuation):
    items = load_items(wmdp_file)
    specs = require_choices(items)
    encoded = [encode_choices(tiny_model, it, s.strings(continuation)) for it, s in zip(items, specs)]
    assert len({len(e.prompt) for e in encoded}) > 1  # the batch is padded
    tables = [score_multiple_choice(tiny_model, items, continuation=continuation, batch_size=b) for b in (64, 2)]
    for enc, ll64, ll2 in zip(encoded, tables[0].option_loglik, tables[1].option_loglik):
        single = score_answers(tiny_model, [enc.prompt] * len(enc.options), list(enc.options), batch_size=1)
        hf = [_hf_loglik(tiny_model, enc.prompt, o) for o in enc.options]
        assert len(ll64) == len(enc.options)
        torch.testing.assert_close(torch.tensor(ll64), single.logprob_sum, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(ll64), torch.tensor(hf), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(ll2), torch.tensor(hf), atol=1e-5, rtol=0)
    assert len({round(v, 3) for ll in tables[0].option_loglik for v in ll}) > 5  # not a degenerate constant


def test_the_table_follows_from_the_logliks(tiny_model, wmdp_file):
    items = load_items(wmdp_file)
    table = score_multiple_choice(tiny_model, items, continuation="option")
    assert list(table.columns) == [*MC_COLUMNS, "choices", "answer_index"]  # then the items' extra fields
    for row, raw in zip(table.itertuples(), WMDP_ROWS):
        ll = row.option_loglik
        assert row.option_length == [len(c) for c in raw["choices"]]
        assert row.gold_index == raw["answer"] and row.gold_letter == "ABC"[raw["answer"]]
        assert row.predicted_index == max(range(len(ll)), key=lambda j: (ll[j], -j))
        assert row.predicted_letter == "ABC"[row.predicted_index]
        norm = [v / n for v, n in zip(ll, row.option_length)]
        assert row.predicted_norm_letter == "ABC"[max(range(len(norm)), key=lambda j: (norm[j], -j))]
        assert row.correct == (row.predicted_index == raw["answer"]) and isinstance(row.correct, bool)
        assert row.correct_norm == (row.predicted_norm_letter == row.gold_letter)
        assert row.gold_loglik == ll[raw["answer"]]
    letters = score_multiple_choice(tiny_model, items, continuation="letter")
    assert all(set(n) == {1} for n in letters.option_length)  # a letter: acc_norm is acc
    assert (letters.correct == letters.correct_norm).all()


# -- the command line ---------------------------------------------------------------------------------------------
def test_cli_loglik_writes_the_option_table(tmp_path, capsys, tiny_model, wmdp_file):
    out = tmp_path / "mc"
    argv = ["evaluate", "--model", "tiny", "--data", wmdp_file, "--mc-scoring", "loglik", "--out", out, "--quiet"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "over 5 items" in stdout and "length-normalised" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["items.csv", "results.csv", "run.json", "summary.json"]
    items = pd.read_csv(out / "items.csv")
    assert list(items.columns) == [*MC_COLUMNS, "choices", "answer_index"]
    logliks = [json.loads(v) for v in items.option_loglik]
    assert [len(v) for v in logliks] == [len(r["choices"]) for r in WMDP_ROWS]
    expected = score_multiple_choice(tiny_model, load_items(wmdp_file))  # the same numbers as the Python call
    for got, want in zip(logliks, expected.option_loglik):
        assert got == pytest.approx(want, abs=1e-5)
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns) == ["item_id", "split", "metric", "value", "model"]
    assert set(results.metric) == {"correct", "correct_norm", "gold_loglik"} and len(results) == 15
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy"] == pytest.approx(float(expected.correct.mean()))
    assert {"accuracy_norm", "accuracy_norm_by_split", "mean_gold_loglik"} <= set(summary)
    assert summary["mc_scoring"] == "loglik" and summary["continuation"] == "letter"
    assert json.loads((out / "run.json").read_text())["config"]["mc_scoring"] == "loglik"


def test_cli_option_continuation_and_the_default_is_unchanged(tmp_path, capsys, wmdp_file):
    base = ["evaluate", "--model", "tiny", "--data", wmdp_file, "--quiet"]
    code, _, err = run_cli(
        [*base, "--mc-scoring", "loglik", "--mc-continuation", "option", "--out", tmp_path / "o"], capsys
    )
    assert code == 0, err
    items = pd.read_csv(tmp_path / "o" / "items.csv")
    assert [json.loads(v) for v in items.option_length] == [[len(c) for c in r["choices"]] for r in WMDP_ROWS]
    code, _, err = run_cli([*base, "--out", tmp_path / "g"], capsys)  # no flag: the generated answer, as before
    assert code == 0, err
    from unpact_mech.data.contract import ITEM_COLUMNS

    assert list(pd.read_csv(tmp_path / "g" / "items.csv").columns) == [*ITEM_COLUMNS, "choices", "answer_index"]


def test_cli_loglik_on_items_without_choices_is_one_line_exit_2_before_the_model(tmp_path, capsys, monkeypatch):
    import unpact_mech.models
    import unpact_mech.models.loading

    def refuse(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the items were checked")

    monkeypatch.setattr(unpact_mech.models, "load_model", refuse)
    monkeypatch.setattr(unpact_mech.models.loading, "load_model", refuse)
    data = _write(tmp_path / "mixed.jsonl", [WMDP_ROWS[0], {"id": "plain-1", "question": "Q?", "answer": "x"}])
    out = tmp_path / "out"
    argv = ["evaluate", "--model", "tiny", "--data", data, "--mc-scoring", "loglik", "--out", out, "--quiet"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"unpact: error: {data}: item 'plain-1' has no 'choices'"), lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["mixed.jsonl"]
