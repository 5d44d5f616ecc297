"""The ``quantize`` model transform: grids against hand-computed values, the GGUF reference quantizer, the grid
report, and the condition inside a recovery run (with its original-model control)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unpact_mech.attacks import ATTACKS, get_attack
from unpact_mech.attacks.quantize import (
    bin_width,
    gguf_bin_width,
    gguf_roundtrip,
    grid_report,
    named_weights,
    quantized_copy,
    roundtrip,
    rtn_bin_width,
    rtn_quantize,
    scheme_plan,
)
from unpact_mech.errors import InputError


def test_rtn_int4_by_hand():
    # qmax 7, s = 1.0 / 7; w / s = 0.7, -3.5, 1.75, 7 -> round half to even: 1, -4, 2, 7
    w = torch.tensor([[0.1, -0.5, 0.25, 1.0]], dtype=torch.float64)
    expected = torch.tensor([[1.0, -4.0, 2.0, 7.0]], dtype=torch.float64) / 7
    assert torch.allclose(rtn_quantize(w, 4, 4), expected, atol=1e-12)
    assert torch.allclose(rtn_bin_width(w, 4, 4), torch.full_like(w, 1 / 7))


def test_rtn_groups_are_independent_and_the_grid_is_a_fixed_point():
    w = torch.tensor([[1.0, 0.5, 100.0, 37.0]], dtype=torch.float64)  # two groups of 2: scales 1/127 and 100/127
    q = rtn_quantize(w, 8, 2)
    assert q[0, 0] == 1.0 and q[0, 2] == 100.0
    assert abs(q[0, 1] - round(0.5 * 127) / 127) < 1e-12  # its own group's scale, not the 100's
    assert torch.allclose(rtn_quantize(q, 8, 2), q, atol=1e-12)
    # a last axis that is not a multiple of the group: the last group of each row is shorter (here 4 = 3 + 1)
    ragged = rtn_quantize(w, 8, 3)
    assert torch.allclose(ragged[:, :3], rtn_quantize(w[:, :3], 8, 3), atol=1e-12)
    assert ragged[0, 3] == 37.0  # a group of one is its own scale: exact
    assert float(rtn_bin_width(w, 8, 3)[0, 3]) == pytest.approx(37.0 / 127)


def test_gguf_q8_0_and_q4_1_reference_grids():
    d = 2.0**-7  # exact in fp16, the type GGUF stores block scales in
    on_q8 = torch.arange(-127, 128, 8, dtype=torch.float32)[None, :] * d  # 32 values, max |q| = 127
    assert torch.equal(gguf_roundtrip(on_q8, "Q8_0"), on_q8)
    assert torch.allclose(gguf_bin_width(on_q8, "Q8_0"), torch.full(on_q8.shape, d, dtype=torch.float64))
    w = torch.linspace(-1, 2, 32)[None, :]  # Q4_1: m = -1, d = 3 / 15 = 0.2
    q = gguf_roundtrip(w, "Q4_1")
    assert torch.allclose(q, torch.round((w + 1) / 0.2) * 0.2 - 1, atol=2e-3)  # d and m are stored as fp16
    assert float(gguf_bin_width(w, "Q4_1")[0, 0]) == pytest.approx(0.2)
    assert torch.equal(gguf_roundtrip(w, "F32"), w)


def test_q4_1_round_trip_is_exact_on_its_grid_when_the_block_extremes_are_on_it():
    d, m = 2.0**-6, -0.25  # both exact in fp16 (GGUF stores d and m as fp16)
    q = torch.tensor([0, 15] + [(7 * i) % 16 for i in range(30)], dtype=torch.float32)  # q = 0 and 15 both present
    w = (d * q + m)[None, :]
    assert torch.equal(gguf_roundtrip(w, "Q4_1"), w)
    shifted = w.clone()
    shifted[0, 2] += d / 3  # off the grid (not an extreme): rounds back to its grid point
    assert torch.equal(gguf_roundtrip(shifted, "Q4_1"), w)


def test_sixteen_bit_quantization_is_an_exact_no_op_on_fp16_weights(original):
    """``f16``: a model whose weights are fp16 values is returned bit for bit; other weights move by < 1 ulp."""
    halved = original.reference_copy()
    weights = named_weights(halved)
    halved.load_state_dict({n: w.half().float() for n, w in weights.items()})
    copy = quantized_copy(halved, "f16")
    assert all(torch.equal(named_weights(copy)[n], w) for n, w in named_weights(halved).items())
    w = torch.tensor([[1.0 + 2.0**-12, 3.0, -0.1, 1e-3]])
    q = roundtrip(w, "f16", 32)
    assert not torch.equal(q, w) and ((q - w).abs() <= 0.5 * bin_width(w, "f16", 32)).all()
    assert float(bin_width(torch.tensor([[1.5]]), "f16", 32)) == 2.0**-10
    report = grid_report(halved, halved, "f16")
    assert (report["moved"] == 0).all() and (report["back_on_original"] == 1).all()


def test_quantized_copy_leaves_the_model_alone_and_plans_block_weights_only(original):
    before = {k: v.clone() for k, v in named_weights(original).items()}
    plan = scheme_plan(original, "int8")
    assert plan and all(".layers." in n for n in plan) and not any("embed" in n for n in plan)
    copy = quantized_copy(original, "int4", 32)
    after = named_weights(original)
    assert all(torch.equal(before[k], after[k]) for k in before)
    q = named_weights(copy)
    name = next(iter(plan))
    assert torch.allclose(q[name], rtn_quantize(before[name], 4, 32))
    assert not torch.equal(q[name], before[name])
    assert torch.equal(q["model.embed_tokens.weight"], before["model.embed_tokens.weight"])


def test_grid_report_tiny_moves_land_back_large_moves_do_not(original):
    unlearned = original.reference_copy()
    w = named_weights(original)
    names = list(scheme_plan(original, "int8"))
    small, large = names[0], names[1]
    unlearned.load_state_dict({
        small: w[small] + 0.01 * rtn_bin_width(w[small], 8, 32).to(w[small].dtype),
        large: w[large] + 3 * rtn_bin_width(w[large], 8, 32).to(w[large].dtype),
    })  # fmt: skip
    report = grid_report(original, unlearned, "int8", 32).set_index("parameter")
    assert report.loc[small, "moved"] > 0.99
    # a shift of 0.01 bin carries about 1% of the elements across a bin edge
    assert report.loc[small, "back_on_original"] == pytest.approx(0.99, abs=0.01)
    assert report.loc[large, "delta_over_bin"] == pytest.approx(3.0, rel=1e-6)
    assert report.loc[large, "back_on_original"] < 0.5
    untouched = report.drop(index=[small, large])
    assert (untouched["moved"] == 0).all() and (untouched["back_on_original"] == 1).all()


def test_quantize_spec_options_and_errors(original):
    attack = get_attack("quantize:scheme=int4,group_size=128")
    assert attack.label == "quantize[int4/g128]" and attack.family == "quantization" and attack.kind == "transform"
    assert ATTACKS["quantize"].scheme == "source"
    with pytest.raises(InputError, match="unknown scheme 'int3'"):
        get_attack("quantize:scheme=int3").resolve(original)
    with pytest.raises(InputError, match="no GGUF source file"):
        get_attack("quantize").resolve(original)  # the tiny model was never a GGUF


def test_quantize_in_a_recovery_run_with_its_original_model_control(original, ga_unlearned, synthetic_items):
    from unpact_mech.recovery import RecoveryConfig, run_recovery
    from unpact_mech.scoring.evaluate import evaluate_items

    result = run_recovery(
        original,
        ga_unlearned,
        synthetic_items,
        RecoveryConfig(attacks=["focus", "quantize:scheme=int4"], keyword_source="data"),
        progress=False,
    )
    row = result.rates.set_index("condition").loc["quantize[int4/g32]"]
    assert row["kind"] == "transform" and row["family"] == "quantization"
    assert row["n_eligible"] == len(result.eligible_ids) > 0
    # the control: the same rounding applied to the ORIGINAL model, on the run's sampled forget items
    per = result.per_item
    orig_rows = per[(per["condition"] == "quantize[int4/g32]") & (per["model"] == "original")]
    ids = list(orig_rows["item_id"])
    by_id = {it.id: it for it in synthetic_items}
    direct = evaluate_items(quantized_copy(original, "int4", 32), [by_id[i] for i in ids], progress=False)
    assert row["original_accuracy_after"] == pytest.approx(direct["correct"].mean())
    asked = per[(per["condition"] == "quantize[int4/g32]") & (per["model"] == "unlearned")]
    recovered = asked[asked["item_id"].isin(result.eligible_ids)]["correct"].mean()
    assert row["recovery_rate"] == pytest.approx(recovered)
    # the per-layer grid report of the unlearned model rides along as a detail table, once per run
    grid = result.details[("quantize[int4/g32]", "grid")]
    expected = grid_report(original, ga_unlearned, "int4", 32)
    assert list(grid["parameter"]) == list(expected["parameter"])
    assert np.allclose(grid["delta_norm"], expected["delta_norm"]) and grid["layer"].notna().all()


@pytest.mark.slow
def test_embedded_smollm2_lies_on_its_source_grid(smollm2):
    """The embedded weights were dequantised from the Q4_1 GGUF: re-quantizing to the file's own types returns them
    exactly (checked on the first and last block and the Q8_0 embedding: the whole model takes minutes)."""
    from collections import Counter

    from unpact_mech.attacks.quantize import roundtrip

    plan = scheme_plan(smollm2, "source")
    assert Counter(plan.values()) == {"Q4_1": 7 * smollm2.shape.n_layers, "Q8_0": 1}
    weights = named_weights(smollm2)
    last = smollm2.shape.n_layers - 1
    for name in ("model.layers.0.self_attn.q_proj.weight", f"model.layers.{last}.mlp.down_proj.weight",
                 "model.embed_tokens.weight"):  # fmt: skip
        assert torch.equal(roundtrip(weights[name], plan[name], 32), weights[name]), name


def test_quantize_acts_alike_on_both_backends(original, synthetic_items):
    """The nnsight model quantized the same way holds the same weights and gives the same answers."""
    from unpact_mech import load_model
    from unpact_mech.scoring.evaluate import evaluate_items

    twin = load_model("tiny", backend="nnsight")
    a, b = quantized_copy(original, "int4", 32), quantized_copy(twin, "int4", 32)
    assert b.backend.name == "nnsight" and all(torch.equal(w, named_weights(b)[n]) for n, w in named_weights(a).items())
    items = synthetic_items[:8]
    ea, eb = (evaluate_items(m, items, progress=False) for m in (a, b))
    assert list(ea["generation"]) == list(eb["generation"])
    assert np.allclose(ea["logprob"], eb["logprob"], atol=1e-5)
