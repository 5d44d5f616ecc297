"""``unpact recover`` end to end on the tiny model, and its bad-input contract."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

from tests.cli_helpers import run_cli

BASE = [
    "recover",
    "--original",
    "tiny",
    "--data",
    "builtin:synthetic_facts",
    "--keywords",
    "data",
    "--quiet",
]


def test_recover_end_to_end(ga_unlearned_dir, tmp_path, capsys):
    out = tmp_path / "rec"
    code, stdout, err = run_cli(
        BASE
        + [
            "--unlearned",
            ga_unlearned_dir,
            "--out",
            out,
            "--strategy",
            "focus",
            "quote",
            "--intervention",
            "patch",
            "pasta:other_weight=0.05",
            "--ablation",
        ],
        capsys,
    )
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    assert {
        "run.json",
        "results.csv",
        "summary.json",
        "rates.csv",
        "per_item.csv",
        "keywords.csv",
        "recovery_rates.png",
        "ablation.csv",
        "ablation.png",
    } <= names
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["recovery_rate"]) == {"focus", "quote", "patch[0,1]", "pasta[0]x0.05"}
    assert all(0 <= v <= 1 for v in summary["recovery_rate"].values())
    assert 0 <= summary["utility_destructive_rate"] <= 1 and summary["n_eligible"] > 0
    rates = pd.read_csv(out / "rates.csv")
    assert {"ci_low", "ci_high", "p_vs_random", "p_vs_random_holm", "p_vs_neutral"} <= set(rates.columns)
    assert (rates["ci_low"] <= rates["recovery_rate"]).all() and (rates["recovery_rate"] <= rates["ci_high"]).all()
    assert "recovery" in stdout and "p " in stdout and "nan" not in stdout
    lineage = json.loads((out / "run.json").read_text())["lineage"]
    assert [step["role"] for step in lineage] == ["base", "unlearned", "recovered"] and lineage[-1][
        "weights_changed"
    ] is False
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns[:4]) == ["item_id", "split", "metric", "value"] and {
        "condition",
        "emphasis",
        "model",
    } <= set(results.columns)
    sweep = pd.read_csv(out / "ablation.csv")
    assert len(sweep) == 2 * 4 * 2 * 2 and sweep.recovery_rate.between(0, 1).all()
    assert set(sweep.intervention) == {"patch", "pasta"}  # the sweep honours the interventions asked for
    assert (out / "recovery_rates.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture
def other_tokenizer_dir(tmp_path):
    """The tiny model with two vocabulary ids swapped: same architecture, different tokenizer."""
    from unpact_mech.models.loading import resolve_spec

    d = tmp_path / "retok"
    shutil.copytree(resolve_spec("tiny").path, d)
    tj = json.loads((d / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    a, b = [k for k in vocab if k.isalpha() and len(k) > 3][:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (d / "tokenizer.json").write_text(json.dumps(tj))
    return d


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--strategy", "shout"], "unknown prompt strategy 'shout'"),
        (["--intervention", "teleport"], "unknown intervention 'teleport'"),
        (["--intervention", "scale:layers=7"], r"layer 7 out of range \(model has layers 0..1\)"),
        (["--intervention", "scale:factor=0"], "factor must be > 0"),
        (["--intervention", "pasta:other_weight=-0.5"], "other_weight must be > 0"),
        (["--intervention", "pasta:factor=0.5"], "unknown option 'factor'"),
        (["--keytoken-alpha", "0"], r"--keytoken-alpha must be in \(0, 1\]"),
        (["--ablation", "--ablation-layers", "0-9"], "--ablation-layers: layer 2 out of range"),
        (["ARCH"], "different architectures"),
        (["TOKENIZER"], "different tokenizers"),
    ],
)
def test_recover_bad_input(extra, message, ga_unlearned_dir, llama_dir, other_tokenizer_dir, tmp_path, capsys):
    unlearned = ga_unlearned_dir
    if extra == ["ARCH"]:
        unlearned, extra = llama_dir, []
    elif extra == ["TOKENIZER"]:
        unlearned, extra = other_tokenizer_dir, []
    out = tmp_path / "out"
    code, _, err = run_cli(BASE + ["--unlearned", unlearned, "--out", out] + extra, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and re.search(message, lines[0]), err
    assert not out.exists() and not list(tmp_path.glob("out.tmp-*"))
