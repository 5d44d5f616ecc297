"""keyguard's second round on the tiny model and on hand-made tensors: every new weight at 0 trains the first keyguard's
weights bitwise (and on, other weights); the late answer-only term, the steering direction, the noisy and quantized
weights against hand computations; the steer rows really get the shift; the loop's extra weight passes restore the
weights bit-exactly, add the gradient taken at the temporary weights and compose with gradient accumulation,
checkpointing and bfloat16 master weights; grid snapping survives re-quantization where plain training does not;
``weight_shift_vs_bin`` against hand-computed numbers; the CLI."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from tests.cli_helpers import run_cli
from tests.unit.unlearning.conftest import TINY_RUNS, assert_same_weights, weights
from unpact_mech import load_model
from unpact_mech.attacks import get_attack
from unpact_mech.attacks.quantize import roundtrip, weight_shift_vs_bin
from unpact_mech.models.hooks import hook_name
from unpact_mech.scoring.batching import right_pad_teacher_forced
from unpact_mech.unlearning import UNLEARNING_METHODS, TrainConfig, Trainer, get_unlearning_method, losses, unlearn
from unpact_mech.unlearning.adversarial import source
from unpact_mech.unlearning.batches import StepBatch, UnlearningSet, make_batch, sample_indices
from unpact_mech.unlearning.loop import policy_forward, temporary_weights
from unpact_mech.unlearning.methods.base import PolicyOutput
from unpact_mech.unlearning.methods.keyguard import INGREDIENTS, keyguard_methods, trained_families
from unpact_mech.unlearning.methods.keyguard_terms import (
    NEW_INGREDIENTS,
    answer_positions,
    noise_seed,
    noisy_weight,
    steering_direction,
)
from unpact_mech.unlearning.params import select_trainable

VARIANTS = ("keyguard_late_answer", "keyguard_steer", "keyguard_smooth", "keyguard_quant", "keyguard2", "keyguard_grid")
STEPS = 3


def run(method, items, hyperparameters=None, **kw):
    opts = {**TINY_RUNS[method], "steps": STEPS, **kw}
    hp = {**opts.pop("hyperparameters"), **(hyperparameters or {})}
    model = load_model("tiny")
    result = unlearn(model, items, method, hyperparameters=hp, evaluate=False, progress=False, **opts)
    return model, result


@pytest.fixture(scope="module")
def keyguard_run(synthetic_items):
    """The first keyguard (its own defaults: every second-round weight 0) on tiny: (weights, loss table)."""
    model, result = run("keyguard", synthetic_items)
    return weights(model), result.loss_table().drop(columns="seconds")


def test_the_variants_are_registered_keyguards_with_their_weights_on():
    assert keyguard_methods() == ("keyguard", *VARIANTS)
    keyguard = UNLEARNING_METHODS["keyguard"].hyperparameters
    assert (
        all(keyguard[w] == 0.0 for w in NEW_INGREDIENTS)
        and keyguard["steer_attack_coef"] == get_attack("steer").coefficient
    )
    for name in VARIANTS:
        cls = UNLEARNING_METHODS[name]
        assert cls.recipe == UNLEARNING_METHODS["keyguard"].recipe and cls.summary
        on = {w for w in NEW_INGREDIENTS if cls.hyperparameters[w] > 0}
        assert (
            on
            == {
                "keyguard_late_answer": {"late_answer_weight"},
                "keyguard_steer": {"steer_attacks"},
                "keyguard_smooth": {"noise_weight"},
                "keyguard_quant": {"quant_weight"},
                "keyguard2": set(NEW_INGREDIENTS) - {"grid_snap"},
                "keyguard_grid": {"grid_snap"},
            }[name]
        )
        assert cls.hyperparameters["late_weight"] == (0.0 if name in ("keyguard_late_answer", "keyguard2") else 0.3)


@pytest.mark.parametrize("method", VARIANTS)
def test_new_weights_at_zero_train_keyguards_weights_bitwise_and_on_they_differ(method, keyguard_run, synthetic_items):
    """With its second-round weights at 0 (late_weight back at keyguard's 0.3) a variant trains EXACTLY the first
    keyguard's weights and loss log (no extra rows, forwards, passes or random draws); with them on, other weights."""
    base, base_log = keyguard_run
    defaults = UNLEARNING_METHODS[method].hyperparameters
    off = dict.fromkeys((w for w in NEW_INGREDIENTS if defaults[w] > 0), 0.0) | {"late_weight": 0.3}
    model, result = run(method, synthetic_items, off)
    assert_same_weights(base, weights(model))
    assert result.loss_table().drop(columns="seconds").equals(base_log)
    on, _ = run(method, synthetic_items)
    after = weights(on)
    assert any(not torch.equal(base[n], after[n]) for n in base)


@pytest.mark.parametrize("ingredient", NEW_INGREDIENTS)
def test_each_new_ingredient_alone_moves_the_weights_away_from_rmu(ingredient, synthetic_items):
    zero = dict.fromkeys(INGREDIENTS + NEW_INGREDIENTS, 0.0)
    rmu, _ = run("keyguard", synthetic_items, zero)
    one, _ = run("keyguard", synthetic_items, zero | {ingredient: 1.0})
    a, b = weights(rmu), weights(one)
    assert any(not torch.equal(a[n], b[n]) for n in a)


# -- the late answer-only term -------------------------------------------------------------------------------------
def test_answer_positions_are_the_answer_tokens():
    """Rows [1 2 3 | 7 8] and [4 5 | 9]: the answer tokens sit at 3, 4 and at 2 (never the prompt or padding)."""
    tf = right_pad_teacher_forced([[1, 2, 3], [4, 5]], [[7, 8], [9]], 0, [0, 1])
    assert answer_positions(tf).tolist() == [[False, False, False, True, True], [False, False, True, False, False]]


def test_late_answer_term_against_a_hand_computation():
    """forget: L_f + w_la·mean over the ANSWER tokens of (1/d)‖h' − c·u'‖²; retain: L_r + w_la·the late anchor on the
    retain rows (a fake reference whose residuals are 0 everywhere)."""
    torch.manual_seed(0)
    d, w_la = 3, 0.7
    tf = right_pad_teacher_forced([[1, 2, 3], [4, 5], [6, 7, 8]], [[7, 8], [9], [3]], 0, [0, 1, 2])
    region = torch.ones(tf.input_ids.shape, dtype=torch.bool)
    region[:, 0] = False  # position 0 is never in the region (as BOS)
    batch = StepBatch(tf, 2, (0, 1), (0,), region)  # rows 0-1 forget, row 2 retain
    h0, h1 = torch.randn(3, 5, d), torch.randn(3, 5, d)
    cache = {hook_name(0, "hook_resid_post"): h0, hook_name(1, "hook_resid_post"): h1}
    zero = dict.fromkeys(INGREDIENTS + NEW_INGREDIENTS, 0.0)
    method = get_unlearning_method("keyguard", **zero | {"layer": 0, "late_layer": 1, "late_answer_weight": w_la})
    method.n_layers, method.control, method.late_control = 2, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0, -1])

    def mse(v, x):
        return float(((v - x) ** 2).mean())

    answers = {0: (3, 4), 1: (2,)}
    late = [mse(h1[b, t], method.late_control) for b, ts in answers.items() for t in ts]
    first = [mse(h0[b, t], method.control) for b in (0, 1) for t in range(5) if region[b, t]]
    out = PolicyOutput(batch, None, cache)
    expected = sum(first) / len(first) + w_la * sum(late) / len(late)
    assert method.forget_loss(out).item() == pytest.approx(expected, rel=1e-6)

    zeros = SimpleNamespace(forward=lambda ids, cache, logits_to_keep: SimpleNamespace(
        cache={h: torch.zeros(ids.shape[0], ids.shape[1], d) for h in cache}
    ))  # fmt: skip
    method.reference = zeros
    anchor0 = [float((h0[2, t] ** 2).mean()) for t in range(1, 5)]
    anchor1 = [float((h1[2, t] ** 2).mean()) for t in range(1, 5)]
    expected = sum(anchor0) / 4 + w_la * sum(anchor1) / 4
    assert method.retain_loss(out).item() == pytest.approx(expected, rel=1e-6)


