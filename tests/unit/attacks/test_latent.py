"""``logit_lens`` and the depth curve: the lens math by hand, the last layer is the model's own prediction (both
backends, padded batches), an earlier layer equals the model with the later blocks silenced, the read-out's rows and
details, the depth curve's exact endpoints, options."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from unpact_mech import load_model
from unpact_mech.attacks import AttackEnv
from unpact_mech.attacks.latent import (
    DEPTH_COLUMNS,
    LATENT_ATTACKS,
    PER_LAYER_COLUMNS,
    LogitLens,
    best_over_layers,
    depth_curve,
    lens_curve,
    lens_scores,
    logit_lens,
    unlearning_depth,
)
from unpact_mech.errors import InputError
from unpact_mech.scoring.logprob import score_answers
from unpact_mech.scoring.tokens import encode_item


def _scores(model, encoded, batch_size=64):
    return score_answers(model, [e.prompt.ids for e in encoded], [e.answer_ids for e in encoded], batch_size=batch_size)


def test_lens_scores_by_hand():
    W_U = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])  # d_model 2, vocab 3
    resid = torch.tensor([[[1.0, 0.0], [0.0, 3.0]], [[0.5, 1.0], [1.0, 1.0]]])  # (2 layers, 2 items, 2)
    answers = torch.tensor([0, 1])
    rank, lp = lens_scores(resid, answers, norm=lambda x: 2 * x, W_U=W_U)
    # logits = 2 * resid @ W_U: L0 [2, 0, 4], [0, 6, 0]; L1 [1, 2, 2], [2, 2, 4]
    logits = [[[2.0, 0.0, 4.0], [0.0, 6.0, 0.0]], [[1.0, 2.0, 2.0], [2.0, 2.0, 4.0]]]
    assert rank.tolist() == [[1, 0], [2, 1]]  # strictly larger logits only: the tie 2 = 2 does not count
    for L in range(2):
        for b, y in enumerate(answers.tolist()):
            z = logits[L][b]
            assert lp[L, b].item() == pytest.approx(z[y] - math.log(sum(math.exp(v) for v in z)), abs=1e-6)
    best_rank, best_lp, best_layer = best_over_layers(rank, lp, [0, 1])
    assert best_rank.tolist() == [1, 0] and best_layer.tolist() == [0, 0]
    assert torch.equal(best_lp, lp.max(0).values)
    tied = best_over_layers(torch.tensor([[1], [1]]), torch.tensor([[-3.0], [-2.0]]), [0, 1])
    assert tied[2].tolist() == [1]  # equal ranks: the layer with the higher log-prob


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_last_layer_lens_is_the_models_first_token_prediction(backend, ga_unlearned_dir, synthetic_items):
    model = load_model(ga_unlearned_dir, backend=backend)
    encoded = [encode_item(model, it) for it in synthetic_items]  # prompts of several lengths: padded batches
    rank, lp = logit_lens(model, encoded, batch_size=5)
    want = _scores(model, encoded, batch_size=7)
    assert torch.equal(rank[-1], want.first_rank) and (want.first_rank > 0).any()  # some items are not top-1
    assert torch.allclose(lp[-1], want.first_prob.log(), atol=1e-5)
    one = logit_lens(model, encoded[:3], batch_size=1)
    assert torch.equal(one[0], rank[:, :3]) and torch.allclose(one[1], lp[:, :3], atol=1e-5)
    # layer 0's lens is the model whose later blocks add nothing to the residual (their outputs silenced)
    enc = encoded[0]
    silenced = [(f"blocks.{L}.hook_{k}_out", lambda act, hook: act * 0.0) for L in (1,) for k in ("attn", "mlp")]
    logits = model.run_with_hooks(torch.tensor([enc.prompt.ids]), fwd_hooks=silenced)[0, -1].log_softmax(-1)
    assert lp[0, 0].item() == pytest.approx(logits[enc.answer_ids[0]].item(), abs=1e-5)
    assert rank[0, 0].item() == int((logits > logits[enc.answer_ids[0]]).sum())


def test_backends_agree_on_the_lens_and_the_depth_curve(ga_unlearned_dir, synthetic_items):
    items = synthetic_items[:6]
    out = {}
    for backend in ("transformer_lens", "nnsight"):
        original, unlearned = load_model("tiny", backend=backend), load_model(ga_unlearned_dir, backend=backend)
        lens = logit_lens(unlearned, [encode_item(unlearned, it) for it in items])
        out[backend] = (lens, depth_curve(original, unlearned, items, batch_size=4))
    (tl_lens, tl_curve), (nn_lens, nn_curve) = out["transformer_lens"], out["nnsight"]
    assert torch.equal(tl_lens[0], nn_lens[0]) and torch.allclose(tl_lens[1], nn_lens[1], atol=1e-4)
    assert (tl_curve[["direction", "layer", "n"]] == nn_curve[["direction", "layer", "n"]]).all().all()
    cols = ["mean_logprob", "first_logprob", "top1_rate"]
    assert (tl_curve[cols] - nn_curve[cols]).abs().max().max() <= 1e-4


def _env(original, unlearned, items):
    return AttackEnv(
        original, unlearned, {it.id: encode_item(original, it) for it in items}, {},
        tuple(it.id for it in items if it.split == "forget"), batch_size=8, items={it.id: it for it in items},
    )  # fmt: skip


def test_readout_rows_and_details(original, ga_unlearned, synthetic_items):
    items = synthetic_items[:10]
    env = _env(original, ga_unlearned, synthetic_items)
    lens = LogitLens(context="bare").resolve(ga_unlearned)  # read right after the prompt
    frame = lens.readout(ga_unlearned, items, env)
    assert list(frame.columns) == ["item_id", "split", "correct", "logprob", "rank", "best_layer"]
    rank, lp = logit_lens(ga_unlearned, [env.encoded[it.id] for it in items])
    early = rank[:-1]  # default: every layer but the last (the tiny model has 2)
    assert frame["item_id"].tolist() == [it.id for it in items]
    assert frame["rank"].tolist() == early.min(0).values.tolist()
    assert frame["correct"].tolist() == (early.min(0).values == 0).float().tolist()
    assert torch.allclose(torch.tensor(frame["logprob"].to_numpy()), lp[:-1].max(0).values.double(), atol=1e-6)
    per_layer = env.details[("logit_lens[bare]", "per_layer")]
    assert list(per_layer.columns) == list(PER_LAYER_COLUMNS) and set(per_layer["role"]) == {"unlearned"}
    assert len(per_layer) == len(items) * ga_unlearned.shape.n_layers
    row = per_layer[(per_layer.item_id == items[2].id) & (per_layer.layer == 1)].iloc[0]
    assert (row["rank"], row["top1"]) == (int(rank[1, 2]), float(rank[1, 2] == 0))
    curve = env.details[("logit_lens[bare]", "depth_curve")]
    assert list(curve.columns) == list(DEPTH_COLUMNS) and (curve["n"] == len(items)).all()
    # the original gets its per-layer rows but no second depth curve; a second read-out neither
    lens.readout(original, items[:4], env)
    lens.readout(ga_unlearned, items[:3], env)
    assert env.details[("logit_lens[bare]", "depth_curve")].equals(curve)
    per_layer = env.details[("logit_lens[bare]", "per_layer")]
    assert (per_layer.role == "original").sum() == 4 * original.shape.n_layers
    summary = lens_curve(per_layer)
    assert list(summary.columns) == ["role", "layer", "top1_rate", "mean_logprob", "n"]
    first = summary[(summary.role == "original") & (summary.layer == 0)].iloc[0]
    orig_rows = per_layer[(per_layer.role == "original") & (per_layer.layer == 0)]
    assert first["n"] == 4 and first["top1_rate"] == pytest.approx(orig_rows["top1"].mean())
    quiet = _env(original, ga_unlearned, synthetic_items)
    LogitLens(depth=False, layers=(1,), context="bare").readout(ga_unlearned, items[:2], quiet)
    assert set(quiet.details) == {("logit_lens[1,bare]", "per_layer")}


def test_depth_curve_endpoints_are_exact(original, blocks_perturbed, synthetic_items):
    """blocks_perturbed shares the embeddings, final norm and unembedding with the original: restoring the residual
    entering block 0 patches nothing (the unlearned model), breaking there neither (the original); restoring the
    final residual gives the first answer token the original's prediction, breaking it the unlearned one."""
    items = synthetic_items[:9]
    encoded = [encode_item(original, it) for it in items]
    curve = depth_curve(original, blocks_perturbed, items, batch_size=4).set_index(["direction", "layer"])
    n = original.shape.n_layers
    assert len(curve) == 2 + 2 * (n + 1) and (curve["n"] == len(items)).all()
    o, u = _scores(original, encoded), _scores(blocks_perturbed, encoded)

    def close(key, scores, first_only=False):
        row = curve.loc[key]
        assert row["first_logprob"] == pytest.approx(float(scores.first_prob.log().mean()), abs=1e-5), key
        assert row["top1_rate"] == pytest.approx(float((scores.first_rank == 0).float().mean())), key
        if not first_only:
            assert row["mean_logprob"] == pytest.approx(float(scores.logprob.mean()), abs=1e-5), key

    close(("original", -1), o)
    close(("unlearned", -1), u)
    close(("restore", 0), u)
    close(("break", 0), o)
    close(("restore", n), o, first_only=True)
    close(("break", n), u, first_only=True)
    assert abs(curve.loc[("restore", 1), "first_logprob"] - curve.loc[("restore", 0), "first_logprob"]) > 1e-3
    assert curve.loc[("original", -1), "mean_logprob"] - curve.loc[("unlearned", -1), "mean_logprob"] > 0.1


