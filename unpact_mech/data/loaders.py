"""Load QA items from JSONL, CSV, local ``datasets`` directories and built-in sets, with schema adapters.

Sources: ``builtin:real_facts`` / ``builtin:synthetic_facts`` (see :mod:`unpact_mech.data.builtin`), a ``.jsonl``
file (one object per line; blank lines skipped), a ``.csv`` file (header row; ``aliases``/``keywords`` as
``|``-separated text or a JSON list), or a directory written by ``datasets.Dataset(Dict).save_to_disk`` (a
DatasetDict's split names become the items' ``split``).

Schemas (``schema=``): ``unpact`` (our record, docs/concepts.md §1), ``tofu`` and ``muse`` (``question``/``answer``
rows — TOFU's
and MUSE-KnowMem's extra fields are kept), ``wmdp`` (``question``, ``choices``, integer ``answer`` -> a
multiple-choice prompt whose answer is the option letter, the option text as an alias), and ``auto`` (``wmdp``
when a row has ``choices``, else ``unpact``). Every error names the file and line/row, and the item id.

Every format and schema goes through :func:`~unpact_mech.data.record.item_from_record`, so the data contract
(:mod:`unpact_mech.data.contract`: reserved extra field names, the three splits, the keyword rule) holds for all of
them; a DatasetDict's split names must be ``forget``, ``retain`` or ``utility`` too.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from unpact_mech.data.contract import check_split
from unpact_mech.data.record import QAItem, item_from_record
from unpact_mech.errors import InputError

SCHEMAS = ("auto", "unpact", "tofu", "muse", "wmdp")
BUILTIN_PREFIX = "builtin:"
LETTERS = "ABCDEFGHIJ"


def wmdp_record(row: dict[str, Any], where: str) -> dict[str, Any]:
    """WMDP row -> unpact record: the options are listed in the question; the answer is the letter."""
    choices, answer = row.get("choices"), row.get("answer")
    if not isinstance(choices, (list, tuple)) or not (2 <= len(choices) <= len(LETTERS)):
        raise InputError(f"{where}: field 'choices' must be a list of 2..{len(LETTERS)} options")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise InputError(f"{where}: field 'answer' must be an option index in 0..{len(choices) - 1}")
    if not isinstance(row.get("question"), str):
        raise InputError(f"{where}: missing field 'question'")
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    rec = {k: v for k, v in row.items() if k not in ("choices", "answer", "question")}
    rec.update(
        question=f"{row['question'].strip()}\n{options}\nAnswer with the letter of the correct option.",
        answer=LETTERS[answer],
        aliases=[str(choices[answer])],
        choices=list(choices),
        answer_index=answer,
    )
    return rec


def _adapt(row: Any, schema: str, where: str) -> Any:
    if not isinstance(row, dict):
        return row  # item_from_record reports the type error
    if schema == "wmdp" or (schema == "auto" and "choices" in row):
        return wmdp_record(row, where)
    return row  # unpact, tofu and muse rows already carry question/answer


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{n}", json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{n}: not valid JSON ({err.msg})") from None


def _split_list(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
            if isinstance(value, list):
                return [str(v) for v in value]
        except json.JSONDecodeError:
            pass
    return [t for t in (s.strip() for s in text.split("|")) if t]


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            raise InputError(f"{path}: empty CSV file (expected a header row)")
        for n, row in enumerate(reader, start=2):
            rec: dict[str, Any] = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
            for name in ("aliases", "keywords", "choices"):
                if name in rec:
                    rec[name] = _split_list(rec[name])
            if "answer" in rec and "choices" in rec and str(rec["answer"]).strip().isdigit():
                rec["answer"] = int(rec["answer"])
            yield f"{path}:{n}", rec


def _dataset_rows(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises FileNotFoundError/ValueError variants
        raise InputError(f"{path}: not a datasets directory ({str(err).splitlines()[0]})") from None
    parts = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    for split, part in parts:
        for n, row in enumerate(part):
            yield f"{path}[{split or 'data'}] row {n}", row, split


def _rows(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    if path.is_dir():
        yield from _dataset_rows(path)
    elif path.suffix.lower() == ".csv":
        for where, row in _csv_rows(path):
            yield where, row, None
    else:
        for where, row in _jsonl_rows(path):
            yield where, row, None


def _validate(
    rows: Iterable[tuple[str, Any, str | None]], stem: str, schema: str, default_split: str | None
) -> list[QAItem]:
    items: list[QAItem] = []
    first_seen: dict[str, str] = {}
    for n, (where, row, split) in enumerate(rows, start=1):
        row = _adapt(row, schema, where)
        item = item_from_record(row, where, default_id=f"{stem}-{n}", default_split=split or default_split)
        if item.id in first_seen:
            raise InputError(f"{where}: duplicate id {item.id!r} (first at {first_seen[item.id]})")
        first_seen[item.id] = where
        items.append(item)
    return items


def load_items(source: str | Path, *, schema: str = "auto", default_split: str | None = None) -> list[QAItem]:
    """Load and validate QA items from ``source`` (a path or ``builtin:NAME``); see the module docstring."""
    if schema not in SCHEMAS:
        raise InputError(f"unknown data schema {schema!r}; choose one of: {', '.join(SCHEMAS)}")
    if default_split is not None:
        check_split(default_split, "default_split")
    text = str(source)
    if text.startswith(BUILTIN_PREFIX):
        from unpact_mech.data.builtin import builtin_records

        name = text[len(BUILTIN_PREFIX) :]
        rows = ((f"{text}#{n}", row, None) for n, row in enumerate(builtin_records(name), start=1))
        items = _validate(rows, name, "unpact", default_split)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise InputError(f"data file {text} does not exist")
        if path.is_file() and path.suffix.lower() not in (".jsonl", ".json", ".ndjson", ".csv"):
            raise InputError(f"data file {text}: unsupported extension {path.suffix!r} (use .jsonl or .csv)")
        try:
            items = _validate(_rows(path), path.stem, schema, default_split)
        except UnicodeDecodeError:
            raise InputError(f"data file {text}: not UTF-8 text") from None
    if not items:
        raise InputError(f"data {text}: no items")
    return items