# -- steering ------------------------------------------------------------------------------------------------------
def test_steering_direction_on_hand_made_caches():
    h_ref = torch.tensor([[[1.0, 0.0], [3.0, 1.0]], [[0.0, 2.0], [5.0, 5.0]]])
    h_pol = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, True], [False, True]])
    # differences at the masked positions: (1, 0), (2, 0), (4, 4) -> mean (7/3, 4/3)
    assert torch.allclose(steering_direction(h_ref, h_pol, mask), torch.tensor([7 / 3, 4 / 3]))
    assert torch.equal(steering_direction(h_ref, h_pol, torch.zeros(2, 2, dtype=torch.bool)), torch.zeros(2))


def _prepared(method_name, model, items, **hp):
    method = get_unlearning_method(method_name, **(TINY_RUNS[method_name]["hyperparameters"] | hp))
    data = UnlearningSet.from_items(model, items)
    method.setup(model, data, seed=0)
    return method, data


def test_steer_rows_are_the_forget_rows_and_receive_the_shift(model, synthetic_items):
    """The steer rows are the batch's own forget rows (the loop's draw); under the interventions their residual at
    their KeyToken positions is the plain one + c_s·d_L, d_L the mean original-minus-policy residual at the forget rows'
    KeyTokens; every other position and row is untouched."""
    coef = 1.5
    only_steer = dict(prompt_attacks=0.0, activation_attacks=0.0, retain_attacks=0.0, steer_attack_coef=coef)
    method, data = _prepared("keyguard_steer", model, synthetic_items, **only_steer)
    assert method.steer.layers == (0,) and method.steer.hook == "hook_resid_post"  # the attack's default: first half
    with torch.no_grad():  # make the policy differ from the frozen original
        for p in model.hf.model.layers[0].mlp.parameters():
            p.add_(0.05)
    n, slot = 3, 2
    extra = method.extra_targets(0, slot, n)
    forget_index = sample_indices(len(data.forget), 0, 0, slot * n, n)  # the loop's forget draw of this slot
    assert [t.item_id for t in extra] == [data.forget[i].item_id for i in forget_index]
    assert {t.source for t in extra} == {source("steer")}
    batch = make_batch(data, forget_index, [], model.pad_token_id, extra)
    hook = hook_name(0, "hook_resid_post")
    ivs = method.interventions(model, batch)
    with torch.no_grad():
        steered = model.forward(batch.tf.input_ids, interventions=ivs, cache=[hook]).cache[hook]
        plain = model.forward(batch.tf.input_ids, cache=[hook]).cache[hook]
        ref = method.reference.forward(batch.tf.input_ids, cache=[hook]).cache[hook]
    positions = [list(method.pool.keyword_positions[t.item_id]) for t in extra]
    mask = torch.zeros(plain.shape[:2], dtype=torch.bool)
    for r, pos in enumerate(positions):
        mask[r, pos] = True
    d = steering_direction(ref[:n], plain[:n], mask[:n])
    assert float(d.norm()) > 0 and torch.allclose(method.steer_fit[1][0], d, atol=1e-6)
    for j, pos in enumerate(positions):
        row = batch.extra_rows.start + j
        assert pos
        assert torch.allclose(steered[row, pos] - plain[row, pos], coef * d.expand(len(pos), -1), atol=1e-5)
        other = [t for t in range(plain.shape[1]) if t not in pos]
        assert torch.equal(steered[row, other], plain[row, other])
    assert torch.equal(steered[:n], plain[:n])
    assert method.interventions(model, batch) and method.steer_fit[0] is batch  # fitted once per batch
    method.teardown()


