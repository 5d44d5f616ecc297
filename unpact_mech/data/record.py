"""The QA record and its validation (the data contract: docs/concepts.md §1, :mod:`unpact_mech.data.contract`).

``{"id": str, "question": str, "answer": str, "aliases": [str]?, "keywords": [str]?, "split": str?}``

* ``id`` may be omitted (then ``<source>-<n>``); numbers are accepted and turned into strings.
* ``answer`` may be a JSON number (turned into its string); it must not be empty.
* each keyword must occur in the question (word-level, case-insensitive) — else an error naming the item.
* ``split`` is ``forget``, ``retain`` or ``utility``; absent, the loader's ``default_split`` (``"unsplit"`` if none).
* other fields are extra fields, kept in ``QAItem.extra`` and carried into the per-item tables; one named like a
  result-table column (:data:`~unpact_mech.data.contract.RESERVED_FIELDS`) is refused.

``QAItem(...)`` built in Python checks its keywords, split and extra field names when created, by the same function
(:func:`~unpact_mech.data.contract.check_fields`) the loaders use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from unpact_mech.data.contract import KNOWN_FIELDS, check_fields
from unpact_mech.data.splits import UNSPLIT
from unpact_mech.errors import InputError

__all__ = ["KNOWN_FIELDS", "UNSPLIT", "QAItem", "item_from_record"]


@dataclass(frozen=True)
class QAItem:
    """One question/answer pair. ``extra`` holds pass-through fields.

    Creating one checks its keywords, split and extra field names (:class:`InputError` naming the item)."""

    id: str
    question: str
    answer: str
    aliases: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    split: str = UNSPLIT
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        where = f"item {self.id!r}"
        check_fields(question=self.question, keywords=self.keywords, split=self.split, extra=self.extra, where=where)

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"id": self.id, "question": self.question, "answer": self.answer}
        if self.aliases:
            rec["aliases"] = list(self.aliases)
        if self.keywords:
            rec["keywords"] = list(self.keywords)
        rec["split"] = self.split
        rec.update(self.extra)
        return rec


def _string_list(value: Any, name: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where}: field {name!r} must be a list of strings")
    return tuple(v.strip() for v in value if v.strip())


def _text(value: Any, name: str, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(f"{where}: field {name!r} must be a string")
    text = str(value).strip()
    if not text:
        raise InputError(f"{where}: field {name!r} is empty")
    return text


def item_from_record(obj: Any, where: str, *, default_id: str, default_split: str | None = None) -> QAItem:
    """Validate one raw record; ``where`` locates it in error messages (e.g. ``"facts.jsonl:3"``)."""
    if not isinstance(obj, Mapping):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    item_id = obj.get("id", default_id)
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or not str(item_id).strip():
        raise InputError(f"{where}: field 'id' must be a non-empty string")
    item_id = str(item_id).strip()
    where = f"{where} (item {item_id!r})"
    for required in ("question", "answer"):
        if required not in obj or obj[required] is None:
            raise InputError(f"{where}: missing field {required!r}")
    question = _text(obj["question"], "question", where)
    answer = _text(obj["answer"], "answer", where)
    aliases = _string_list(obj.get("aliases"), "aliases", where)
    keywords = _string_list(obj.get("keywords"), "keywords", where)
    split = obj.get("split")
    if isinstance(split, str):
        split = split.strip()
    if split is None or split == "":  # absent, null or empty: the default
        split = default_split or UNSPLIT
    extra = {k: v for k, v in obj.items() if k not in KNOWN_FIELDS}
    check_fields(question=question, keywords=keywords, split=split, extra=extra, where=where)  # file:line in errors
    return QAItem(item_id, question, answer, aliases, keywords, split, extra)
