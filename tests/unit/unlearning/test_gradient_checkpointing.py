"""``--gradient-checkpointing`` (``TrainConfig.gradient_checkpointing``, unpact_mech/unlearning/grad_checkpointing.py)
on the tiny model: the layers really recompute, the weights come out the same on both backends (cached hooks and
residual-stream interventions included), edits inside a layer are refused, everything is switched off afterwards,
evaluations are unchanged, and a run resumes across the setting."""

from __future__ import annotations

import json

import pytest
import torch

from tests.cli_helpers import run_cli
from tests.unit.unlearning.conftest import TINY_RUNS, assert_same_weights, weights
from unpact_mech import InputError, load_model
from unpact_mech.models.hooks import Intervention
from unpact_mech.unlearning import TrainConfig, unlearn
from unpact_mech.unlearning.grad_checkpointing import GradientCheckpointing, check_interventions
from unpact_mech.unlearning.methods.ga import GA


def decoder_layers(model) -> list[torch.nn.Module]:
    """The HF decoder layer modules (under the TransformerLens bridge: the ones its block wrappers hold)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.hf.modules() if isinstance(m, GradientCheckpointingLayer)]


def run(method: str, backend: str, items, checkpointing: bool, **kw):
    """One run on a fresh tiny model; returns (model, result, calls of layer 0's first norm)."""
    model = load_model("tiny", backend=backend)
    calls = [0]
    layer0 = decoder_layers(model)[0]
    handle = layer0.input_layernorm.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    opts = {**TINY_RUNS[method], "seed": 3, **kw}
    try:
        result = unlearn(
            model, items, method, evaluate=False, progress=False, gradient_checkpointing=checkpointing, **opts
        )
    finally:
        handle.remove()
    return model, result, calls[0]


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
@pytest.mark.parametrize("method", ["ga_gdr", "rmu", "keyguard"])
def test_same_weights_with_and_without_checkpointing(method, backend, synthetic_items):
    """ga_gdr: logits only; rmu: a cached hook_resid_post in the loss and a frozen reference; keyguard: RMU plus the
    original's residual patched in at the KeyTokens at every layer (interventions on hook_resid_pre/post)."""
    plain, res_plain, calls_plain = run(method, backend, synthetic_items, False)
    ckpt, res_ckpt, calls_ckpt = run(method, backend, synthetic_items, True)
    steps = TINY_RUNS[method]["steps"]
    # the backward recomputed layer 0 once per step: the checkpointing really ran
    assert calls_ckpt - calls_plain == steps
    a, b = weights(plain), weights(ckpt)
    assert max(float((a[n] - b[n]).abs().max()) for n in a) <= 1e-5
    assert res_plain.train.changed  # and the runs did train
    assert [r["loss"] for r in res_ckpt.train.loss_log] == pytest.approx([r["loss"] for r in res_plain.train.loss_log])
    assert res_ckpt.summary["gradient_checkpointing"] is True and res_plain.summary["gradient_checkpointing"] is False


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_everything_is_switched_off_after_the_run(backend, synthetic_items):
    model, _, _ = run("ga_gdr", backend, synthetic_items, True, steps=1)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.hf.modules())
    assert not any(layer.training for layer in decoder_layers(model)) and not model.hf.training
    assert not getattr(model.hf, "_require_grads_hooks", None)  # the embedding hook of HF's enable is gone
    with torch.no_grad():
        emb = model.hf.get_input_embeddings()(torch.tensor([[1, 2]]))
    assert not emb.requires_grad


@pytest.mark.filterwarnings("ignore::unpact_mech.unlearning.ForgettingWarning")  # two steps do not forget
def test_evaluations_are_the_same_with_checkpointing(synthetic_items):
    """Evaluations between steps run in eval mode, without checkpointing (greedy decoding keeps its KV cache)."""
    tables = []
    for checkpointing in (False, True):
        model = load_model("tiny")
        result = unlearn(
            model,
            synthetic_items,
            "ga_gdr",
            steps=2,
            lr=1e-3,
            eval_every=1,
            progress=False,
            gradient_checkpointing=checkpointing,
        )
        tables.append(result.results_table())
    assert sorted(set(tables[0]["step"])) == [0, 1, 2]
    assert tables[0].equals(tables[1])