# -- noise and quantization: the weight passes ---------------------------------------------------------------------
def test_smoothed_weight_against_a_hand_computation():
    w, eps = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, -1.0]])
    rms = math.sqrt((9 + 16) / 2)
    assert torch.allclose(losses.smoothed_weight(w, eps, 0.1), torch.tensor([[3 + 0.1 * rms, 4 - 0.1 * rms]]))
    assert losses.smoothed_weight(w.to(torch.bfloat16), eps, 0.1).dtype == torch.bfloat16


def test_noisy_weight_is_deterministic_per_seed_step_and_name():
    w = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    a = noisy_weight("x.weight", w, seed=3, step=2, sigma=0.01)
    assert torch.equal(a, noisy_weight("x.weight", w, seed=3, step=2, sigma=0.01))
    for other in (dict(seed=4, step=2), dict(seed=3, step=3)):
        assert not torch.equal(a, noisy_weight("x.weight", w, sigma=0.01, **other))
    assert not torch.equal(a, noisy_weight("y.weight", w, seed=3, step=2, sigma=0.01))
    eps = torch.randn(4, 6, generator=torch.Generator().manual_seed(noise_seed(3, 2, "x.weight")))
    assert torch.equal(a, losses.smoothed_weight(w, eps, 0.01))
    assert noisy_weight("norm.weight", torch.ones(6), seed=3, step=2, sigma=0.01) is None  # matrices only
    state = torch.random.get_rng_state()
    noisy_weight("x.weight", w, seed=3, step=2, sigma=0.01)
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is not touched


