"""Attribution methods as a registry: a method defined outside the package runs through ``attribute_items`` and
``compare_runs``; bad names and options are one-line errors; every built-in method's options reach its function."""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass, replace

import pandas as pd
import pytest
import torch

from unpact_mech import load_model
from unpact_mech.attribution import (
    ATTRIBUTION_METHODS,
    AttributionConfig,
    AttributionMethod,
    attention_paths,
    attribute_items,
    compare_runs,
    get_attribution_method,
    grad_x_activation,
    grad_x_input,
    integrated_gradients,
    keytoken_mask,
    keyword_agreement,
    occlusion,
    register_attribution_method,
)
from unpact_mech.errors import InputError

# --- the example of docs/attribution.md, "Adding an attribution method" (as a user script defines it) -------------


@register_attribution_method
@dataclass
class AbsGradXInput(AttributionMethod):
    """C(u) = |gradient x input of u| ** power: how much a unit matters, whatever the sign."""

    name = "abs_grad_x_input"
    description = "|gradient x input| ** power per unit"
    power: float = 1.0

    def validate(self) -> None:
        if self.power <= 0:
            raise InputError(f"abs_grad_x_input: power must be > 0, got {self.power}")

    def attribute(self, model, prepared, *, level, target):
        res = grad_x_input(model, prepared, level=level, target=target)
        return replace(res, method=self.name, scores=res.scores.abs() ** self.power)


# --- end of the example -------------------------------------------------------------------------------------------

BUILT_IN = ["occlusion", "grad_x_input", "integrated_gradients", "attention", "residual"]


@pytest.fixture(scope="module", autouse=True)
def unregister_the_example():
    """The example stays registered while this module runs, and no longer (other modules see the built-ins only)."""
    yield
    ATTRIBUTION_METHODS.pop(AbsGradXInput.name)


@pytest.fixture(scope="module")
def noisy_tiny():
    """The tiny model with noise on its blocks (a stand-in for an unlearned model)."""
    model = load_model("tiny")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("model.layers."):
                p.add_(0.08 * torch.randn(p.shape, generator=g))
    return model


def test_a_method_registered_outside_runs_through_attribute_items_and_compare_runs(
    tiny_model, noisy_tiny, synthetic_items
):
    items = synthetic_items[:5]
    assert ATTRIBUTION_METHODS["abs_grad_x_input"] is AbsGradXInput and list(ATTRIBUTION_METHODS)[:5] == BUILT_IN
    cfg = AttributionConfig(
        method="abs_grad_x_input", level="word", keytoken_alpha=0.1, keytoken_beta=2, options={"power": 2.0}
    )
    run = attribute_items(tiny_model, items, cfg, label="orig")

    # frame: the method's scores, KeyTokens by the config's rule, one target_value row per item
    units = run.unit_frame()
    assert set(run.frame["method"]) == {"abs_grad_x_input"} and set(run.frame["model"]) == {"orig"}
    assert set(run.frame["metric"]) == {"contribution", "target_value"} and units["item_id"].nunique() == 5
    for item in items:
        want = grad_x_input(tiny_model, item, level="word")
        rows = units[units["item_id"] == item.id]
        assert torch.allclose(torch.tensor(rows["value"].to_numpy()).float(), want.scores.abs() ** 2, atol=1e-6)
        assert rows["is_keytoken"].tolist() == keytoken_mask(want.scores.abs() ** 2, 0.1, 2).tolist()
    assert (units["value"] >= 0).all() and 0 < units["is_keytoken"].sum() < len(units)
    assert [u.method for u in run.units] == ["abs_grad_x_input"] * 5 and run.extras == []

    # summary: the common entries, computed on this method's token view
    s = run.summary
    assert (s["method"], s["level"], s["n_items"]) == ("abs_grad_x_input", "word", 5)
    assert (s["keytoken_alpha"], s["keytoken_beta"]) == (0.1, 2)
    top = units.loc[units.groupby("item_id", sort=False)["value"].idxmax()]
    assert s["keyword_hit_rate"] == pytest.approx(top["is_keyword"].mean())
    agreements = [keyword_agreement(u.scores, keytoken_mask(u.scores, 0.1, 2), u.is_keyword) for u in run.units]
    assert s["keyword_recall"] == pytest.approx(sum(a.recall for a in agreements) / 5)
    assert s["mean_target_value"] == pytest.approx(run.frame.loc[run.frame.metric == "target_value", "value"].mean())
    assert "steps" not in s and "readout" not in s

    # compare_runs: per-unit diffs and the KeyToken change; no head or layer views
    after = attribute_items(noisy_tiny, items, cfg, label="noisy")
    comparison = compare_runs(run, after)
    assert set(comparison.frame()["view"]) == {"unit"}
    diff = comparison.units
    assert len(diff) == len(units) and diff["diff"].abs().max() > 1e-4
    assert ((diff["after"] - diff["before"]) - diff["diff"]).abs().max() < 1e-12
    kt = comparison.summary["keytoken_change"]
    assert {"keytokens", "other"} <= set(kt) and (kt["keytoken_alpha"], kt["keytoken_beta"]) == (0.1, 2)
    assert kt["keytokens"]["before"] > kt["other"]["before"]  # KeyTokens are the largest units of the original
    assert comparison.heads.empty and comparison.layers.empty