def test_unlearning_depth_by_hand():
    def curve(restore, original=1.0, unlearned=0.2):
        rows = [("original", -1, original), ("unlearned", -1, unlearned)]
        rows += [("restore", L, v) for L, v in enumerate(restore)]
        return pd.DataFrame(rows, columns=["direction", "layer", "top1_rate"])

    # threshold 0.2 + 0.5 * 0.8 = 0.6; layer 1 reaches it but layer 2 falls back: from layer 3 on
    assert unlearning_depth(curve([0.2, 0.7, 0.5, 0.6, 0.9])) == 3
    assert unlearning_depth(curve([0.2, 0.3, 0.4])) is None
    assert unlearning_depth(curve([0.7, 0.8], original=0.2, unlearned=0.2)) is None  # no gap to give back
    assert unlearning_depth(curve([0.2, 0.9], original=1.0, unlearned=0.6), fraction=0.25) == 1


def test_options_and_labels(original):
    assert LATENT_ATTACKS[0].name == "logit_lens" and LATENT_ATTACKS[0].family == "latent_readout"
    assert LogitLens().label == "logit_lens" and LogitLens(layers=(0,)).label == "logit_lens[0]"
    assert LogitLens().lens_layers(30) == tuple(range(29)) and LogitLens(layers=3).layers == (3,)
    assert LogitLens().resolve(original).layers is None
    with pytest.raises(InputError, match="logit_lens: layer 2 out of range"):
        LogitLens().configure(layers=(0, 2)).resolve(original)
    with pytest.raises(InputError, match="layers must name at least one layer"):
        LogitLens(layers=()).resolve(original)
    with pytest.raises(InputError, match="unknown option 'folds'"):
        LogitLens().configure(folds=3)


