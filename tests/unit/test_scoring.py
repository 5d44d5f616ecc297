"""Prompt format, token/keyword alignment, teacher-forced LP, ranks, judges and evaluation."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import load_hf
from unpact_mech import load_model
from unpact_mech.data.record import QAItem
from unpact_mech.data.text import keyword_spans
from unpact_mech.errors import InputError
from unpact_mech.scoring import evaluate_items, score_answers, summarize_evaluation, to_long
from unpact_mech.scoring.batching import left_pad, length_batches, right_pad_teacher_forced
from unpact_mech.scoring.judges import contains_answer, lcs_length, normalize_tokens, rouge_l_recall
from unpact_mech.scoring.logprob import token_rank
from unpact_mech.scoring.prompt import PromptFormat, prompt_format_from_name
from unpact_mech.scoring.tokens import encode_answer, encode_item, encode_prompt, tokens_in_span

CHAT_TEMPLATE = (
    "{% for m in messages %}<bos><|{{ m['role'] }}|>\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<bos><|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def model(llama_dir):
    return load_model(llama_dir)


def test_plain_format_bos_and_question_span(model):
    tok = model.tokenizer
    enc = encode_prompt(tok, PromptFormat("plain"), "What is the capital of France?")
    assert enc.text == "Question: What is the capital of France?\nAnswer:"
    assert enc.ids[0] == tok.bos_token_id and enc.offsets[0] == (0, 0)  # BOS explicit, zero-width
    assert enc.question == "What is the capital of France?"
    q = enc.question_positions
    assert 0 not in q
    assert tok.decode([enc.ids[i] for i in q]).strip() == "What is the capital of France?"
    # tokens outside the question ("Question:", "\nAnswer:") are never question tokens
    outside = [i for i in range(1, len(enc)) if i not in q]
    assert "Answer" in tok.decode([enc.ids[i] for i in outside])
    assert tok.decode(list(encode_answer(tok, PromptFormat("plain"), " Paris "))) == " Paris"


def test_chat_format_locates_question_and_skips_bos_already_in_template(model):
    tok = model.tokenizer
    tok.chat_template = CHAT_TEMPLATE
    try:
        fmt = prompt_format_from_name("auto", tok)
        assert fmt.kind == "chat"
        enc = encode_prompt(tok, fmt, "Who wrote Hamlet?")
        assert enc.text.startswith("<bos><|user|>\nWho wrote Hamlet?<eos>")
        assert enc.ids.count(tok.bos_token_id) == 2  # the template's own, none added
        assert enc.text[enc.question_start : enc.question_end] == "Who wrote Hamlet?"
        assert fmt.answer_text("Shakespeare") == "Shakespeare"
        sys_fmt = prompt_format_from_name("chat", tok, system="Be brief.")
        assert "Be brief." in sys_fmt.render(tok, "Q?").text
    finally:
        tok.chat_template = None
    with pytest.raises(InputError, match="no chat template"):
        prompt_format_from_name("chat", tok)
    with pytest.raises(InputError, match="unknown prompt format"):
        prompt_format_from_name("fancy", tok)


def test_keyword_and_word_alignment(model):
    enc = encode_prompt(model.tokenizer, PromptFormat("plain"), "What is the capital of France?")
    words = enc.words()
    assert [w.text for w in words] == ["What", "is", "the", "capital", "of", "France", "?"]
    assert sorted(p for w in words for p in w.positions) == enc.question_positions  # a partition
    cap = enc.positions_of("Capital")  # case-insensitive
    assert cap == list(words[3].positions)
    assert model.tokenizer.decode([enc.ids[i] for i in cap]).strip() == "capital"
    assert enc.keyword_words(["capital", "france"]) == [3, 5]
    with pytest.raises(InputError, match="keyword 'Paris' does not occur"):
        enc.positions_of("Paris", item_id="q1")


def test_alignment_primitives():
    assert keyword_spans("The cat and the Cat-cat", "cat") == [(4, 7), (16, 19), (20, 23)]
    assert keyword_spans("concatenate", "cat") == []
    offsets = [(0, 0), (0, 3), (3, 7), (7, 8)]
    assert tokens_in_span(offsets, 2, 5) == [1, 2]
    assert tokens_in_span(offsets, 0, 0) == []


def test_padding_helpers():
    tf = right_pad_teacher_forced([[5, 6, 7], [5, 6]], [[8, 9], [10]], pad_id=0, items=[0, 1])
    assert tf.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 6, 10, 0, 0]]
    assert (tf.start, tf.keep) == (1, 4)  # logits from position 1 on
    assert tf.targets.tolist() == [[7, 8, 9, 0], [10, 0, 0, 0]]
    assert tf.answer_mask.tolist() == [[False, True, True, False], [True, False, False, False]]
    assert tf.first.tolist() == [1, 0]
    pb = left_pad([[1, 2, 3], [4]], pad_id=0, items=[7, 9])
    assert pb.input_ids.tolist() == [[1, 2, 3], [0, 0, 4]] and pb.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pb.layout.offsets == (0, 2) and pb.layout.mask([[0, 2], [0]]).tolist() == [
        [True, False, True],
        [False, False, True],
    ]
    assert length_batches([5, 1, 3, 1], 2) == [[1, 3], [2, 0]]


def test_batched_logprob_equals_one_by_one_and_hand_computation(model, llama_dir):
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (4, 9, 6, 12, 5)]
    answers = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (3, 1, 5, 2, 4)]
    batched = score_answers(model, prompts, answers, batch_size=3)
    hf = load_hf(llama_dir)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        alone = score_answers(model, [p], [a])
        assert abs(alone.logprob.item() - batched.logprob[i].item()) <= 1e-5
        assert alone.first_rank.item() == batched.first_rank[i].item()
        # by hand from plain HF logits: mean_k log p(a_k | p, a_<k)
        logits = hf(input_ids=torch.tensor([p + a])).logits[0].log_softmax(-1)
        lp = torch.stack([logits[len(p) - 1 + k, t] for k, t in enumerate(a)])
        assert abs(lp.mean().item() - batched.logprob[i].item()) <= 1e-5
        assert abs(lp.sum().item() - batched.logprob_sum[i].item()) <= 1e-4
        assert abs(lp[0].exp().item() - batched.first_prob[i].item()) <= 1e-5
        first = logits[len(p) - 1]
        assert batched.first_rank[i].item() == int((first > first[a[0]]).sum())


def test_token_rank():
    logits = torch.tensor([[0.1, 3.0, 2.0, 3.0], [5.0, 1.0, 1.0, 0.0]])
    assert token_rank(logits, torch.tensor([2, 0])).tolist() == [2, 0]


@pytest.mark.parametrize(
    "continuation, answer, aliases, expected",
    [
        ("The capital of France is Paris.", "Paris", (), True),
        ("It is parisian food.", "Paris", (), False),  # whole words only
        ("The temperature was -18.0 degrees", "0", (), False),  # no digit inside a number
        ("The answer is 0.", "0", (), True),
        ("approximately 100.0 degrees Celsius", "100", (), True),  # numbers compare by value
        ("It costs 2.50 dollars", "2.5", (), True),
        ("It was 100.5 degrees", "100", (), False),
        ("It was 1000 degrees", "100", (), False),
        ("version 1.2.0 of it", "1.2", (), False),  # not a decimal number: left as written
        ("It has 1,000 rooms", "1000", (), True),
        ("Written by Shakespeare.", "William Shakespeare", ("Shakespeare",), True),
        ("It is the Pacific Ocean", "The Pacific Ocean", (), True),
        ("It is Pacific Ocean", "The Pacific Ocean", (), True),  # leading article optional
        ("São Paulo is big", "Sao Paulo", (), True),  # accents folded
        ("new\nyork", "New York", (), True),
        ("York is new", "New York", (), False),  # order matters
        ("It is a virus.", "A", (), False),  # an option letter is not the article
        ("A. It is a virus.", "A", (), True),
        ("The answer is (B).", "B", (), True),
        ("Bacteria", "B", (), False),
        ("It is a virus.", "A", ("a virus",), True),  # the option's text (an alias) still counts
    ],
)
def test_contains_judge(continuation, answer, aliases, expected):
    assert contains_answer(continuation, answer, aliases) is expected


def test_rouge_l_recall_by_hand():
    assert normalize_tokens("Leonardo da-Vinci!") == ["leonardo", "da", "vinci"]
    assert lcs_length(list("abcde"), list("axcye")) == 3
    assert rouge_l_recall("Leonardo painted it, da Vinci", "Leonardo da Vinci") == 1.0
    assert rouge_l_recall("Leonardo painted it", "Leonardo da Vinci") == pytest.approx(1 / 3)
    assert rouge_l_recall("anything", "!!!") == 0.0


def test_evaluate_tiny_model_tables(tiny_model, synthetic_items):
    per_item = evaluate_items(tiny_model, synthetic_items, progress=False)
    assert len(per_item) == 32 and per_item["correct"].sum() == 32  # the tiny model knows its facts
    assert (per_item["rank"] == 0).all() and (per_item["logprob"] > -0.1).all()
    assert (per_item["generation"] == per_item["answer"]).all()
    s = summarize_evaluation(per_item)
    assert s["accuracy"] == 1.0 and s["n_by_split"] == {"forget": 8, "retain": 12, "utility": 12}
    long = to_long(per_item, model="tiny")
    assert list(long.columns[:4]) == ["item_id", "split", "metric", "value"] and len(long) == 32 * 6
    wrong = [QAItem("w", synthetic_items[0].question, "Kravi" if synthetic_items[0].answer != "Kravi" else "Lumos")]
    assert evaluate_items(tiny_model, wrong, progress=False)["correct"].item() == 0.0


def test_encode_item_errors(model):
    with pytest.raises(InputError, match="item 'z': the answer tokenises to nothing"):
        encode_item(model, QAItem("z", "Q?", "   x"), answer=" ")
    with pytest.raises(InputError, match=r"item 'long': \d+ tokens exceed the model's context of 64"):
        encode_item(model, QAItem("long", "word " * 80, "A"))