def test_the_example_validates_its_own_options(tiny_model, synthetic_items):
    with pytest.raises(InputError, match=r"^abs_grad_x_input: power must be > 0, got -1$"):
        attribute_items(tiny_model, synthetic_items[:1], AttributionConfig("abs_grad_x_input", options={"power": -1}))
    message = r"^attribution method abs_grad_x_input: unknown option\(s\) exponent \(its options: power\)$"
    with pytest.raises(InputError, match=message):
        AttributionConfig(method="abs_grad_x_input", options={"exponent": 2}).validate()


def test_unknown_method_and_option_are_one_line_errors_naming_the_choices():
    with pytest.raises(InputError) as bad_name:
        AttributionConfig(method="saliency").validate()
    message = str(bad_name.value)
    assert message == f"unknown attribution method 'saliency'; choose one of: {', '.join(ATTRIBUTION_METHODS)}"
    assert all(m in message for m in BUILT_IN) and "\n" not in message
    with pytest.raises(InputError) as bad_option:
        get_attribution_method("occlusion", strategy="packed", steps=4)
    assert str(bad_option.value) == (
        "attribution method occlusion: unknown option(s) steps, strategy "
        "(its options: mode, baseline_token, batching, batch_size)"
    )
    with pytest.raises(InputError, match=r"unknown option\(s\) layers \(its options: none\)$"):
        get_attribution_method("residual", layers=(0,))
    with pytest.raises(InputError, match="unknown occlusion batching 'auto2'"):
        AttributionConfig(options={"batching": "auto2"}).validate()
    with pytest.raises(InputError, match="integrated gradients needs at least 2 steps, got 1"):
        AttributionConfig(method="integrated_gradients", options={"steps": 1}).validate()
    with pytest.raises(InputError, match="batch_size must be an integer >= 1, got 0"):
        AttributionConfig(options={"batch_size": 0}).validate()


def test_model_dependent_checks_and_registry_rules(tiny_model):
    cfg = AttributionConfig(method="attention", options={"layers": (0, 9)})
    cfg.validate()  # model-independent: fine
    with pytest.raises(InputError, match=r"layer 9 out of range \(model has layers 0..1\)"):
        cfg.validate_for(tiny_model)
    with pytest.raises(InputError, match="unknown hook name"):
        AttributionConfig(method="grad_x_input", options={"hooks": ["blocks.0.hook_nope"]}).validate_for(tiny_model)
    with pytest.raises(InputError, match="exactly one"):
        AttributionConfig("integrated_gradients", options={"baseline_token": "capital of"}).validate_for(tiny_model)

    @dataclass
    class Clash(AttributionMethod):
        name = "occlusion"
        description = "a second occlusion"

    with pytest.raises(ValueError, match="'occlusion' is already registered"):
        register_attribution_method(Clash)

    class NotADataclass(AttributionMethod):
        name = "plain"
        description = "options not declared as dataclass fields"

    with pytest.raises(TypeError, match="must be a dataclass"):
        register_attribution_method(NotADataclass)
    assert ATTRIBUTION_METHODS["occlusion"].name == "occlusion" and "plain" not in ATTRIBUTION_METHODS