def test_temporary_weights_hold_the_values_and_restore_bit_exactly():
    lin = torch.nn.Linear(4, 3)
    before = {n: p.detach().clone() for n, p in lin.named_parameters()}
    named = list(lin.named_parameters())
    noise = lambda name, w: noisy_weight(name, w, seed=0, step=0, sigma=0.5)
    with temporary_weights(named, noise):
        assert torch.equal(lin.weight, noise("weight", before["weight"]))
        assert torch.equal(lin.bias, before["bias"])  # None: kept
    assert all(torch.equal(p, before[n]) for n, p in lin.named_parameters())
    with pytest.raises(RuntimeError, match="boom"), temporary_weights(named, noise):
        raise RuntimeError("boom")
    assert all(torch.equal(p, before[n]) for n, p in lin.named_parameters())


def test_quant_pass_weights_are_the_battery_quantizers_output(model, synthetic_items):
    """No GGUF source on tiny: the battery's uniform Q4_1; the pass holds exactly Q(W) of each trained matrix."""
    method, _ = _prepared("keyguard_quant", model, synthetic_items)
    grid = method.grid
    assert grid.scheme == "q4_1"
    (weight_pass,) = method.extra_passes(0)
    assert weight_pass.label == "quant" and weight_pass.weight is grid
    trained = select_trainable(model, method.default_trainable(model))
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in trained}
    assert grid("model.norm.weight", params["model.norm.weight"]) is None
    with temporary_weights([(n, params[n]) for n in trained], grid):
        for n in trained:
            assert torch.equal(params[n], roundtrip(before[n], "Q4_1", 32)) and not torch.equal(params[n], before[n])
    assert all(torch.equal(params[n], before[n]) for n in trained)
    method.teardown()


def test_the_loop_adds_the_gradient_at_the_temporary_weights_and_restores_them(model, synthetic_items):
    """One micro-batch of keyguard_smooth: the weights after ``accumulate`` are bitwise the ones before, and the
    gradient is the main loss's + w_n·∇F at the noisy weights of (seed, step)."""
    method = get_unlearning_method("keyguard_smooth", **TINY_RUNS["keyguard_smooth"]["hyperparameters"])
    data = UnlearningSet.from_items(model, synthetic_items)
    trainable = select_trainable(model, method.default_trainable(model))
    trainer = Trainer(model, method, data, TrainConfig(steps=1, lr=1e-2, seed=2), trainable=trainable, progress=False)
    method.setup(model, data, seed=2)
    try:
        with trainer.session() as session:
            before = [p.detach().clone() for p in session.params]
            passes = method.extra_passes(1)
            sums = trainer.accumulate(1, session, passes)
            assert len(sums) == 4 and all(torch.equal(p, b) for p, b in zip(session.params, before))
            both = [p.grad.clone() for p in session.params]
            session.optimizer.zero_grad(set_to_none=True)
            trainer.accumulate(1, session, ())
            main = [p.grad.clone() for p in session.params]
            session.optimizer.zero_grad(set_to_none=True)
            batch = trainer.batch(1, 0)
            with temporary_weights(list(zip(trainable, session.params)), passes[0].weight):
                (method.hp["noise_weight"] * method.forget_loss(policy_forward(model, method, batch))).backward()
            noisy = [p.grad.clone() for p in session.params]
            for g, m, n in zip(both, main, noisy):
                assert torch.allclose(g, m + n, atol=1e-7) and not torch.allclose(g, m)
    finally:
        method.teardown()


