"""Built-in QA sets, addressable as ``builtin:NAME`` wherever a data file is accepted.

* ``real_facts``: well-known facts that SmolLM2-135M-Instruct answers correctly under the default (chat)
  prompt format — verified by a slow test — with annotated keywords, a category, and a forget/retain split
  (forget = capital cities; retain = the other categories).
* ``synthetic_facts``: facts about made-up countries, for the ``tiny`` model.

Two more files serve the relearning conditions (:mod:`unpact_mech.attacks.relearn`), loaded by
:func:`builtin_unrelated_items` and :func:`fictional_items`: ``unrelated_qa.jsonl`` (benign general knowledge, disjoint
from the sets above) and ``fictional_facts.jsonl`` (invented facts no model can know).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING

from unpact_mech.errors import InputError

if TYPE_CHECKING:
    from unpact_mech.data.record import QAItem

BUILTIN_SETS = ("real_facts", "synthetic_facts")


def builtin_records(name: str) -> list[dict]:
    if name == "synthetic_facts":
        from unpact_mech.data.synthetic import synthetic_records

        return synthetic_records()
    if name == "real_facts":
        text = resources.files("unpact_mech.data").joinpath("builtin/real_facts.jsonl").read_text("utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    raise InputError(
        f"unknown built-in data set {name!r}; choose one of: {', '.join('builtin:' + n for n in BUILTIN_SETS)}"
    )


def _builtin_file_items(filename: str) -> list["QAItem"]:
    """The items of ``builtin/<filename>``, read and validated by :func:`~unpact_mech.data.loaders.load_items` (so
    every record obeys the data contract; ids and errors name the file)."""
    from unpact_mech.data.loaders import load_items

    with resources.as_file(resources.files("unpact_mech.data").joinpath(f"builtin/{filename}")) as path:
        return load_items(path)


def builtin_unrelated_items() -> list["QAItem"]:
    """``unrelated_qa.jsonl``: 33 short, benign general-knowledge questions that are NOT facts of ``real_facts`` (or of
    ``synthetic_facts`` / ``fictional_facts``), with answers that contain none of those sets' answers or aliases (as
    the ``contains`` judge reads them; tested) — the data of the ``relearn_unrelated`` condition."""
    return _builtin_file_items("unrelated_qa.jsonl")


def fictional_items() -> list["QAItem"]:
    """``fictional_facts.jsonl``: 40 invented facts in the style of ``real_facts`` (made-up countries, people and places
    with made-up answers, e.g. "What is the capital of Veltoria?" -> "Quorimar") that no model can know — the
    calibration set of ``relearn_split`` (relearning one fold must not "recover" the other)."""
    return _builtin_file_items("fictional_facts.jsonl")