class EditInsideALayer(GA):
    """GA under an intervention at ``mlp.hook_post`` (inside the checkpointed part of a layer)."""

    name = "ga_mlp_edit"

    def interventions(self, model, batch):
        return [Intervention("blocks.0.mlp.hook_post", lambda act, ctx: act * 2.0)]


def test_an_edit_inside_a_layer_is_refused(synthetic_items):
    model = load_model("tiny")
    before = weights(model)
    with pytest.raises(InputError, match=r"gradient-checkpointing.*blocks\.0\.mlp\.hook_post"):
        unlearn(
            model, synthetic_items, EditInsideALayer(), steps=1, lr=1e-3, evaluate=False, progress=False,
            gradient_checkpointing=True,
        )  # fmt: skip
    assert_same_weights(weights(model), before)  # refused before any update
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.hf.modules())
    unlearn(model, synthetic_items, EditInsideALayer(), steps=1, lr=1e-3, evaluate=False, progress=False)


def test_check_interventions_by_hook_kind():
    edit = lambda act, ctx: act
    outside = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "ln_final.hook_normalized"]
    check_interventions([Intervention(h, edit) for h in outside], n_layers=2)
    for inside in ("blocks.0.attn.hook_z", "blocks.1.hook_resid_mid", "blocks.0.hook_mlp_out", "blocks.1.attn.hook_v"):
        with pytest.raises(InputError, match=inside.replace(".", r"\.")):
            check_interventions([Intervention(inside, edit)], n_layers=2)


def test_wrong_gradients_without_the_check():
    """Why the check exists: with checkpointing, an edit inside a layer is missing from the backward's recomputation
    and the gradient differs from the one of the same forward without checkpointing; a residual edit is fine."""
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])

    def grads(hook: str, checkpointing: bool) -> dict[str, torch.Tensor]:
        model = load_model("tiny")
        forward = lambda: model.forward(ids, interventions=[Intervention(hook, lambda a, ctx: a * 2.0)])
        if checkpointing:
            with GradientCheckpointing(model.hf) as gc, gc.active():
                forward().logits.pow(2).mean().backward()
        else:
            forward().logits.pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in model.hf.named_parameters() if p.grad is not None}

    for hook, same in (("blocks.0.hook_resid_post", True), ("blocks.0.mlp.hook_post", False)):
        a, b = grads(hook, False), grads(hook, True)
        assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a) == same, hook


def test_resume_across_the_setting(tmp_path, synthetic_items):
    """A run checkpointed without --gradient-checkpointing resumes with it (not part of the fingerprint) and ends
    where an uninterrupted run ends."""
    opts = dict(steps=4, lr=1e-3, batch_size=3, seed=5, evaluate=False, progress=False)
    straight = load_model("tiny")
    unlearn(straight, synthetic_items, "npo_gdr", **opts)

    class Killed(Exception):
        pass

    def kill(step):
        if step == 3:
            raise Killed

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Killed):
        unlearn(load_model("tiny"), synthetic_items, "npo_gdr", checkpoint_dir=ckpt, checkpoint_every=2, callback=kill,
                **opts)  # fmt: skip
    resumed = load_model("tiny")
    result = unlearn(
        resumed, synthetic_items, "npo_gdr", checkpoint_dir=ckpt, checkpoint_every=2, resume=True,
        gradient_checkpointing=True, **opts,
    )  # fmt: skip
    assert result.train.resumed_from == 2
    a, b = weights(resumed), weights(straight)
    assert max(float((a[n] - b[n]).abs().max()) for n in a) <= 1e-5


def test_config_value_is_checked():
    with pytest.raises(InputError, match="--gradient-checkpointing must be True or False"):
        TrainConfig(steps=1, lr=1e-3, gradient_checkpointing="yes")


def test_cli_flag(tmp_path, capsys):
    out = tmp_path / "ckpt"
    argv = ["unlearn", "--model", "tiny", "--data", "builtin:synthetic_facts", "--quiet", "--method", "ga_gdr"]
    code, _, err = run_cli(argv + ["--steps", "1", "--lr", "1e-3", "--gradient-checkpointing", "--out", out], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gradient_checkpointing"] is True
    with pytest.raises(SystemExit):
        run_cli(["unlearn", "--help"], capsys)
    assert "--gradient-checkpointing" in capsys.readouterr().out