@pytest.mark.filterwarnings("ignore::unpact_mech.unlearning.ForgettingWarning")
def test_keyguard2_composes_with_accumulation_checkpointing_and_bfloat16(synthetic_items):
    plain, result = run("keyguard2", synthetic_items, steps=2)
    assert {"noise_loss", "quant_loss"} <= set(result.loss_table().columns)
    ckpt, _ = run("keyguard2", synthetic_items, steps=2, gradient_checkpointing=True)
    a, b = weights(plain), weights(ckpt)
    assert max(float((a[n] - b[n]).abs().max()) for n in a) <= 1e-5
    accum, accum_again = (run("keyguard2", synthetic_items, steps=2, grad_accum=2, batch_size=2)[0] for _ in range(2))
    assert_same_weights(weights(accum), weights(accum_again))
    half = load_model("tiny", device="cpu", dtype="bfloat16")
    opts = {**TINY_RUNS["keyguard2"], "steps": 2}
    out = unlearn(half, synthetic_items, "keyguard2", evaluate=False, progress=False, **opts)
    assert out.train.changed and {p.dtype for p in half.parameters()} == {torch.bfloat16}


# -- trained families and the grid report --------------------------------------------------------------------------
def test_trained_families_follow_each_variants_own_defaults():
    steer, quant = get_attack("steer").family, get_attack("quantize").family
    for name in keyguard_methods():
        families = trained_families(method=name)
        assert (steer in families) == (name in ("keyguard_steer", "keyguard2")), name
        assert (quant in families) == (name in ("keyguard_quant", "keyguard2", "keyguard_grid")), name
    assert steer not in trained_families({"steer_attacks": 0.0}, method="keyguard2")
    assert steer in trained_families({"steer_attacks": 1.0})  # keyguard with an override
    with pytest.raises(ValueError, match="keyguard-family"):
        trained_families(method="rmu")


def test_weight_shift_vs_bin_against_hand_computed_numbers():
    # int4, one group of 4: s = max|w| / 7 = 0.2; q(base) = (7, 0, -3, 2), q(trained) = (7, 1, -3, 1): 2 of 4 moved
    base = {"a": torch.tensor([[1.4, 0.05, -0.62, 0.33]]), "norm": torch.ones(4)}
    trained = {"a": torch.tensor([[1.4, 0.15, -0.62, 0.28]]), "norm": 2 * torch.ones(4)}
    (row,) = weight_shift_vs_bin(base, trained, "int4", group_size=4).to_dict("records")  # the 1-D norm skipped
    assert (row["parameter"], row["kind"], row["n"]) == ("a", "int4", 4)
    assert row["mean_abs_delta"] == pytest.approx(0.15 / 4) and row["mean_bin_width"] == pytest.approx(0.2)
    assert row["delta_over_bin"] == pytest.approx(0.1875) and row["quant_changed"] == 0.5
    # GGUF Q4_1, one block of 32 in 0..1.5: d = 0.1; +0.07 on a 0 crosses to q = 1, +0.02 on a 0.1 stays at q = 1
    wb = torch.tensor([[0.1 * (k % 16) for k in range(32)]])
    wt = wb.clone()
    wt[0, 0] += 0.07
    wt[0, 1] += 0.02
    table = weight_shift_vs_bin({"m": wb}, {"m": wt}, {"m": "Q4_1"})
    assert isinstance(table, pd.DataFrame) and list(table["kind"]) == ["Q4_1"]
    r = table.iloc[0]
    assert r["mean_abs_delta"] == pytest.approx(0.09 / 32, rel=1e-5) and r["mean_bin_width"] == pytest.approx(0.1)
    assert r["delta_over_bin"] == pytest.approx(0.028125, rel=1e-5) and r["quant_changed"] == 1 / 32
    assert weight_shift_vs_bin({"m": wb}, {"m": wt}, "q4_1").equals(table)


