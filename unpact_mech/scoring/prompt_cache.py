"""Greedy answers and teacher-forced scores from ONE prompt forward, with the batch's shared prefix computed once.

:func:`~unpact_mech.scoring.evaluate.evaluate_items` needs, per item, the greedy answer and the gold answer's
scores (LP, first-token probability and rank). Done separately (:func:`~.generation.generate_answers`, then
:func:`~.logprob.score_answers`) the prompt runs through the model twice, and every chat-format prompt repeats the
same system prompt and template (24 of the ~38 tokens of a built-in SmolLM2 prompt). Here, per batch of prompts:

1. ``P`` = the longest common prefix of the batch's prompts, at most ``min(len) - 1`` tokens
   (:func:`shared_prefix_len`); its keys and values are computed once, for one row, and repeated for every row.
2. The rest of each prompt is laid out after the prefix with its padding IN BETWEEN: row b is
   ``prefix + [pad] * (W - r_b) + rest_b`` with attention mask ``[1] * P + [0] * (W - r_b) + [1] * r_b``
   (:func:`split_layout`); position ids come from the mask (``cumsum - 1``), so every real token sits at the position
   it has unbatched. One forward gives the prompt's KV cache (B, P + W) and its last logits.
3. Scores: the gold answers, right-padded to ``A`` tokens, go through one forward on that cache. The distribution of
   answer token k is the prompt's last logits for k = 0 and the answer forward's logits at k − 1 after that:
   LP = (1/T) Σ_k log p(y_k | x, y_<k), rank = #{v : logit_v > logit_{y_1}} (as :mod:`~.logprob`).
4. The cache is cropped back to the prompt and greedy decoding continues from it (:meth:`HookedLM.decode`), rows
   that have stopped leaving the batch as they finish (``drop_finished``): later steps compute only the answers
   still being written (a correct short answer stops after a few tokens, a rambling one runs to the cap).

It is only used without interventions (an edit at a prompt position cannot run on a prefix computed once, and the
prompt's positions are not at their left-padded batch columns) and on models without sliding-window attention
(:func:`supports_prompt_cache`): :func:`~.evaluate.evaluate_items` falls back to the two-pass path when
interventions are given, a :meth:`HookedLM.hooks` context is active or the model has such layers. Equal to that path to
float precision (tested: logits to 1e-5, identical greedy answers, on tiny models and on SmolLM2's built-in set).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unpact_mech.scoring.batching import EVAL_BATCH_SIZE, length_batches
from unpact_mech.scoring.generation import DEFAULT_MAX_NEW_TOKENS, GeneratedAnswer, as_answer
from unpact_mech.scoring.logprob import AnswerScores, masked_mean, token_logprobs, token_rank
from unpact_mech.utils import progress_bar

if TYPE_CHECKING:
    from unpact_mech.models.hooked import HookedLM


def supports_prompt_cache(model: "HookedLM") -> bool:
    """Whether every attention layer keeps its whole past (no sliding window: such a layer's cache drops old
    states, so it cannot be cropped back to the prompt); the two-pass path serves the others."""
    config = model.config
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return False
    return not (getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True))


def shared_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """The longest common prefix of ``prompts`` (token id lists), at most ``min(len) - 1`` (every row keeps at
    least one token of its own, whose logits predict the answer); 0 for one prompt of one token."""
    common = len(os.path.commonprefix([list(p) for p in prompts]))
    return max(0, min(common, min(len(p) for p in prompts) - 1))


def split_layout(prompts: Sequence[Sequence[int]], prefix_len: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """``(rest_ids, attention_mask)``: the prompts without their first ``prefix_len`` tokens, left-padded to the
    longest rest ``W`` — (B, W) —, and the mask over prefix + rest, ``[1] * P + [0] * pad_b + [1] * r_b`` —
    (B, P + W)."""
    rests = [list(p[prefix_len:]) for p in prompts]
    width = max(len(r) for r in rests)
    ids = torch.full((len(rests), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rests), prefix_len + width), dtype=torch.long)
    mask[:, :prefix_len] = 1
    for row, rest in enumerate(rests):
        ids[row, width - len(rest) :] = torch.tensor(rest, dtype=torch.long)
        mask[row, prefix_len + width - len(rest) :] = 1
    return ids, mask


def answer_scores(last_logits: Tensor, answer_logits: Tensor, answers: Tensor, lengths: Tensor) -> AnswerScores:
    """Scores of right-padded ``answers`` (B, A) with ``lengths`` (B,): ``last_logits`` (B, V) predict token 0,
    ``answer_logits[:, k - 1]`` (B, A, V) predict token k."""
    predictive = torch.cat([last_logits[:, None], answer_logits[:, : answers.shape[1] - 1]], dim=1)
    tok_lp = token_logprobs(predictive, answers)
    mask = torch.arange(answers.shape[1])[None, :] < lengths[:, None]
    first = answers[:, 0]
    last = last_logits.float()
    return AnswerScores(
        masked_mean(tok_lp, mask),
        (tok_lp * mask).sum(-1),
        torch.softmax(last, -1).gather(-1, first[:, None]).squeeze(-1),
        token_rank(last, first),
    )


@torch.no_grad()
def answer_and_score(
    model: "HookedLM",
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = EVAL_BATCH_SIZE,
    progress: bool | str = False,
) -> tuple[list[GeneratedAnswer], AnswerScores]:
    """The greedy answer to each prompt and the teacher-forced scores of ``answers[i]`` after ``prompts[i]``, the
    prompt computed once for both and each batch's shared prefix once (module docstring). No interventions.

    A (prompt, answer) pair that occurs more than once (a recovery condition that leaves some prompts as they were, a
    control equal to its treatment) is computed once and its results copied to every occurrence."""
    pairs = [(tuple(p), tuple(a)) for p, a in zip(prompts, answers, strict=True)]
    first: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    row_of = [first.setdefault(pair, len(first)) for pair in pairs]  # each pair's row among the distinct ones
    if len(first) < len(pairs):
        distinct = list(first)
        gen, scores = _answer_and_score(
            model, [p for p, _ in distinct], [a for _, a in distinct], max_new_tokens=max_new_tokens,
            batch_size=batch_size, progress=progress,
        )  # fmt: skip
        at = torch.tensor(row_of, dtype=torch.long)
        return [gen[j] for j in row_of], AnswerScores(
            scores.logprob[at], scores.logprob_sum[at], scores.first_prob[at], scores.first_rank[at]
        )
    return _answer_and_score(
        model, prompts, answers, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
    )


def _answer_and_score(
    model: "HookedLM",
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    progress: bool | str,
) -> tuple[list[GeneratedAnswer], AnswerScores]:
    """:func:`answer_and_score` on distinct pairs."""
    n = len(prompts)
    generated: list[GeneratedAnswer] = [GeneratedAnswer("", False)] * n
    lp, lp_sum, p1 = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    rank = torch.zeros(n, dtype=torch.long)
    stops, pad = set(model.stop_token_ids), model.pad_token_id
    desc = progress if isinstance(progress, str) else "answering"
    for idx in progress_bar(
        length_batches([len(p) for p in prompts], batch_size), enabled=bool(progress), desc=desc, leave=False
    ):
        batch = [prompts[i] for i in idx]
        prefix_len = shared_prefix_len(batch)
        cache = None
        if prefix_len:
            prefix = torch.tensor([list(batch[0][:prefix_len])], dtype=torch.long, device=model.device)
            cache = model.forward(prefix, use_cache=True, logits_to_keep=1).past_key_values
            cache.batch_repeat_interleave(len(idx))
        rest, mask = split_layout(batch, prefix_len, pad)
        rest, mask = rest.to(model.device), mask.to(model.device)
        out = model.forward(rest, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
        last, cache = out.logits[:, -1], out.past_key_values
        gold = [list(answers[i]) for i in idx]
        lengths = torch.tensor([len(a) for a in gold])
        ans = torch.full((len(idx), int(lengths.max())), pad, dtype=torch.long)
        for row, a in enumerate(gold):
            ans[row, : len(a)] = torch.tensor(a, dtype=torch.long)
        ans_mask = torch.cat([mask, torch.ones_like(ans, device=mask.device)], dim=1)
        answer_logits = model.forward(
            ans.to(model.device), attention_mask=ans_mask, past_key_values=cache, use_cache=True
        ).logits
        scores = answer_scores(last.cpu(), answer_logits.cpu(), ans, lengths)
        ii = torch.tensor(idx)
        lp[ii], lp_sum[ii], p1[ii], rank[ii] = scores.logprob, scores.logprob_sum, scores.first_prob, scores.first_rank
        cache.crop(-ans.shape[1])  # back to the prompt (transformers 5: a negative count of tokens to drop)
        new = model.decode(last, cache, mask, max_new_tokens=max_new_tokens, drop_finished=True)
        for row, i in enumerate(idx):
            generated[i] = as_answer(model, new[row].tolist(), stops, max_new_tokens)
    return generated, AnswerScores(lp, lp_sum, p1, rank)