def test_the_answer_is_read_in_the_originals_own_sentence(original, ga_unlearned, synthetic_items):
    """``context=own`` reads at the position before the gold answer inside the ORIGINAL's greedy answer (prompt +
    the tokens it wrote before the answer); an item without an own answer is read after the prompt."""
    from unpact_mech.attacks.latent import own_context
    from unpact_mech.scoring.own_answer import OwnAnswer, own_answers

    items = synthetic_items[:6]
    env = _env(original, ga_unlearned, synthetic_items)
    enc = env.encoded[items[0].id]
    moved = own_context(enc, OwnAnswer(context_ids=(5, 6), answer_ids=(7, 8)))
    assert moved.prompt.ids == tuple(enc.prompt.ids) + (5, 6) and moved.answer_ids == (7, 8)
    assert len(moved.prompt.offsets) == len(moved.prompt.ids) and own_context(enc, None) is enc
    frame = LogitLens(depth=False).readout(ga_unlearned, items, env)
    owns = own_answers(original, items, [env.encoded[it.id] for it in items])
    expected, _ = logit_lens(ga_unlearned, [own_context(env.encoded[it.id], o) for it, o in zip(items, owns)])
    assert frame["rank"].tolist() == expected[:-1].min(0).values.tolist()
    assert env.original_memo  # the original's own answers are kept for every later run
    bare = LogitLens(depth=False, context="bare").readout(ga_unlearned, items, env)
    plain, _ = logit_lens(ga_unlearned, [env.encoded[it.id] for it in items])
    assert bare["rank"].tolist() == plain[:-1].min(0).values.tolist()
    with pytest.raises(InputError, match="context must be 'own' or 'bare'"):
        LogitLens(context="middle").resolve(original)
