"""``unpact attribute`` end to end on the tiny model, and the one-line exit-2 contract for bad input."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch

from tests.cli_helpers import run_cli
from unpact_mech import load_model
from unpact_mech.attribution import keytoken_mask

BASE = ["attribute", "--model", "tiny", "--data", "builtin:synthetic_facts", "--quiet"]


@pytest.fixture(scope="module")
def perturbed_tiny_dir(tmp_path_factory):
    """The tiny model with noise on its blocks, saved as a model directory (a stand-in for an unlearned model)."""
    model = load_model("tiny")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("model.layers."):
                p.add_(0.08 * torch.randn(p.shape, generator=g))
    out = tmp_path_factory.mktemp("perturbed") / "noisy"
    model.lineage = model.lineage + [{"role": "unlearned", "method": "test-noise"}]
    model.save(out)
    return out


def test_occlusion_end_to_end_and_backend_determinism(tmp_path, capsys):
    out = tmp_path / "occ"
    code, stdout, err = run_cli(BASE + ["--method", "occlusion", "--level", "word", "--out", out], capsys)
    assert code == 0, err
    assert "keyword hit rate" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "run.json", "summary.json", "tokens.html"]
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns[:4]) == ["item_id", "split", "metric", "value"]
    assert {
        "model",
        "method",
        "target",
        "level",
        "unit",
        "position",
        "token",
        "word_index",
        "is_keyword",
        "is_keytoken",
    } <= set(results.columns)
    units = results[results.metric == "contribution"]
    assert set(units.method) == {"occlusion"} and units.item_id.nunique() == 32
    assert set(results.metric) == {"contribution", "target_value"}
    assert set(units.split) == {"forget", "retain", "utility"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_items"] == 32 and summary["method"] == "occlusion" and summary["level"] == "word"
    # the tiny model answers from the country name: the top word is a keyword for most items
    assert 0.75 <= summary["keyword_hit_rate"] <= 1.0
    assert 0 <= summary["keyword_precision"] <= 1 and 0 <= summary["keyword_recall"] <= 1
    top = units.loc[units.groupby("item_id")["value"].idxmax()]
    assert summary["keyword_hit_rate"] == pytest.approx(top["is_keyword"].mean())
    assert summary["mean_target_value"] == pytest.approx(results.loc[results.metric == "target_value", "value"].mean())
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "attribute" and run["seed"] == 0 and run["config"]["method"] == "occlusion"
    assert "<script" not in (out / "tokens.html").read_text().lower()
    # other backend, same numbers; --overwrite replaces atomically
    code, _, err = run_cli(
        BASE + ["--method", "occlusion", "--level", "word", "--out", out, "--overwrite", "--backend", "nnsight"], capsys
    )
    assert code == 0, err
    again = pd.read_csv(out / "results.csv")
    assert (again.value - results.value).abs().max() < 1e-4
    # --batching and the KeyToken rule's flags reach the method and the summary; the scores do not change
    flags = ["--batching", "batched", "--batch-size", "5", "--keytoken-alpha", "0.9", "--keytoken-beta", "1"]
    code, _, err = run_cli(
        BASE + ["--method", "occlusion", "--level", "word", "--out", out, "--overwrite", *flags], capsys
    )
    assert code == 0, err
    strict = pd.read_csv(out / "results.csv")
    assert (strict.value - results.value).abs().max() < 1e-4
    run = json.loads((out / "run.json").read_text())
    options = run["config"]["options"]
    assert options == {"mode": "delete", "baseline_token": None, "batching": "batched", "batch_size": 5}
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["keytoken_alpha"], summary["keytoken_beta"]) == (0.9, 1) and "alpha" not in summary
    units = strict[strict.metric == "contribution"]
    for _, item in units.groupby("item_id"):
        want = keytoken_mask(torch.tensor(item.value.to_numpy()), keytoken_alpha=0.9, keytoken_beta=1)
        assert item.is_keytoken.tolist() == want.tolist()
    assert units.is_keytoken.sum() < results[results.metric == "contribution"].is_keytoken.sum()


def test_every_method_runs_and_compare_to_writes_the_comparison(tmp_path, capsys, perturbed_tiny_dir):
    expected = {
        "grad_x_input": {"tokens.html"},
        "integrated_gradients": {"tokens.html"},
        "attention": {"tokens.html", "attention_heads.png"},
        "residual": {"residual_components.png", "logit_lens.png"},
    }
    extra = {
        "grad_x_input": ["--hooks", "blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"],
        "integrated_gradients": ["--steps", "8"],
    }
    for method, files in expected.items():
        out = tmp_path / method
        code, stdout, err = run_cli(BASE + ["--method", method, "--out", out] + extra.get(method, []), capsys)
        assert code == 0, (method, err)
        assert {p.name for p in out.iterdir()} == {"run.json", "results.csv", "summary.json"} | files, method
        summary = json.loads((out / "summary.json").read_text())
        assert (summary["keyword_hit_rate"] is None) == (method == "residual")
    results = pd.read_csv(tmp_path / "grad_x_input" / "results.csv")
    assert set(results.method) == {"grad_x_input", "grad_x_activation"}
    assert set(results.dropna(subset=["hook"]).hook) == {"blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"}
    ig = json.loads((tmp_path / "integrated_gradients" / "summary.json").read_text())
    assert ig["steps"] == 8 and ig["completeness_rel_max"] >= ig["completeness_rel_mean"] >= 0

    out = tmp_path / "cmp"
    code, stdout, err = run_cli(
        BASE + ["--method", "attention", "--level", "word", "--out", out, "--compare-to", perturbed_tiny_dir], capsys
    )
    assert code == 0, err
    assert {"comparison.csv", "keytoken_change.csv", "tokens.html", "attention_heads.png"} <= {
        p.name for p in out.iterdir()
    }
    results = pd.read_csv(out / "results.csv")
    assert set(results.model) == {"tiny", "noisy"}
    comparison = pd.read_csv(out / "comparison.csv")
    assert set(comparison.view) == {"unit", "head"} and {"before", "after", "diff"} <= set(comparison.columns)
    assert comparison["diff"].abs().max() > 1e-3
    assert (comparison["diff"] - (comparison["after"] - comparison["before"])).abs().max() < 1e-9
    summary = json.loads((out / "summary.json").read_text())
    kt = summary["comparison"]["keytoken_change"]
    assert {"keytokens", "other", "keywords", "non_keywords"} <= set(kt)
    assert summary["compared"]["model"] == "noisy" and "largest_head_drop" in summary["comparison"]
    run = json.loads((out / "run.json").read_text())
    assert run["lineage"][-1]["role"] == "unlearned"
    html = (out / "tokens.html").read_text()
    assert html.count('class="panel"') == 2 * 32  # original and compared side by side for every item


def _bad_cases(tmp_path, empty_answer_model_dir, llama_dir):
    zw = tmp_path / "zw.jsonl"
    zw.write_text(json.dumps({"id": "zw", "question": "What is the capital of France?", "answer": "\u200b"}) + "\n")
    return {
        "unknown method": (["--method", "saliency"], "invalid choice: 'saliency'"),
        "answer tokenises to nothing": (
            ["--method", "occlusion", "--model", empty_answer_model_dir, "--data", zw],
            "item 'zw': the answer tokenises to nothing",
        ),
        "alpha zero": (
            ["--method", "occlusion", "--keytoken-alpha", "0"],
            r"keytoken_alpha must be in \(0, 1\], got 0.0",
        ),
        "alpha above one": (["--method", "occlusion", "--keytoken-alpha", "1.5"], r"keytoken_alpha must be in \(0, 1"),
        "beta zero": (
            ["--method", "occlusion", "--keytoken-beta", "0"],
            "keytoken_beta must be an integer >= 1, got 0",
        ),
        "old flag": (["--method", "occlusion", "--strategy", "packed"], "unrecognized arguments: --strategy"),
        "unknown hook": (
            ["--method", "grad_x_input", "--hooks", "blocks.0.hook_nope"],
            "unknown hook name 'blocks.0.hook_nope'",
        ),
        "hook layer out of range": (
            ["--method", "grad_x_input", "--hooks", "blocks.7.hook_resid_post"],
            "layer 7 out of range",
        ),
        "hooks with another method": (
            ["--method", "occlusion", "--hooks", "hook_embed"],
            r"--hooks does not apply to --method occlusion \(its flags: --mode, --baseline-token, --batching, "
            r"--batch-size\)$",
        ),
        "batching with another method": (
            ["--method", "attention", "--batching", "packed", "--steps", "4"],
            r"--batching, --steps do not apply to --method attention \(its flags: --layers\)$",
        ),
        "layers out of range": (["--method", "attention", "--layers", "0-5"], "layer 2 out of range"),
        "steps below two": (["--method", "integrated_gradients", "--steps", "1"], "must be >= 2"),
        "multi-token baseline": (
            ["--method", "occlusion", "--mode", "replace", "--baseline-token", "capital of"],
            "exactly one",
        ),
        "incompatible compare model": (["--method", "occlusion", "--compare-to", llama_dir], "different architectures"),
    }


CASES = [
    "unknown method",
    "answer tokenises to nothing",
    "alpha zero",
    "alpha above one",
    "beta zero",
    "old flag",
    "unknown hook",
    "hook layer out of range",
    "hooks with another method",
    "batching with another method",
    "layers out of range",
    "steps below two",
    "multi-token baseline",
    "incompatible compare model",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path, capsys, empty_answer_model_dir, llama_dir):
    extra, message = _bad_cases(tmp_path, empty_answer_model_dir, llama_dir)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = run_cli(BASE + ["--out", tmp_path / "out"] + extra, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unpact: error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output dir, no temp dirs