def test_config_is_json_serialisable_and_builds_the_method():
    cfg = AttributionConfig(method="grad_x_input", level="word", options={"hooks": ("hook_embed",)})
    record = json.loads(json.dumps(asdict(cfg)))
    assert record == {
        "method": "grad_x_input",
        "level": "word",
        "target": "auto",
        "keytoken_alpha": 0.5,
        "keytoken_beta": 3,
        "options": {"hooks": ["hook_embed"]},
    }
    assert AttributionConfig(**record).method_object().hooks == ("hook_embed",)  # what run.json gives back, as a tuple
    method = cfg.method_object()
    assert method.options() == {"hooks": ("hook_embed",)} and type(method).default_options() == {"hooks": ()}


def test_batched_and_packed_occlusion_give_the_same_frame(tiny_model, synthetic_items, monkeypatch):
    occ = importlib.import_module("unpact_mech.attribution.occlusion_set")  # the runner packs many items per forward
    packed_calls = []
    original = occ._packed_values
    monkeypatch.setattr(occ, "_packed_values", lambda *a, **k: packed_calls.append(1) or original(*a, **k))
    items = synthetic_items[:6]
    frames = {}
    for batching in ("batched", "packed"):
        before = len(packed_calls)
        cfg = AttributionConfig(method="occlusion", level="word", options={"batching": batching, "batch_size": 4})
        frames[batching] = attribute_items(tiny_model, items, cfg).frame
        assert (len(packed_calls) > before) == (batching == "packed")  # the option chose the forward
    assert len(frames["batched"]) == len(frames["packed"]) > 6
    pd.testing.assert_frame_equal(frames["batched"], frames["packed"], check_exact=False, rtol=0, atol=1e-4)
    assert frames["batched"]["value"].abs().max() > 0.1


def test_built_in_options_reach_their_functions(tiny_model, synthetic_items):
    item = synthetic_items[3]

    def one(method, **options):
        return attribute_items(tiny_model, [item], AttributionConfig(method=method, level="word", options=options))

    run = one("occlusion", mode="replace", baseline_token="the", batching="batched")
    want = occlusion(tiny_model, item, level="word", mode="replace", baseline_token="the", batching="batched")
    assert torch.equal(run.results[0].scores, want.scores)
    assert not torch.allclose(want.scores, occlusion(tiny_model, item, level="word").scores)  # replace != delete

    run = one("integrated_gradients", steps=4, positions="prompt", baseline_token="the")
    want = integrated_gradients(tiny_model, item, level="word", steps=4, positions="prompt", baseline="the")
    assert torch.equal(run.results[0].scores, want.scores) and run.summary["steps"] == 4
    assert run.summary["completeness_rel_max"] == pytest.approx(want.details["completeness_rel"])

    run = one("attention", layers=(1,))
    assert torch.equal(run.results[0].contributions, attention_paths(tiny_model, item, layers=[1]).contributions)
    assert set(run.frame["layer"].dropna()) == {1} and run.summary["readout"].startswith("mean logit")

    run = one("grad_x_input", hooks=("blocks.1.hook_resid_post",))
    want = grad_x_activation(tiny_model, item, ["blocks.1.hook_resid_post"])
    assert torch.equal(run.extras[0].scores["blocks.1.hook_resid_post"], want.scores["blocks.1.hook_resid_post"])
    assert set(run.frame["method"]) == {"grad_x_input", "grad_x_activation"}
    assert one("grad_x_input").extras == []
