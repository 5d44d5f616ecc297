"""Grid snapping on small tensors: the elements chosen by hand, block extremes never moved, and the snapped tensor
re-quantized by the pinned gguf package's reference quantizer gives the snapped elements back while the others fall
back to the base (Q4_1 and Q8_0)."""

from __future__ import annotations

import pytest
import torch

from unpact_mech.attacks.quantize import gguf_bin_width, gguf_roundtrip
from unpact_mech.unlearning.grid_snap import scale_setting, snap_matrices, snap_to_grid


def q4_1_block() -> torch.Tensor:
    """One row of two Q4_1 blocks on their grid: q = 0..15 twice per block (base values exactly representable)."""
    raw = torch.cat([torch.arange(16.0), torch.arange(16.0)]) * 0.1
    return gguf_roundtrip(torch.stack([raw, raw.flip(0) - 0.7]), "Q4_1")


def test_the_largest_moves_relative_to_the_step_go_one_grid_point_on():
    base = q4_1_block()
    step = gguf_bin_width(base, "Q4_1").float()
    d = float(step[0, 0])
    assert d == pytest.approx(0.1, abs=1e-3)
    delta = torch.zeros_like(base)
    delta[0, 3], delta[0, 5], delta[0, 8] = 0.3 * d, -0.4 * d, 0.1 * d
    delta[0, 0] = 0.2 * d  # the block's minimum: sets the scale, never snapped, held at the base
    delta[1, 20] = 0.35 * d
    trained = base + delta
    out = snap_to_grid(base, trained, step, fraction=3 / base.numel())  # k = 3: elements (0, 5), (1, 20), (0, 3)
    snapped = torch.zeros_like(base, dtype=torch.bool)
    snapped[0, 5] = snapped[1, 20] = snapped[0, 3] = True
    assert out[0, 5] == pytest.approx(float(base[0, 5]) - d, abs=1e-6)
    assert out[1, 20] == pytest.approx(float(base[1, 20]) + d, abs=1e-6)
    assert out[0, 3] == pytest.approx(float(base[0, 3]) + d, abs=1e-6)
    assert out[0, 0] == base[0, 0]
    rest = ~snapped & ~scale_setting(base)
    assert torch.equal(out[rest], trained[rest])  # the rest keeps its trained value
    # re-quantized: the snapped elements come back as snapped, every other element falls back to the base
    back = gguf_roundtrip(out, "Q4_1")
    assert torch.allclose(back[snapped], out[snapped], atol=1e-6)
    assert torch.allclose(back[~snapped], base[~snapped], atol=1e-6)
    # without snapping the whole update is undone by re-quantization
    assert torch.allclose(gguf_roundtrip(trained, "Q4_1"), base, atol=1e-6)


def test_fraction_bounds_and_what_is_eligible():
    base = q4_1_block()
    step = gguf_bin_width(base, "Q4_1").float()
    trained = base + 0.01 * torch.randn(base.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(snap_to_grid(base, trained, step, 0.0), trained)
    every = snap_to_grid(base, trained, step, 1.0)
    fixed = scale_setting(base)
    assert torch.equal(every[fixed], base[fixed])  # held at the base
    moved = (every != trained) & ~fixed
    assert torch.equal(moved, ~fixed)  # every element that does not set its block's scale is snapped
    assert torch.allclose((every - base)[moved].abs(), step[moved], atol=1e-6)
    assert torch.equal(torch.sign((every - base)[moved]), torch.sign((trained - base)[moved]))
    with pytest.raises(ValueError, match="fraction"):
        snap_to_grid(base, trained, step, 1.5)
    with pytest.raises(ValueError, match="shapes"):
        snap_to_grid(base, trained[:, :16], step, 0.5)


def test_q8_0_snapped_elements_survive_requantization():
    g = torch.Generator().manual_seed(1)
    base = gguf_roundtrip(torch.randn(4, 64, generator=g) * 0.05, "Q8_0")
    step = gguf_bin_width(base, "Q8_0").float()
    trained = base + 0.3 * step * torch.randn(base.shape, generator=g).clamp(-1.5, 1.5)
    out = snap_to_grid(base, trained, step, 0.25)
    snapped = (out != trained) & ~scale_setting(base)
    assert int(snapped.sum()) == 64
    back = gguf_roundtrip(out, "Q8_0")
    assert torch.allclose(back[snapped], out[snapped], atol=1e-6)
    assert torch.allclose(back[~snapped], base[~snapped], atol=1e-6)


def test_snap_matrices_snaps_the_planned_tensors_with_their_base_steps_and_leaves_the_rest():
    base = {"a": q4_1_block(), "b": q4_1_block() * 2, "c": torch.ones(3)}
    torch.manual_seed(0)
    trained = {k: v + 0.03 * torch.randn_like(v) for k, v in base.items()}
    out = snap_matrices(base, trained, {"a": "Q4_1", "b": "Q4_1", "missing": "Q4_1"}, fraction=0.25)
    assert set(out) == set(trained)
    for k in ("a", "b"):  # each with its own base's grid step (b's step is twice a's)
        want = snap_to_grid(base[k], trained[k], gguf_bin_width(base[k], "Q4_1").float(), 0.25)
        assert torch.equal(out[k], want)
        assert not torch.equal(out[k], trained[k])
    assert out["c"] is trained["c"]  # not in the plan: untouched
