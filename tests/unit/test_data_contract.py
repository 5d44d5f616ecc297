"""The data contract (docs/concepts.md §1, ``unpact_mech/data/contract.py``): extra fields named like a result-table
column are refused at load, in every format and by every command that takes --data, before any model is loaded and
with nothing written; splits are exactly forget/retain/utility; ``QAItem(...)`` checks itself; list/dict extras
reach the per-item tables as JSON text; and every column the commands write is on the reserved list."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pandas as pd
import pytest

from tests.cli_helpers import run_cli
from unpact_mech.data import RESERVED_FIELDS, QAItem, load_items
from unpact_mech.data.contract import COLUMNS_BY_COMMAND, ITEM_COLUMNS, KNOWN_FIELDS, extra_columns
from unpact_mech.data.synthetic import synthetic_records
from unpact_mech.errors import InputError

#: Every command that takes --data, with the arguments it needs besides --data and --out (tiny model, cheap flags).
COMMANDS = {
    "evaluate": ["--model", "tiny"],
    "attribute": ["--model", "tiny", "--method", "occlusion"],
    "unlearn": ["--model", "tiny", "--method", "ga", "--steps", "1"],
    "recover": ["--original", "tiny", "--unlearned", "tiny", "--strategy", "none", "--intervention", "none"],
    "demo": ["--model", "tiny", "--methods", "ga"],
}
#: (command, reserved name): each command against the names it writes; the demo writes every command's tables.
CASES = [
    (command, name)
    for command in COMMANDS
    for name in sorted(RESERVED_FIELDS if command == "demo" else COLUMNS_BY_COMMAND[command])
    if name not in KNOWN_FIELDS  # split, question, answer: record fields, so never extra fields
]
BAD_LINE = 3  # the offending field sits on this line of the data file


def _records(n: int = 6) -> list[dict]:
    """``n`` synthetic facts covering all three splits (the tiny model knows them)."""
    recs = synthetic_records()
    by_split = {s: [r for r in recs if r["split"] == s] for s in ("forget", "retain", "utility")}
    out = [rec for group in zip(*by_split.values()) for rec in group]
    return out[:n]


def _write_jsonl(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _with_field(path, name: str, value="x"):
    """A JSONL file whose line BAD_LINE carries ``name: value``; returns (path, the id on that line)."""
    rows = _records()
    rows[BAD_LINE - 1] = rows[BAD_LINE - 1] | {name: value}
    return _write_jsonl(path, rows), rows[BAD_LINE - 1]["id"]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load a model fails the test (the data must be refused first)."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the data was checked")

    import unpact_mech.models
    import unpact_mech.models.loading

    monkeypatch.setattr(unpact_mech.models, "load_model", refuse)
    monkeypatch.setattr(unpact_mech.models.loading, "load_model", refuse)


def _refused(command: str, data, tmp_path, capsys) -> str:
    """Run ``command`` on ``data``: exit 2, one line, no traceback, nothing written; return the message."""
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli([command, *COMMANDS[command], "--data", data, "--out", out, "--quiet"], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unpact: error: "), err
    assert "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp dir
    return lines[0]


def test_every_command_with_data_is_covered():
    """The commands that take --data are exactly the ones tested here (a new one must join COMMANDS)."""
    from unpact_mech.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    with_data = {name for name, p in sub.choices.items() if any("--data" in a.option_strings for a in p._actions)}
    assert with_data == set(COMMANDS) == set(COLUMNS_BY_COMMAND)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_the_model_guard_is_live(command, tmp_path, capsys, no_model_loading):
    """With good data each command does reach the (patched) model loader, so the refusals below prove ordering."""
    data = _write_jsonl(tmp_path / "good.jsonl", _records())
    with pytest.raises(AssertionError, match="a model was loaded"):
        run_cli([command, *COMMANDS[command], "--data", data, "--out", tmp_path / "out", "--quiet"], capsys)


@pytest.mark.parametrize("command, name", CASES)
def test_reserved_extra_field_is_refused_by_every_command(command, name, tmp_path, capsys, no_model_loading):
    data, item_id = _with_field(tmp_path / "data.jsonl", name)
    line = _refused(command, data, tmp_path, capsys)
    assert line.endswith(
        f"{data}:{BAD_LINE} (item {item_id!r}): field {name!r} is a name the result tables use; rename it"
    ), line


@pytest.mark.parametrize("command", list(COMMANDS))
def test_unknown_split_is_refused_by_every_command(command, tmp_path, capsys, no_model_loading):
    data, item_id = _with_field(tmp_path / "data.jsonl", "split", "forgt")
    line = _refused(command, data, tmp_path, capsys)
    assert f"{data}:{BAD_LINE} (item {item_id!r}): split 'forgt' is not one of forget, retain, utility" in line


def test_reserved_names_cover_the_evaluation_frame_and_its_labels():
    from unpact_mech.scoring.evaluate import LONG_ID_COLUMNS, METRICS

    assert set(METRICS) | set(LONG_ID_COLUMNS) <= set(COLUMNS_BY_COMMAND["evaluate"])
    assert set(ITEM_COLUMNS) <= set(COLUMNS_BY_COMMAND["recover"])
    assert RESERVED_FIELDS & set(KNOWN_FIELDS) == {"split", "question", "answer"}  # columns that are record fields
    # fields the built-in sets and the schema adapters carry stay usable
    assert not RESERVED_FIELDS & {"category", "source", "choices", "answer_index", "paraphrased_answer"}


# --- every loader format, and the schema adapters -------------------------------------------------------------


def _csv(path, extra_header: str, extra_value: str):
    path.write_text(
        f"id,question,answer,split,{extra_header}\n"
        "a,What is the capital of Zorblat?,Marrow,forget,\n"  # an empty cell is no field
        f"b,What is the capital of Quenara?,Kravi,retain,{extra_value}\n"
    )
    return path


def _dataset_dir(path, first_extra: dict, second_split: str = "retain"):
    """A saved DatasetDict: ``forget`` (one row, with ``first_extra``) and ``second_split`` (one row)."""
    import datasets

    first = {"question": "What is the capital of Zorblat?", "answer": "Marrow"} | first_extra
    second = {"question": "What is the capital of Quenara?", "answer": "Kravi"}
    parts = {"forget": [first], second_split: [second]}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in parts.items()}).save_to_disk(str(path))
    return path


def test_reserved_name_is_refused_in_every_format(tmp_path):
    f = _csv(tmp_path / "d.csv", "kind", "x")
    with pytest.raises(InputError, match=r"d\.csv:3 \(item 'b'\): field 'kind' is a name the result tables use"):
        load_items(f)
    ds = _dataset_dir(tmp_path / "ds", {"value": "x"})
    with pytest.raises(InputError, match=r"ds\[forget\] row 0 \(item 'ds-1'\): field 'value' is a name"):
        load_items(ds)
    for schema in ("tofu", "muse", "unpact"):
        rows = [{"question": "Who wrote 'Nebula'?", "answer": "Jaime", "metric": "x"}]
        f = _write_jsonl(tmp_path / f"{schema}.jsonl", rows)
        with pytest.raises(InputError, match=rf"{schema}\.jsonl:1 \(item '{schema}-1'\): field 'metric' is a name"):
            load_items(f, schema=schema)
    wmdp = _write_jsonl(
        tmp_path / "wmdp.jsonl", [{"question": "Which is a virus?", "choices": ["a", "flu"], "answer": 1, "rank": 3}]
    )
    with pytest.raises(InputError, match=r"wmdp\.jsonl:1 \(item 'wmdp-1'\): field 'rank' is a name"):
        load_items(wmdp)


def test_unknown_split_is_refused_in_every_format(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("id,question,answer,split\na,Q?,A,forget\nb,Q?,B,Retain\n")
    with pytest.raises(InputError, match=r"d\.csv:3 \(item 'b'\): split 'Retain' is not one of forget, retain, util"):
        load_items(f)
    ds = _dataset_dir(tmp_path / "ds", {}, "train")
    with pytest.raises(InputError, match=r"ds\[train\] row 0 \(item 'ds-2'\): split 'train' is not one of"):
        load_items(ds)
    no_split = _write_jsonl(tmp_path / "n.jsonl", [{"question": "Q?", "answer": "A"}])
    with pytest.raises(InputError, match=r"^default_split: split 'test' is not one of forget, retain, utility"):
        load_items(no_split, default_split="test")
    j = _write_jsonl(tmp_path / "j.jsonl", [{"question": "Q?", "answer": "A", "split": 3}])
    with pytest.raises(InputError, match=r"j\.jsonl:1 \(item 'j-1'\): field 'split' must be a string"):
        load_items(j)


def test_splits_are_exact_and_absent_means_unsplit(tmp_path):
    rows = [
        {"id": "f", "question": "Q?", "answer": "A", "split": " forget "},  # surrounding white space is stripped
        {"id": "n", "question": "Q?", "answer": "A"},
        {"id": "e", "question": "Q?", "answer": "A", "split": ""},
        {"id": "u", "question": "Q?", "answer": "A", "split": "unsplit"},  # the default, spelled out
        {"id": "z", "question": "Q?", "answer": "A", "split": None},
    ]
    items = load_items(_write_jsonl(tmp_path / "s.jsonl", rows))
    assert [i.split for i in items] == ["forget", "unsplit", "unsplit", "unsplit", "unsplit"]
    for value in (0, False, ["forget"]):
        bad = _write_jsonl(tmp_path / "b.jsonl", [{"id": "b", "question": "Q?", "answer": "A", "split": value}])
        with pytest.raises(InputError, match=r"b\.jsonl:1 \(item 'b'\): field 'split' must be a string"):
            load_items(bad)
    no_split = _write_jsonl(tmp_path / "t.jsonl", rows[1:2] + rows[4:])  # absent and null take the loader's default
    assert [i.split for i in load_items(no_split, default_split="retain")] == ["retain", "retain"]


# --- QAItem built in Python ----------------------------------------------------------------------------------


def test_qaitem_checks_its_keywords_split_and_extras_when_created():
    ok = QAItem("q", "What is the Capital of New York?", "Albany", keywords=("capital", "new york"), split="forget")
    assert ok.split == "forget" and QAItem("d", "Q?", "A").split == "unsplit"
    cases = [
        ({"keywords": ("zebra",)}, r"^item 'q7': keyword 'zebra' does not occur in the question$"),
        ({"keywords": ("capital",), "question": "Which capitals?"}, r"keyword 'capital' does not occur"),  # word-level
        ({"split": "forgt"}, r"^item 'q7': split 'forgt' is not one of forget, retain, utility"),
        ({"split": "Forget"}, r"split 'Forget' is not one of"),
        ({"extra": {"kind": 1}}, r"^item 'q7': field 'kind' is a name the result tables use; rename it$"),
        ({"extra": {"keywords": ["x"]}}, r"extra field 'keywords' is a field of the record itself"),
    ]
    for kwargs, message in cases:
        fields = {"question": "What is the capital of Zorblat?"} | kwargs
        with pytest.raises(InputError, match=message):
            QAItem("q7", fields.pop("question"), "Marrow", **fields)


@pytest.mark.parametrize(
    "keyword, ok", [("statue of LIBERTY", True), ("capitals", True), ("capital", False), ("Liberty,", True)]
)
def test_the_loader_and_qaitem_share_one_rule(keyword, ok, tmp_path):
    """The same keyword passes or fails in both (case-insensitive, multi-word, not inside a longer word)."""
    question = "Where is the Statue of Liberty, in the capitals?"
    f = _write_jsonl(tmp_path / "k.jsonl", [{"id": "k", "question": question, "answer": "NY", "keywords": [keyword]}])
    for build in (lambda: load_items(f), lambda: QAItem("k", question, "NY", keywords=(keyword,))):
        if ok:
            build()
        else:
            with pytest.raises(InputError, match=f"keyword {keyword!r} does not occur"):
                build()


def test_to_record_round_trips_through_the_loader(tmp_path):
    items = [
        QAItem("a", "What is the capital of Zorblat?", "Marrow", ("M",), ("capital",), "forget", {"tags": ["x"]}),
        QAItem("b", "Q?", "B"),
    ]
    f = _write_jsonl(tmp_path / "r.jsonl", [it.to_record() for it in items])
    assert load_items(f) == items and [i.extra for i in load_items(f)] == [{"tags": ["x"]}, {}]


# --- extras reach the tables ---------------------------------------------------------------------------------


def test_list_and_dict_extras_become_json_text():
    cols = extra_columns({"source": "atlas", "n": 2, "flag": True, "none": None, "tags": ["a", 1], "meta": {"é": [1]}})
    assert cols == {"source": "atlas", "n": 2, "flag": True, "none": None, "tags": '["a", 1]', "meta": '{"é": [1]}'}
    assert extra_columns({"t": ("a", "b")}) == {"t": '["a", "b"]'}


def test_extras_reach_items_csv_and_every_written_column_is_reserved(tmp_path, capsys):
    """evaluate / attribute / unlearn / recover on a small file with harmless extras: the extras appear in the per-item
    tables (lists and dicts as JSON text), and every other column written per item or per row is reserved."""
    rows = [r | {"source": "atlas", "tags": ["a", n], "meta": {"k": n}} for n, r in enumerate(_records(3))]
    data = _write_jsonl(tmp_path / "d.jsonl", rows)
    extras = {"category", "source", "tags", "meta"}
    out = {c: tmp_path / c for c in COMMANDS if c != "demo"}
    argv = {
        "evaluate": ["evaluate", "--model", "tiny"],
        "attribute": ["attribute", "--model", "tiny", "--method", "occlusion", "--target", "answer"],
        "unlearn": ["unlearn", "--model", "tiny", "--method", "ga", "--steps", "1", "--lr", "1e-3"],
        "recover": ["recover", "--original", "tiny", "--unlearned", out["unlearn"], "--strategy", "none"]
        + ["--intervention", "none", "--no-controls"],
    }
    for command, args in argv.items():
        code, _, err = run_cli([*args, "--data", data, "--out", out[command], "--quiet"], capsys)
        assert code == 0, err

    items = pd.read_csv(out["evaluate"] / "items.csv")
    assert list(items.columns) == [*ITEM_COLUMNS, "category", "source", "tags", "meta"]
    assert (items.source == "atlas").all()
    assert [json.loads(t) for t in items.tags] == [["a", 0], ["a", 1], ["a", 2]]
    assert [json.loads(m) for m in items.meta] == [{"k": 0}, {"k": 1}, {"k": 2}]
    per_item = pd.read_csv(out["recover"] / "per_item.csv")
    assert extras <= set(per_item.columns) and (per_item.source == "atlas").all()

    written = {
        "evaluate": [items, pd.read_csv(out["evaluate"] / "results.csv")],
        "attribute": [pd.read_csv(out["attribute"] / "results.csv")],
        "unlearn": [pd.read_csv(out["unlearn"] / "results.csv")],
        "recover": [per_item, pd.read_csv(out["recover"] / "results.csv")],
    }
    for command, frames in written.items():
        for frame in frames:
            assert set(frame.columns) - extras <= set(COLUMNS_BY_COMMAND[command]), command


def test_demo_results_columns_are_reserved():
    from unpact_mech.demo import headline_long

    rates = pd.DataFrame(
        [
            {
                "kind": "strategy",
                "condition": "c",
                "recovery_rate": 0.5,
                "random_control_rate": 0.1,
                "p_vs_random_holm": 1,
                "gap_fraction": 0.4,
            }
        ]
    )
    long = headline_long("ga", {}, {}, SimpleNamespace(rates=rates, summary={}))
    assert set(long.columns) <= set(COLUMNS_BY_COMMAND["demo"])


def test_reserved_names_are_documented():
    """docs/concepts.md §1 lists every reserved name."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "concepts.md").read_text()
    section = text[text.index("## 1. The data record") : text.index("## 2. What every command writes")]
    documented = set(re.findall(r"`([a-z_0-9]+)`", section))
    assert documented >= RESERVED_FIELDS, sorted(RESERVED_FIELDS - documented)
