"""The data contract in one place: the names the result tables use, the splits, the keyword rule, and how extra
fields reach the tables (docs/concepts.md §1).

* **Reserved names.** An item's extra fields (anything but ``id, question, answer, aliases, keywords, split``) are
  carried into the per-item tables (``items.csv`` of ``evaluate``, ``per_item.csv`` of ``recover``), next to the
  columns the commands write. So no extra field may be named like a column of those tables or of any command's
  long ``results.csv``: :data:`RESERVED_FIELDS`, listed per command in :data:`COLUMNS_BY_COMMAND`. A colliding
  field is refused (never renamed or prefixed): one :class:`InputError` line naming the file, line, item and field.
  Tables that never carry extra fields (``rates.csv``, ``keywords.csv``, ``comparison.csv``, ``keytoken_change.csv``,
  ``ablation.csv``, ``dynamics.csv``, ``training_log.csv``) reserve nothing.
* **Splits** are exactly :data:`~unpact_mech.data.splits.SPLITS` (``forget``, ``retain``, ``utility``); an item
  given no split is ``unsplit`` (evaluated, never trained on). Anything else is refused.
* **Keywords** must each occur in the question by the rule of :func:`~unpact_mech.data.text.keyword_spans`.
* **Extra values**: a scalar (text, number, bool, null) is carried as it is; a list or a dict is carried as its
  JSON text (:func:`extra_columns`), so no extra field is dropped.

:func:`check_fields` applies all of it; the loaders (through ``item_from_record``) and ``QAItem(...)`` call it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from unpact_mech.data.splits import SPLITS, UNSPLIT
from unpact_mech.data.text import keyword_spans
from unpact_mech.errors import InputError

#: The fields of the record itself (docs/concepts.md §1); every other field is an extra field.
KNOWN_FIELDS = ("id", "question", "answer", "aliases", "keywords", "split")

#: Columns of the one-row-per-item evaluation frame (``items.csv``; also inside ``per_item.csv``).
ITEM_COLUMNS = (
    "item_id", "split", "question", "answer", "generation",
    "correct", "rouge_l", "logprob", "first_prob", "rank", "truncated",
)  # fmt: skip
#: Columns ``evaluate --mc-scoring loglik`` adds to the one-row-per-item frame (scoring/multiple_choice.py).
MC_ITEM_COLUMNS = (
    "gold_letter", "gold_index", "predicted_letter", "predicted_index", "predicted_norm_letter", "correct_norm",
    "gold_loglik", "option_loglik", "option_length",
)  # fmt: skip
#: Columns of every long ``results.csv`` besides the identifying ones of each command.
LONG_COLUMNS = ("item_id", "split", "metric", "value")
#: The identifying columns of attribution rows (token/word units, heads, residual components, hooks).
ATTRIBUTION_COLUMNS = (
    "model", "method", "target", "level", "unit", "position", "n_tokens", "token", "word_index",
    "is_keyword", "is_keytoken", "layer", "head", "component", "hook",
)  # fmt: skip
#: Every column each command writes per item or per row into a table that carries (or sits beside) extra fields.
COLUMNS_BY_COMMAND: dict[str, tuple[str, ...]] = {
    "evaluate": (*ITEM_COLUMNS, *MC_ITEM_COLUMNS, "metric", "value", "model"),
    "attribute": (*LONG_COLUMNS, *ATTRIBUTION_COLUMNS),
    "unlearn": (*LONG_COLUMNS, "generation", "step", "method"),
    "recover": (*ITEM_COLUMNS, "metric", "value", "model", "kind", "condition", "emphasis", "arm"),
    "demo": (*LONG_COLUMNS, "method", "stage", "kind", "condition"),
}
#: Names an extra field may not have: the result tables use them.
RESERVED_FIELDS: frozenset[str] = frozenset(name for names in COLUMNS_BY_COMMAND.values() for name in names)


def check_split(split: Any, where: str) -> str:
    """``split`` if it is one of :data:`SPLITS` (or ``unsplit``, the value of an item given none); else
    :class:`InputError` naming ``where``, the value and the allowed values."""
    if not isinstance(split, str):
        raise InputError(f"{where}: field 'split' must be a string")
    if split not in (*SPLITS, UNSPLIT):
        raise InputError(
            f"{where}: split {split!r} is not one of {', '.join(SPLITS)} (leave 'split' out for an item in no split)"
        )
    return split


def check_keywords(question: str, keywords: Iterable[Any], where: str) -> None:
    """Each keyword occurs in ``question`` (word-level, case-insensitive: :func:`keyword_spans`)."""
    for kw in keywords:
        if not isinstance(kw, str):
            raise InputError(f"{where}: field 'keywords' must be a list of strings")
        if not keyword_spans(question, kw):
            raise InputError(f"{where}: keyword {kw!r} does not occur in the question")


def check_extra_names(extra: Mapping[str, Any], where: str) -> None:
    """No extra field is a record field or a :data:`RESERVED_FIELDS` name (the first offender is named)."""
    for name in extra:
        if name in KNOWN_FIELDS:
            raise InputError(f"{where}: extra field {name!r} is a field of the record itself; set it directly")
        if name in RESERVED_FIELDS:
            raise InputError(f"{where}: field {name!r} is a name the result tables use; rename it")


def check_fields(*, question: str, keywords: Iterable[Any], split: Any, extra: Mapping[str, Any], where: str) -> None:
    """The whole contract on one item's fields; ``where`` locates it (``"facts.jsonl:3 (item 'q7')"``)."""
    check_extra_names(extra, where)
    check_split(split, where)
    check_keywords(question, keywords, where)


def table_value(value: Any) -> Any:
    """An extra field's value as a table cell: a list, tuple or dict as its JSON text, anything else unchanged."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def extra_columns(extra: Mapping[str, Any]) -> dict[str, Any]:
    """The extra fields as per-item table columns (:func:`table_value` of each; none is dropped)."""
    return {name: table_value(value) for name, value in extra.items()}
