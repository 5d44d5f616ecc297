"""The training loop: resume, guards, schedule, batching, trainable selection, the forward-through seam."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.unit.unlearning.conftest import assert_same_weights, weights
from unpact_mech import InputError, load_model
from unpact_mech.unlearning import TrainConfig, UnlearningFailed, lr_factor, unlearn
from unpact_mech.unlearning.batches import sample_indices
from unpact_mech.unlearning.params import select_trainable

RESUMABLE = dict(
    method="npo_gdr", steps=6, lr=1e-3, batch_size=3, grad_accum=2, lr_schedule="linear", warmup_steps=1, seed=5
)


class Killed(Exception):
    pass


def _run(model, items, **kw):
    opts = {**RESUMABLE, **kw}
    method = opts.pop("method")
    return unlearn(model, items, method, evaluate=False, progress=False, **opts)


def test_kill_and_resume_gives_the_uninterrupted_weights(tmp_path, synthetic_items):
    straight = load_model("tiny")
    _run(straight, synthetic_items)

    ckpt = tmp_path / "ckpt"
    killed = load_model("tiny")

    def kill(step):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        _run(killed, synthetic_items, checkpoint_dir=ckpt, checkpoint_every=2, callback=kill)
    saved = sorted(p.name for p in ckpt.iterdir())
    assert saved == ["step-000002"]  # the step-3 update never reached a checkpoint
    assert json.loads((ckpt / "step-000002" / "progress.json").read_text())["step"] == 2

    resumed = load_model("tiny")  # a new process would load the base model again
    result = _run(resumed, synthetic_items, checkpoint_dir=ckpt, checkpoint_every=2, resume=True)
    assert result.train.resumed_from == 2
    assert [r["step"] for r in result.train.loss_log] == [1, 2, 3, 4, 5, 6]
    assert_same_weights(weights(resumed), weights(straight))


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path, synthetic_items):
    ckpt = tmp_path / "ckpt"
    _run(load_model("tiny"), synthetic_items, steps=2, checkpoint_dir=ckpt, checkpoint_every=2)
    with pytest.raises(InputError, match="different settings.*lr"):
        _run(load_model("tiny"), synthetic_items, steps=2, lr=2e-3, checkpoint_dir=ckpt, resume=True)


def test_resume_continues_the_dynamics_table(tmp_path, synthetic_items):
    ckpt = tmp_path / "ckpt"
    model = load_model("tiny")
    opts = dict(method="ga", steps=4, eval_every=2, checkpoint_every=2, checkpoint_dir=ckpt)

    def kill(step):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        unlearn(model, synthetic_items, progress=False, callback=kill, lr=1e-3, **opts)
    result = unlearn(load_model("tiny"), synthetic_items, progress=False, resume=True, lr=1e-3, **opts)
    assert [d["step"] for d in result.train.dynamics] == [0, 2, 4]
    assert sorted(set(result.results_table().step)) == [0, 2, 4]
    assert result.summary["forget_accuracy_before"] == 1.0 and result.summary["forget_accuracy_after"] < 1.0


def test_nan_loss_stops_the_run(model, synthetic_items):
    before = weights(model)
    with pytest.raises(UnlearningFailed, match=r"became (nan|inf).*nothing saved"):
        _run(
            model,
            synthetic_items,
            method="ga",
            lr=1e30,
            steps=20,
            lr_schedule="constant",
            warmup_steps=0,
            max_grad_norm=0.0,
        )
    assert weights(model).keys() == before.keys()


def test_nan_guard_fires_before_the_update(model, synthetic_items):
    from unpact_mech.unlearning.methods.ga import GA

    class NaNAtStep3(GA):
        calls = 0

        def forget_loss(self, out):
            type(self).calls += 1
            loss = super().forget_loss(out)
            return loss * float("nan") if type(self).calls == 3 else loss

    snapshots = []
    with pytest.raises(UnlearningFailed, match="the loss became nan at step 3"):
        unlearn(
            model,
            synthetic_items,
            NaNAtStep3(),
            steps=5,
            lr=1e-3,
            evaluate=False,
            progress=False,
            callback=lambda step: snapshots.append(weights(model)),
        )
    assert len(snapshots) == 2
    assert_same_weights(weights(model), snapshots[-1])  # the NaN step did not touch the weights


def test_no_weight_change_fails(model, synthetic_items):
    with pytest.raises(UnlearningFailed, match="no weight changed"):
        _run(model, synthetic_items, method="ga", lr=1e-45, steps=2)


def test_train_config_validation():
    for bad, match in [
        (dict(steps=0), "--steps"),
        (dict(lr=0.0), "--lr"),
        (dict(lr=-1.0), "--lr"),
        (dict(lr=math.nan), "--lr"),
        (dict(lr=math.inf), "--lr"),
        (dict(lr_schedule="step"), "--lr-schedule"),
        (dict(batch_size=0), "--batch-size"),
        (dict(max_grad_norm=-1.0), "--max-grad-norm"),
    ]:
        with pytest.raises(InputError, match=match):
            TrainConfig(**{"steps": 2, "lr": 1e-3, **bad})


def test_lr_schedules():
    f = lambda s, kind, warm=0: lr_factor(s, steps=5, warmup=warm, schedule=kind)
    assert [f(s, "constant") for s in range(5)] == [1.0] * 5
    assert [f(s, "linear") for s in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert [f(s, "constant", 2) for s in range(5)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0])
    assert f(0, "cosine") == 1.0 and f(4, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.8)))


def test_sample_indices_are_shuffled_epochs_addressable_by_position():
    stream = sample_indices(7, seed=1, stream=0, start=0, count=21)
    for epoch in range(3):
        assert sorted(stream[epoch * 7 : epoch * 7 + 7]) == list(range(7))
    assert sample_indices(7, 1, 0, 5, 6) == stream[5:11]  # any window equals the stream's slice
    assert stream != sample_indices(7, 2, 0, 0, 21) and stream != sample_indices(7, 1, 1, 0, 21)


def test_select_trainable(model):
    assert len(select_trainable(model, None)) == len(list(model.named_parameters()))
    assert select_trainable(model, r"lm_head") == ["lm_head.weight"]
    with pytest.raises(InputError, match="matches no parameter"):
        select_trainable(model, r"transformer\.h\.")
    with pytest.raises(InputError, match="not a valid regular expression"):
        select_trainable(model, r"layers.(")


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_forward_through_a_wrapper_runs_the_wrapper_with_hooks(backend):
    model = load_model("tiny", backend=backend)

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            return self.module(*args, **kwargs)

    wrapper = Wrapper(model.hf)
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    hook = "blocks.1.hook_resid_post"
    plain = model.forward(ids, cache=[hook])
    with model.forward_through(wrapper):
        through = model.forward(ids, cache=[hook])
    after = model.forward(ids)
    assert wrapper.calls == 1  # inside the context only
    assert torch.equal(through.logits, plain.logits) and torch.equal(through.cache[hook], plain.cache[hook])
    assert torch.equal(after.logits, plain.logits)
    with pytest.raises(ValueError, match="does not wrap"), model.forward_through(Wrapper(load_model("tiny").hf)):
        pass


def test_a_given_step_0_evaluation_replaces_recomputing_it(synthetic_items):
    """The demo hands its evaluation of the base model to unlearn(): dynamics and per-item rows are unchanged."""
    from unpact_mech.scoring.evaluate import evaluate_items

    runs = []
    for initial in (None, evaluate_items(load_model("tiny"), list(reversed(synthetic_items)), progress=False)):
        model = load_model("tiny")
        res = unlearn(model, synthetic_items, "ga", steps=2, lr=1e-3, progress=False, initial_evaluation=initial)
        runs.append(res)
    assert runs[0].train.dynamics == runs[1].train.dynamics
    assert runs[0].results_table().equals(runs[1].results_table())
    doctored = evaluate_items(load_model("tiny"), synthetic_items, progress=False).assign(correct=0.0)
    res = unlearn(
        load_model("tiny"), synthetic_items, "ga", steps=1, lr=1e-3, progress=False, initial_evaluation=doctored
    )
    assert res.train.dynamics[0]["forget_accuracy"] == 0.0 and runs[0].train.dynamics[0]["forget_accuracy"] == 1.0
