"""Built-in QA sets, addressable as ``builtin:NAME`` wherever a data file is accepted.

* ``real_facts``: well-known facts that SmolLM2-135M-Instruct answers correctly under the default (chat)
  prompt format — verified by a slow test — with annotated keywords, a category, and a forget/retain split
  (forget = capital cities; retain = the other categories).
* ``synthetic_facts``: facts about made-up countries, for the ``tiny`` model.

Two more serve the relearning conditions (:mod:`unpact_mech.attacks.relearn`):

* ``unrelated_qa``: 33 short, benign general-knowledge questions that are NOT facts of the sets above or below, with
  answers that contain none of their answers or aliases (as the ``contains`` judge reads them; tested) — the data of
  ``relearn_unrelated``;
* ``fictional_facts``: 40 invented facts in the style of ``real_facts`` (made-up countries, people and places with
  made-up answers, e.g. "What is the capital of Veltoria?" -> "Quorimar") that no model can know — the calibration
  set of ``relearn_split`` (relearning one fold must not "recover" the other).
"""

from __future__ import annotations

import json
from importlib import resources

from unpact_mech.errors import InputError

BUILTIN_SETS = ("real_facts", "synthetic_facts", "unrelated_qa", "fictional_facts")


def builtin_records(name: str) -> list[dict]:
    if name == "synthetic_facts":
        from unpact_mech.data.synthetic import synthetic_records

        return synthetic_records()
    if name in BUILTIN_SETS:
        text = resources.files("unpact_mech.data").joinpath(f"builtin/{name}.jsonl").read_text("utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    raise InputError(
        f"unknown built-in data set {name!r}; choose one of: {', '.join('builtin:' + n for n in BUILTIN_SETS)}"
    )