# -- the command ---------------------------------------------------------------------------------------------------
def test_unlearn_keyguard2_on_tiny_writes_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "kg2"
    argv = [
        "unlearn", "--model", "tiny", "--data", "builtin:synthetic_facts", "--method", "keyguard2", "--steps", "2",
        "--lr", "1e-2", "--layer", "0", "--late-layer", "1", "--steering-coef", "20", "--alpha", "1", "--quiet",
        "--out", out,
    ]  # fmt: skip
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "keyguard2" in stdout
    again = load_model(out)
    assert again.lineage[-1]["method"] == "keyguard2"
    hp = json.loads((out / "run.json").read_text())["lineage"][1]["hyperparameters"]
    assert hp["steer_attacks"] == hp["noise_weight"] == hp["quant_weight"] == 1.0 and hp["late_weight"] == 0.0
    log = pd.read_csv(out / "training_log.csv")
    assert len(log) == 2 and {"noise_loss", "quant_loss"} <= set(log.columns)


def test_weight_pass_labels_are_known_before_setup():
    """The labels the loop checks --fsdp against before setup (a launch-only refusal) name the passes each variant
    runs: none for keyguard and the variants without noise / quantization terms."""
    from unpact_mech.unlearning.methods.registry import get_unlearning_method

    labels = {m: get_unlearning_method(m).weight_pass_labels for m in ("keyguard", *VARIANTS)}
    assert labels == {
        "keyguard": (), "keyguard_late_answer": (), "keyguard_steer": (), "keyguard_smooth": ("noise",),
        "keyguard_quant": ("quant",), "keyguard2": ("noise", "quant"), "keyguard_grid": (),
    }  # fmt: skip


def test_grid_snapped_updates_survive_requantization_where_plain_ones_do_not(synthetic_items):
    """tiny put on the Q4_1 grid first (as the embedded SmolLM2 lies on its source grid), trained at lr 1e-4 so that
    every update stays under half a grid step (as SmolLM2's do at keyguard's recipe): keyguard's update rounds back
    to the base under re-quantization (up to a tenth of a step: the blocks' extremes moved too and shift their
    scales), keyguard_grid's snapped elements come back as snapped, a whole step from the base (3% of each trained
    matrix), its other elements round back to the base exactly (its blocks' extremes are held at the base)."""
    from unpact_mech.attacks.quantize import bin_width, named_weights, quantized_copy

    out = {}
    for method in ("keyguard", "keyguard_grid"):
        start = quantized_copy(load_model("tiny"), "q4_1")
        base = {n: w.clone() for n, w in named_weights(start).items()}
        opts = {**TINY_RUNS[method], "steps": STEPS, "lr": 1e-4}
        unlearn(start, synthetic_items, method, hyperparameters=opts.pop("hyperparameters"), evaluate=False,
                progress=False, **opts)  # fmt: skip
        after, back = named_weights(start), named_weights(quantized_copy(start, "q4_1"))
        out[method] = (base, after, back)
    base, after, back = out["keyguard"]
    trained = [n for n in base if not torch.equal(base[n], after[n])]
    assert trained
    for n in base:  # undone up to the drift of a block's scale (its extremes moved a little too)
        assert ((back[n] - base[n]).abs() <= 0.1 * bin_width(base[n], "Q4_1", 32)).all(), n
    base, after, back = out["keyguard_grid"]
    assert [n for n in base if not torch.equal(base[n], after[n])] == trained
    for n in trained:
        snapped = (after[n] - base[n]).abs() > 0.5 * bin_width(base[n], "Q4_1", 32)
        assert int(snapped.sum()) == int(0.03 * base[n].numel()), n
        assert torch.allclose(back[n][snapped], after[n][snapped], atol=1e-6)
        assert torch.allclose(back[n][~snapped], base[n][~snapped], atol=1e-6)
        step = bin_width(base[n], "Q4_1", 32)[snapped]
        assert torch.allclose((back[n] - base[n])[snapped].abs(), step.to(base[n].dtype), atol=1e-6)
