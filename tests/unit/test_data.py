"""QA record validation, loaders (JSONL, CSV, datasets directories, built-ins) and schema adapters."""

from __future__ import annotations

import json

import pytest

from unpact_mech.data import load_items
from unpact_mech.data.synthetic import synthetic_records
from unpact_mech.errors import InputError


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_full_record_and_passthrough(tmp_path):
    f = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "id": "q1",
                "question": "What is the capital of France?",
                "answer": "Paris",
                "aliases": ["paris city"],
                "keywords": ["capital", "france"],
                "split": "forget",
                "source": "atlas",
                "difficulty": 2,
            },
            "",
            {"question": "In what year did Apollo 11 land?", "answer": 1969},
        ],
    )
    a, b = load_items(f)
    assert (a.id, a.answer, a.aliases, a.keywords, a.split) == (
        "q1",
        "Paris",
        ("paris city",),
        ("capital", "france"),
        "forget",
    )
    assert a.extra == {"source": "atlas", "difficulty": 2}
    assert (b.id, b.answer, b.split) == ("d-2", "1969", "unsplit")  # numbers become strings; ids are generated


def test_csv_with_list_columns(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text(
        "id,question,answer,aliases,keywords,split\n"
        "a,Who wrote Hamlet?,William Shakespeare,Shakespeare|The Bard,Hamlet|wrote,retain\n"
        'b,What is 2+2?,4,"[""four""]",,forget\n'
    )
    a, b = load_items(f)
    assert a.aliases == ("Shakespeare", "The Bard") and a.keywords == ("Hamlet", "wrote") and a.split == "retain"
    assert b.aliases == ("four",) and b.keywords == ()


def test_datasets_directory_splits(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        {
            "forget": datasets.Dataset.from_list([{"question": "What is the capital of Italy?", "answer": "Rome"}]),
            "retain": datasets.Dataset.from_list([{"question": "What is the capital of Spain?", "answer": "Madrid"}]),
        }
    )
    dd.save_to_disk(str(tmp_path / "ds"))
    items = load_items(tmp_path / "ds")
    assert [(i.split, i.answer) for i in items] == [("forget", "Rome"), ("retain", "Madrid")]


def test_tofu_and_muse_rows_keep_their_fields(tmp_path):
    tofu = write_jsonl(
        tmp_path / "tofu.jsonl",
        [
            {
                "question": "Who is the author of 'Nebula'?",
                "answer": "Jaime Vasquez wrote it.",
                "paraphrased_answer": "It was Jaime Vasquez.",
                "perturbed_answer": ["A", "B"],
            }
        ],
    )
    muse = write_jsonl(
        tmp_path / "muse.jsonl", [{"question": "Who lives at 4 Privet Drive?", "answer": "Harry Potter"}]
    )
    (t,) = load_items(tofu, schema="tofu", default_split="forget")
    (m,) = load_items(muse, schema="muse")
    assert t.answer == "Jaime Vasquez wrote it." and t.split == "forget"
    assert t.extra["paraphrased_answer"] == "It was Jaime Vasquez." and t.extra["perturbed_answer"] == ["A", "B"]
    assert m.answer == "Harry Potter"


def test_wmdp_becomes_multiple_choice(tmp_path):
    f = write_jsonl(
        tmp_path / "wmdp.jsonl",
        [{"question": "Which is a virus?", "choices": ["E. coli", "Influenza", "Yeast", "Salmonella"], "answer": 1}],
    )
    (item,) = load_items(f)  # auto-detected by the 'choices' field
    assert item.answer == "B" and item.aliases == ("Influenza",)
    assert item.question.splitlines() == [
        "Which is a virus?",
        "A. E. coli",
        "B. Influenza",
        "C. Yeast",
        "D. Salmonella",
        "Answer with the letter of the correct option.",
    ]
    assert item.extra["answer_index"] == 1


def test_builtins():
    synth = load_items("builtin:synthetic_facts")
    assert len(synth) == 32 and {i.split for i in synth} == {"forget", "retain", "utility"}
    assert [sum(i.split == s for i in synth) for s in ("forget", "retain", "utility")] == [8, 12, 12]
    assert [r["answer"] for r in synthetic_records()] == [i.answer for i in synth]  # deterministic
    real = load_items("builtin:real_facts")
    assert len(real) >= 60
    assert all(i.keywords for i in real) and {i.split for i in real} == {"forget", "retain", "utility"}
    utility = [i for i in real if i.split == "utility"]
    assert len(utility) >= 40 and len({i.extra["category"] for i in utility}) >= 5
    assert not any("capital" in (i.question + i.answer).lower() for i in utility)  # nothing about the forget topic
    assert len({i.extra["category"] for i in real}) >= 4


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"question": "Q?", "answer": "A"}\n{"question": "Q2?", "answer": \n', r"d\.jsonl:2: not valid JSON"),
        ('["not", "an", "object"]\n', r"d\.jsonl:1: expected a JSON object, got list"),
        ('{"id": "x", "answer": "A"}\n', r"d\.jsonl:1 \(item 'x'\): missing field 'question'"),
        ('{"id": "x", "question": "Q?"}\n', r"d\.jsonl:1 \(item 'x'\): missing field 'answer'"),
        ('{"id": "x", "question": "Q?", "answer": "  "}\n', r"d\.jsonl:1 \(item 'x'\): field 'answer' is empty"),
        (
            '{"id": "x", "question": "What is the capital of France?", "answer": "Paris", "keywords": ["Paris"]}\n',
            r"item 'x'\): keyword 'Paris' does not occur in the question",
        ),
        (
            '{"id": "x", "question": "What is the capitals?", "answer": "A", "keywords": ["capital"]}\n',
            r"keyword 'capital' does not occur",
        ),  # word-level: no match inside "capitals"
        (
            '{"id": "x", "question": "Q?", "answer": "A", "aliases": "ok", "keywords": [1]}\n',
            r"field 'keywords' must be a list of strings",
        ),
        (
            '{"id": "x", "question": "Q?", "answer": "A"}\n{"id": "x", "question": "Q?", "answer": "B"}\n',
            r"d\.jsonl:2: duplicate id 'x' \(first at .*d\.jsonl:1\)",
        ),
        (
            '{"id": "x", "question": "Q?", "answer": "A", "split": "forgt"}\n',
            r"d\.jsonl:1 \(item 'x'\): split 'forgt' is not one of forget, retain, utility",
        ),
        (
            '{"id": "x", "question": "Q?", "answer": "A", "value": 1}\n',
            r"d\.jsonl:1 \(item 'x'\): field 'value' is a name the result tables use; rename it",
        ),
        ("\n\n", r"no items"),
        ('{"question": "Q?", "answer": "A", "choices": ["a", "b"], "answer": 5}\n', r"option index in 0\.\.1"),
    ],
)
def test_bad_records_name_file_line_and_item(tmp_path, content, message):
    f = tmp_path / "d.jsonl"
    f.write_text(content)
    with pytest.raises(InputError, match=message) as err:
        load_items(f)
    assert "\n" not in str(err.value)


def test_keyword_match_is_case_insensitive_and_multiword(tmp_path):
    f = write_jsonl(
        tmp_path / "k.jsonl",
        [
            {
                "question": "Where is the Statue of Liberty?",
                "answer": "New York",
                "keywords": ["statue of liberty", "WHERE"],
            }
        ],
    )
    (item,) = load_items(f)
    assert item.keywords == ("statue of liberty", "WHERE")


def test_missing_paths_and_unknown_names(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_items(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="unknown built-in data set 'nope'"):
        load_items("builtin:nope")
    with pytest.raises(InputError, match="unknown data schema"):
        load_items("builtin:real_facts", schema="squad")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="unsupported extension"):
        load_items(tmp_path / "x.txt")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="not UTF-8"):
        load_items(tmp_path / "bin.jsonl")


def test_loading_does_not_modify_the_file(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"question": "Q?", "answer": "A"}])
    before = f.read_bytes(), f.stat().st_mtime_ns
    load_items(f)
    assert (f.read_bytes(), f.stat().st_mtime_ns) == before
