"""Built-in QA sets, addressable as ``builtin:NAME`` wherever a data file is accepted.

* ``real_facts``: well-known facts that SmolLM2-135M-Instruct answers correctly under the default (chat)
  prompt format — verified by a slow test — with annotated keywords, a category, and a forget/retain split
  (forget = capital cities; retain = the other categories).
* ``synthetic_facts``: facts about made-up countries, for the ``tiny`` model.
"""

from __future__ import annotations

import json
from importlib import resources

from unpact_mech.errors import InputError

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
