"""Prompt format, tokenisation/alignment, teacher-forced scoring, greedy answers, judges, evaluation."""

from unpact_mech.scoring.evaluate import evaluate_items, summarize_evaluation, to_long
from unpact_mech.scoring.judges import contains_answer, rouge_l_recall
from unpact_mech.scoring.logprob import score_answers
from unpact_mech.scoring.multiple_choice import score_multiple_choice, summarize_multiple_choice
from unpact_mech.scoring.prompt import PromptFormat, default_prompt_format
from unpact_mech.scoring.tokens import EncodedPrompt, EncodedQA, encode_item, encode_items, encode_prompt

__all__ = [
    "EncodedPrompt",
    "EncodedQA",
    "PromptFormat",
    "contains_answer",
    "default_prompt_format",
    "encode_item",
    "encode_items",
    "encode_prompt",
    "evaluate_items",
    "rouge_l_recall",
    "score_answers",
    "score_multiple_choice",
    "summarize_evaluation",
    "summarize_multiple_choice",
    "to_long",
]
